//! SQLite's write path: one plain connection, owned by the write gate.
//!
//! Why not sqlx here: sqlx's SQLite driver hands every statement to a worker
//! thread and back, and `perf` of a replay showed most of apply's time in that
//! hand-off (channel wake-ups, futexes, allocation), not in SQLite. The hot
//! writes (inbox appends, apply transactions) run on one rusqlite connection
//! with cached prepared statements, synchronously, on a thread allowed to
//! block (see [`blocking`]). Reads and rare writes keep the sqlx pool.
//! Must never: touch the connection without holding the write gate (the gate
//! owns it, so the types enforce this), or await anything but these
//! synchronous calls inside [`run_blocking`].

use crate::clerk::model::Kind;
use crate::queue::inbox::NewDelivery;
use crate::store::db::WriteGuard;
use crate::store::tx::{
    AuditRow, Contacts, EntityRow, FeedRow, Pending, PendingAudit, PendingFeed, RefCol, StoreTx,
    COLS, ON_CONFLICT_UPDATE,
};
use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::path::Path;
use std::time::Duration;

/// Opens the writer connection on a database sqlx has already created and
/// migrated.
///
/// `synchronous = NORMAL`: a commit does not wait for the WAL's fsync while it
/// holds the write gate (measured on this project's machines: ~1.2 ms per
/// commit, most of the gate's time under load). Durability is kept where it
/// matters: an inbox append is acknowledged only after [`sync_wal`] has fsynced
/// the WAL, outside the gate; an apply commit becomes durable with the next
/// append's fsync or checkpoint. A power loss can therefore undo the last apply
/// transactions, never an acknowledged delivery, and the database stays a
/// prefix of its commits (WAL), so the undone events are pending again and
/// re-apply. A process crash (`kill -9`) loses nothing: the OS has the pages.
pub fn open_writer(path: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
         PRAGMA foreign_keys = ON; PRAGMA cache_size = -8000; PRAGMA secure_delete = ON;",
    )?;
    // Checkpoints are the checkpointer's job (off the write gate); the writer
    // only checkpoints itself if the WAL grew past ~40 MB, i.e. the
    // checkpointer fell far behind.
    conn.pragma_update(None, "wal_autocheckpoint", WRITER_AUTOCHECKPOINT_PAGES)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// The WAL file of the database at `path`, opened for [`sync_wal`]. It exists
/// once the database has been opened in WAL mode and written (migrations), and
/// stays the same file while any connection is open.
pub fn open_wal(path: &Path) -> std::io::Result<std::fs::File> {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::OpenOptions::new().read(true).write(true).open(wal)
}

/// Makes every commit so far durable: one fdatasync of the WAL, taken without
/// the write gate, so writers go on while it waits for the disk. Frames a
/// checkpoint has already moved into the database were fsynced there first.
pub fn sync_wal(wal: &std::fs::File) -> std::io::Result<()> {
    blocking(|| wal.sync_data())
}

const WRITER_AUTOCHECKPOINT_PAGES: i64 = 10_000;
/// How often the checkpointer copies committed WAL frames into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// Runs SQLite's WAL checkpoints on a thread of their own, with its own
/// connection, until `alive` can no longer be upgraded (the database was
/// dropped). A passive checkpoint does not take the write lock, so the copy of
/// pages into the database file and its fsync no longer happen inside a commit
/// while the write gate is held (perf: ~4% of the server's CPU under load, all
/// of it serial). A crash mid-checkpoint is safe: the WAL keeps the frames.
pub fn spawn_checkpointer<T: Send + Sync + 'static>(
    path: &Path,
    alive: std::sync::Weak<T>,
) -> Result<(), rusqlite::Error> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_millis(100))?;
    std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || {
            while alive.upgrade().is_some() {
                std::thread::sleep(CHECKPOINT_EVERY);
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::debug!(error = %e, "WAL checkpoint skipped");
                }
            }
        })
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    Ok(())
}

/// A rusqlite error as the store's error type, keeping SQLite's message.
#[derive(Debug)]
pub struct SqliteError {
    message: String,
    kind: sqlx::error::ErrorKind,
}

impl std::fmt::Display for SqliteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SqliteError {}

impl sqlx::error::DatabaseError for SqliteError {
    fn message(&self) -> &str {
        &self.message
    }
    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }
    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }
    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }
    fn kind(&self) -> sqlx::error::ErrorKind {
        match self.kind {
            sqlx::error::ErrorKind::UniqueViolation => sqlx::error::ErrorKind::UniqueViolation,
            sqlx::error::ErrorKind::ForeignKeyViolation => {
                sqlx::error::ErrorKind::ForeignKeyViolation
            }
            sqlx::error::ErrorKind::NotNullViolation => sqlx::error::ErrorKind::NotNullViolation,
            sqlx::error::ErrorKind::CheckViolation => sqlx::error::ErrorKind::CheckViolation,
            _ => sqlx::error::ErrorKind::Other,
        }
    }
}

pub fn db_err(e: rusqlite::Error) -> sqlx::Error {
    use rusqlite::ffi;
    let kind = match e.sqlite_error().map(|s| s.extended_code) {
        Some(ffi::SQLITE_CONSTRAINT_UNIQUE) | Some(ffi::SQLITE_CONSTRAINT_PRIMARYKEY) => {
            sqlx::error::ErrorKind::UniqueViolation
        }
        Some(ffi::SQLITE_CONSTRAINT_FOREIGNKEY) => sqlx::error::ErrorKind::ForeignKeyViolation,
        Some(ffi::SQLITE_CONSTRAINT_NOTNULL) => sqlx::error::ErrorKind::NotNullViolation,
        Some(ffi::SQLITE_CONSTRAINT_CHECK) => sqlx::error::ErrorKind::CheckViolation,
        _ => sqlx::error::ErrorKind::Other,
    };
    sqlx::Error::Database(Box::new(SqliteError {
        message: e.to_string(),
        kind,
    }))
}

/// Runs synchronous work from async code: on a multi-threaded runtime the
/// worker hands its other tasks away first (`block_in_place`), so a commit's
/// fsync does not stall them; elsewhere (single-threaded tests) it runs inline.
pub fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Runs `fut`, a loop that takes turns at the write gate, on a thread of its
/// own with a current-thread runtime; the handle (on the calling runtime)
/// resolves when it ends. On the shared runtime such a loop, woken when the
/// gate came free, waited for a worker busy with HTTP, and each blocking call
/// handed that worker's queue off ([`blocking`]): the gate sat idle between
/// holders (measured: ~86% busy at saturation with a core to spare).
pub fn spawn_gate_thread<F>(name: &str, fut: F) -> tokio::task::JoinHandle<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime builds");
            rt.block_on(fut);
            let _ = done_tx.send(());
        })
        .expect("a thread starts");
    tokio::spawn(async move {
        let _ = done_rx.await;
    })
}

/// Polls to completion a future whose every await is a [`SqliteTx`] call
/// (they complete at once): the store logic is written once, async, for both
/// backends, and on SQLite runs here without a scheduler round trip per call.
pub fn run_blocking<F: std::future::Future>(fut: F) -> F::Output {
    blocking(|| futures::executor::block_on(fut))
}

/// Appends deliveries with distinct svix-ids in one transaction; for each row,
/// whether it was new.
pub fn append(conn: &mut Connection, rows: &[NewDelivery]) -> Result<Vec<bool>, rusqlite::Error> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut out = Vec::with_capacity(rows.len());
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO inbox (svix_id, event_type, entity_key, object_id, svix_timestamp, \
             event_timestamp, received_at, next_attempt_at, user_id) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8) ON CONFLICT (svix_id) DO NOTHING",
        )?;
        let mut body = tx.prepare_cached("INSERT INTO inbox_bodies (seq, body) VALUES (?1, ?2)")?;
        let mut contact = tx.prepare_cached(
            "INSERT INTO inbox_contacts (contact, seq) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        )?;
        for r in rows {
            let n = stmt.execute(params![
                r.svix_id,
                r.event_type,
                r.entity_key,
                r.object_id,
                r.svix_timestamp,
                r.event_timestamp_ms,
                r.received_at_ms,
                r.user_id,
            ])?;
            if n == 1 {
                let seq = tx.last_insert_rowid();
                body.execute(params![seq, r.body])?;
                for c in &r.contacts {
                    contact.execute(params![c, seq])?;
                }
            }
            out.push(n == 1);
        }
    }
    tx.commit()?;
    Ok(out)
}

/// A read-only connection for the hot reads ([`crate::store::db::WriteGate::read`]).
pub fn open_reader(path: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.execute_batch("PRAGMA cache_size = -4000;")?;
    Ok(conn)
}

fn entity(r: &rusqlite::Row<'_>) -> rusqlite::Result<EntityRow> {
    Ok(EntityRow {
        id: r.get(0)?,
        version: r.get(1)?,
        version_key: r.get(2)?,
        deleted: r.get(3)?,
        user_id: r.get(4)?,
        organization_id: r.get(5)?,
        data: r.get(6)?,
        synced_at: r.get(7)?,
    })
}

/// An apply transaction on the writer connection (`BEGIN IMMEDIATE`: this is
/// the only writer, so no entity locks are needed). Rolled back if dropped
/// uncommitted.
pub struct SqliteTx {
    pending: Pending,
    open: bool,
    gate: WriteGuard,
}

impl SqliteTx {
    pub fn begin(mut gate: WriteGuard) -> Result<SqliteTx, sqlx::Error> {
        blocking(|| gate.conn().execute_batch("BEGIN IMMEDIATE")).map_err(db_err)?;
        Ok(SqliteTx {
            pending: Pending::default(),
            open: true,
            gate,
        })
    }

    fn conn(&mut self) -> &mut Connection {
        self.gate.conn()
    }

    fn write_pending(&mut self, p: &Pending) -> rusqlite::Result<()> {
        let conn = self.gate.conn();
        let mut done = conn.prepare_cached(
            "UPDATE inbox SET status = 'done', leased_until = NULL, attempts = attempts + 1, \
             processed_at = ?2, duration_us = ?3 WHERE seq = ?1",
        )?;
        for (seq, at, us) in &p.done {
            done.execute(params![seq, at, us])?;
        }
        let mut audit = conn.prepare_cached(
            "INSERT INTO audit (svix_id, kind, entity_id, user_id, operation, changes, version, at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        for a in &p.audit {
            audit.execute(params![
                a.svix_id,
                a.kind.as_str(),
                a.entity_id,
                a.user_id,
                a.operation,
                a.changes,
                a.version,
                a.at
            ])?;
        }
        let mut feed = conn.prepare_cached(
            "INSERT INTO change_feed (kind, entity_id, operation, changed_fields, version, svix_id, committed_at, user_id, organization_id) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        for f in &p.feed {
            feed.execute(params![
                f.kind.as_str(),
                f.entity_id,
                f.operation,
                f.changed_fields,
                f.version,
                f.svix_id,
                f.committed_at,
                f.user_id,
                f.organization_id
            ])?;
        }
        Ok(())
    }
}

impl Drop for SqliteTx {
    fn drop(&mut self) {
        if self.open {
            // The gate (dropped after this) is only reopened once SQLite's
            // write lock is released.
            let conn = self.gate.conn();
            let _ = blocking(|| conn.execute_batch("ROLLBACK"));
        }
    }
}

#[async_trait]
impl StoreTx for SqliteTx {
    async fn lock(&mut self, _key: &str) -> Result<(), sqlx::Error> {
        Ok(())
    }

    async fn lock_shared(&mut self, _key: &str) -> Result<(), sqlx::Error> {
        Ok(())
    }

    async fn lock_all(&mut self, _keys: &[(String, bool)]) -> Result<(), sqlx::Error> {
        Ok(())
    }

    async fn get(&mut self, kind: Kind, id: &str) -> Result<Option<EntityRow>, sqlx::Error> {
        let sql = format!("SELECT {COLS} FROM {} WHERE id = ?1", kind.table());
        let mut stmt = self.conn().prepare_cached(&sql).map_err(db_err)?;
        stmt.query_row([id], entity).optional().map_err(db_err)
    }

    async fn put(&mut self, kind: Kind, r: &EntityRow) -> Result<(), sqlx::Error> {
        let sql = format!(
            "INSERT INTO {} ({COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8){ON_CONFLICT_UPDATE}",
            kind.table()
        );
        let mut stmt = self.conn().prepare_cached(&sql).map_err(db_err)?;
        stmt.execute(params![
            r.id,
            r.version,
            r.version_key,
            r.deleted,
            r.user_id,
            r.organization_id,
            r.data,
            r.synced_at
        ])
        .map(|_| ())
        .map_err(db_err)
    }

    async fn live_by(
        &mut self,
        kind: Kind,
        by: RefCol,
        value: &str,
    ) -> Result<Vec<EntityRow>, sqlx::Error> {
        let sql = format!(
            "SELECT {COLS} FROM {} WHERE {} = ?1 AND deleted = 0 ORDER BY id",
            kind.table(),
            by.column()
        );
        let mut stmt = self.conn().prepare_cached(&sql).map_err(db_err)?;
        let rows = stmt.query_map([value], entity).map_err(db_err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
    }

    async fn replace_contacts(&mut self, user_id: &str, c: &Contacts) -> Result<(), sqlx::Error> {
        let conn = self.conn();
        let run = || -> rusqlite::Result<()> {
            for t in ["user_emails", "user_phones", "user_external_accounts"] {
                conn.prepare_cached(&format!("DELETE FROM {t} WHERE user_id = ?1"))?
                    .execute([user_id])?;
            }
            let mut s = conn.prepare_cached(
                "INSERT INTO user_emails (user_id, id, email_address, is_primary) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
            )?;
            for (id, addr, primary) in &c.emails {
                s.execute(params![user_id, id, addr, primary])?;
            }
            let mut s = conn.prepare_cached(
                "INSERT INTO user_phones (user_id, id, phone_number, is_primary) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
            )?;
            for (id, number, primary) in &c.phones {
                s.execute(params![user_id, id, number, primary])?;
            }
            let mut s = conn.prepare_cached(
                "INSERT INTO user_external_accounts (user_id, id, provider, email_address) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
            )?;
            for (id, provider, email) in &c.external_accounts {
                s.execute(params![user_id, id, provider, email])?;
            }
            Ok(())
        };
        run().map_err(db_err)
    }

    async fn archive(&mut self, kind: Kind, r: &EntityRow, at: i64) -> Result<(), sqlx::Error> {
        let user = if kind == Kind::User {
            Some(r.id.as_str())
        } else {
            r.user_id.as_deref()
        };
        let mut stmt = self
            .conn()
            .prepare_cached(
                "INSERT INTO archive (kind, entity_id, user_id, version, data, archived_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(db_err)?;
        stmt.execute(params![kind.as_str(), r.id, user, r.version, r.data, at])
            .map(|_| ())
            .map_err(db_err)
    }

    async fn audit(&mut self, a: &AuditRow<'_>) -> Result<(), sqlx::Error> {
        self.pending.audit.push(PendingAudit::from(a));
        Ok(())
    }

    async fn feed(&mut self, f: &FeedRow<'_>) -> Result<(), sqlx::Error> {
        self.pending.feed.push(PendingFeed::from(f));
        Ok(())
    }

    async fn inbox_status(&mut self, seq: i64) -> Result<Option<String>, sqlx::Error> {
        if let Some(st) = self.pending.statuses.get(&seq) {
            return Ok(Some(st.clone()));
        }
        let mut stmt = self
            .conn()
            .prepare_cached("SELECT status FROM inbox WHERE seq = ?1")
            .map_err(db_err)?;
        stmt.query_row([seq], |r| r.get(0))
            .optional()
            .map_err(db_err)
    }

    async fn prefetch_statuses(&mut self, _seqs: &[i64]) -> Result<(), sqlx::Error> {
        // One indexed lookup per event costs about what a batched IN (...) would,
        // without a new statement text per batch size.
        Ok(())
    }

    async fn mark_done(&mut self, seq: i64, at: i64, duration_us: i64) -> Result<(), sqlx::Error> {
        self.pending.done.push((seq, at, duration_us));
        self.pending.statuses.insert(seq, "done".into());
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<Vec<(Kind, String)>, sqlx::Error> {
        let pending = std::mem::take(&mut self.pending);
        self.write_pending(&pending).map_err(db_err)?;
        let conn = self.gate.conn();
        blocking(|| conn.execute_batch("COMMIT")).map_err(db_err)?;
        self.open = false;
        Ok(pending
            .feed
            .into_iter()
            .map(|f| (f.kind, f.entity_id))
            .collect())
    }
}
