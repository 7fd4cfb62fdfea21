//! The logs of a full run of the real binary: JSON with `--log-format json`, one
//! span per delivery and per apply carrying the svix-id, and no secret, token,
//! signature or alert-URL token anywhere in its output, even at `RUST_LOG=debug`.

use crate::helpers::{sign, whsec, TEST_KEY};
use axum::routing::post;
use axum::Router;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};
use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const GUARD: Duration = Duration::from_secs(60);
const ADMIN_TOKEN: &str = "adm1n-T0ken-never-logged";
const API_TOKEN: &str = "ap1-T0ken-never-logged";
const ALERT_TOKEN: &str = "XoXb4lertT0kenPart";

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

/// The `addr` field of the JSON log line `serve` writes once it is listening.
fn listening_addr(log: &str) -> Option<String> {
    log.lines().find_map(|line| {
        let v: Value = serde_json::from_str(line).ok()?;
        let addr = v["fields"]["addr"].as_str()?;
        (addr.parse::<std::net::SocketAddr>().ok()?.port() != 0).then(|| addr.to_string())
    })
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spans (current and enclosing) of a JSON log line named `name` with this svix-id.
fn has_span(line: &Value, name: &str, svix_id: &str) -> bool {
    let matches = |s: &Value| s["name"] == name && s["svix_id"] == svix_id;
    line["spans"]
        .as_array()
        .is_some_and(|spans| spans.iter().any(matches))
        || matches(&line["span"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_run_logs_json_with_spans_and_no_secrets() {
    // A Slack-like alert receiver whose URL path is a token.
    let alerts = Arc::new(AtomicUsize::new(0));
    let seen = alerts.clone();
    let hook = Router::new().route(
        &format!("/services/T0/B0/{ALERT_TOKEN}"),
        post(move || {
            let seen = seen.clone();
            async move {
                seen.fetch_add(1, Ordering::SeqCst);
                "ok"
            }
        }),
    );
    let rx = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let alert_url = format!(
        "http://{}/services/T0/B0/{ALERT_TOKEN}",
        rx.local_addr().unwrap()
    );
    tokio::spawn(async move { axum::serve(rx, hook).await });

    // A stand-in Clerk API for the scheduled reconciliation pass (its key must
    // never show either).
    let (_clerk, clerk_url) = crate::backfill::stand_in(&crate::backfill::stream(300, 43)).await;

    let dir = tempfile::tempdir().unwrap();
    let secret = whsec(TEST_KEY);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clerksync"));
    cmd.args(["serve", "--log-format", "json"])
        .current_dir(dir.path());
    crate::helpers::without_inherited_settings(&mut cmd);
    cmd.env("RUST_LOG", "debug")
        .env("CLERKSYNC_WEBHOOK_SECRET", &secret)
        .env(
            "CLERKSYNC_DATABASE_URL",
            format!("sqlite://{}", dir.path().join("t.db").display()),
        )
        .env("CLERKSYNC_LISTEN", "127.0.0.1:0")
        .env("CLERKSYNC_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("CLERKSYNC_API_TOKEN", API_TOKEN)
        .env("CLERKSYNC_ALERT_WEBHOOK_URL", &alert_url)
        .env("CLERKSYNC_RECONCILE_EVERY", "24h")
        .env("CLERKSYNC_CLERK_SECRET_KEY", crate::backfill::KEY)
        .env("CLERKSYNC_CLERK_API_URL", &clerk_url)
        .env("CLERKSYNC_CLERK_RATE", "off")
        .stdin(Stdio::null())
        .stdout(File::create(dir.path().join("stdout.log")).unwrap())
        .stderr(File::create(dir.path().join("stderr.log")).unwrap());
    let mut child = Running(cmd.spawn().expect("spawn clerksync"));

    let deadline = Instant::now() + GUARD;
    let addr = loop {
        if let Some(a) = listening_addr(&read(dir.path(), "stderr.log")) {
            break a;
        }
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!(
                "clerksync exited ({status}): {}",
                read(dir.path(), "stderr.log")
            );
        }
        assert!(
            Instant::now() < deadline,
            "clerksync never said where it listens"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let base = format!("http://{addr}");
    let client = reqwest::Client::builder().timeout(GUARD).build().unwrap();

    // Every signature value sent, genuine or forged: none may be logged.
    let mut signatures: Vec<String> = Vec::new();
    let ts = crate::helpers::system_now_secs().to_string();
    let mut send = |id: &str, body: &Value, key: &[u8]| {
        let body = body.to_string();
        let sig = sign(key, id, &ts, body.as_bytes());
        signatures.push(sig.trim_start_matches("v1,").to_string());
        client
            .post(format!("{base}/webhooks/clerk"))
            .header("svix-id", id)
            .header("svix-timestamp", &ts)
            .header("svix-signature", sig)
            .body(body)
            .send()
    };
    let user = |id: &str| {
        json!({"type": "user.created", "object": "event", "timestamp": 1_700_000_000_000i64,
                                 "data": {"id": id, "object": "user", "first_name": "Ada"}})
    };
    for i in 0..3 {
        let r = send(
            &format!("msg_log_ok{i}"),
            &user(&format!("user_log{i}")),
            TEST_KEY,
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = send(
        "msg_log_forged",
        &user("user_forged"),
        b"some-other-key-entirely-32bytes!",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 401);
    let poisoned = json!({"type": "user.updated", "object": "event", "timestamp": 1_700_000_000_000i64,
                          "data": {"id": "user_log_poison", "object": "user", "first_name": 42}});
    assert_eq!(
        send("msg_log_poison", &poisoned, TEST_KEY)
            .await
            .unwrap()
            .status(),
        200
    );

    // The read API with its token (waiting for the apply), the admin API with its own.
    let r = client
        .get(format!("{base}/v1/users/user_log2?wait_ms=30000"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for path in [
        "/admin/stats",
        "/admin/events?status=dead",
        "/admin/events/msg_log_ok0",
    ] {
        let r = client
            .get(format!("{base}{path}"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    // The dead letter's alert went out over the URL with the token in it.
    let alert_deadline = Instant::now() + GUARD;
    while alerts.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < alert_deadline, "the alert never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The scheduled reconciliation pass that ran at start-up has ended.
    let pass_deadline = Instant::now() + GUARD;
    loop {
        let v: Value = client
            .get(format!("{base}/admin/reconcile"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["status"] == "idle" && v["last"]["ok"] == true {
            break;
        }
        assert!(
            Instant::now() < pass_deadline,
            "no reconciliation pass: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Stop it (SIGTERM) so every line is written.
    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::block_in_place(|| {
        let deadline = Instant::now() + GUARD;
        loop {
            if let Some(s) = child.0.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "clerksync did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    assert!(exit.success(), "exit {exit}");

    let stderr = read(dir.path(), "stderr.log");
    let all = format!("{}{stderr}", read(dir.path(), "stdout.log"));
    let key_b64 = B64.encode(TEST_KEY);
    let mut forbidden = vec![
        secret.clone(),
        key_b64.clone(),
        key_b64.trim_end_matches('=').to_string(),
        ADMIN_TOKEN.to_string(),
        API_TOKEN.to_string(),
        ALERT_TOKEN.to_string(),
        crate::backfill::KEY.to_string(),
    ];
    forbidden.extend(signatures);
    for f in &forbidden {
        assert!(!all.contains(f.as_str()), "the logs contain {f:?}");
    }

    // JSON, line by line, with the delivery and apply spans of a posted delivery.
    let lines: Vec<Value> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() > 10, "debug logs: {}", lines.len());
    assert!(
        lines.iter().any(|l| has_span(l, "delivery", "msg_log_ok0")),
        "no line in the delivery span of msg_log_ok0"
    );
    assert!(
        lines.iter().any(|l| has_span(l, "apply", "msg_log_ok0")
            && l["spans"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["event_type"] == "user.created"))),
        "no line in the apply span of msg_log_ok0"
    );
    assert!(
        lines
            .iter()
            .any(|l| has_span(l, "delivery", "msg_log_forged")),
        "a refused delivery is traced by its id too"
    );
}
