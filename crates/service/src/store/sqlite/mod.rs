//! The SQLite backend: one file, one process, one writer at a time.
//!
//! Owns: the SQLite file, its connections (`conn`), the write gate that orders
//! its writers (`gate`), its apply transaction (`tx`), and its SQL for every
//! store trait. Every write takes the gate here, inside the backend: callers
//! never see it. Durability: a short write (an inbox append, an operator's
//! action, a checkpoint) returns only after the WAL is fsynced, outside the
//! gate; an apply commit becomes durable with the next fsync (see
//! [`conn::open_writer`]). Must never: let a caller hold the gate or a
//! connection, write without the gate, or acknowledge an append before its
//! fsync.

mod backfill;
mod conn;
mod gate;
mod lease;
mod migrate;
mod purge;
mod tx;

pub(crate) use conn::{run_blocking, spawn_gate_thread};
pub use gate::WriteGate;
pub use migrate::SqliteMigrateError;

use crate::clerk::model::Kind;
use crate::store::body;
use crate::store::db::{Database, DbError};
use crate::store::events::{EventFilter, EventRecord, EVENT_FIELDS};
use crate::store::feed::{entries, FeedEntry, FeedFilter, StoredFeedRow};
use crate::store::inbox::{
    delivery_columns, log_page, ApplyStrategy, Delivery, LogRow, NewDelivery, StatusCounts,
    OPEN_COUNTS,
};
use crate::store::maintenance::{bodies_to_expire, BodyExpiry, PurgeReport, Redaction};
use crate::store::read::AuditEntry;
use crate::store::tx::{EntityRow, RefCol, StoreTx, COLS};
use crate::store::{
    ApplyStore, EntityStore, EventStore, FeedStore, InboxStore, MaintenanceStore, Result,
};
use async_trait::async_trait;
use conn::blocking;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::PathBuf;
use std::sync::Arc;

/// The backend, borrowed from a [`Database`] for one call.
pub(crate) struct Sqlite<'a> {
    pub gate: &'a Arc<WriteGate>,
}

/// The file a `sqlite:` URL names, and whether it asks for an in-memory
/// database (sqlx's rules: `sqlite://path` or `sqlite:path`, `:memory:`,
/// `?mode=memory`, the path percent-decoded).
fn parse_url(u: &str) -> (PathBuf, bool) {
    let rest = u
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let (path, params) = rest.split_once('?').unwrap_or((rest, ""));
    let memory = path == ":memory:"
        || url::form_urlencoded::parse(params.as_bytes())
            .any(|(k, v)| k == "mode" && v == "memory");
    (PathBuf::from(percent_decode(path)), memory)
}

/// `%XX` escapes decoded (a `?` or `#` in a file name); anything else as is.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Refuses a SQLite URL whose file does not exist (commands on stored data).
pub(crate) fn check_exists(u: &str) -> Result<(), DbError> {
    let (file, memory) = parse_url(u);
    if !memory && !file.exists() {
        return Err(DbError::Missing {
            path: file.display().to_string(),
        });
    }
    Ok(())
}

/// Opens (creating the file if needed), migrates, and starts the writer,
/// the WAL handle and the checkpointer.
pub(crate) async fn open(u: &str) -> Result<Database, DbError> {
    let (file, memory) = parse_url(u);
    if memory || u.contains(":memory:") {
        return Err(DbError::InMemory(u.to_string()));
    }
    if let Some(dir) = file.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(|source| DbError::DataDir {
                path: dir.display().to_string(),
                source,
            })?;
        }
    }
    let open_error = |source| DbError::OpenWriter {
        url: u.to_string(),
        source,
    };
    // The writer creates the file and sets WAL mode; migrations run on it
    // before anyone else can write.
    let mut writer = blocking(|| conn::open_writer(&file)).map_err(open_error)?;
    blocking(|| migrate::run(&mut writer, &crate::store::migrations::sqlite()))
        .map_err(DbError::SqliteMigrate)?;
    let wal = conn::open_wal(&file).map_err(|source| DbError::Wal {
        path: format!("{}-wal", file.display()),
        source,
    })?;
    let dictionaries = blocking(|| load_dictionaries(&writer)).map_err(open_error)?;
    let gate = Arc::new(WriteGate::new(writer, wal, file.clone()));
    gate.bodies()
        .load(
            &dictionaries,
            crate::clock::Clock::now_ms(&crate::clock::SystemClock),
        )
        .map_err(DbError::BodyDictionary)?;
    // The migrations' commits are on disk before anyone is served.
    gate.sync()?;
    conn::spawn_checkpointer(&file, Arc::downgrade(&gate)).map_err(open_error)?;
    Ok(Database::Sqlite(gate))
}

/// The body dictionaries stored (store/body.rs), (id, bytes, created_at).
fn load_dictionaries(c: &Connection) -> rusqlite::Result<Vec<(i64, Vec<u8>, i64)>> {
    let mut stmt = c.prepare("SELECT id, dict, created_at FROM body_dictionaries")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    rows.collect()
}

impl Sqlite<'_> {
    /// Stores a body dictionary the codec has trained, if one waits, before
    /// the codec may compress with it (a frame must never name a dictionary
    /// the database lacks). Once per dictionary; a failure is logged and the
    /// codec samples again.
    async fn store_trained_dictionary(&self) {
        let now = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
        let Some((id, dict)) = self.gate.bodies().take_trained(now) else {
            return;
        };
        let stored = self
            .write(|c| {
                c.execute(
                    "INSERT INTO body_dictionaries (id, dict, created_at) VALUES (?1, ?2, ?3)",
                    params![id, dict, now],
                )
            })
            .await;
        if let Err(e) = &stored {
            tracing::warn!(error = %e, "a trained body dictionary could not be stored");
        }
        self.gate.bodies().stored(&dict, now, stored.is_ok());
    }

    /// A short write someone waits for (an ack, an operator, a checkpoint):
    /// runs `f` on the writer connection under the gate, then fsyncs the WAL
    /// without the gate, so it is durable when this returns.
    async fn write<R>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<R>) -> Result<R> {
        let mut gate = self.gate.urgent().await;
        let conn = gate.conn();
        let out = blocking(|| f(conn))?;
        drop(gate);
        self.gate.sync()?;
        Ok(out)
    }

    /// A background write (claims, retention): yields the gate to a waiting
    /// short write first (see [`WriteGate`]). Durable when this returns.
    async fn write_background<R>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<R>,
    ) -> Result<R> {
        let mut gate = self.gate.background().await;
        let conn = gate.conn();
        let out = blocking(|| f(conn))?;
        drop(gate);
        self.gate.sync()?;
        Ok(out)
    }

    /// [`InboxStore::append`] up to its commit, without the fsync that makes
    /// it durable: the group committer commits the next batch while a thread
    /// of its own fsyncs the last ones ([`WriteGate::sync`]), and answers
    /// their deliveries only after that fsync.
    pub(crate) async fn append_unsynced(
        &self,
        rows: &[NewDelivery],
        bodies: &[Vec<u8>],
    ) -> Result<Vec<bool>> {
        // A dictionary trained since the last append is stored first: only
        // then do later bodies compress with it.
        self.store_trained_dictionary().await;
        let mut gate = self.gate.urgent().await;
        let conn = gate.conn();
        Ok(blocking(|| conn::append(conn, rows, bodies))?)
    }

    /// A read on a reader connection of its own (WAL: no gate needed).
    fn read<R>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<R>) -> Result<R> {
        self.gate.read(f)
    }
}

/// A stored body as bytes: the zstd frame, else the plain text of an older row.
const BODY: &str = "COALESCE(b.body_zstd, b.body)";
const DELIVERY: &str = delivery_columns!("COALESCE(b.body_zstd, b.body)");
const LOG_PAGE: &str = log_page!("COALESCE(b.body_zstd, b.body)");

/// Column `i` (text or blob, or NULL) as a body ([`body::decode`]).
fn body_at(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<String> {
    use rusqlite::types::ValueRef;
    Ok(match r.get_ref(i)? {
        ValueRef::Text(b) | ValueRef::Blob(b) => body::decode(Some(b)),
        _ => body::decode(None),
    })
}

fn delivery(r: &rusqlite::Row<'_>) -> rusqlite::Result<Delivery> {
    Ok(Delivery {
        seq: r.get(0)?,
        svix_id: r.get(1)?,
        event_type: r.get(2)?,
        entity_key: r.get(3)?,
        svix_timestamp: r.get(4)?,
        event_timestamp: r.get(5)?,
        received_at: r.get(6)?,
        body: body_at(r, 7)?,
        attempts: r.get(8)?,
    })
}

fn event_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<EventRecord> {
    Ok(EventRecord {
        seq: r.get(0)?,
        svix_id: r.get(1)?,
        event_type: r.get(2)?,
        entity_key: r.get(3)?,
        status: r.get(4)?,
        attempts: r.get(5)?,
        last_error: r.get(6)?,
        received_at: r.get(7)?,
        processed_at: r.get(8)?,
        next_attempt_at: r.get(9)?,
        duration_us: r.get(10)?,
    })
}

fn feed_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredFeedRow> {
    Ok(StoredFeedRow {
        seq: r.get(0)?,
        kind: r.get(1)?,
        entity_id: r.get(2)?,
        operation: r.get(3)?,
        changed_fields: r.get(4)?,
        version: r.get(5)?,
        svix_id: r.get(6)?,
        committed_at: r.get(7)?,
        user_id: r.get(8)?,
        organization_id: r.get(9)?,
    })
}

/// A list of values as one JSON array parameter (read with `json_each`): one
/// statement text, however many values.
fn json_list<T: serde::Serialize>(values: &[T]) -> String {
    serde_json::to_string(values).unwrap_or_else(|_| "[]".into())
}

#[async_trait]
impl InboxStore for Sqlite<'_> {
    async fn append(&self, rows: &[NewDelivery], bodies: &[Vec<u8>]) -> Result<Vec<bool>> {
        let new = self.append_unsynced(rows, bodies).await?;
        // Durable before anyone is answered; the fsync waits without the gate.
        self.gate.sync()?;
        Ok(new)
    }

    async fn claim(&self, now: i64, lease_until: i64, limit: i64) -> Result<Vec<Delivery>> {
        let sql = format!(
            "UPDATE inbox SET leased_until = ?1 WHERE seq IN (\
               SELECT seq FROM inbox WHERE status IN ('pending', 'failed') AND next_attempt_at <= ?2 \
               AND (leased_until IS NULL OR leased_until < ?2) ORDER BY seq LIMIT ?3) RETURNING {DELIVERY}"
        );
        self.write_background(|c| {
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![lease_until, now, limit], delivery)?;
            rows.collect()
        })
        .await
    }

    async fn due(&self, now: i64, skip: &[i64], limit: i64) -> Result<Vec<Delivery>> {
        // One status at a time, the two lists merged here. With `status IN
        // ('pending', 'failed')` SQLite reads two ranges of the (status, seq)
        // index and sorts their union, each row's body read into the sort: a
        // backlog of N pending events cost N body reads for every batch of
        // `limit`. One status comes from the index in seq order and stops at
        // `limit`.
        let sql = format!(
            "SELECT {DELIVERY} FROM inbox WHERE status = ?4 AND next_attempt_at <= ?1 \
             AND (leased_until IS NULL OR leased_until < ?1) AND seq NOT IN (SELECT value FROM json_each(?2)) \
             ORDER BY seq LIMIT ?3"
        );
        let skip = json_list(skip);
        self.read(|c| {
            let mut stmt = c.prepare_cached(&sql)?;
            let mut rows = Vec::new();
            for status in ["pending", "failed"] {
                for row in stmt.query_map(params![now, skip, limit, status], delivery)? {
                    rows.push(row?);
                }
            }
            rows.sort_by_key(|d: &Delivery| d.seq);
            rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
            Ok(rows)
        })
    }

    async fn release(&self, seqs: &[i64]) -> Result<()> {
        self.write(|c| {
            let mut stmt = c.prepare_cached(
                "UPDATE inbox SET leased_until = NULL WHERE seq = ?1 AND status <> 'done'",
            )?;
            for s in seqs {
                stmt.execute([s])?;
            }
            Ok(())
        })
        .await
    }

    async fn mark_failed(
        &self,
        seq: i64,
        error: &str,
        dead: bool,
        next_attempt_at: i64,
    ) -> Result<()> {
        let status = if dead { "dead" } else { "failed" };
        self.write(|c| {
            c.prepare_cached(
                "UPDATE inbox SET status = ?2, attempts = attempts + 1, last_error = ?3, \
                 next_attempt_at = ?4, leased_until = NULL WHERE seq = ?1 AND status <> 'done'",
            )?
            .execute(params![seq, status, error, next_attempt_at])?;
            Ok(())
        })
        .await
    }

    async fn counts(&self) -> Result<StatusCounts> {
        // COUNT(*) alone is SQLite's b-tree count (cells per page, no row
        // decoded): several times cheaper than grouping every row by status.
        let (open, total) = self.read(|c| {
            let mut stmt = c.prepare_cached(OPEN_COUNTS)?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            let open = rows.collect::<rusqlite::Result<Vec<(String, i64)>>>()?;
            let total: i64 = c
                .prepare_cached("SELECT COUNT(*) FROM inbox")?
                .query_row([], |r| r.get(0))?;
            Ok((open, total))
        })?;
        Ok(StatusCounts::from_open(open, total))
    }

    async fn anything_due(&self) -> Result<bool> {
        self.read(|c| {
            c.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM inbox WHERE status IN ('pending', 'failed'))",
            )?
            .query_row([], |r| r.get(0))
        })
    }

    async fn oldest_pending_received_at(&self) -> Result<Option<i64>> {
        // By seq, so the inbox's (status, seq) index answers without scanning a backlog.
        self.read(|c| {
            c.prepare_cached(
                "SELECT received_at FROM inbox WHERE status = 'pending' ORDER BY seq LIMIT 1",
            )?
            .query_row([], |r| r.get(0))
            .optional()
        })
    }

    async fn requeue_since(&self, since_ms: i64) -> Result<u64> {
        self.write(|c| {
            c.execute(
                "UPDATE inbox SET status = 'pending', next_attempt_at = 0, leased_until = NULL \
                 WHERE received_at >= ?1 AND status = 'done' \
                 AND EXISTS (SELECT 1 FROM inbox_bodies b WHERE b.seq = inbox.seq)",
                [since_ms],
            )
            .map(|n| n as u64)
        })
        .await
    }

    async fn len(&self) -> Result<i64> {
        self.read(|c| c.query_row("SELECT COUNT(*) FROM inbox", [], |r| r.get(0)))
    }

    async fn log_page(&self, after: i64, limit: i64) -> Result<Vec<LogRow>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(LOG_PAGE)?;
            let rows = stmt.query_map(params![after, limit], |r| {
                Ok(LogRow {
                    seq: r.get(0)?,
                    svix_id: r.get(1)?,
                    event_type: r.get(2)?,
                    entity_key: r.get(3)?,
                    object_id: r.get(4)?,
                    svix_timestamp: r.get(5)?,
                    event_timestamp: r.get(6)?,
                    received_at: r.get(7)?,
                    body: body_at(r, 8)?,
                })
            })?;
            rows.collect()
        })
    }
}

#[async_trait]
impl EventStore for Sqlite<'_> {
    async fn list(&self, f: &EventFilter, before_seq: i64, limit: i64) -> Result<Vec<EventRecord>> {
        // Absent filters bind as NULL and match everything: one statement.
        let sql = format!(
            "SELECT {EVENT_FIELDS} FROM inbox WHERE (?1 IS NULL OR status = ?1) \
             AND (?2 IS NULL OR event_type = ?2) AND (?3 IS NULL OR entity_key = ?3) \
             AND (?4 IS NULL OR received_at >= ?4) AND (?5 IS NULL OR received_at < ?5) \
             AND seq < ?6 ORDER BY seq DESC LIMIT ?7"
        );
        self.read(|c| {
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(
                params![
                    f.status,
                    f.event_type,
                    f.entity,
                    f.since,
                    f.until,
                    before_seq,
                    limit
                ],
                event_record,
            )?;
            rows.collect()
        })
    }

    async fn show(&self, svix_id: &str) -> Result<Option<(EventRecord, String)>> {
        let sql = format!(
            "SELECT {EVENT_FIELDS}, (SELECT {BODY} FROM inbox_bodies b WHERE b.seq = inbox.seq) \
             FROM inbox WHERE svix_id = ?1"
        );
        let found = self.read(|c| {
            c.prepare_cached(&sql)?
                .query_row([svix_id], |r| Ok((event_record(r)?, body_at(r, 11)?)))
                .optional()
        })?;
        // A body past the raw-body retention reads as empty: the row's metadata stays.
        Ok(found)
    }

    async fn update_event(&self, sql: &'static str, svix_id: &str) -> Result<u64> {
        self.write(|c| c.execute(sql, [svix_id]).map(|n| n as u64))
            .await
    }

    async fn event_status(&self, svix_id: &str) -> Result<Option<String>> {
        self.read(|c| {
            c.prepare_cached("SELECT status FROM inbox WHERE svix_id = ?1")?
                .query_row([svix_id], |r| r.get(0))
                .optional()
        })
    }

    async fn retry_all_dead(&self) -> Result<u64> {
        self.write(|c| {
            c.execute(
                "UPDATE inbox SET status = 'pending', next_attempt_at = 0, leased_until = NULL \
                 WHERE status = 'dead'",
                [],
            )
            .map(|n| n as u64)
        })
        .await
    }
}

#[async_trait]
impl ApplyStore for Sqlite<'_> {
    fn strategy(&self) -> ApplyStrategy {
        // One writer at a time (`BEGIN IMMEDIATE` serializes), so no entity
        // locks; every call is local and completes at once.
        ApplyStrategy {
            in_place_when_single: true,
            lock_entities: false,
            synchronous: true,
        }
    }

    async fn begin(&self) -> Result<Box<dyn StoreTx>> {
        // Apply batches are background writers: they yield to a waiting ack.
        let gate = self.gate.background().await;
        Ok(Box::new(tx::SqliteTx::begin(gate)?))
    }
}

#[async_trait]
impl FeedStore for Sqlite<'_> {
    async fn read_feed(
        &self,
        filter: FeedFilter<'_>,
        after: i64,
        limit: i64,
    ) -> Result<Vec<FeedEntry>> {
        // Every consumer reads every row: on a reader connection, no thread hop per row.
        let rows = self.read(|c| {
            let mut stmt = c.prepare_cached(filter.read_sql())?;
            match filter.key() {
                None => stmt.query_map(params![after, limit], feed_row)?.collect(),
                Some(k) => stmt
                    .query_map(params![k, after, limit], feed_row)?
                    .collect(),
            }
        })?;
        Ok(entries(rows))
    }

    async fn count_feed(&self, filter: FeedFilter<'_>, after: i64, cap: i64) -> Result<i64> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(filter.count_sql())?;
            match filter.key() {
                None => stmt.query_row(params![after, cap], |r| r.get(0)),
                Some(k) => stmt.query_row(params![k, after, cap], |r| r.get(0)),
            }
        })
    }

    async fn last_feed_seq(&self) -> Result<i64> {
        self.read(|c| {
            c.prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM change_feed")?
                .query_row([], |r| r.get(0))
        })
    }

    async fn oldest_feed_seq(&self) -> Result<i64> {
        self.read(|c| {
            c.prepare_cached("SELECT COALESCE(MIN(seq), 0) FROM change_feed")?
                .query_row([], |r| r.get(0))
        })
    }

    async fn min_checkpoint(&self) -> Result<i64> {
        self.read(|c| {
            c.prepare_cached("SELECT COALESCE(MIN(seq), 0) FROM feed_checkpoints")?
                .query_row([], |r| r.get(0))
        })
    }

    async fn load_checkpoint(&self, consumer: &str) -> Result<Option<i64>> {
        self.read(|c| {
            c.prepare_cached("SELECT seq FROM feed_checkpoints WHERE consumer = ?1")?
                .query_row([consumer], |r| r.get(0))
                .optional()
        })
    }

    async fn register_consumer(&self, consumer: &str, now: i64) -> Result<()> {
        self.write(|c| {
            c.prepare_cached(
                "INSERT INTO feed_checkpoints (consumer, seq, updated_at) VALUES (?1, 0, ?2) \
                 ON CONFLICT (consumer) DO NOTHING",
            )?
            .execute(params![consumer, now])
            .map(|_| ())
        })
        .await
    }

    async fn save_checkpoint(&self, consumer: &str, seq: i64, now: i64) -> Result<()> {
        self.write(|c| {
            c.prepare_cached(
                "INSERT INTO feed_checkpoints (consumer, seq, updated_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (consumer) DO UPDATE SET seq = excluded.seq, updated_at = excluded.updated_at",
            )?
            .execute(params![consumer, seq, now])
            .map(|_| ())
        })
        .await
    }

    async fn delete_feed(&self, from: i64, to: i64, cutoff_ms: i64) -> Result<u64> {
        self.write_background(|c| {
            c.prepare_cached(
                "DELETE FROM change_feed WHERE seq >= ?1 AND seq <= ?2 AND committed_at < ?3",
            )?
            .execute(params![from, to, cutoff_ms])
            .map(|n| n as u64)
        })
        .await
    }
}

#[async_trait]
impl EntityStore for Sqlite<'_> {
    async fn get(&self, kind: Kind, id: &str) -> Result<Option<EntityRow>> {
        let sql = format!("SELECT {COLS} FROM {} WHERE id = ?1", kind.table());
        self.read(|c| {
            c.prepare_cached(&sql)?
                .query_row([id], tx::entity)
                .optional()
        })
    }

    async fn get_many(&self, kind: Kind, ids: &[&str]) -> Result<Vec<EntityRow>> {
        // The ids travel as one JSON array: one statement text, however many.
        let sql = format!(
            "SELECT {COLS} FROM {} WHERE id IN (SELECT value FROM json_each(?1))",
            kind.table()
        );
        let list = json_list(ids);
        self.read(|c| {
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map([list], tx::entity)?;
            rows.collect()
        })
    }

    async fn list_live(
        &self,
        kind: Kind,
        filter: Option<(RefCol, &str)>,
        after: &str,
        limit: i64,
    ) -> Result<Vec<EntityRow>> {
        let table = kind.table();
        self.read(|c| match filter {
            Some((by, value)) => {
                let sql = format!(
                    "SELECT {COLS} FROM {table} WHERE deleted = 0 AND id > ?1 AND {} = ?3 \
                     ORDER BY id LIMIT ?2",
                    by.column()
                );
                let mut stmt = c.prepare_cached(&sql)?;
                let rows = stmt.query_map(params![after, limit, value], tx::entity)?;
                rows.collect()
            }
            None => {
                let sql = format!(
                    "SELECT {COLS} FROM {table} WHERE deleted = 0 AND id > ?1 ORDER BY id LIMIT ?2"
                );
                let mut stmt = c.prepare_cached(&sql)?;
                let rows = stmt.query_map(params![after, limit], tx::entity)?;
                rows.collect()
            }
        })
    }

    async fn audit(&self, entity_id: &str, after: i64, limit: i64) -> Result<Vec<AuditEntry>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT seq, svix_id, kind, entity_id, operation, changes, version, at FROM audit \
                 WHERE entity_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![entity_id, after, limit], |r| {
                Ok(AuditEntry {
                    seq: r.get(0)?,
                    svix_id: r.get(1)?,
                    kind: r.get(2)?,
                    entity_id: r.get(3)?,
                    operation: r.get(4)?,
                    changes: r.get(5)?,
                    version: r.get(6)?,
                    at: r.get(7)?,
                })
            })?;
            rows.collect()
        })
    }
}

#[async_trait]
impl MaintenanceStore for Sqlite<'_> {
    async fn purge_expired(&self, cutoff_ms: i64, redact: &Redaction) -> Result<PurgeReport> {
        // The background side of the gate: webhook appends go first.
        self.write_background(|c| purge::purge(c, cutoff_ms, redact))
            .await
    }

    async fn expire_bodies(&self, after: i64, cutoff_ms: i64, limit: i64) -> Result<BodyExpiry> {
        self.write_background(|c| {
            let tx = c.transaction()?;
            let rows: Vec<(i64, i64, String)> = {
                let mut stmt = tx.prepare_cached(
                    "SELECT seq, received_at, status FROM inbox \
                     WHERE seq > max(?1, COALESCE((SELECT MIN(seq) FROM inbox_bodies), 0) - 1) \
                     ORDER BY seq LIMIT ?2",
                )?;
                let rows = stmt.query_map(params![after, limit], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            let (seqs, mut report) = bodies_to_expire(&rows, after, cutoff_ms, limit);
            if !seqs.is_empty() {
                report.deleted = tx
                    .prepare_cached(
                        "DELETE FROM inbox_bodies WHERE seq IN (SELECT value FROM json_each(?1))",
                    )?
                    .execute([json_list(&seqs)])? as u64;
            }
            tx.commit()?;
            Ok(report)
        })
        .await
    }

    /// Copies the WAL into the database and truncates it to zero bytes, so the
    /// frames that still held the erased values (their pages before the
    /// redaction) are gone from disk. The database file itself keeps no copy:
    /// every connection writes with `secure_delete`, which zeroes freed space.
    /// False while a reader still holds an old snapshot.
    async fn scrub_after_erasure(&self) -> Result<bool> {
        let busy: i64 = self
            .write(|c| c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0)))
            .await?;
        Ok(busy == 0)
    }

    async fn refresh_statistics(&self) -> Result<()> {
        // SQLite plans without statistics tables unless ANALYZE ran; the
        // schema's indexes are what its planner uses.
        Ok(())
    }

    async fn keep_statistics_fresh(&self, _cancel: tokio_util::sync::CancellationToken) {}

    async fn ping(&self) -> Result<()> {
        self.read(|c| c.query_row("SELECT 1", [], |_| Ok(())))
    }

    fn pool_stats(&self) -> (u32, usize) {
        self.gate.connections()
    }

    /// Connections close when the last handle is dropped; commits are
    /// already durable or in the WAL. What the WAL still holds is copied into
    /// the database and the WAL cut to zero bytes, so a stopped service does
    /// not leave up to a second's worth of commits (tens of MB under load)
    /// on disk twice. Best effort: a reader still open only defers that to
    /// the next start.
    async fn close(&self) {
        match self
            .write(|c| {
                c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    r.get::<_, i64>(0)
                })
            })
            .await
        {
            Ok(0) => {}
            Ok(_) => tracing::debug!("WAL not truncated at close: a reader still uses it"),
            Err(e) => tracing::debug!(error = %e, "WAL not truncated at close"),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::DatabaseUrl;
    use crate::store::body::SAMPLES;
    use crate::store::db::Database;
    use crate::store::NewDelivery;

    fn delivery(i: usize) -> NewDelivery {
        NewDelivery {
            svix_id: format!("msg_{i:06}"),
            svix_timestamp: 1_700_000_000,
            event_type: "user.updated".into(),
            entity_key: Some(format!("user_{}", i % 50)),
            object_id: Some(format!("user_{}", i % 50)),
            event_timestamp_ms: None,
            received_at_ms: 1_700_000_000_000,
            body: format!(
                r#"{{"data":{{"id":"user_{}","object":"user","first_name":"Name{i}","email_addresses":[{{"id":"idn_{i}","email_address":"u{i}@example.test","verification":{{"status":"verified"}}}}],"updated_at":{}}},"object":"event","type":"user.updated"}}"#,
                i % 50,
                1_700_000_000_000u64 + i as u64
            ),
            user_id: Some(format!("user_{}", i % 50)),
            contacts: vec![],
        }
    }

    /// (dictionary id named by the frame or 0, body) of every stored body.
    fn stored_bodies(db: &Database) -> Vec<(u32, String)> {
        let Database::Sqlite(gate) = db else {
            unreachable!()
        };
        gate.read(|c| {
            let mut stmt = c.prepare("SELECT body_zstd FROM inbox_bodies ORDER BY seq")?;
            let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
            rows.map(|z| {
                let z = z?;
                let id = zstd::zstd_safe::get_dict_id_from_frame(&z).map_or(0, |i| i.get());
                Ok((id, crate::store::body::decode(Some(&z))))
            })
            .collect()
        })
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bodies_use_a_dictionary_only_once_stored_and_read_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let url = DatabaseUrl::Sqlite(format!("sqlite://{}", dir.path().join("c.db").display()));
        let db = Database::open(&url).await.unwrap();
        let mut next = 0;
        for chunk in 0..SAMPLES / 100 {
            let rows: Vec<NewDelivery> = (chunk * 100..(chunk + 1) * 100).map(delivery).collect();
            db.append(&rows).await.unwrap();
            next = (chunk + 1) * 100;
        }
        // Training runs on its own thread; each append stores a trained
        // dictionary before it compresses anything.
        let mut used = None;
        for _ in 0..500 {
            db.append(&[delivery(next)]).await.unwrap();
            next += 1;
            if let Some((id, _)) = stored_bodies(&db).last().filter(|(id, _)| *id != 0) {
                used = Some(*id);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let id = used.expect("bodies compressed with a dictionary within 5 s");
        let Database::Sqlite(gate) = &db else {
            unreachable!()
        };
        let stored: Vec<i64> = gate
            .read(|c| {
                let mut s = c.prepare("SELECT id FROM body_dictionaries")?;
                let ids = s.query_map([], |r| r.get(0))?;
                ids.collect()
            })
            .unwrap();
        assert_eq!(stored, vec![id as i64]);
        let expected: Vec<String> = (0..next).map(|i| delivery(i).body).collect();
        let bodies = stored_bodies(&db);
        assert_eq!(
            bodies.iter().map(|(_, b)| b.clone()).collect::<Vec<_>>(),
            expected
        );
        assert!(bodies[..SAMPLES].iter().all(|(d, _)| *d == 0));
        db.close().await;
        drop(db);
        // A new start writes with the stored dictionary; every body still reads.
        let db = Database::open(&url).await.unwrap();
        db.append(&[delivery(next)]).await.unwrap();
        let bodies = stored_bodies(&db);
        assert_eq!(bodies.last().unwrap(), &(id, delivery(next).body));
        assert_eq!(bodies.len(), next + 1);
    }
}
