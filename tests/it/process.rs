//! The real binary (`clerksync serve`) as a process: start-up errors, SIGTERM
//! under load, and `kill -9` under load.
//!
//! Readiness is awaited by polling `/healthz`; the only durations here are hang
//! guards, never assertions.

use crate::helpers::{inbox_ids, sign, status_json, user_event, whsec, TEST_KEY};
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const GUARD: Duration = Duration::from_secs(60);

/// `clerksync serve` with no inherited `CLERKSYNC_*` setting, run in `dir` (so a
/// default `data/` never lands in the repository), stderr to `dir/stderr.log`.
fn serve(dir: &Path, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clerksync"));
    cmd.arg("serve").current_dir(dir);
    crate::helpers::without_inherited_settings(&mut cmd);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let log = File::create(dir.join("stderr.log")).expect("stderr log");
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
    cmd
}

fn stderr_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
}

fn wait_exit(child: &mut Child) -> ExitStatus {
    crate::helpers::wait_exit(child, "clerksync did not exit")
}

/// Runs `serve` to its exit and returns its stderr; it must fail.
fn start_up_error(env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut child = serve(dir.path(), env).spawn().expect("spawn clerksync");
    let status = wait_exit(&mut child);
    let stderr = stderr_of(dir.path());
    assert!(
        !status.success(),
        "serve should fail with {env:?}; stderr: {stderr}"
    );
    let lines: Vec<_> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line on stderr, got: {stderr}");
    stderr
}

/// The `addr` field of the JSON log line `serve` writes once it is listening.
fn listening_addr(log: &str) -> Option<String> {
    log.lines().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let addr = v["fields"]["addr"].as_str()?;
        (addr.parse::<std::net::SocketAddr>().ok()?.port() != 0).then(|| addr.to_string())
    })
}

fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("t.db").display())
}

#[test]
fn serve_without_a_secret_says_to_set_it() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = start_up_error(&[
        ("CLERKSYNC_DATABASE_URL", &sqlite_url(dir.path())),
        ("CLERKSYNC_LISTEN", "127.0.0.1:0"),
    ]);
    assert!(stderr.contains("CLERKSYNC_WEBHOOK_SECRET"), "{stderr}");
}

#[test]
fn serve_with_a_malformed_secret_says_so_without_echoing_it() {
    let dir = tempfile::tempdir().unwrap();
    for secret in [
        "whsec_not*base64!",
        "whsec_c2VjcmV0LWtleQ==,whsec_%%%hunter2",
    ] {
        let stderr = start_up_error(&[
            ("CLERKSYNC_WEBHOOK_SECRET", secret),
            ("CLERKSYNC_DATABASE_URL", &sqlite_url(dir.path())),
            ("CLERKSYNC_LISTEN", "127.0.0.1:0"),
        ]);
        assert!(stderr.contains("CLERKSYNC_WEBHOOK_SECRET"), "{stderr}");
        for part in ["not*base64", "hunter2", "c2VjcmV0LWtleQ"] {
            assert!(!stderr.contains(part), "stderr echoes the secret: {stderr}");
        }
    }
}

#[test]
fn serve_with_an_unusable_database_says_which_setting() {
    let secret = whsec(TEST_KEY);
    for url in ["mysql://x", "sqlite:///proc/x/y.db", "sqlite:///proc/y.db"] {
        let stderr = start_up_error(&[
            ("CLERKSYNC_WEBHOOK_SECRET", &secret),
            ("CLERKSYNC_DATABASE_URL", url),
            ("CLERKSYNC_LISTEN", "127.0.0.1:0"),
        ]);
        assert!(
            stderr.contains("CLERKSYNC_DATABASE_URL"),
            "{url}: the error names the setting: {stderr}"
        );
        assert!(!stderr.contains(secret.trim_start_matches("whsec_")));
    }
}

#[test]
fn serve_on_a_taken_port_says_it_cannot_listen() {
    let dir = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let stderr = start_up_error(&[
        ("CLERKSYNC_WEBHOOK_SECRET", &whsec(TEST_KEY)),
        ("CLERKSYNC_DATABASE_URL", &sqlite_url(dir.path())),
        ("CLERKSYNC_LISTEN", &addr),
    ]);
    assert!(stderr.contains("cannot listen"), "{stderr}");
    assert!(stderr.contains(&addr), "{stderr}");
    drop(taken);
}

/// A running `clerksync serve` on a port of its own choosing, with its own database.
pub(crate) struct Server {
    child: Child,
    pub(crate) base: String,
    db_path: PathBuf,
}

impl Server {
    /// Starts `serve` on 127.0.0.1:0 (no free-port guessing, so no race with
    /// other tests for a port), learns the address from its JSON start-up log
    /// line, then waits for `/healthz`.
    async fn start(dir: &Path) -> Server {
        Self::start_with(dir, &[]).await
    }

    /// As [`Server::start`], with more settings.
    pub(crate) async fn start_with(dir: &Path, extra: &[(&str, &str)]) -> Server {
        let db_path = dir.join("t.db");
        let db_url = format!("sqlite://{}", db_path.display());
        let secret = whsec(TEST_KEY);
        let mut env = vec![
            ("CLERKSYNC_WEBHOOK_SECRET", secret.as_str()),
            ("CLERKSYNC_DATABASE_URL", db_url.as_str()),
            ("CLERKSYNC_LISTEN", "127.0.0.1:0"),
            ("CLERKSYNC_LOG_FORMAT", "json"),
        ];
        env.extend_from_slice(extra);
        let mut child = serve(dir, &env).spawn().expect("spawn clerksync");
        let deadline = Instant::now() + GUARD;
        let addr = loop {
            if let Some(addr) = listening_addr(&stderr_of(dir)) {
                break addr;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("clerksync exited ({status}): {}", stderr_of(dir));
            }
            assert!(
                Instant::now() < deadline,
                "clerksync never said where it listens"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        let base = format!("http://{addr}");
        let client = reqwest::Client::new();
        loop {
            if let Ok(r) = client.get(format!("{base}/healthz")).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("clerksync exited ({status}): {}", stderr_of(dir));
            }
            assert!(Instant::now() < deadline, "clerksync never became healthy");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Server {
            child,
            base,
            db_path,
        }
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Posts distinct signed deliveries from `tasks` tasks until `stop` is set or
/// the server stops answering; returns the ids that got a 2xx.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    tasks: tokio::task::JoinSet<Vec<String>>,
}

impl Load {
    fn start(base: &str, tasks: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let mut set = tokio::task::JoinSet::new();
        for t in 0..tasks {
            let (stop, acked) = (stop.clone(), acked.clone());
            let url = format!("{base}/webhooks/clerk");
            set.spawn(async move {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()
                    .unwrap();
                let mut ok = Vec::new();
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let id = format!("msg_load_{t:02}_{i:06}");
                    let body = user_event("user.updated", &format!("user_{t}_{}", i % 10));
                    let ts = crate::helpers::system_now_secs().to_string();
                    let sent = client
                        .post(&url)
                        .header("svix-id", &id)
                        .header("svix-timestamp", &ts)
                        .header("svix-signature", sign(TEST_KEY, &id, &ts, &body))
                        .body(body)
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status().is_success() => {
                            ok.push(id);
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => assert!(
                            r.status().is_server_error(),
                            "a genuine delivery got {}",
                            r.status()
                        ),
                        // The server went away (or is draining): stop.
                        Err(_) => break,
                    }
                }
                ok
            });
        }
        Load {
            stop,
            acked,
            tasks: set,
        }
    }

    async fn wait_acked(&self, n: usize) {
        let deadline = Instant::now() + GUARD;
        while self.acked.load(Ordering::Relaxed) < n {
            assert!(Instant::now() < deadline, "load never reached {n} acks");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn finish(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        while let Some(r) = self.tasks.join_next().await {
            all.extend(r.expect("load task"));
        }
        all
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_cleanly_and_keeps_every_ack() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path()).await;
    let load = Load::start(&server.base, 8);
    load.wait_acked(200).await;
    server.signal("-TERM");
    let status = tokio::task::block_in_place(|| wait_exit(&mut server.child));
    let acked = load.finish().await;
    assert!(
        status.success(),
        "exit {status}; stderr: {}",
        stderr_of(dir.path())
    );
    let stored = inbox_ids(&server.db_path).await;
    let lost: Vec<_> = acked.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged deliveries lost: {lost:?}",
        lost.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_keeps_every_ack() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path()).await;
    let load = Load::start(&server.base, 16);
    load.wait_acked(500).await;
    server.child.kill().expect("SIGKILL");
    let _ = server.child.wait();
    let acked = load.finish().await;
    assert!(acked.len() >= 500);

    let stored = inbox_ids(&server.db_path).await;
    let lost: Vec<_> = acked.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged deliveries lost: {lost:?}",
        lost.len()
    );

    // A restart on the same file serves again and knows what it acknowledged.
    let server = Server::start(dir.path()).await;
    let id = &acked[acked.len() / 2];
    let ts = crate::helpers::system_now_secs().to_string();
    let body = user_event("user.updated", "user_again");
    let resp = reqwest::Client::new()
        .post(format!("{}/webhooks/clerk", server.base))
        .header("svix-id", id)
        .header("svix-timestamp", &ts)
        .header("svix-signature", sign(TEST_KEY, id, &ts, &body))
        .body(body)
        .send()
        .await
        .unwrap();
    let (status, json) = status_json(resp).await;
    assert_eq!(
        (status.as_u16(), json["status"].as_str()),
        (200, Some("duplicate"))
    );
}

async fn sqlite_scalar(path: &Path, sql: &str) -> i64 {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", path.display()))
        .await
        .unwrap();
    let v: i64 = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
    pool.close().await;
    v
}

/// Every entity row but the time it was synced, in a stable order.
async fn store_rows(path: &Path) -> Vec<String> {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", path.display()))
        .await
        .unwrap();
    let mut out = Vec::new();
    for t in [
        "users",
        "organizations",
        "memberships",
        "user_emails",
        "user_phones",
    ] {
        let sql = match t {
            "user_emails" => "SELECT user_id, id, email_address, is_primary FROM user_emails ORDER BY 1, 2".to_string(),
            "user_phones" => "SELECT user_id, id, phone_number, is_primary FROM user_phones ORDER BY 1, 2".to_string(),
            t => format!("SELECT id, version, version_key, deleted, user_id, organization_id, data FROM {t} ORDER BY id"),
        };
        let rows = sqlx::query(&sql).fetch_all(&pool).await.unwrap();
        use sqlx::Row;
        for r in rows {
            let cols: Vec<String> = (0..r.len())
                .map(|i| {
                    r.try_get::<Option<String>, _>(i)
                        .map(|v| format!("{v:?}"))
                        .or_else(|_| r.try_get::<Option<i64>, _>(i).map(|v| format!("{v:?}")))
                        .unwrap_or_default()
                })
                .collect();
            out.push(format!("{t}: {}", cols.join(" | ")));
        }
    }
    pool.close().await;
    out
}

fn loadgen(url: &str, expect: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clerksync"));
    cmd.args(["loadgen", "--url", url, "--secret", &whsec(TEST_KEY)])
        .args([
            "--events",
            "3000",
            "--seed",
            "21",
            "--out-of-order",
            "0.1",
            "--duplicates",
            "0.05",
        ])
        .args(["--connections", "16", "-q", "--expect"])
        .arg(expect)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// `kill -9` in the middle of heavy processing, restart, resend: the store
/// reaches the loadgen's expected state, every effective change has exactly one
/// audit row, and `replay` into an empty database rebuilds the same rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_processing_then_restart_converges_and_replays() {
    let dir = tempfile::tempdir().unwrap();
    let expect = dir.path().join("expect.json");
    let server = Server::start(dir.path()).await;
    let url = format!("{}/webhooks/clerk", server.base);
    let mut sender = loadgen(&url, &expect, &[]).spawn().expect("spawn loadgen");
    // Kill once the processor is visibly part-way through.
    let deadline = Instant::now() + GUARD;
    loop {
        let done = sqlite_scalar(
            &server.db_path,
            "SELECT COUNT(*) FROM inbox WHERE status = 'done'",
        )
        .await;
        if done >= 200 {
            break;
        }
        assert!(Instant::now() < deadline, "processing never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.signal("-9");
    let _ = wait_exit(&mut sender);
    drop(server);

    // Svix retries what was not acknowledged: resending the whole stream does that
    // (acknowledged deliveries come back as duplicates).
    let server = Server::start(dir.path()).await;
    let url = format!("{}/webhooks/clerk", server.base);
    let status = wait_exit(&mut loadgen(&url, &expect, &[]).spawn().unwrap());
    assert!(
        status.success(),
        "every delivery acknowledged after restart"
    );
    let deadline = Instant::now() + GUARD;
    while sqlite_scalar(
        &server.db_path,
        "SELECT COUNT(*) FROM inbox WHERE status <> 'done'",
    )
    .await
        > 0
    {
        assert!(Instant::now() < deadline, "processing never finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let check = Command::new(env!("CARGO_BIN_EXE_clerksync"))
        .args(["loadgen", "--url", &url, "--check"])
        .arg(&expect)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "store differs from --expect:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let dup_audits = sqlite_scalar(
        &server.db_path,
        "SELECT COUNT(*) FROM (SELECT svix_id, entity_id, operation FROM audit GROUP BY 1, 2, 3 HAVING COUNT(*) > 1)",
    )
    .await;
    assert_eq!(dup_audits, 0, "an effective change was audited twice");
    let audits = sqlite_scalar(&server.db_path, "SELECT COUNT(*) FROM audit").await;
    let feed = sqlite_scalar(&server.db_path, "SELECT COUNT(*) FROM change_feed").await;
    assert_eq!(
        audits, feed,
        "one audit row and one feed row per effective change"
    );

    // Rebuild from the log into an empty database and compare row by row.
    let replayed = dir.path().join("replayed.db");
    let out = Command::new(env!("CARGO_BIN_EXE_clerksync"))
        .args([
            "replay",
            "--database-url",
            &format!("sqlite://{}", server.db_path.display()),
        ])
        .args(["--into", &format!("sqlite://{}", replayed.display())])
        .env_remove("CLERKSYNC_DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(server);
    let live = store_rows(&dir.path().join("t.db")).await;
    let rebuilt = store_rows(&replayed).await;
    assert!(live.len() > 100);
    assert_eq!(
        live, rebuilt,
        "the replayed store differs from the live one"
    );
}
