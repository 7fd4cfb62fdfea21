//! The dashboard (`GET /admin` and its assets), the admin entity endpoint it
//! reads, and `clerksync demo` run as a real process.
//!
//! Black box over HTTP: what a browser is served (and that it carries no token
//! or data), and what the page's script gets from `/admin/entities/{id}`.

use crate::backends::{sqlite_server, Server};
use clerksync::config::Token;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "dash-admin-token-7f3a9c";

async fn with_admin() -> Server {
    sqlite_server(|c| c.admin_token = Some(Token::new(TOKEN))).await
}

/// Status, content type, CSP and body of a plain GET (no Authorization header,
/// as a browser navigation sends it).
async fn fetch(s: &Server, path: &str) -> (u16, String, String, String) {
    let r = s.client.get(s.url(path)).send().await.unwrap();
    let h = |n: &str| {
        r.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (ct, csp) = (h("content-type"), h("content-security-policy"));
    (r.status().as_u16(), ct, csp, r.text().await.unwrap())
}

fn user(id: &str, first_name: &str, updated_at: i64) -> Value {
    json!({"type": "user.updated", "object": "event", "timestamp": updated_at,
           "data": {"id": id, "object": "user", "first_name": first_name, "updated_at": updated_at,
                    "email_addresses": [{"id": "idn_1", "email_address": "ada@example.com"}],
                    "primary_email_address_id": "idn_1"}})
}

#[tokio::test]
async fn dashboard_is_404_without_an_admin_token_configured() {
    let s = sqlite_server(|_| {}).await;
    for path in [
        "/admin",
        "/admin/",
        "/admin/dashboard.js",
        "/admin/dashboard.css",
        "/admin/entities/user_1",
    ] {
        assert_eq!(fetch(&s, path).await.0, 404, "{path}");
    }
    assert_eq!(
        s.get_json("/admin/entities/user_1", Some("anything"))
            .await
            .0,
        404
    );
}

#[tokio::test]
async fn dashboard_page_and_assets_are_served_without_data_or_token() {
    let s = with_admin().await;
    let (st, ct, csp, html) = fetch(&s, "/admin").await;
    assert_eq!(st, 200);
    assert!(ct.starts_with("text/html"), "{ct}");
    assert!(
        html.contains("<script src=\"/admin/dashboard.js\""),
        "{html}"
    );
    assert!(html.contains("href=\"/admin/dashboard.css\""));
    // No inline script: the CSP allows same-origin files only.
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert!(csp.contains("connect-src 'self'"), "{csp}");

    let (st, ct, _, js) = fetch(&s, "/admin/dashboard.js").await;
    assert_eq!(st, 200);
    assert!(ct.starts_with("text/javascript"), "{ct}");
    // The script talks to the admin API with a bearer header and reads the fragment.
    assert!(js.contains("/admin/stats"));
    assert!(js.contains("/admin/entities/"));
    assert!(js.contains("'Bearer '"));
    assert!(js.contains("location.hash"));
    let (st, ct, _, css) = fetch(&s, "/admin/dashboard.css").await;
    assert_eq!(st, 200);
    assert!(ct.starts_with("text/css"), "{ct}");

    // A delivery is stored, and still nothing of it (nor the token) is in what
    // the browser gets without the token.
    assert_eq!(
        s.post("msg_dash_1", &user("user_dash1", "Ada", 1)).await,
        200
    );
    s.settle().await;
    for (path, body) in [
        ("/admin", fetch(&s, "/admin").await.3),
        ("js", js),
        ("css", css),
    ] {
        assert!(!body.contains(TOKEN), "{path} contains the admin token");
        assert!(!body.contains("user_dash1"), "{path} contains data");
        assert!(!body.contains("msg_dash_1"), "{path} contains data");
    }
}

#[tokio::test]
async fn entity_endpoint_needs_the_token_and_returns_record_and_audit() {
    let s = with_admin().await;
    assert_eq!(s.post("msg_e1", &user("user_ent1", "Ada", 10)).await, 200);
    assert_eq!(s.post("msg_e2", &user("user_ent1", "Grace", 20)).await, 200);
    let org = json!({"type": "organization.created", "object": "event", "timestamp": 5,
                     "data": {"id": "org_ent1", "object": "organization", "name": "Acme",
                              "slug": "acme", "updated_at": 5}});
    assert_eq!(s.post("msg_o1", &org).await, 200);
    s.settle().await;

    let path = "/admin/entities/user_ent1";
    let (st, body) = s.get_json(path, None).await;
    assert_eq!(st, 401);
    assert!(!body.to_string().contains(TOKEN));
    assert_eq!(s.get_json(path, Some("wrong")).await.0, 401);

    let (st, e) = s.get_json(path, Some(TOKEN)).await;
    assert_eq!(st, 200, "{e}");
    assert_eq!(e["kind"], "user");
    assert_eq!(e["id"], "user_ent1");
    assert_eq!(e["deleted"], false);
    assert_eq!(e["version"], 20);
    assert_eq!(e["record"]["first_name"], "Grace");
    // The same shape as the read API's user.
    assert_eq!(e["record"]["primary_email_address"], "ada@example.com");
    let audit = e["audit"].as_array().unwrap();
    assert_eq!(audit.len(), 2, "{e}");
    assert_eq!(audit[0]["svix_id"], "msg_e1");
    assert_eq!(audit[1]["svix_id"], "msg_e2");
    assert_eq!(audit[1]["changes"]["first_name"]["before"], "Ada");
    assert_eq!(audit[1]["changes"]["first_name"]["after"], "Grace");
    assert_eq!(audit[0]["operation"], "create");
    assert_eq!(audit[0]["changes"], serde_json::json!({}));

    // Paging through the history.
    let (_, p1) = s.get_json(&format!("{path}?limit=1"), Some(TOKEN)).await;
    assert_eq!(p1["audit"].as_array().unwrap().len(), 1);
    let cursor = p1["next_cursor"].as_str().expect("a next cursor");
    let (_, p2) = s
        .get_json(&format!("{path}?limit=1&cursor={cursor}"), Some(TOKEN))
        .await;
    assert_eq!(p2["audit"][0]["svix_id"], "msg_e2");
    assert_eq!(p2["next_cursor"], Value::Null);

    let (st, o) = s.get_json("/admin/entities/org_ent1", Some(TOKEN)).await;
    assert_eq!(st, 200, "{o}");
    assert_eq!(
        (o["kind"].as_str(), o["record"]["name"].as_str()),
        (Some("organization"), Some("Acme"))
    );

    // A deletion: the record is gone, the history (with the delete) stays.
    let del = json!({"type": "user.deleted", "object": "event", "timestamp": 30,
                     "data": {"id": "user_ent1", "object": "user", "deleted": true}});
    assert_eq!(s.post("msg_e3", &del).await, 200);
    s.settle().await;
    let (st, e) = s.get_json(path, Some(TOKEN)).await;
    assert_eq!(st, 200);
    assert_eq!(e["deleted"], true);
    assert_eq!(e["record"], Value::Null);
    let audit = e["audit"].as_array().unwrap();
    assert_eq!(audit.last().unwrap()["operation"], "delete");

    let t = Some(TOKEN);
    assert_eq!(s.get_json("/admin/entities/user_never", t).await.0, 404);
    assert_eq!(s.get_json("/admin/entities/orgmem_1", t).await.0, 400);
    assert_eq!(s.get_json(&format!("{path}?limit=0"), t).await.0, 400);
    assert_eq!(s.get_json(&format!("{path}?cursor=%%%"), t).await.0, 400);
}

/// The demo's poisoned shape dead-letters on the first attempt with an error
/// naming the field, so the dashboard's dead-letter panel has it at once.
#[tokio::test]
async fn a_wrongly_typed_field_dead_letters_with_its_error() {
    let s = with_admin().await;
    let poison = json!({"type": "user.updated", "object": "event", "timestamp": 1,
                        "data": {"id": "user_poison1", "object": "user", "first_name": 42}});
    assert_eq!(s.post("msg_poison", &poison).await, 200);
    s.wait_for("SELECT COUNT(*) FROM inbox WHERE status = 'dead'", 1)
        .await;
    let (_, dead) = s.get_json("/admin/events?status=dead", Some(TOKEN)).await;
    assert_eq!(dead["data"][0]["svix_id"], "msg_poison");
    assert_eq!(dead["data"][0]["attempts"], 1);
    let err = dead["data"][0]["last_error"].as_str().unwrap();
    assert!(err.contains("first_name"), "{err}");
    // Nothing was stored, so the entity page has nothing to show.
    assert_eq!(
        s.get_json("/admin/entities/user_poison1", Some(TOKEN))
            .await
            .0,
        404
    );
}

/// The chart's history comes from the server: a freshly opened page gets the
/// last five minutes, per second, and they add up to what `/admin/stats` counts
/// (duplicates and refused deliveries are not "received"; a dead letter is
/// received but never processed).
#[tokio::test]
async fn throughput_history_adds_up_to_the_stored_counts() {
    let s = with_admin().await;
    assert_eq!(s.get_json("/admin/throughput", None).await.0, 401);
    assert_eq!(s.get_json("/admin/throughput", Some("wrong")).await.0, 401);
    let (st, empty) = s.get_json("/admin/throughput", Some(TOKEN)).await;
    assert_eq!(st, 200);
    assert_eq!(empty["received"].as_array().unwrap().len(), 300, "{empty}");
    assert_eq!(empty["processed"].as_array().unwrap().len(), 300);
    assert_eq!(empty["interval_secs"], 1);

    for i in 0..6 {
        let id = format!("msg_tp_{i}");
        assert_eq!(
            s.post(&id, &user(&format!("user_tp{i}"), "Ada", 10 + i))
                .await,
            200
        );
    }
    // A retry of a stored delivery, a forgery and a poisoned event.
    assert_eq!(s.post("msg_tp_0", &user("user_tp0", "Ada", 10)).await, 200);
    let (body, ts) = (
        user("user_tp9", "Eve", 1).to_string(),
        crate::helpers::system_now_secs().to_string(),
    );
    let forged = s
        .client
        .post(s.url("/webhooks/clerk"))
        .header("svix-id", "msg_tp_forged")
        .header("svix-timestamp", &ts)
        .header(
            "svix-signature",
            crate::helpers::sign(b"not the key", "msg_tp_forged", &ts, body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    let poison = json!({"type": "user.updated", "object": "event", "timestamp": 1,
                        "data": {"id": "user_tp_poison", "object": "user", "first_name": 42}});
    assert_eq!(s.post("msg_tp_poison", &poison).await, 200);
    s.settle().await;

    let (_, stats) = s.get_json("/admin/stats", Some(TOKEN)).await;
    assert_eq!(stats["received"], 7, "{stats}");
    assert_eq!(stats["processed"], 6, "{stats}");
    // A fresh GET, as a page opened now makes it.
    let (_, h) = s.get_json("/admin/throughput", Some(TOKEN)).await;
    let sum = |k: &str| {
        let v = h[k].as_array().unwrap();
        assert_eq!(v.len(), 300, "{h}");
        v.iter().map(|n| n.as_u64().unwrap()).sum::<u64>()
    };
    assert_eq!(sum("received"), 7, "{h}");
    assert_eq!(sum("processed"), 6, "{h}");
    assert!(
        h["until"].as_i64().unwrap() >= crate::helpers::system_now_secs() - 5,
        "{h}"
    );
}

/// A running `clerksync demo` child with its stdout lines arriving on `lines`.
struct Demo {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    stderr: std::path::PathBuf,
    printed: Vec<String>,
}

impl Demo {
    /// Starts `clerksync demo` in `cwd` with a clean environment.
    fn start(cwd: &std::path::Path, args: &[&str]) -> Demo {
        let stderr = cwd.join(format!("stderr-{}.log", rand::random::<u32>()));
        let mut cmd = demo_command(cwd, args);
        cmd.stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap());
        let mut child = cmd.spawn().expect("spawn clerksync demo");
        let stdout = child.stdout.take().unwrap();
        // stdout is read by a thread, so the demo never blocks on it.
        let (tx, lines) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Demo {
            child,
            lines,
            stderr,
            printed: Vec::new(),
        }
    }

    /// The first stdout line containing `needle` (hang guard: 60 s).
    fn wait_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => {
                    self.printed.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    panic!(
                        "no line with {needle:?}; stdout: {:?}; stderr: {}",
                        self.printed,
                        std::fs::read_to_string(&self.stderr).unwrap_or_default()
                    )
                }
            }
        }
    }

    /// SIGTERM, then the exit status and the rest of stdout.
    fn stop(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let term = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(term.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("demo did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The child is gone, so its stdout ends and the reader thread hangs up.
        let mut rest = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(10)) {
            rest.push(line);
        }
        (status, rest)
    }
}

fn demo_command(cwd: &std::path::Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clerksync"));
    cmd.arg("demo")
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null());
    crate::helpers::without_inherited_settings(&mut cmd);
    cmd
}

async fn admin_stats(client: &reqwest::Client, base: &str, token: &str) -> Value {
    client
        .get(format!("{base}/admin/stats"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// `clerksync demo` as a newcomer runs it: it prints the dashboard address with
/// its token, the opening burst and the poisoned events arrive, the live stream
/// keeps going after the burst, the suggested loadgen line works as printed,
/// SIGTERM stops it; a second run reuses its directory cleanly, and refuses it
/// once something foreign is in there.
#[tokio::test]
async fn demo_prints_a_working_dashboard_address_keeps_streaming_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--data-dir",
        "demo",
        "--events",
        "200",
        "--rate",
        "1000",
        "--live-rate",
        "50",
    ];
    let mut demo = Demo::start(dir.path(), &args);
    let url = demo.wait_line("Dashboard:");
    let url = url.trim().strip_prefix("Dashboard:").unwrap().trim();
    let (page, token) = url.split_once("#token=").expect("token in the fragment");
    assert!(
        page.starts_with("http://127.0.0.1:") && page.ends_with("/admin"),
        "{url}"
    );
    let base = page.trim_end_matches("/admin").to_string();
    // A connection per request: while the printed loadgen line fills the
    // server's connection cap, the server evicts idle keep-alive connections
    // (by design), and a pooled one closed just as it is reused fails the
    // request with IncompleteMessage.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let loadgen_line = demo.wait_line(" loadgen --url ").trim().to_string();

    let html = client.get(page).send().await.unwrap();
    assert_eq!(html.status(), 200);
    assert!(!html.text().await.unwrap().contains(token));

    // The whole burst and the three poisoned deliveries land.
    demo.wait_line("demo burst done");
    let deadline = Instant::now() + Duration::from_secs(60);
    let stats = loop {
        let s = admin_stats(&client, &base, token).await;
        if s["dead"] == 3 && s["received"].as_i64() >= Some(203) {
            break s;
        }
        assert!(Instant::now() < deadline, "stats never settled: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(stats["failed"], 0, "{stats}");
    let wrong = client
        .get(format!("{base}/admin/stats"))
        .bearer_auth("not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    // After the burst, the live stream keeps arriving and being applied.
    let after_burst = stats["processed"].as_i64().unwrap();
    loop {
        let s = admin_stats(&client, &base, token).await;
        if s["processed"].as_i64().unwrap() >= after_burst + 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no live stream after the burst: {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The suggested loadgen line runs as printed, the secret in its environment
    // rather than on its command line (where `ps` would show it).
    assert!(
        loadgen_line.starts_with("CLERKSYNC_WEBHOOK_SECRET=whsec_")
            && !loadgen_line.contains("--secret"),
        "{loadgen_line}"
    );
    let before = admin_stats(&client, &base, token).await["received"]
        .as_i64()
        .unwrap();
    let mut sh = Command::new("sh");
    sh.args(["-c", &loadgen_line])
        .current_dir(dir.path())
        .stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("CLERKSYNC_") {
            sh.env_remove(k);
        }
    }
    let out = sh.output().expect("run the printed loadgen line");
    assert!(
        out.status.success(),
        "{loadgen_line}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = admin_stats(&client, &base, token).await["received"]
        .as_i64()
        .unwrap();
    assert!(after >= before + 1000, "{before} -> {after}");

    let (status, rest) = demo.stop();
    assert!(status.success(), "{status}");
    assert!(rest.iter().any(|l| l.contains("demo stopped")), "{rest:?}");
    let data = dir.path().join("demo");
    assert!(data.join("clerksync.db").exists());

    // A second run reuses the directory it made: its own files go, it serves.
    let mut again = Demo::start(dir.path(), &args);
    let line = again.wait_line("Data directory:");
    assert!(
        line.contains("the previous demo's data was removed"),
        "{line}"
    );
    let (status, _) = again.stop();
    assert!(status.success(), "{status}");

    // Something the demo did not write: refused, named, and nothing deleted.
    std::fs::write(data.join("notes.txt"), b"mine").unwrap();
    let out = demo_command(dir.path(), &args).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("notes.txt") && stderr.contains("nothing was deleted"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(data.join("notes.txt")).unwrap(), b"mine");
    assert!(data.join("clerksync.db").exists());
}

/// `--data-dir .` (or any directory the demo did not make, even an empty one)
/// is refused before anything is written or deleted.
#[test]
fn demo_refuses_directories_it_did_not_make() {
    let cwd = tempfile::tempdir().unwrap();
    // What an earlier demo version left behind: its marker in a project folder.
    std::fs::write(cwd.path().join(".clerksync-demo"), b"").unwrap();
    std::fs::write(cwd.path().join("Cargo.toml"), b"[package]").unwrap();
    let out = demo_command(cwd.path(), &["--data-dir", "."])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--data-dir . is refused"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(cwd.path().join("Cargo.toml").exists());
    assert!(cwd.path().join(".clerksync-demo").exists());
    let mut names: Vec<_> = std::fs::read_dir(cwd.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, [".clerksync-demo", "Cargo.toml"], "nothing written");

    // An existing empty directory: refused, and it never gets a marker.
    std::fs::create_dir(cwd.path().join("empty")).unwrap();
    let out = demo_command(cwd.path(), &["--data-dir", "empty"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("was not made by `clerksync demo`"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_dir(cwd.path().join("empty")).unwrap().count(),
        0
    );
}

#[test]
fn demo_on_a_taken_port_says_so() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_clerksync"))
        .args(["demo", "--listen", &addr])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("run clerksync demo");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&addr) && stderr.contains("already in use"),
        "{stderr}"
    );
    // It stopped before making its data directory.
    assert!(!dir.path().join("demo-data").exists());
    drop(taken);
}
