//! The inbox as operators see it: listing, showing, retrying, discarding events.
//!
//! Owns: the operators' types and which status changes are allowed. Must
//! never: hold backend-specific SQL (the backends run it), or move an event
//! out of `done` (applied effects cannot be taken back).

use crate::store::db::{backend, Database};
use crate::store::{EventStore, InboxStore, StoreError};

/// An inbox row as operators see it (the body only in `show`).
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
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

/// The inbox columns of an [`EventRecord`], in its order.
pub(crate) const EVENT_FIELDS: &str =
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
) -> Result<Vec<EventRecord>, StoreError> {
    let before = before_seq.unwrap_or(i64::MAX);
    backend!(db, |b| b.list(f, before, limit).await)
}

/// An event and its body.
pub async fn show(
    db: &Database,
    svix_id: &str,
) -> Result<Option<(EventRecord, String)>, StoreError> {
    backend!(db, |b| b.show(svix_id).await)
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
pub async fn retry(db: &Database, svix_id: &str) -> Result<Transition, StoreError> {
    transition(
        db,
        svix_id,
        "UPDATE inbox SET status = 'pending', next_attempt_at = 0, leased_until = NULL \
         WHERE svix_id = $1 AND status IN ('failed', 'dead', 'discarded')",
    )
    .await
}

/// Sets an unprocessed event aside: kept for the record, never applied.
pub async fn discard(db: &Database, svix_id: &str) -> Result<Transition, StoreError> {
    transition(
        db,
        svix_id,
        "UPDATE inbox SET status = 'discarded', leased_until = NULL \
         WHERE svix_id = $1 AND status IN ('pending', 'failed', 'dead')",
    )
    .await
}

async fn transition(
    db: &Database,
    svix_id: &str,
    sql: &'static str,
) -> Result<Transition, StoreError> {
    let n = backend!(db, |b| b.update_event(sql, svix_id).await)?;
    if n > 0 {
        return Ok(Transition::Done);
    }
    Ok(match backend!(db, |b| b.event_status(svix_id).await)? {
        Some(status) => Transition::Conflict { status },
        None => Transition::NotFound,
    })
}

/// Queues every dead event for a new attempt; returns how many.
pub async fn retry_all_dead(db: &Database) -> Result<u64, StoreError> {
    backend!(db, |b| b.retry_all_dead().await)
}

/// Received-at (ms) of the oldest pending event.
pub async fn oldest_pending_received_at(db: &Database) -> Result<Option<i64>, StoreError> {
    backend!(db, |b| b.oldest_pending_received_at().await)
}
