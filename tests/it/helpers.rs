//! `TestApp`: the real app (`App::build`) on 127.0.0.1:0 with its own SQLite file
//! in a temp dir, a known signing secret and typed request methods.
//!
//! Deliveries are signed here with `hmac`/`sha2` directly, not with the crate's
//! own signer, so a bug in `WebhookSecret::sign` cannot hide one in `verify`.
//! The inbox is read by opening the same SQLite file with sqlx: the tests see
//! what a restart would see, not what the app holds in memory.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use clerksync::clock::{Clock, FixedClock};
use clerksync::{App, Config};
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::Value;
use sha2::Sha256;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The key every `TestApp` trusts unless told otherwise (32 bytes, like Clerk's).
pub const TEST_KEY: &[u8; 32] = b"clerksync-integration-test-key!!";

pub fn whsec(key: &[u8]) -> String {
    format!("whsec_{}", B64.encode(key))
}

/// The `svix-signature` value for a delivery: `v1,` + base64(HMAC-SHA256(key,
/// "{id}.{timestamp}.{body}")).
pub fn sign(key: &[u8], svix_id: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(svix_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
}

pub fn system_now_secs() -> i64 {
    clerksync::clock::system().now_secs()
}

/// A small valid Clerk envelope.
pub fn user_event(event_type: &str, user_id: &str) -> Vec<u8> {
    serde_json::json!({
        "type": event_type,
        "object": "event",
        "timestamp": 1_700_000_000_000i64,
        "data": {"id": user_id, "object": "user", "first_name": "Ada"},
    })
    .to_string()
    .into_bytes()
}

#[derive(Default)]
pub struct Options {
    /// Overrides `Config.max_body_bytes`.
    pub max_body_bytes: Option<usize>,
    /// Builds the app with `App::build_with_clock` and this clock.
    pub clock: Option<Arc<FixedClock>>,
    /// The configured secret list (default: `whsec(TEST_KEY)`).
    pub secrets: Option<String>,
    /// Overrides `Config.http` (timeouts, connection cap, body budget).
    pub http: Option<clerksync::serve::HttpConfig>,
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub db_path: PathBuf,
    /// The key `post_webhook` signs with.
    pub key: Vec<u8>,
    /// Every configured secret as text, to check error bodies never echo one.
    pub secret_texts: Vec<String>,
    pub clock: Option<Arc<FixedClock>>,
    shutdown: CancellationToken,
    server: Option<JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(Options::default()).await
    }

    pub async fn spawn_with(opts: Options) -> TestApp {
        let dir = tempfile::tempdir().expect("temp dir");
        let db_path = dir.path().join("t.db");
        let secrets = opts.secrets.unwrap_or_else(|| whsec(TEST_KEY));
        let mut config = Config::for_tests(&secrets, &format!("sqlite://{}", db_path.display()));
        if let Some(n) = opts.max_body_bytes {
            config.max_body_bytes = n;
        }
        if let Some(h) = opts.http {
            config.http = h;
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let app = match &opts.clock {
            Some(c) => App::build_with_clock(config, listener, c.clone()).await,
            None => App::build(config, listener).await,
        }
        .expect("app builds");
        let addr = app.local_addr();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let server = tokio::spawn(app.run(async move { token.cancelled().await }));
        let secret_texts = secrets
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        TestApp {
            addr,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("client"),
            db_path,
            key: TEST_KEY.to_vec(),
            secret_texts,
            clock: opts.clock,
            shutdown,
            server: Some(server),
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// "Now" as the app sees it (the fixed clock when there is one).
    pub fn now_secs(&self) -> i64 {
        match &self.clock {
            Some(c) => c.now_secs(),
            None => system_now_secs(),
        }
    }

    /// The three svix headers of a delivery signed with the test key.
    pub fn signed_headers(&self, svix_id: &str, ts: i64, body: &[u8]) -> Vec<(String, String)> {
        let ts = ts.to_string();
        vec![
            ("svix-id".into(), svix_id.into()),
            ("svix-timestamp".into(), ts.clone()),
            ("svix-signature".into(), sign(&self.key, svix_id, &ts, body)),
        ]
    }

    /// POSTs a delivery signed with the test key.
    pub async fn post_webhook(&self, svix_id: &str, ts: i64, body: &[u8]) -> reqwest::Response {
        let headers = self.signed_headers(svix_id, ts, body);
        self.post_raw(&headers, body.to_vec()).await
    }

    /// POSTs exactly these headers and body to `/webhooks/clerk`.
    pub async fn post_raw(
        &self,
        headers: &[(String, String)],
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        let mut req = self
            .client
            .post(self.url("/webhooks/clerk"))
            .header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        req.body(body).send().await.expect("request sent")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request sent")
    }

    pub async fn inbox_rows(&self) -> Vec<InboxRow> {
        read_inbox(&self.db_path).await
    }

    pub async fn inbox_count(&self) -> usize {
        self.inbox_rows().await.len()
    }

    /// Scrapes `/metrics` and returns the value of one sample, e.g.
    /// `clerksync_webhook_deliveries_total{outcome="accepted"}` (0 when absent:
    /// a counter that never moved may not be exported yet).
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = self
            .get("/metrics")
            .await
            .text()
            .await
            .expect("metrics body");
        metric_value(&text, sample).unwrap_or(0.0)
    }

    /// Stops accepting, drains and waits for `run` to return (the database
    /// file stays until the `TestApp` is dropped).
    pub async fn shutdown(&mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server.await.expect("server task").expect("server ran");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// One sample's value from Prometheus text.
pub fn metric_value(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .map(|v| {
            v.split_whitespace()
                .next()
                .unwrap_or(v)
                .parse()
                .expect("a number")
        })
}

/// Status and JSON body of a response.
pub async fn status_json(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    let text = resp.text().await.expect("response body");
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{status}: body is not JSON ({e}): {text:?}"));
    (status, json)
}

#[derive(Debug, Clone)]
pub struct InboxRow {
    pub svix_id: String,
    pub event_type: String,
    pub entity_key: Option<String>,
    pub body: String,
    pub status: String,
}

/// Reads every inbox row from the SQLite file with a connection of its own.
pub async fn read_inbox(path: &Path) -> Vec<InboxRow> {
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(false);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    // Bodies are stored compressed (or, in rows from older builds, as text),
    // with the file's dictionaries, which another process may have trained.
    let dicts: Vec<Vec<u8>> = sqlx::query_scalar("SELECT dict FROM body_dictionaries")
        .fetch_all(&pool)
        .await
        .expect("read body dictionaries");
    for d in &dicts {
        clerksync::store::body::register(d).expect("a stored body dictionary");
    }
    // (svix id, event type, entity key, stored body, status)
    type Row = (String, String, Option<String>, Vec<u8>, String);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT svix_id, event_type, entity_key, CAST(COALESCE(body_zstd, body) AS BLOB), status \
         FROM inbox JOIN inbox_bodies USING (seq) ORDER BY seq",
    )
    .fetch_all(&pool)
    .await
    .expect("read inbox");
    pool.close().await;
    rows.into_iter()
        .map(|(svix_id, event_type, entity_key, body, status)| InboxRow {
            svix_id,
            event_type,
            entity_key,
            body: clerksync::store::body::decode(Some(&body)),
            status,
        })
        .collect()
}

pub async fn inbox_ids(path: &Path) -> HashSet<String> {
    read_inbox(path)
        .await
        .into_iter()
        .map(|r| r.svix_id)
        .collect()
}

#[derive(clap::Parser)]
struct LoadgenCli {
    #[command(flatten)]
    args: clerksync_loadgen::LoadgenArgs,
}

/// `clerksync loadgen` arguments parsed from a command line, as the CLI would.
pub fn loadgen_args(argv: &[&str]) -> clerksync_loadgen::LoadgenArgs {
    use clap::Parser;
    LoadgenCli::parse_from(std::iter::once("loadgen").chain(argv.iter().copied())).args
}

/// Keeps the tests' own environment from configuring the real binary: removes
/// every inherited `CLERKSYNC_*` setting and `RUST_LOG` from `cmd`.
pub fn without_inherited_settings(cmd: &mut std::process::Command) {
    for (k, _) in std::env::vars() {
        if k.starts_with("CLERKSYNC_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
}

/// Waits for a child process to exit and returns its status; past a generous
/// hang guard it kills it and panics with `what` (a guard, never an assertion
/// on how long it took).
pub fn wait_exit(child: &mut std::process::Child, what: &str) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Posts `body` to `{base}/webhooks/clerk` as `svix_id`, signed now with the
/// test key.
pub async fn post_signed(
    client: &reqwest::Client,
    base: &str,
    svix_id: &str,
    body: &Value,
) -> StatusCode {
    let body = body.to_string();
    let ts = system_now_secs().to_string();
    client
        .post(format!("{base}/webhooks/clerk"))
        .header("svix-id", svix_id)
        .header("svix-timestamp", &ts)
        .header(
            "svix-signature",
            sign(TEST_KEY, svix_id, &ts, body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
}

/// A sqlx pool on a SQLite database's file, for tests that inspect or change
/// the database directly (the service itself talks to SQLite through rusqlite).
pub async fn sqlite_pool(db: &clerksync::store::Database) -> sqlx::SqlitePool {
    let path = db.file_path().expect("a SQLite database");
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(false)
        .busy_timeout(Duration::from_secs(10));
    SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(opts)
        .await
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}
