//! The alert webhook, against a local receiver: one alert for a burst of dead
//! letters, one for signature failures over the rate, retried after 500s, and a
//! receiver that hangs never holds processing up.
//!
//! Waits are bounded polls (hang guards); "exactly one" is also proven by the
//! counters (`alerts_suppressed_total`), not only by a grace period.

use crate::backends::{sqlite_server, Server};
use crate::helpers::{sign, TEST_KEY};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use clerksync::alerts::AlertUrl;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const GUARD: Duration = Duration::from_secs(60);
/// After the awaited alert arrived: time for an unwanted second one to show.
const GRACE: Duration = Duration::from_millis(700);
/// The path part of the alert URL stands in for a Slack token.
const TOKEN_PATH: &str = "/services/T0001/B0002/s3cr3tT0ken";

/// A Slack-like receiver on 127.0.0.1:0 that answers 500 to its first
/// `fail_first` requests and collects the bodies it accepts.
struct Receiver {
    url: String,
    accepted: Arc<Mutex<Vec<Value>>>,
    hits: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct RxState {
    accepted: Arc<Mutex<Vec<Value>>>,
    hits: Arc<AtomicUsize>,
    fail_first: usize,
}

async fn hook(State(s): State<RxState>, Json(body): Json<Value>) -> StatusCode {
    let n = s.hits.fetch_add(1, Ordering::SeqCst);
    if n < s.fail_first {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    s.accepted.lock().unwrap().push(body);
    StatusCode::OK
}

impl Receiver {
    async fn start(fail_first: usize) -> Receiver {
        let state = RxState {
            accepted: Arc::default(),
            hits: Arc::default(),
            fail_first,
        };
        let app = Router::new()
            .route(TOKEN_PATH, post(hook))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}{TOKEN_PATH}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver {
            url,
            accepted: state.accepted,
            hits: state.hits,
        }
    }

    fn texts(&self) -> Vec<String> {
        self.accepted
            .lock()
            .unwrap()
            .iter()
            .map(|b| b["text"].as_str().expect("a text field").to_string())
            .collect()
    }

    /// Waits for at least `n` accepted alerts, then a grace period; returns all.
    async fn wait_for(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + GUARD;
        while self.accepted.lock().unwrap().len() < n {
            assert!(Instant::now() < deadline, "no alert arrived");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(GRACE).await;
        self.texts()
    }
}

async fn alerting_server(url: &str, tweak: impl FnOnce(&mut clerksync::Config)) -> Server {
    let url = AlertUrl::parse(url).unwrap();
    sqlite_server(|c| {
        c.alerts.url = Some(url);
        tweak(c);
    })
    .await
}

/// Signed and well-formed, but `first_name` has the wrong type: it can never apply.
fn poisoned(user: &str) -> Value {
    json!({"type": "user.updated", "object": "event", "timestamp": 1_700_000_000_000i64,
           "data": {"id": user, "object": "user", "first_name": 42}})
}

fn valid(user: &str) -> Value {
    json!({"type": "user.created", "object": "event", "timestamp": 1_700_000_000_000i64,
           "data": {"id": user, "object": "user", "first_name": "Ada"}})
}

async fn metric(s: &Server, sample: &str) -> f64 {
    s.metric(sample).await.unwrap_or(0.0)
}

async fn wait_metric(s: &Server, sample: &str, want: f64) {
    let deadline = Instant::now() + GUARD;
    loop {
        let got = metric(s, sample).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sample} never reached {want} (last {got})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_burst_of_dead_letters_raises_exactly_one_alert() {
    let rx = Receiver::start(0).await;
    let s = alerting_server(&rx.url, |_| {}).await;
    for i in 0..5 {
        assert_eq!(
            s.post(&format!("msg_dead{i}"), &poisoned(&format!("user_p{i}")))
                .await,
            200
        );
    }
    s.wait_for("SELECT COUNT(*) FROM inbox WHERE status = 'dead'", 5)
        .await;
    // Every dead letter after the first lands in the window and is counted.
    wait_metric(&s, "clerksync_alerts_suppressed_total", 4.0).await;
    let texts = rx.wait_for(1).await;
    assert_eq!(texts.len(), 1, "{texts:?}");
    let text = &texts[0];
    assert!(text.contains("dead-lettered"), "{text}");
    assert!(text.contains("user.updated"), "{text}");
    assert!(
        (0..5).any(|i| text.contains(&format!("msg_dead{i}")) && text.contains(&format!("user_p{i}"))),
        "names the event and its entity: {text}"
    );
    assert!(
        !text.contains("first_name\":42"),
        "no body in an alert: {text}"
    );
    assert_eq!(metric(&s, "clerksync_alerts_sent_total").await, 1.0);
    assert_eq!(metric(&s, "clerksync_alerts_failed_total").await, 0.0);
    s.stop().await;
}

#[tokio::test]
async fn signature_failures_over_the_rate_raise_one_alert() {
    let rx = Receiver::start(0).await;
    let s = alerting_server(&rx.url, |c| c.alerts.signature_failures_per_minute = 3).await;
    let body = valid("user_forged").to_string();
    let ts = crate::helpers::system_now_secs().to_string();
    for i in 0..3 {
        let id = format!("msg_forged{i}");
        let status = s
            .client
            .post(s.url("/webhooks/clerk"))
            .header("svix-id", &id)
            .header("svix-timestamp", &ts)
            .header(
                "svix-signature",
                sign(
                    b"not-the-endpoint-key-at-all!!!!!",
                    &id,
                    &ts,
                    body.as_bytes(),
                ),
            )
            .body(body.clone())
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 401);
    }
    // At the threshold: nothing yet (the counter is read after the last answer).
    assert_eq!(metric(&s, "clerksync_alerts_sent_total").await, 0.0);
    assert!(rx.texts().is_empty());
    for i in 3..12 {
        let id = format!("msg_forged{i}");
        s.client
            .post(s.url("/webhooks/clerk"))
            .header("svix-id", &id)
            .header("svix-timestamp", &ts)
            .header(
                "svix-signature",
                "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            )
            .body(body.clone())
            .send()
            .await
            .unwrap();
    }
    let texts = rx.wait_for(1).await;
    assert_eq!(texts.len(), 1, "{texts:?}");
    assert!(texts[0].contains("signature failures"), "{}", texts[0]);
    assert!(texts[0].contains("more than 3"), "{}", texts[0]);
    s.stop().await;
}

#[tokio::test]
async fn an_alert_is_retried_until_the_receiver_takes_it() {
    let rx = Receiver::start(2).await;
    let s = alerting_server(&rx.url, |_| {}).await;
    s.post("msg_dead_retry", &poisoned("user_retry")).await;
    let texts = rx.wait_for(1).await;
    assert_eq!(texts.len(), 1, "{texts:?}");
    assert!(texts[0].contains("msg_dead_retry"));
    assert_eq!(rx.hits.load(Ordering::SeqCst), 3, "two 500s, then 200");
    wait_metric(&s, "clerksync_alerts_sent_total", 1.0).await;
    assert_eq!(metric(&s, "clerksync_alerts_failed_total").await, 0.0);
    s.stop().await;
}

#[tokio::test]
async fn a_hung_receiver_never_holds_processing_up() {
    // Bound and never accepting: connections hang until the per-attempt timeout.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}{TOKEN_PATH}", hung.local_addr().unwrap());
    // No rate limit: every dead letter queues an alert, so the queue fills up too.
    let s = alerting_server(&url, |c| c.alerts.min_interval = Duration::ZERO).await;
    for i in 0..100 {
        s.post(&format!("msg_p{i}"), &poisoned(&format!("user_p{i}")))
            .await;
    }
    for i in 0..20 {
        assert_eq!(
            s.post(&format!("msg_ok{i}"), &valid(&format!("user_ok{i}")))
                .await,
            200
        );
    }
    s.wait_for("SELECT COUNT(*) FROM inbox WHERE status = 'dead'", 100)
        .await;
    s.wait_for("SELECT COUNT(*) FROM inbox WHERE status = 'done'", 20)
        .await;
    let (status, user) = s.get_json("/v1/users/user_ok19", None).await;
    assert_eq!(status, 200);
    assert_eq!(user["first_name"], "Ada");
    assert_eq!(metric(&s, "clerksync_alerts_sent_total").await, 0.0);
    // Shutdown is not held up by the hung alert either.
    tokio::time::timeout(GUARD, s.stop())
        .await
        .expect("the app stops while an alert hangs");
    drop(hung);
}

#[tokio::test]
async fn sync_lag_over_the_threshold_raises_an_alert() {
    use clerksync::clock::FixedClock;
    let rx = Receiver::start(0).await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/t.db", dir.path().display());
    let mut config = clerksync::Config::for_tests(&crate::helpers::whsec(TEST_KEY), &url);
    config.alerts.url = Some(AlertUrl::parse(&rx.url).unwrap());
    config.alerts.lag = Duration::from_secs(60);
    let t0 = clerksync::clock::system().now_ms();
    let clock = FixedClock::new(t0);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = clerksync::App::build_with_clock(config, listener, clock.clone())
        .await
        .unwrap();
    let addr = app.local_addr();
    let pool = crate::helpers::sqlite_pool(&app.state().db).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let token = stop.clone();
    let server = tokio::spawn(app.run(async move { token.cancelled().await }));
    let exec = |sql: &'static str| {
        let pool = pool.clone();
        async move { sqlx::query(sql).execute(&pool).await.unwrap() }
    };
    let count_failed = || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM inbox WHERE status = 'failed'")
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };

    // The first attempt fails (a trigger stands in for a database hiccup), so
    // the event waits for its retry; meanwhile two minutes pass on the app's clock.
    exec("CREATE TRIGGER hiccup BEFORE INSERT ON users BEGIN SELECT RAISE(ABORT, 'hiccup'); END")
        .await;
    let body = valid("user_late").to_string();
    let ts = (t0 / 1000).to_string();
    let status = reqwest::Client::new()
        .post(format!("http://{addr}/webhooks/clerk"))
        .header("svix-id", "msg_late")
        .header("svix-timestamp", &ts)
        .header(
            "svix-signature",
            sign(TEST_KEY, "msg_late", &ts, body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    let deadline = Instant::now() + GUARD;
    while count_failed().await != 1 {
        assert!(Instant::now() < deadline, "the first attempt never failed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(rx.texts().is_empty(), "no lag yet");
    // The hiccup ends before the clock makes the retry due: the other way round,
    // a retry could fail again first and be put off past the fixed clock.
    exec("DROP TRIGGER hiccup").await;
    clock.set_ms(t0 + 120_000);

    // Applied 120 s after receipt: over the 60 s threshold.
    let texts = rx.wait_for(1).await;
    assert_eq!(texts.len(), 1, "{texts:?}");
    assert!(texts[0].contains("sync lag over 60 s"), "{}", texts[0]);
    assert!(texts[0].contains("took 120 s"), "{}", texts[0]);
    stop.cancel();
    server.await.unwrap().unwrap();
}

/// A reconciliation pass that finds more records out of step than the
/// threshold raises one alert (webhooks are being lost); the drift shows in
/// `/metrics` too. The stand-in holds users the store never heard of.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconciliation_pass_with_drift_over_the_threshold_raises_an_alert() {
    let rx = Receiver::start(0).await;
    let events = crate::backfill::stream(1_000, 41);
    let (api, api_url) = crate::backfill::stand_in(&events).await;
    let users = api.len("users");
    assert!(users > 5, "the stand-in holds users");
    let s = alerting_server(&rx.url, |c| {
        c.alerts.reconcile_drift = 5;
        // Scheduled, so the first pass runs at start-up with no command.
        c.reconcile = crate::reconcile::reconcile_config(&api_url, Some(Duration::from_secs(3600)));
    })
    .await;
    let texts = rx.wait_for(1).await;
    assert_eq!(texts.len(), 1, "{texts:?}");
    assert!(
        texts[0].contains("reconciliation pass found")
            && texts[0].contains("webhooks are being lost"),
        "{}",
        texts[0]
    );
    assert!(texts[0].contains(&format!("users {users}")), "{}", texts[0]);
    assert!(!texts[0].contains(crate::backfill::KEY));
    let drift = metric(&s, "clerksync_reconcile_last_drift{resource=\"users\"}").await;
    assert_eq!(drift, users as f64);
    s.stop().await;
}
