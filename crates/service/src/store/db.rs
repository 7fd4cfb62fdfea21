//! The [`Database`] handle: opening the database the URL names, and the
//! methods the rest of the program calls, each dispatched to the backend.
//!
//! Owns: picking a backend (here and in the [`backend!`] dispatch only) and the
//! start-up errors. Must never: hold backend SQL (that is in `store/sqlite/`
//! and `store/postgres/`), or take a backend's locks for it.

use crate::config::DatabaseUrl;
use crate::store::feed::{FeedEntry, FeedFilter};
use crate::store::inbox::{ApplyStrategy, Delivery, LogRow, NewDelivery, StatusCounts};
use crate::store::sqlite::WriteGate;
use crate::store::{ApplyStore, FeedStore, InboxStore, MaintenanceStore, StoreError};
use sqlx::PgPool;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    // The cause is the error's `source` (shown by `{:#}`), not repeated here, and
    // each message names the setting to fix (start-up prints exactly one line).
    #[error("cannot create the directory {path} for the database (check CLERKSYNC_DATABASE_URL)")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot open the database {url} (check CLERKSYNC_DATABASE_URL)")]
    Open { url: String, source: sqlx::Error },
    #[error("cannot open the database {url} for writing (check CLERKSYNC_DATABASE_URL)")]
    OpenWriter {
        url: String,
        source: rusqlite::Error,
    },
    #[error(
        "cannot open the write-ahead log {path} of the database (check CLERKSYNC_DATABASE_URL)"
    )]
    Wal {
        path: String,
        source: std::io::Error,
    },
    #[error("CLERKSYNC_DATABASE_URL {0} is an in-memory SQLite database: clerksync acknowledges a webhook only once it is on disk, so give it a file (sqlite://path/to/clerksync.db)")]
    InMemory(String),
    #[error("no database at {path}: check --data-dir or --database-url (CLERKSYNC_DATA_DIR, CLERKSYNC_DATABASE_URL); `clerksync migrate` creates one")]
    Missing { path: String },
    #[error("cannot connect to PostgreSQL at {addr}: connection refused (is the server running and listening there? check CLERKSYNC_DATABASE_URL)")]
    PgRefused { addr: String },
    #[error("cannot connect to PostgreSQL at {addr}: no answer within {secs} s (check the host and port in CLERKSYNC_DATABASE_URL)")]
    PgTimeout { addr: String, secs: u64 },
    #[error("PostgreSQL database \"{name}\" does not exist at {addr}: create it (`createdb {name}`) or fix the database name in CLERKSYNC_DATABASE_URL")]
    PgNoDatabase { name: String, addr: String },
    #[error("PostgreSQL search_path {search_path} names no existing schema in database \"{name}\": create it (CREATE SCHEMA {schema}) or fix search_path in CLERKSYNC_DATABASE_URL")]
    PgNoSchema {
        search_path: String,
        name: String,
        /// The schema to create, as far as the path tells (else "...").
        schema: String,
    },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database migration failed: {0}")]
    SqliteMigrate(#[source] crate::store::sqlite::SqliteMigrateError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("a delivery-body dictionary stored in the database is damaged")]
    BodyDictionary(#[source] crate::store::body::NotADictionary),
}

/// The one database every stage shares: the inbox and the store live together so
/// an event's effects and its "done" mark commit in one transaction.
///
/// Its variants are for the store's own dispatch (and tests that inspect a
/// database directly); the program talks to it through its methods.
#[derive(Clone, Debug)]
pub enum Database {
    /// The gate that owns the writer and reader connections every statement
    /// of the backend runs on (`store::sqlite`).
    Sqlite(Arc<WriteGate>),
    Postgres(PgPool),
}

/// Runs `$body` with `$b` bound to the database's backend, which implements the
/// store's traits. The one place a backend is picked (besides [`Database::open`]).
macro_rules! backend {
    ($db:expr, |$b:ident| $body:expr) => {
        match $db {
            Database::Sqlite(gate) => {
                let $b = crate::store::sqlite::Sqlite { gate };
                $body
            }
            Database::Postgres(pool) => {
                let $b = crate::store::postgres::Postgres { pool };
                $body
            }
        }
    };
}
pub(crate) use backend;

impl Database {
    /// Opens a database that must already exist, and migrates it: for commands
    /// that read or operate on stored data (`events`, `reindex`, `replay`), where
    /// a mistyped path must not silently become an empty store.
    pub async fn open_existing(url: &DatabaseUrl) -> Result<Database, DbError> {
        if let DatabaseUrl::Sqlite(u) = url {
            crate::store::sqlite::check_exists(u)?;
        }
        // PostgreSQL: a missing database is refused by the server itself.
        Database::open(url).await
    }

    /// Opens (creating a SQLite file if needed) and migrates.
    pub async fn open(url: &DatabaseUrl) -> Result<Database, DbError> {
        match url {
            DatabaseUrl::Sqlite(u) => crate::store::sqlite::open(u).await,
            DatabaseUrl::Postgres(u) => crate::store::postgres::open(u).await,
        }
    }

    /// How the processor should apply on this backend.
    pub(crate) fn strategy(&self) -> ApplyStrategy {
        backend!(self, |b| b.strategy())
    }

    /// Runs `fut`, a loop that takes turns writing, where the backend's writers
    /// run best (SQLite: a thread of its own, see `store::sqlite::spawn_gate_thread`;
    /// elsewhere: a task). The handle resolves when it ends.
    pub(crate) fn spawn_writer<F>(&self, name: &str, fut: F) -> tokio::task::JoinHandle<()>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        match self {
            Database::Sqlite(..) => crate::store::sqlite::spawn_gate_thread(name, fut),
            Database::Postgres(_) => tokio::spawn(fut),
        }
    }

    /// Runs `fut`, whose awaits are calls on a transaction of this database,
    /// as the backend runs them best (SQLite: polled on this thread, every call
    /// completes at once; elsewhere: awaited).
    pub(crate) async fn run_tx<F: std::future::Future>(&self, fut: F) -> F::Output {
        match self {
            Database::Sqlite(..) => crate::store::sqlite::run_blocking(fut),
            Database::Postgres(_) => fut.await,
        }
    }

    /// The database file, when the backend keeps the data in one (SQLite):
    /// for tools and tests that open it themselves.
    pub fn file_path(&self) -> Option<&std::path::Path> {
        match self {
            Database::Sqlite(gate) => Some(gate.path()),
            Database::Postgres(_) => None,
        }
    }

    /// Is the database answering? (`/readyz`)
    pub async fn ping(&self) -> Result<(), StoreError> {
        backend!(self, |b| b.ping().await)
    }

    /// Connections open, and how many of them are idle (`/metrics`).
    pub fn pool_stats(&self) -> (u32, usize) {
        backend!(self, |b| b.pool_stats())
    }

    pub async fn close(&self) {
        backend!(self, |b| b.close().await)
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            Database::Sqlite(..) => "sqlite",
            Database::Postgres(_) => "postgres",
        }
    }

    /// Appends deliveries whose svix-ids are distinct, in one transaction; for
    /// each row, whether it was new. Durable when it returns.
    pub(crate) async fn append(&self, rows: &[NewDelivery]) -> Result<Vec<bool>, StoreError> {
        let bodies: Vec<Vec<u8>> = rows.iter().map(|r| self.compress_body(&r.body)).collect();
        backend!(self, |b| b.append(rows, &bodies).await)
    }

    /// A delivery body as this database stores it ([`crate::store::body`]):
    /// on SQLite with the database's trained dictionary once it has one
    /// stored; on PostgreSQL a plain zstd frame. Pure CPU, no database call:
    /// ingress runs it on the HTTP workers.
    pub(crate) fn compress_body(&self, body: &str) -> Vec<u8> {
        match self {
            Database::Sqlite(gate) => gate.bodies().compress(body),
            Database::Postgres(_) => crate::store::body::compress(body),
        }
    }

    /// [`Database::append`] with bodies already compressed, committed but not
    /// necessarily durable yet: the answer to each delivery waits for
    /// [`Database::sync_appends`] (PostgreSQL: a commit is durable when it
    /// returns; SQLite: the WAL's fsync, which the group committer runs on a
    /// thread of its own while it commits the next batch).
    pub(crate) async fn append_committed(
        &self,
        rows: &[NewDelivery],
        bodies: &[Vec<u8>],
    ) -> Result<Vec<bool>, StoreError> {
        match self {
            Database::Sqlite(gate) => {
                crate::store::sqlite::Sqlite { gate }
                    .append_unsynced(rows, bodies)
                    .await
            }
            Database::Postgres(pool) => {
                crate::store::postgres::Postgres { pool }
                    .append(rows, bodies)
                    .await
            }
        }
    }

    /// Whether [`Database::append_committed`] needs [`Database::sync_appends`]
    /// before its deliveries are durable.
    pub(crate) fn appends_need_sync(&self) -> bool {
        matches!(self, Database::Sqlite(..))
    }

    /// Makes every append committed so far durable (blocking; SQLite: one
    /// fsync of the WAL, without the write gate). A no-op on PostgreSQL.
    pub(crate) fn sync_appends(&self) -> Result<(), StoreError> {
        match self {
            Database::Sqlite(gate) => gate.sync(),
            Database::Postgres(_) => Ok(()),
        }
    }

    /// Leases up to `limit` due events, oldest first.
    pub(crate) async fn claim(
        &self,
        now: i64,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<Delivery>, StoreError> {
        let mut rows = backend!(self, |b| b.claim(now, lease_until, limit).await)?;
        rows.sort_by_key(|d| d.seq);
        Ok(rows)
    }

    /// Due events, oldest first, without leasing them, leaving out `skip`.
    pub(crate) async fn due(
        &self,
        now: i64,
        skip: &[i64],
        limit: i64,
    ) -> Result<Vec<Delivery>, StoreError> {
        backend!(self, |b| b.due(now, skip, limit).await)
    }

    /// Gives back leases (shutdown).
    pub(crate) async fn release(&self, seqs: &[i64]) -> Result<(), StoreError> {
        backend!(self, |b| b.release(seqs).await)
    }

    /// Records a failed attempt: retried after `next_attempt_at`, or dead.
    pub(crate) async fn mark_failed(
        &self,
        seq: i64,
        error: &str,
        dead: bool,
        next_attempt_at: i64,
    ) -> Result<(), StoreError> {
        // Bounded: an error message is for humans, not a place to store payloads.
        let error: String = error.chars().take(2000).collect();
        backend!(self, |b| b
            .mark_failed(seq, &error, dead, next_attempt_at)
            .await)
    }

    /// Inbox rows by status.
    pub async fn inbox_counts(&self) -> Result<StatusCounts, StoreError> {
        backend!(self, |b| b.counts().await)
    }

    /// Is any delivery pending or waiting for a retry?
    pub(crate) async fn anything_due(&self) -> Result<bool, StoreError> {
        backend!(self, |b| b.anything_due().await)
    }

    /// Queues again the done deliveries received at or after `since_ms`; how many.
    pub(crate) async fn requeue_since(&self, since_ms: i64) -> Result<u64, StoreError> {
        backend!(self, |b| b.requeue_since(since_ms).await)
    }

    /// How many deliveries the inbox holds.
    pub(crate) async fn inbox_len(&self) -> Result<i64, StoreError> {
        backend!(self, |b| b.len().await)
    }

    /// The stored log after `after`, in seq order, discarded deliveries left out.
    pub(crate) async fn log_page(&self, after: i64, limit: i64) -> Result<Vec<LogRow>, StoreError> {
        backend!(self, |b| b.log_page(after, limit).await)
    }

    /// The feed entries of `filter` after `after`, oldest first.
    pub(crate) async fn read_feed(
        &self,
        filter: FeedFilter<'_>,
        after: i64,
        limit: i64,
    ) -> Result<Vec<FeedEntry>, StoreError> {
        backend!(self, |b| b.read_feed(filter, after, limit).await)
    }

    /// How many of `filter`'s entries follow `after`, up to `cap`.
    pub(crate) async fn count_feed(
        &self,
        filter: FeedFilter<'_>,
        after: i64,
        cap: i64,
    ) -> Result<i64, StoreError> {
        backend!(self, |b| b.count_feed(filter, after, cap).await)
    }

    /// The newest feed entry's seq (0 when the feed is empty).
    pub(crate) async fn last_feed_seq(&self) -> Result<i64, StoreError> {
        backend!(self, |b| b.last_feed_seq().await)
    }

    /// A consumer's saved checkpoint, if it has one.
    pub(crate) async fn load_checkpoint(&self, consumer: &str) -> Result<Option<i64>, StoreError> {
        backend!(self, |b| b.load_checkpoint(consumer).await)
    }

    /// Creates a consumer's checkpoint at 0 unless it exists.
    pub(crate) async fn register_consumer(
        &self,
        consumer: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        backend!(self, |b| b.register_consumer(consumer, now).await)
    }

    /// Saves a consumer's checkpoint, durably.
    pub(crate) async fn save_checkpoint(
        &self,
        consumer: &str,
        seq: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        backend!(self, |b| b.save_checkpoint(consumer, seq, now).await)
    }

    /// Refreshes planner statistics of the tables that grew (PostgreSQL; a
    /// no-op elsewhere).
    pub(crate) async fn refresh_statistics(&self) -> Result<(), StoreError> {
        backend!(self, |b| b.refresh_statistics().await)
    }

    /// Keeps planner statistics fresh until `cancel` (PostgreSQL: tables that
    /// grow from empty are planned as empty for a minute otherwise; returns at
    /// once elsewhere).
    pub(crate) async fn keep_statistics_fresh(&self, cancel: tokio_util::sync::CancellationToken) {
        backend!(self, |b| b.keep_statistics_fresh(cancel).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_in_memory_sqlite_url_is_refused_with_a_clear_error() {
        for url in ["sqlite::memory:", "sqlite://file:x?mode=memory"] {
            let u = DatabaseUrl::parse(url).unwrap();
            let err = Database::open(&u).await.unwrap_err();
            assert!(matches!(err, DbError::InMemory(_)), "{url}: {err}");
            assert!(err.to_string().contains("on disk"), "{err}");
        }
    }
}
