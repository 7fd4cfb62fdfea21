//! Databases for tests: a temp-dir SQLite file, or a fresh PostgreSQL schema.
//!
//! PostgreSQL comes from CLERKSYNC_TEST_POSTGRES_URL (default the machine's
//! local server). Unreachable: outside CI the test skips visibly (`skip.rs`);
//! under CI=true it fails.

use clerksync::config::DatabaseUrl;
use clerksync::store::db::Database;

pub async fn sqlite_db() -> (Database, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/t.db", dir.path().display());
    let db = Database::open(&DatabaseUrl::parse(&url).unwrap())
        .await
        .unwrap();
    (db, dir)
}

pub fn postgres_base_url() -> String {
    std::env::var("CLERKSYNC_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A database URL whose connections use a new, empty schema; None (skip) when
/// PostgreSQL is unreachable outside CI.
pub async fn postgres_schema_url() -> Option<(String, String)> {
    let base = postgres_base_url();
    // One plain connection: a pool would retry a refused port for 30 s.
    use sqlx::Connection;
    let mut admin = match sqlx::PgConnection::connect(&base).await {
        Ok(c) => c,
        Err(e) => {
            crate::skip::skip(
                &format!("PostgreSQL at {base} is unreachable ({e})"),
                "start PostgreSQL or set CLERKSYNC_TEST_POSTGRES_URL",
            );
            return None;
        }
    };
    let schema = format!("cs_test_{}", rand::random::<u64>());
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let _ = admin.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    Some((
        format!("{base}{sep}options=-c%20search_path%3D{schema}"),
        schema,
    ))
}

/// Drops the schema when the test ends.
pub struct SchemaGuard(pub String);

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let schema = self.0.clone();
        let base = postgres_base_url();
        // A fresh runtime on a fresh thread: Drop may run inside another runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(p) = sqlx::PgPool::connect(&base).await {
                    let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                        .execute(&p)
                        .await;
                    p.close().await;
                }
            });
        })
        .join();
    }
}

pub async fn postgres_db() -> Option<(Database, SchemaGuard)> {
    let (url, schema) = postgres_schema_url().await?;
    let db = Database::open(&DatabaseUrl::parse(&url).unwrap())
        .await
        .unwrap();
    Some((db, SchemaGuard(schema)))
}

use crate::helpers::{whsec, TEST_KEY};
use clerksync::{App, Config};
use serde_json::Value;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A running app on either backend, for tests that care about applied state.
pub struct Server {
    pub addr: std::net::SocketAddr,
    pub client: reqwest::Client,
    /// The same database the app uses, for looking underneath the API.
    pub db: Database,
    /// The app's realtime hub: `settle` waits for it to reach the feed head.
    realtime: std::sync::Arc<clerksync::realtime::RealtimeHub>,
    shutdown: CancellationToken,
    handle: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _keep: Box<dyn std::any::Any + Send + Sync>,
}

pub async fn start(
    url: &str,
    keep: Box<dyn std::any::Any + Send + Sync>,
    tweak: impl FnOnce(&mut Config),
) -> Server {
    let mut config = Config::for_tests(&whsec(TEST_KEY), url);
    tweak(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = App::build(config, listener).await.expect("app builds");
    let addr = app.local_addr();
    let db = app.state().db.clone();
    let realtime = app.state().realtime.clone();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let handle = tokio::spawn(app.run(async move { token.cancelled().await }));
    Server {
        addr,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap(),
        db,
        realtime,
        shutdown,
        handle: Some(handle),
        _keep: keep,
    }
}

pub async fn sqlite_server(tweak: impl FnOnce(&mut Config)) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/t.db", dir.path().display());
    start(&url, Box::new(dir), tweak).await
}

pub async fn postgres_server(tweak: impl FnOnce(&mut Config)) -> Option<Server> {
    let (url, schema) = postgres_schema_url().await?;
    Some(start(&url, Box::new(SchemaGuard(schema)), tweak).await)
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Posts a delivery signed now with the test key.
    pub async fn post(&self, svix_id: &str, body: &Value) -> reqwest::StatusCode {
        let base = format!("http://{}", self.addr);
        crate::helpers::post_signed(&self.client, &base, svix_id, body).await
    }

    pub async fn get_json(&self, path: &str, token: Option<&str>) -> (reqwest::StatusCode, Value) {
        let mut req = self.client.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_json(&self, path: &str, token: Option<&str>) -> (reqwest::StatusCode, Value) {
        let mut req = self.client.post(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// The `/metrics` page as text.
    pub async fn metrics_text(&self) -> String {
        let resp = self.client.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.text().await.unwrap()
    }

    /// One sample's value from `/metrics`, e.g.
    /// `clerksync_realtime_rejected_total{reason="expired_token"}`; None when absent.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        crate::helpers::metric_value(&self.metrics_text().await, sample)
    }

    pub async fn scalar(&self, sql: &str) -> i64 {
        match &self.db {
            Database::Sqlite(..) => {
                let p = &crate::helpers::sqlite_pool(&self.db).await;
                sqlx::query_scalar(sql).fetch_one(p).await.unwrap()
            }
            Database::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
        }
    }

    pub async fn exec(&self, sql: &str) {
        match &self.db {
            Database::Sqlite(..) => {
                let p = &crate::helpers::sqlite_pool(&self.db).await;
                sqlx::query(sql).execute(p).await.map(|_| ())
            }
            Database::Postgres(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
        }
        .unwrap()
    }

    /// Every stored delivery body, decoded (compressed or plain), in seq order.
    pub async fn bodies(&self) -> Vec<String> {
        let stored: Vec<Option<Vec<u8>>> = match &self.db {
            Database::Sqlite(..) => {
                let p = &crate::helpers::sqlite_pool(&self.db).await;
                sqlx::query_scalar(
                    "SELECT CAST(COALESCE(body_zstd, body) AS BLOB) FROM inbox_bodies ORDER BY seq",
                )
                .fetch_all(p)
                .await
                .unwrap()
            }
            Database::Postgres(p) => sqlx::query_scalar(
                "SELECT COALESCE(body_zstd, convert_to(body, 'UTF8')) FROM inbox_bodies ORDER BY seq",
            )
            .fetch_all(p)
            .await
            .unwrap(),
        };
        stored
            .iter()
            .map(|b| clerksync::store::body::decode(b.as_deref()))
            .collect()
    }

    /// Waits (up to 60 s) until `sql` returns `want`.
    pub async fn wait_for(&self, sql: &str, want: i64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let got = self.scalar(sql).await;
            if got == want {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for `{sql}` = {want} (last {got})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until nothing is pending or awaiting a retry.
    pub async fn settle(&self) {
        self.wait_for(
            "SELECT COUNT(*) FROM inbox WHERE status IN ('pending', 'failed')",
            0,
        )
        .await;
        // And the realtime hub has fanned out every committed change: a
        // subscription made after `settle` starts after all of them.
        let head = self
            .scalar("SELECT COALESCE(MAX(seq), 0) FROM change_feed")
            .await;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while self.realtime.position() < head {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for the realtime hub to reach seq {head}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
