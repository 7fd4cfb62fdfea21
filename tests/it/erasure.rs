//! Erasure after the retention: it runs in small transactions while webhooks
//! keep being accepted, and leaves nothing of a deleted user on disk (database
//! file and WAL, search index files, logs), including deliveries that named the
//! user only by its email address or phone number.

use crate::backends::sqlite_server;
use crate::helpers::{whsec, TEST_KEY};
use clerksync::sync::erasure::{purge_expired, ERASE_USERS_PER_TX};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const GUARD: Duration = Duration::from_secs(90);

fn user(id: &str, email: &str, phone: &str, at: i64) -> Value {
    json!({"type": "user.updated", "object": "event", "timestamp": at, "data": {
        "id": id, "object": "user", "first_name": "Wilhelmina", "last_name": "Quarrington",
        "username": null, "primary_email_address_id": "idn_1",
        "email_addresses": [{"id": "idn_1", "email_address": email, "object": "email_address"}],
        "phone_numbers": [{"id": "idn_p", "phone_number": phone}],
        "created_at": 1, "updated_at": at}})
}

fn user_deleted(id: &str, at: i64) -> Value {
    json!({"type": "user.deleted", "object": "event", "timestamp": at,
           "data": {"deleted": true, "id": id, "object": "user"}})
}

/// Many deleted users: the purge takes many short transactions (at most
/// `ERASE_USERS_PER_TX` users each), and deliveries posted meanwhile are
/// accepted while it is still running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_runs_in_small_transactions_while_deliveries_are_accepted() {
    let s = Arc::new(sqlite_server(|_| {}).await);
    let users = 4 * ERASE_USERS_PER_TX as usize + 10;
    for i in 0..users {
        let id = format!("user_{i:04}");
        let email = format!("p{i}@erase.test");
        assert_eq!(
            s.post(&format!("msg_u{i}"), &user(&id, &email, "+15550000000", 10))
                .await,
            200
        );
        assert_eq!(
            s.post(&format!("msg_d{i}"), &user_deleted(&id, 20)).await,
            200
        );
    }
    s.settle().await;
    let done = Arc::new(AtomicBool::new(false));
    let during = Arc::new(AtomicUsize::new(0));
    let poster = {
        let (s, done, during) = (s.clone(), done.clone(), during.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !done.load(Ordering::SeqCst) {
                let st = s
                    .post(
                        &format!("msg_live{i}"),
                        &user(&format!("user_live{i}"), "l@x.io", "+1", 5),
                    )
                    .await;
                assert_eq!(st, 200, "a delivery during the purge");
                if !done.load(Ordering::SeqCst) {
                    during.fetch_add(1, Ordering::SeqCst);
                }
                i += 1;
            }
        })
    };
    let deadline = Instant::now() + GUARD;
    let (mut transactions, mut erased) = (0u64, 0u64);
    loop {
        let r = purge_expired(&s.db, i64::MAX).await.unwrap();
        if r.archive_rows == 0 {
            break;
        }
        assert!(r.users_erased <= ERASE_USERS_PER_TX, "{r:?}");
        transactions += 1;
        erased += r.users_erased;
        assert!(Instant::now() < deadline, "purge never finished");
        tokio::task::yield_now().await;
    }
    done.store(true, Ordering::SeqCst);
    poster.await.unwrap();
    assert_eq!(erased, users as u64);
    assert!(
        transactions >= users as u64 / ERASE_USERS_PER_TX,
        "{transactions} transactions for {users} users"
    );
    assert!(
        during.load(Ordering::SeqCst) > 0,
        "no delivery was acknowledged while the purge ran"
    );
    // Bodies are stored compressed: searched once decoded.
    let left = s.bodies().await;
    assert!(!left.is_empty());
    assert!(!left.iter().any(|b| b.contains("@erase.test")));
}

/// `clerksync serve` at RUST_LOG=debug with a search index directory and a
/// retention of 0 days.
fn serve(dir: &Path, log: &str) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clerksync"));
    cmd.arg("serve").current_dir(dir);
    crate::helpers::without_inherited_settings(&mut cmd);
    cmd.env("CLERKSYNC_WEBHOOK_SECRET", whsec(TEST_KEY))
        .env(
            "CLERKSYNC_DATABASE_URL",
            format!("sqlite://{}", dir.join("t.db").display()),
        )
        .env("CLERKSYNC_SEARCH_DIR", dir.join("search"))
        .env("CLERKSYNC_ARCHIVE_RETENTION_DAYS", "0")
        .env("CLERKSYNC_LISTEN", "127.0.0.1:0")
        .env("CLERKSYNC_LOG_FORMAT", "json")
        .env("RUST_LOG", "debug");
    let log = std::fs::File::create(dir.join(log)).unwrap();
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
    cmd.spawn().expect("spawn clerksync")
}

async fn wait_listening(dir: &Path, log: &str, child: &mut Child) -> String {
    let deadline = Instant::now() + GUARD;
    loop {
        let text = std::fs::read_to_string(dir.join(log)).unwrap_or_default();
        let addr = text.lines().find_map(|line| {
            let v: Value = serde_json::from_str(line).ok()?;
            let a = v["fields"]["addr"].as_str()?;
            (a.parse::<std::net::SocketAddr>().ok()?.port() != 0).then(|| a.to_string())
        });
        if let Some(a) = addr {
            return format!("http://{a}");
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!("clerksync exited ({st}): {text}");
        }
        assert!(
            Instant::now() < deadline,
            "clerksync never listened: {text}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn post(base: &str, svix_id: &str, body: &Value) -> u16 {
    crate::helpers::post_signed(&reqwest::Client::new(), base, svix_id, body)
        .await
        .as_u16()
}

async fn wait_until(what: &str, mut ok: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + GUARD;
    while !ok().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + GUARD;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("clerksync did not stop");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every file under `dir` (recursively) whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_containing(&path, needle));
        } else if let Ok(bytes) = std::fs::read(&path) {
            if bytes.windows(needle.len()).any(|w| w == needle) {
                out.push(path.display().to_string());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_of_an_erased_user_is_left_on_disk_or_in_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let email = "wilhelmina.quarrington@erasure.test";
    let phone = "+15557778899";
    let mut child = serve(d, "run1.log");
    let base = wait_listening(d, "run1.log", &mut child).await;
    let events = [
        user("user_erase", email, phone, 10),
        // Clerk sends verification emails and SMS with user_id null.
        json!({"type": "email.created", "object": "event", "timestamp": 11, "data": {
            "id": "ema_1", "object": "email", "user_id": null, "to_email_address": email,
            "subject": "Your code", "body": "Your code is 271828", "status": "queued"}}),
        json!({"type": "sms.created", "object": "event", "timestamp": 12, "data": {
            "id": "sms_1", "object": "sms_message", "user_id": null, "to_phone_number": phone,
            "message": "Your code is 314159", "status": "queued"}}),
        // A payload that cannot apply (another user, same address): its error
        // must not quote the value.
        json!({"type": "user.updated", "object": "event", "timestamp": 13, "data": {
            "id": "user_bad", "object": "user", "created_at": email,
            "email_addresses": [{"id": "idn_b", "email_address": email}]}}),
        user_deleted("user_erase", 20),
    ];
    for (i, e) in events.iter().enumerate() {
        assert_eq!(post(&base, &format!("msg_e{i}"), e).await, 200);
    }
    let client = reqwest::Client::new();
    wait_until("the user's deletion to apply", async || {
        client
            .get(format!("{base}/v1/users/user_erase"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 410)
    })
    .await;
    // Let the invalid event fail at least once and the search index catch up.
    let db = d.join("t.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", db.display()))
        .await
        .unwrap();
    wait_until("the invalid event to fail", async || {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM inbox WHERE last_error IS NOT NULL")
            .fetch_one(&pool)
            .await
            .unwrap()
            > 0
    })
    .await;
    let last_error: String =
        sqlx::query_scalar("SELECT last_error FROM inbox WHERE last_error IS NOT NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(last_error.contains("created_at"), "{last_error}");
    assert!(!last_error.contains(email), "{last_error}");
    pool.close().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop(child);
    // The retention is 0 days: the purge at start-up erases the user.
    let mut child = serve(d, "run2.log");
    wait_listening(d, "run2.log", &mut child).await;
    wait_until("the retention purge", async || {
        std::fs::read_to_string(d.join("run2.log"))
            .unwrap_or_default()
            .contains("retention purge")
    })
    .await;
    // The WAL truncation follows the purge; let it land.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop(child);
    // Stored bodies are compressed, so the byte search above cannot see into
    // them: search them decoded too.
    let bodies = crate::helpers::read_inbox(&d.join("t.db")).await;
    assert_eq!(bodies.len(), events.len());
    for needle in [email, phone, "271828", "314159", "Quarrington"] {
        let found = files_containing(d, needle.as_bytes());
        assert!(found.is_empty(), "{needle} is still in {found:?}");
        assert!(
            !bodies.iter().any(|r| r.body.contains(needle)),
            "{needle} is still in a stored body"
        );
    }
}
