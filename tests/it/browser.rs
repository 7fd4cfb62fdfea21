//! The dashboard (`GET /admin`) in a real headless browser: Debian's chromium
//! driven over WebDriver (chromedriver, fantoccini).
//!
//! What an operator does: the page refuses a wrong token and opens with the
//! right one; a posted webhook shows up in the live stream; a dead-lettered
//! event is retried with its button and turns processed; a page opened afresh
//! draws the server's throughput history with round axis labels; a screenshot
//! is saved.
//!
//! Needs /usr/bin/chromedriver and /usr/bin/chromium (`.ci/run` installs them).
//! Without them the test says so and skips, except under CI=true, where it fails.
//! Every wait polls the DOM up to a deadline: no sleep stands in for an assertion.

use crate::backends::{sqlite_server, Server};
use clerksync::config::Token;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const TOKEN: &str = "browser-admin-token-51c2";
/// Generous: a cold chromium on a loaded 2-core CI machine is slow to start.
const WAIT: Duration = Duration::from_secs(60);

/// chromedriver on a free loopback port, killed on drop (it ends its browsers
/// when the session closes; the test closes it on every path).
struct Driver {
    child: Child,
    url: String,
    profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// None (skip) when chromedriver is missing outside CI; panics under CI=true.
fn tools_present() -> bool {
    if Path::new(CHROMEDRIVER).exists() && Path::new(CHROMIUM).exists() {
        return true;
    }
    crate::skip::skip(
        &format!("{CHROMEDRIVER} or {CHROMIUM} is missing"),
        "install Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
    );
    false
}

async fn start_driver() -> Driver {
    // The port is free when the OS hands it out but can be taken again (by
    // another test's server) before chromedriver binds it: then chromedriver
    // exits or something else answers, and a new port is tried.
    for _ in 0..3 {
        if let Some(driver) = try_start_driver(WAIT / 3).await {
            return driver;
        }
    }
    panic!("chromedriver did not become ready on any of 3 ports");
}

async fn try_start_driver(wait: Duration) -> Option<Driver> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let url = format!("http://127.0.0.1:{port}");
    let mut driver = Driver {
        child,
        url,
        profile: tempfile::tempdir().unwrap(),
    };
    let status = reqwest::Client::new();
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if driver.child.try_wait().ok().flatten().is_some() {
            return None; // exited: most likely the port was taken
        }
        let ready = status
            .get(format!("{}/status", driver.url))
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success());
        if let Some(r) = ready {
            let v: Value = r.json().await.unwrap_or(Value::Null);
            if v["value"]["ready"] == true {
                return Some(driver);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

async fn open_browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--window-size=1280,1400",
                format!("--user-data-dir={}", driver.profile.path().display()),
            ],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a chromium session")
}

/// Evaluates `script` (with `arguments[0]` = `arg`) until it returns something
/// other than null/false, up to [`WAIT`]; panics with `what` and the last value.
async fn until(c: &Client, what: &str, script: &str, arg: Value) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = c
            .execute(script, vec![arg.clone()])
            .await
            .unwrap_or(Value::Null);
        if !v.is_null() && v != Value::Bool(false) {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Is the delivery `arguments[0]` shown as done in the live event stream?
const ROW_STATUS_IS_DONE: &str =
    "const r = document.querySelector(`#events tr[data-svix-id=\"${arguments[0]}\"]`); \
     return !!r && r.dataset.status === 'done';";

fn screenshot_path() -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    dir.join("dashboard.png")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_a_headless_browser() {
    if !tools_present() {
        return;
    }
    // A stand-in Clerk instance for the reconciliation panel's pass.
    let (clerk, clerk_url) = crate::backfill::stand_in(&crate::backfill::stream(300, 45)).await;
    let s = sqlite_server(|c| {
        c.admin_token = Some(Token::new(TOKEN));
        c.max_attempts = 1;
        c.reconcile = crate::reconcile::reconcile_config(&clerk_url, None);
    })
    .await;
    let driver = start_driver().await;
    let c = open_browser(&driver).await;
    let users = clerk.len("users");
    // Close the session (and its chromium) whatever the steps do, then report.
    let steps =
        futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(steps(&s, &c, users))).await;
    let _ = c.clone().close().await;
    drop(driver);
    if let Err(panic) = steps {
        std::panic::resume_unwind(panic);
    }
}

async fn steps(s: &Server, c: &Client, clerk_users: usize) {
    // The HTTP side refuses: no token, a wrong token.
    assert_eq!(s.get_json("/admin/stats", None).await.0, 401);
    assert_eq!(s.get_json("/admin/stats", Some("wrong")).await.0, 401);

    // Without a token the page asks for one and shows no data.
    c.goto(&s.url("/admin")).await.unwrap();
    until(
        c,
        "the login form",
        "return !document.getElementById('login').hidden && document.getElementById('app').hidden;",
        Value::Null,
    )
    .await;

    // A wrong token: refused, and still nothing but the login form.
    c.goto(&s.url("/admin#token=not-the-token")).await.unwrap();
    let msg = until(
        c,
        "the unauthorized message",
        "const m = document.getElementById('login-msg').textContent; \
         return m.includes('Unauthorized') ? m : null;",
        Value::Null,
    )
    .await;
    assert!(msg.as_str().unwrap().contains("Unauthorized"), "{msg}");
    let app_hidden = c
        .execute("return document.getElementById('app').hidden;", vec![])
        .await
        .unwrap();
    assert_eq!(app_hidden, true, "data shown for a refused token");

    // The right token in the fragment: the page opens and goes live.
    c.goto(&s.url(&format!("/admin#token={TOKEN}")))
        .await
        .unwrap();
    until(
        c,
        "the dashboard to go live",
        "return !document.getElementById('app').hidden \
         && document.getElementById('conn').textContent.startsWith('live');",
        Value::Null,
    )
    .await;
    let url = c.current_url().await.unwrap();
    assert!(
        !url.as_str().contains(TOKEN),
        "the token stays in the address bar: {url}"
    );

    // Reconciliation: no pass yet; the button runs one, and the panel shows
    // its result with the drift per resource (every user was missing here).
    until(
        c,
        "the reconciliation panel",
        "return document.getElementById('rc-summary').textContent.includes('no pass yet');",
        Value::Null,
    )
    .await;
    c.find(Locator::Id("rc-run"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let drift = until(
        c,
        "the pass's drift for users",
        "const r = document.querySelector('#rc-rows tr[data-resource=\"users\"] td[data-drift]'); \
         return r && r.dataset.drift !== '' && document.getElementById('rc-summary').textContent.includes('last pass') \
           ? r.dataset.drift : null;",
        Value::Null,
    )
    .await;
    assert_eq!(drift, json!(clerk_users.to_string()));

    // A webhook posted now appears in the live stream, processed.
    let ev = |id: &str, v: i64| {
        json!({"type": "user.updated", "object": "event", "timestamp": v,
               "data": {"id": id, "object": "user", "first_name": "Grace", "updated_at": v}})
    };
    assert_eq!(s.post("msg_browser_live", &ev("user_live", 1)).await, 200);
    // No reload: the page's own polling brings it in (pending first, maybe).
    until(
        c,
        "msg_browser_live processed in the stream",
        ROW_STATUS_IS_DONE,
        json!("msg_browser_live"),
    )
    .await;

    // A dead letter: the database refuses this user (a trigger stands in for a
    // bad migration), so with max_attempts = 1 the event dead-letters at once.
    s.exec(
        "CREATE TRIGGER poison BEFORE INSERT ON users WHEN NEW.id = 'user_broken' \
         BEGIN SELECT RAISE(ABORT, 'column too narrow'); END",
    )
    .await;
    assert_eq!(s.post("msg_browser_dead", &ev("user_broken", 1)).await, 200);
    let err = until(
        c,
        "msg_browser_dead in the dead letters with its error",
        "const r = document.querySelector(`#dead tr[data-svix-id=\"${arguments[0]}\"]`); \
         return r ? r.querySelector('td.err').textContent : null;",
        json!("msg_browser_dead"),
    )
    .await;
    assert!(err.as_str().unwrap().contains("column too narrow"), "{err}");

    // The cause is fixed; the operator clicks Retry in the page.
    s.exec("DROP TRIGGER poison").await;
    c.find(Locator::Css(
        "#dead tr[data-svix-id=\"msg_browser_dead\"] button[data-action=\"retry\"]",
    ))
    .await
    .expect("a retry button on the dead letter")
    .click()
    .await
    .unwrap();
    until(
        c,
        "msg_browser_dead to turn done in the stream",
        "const r = document.querySelector(`#events tr[data-svix-id=\"${arguments[0]}\"]`); \
         return r && r.dataset.status === 'done' \
           && !document.querySelector(`#dead tr[data-svix-id=\"${arguments[0]}\"]`);",
        json!("msg_browser_dead"),
    )
    .await;
    // Its old error is still shown, but as a past one.
    let cls = c
        .execute(
            "return document.querySelector('#events tr[data-svix-id=\"msg_browser_dead\"] td.err').className;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(cls, "err old");
    let (_, one) = s
        .get_json("/admin/events/msg_browser_dead", Some(TOKEN))
        .await;
    assert_eq!(one["status"], "done", "{one}");
    let (_, user) = s.get_json("/v1/users/user_broken", None).await;
    assert_eq!(user["first_name"], "Grace", "{user}");
    until(
        c,
        "the dead-letter panel to be empty",
        "return !document.getElementById('dead-empty').hidden;",
        Value::Null,
    )
    .await;

    // A page opened now draws the server's history at once: the deliveries of
    // the last minutes are on the chart before this tab has polled twice, and
    // the axis is labelled with round numbers.
    c.goto(&s.url(&format!("/admin#token={TOKEN}")))
        .await
        .unwrap();
    let drawn = until(
        c,
        "the chart to draw the server's history",
        "const d = document.getElementById('chart').dataset; \
         return Number(d.received) >= 2 && Number(d.processed) >= 2 ? d.ticks : null;",
        Value::Null,
    )
    .await;
    let ticks: Vec<u64> = drawn
        .as_str()
        .unwrap()
        .split(',')
        .map(|t| t.parse().expect("whole-number tick labels"))
        .collect();
    assert_eq!(ticks[0], 0, "{drawn}");
    let step = ticks[1];
    let mantissa = step / 10u64.pow(step.ilog10());
    assert!([1, 2, 5].contains(&mantissa), "{drawn}");
    assert!(ticks.windows(2).all(|w| w[1] - w[0] == step), "{drawn}");

    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let path = screenshot_path();
    std::fs::write(&path, &png).unwrap();
    println!("dashboard screenshot: {}", path.display());
}
