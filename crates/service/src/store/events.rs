//! Inbox queries for operators: listing, showing, retrying, discarding events.

use crate::store::db::{on_pool, Database};

/// An inbox row as operators see it (the body only in `show`).
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct EventRecord {
    pub seq: i64,
    pub svix_id: String,
    pub event_type: String,
    pub entity_key: Option<String>,
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub received_at: i64,
    pub processed_at: Option<i64>,
    pub next_attempt_at: i64,
    pub duration_us: Option<i64>,
}

const FIELDS: &str =
    "seq, svix_id, event_type, entity_key, status, attempts, last_error, received_at, \
                      processed_at, next_attempt_at, duration_us";

/// Filters for `list`; every one optional.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct EventFilter {
    pub status: Option<String>,
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    pub entity: Option<String>,
    /// Received at or after (ms).
    pub since: Option<i64>,
    /// Received before (ms).
    pub until: Option<i64>,
}

pub const STATUSES: &[&str] = &["pending", "done", "failed", "dead", "discarded"];

/// Newest first, before `before_seq` (exclusive) when given.
pub async fn list(
    db: &Database,
    f: &EventFilter,
    before_seq: Option<i64>,
    limit: i64,
) -> Result<Vec<EventRecord>, sqlx::Error> {
    // Absent filters bind as NULL and match everything: one statement, no string building.
    let sql = format!(
        "SELECT {FIELDS} FROM inbox WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR event_type = $2) \
         AND ($3 IS NULL OR entity_key = $3) AND ($4 IS NULL OR received_at >= $4) \
         AND ($5 IS NULL OR received_at < $5) AND seq < $6 ORDER BY seq DESC LIMIT $7"
    );
    on_pool!(db, |p| sqlx::query_as(&sql)
        .bind(f.status.as_deref())
        .bind(f.event_type.as_deref())
        .bind(f.entity.as_deref())
        .bind(f.since)
        .bind(f.until)
        .bind(before_seq.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(p)
        .await)
}

pub async fn show(
    db: &Database,
    svix_id: &str,
) -> Result<Option<(EventRecord, String)>, sqlx::Error> {
    let sql = format!("SELECT {FIELDS} FROM inbox WHERE svix_id = $1");
    let rec: Option<EventRecord> = on_pool!(db, |p| sqlx::query_as(&sql)
        .bind(svix_id)
        .fetch_optional(p)
        .await)?;
    let Some(rec) = rec else { return Ok(None) };
    let body: String = on_pool!(db, |p| sqlx::query_scalar(
        "SELECT body FROM inbox_bodies WHERE seq = $1"
    )
    .bind(rec.seq)
    .fetch_one(p)
    .await)?;
    Ok(Some((rec, body)))
}

/// What `retry`/`discard` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    Done,
    NotFound,
    /// The event is in a status the operation does not apply to (this one).
    Conflict {
        status: String,
    },
}

/// A status as an operator reads it, e.g. "done (processed)".
pub fn describe_status(status: &str) -> String {
    let meaning = match status {
        "pending" => "waiting to be applied",
        "done" => "processed",
        "failed" => "failed, to be retried",
        "dead" => "out of attempts",
        "discarded" => "set aside",
        _ => return status.to_string(),
    };
    format!("{status} ({meaning})")
}

/// Statuses `retry` applies to.
pub const RETRYABLE: &[&str] = &["failed", "dead", "discarded"];
/// Statuses `discard` applies to.
pub const DISCARDABLE: &[&str] = &["pending", "failed", "dead"];

/// Queues a failed, dead or discarded event for an immediate new attempt.
pub async fn retry(db: &Database, svix_id: &str) -> Result<Transition, sqlx::Error> {
    transition(
        db,
        svix_id,
        "UPDATE inbox SET status = 'pending', next_attempt_at = 0, leased_until = NULL \
         WHERE svix_id = $1 AND status IN ('failed', 'dead', 'discarded')",
    )
    .await
}

/// Sets an unprocessed event aside: kept for the record, never applied.
pub async fn discard(db: &Database, svix_id: &str) -> Result<Transition, sqlx::Error> {
    transition(
        db,
        svix_id,
        "UPDATE inbox SET status = 'discarded', leased_until = NULL \
         WHERE svix_id = $1 AND status IN ('pending', 'failed', 'dead')",
    )
    .await
}

async fn transition(db: &Database, svix_id: &str, sql: &str) -> Result<Transition, sqlx::Error> {
    let gate = db.write_lock().await;
    let n = on_pool!(db, |p| sqlx::query(sql)
        .bind(svix_id)
        .execute(p)
        .await
        .map(|r| r.rows_affected()))?;
    drop(gate);
    if n > 0 {
        return Ok(Transition::Done);
    }
    let status: Option<String> = on_pool!(db, |p| sqlx::query_scalar(
        "SELECT status FROM inbox WHERE svix_id = $1"
    )
    .bind(svix_id)
    .fetch_optional(p)
    .await)?;
    Ok(match status {
        Some(status) => Transition::Conflict { status },
        None => Transition::NotFound,
    })
}

/// Queues every dead event for a new attempt; returns how many.
pub async fn retry_all_dead(db: &Database) -> Result<u64, sqlx::Error> {
    let _gate = db.write_lock().await;
    on_pool!(db, |p| {
        sqlx::query(
        "UPDATE inbox SET status = 'pending', next_attempt_at = 0, leased_until = NULL WHERE status = 'dead'"
    )
    .execute(p)
    .await
    .map(|r| r.rows_affected())
    })
}

/// Received-at (ms) of the oldest pending event: by `seq`, so the inbox's
/// (status, seq) index answers it without scanning a backlog.
pub async fn oldest_pending_received_at(db: &Database) -> Result<Option<i64>, sqlx::Error> {
    const Q: &str = "SELECT received_at FROM inbox WHERE status = 'pending' ORDER BY seq LIMIT 1";
    on_pool!(db, |p| sqlx::query_scalar(Q).fetch_optional(p).await)
}
