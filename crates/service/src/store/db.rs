//! Opening the database named by the URL and running its migrations.
//!
//! Owns: connection pools and their durability settings. Must never: pick a
//! backend anywhere but here (everything else receives a [`Database`]).

use crate::config::{redact_url, DatabaseUrl};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

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
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}

/// The one database every stage shares: the inbox and the store live together so
/// an event's effects and its "done" mark commit in one transaction.
#[derive(Clone, Debug)]
pub enum Database {
    /// The pool, and the gate every write transaction passes (see [`Database::write_lock`]).
    Sqlite(SqlitePool, Arc<WriteGate>),
    Postgres(PgPool),
}

impl Database {
    /// Opens a database that must already exist, and migrates it: for commands
    /// that read or operate on stored data (`events`, `reindex`, `replay`), where
    /// a mistyped path must not silently become an empty store.
    pub async fn open_existing(url: &DatabaseUrl) -> Result<Database, DbError> {
        if let DatabaseUrl::Sqlite(u) = url {
            if let Ok(opts) = SqliteConnectOptions::from_str(u) {
                let file = opts.get_filename();
                if file.as_os_str() != ":memory:" && !file.exists() {
                    return Err(DbError::Missing {
                        path: file.display().to_string(),
                    });
                }
            }
        }
        // PostgreSQL: a missing database is refused by the server itself.
        Database::open(url).await
    }

    /// Opens (creating a SQLite file if needed) and migrates.
    pub async fn open(url: &DatabaseUrl) -> Result<Database, DbError> {
        let db = match url {
            DatabaseUrl::Sqlite(u) => {
                let opts = SqliteConnectOptions::from_str(u).map_err(|source| DbError::Open {
                    url: u.clone(),
                    source,
                })?;
                let file = opts.get_filename().to_path_buf();
                if u.contains(":memory:")
                    || u.contains("mode=memory")
                    || file.as_os_str() == ":memory:"
                {
                    return Err(DbError::InMemory(u.clone()));
                }
                if let Some(dir) = opts.get_filename().parent() {
                    if !dir.as_os_str().is_empty() {
                        std::fs::create_dir_all(dir).map_err(|source| DbError::DataDir {
                            path: dir.display().to_string(),
                            source,
                        })?;
                    }
                }
                // WAL + synchronous=FULL for the pool's (rare) writes: a commit
                // returns only after the WAL is fsynced. The hot writer connection
                // fsyncs outside the gate instead (store::sqlite::open_writer).
                let opts = opts
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(Duration::from_secs(10))
                    // 4 MB of page cache per connection: the OS page cache holds
                    // the rest, and 8 connections x 16 MB blew the memory budget.
                    .pragma("cache_size", "-4000")
                    // Erased values must not survive in freed space (store::maintenance).
                    .pragma("secure_delete", "ON")
                    .foreign_keys(true);
                let pool = SqlitePoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(opts)
                    .await
                    .map_err(|source| DbError::Open {
                        url: u.clone(),
                        source,
                    })?;
                crate::store::migrations::sqlite().run(&pool).await?;
                let writer = crate::store::sqlite::open_writer(&file).map_err(|source| {
                    DbError::OpenWriter {
                        url: u.clone(),
                        source,
                    }
                })?;
                let wal = crate::store::sqlite::open_wal(&file).map_err(|source| DbError::Wal {
                    path: format!("{}-wal", file.display()),
                    source,
                })?;
                let gate = Arc::new(WriteGate::new(writer, wal, file.clone()));
                crate::store::sqlite::spawn_checkpointer(&file, Arc::downgrade(&gate)).map_err(
                    |source| DbError::OpenWriter {
                        url: u.clone(),
                        source,
                    },
                )?;
                Database::Sqlite(pool, gate)
            }
            DatabaseUrl::Postgres(u) => {
                let opts = PgConnectOptions::from_str(u).map_err(|source| DbError::Open {
                    url: redact_url(u),
                    source,
                })?;
                check_postgres(&opts, u).await?;
                let pool = PgPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(opts)
                    .await
                    .map_err(|source| DbError::Open {
                        url: redact_url(u),
                        source,
                    })?;
                crate::store::migrations::postgres().run(&pool).await?;
                Database::Postgres(pool)
            }
        };
        Ok(db)
    }

    /// Taken around every short write on SQLite (ingress appends, checkpoints,
    /// operator actions). See [`WriteGate`].
    pub async fn write_lock(&self) -> Option<WriteGuard> {
        match self {
            Database::Sqlite(_, gate) => Some(gate.urgent().await),
            Database::Postgres(_) => None,
        }
    }

    /// Taken around the processor's apply transactions and claims on SQLite:
    /// they yield to waiting short writes (see [`WriteGate`]).
    pub async fn background_write_lock(&self) -> Option<WriteGuard> {
        match self {
            Database::Sqlite(_, gate) => Some(gate.background().await),
            Database::Postgres(_) => None,
        }
    }

    /// Makes every commit so far durable (SQLite: fsyncs the WAL without holding
    /// the write gate; PostgreSQL's commits already are).
    pub fn sync(&self) -> Result<(), sqlx::Error> {
        match self {
            Database::Sqlite(_, gate) => {
                crate::store::sqlite::sync_wal(&gate.wal).map_err(sqlx::Error::Io)
            }
            Database::Postgres(_) => Ok(()),
        }
    }

    /// Is the database answering? (`/readyz`)
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        match self {
            Database::Sqlite(p, _) => sqlx::query("SELECT 1").execute(p).await.map(|_| ()),
            Database::Postgres(p) => sqlx::query("SELECT 1").execute(p).await.map(|_| ()),
        }
    }

    pub async fn close(&self) {
        match self {
            Database::Sqlite(p, _) => p.close().await,
            Database::Postgres(p) => p.close().await,
        }
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            Database::Sqlite(..) => "sqlite",
            Database::Postgres(_) => "postgres",
        }
    }
}

/// How long one first connection to PostgreSQL may take before start-up gives up.
const PG_CONNECT_SECS: u64 = 10;

/// One connection before the pool: the pool retries a failed connect until its
/// acquire timeout and then only says "pool timed out", where a single attempt
/// tells a refused port at once, and which database or schema is missing.
async fn check_postgres(opts: &PgConnectOptions, url: &str) -> Result<(), DbError> {
    use sqlx::{ConnectOptions, Connection};
    let addr = format!("{}:{}", opts.get_host(), opts.get_port());
    let name = opts
        .get_database()
        .unwrap_or(opts.get_username())
        .to_string();
    let timeout = Duration::from_secs(PG_CONNECT_SECS);
    let mut conn = match tokio::time::timeout(timeout, opts.connect()).await {
        Err(_) => {
            return Err(DbError::PgTimeout {
                addr,
                secs: PG_CONNECT_SECS,
            })
        }
        Ok(Ok(c)) => c,
        Ok(Err(sqlx::Error::Io(e))) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Err(DbError::PgRefused { addr })
        }
        Ok(Err(sqlx::Error::Database(e))) if e.code().as_deref() == Some("3D000") => {
            return Err(DbError::PgNoDatabase { name, addr })
        }
        Ok(Err(source)) => {
            return Err(DbError::Open {
                url: redact_url(url),
                source,
            })
        }
    };
    // With no schema on the search_path that exists, every CREATE fails with "no
    // schema has been selected to create in": say which path, once.
    let schema: Result<(Option<String>, String), sqlx::Error> = async {
        let current = sqlx::query_scalar("SELECT current_schema()")
            .fetch_one(&mut conn)
            .await?;
        let path = sqlx::query_scalar("SHOW search_path")
            .fetch_one(&mut conn)
            .await?;
        Ok((current, path))
    }
    .await;
    let _ = conn.close().await;
    match schema {
        Ok((None, search_path)) => {
            // The schema named on the path, leaving out the default "$user".
            let named: Vec<&str> = search_path
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty() && *s != "\"$user\"")
                .collect();
            let schema = match named.as_slice() {
                [one] => one.to_string(),
                _ => "...".to_string(),
            };
            Err(DbError::PgNoSchema {
                search_path,
                name,
                schema,
            })
        }
        Ok(_) => Ok(()),
        Err(source) => Err(DbError::Open {
            url: redact_url(url),
            source,
        }),
    }
}

/// Runs the same sqlx code on whichever pool the database has. The SQL text is
/// shared (both backends accept `$n` parameters); only the pool type differs, and
/// the body must evaluate to the same type on both arms.
macro_rules! on_pool {
    ($db:expr, |$p:ident| $body:expr) => {
        match $db {
            $crate::store::db::Database::Sqlite($p, ..) => $body,
            $crate::store::db::Database::Postgres($p) => $body,
        }
    };
}
pub(crate) use on_pool;

/// Orders SQLite's writers in the process.
///
/// SQLite has one writer at a time; left to itself, a second writer waits in
/// SQLite's busy handler, which sleeps in growing steps (up to 100 ms) and lets
/// newcomers overtake: under load that showed as 1-2 s stalls. Here writers queue
/// on a fair async mutex instead, and readers (WAL) are untouched. Short writes
/// (a webhook's durable append: someone is waiting for the ack) and the
/// processor's apply batches alternate: at most one background writer waits for
/// the gate, and it lets an already waiting short writer through first, so an
/// ack waits for at most one (small) apply transaction and apply never starves.
///
/// The gate owns the writer connection of the hot paths (`store::sqlite`): holding
/// the gate is what gives access to it. Rare writes still go through the pool
/// while holding the gate.
///
/// It also keeps the read-only connections of the hot reads ([`WriteGate::read`]):
/// they belong to the same file and need no gate.
#[derive(Debug)]
pub struct WriteGate {
    lock: Arc<tokio::sync::Mutex<rusqlite::Connection>>,
    background: Arc<tokio::sync::Mutex<()>>,
    urgent_waiting: std::sync::atomic::AtomicUsize,
    urgent_done: tokio::sync::Notify,
    /// The writer's WAL file, fsynced outside the gate ([`Database::sync`]).
    wal: std::fs::File,
    /// The database file, for reader connections ([`WriteGate::read`]).
    path: std::path::PathBuf,
    /// Reader connections kept for [`WriteGate::read`].
    readers: std::sync::Mutex<Vec<rusqlite::Connection>>,
}

/// Holds the gate until dropped.
pub struct WriteGuard {
    lock: tokio::sync::OwnedMutexGuard<rusqlite::Connection>,
    _background: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl WriteGuard {
    /// SQLite's writer connection, which only the gate's holder may use.
    pub fn conn(&mut self) -> &mut rusqlite::Connection {
        &mut self.lock
    }
}

impl WriteGate {
    fn new(
        writer: rusqlite::Connection,
        wal: std::fs::File,
        path: std::path::PathBuf,
    ) -> WriteGate {
        WriteGate {
            wal,
            path,
            readers: Default::default(),
            lock: Arc::new(tokio::sync::Mutex::new(writer)),
            background: Default::default(),
            urgent_waiting: Default::default(),
            urgent_done: Default::default(),
        }
    }

    /// Runs a read on a reader connection of its own (opened on first need and
    /// kept), blocking: for reads that return many rows often (due events, the
    /// change feed), where sqlx's per-row hand-off between threads cost more
    /// than the read (`perf` at saturation: sqlx's worker thread used ~14% of
    /// the server's samples and switched context about once per row).
    pub fn read<R>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<R>,
    ) -> Result<R, sqlx::Error> {
        use crate::store::sqlite::{blocking, db_err, open_reader};
        let pooled = self
            .readers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop();
        let conn = match pooled {
            Some(c) => c,
            None => open_reader(&self.path).map_err(db_err)?,
        };
        let out = blocking(|| f(&conn)).map_err(db_err);
        self.readers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(conn);
        out
    }

    async fn urgent(&self) -> WriteGuard {
        use std::sync::atomic::Ordering;
        self.urgent_waiting.fetch_add(1, Ordering::SeqCst);
        let lock = self.lock.clone().lock_owned().await;
        self.urgent_waiting.fetch_sub(1, Ordering::SeqCst);
        self.urgent_done.notify_waiters();
        WriteGuard {
            lock,
            _background: None,
        }
    }

    async fn background(&self) -> WriteGuard {
        use std::sync::atomic::Ordering;
        let background = self.background.clone().lock_owned().await;
        // Let a short writer that is already waiting go first, but only that one:
        // waiting until none waits would starve apply under steady webhook
        // traffic (measured: 1.5 s sync lag at 2,000 deliveries/s). The mutex is
        // FIFO, so from here on the two kinds of writer alternate.
        if self.urgent_waiting.load(Ordering::SeqCst) > 0 {
            let done = self.urgent_done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if self.urgent_waiting.load(Ordering::SeqCst) > 0 {
                let _ = tokio::time::timeout(std::time::Duration::from_millis(20), done).await;
            }
        }
        WriteGuard {
            lock: self.lock.clone().lock_owned().await,
            _background: Some(background),
        }
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
