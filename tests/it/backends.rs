//! Databases for tests: a temp-dir SQLite file, or a fresh PostgreSQL schema.
//!
//! PostgreSQL comes from CLERKSYNC_TEST_POSTGRES_URL (default the machine's
//! local server). Unreachable: outside CI the test says so and skips; under
//! CI=true it fails.

use clerksync::config::DatabaseUrl;
use clerksync::store::db::Database;

pub async fn sqlite_db() -> (Database, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/t.db", dir.path().display());
    let db = Database::open(&DatabaseUrl::parse(&url).unwrap()).await.unwrap();
    (db, dir)
}

pub fn postgres_base_url() -> String {
    std::env::var("CLERKSYNC_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A database URL whose connections use a new, empty schema; None (skip) when
/// PostgreSQL is unreachable outside CI.
pub async fn postgres_schema_url() -> Option<(String, String)> {
    let base = postgres_base_url();
    let admin = match sqlx::PgPool::connect(&base).await {
        Ok(p) => p,
        Err(e) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("PostgreSQL at {base} is unreachable under CI=true: {e}");
            }
            eprintln!("SKIP: PostgreSQL at {base} is unreachable ({e}); set CLERKSYNC_TEST_POSTGRES_URL");
            return None;
        }
    };
    let schema = format!("cs_test_{}", rand::random::<u64>());
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&admin).await.unwrap();
    admin.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    Some((format!("{base}{sep}options=-c%20search_path%3D{schema}"), schema))
}

/// Drops the schema when the test ends.
pub struct SchemaGuard(pub String);

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let schema = self.0.clone();
        let base = postgres_base_url();
        // A fresh runtime on a fresh thread: Drop may run inside another runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                if let Ok(p) = sqlx::PgPool::connect(&base).await {
                    let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).execute(&p).await;
                    p.close().await;
                }
            });
        })
        .join();
    }
}

pub async fn postgres_db() -> Option<(Database, SchemaGuard)> {
    let (url, schema) = postgres_schema_url().await?;
    let db = Database::open(&DatabaseUrl::parse(&url).unwrap()).await.unwrap();
    Some((db, SchemaGuard(schema)))
}
