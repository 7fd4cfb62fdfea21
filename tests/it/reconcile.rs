//! Reconciliation inside `serve` (backfill/schedule.rs), black box over HTTP
//! against the stand-in for Clerk's Backend API: a scheduled pass repairs a
//! store that missed webhooks (deletions included) with no command run;
//! `GET`/`POST /admin/reconcile` (token, 409 while a pass runs anywhere); two
//! servers on one PostgreSQL database run one pass at a time and take over a
//! lapsed lease; `clerksync backfill --url` (the real binary) has the server
//! run the pass.
//!
//! Durations are hang guards and schedule periods, never assertions.

use crate::backends::{postgres_schema_url, sqlite_server, start, SchemaGuard, Server};
use crate::backfill::{assert_store_equals, stand_in, stream, KEY};
use crate::helpers::{wait_exit, without_inherited_settings};
use clerksync::backfill::client::{ClientConfig, SecretKey};
use clerksync::backfill::schedule::ReconcileConfig;
use clerksync::config::{Config, Token};
use clerksync_loadgen::clerk_api::Faults;
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};

const ADMIN: &str = "reconcile-admin-token-5d1e";
const GUARD: Duration = Duration::from_secs(120);

/// Reconciliation against the stand-in at `url`: no rate limit, quick retries.
pub(crate) fn reconcile_config(url: &str, every: Option<Duration>) -> ReconcileConfig {
    let mut c = ClientConfig::new(url, SecretKey::parse(KEY).unwrap()).unwrap();
    c.rate = None;
    c.retry_base = Duration::from_millis(10);
    ReconcileConfig {
        every,
        client: Some(c),
        max_delete_share: 0.5,
        lease: Duration::from_secs(3),
        ..ReconcileConfig::default()
    }
}

fn with_reconcile(c: &mut Config, url: &str, every: Option<Duration>) {
    c.admin_token = Some(Token::new(ADMIN));
    c.reconcile = reconcile_config(url, every);
}

async fn status(s: &Server) -> Value {
    let (code, v) = s.get_json("/admin/reconcile", Some(ADMIN)).await;
    assert_eq!(code, 200, "{v}");
    v
}

async fn post(s: &Server, body: Option<Value>, token: Option<&str>) -> (u16, Value) {
    let mut req = s.client.post(s.url("/admin/reconcile"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

/// Polls `GET /admin/reconcile` until `done` holds for it; returns it.
async fn wait_status(s: &Server, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + GUARD;
    loop {
        let v = status(s).await;
        if done(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A pass that started at or after `after` (unix ms) has ended.
fn finished_since(after: i64) -> impl Fn(&Value) -> bool {
    move |v| v["status"] == "idle" && v["last"]["started_at"].as_i64().is_some_and(|t| t >= after)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn scalar(s: &Server, sql: &str) -> i64 {
    s.scalar(sql).await
}

/// Half of a stream delivered as webhooks, the other half lost; no command
/// is run: the next scheduled pass brings the store to Clerk's state,
/// deletions included, and says what it repaired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_pass_repairs_missed_webhooks_including_deletions() {
    let events = stream(6_000, 31);
    let half = events.len() / 2;
    let (api, url) = stand_in(&events).await;
    let server = sqlite_server(|c| with_reconcile(c, &url, Some(Duration::from_secs(2)))).await;
    for e in &events[..half] {
        let body: Value = serde_json::from_slice(&e.body).unwrap();
        assert_eq!(server.post(&e.svix_id, &body).await, 200);
    }
    server.settle().await;
    let delivered = now_ms();
    assert!(
        events[half..]
            .iter()
            .any(|e| e.event_type == "user.deleted"),
        "the lost half deletes users"
    );
    let v = wait_status(
        &server,
        "a scheduled pass after the webhooks",
        finished_since(delivered),
    )
    .await;
    assert_eq!(v["last"]["trigger"], "schedule", "{v}");
    assert_eq!(v["last"]["ok"], true, "{v}");
    assert_eq!(v["every_secs"], 2);
    assert!(v["next_run_at"].as_i64().unwrap() > v["last"]["finished_at"].as_i64().unwrap());
    server.settle().await;
    assert_store_equals(&server.db, &api).await;
    let reconciled = scalar(
        &server,
        "SELECT COUNT(*) FROM audit WHERE svix_id = 'reconcile: not in Clerk' AND operation = 'delete'",
    )
    .await;
    assert!(reconciled >= 1, "deletions reconciled: {reconciled}");
    // The read API follows: a user the lost half deleted is gone there too.
    let gone = events[half..]
        .iter()
        .find(|e| e.event_type == "user.deleted" && api.get("users", &e.entity_id).is_none())
        .expect("a deleted user");
    let (code, _) = server
        .get_json(&format!("/v1/users/{}", gone.entity_id), None)
        .await;
    assert!(code == 404 || code == 410, "deleted user answers {code}");
    let text = server.metrics_text().await;
    assert!(
        text.contains("clerksync_reconcile_passes_total{result=\"complete\"}"),
        "{text}"
    );
    assert!(text.contains("clerksync_reconcile_records_total{resource=\"users\",outcome=\"seen\"}"));
    assert!(text.contains("clerksync_reconcile_last_drift{resource=\"users\"}"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reconcile_needs_the_token_and_answers_409_while_a_pass_runs() {
    let events = stream(3_000, 33);
    let (api, url) = stand_in(&events).await;
    let server = sqlite_server(|c| with_reconcile(c, &url, None)).await;
    // Auth like every /admin route.
    assert_eq!(server.get_json("/admin/reconcile", None).await.0, 401);
    assert_eq!(
        server.get_json("/admin/reconcile", Some("wrong")).await.0,
        401
    );
    assert_eq!(post(&server, None, None).await.0, 401);
    let v = status(&server).await;
    assert_eq!(v["status"], "idle");
    assert_eq!(v["key_configured"], true);
    assert!(v["last"].is_null() && v["next_run_at"].is_null(), "{v}");
    // A bad body is refused; nothing starts.
    let (code, body) = post(&server, Some(json!({"resources": ["nope"]})), Some(ADMIN)).await;
    assert_eq!(code, 400, "{body}");
    let (code, _) = post(&server, Some(json!({"dry_run": "yes"})), Some(ADMIN)).await;
    assert_eq!(code, 400);
    // Slow pages keep the pass running while a second request comes.
    api.set_faults(Faults {
        page_delay: Duration::from_millis(150),
        ..Faults::default()
    });
    let (code, started) = post(&server, None, Some(ADMIN)).await;
    assert_eq!(code, 202, "{started}");
    let (code, busy) = post(&server, None, Some(ADMIN)).await;
    assert_eq!(code, 409, "{busy}");
    assert!(busy["error"].as_str().unwrap().contains("already running"));
    let running = status(&server).await;
    assert_eq!(running["status"], "running", "{running}");
    assert_eq!(running["running"]["node"], "this");
    assert_eq!(running["running"]["resources"][0]["resource"], "users");
    api.set_faults(Faults::default());
    let t = started["started_at"].as_i64().unwrap();
    let v = wait_status(&server, "the pass", finished_since(t)).await;
    assert_eq!(v["last"]["ok"], true, "{v}");
    let users = &v["last"]["resources"][0];
    assert_eq!(users["resource"], "users", "{v}");
    assert_eq!(users["seen"], api.len("users") as i64, "{v}");
    assert_eq!(users["created"], users["seen"]);
    assert_eq!(users["ending"], "complete");
    assert_eq!(
        v["last"]["drift"].as_i64().unwrap(),
        v["last"]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["drift"].as_i64().unwrap())
            .sum::<i64>()
    );
    server.settle().await;
    assert_store_equals(&server.db, &api).await;
    // A dry run chosen in the body changes nothing and finds nothing now.
    let audit = scalar(&server, "SELECT COUNT(*) FROM audit").await;
    let (code, started) = post(
        &server,
        Some(json!({"resources": ["users"], "dry_run": true})),
        Some(ADMIN),
    )
    .await;
    assert_eq!(code, 202, "{started}");
    let v = wait_status(
        &server,
        "the dry run",
        finished_since(started["started_at"].as_i64().unwrap()),
    )
    .await;
    assert_eq!(v["last"]["dry_run"], true);
    assert_eq!(v["last"]["resources"].as_array().unwrap().len(), 1);
    assert_eq!(v["last"]["drift"], 0, "{v}");
    assert_eq!(scalar(&server, "SELECT COUNT(*) FROM audit").await, audit);
    server.stop().await;
    // Without a Clerk key the server says so.
    let keyless = sqlite_server(|c| c.admin_token = Some(Token::new(ADMIN))).await;
    let (code, body) = post(&keyless, None, Some(ADMIN)).await;
    assert_eq!(code, 409, "{body}");
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("CLERKSYNC_CLERK_SECRET_KEY"));
    assert_eq!(status(&keyless).await["key_configured"], false);
    keyless.stop().await;
}

/// Two servers on one PostgreSQL database: the schedule runs one pass for
/// both; a pass on one is a 409 on the other (which shows it running
/// elsewhere, then its result); a lease left by a killed node is taken over
/// once it lapses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_postgres_database_run_one_pass_at_a_time() {
    let Some((db_url, schema)) = postgres_schema_url().await else {
        return;
    };
    let events = stream(3_000, 35);
    let (api, url) = stand_in(&events).await;
    let hour = Some(Duration::from_secs(3600));
    let a = start(&db_url, Box::new(SchemaGuard(schema)), |c| {
        with_reconcile(c, &url, hour)
    })
    .await;
    let b = start(&db_url, Box::new(()), |c| with_reconcile(c, &url, hour)).await;
    // The schedule's first pass: one of the two runs it, the other sees it done.
    wait_status(&a, "the first scheduled pass", finished_since(0)).await;
    // Both nodes poll the schedule every second (lease 3 s / 3): give them a
    // few rounds to start a second pass, which they must not.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let passes = |text: String| {
        crate::helpers::metric_value(
            &text,
            "clerksync_reconcile_passes_total{result=\"complete\"}",
        )
        .unwrap_or(0.0)
    };
    let total = passes(a.metrics_text().await) + passes(b.metrics_text().await);
    assert_eq!(total, 1.0, "one scheduled pass for two nodes");
    assert_store_equals(&a.db, &api).await;

    api.set_faults(Faults {
        page_delay: Duration::from_millis(150),
        ..Faults::default()
    });
    let (code, started) = post(&a, None, Some(ADMIN)).await;
    assert_eq!(
        code,
        202,
        "{started}: a {} b {}",
        status(&a).await,
        status(&b).await
    );
    let (code, busy) = post(&b, None, Some(ADMIN)).await;
    assert_eq!(code, 409, "{busy}");
    assert!(
        busy["error"]
            .as_str()
            .unwrap()
            .contains("on a node sharing this database"),
        "{busy}"
    );
    let elsewhere = status(&b).await;
    assert_eq!(elsewhere["status"], "running");
    assert_eq!(elsewhere["running"]["node"], "other", "{elsewhere}");
    api.set_faults(Faults::default());
    let t = started["started_at"].as_i64().unwrap();
    wait_status(&a, "the pass on a", finished_since(t)).await;
    // b answers with a's result: the last pass is kept in the database.
    let seen_by_b = wait_status(&b, "a's result on b", finished_since(t)).await;
    assert_eq!(seen_by_b["last"]["trigger"], "request");

    // A node killed mid-pass leaves its lease: held until it lapses, then
    // taken over.
    a.exec(
        "UPDATE reconcile_lease SET holder = 'killed-node', \
         expires_at = (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::bigint + 3000",
    )
    .await;
    let (code, _) = post(&b, None, Some(ADMIN)).await;
    assert_eq!(code, 409, "the killed node's lease still holds");
    let deadline = Instant::now() + GUARD;
    let started = loop {
        let (code, body) = post(&b, None, Some(ADMIN)).await;
        if code == 202 {
            break body;
        }
        assert_eq!(code, 409, "{body}");
        assert!(
            Instant::now() < deadline,
            "the lapsed lease was never taken over"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let v = wait_status(
        &b,
        "b's pass",
        finished_since(started["started_at"].as_i64().unwrap()),
    )
    .await;
    assert_eq!(v["last"]["ok"], true, "{v}");
    b.stop().await;
    a.stop().await;
}

fn backfill_url(server: &Server, token: &str, args: &[&str]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clerksync"));
    without_inherited_settings(&mut cmd);
    cmd.arg("backfill")
        .arg("--url")
        .arg(format!("http://{}", server.addr))
        .args(args)
        .env("CLERKSYNC_ADMIN_TOKEN", token);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.log");
    let file = std::fs::File::create(&path).unwrap();
    cmd.stdout(file.try_clone().unwrap()).stderr(file);
    let mut child = cmd.spawn().expect("clerksync starts");
    let status = wait_exit(&mut child, "clerksync backfill --url hung");
    (
        status.code().unwrap_or(-1),
        std::fs::read_to_string(&path).unwrap(),
    )
}

/// The real binary asks a running server to run the pass, follows it and
/// exits with its result; a refusal is a non-zero exit with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_url_has_the_running_server_run_the_pass() {
    let events = stream(3_000, 37);
    let (api, url) = stand_in(&events).await;
    let server = sqlite_server(|c| with_reconcile(c, &url, None)).await;
    // Slow enough pages that a progress line or two shows.
    api.set_faults(Faults {
        page_delay: Duration::from_millis(20),
        ..Faults::default()
    });
    let (code, text) = tokio::task::block_in_place(|| backfill_url(&server, ADMIN, &[]));
    assert_eq!(code, 0, "{text}");
    let users = api.len("users");
    assert!(
        text.contains(&format!("users: {users} listed; {users} created")),
        "{text}"
    );
    // stderr is a file here: plain progress lines, no terminal escapes.
    let done = text
        .lines()
        .find(|l| l.starts_with("users done:"))
        .unwrap_or_else(|| panic!("a plain progress line: {text}"));
    assert!(
        !done.contains('\u{1b}'),
        "escape codes in a log line: {done}"
    );
    server.settle().await;
    assert_store_equals(&server.db, &api).await;
    // A second pass through the binary finds nothing to do.
    let (code, text) = tokio::task::block_in_place(|| {
        backfill_url(&server, ADMIN, &["--resources", "users", "--json"])
    });
    assert_eq!(code, 0, "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with('{'))
        .expect("a JSON line");
    let report: Value = serde_json::from_str(line).unwrap();
    assert_eq!(report["drift"], 0, "{report}");
    assert_eq!(report["resources"][0]["unchanged"], users as i64);

    let (code, text) = tokio::task::block_in_place(|| backfill_url(&server, "wrong", &[]));
    assert_ne!(code, 0);
    assert!(text.contains("refused the admin token"), "{text}");
    assert!(!text.contains("wrong"), "never echo the token: {text}");
    // While a pass runs, the command is refused with the reason.
    api.set_faults(Faults {
        page_delay: Duration::from_millis(300),
        ..Faults::default()
    });
    let (code, started) = post(&server, None, Some(ADMIN)).await;
    assert_eq!(code, 202);
    let (code, text) = tokio::task::block_in_place(|| backfill_url(&server, ADMIN, &[]));
    assert_ne!(code, 0);
    assert!(text.contains("already running"), "{text}");
    api.set_faults(Faults::default());
    wait_status(
        &server,
        "the pass",
        finished_since(started["started_at"].as_i64().unwrap()),
    )
    .await;
    // Local-only flags are refused with --url.
    let (code, text) = tokio::task::block_in_place(|| backfill_url(&server, ADMIN, &["--restart"]));
    assert_ne!(code, 0);
    assert!(text.contains("do not apply with --url"), "{text}");
    assert!(!text.contains(KEY));
    server.stop().await;
}
