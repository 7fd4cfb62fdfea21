//! SQLite's connections: the writer, the readers, the WAL and its checkpointer,
//! and how synchronous SQLite calls run from async code.
//!
//! Why not sqlx here: sqlx's SQLite driver hands every statement to a worker
//! thread and back, and `perf` of a replay showed most of apply's time in that
//! hand-off (channel wake-ups, futexes, allocation), not in SQLite. Every
//! statement runs on a plain rusqlite connection with cached prepared
//! statements, synchronously, on a thread allowed to block (see [`blocking`]).
//! Must never: touch the writer connection without holding the write gate
//! (the gate owns it, so the types enforce this), or await anything but these
//! synchronous calls inside [`run_blocking`].

use crate::store::inbox::NewDelivery;
use rusqlite::{params, Connection, TransactionBehavior};
use std::path::Path;
use std::time::Duration;

/// Opens the writer connection (creating the file if needed), in WAL mode.
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
pub(crate) fn open_writer(path: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    // The page size stays SQLite's 4 KB. 8 KB pages packed users and
    // memberships (1.5-2 KB rows, 30% of their 4 KB pages unused after a run)
    // into 7% less file, but every dirty page doubled in the WAL: ~8% more
    // CPU per delivery and ~20% fewer acks/s on the realistic stream.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
         PRAGMA foreign_keys = ON; PRAGMA cache_size = -8000; PRAGMA secure_delete = ON;",
    )?;
    // Checkpoints are the checkpointer's job (off the write gate); the writer
    // only checkpoints itself if the WAL grew past ~40 MB, i.e. the
    // checkpointer fell far behind.
    conn.pragma_update(None, "wal_autocheckpoint", WRITER_AUTOCHECKPOINT_PAGES)?;
    // A WAL that grew during a burst is cut back to this size whenever a
    // checkpoint lets the next writer start it over, instead of keeping its
    // largest size on disk for good.
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT_BYTES)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// The WAL file of the database at `path`, opened for [`sync_wal`]. It exists
/// once the database has been opened in WAL mode and written (migrations), and
/// stays the same file while any connection is open.
pub(crate) fn open_wal(path: &Path) -> std::io::Result<std::fs::File> {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::OpenOptions::new().read(true).write(true).open(wal)
}

/// Makes every commit so far durable: one fdatasync of the WAL, taken without
/// the write gate, so writers go on while it waits for the disk. Frames a
/// checkpoint has already moved into the database were fsynced there first.
pub(crate) fn sync_wal(wal: &std::fs::File) -> std::io::Result<()> {
    blocking(|| wal.sync_data())
}

const WRITER_AUTOCHECKPOINT_PAGES: i64 = 10_000;
/// What the WAL file is cut back to after a checkpoint (`journal_size_limit`):
/// what a trickle of traffic keeps on disk for good (an idle store truncates
/// it to zero, see [`IDLE_CHECKPOINTS_BEFORE_TRUNCATE`]).
const WAL_SIZE_LIMIT_BYTES: i64 = 4 * 1024 * 1024;
/// How often the checkpointer copies committed WAL frames into the database.
/// Once a second, not ten times: a page the applier rewrites many times a
/// second (the inbox's status index, the feed's last page, a hot user) is
/// copied and fsynced once per second instead of ten times, and the WAL holds
/// at most about a second of commits (a few MB under full load).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// Checkpoints in a row that found no new frame before the checkpointer
/// truncates the WAL to zero bytes: intake has stopped, so the one moment a
/// TRUNCATE checkpoint (which waits for writers) costs nobody anything. One:
/// the WAL holds about a second of commits, tens of MB on the realistic
/// stream, and was left on disk 5 s after every burst (a quarter of the data
/// directory right after a 40,000-event run).
const IDLE_CHECKPOINTS_BEFORE_TRUNCATE: u32 = 1;

/// Runs SQLite's WAL checkpoints on a thread of their own, with its own
/// connection, until `alive` can no longer be upgraded (the database was
/// dropped). A passive checkpoint does not take the write lock, so the copy of
/// pages into the database file and its fsync no longer happen inside a commit
/// while the write gate is held (perf: ~4% of the server's CPU under load, all
/// of it serial). A crash mid-checkpoint is safe: the WAL keeps the frames.
pub(crate) fn spawn_checkpointer<T: Send + Sync + 'static>(
    path: &Path,
    alive: std::sync::Weak<T>,
) -> Result<(), rusqlite::Error> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_millis(100))?;
    std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || {
            // (frames in the WAL, checkpointed frames) at the last checkpoint.
            let mut last = (-1i64, -1i64);
            let mut idle = 0u32;
            while alive.upgrade().is_some() {
                std::thread::sleep(CHECKPOINT_EVERY);
                let now = match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                    Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                }) {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::debug!(error = %e, "WAL checkpoint skipped");
                        continue;
                    }
                };
                // Nothing new since the last checkpoint and everything copied.
                let quiet = now == last && now.0 > 0 && now.0 == now.1;
                idle = if quiet { idle + 1 } else { 0 };
                last = now;
                if idle >= IDLE_CHECKPOINTS_BEFORE_TRUNCATE {
                    idle = 0;
                    match conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                        r.get::<_, i64>(0)
                    }) {
                        // 0: not blocked, the WAL is now empty.
                        Ok(0) => last = (0, 0),
                        Ok(_) => {}
                        Err(e) => tracing::debug!(error = %e, "idle WAL truncation skipped"),
                    }
                }
            }
        })
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    Ok(())
}

/// A rusqlite error as the store's error type, keeping SQLite's message.
/// Runs synchronous work from async code: on a multi-threaded runtime the
/// worker hands its other tasks away first (`block_in_place`), so a commit's
/// fsync does not stall them; elsewhere (single-threaded tests) it runs inline.
pub(crate) fn blocking<R>(f: impl FnOnce() -> R) -> R {
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
pub(crate) fn spawn_gate_thread<F>(name: &str, fut: F) -> tokio::task::JoinHandle<()>
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
pub(crate) fn run_blocking<F: std::future::Future>(fut: F) -> F::Output {
    blocking(|| futures::executor::block_on(fut))
}

/// Appends deliveries with distinct svix-ids in one transaction; for each row,
/// whether it was new.
/// `bodies`: each row's body as stored ([`crate::store::body::compress`]),
/// compressed by the caller before it takes the write gate.
pub(crate) fn append(
    conn: &mut Connection,
    rows: &[NewDelivery],
    bodies: &[Vec<u8>],
) -> Result<Vec<bool>, rusqlite::Error> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut out = Vec::with_capacity(rows.len());
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO inbox (svix_id, event_type, entity_key, object_id, svix_timestamp, \
             event_timestamp, received_at, next_attempt_at, user_id) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8) ON CONFLICT (svix_id) DO NOTHING",
        )?;
        let mut body = tx.prepare_cached(
            "INSERT INTO inbox_bodies (seq, body, body_zstd) VALUES (?1, '', ?2)",
        )?;
        let mut contact = tx.prepare_cached(
            "INSERT INTO inbox_contacts (contact, seq) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        )?;
        for (r, stored) in rows.iter().zip(bodies) {
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
                body.execute(params![seq, stored])?;
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
pub(crate) fn open_reader(path: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.execute_batch("PRAGMA cache_size = -4000;")?;
    Ok(conn)
}
