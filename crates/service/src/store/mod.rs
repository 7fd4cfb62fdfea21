//! The store: the database, its migrations, and reads over it.
//!
//! Owns: every SQL statement outside the inbox append path. Must never: decide
//! what an event means (that is `sync`), or hold a transaction across a network call.

pub mod db;
pub mod migrations;

pub use db::Database;

/// Inbox rows by status.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct StatusCounts {
    pub received: i64,
    pub pending: i64,
    pub processed: i64,
    pub failed: i64,
    pub dead: i64,
    pub discarded: i64,
}

pub async fn inbox_counts(db: &Database) -> Result<StatusCounts, sqlx::Error> {
    const Q: &str = "SELECT status, COUNT(*) FROM inbox GROUP BY status";
    let rows: Vec<(String, i64)> = match db {
        Database::Sqlite(p, ..) => sqlx::query_as(Q).fetch_all(p).await?,
        Database::Postgres(p) => sqlx::query_as(Q).fetch_all(p).await?,
    };
    let mut c = StatusCounts::default();
    for (status, n) in rows {
        c.received += n;
        match status.as_str() {
            "pending" => c.pending += n,
            "done" => c.processed += n,
            "failed" => c.failed += n,
            "dead" => c.dead += n,
            "discarded" => c.discarded += n,
            _ => {}
        }
    }
    Ok(c)
}
pub mod events;
pub mod maintenance;
pub mod read;
pub mod sqlite;
pub mod tx;
