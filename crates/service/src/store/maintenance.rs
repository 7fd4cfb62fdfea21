//! Retention: purging expired archive rows and erasing deleted users' data,
//! pruning the change feed; the database's own upkeep.
//!
//! Owns: the purge's limits and the functions the program calls; each backend
//! walks a deleted user's rows with its own SQL under its own write discipline. Must never: decide how a value is redacted (that policy is
//! `sync::erasure`'s, handed in as a [`Redaction`]), or hold a purge
//! transaction longer than [`ERASE_USERS_PER_TX`] users.

use crate::clerk::kind::{Erasure, Kind};
use crate::store::db::{backend, Database};
use crate::store::{FeedStore, MaintenanceStore, StoreError};

pub use crate::store::postgres::analyze_grown_tables;

/// How erased values are rewritten: the policy, from `sync::erasure`.
#[derive(Debug, Clone, Copy)]
pub struct Redaction {
    /// A delivery body reduced to what routing and replay need.
    pub body: fn(&str) -> String,
    /// An audit row's `changes` with its before/after values replaced.
    pub changes: fn(&str) -> String,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PurgeReport {
    pub archive_rows: u64,
    pub users_erased: u64,
}

/// Most deleted users one purge transaction erases. Each takes a handful of
/// indexed statements; with SQLite the transaction holds the one write gate,
/// which webhook acks wait for (measured on main, 1,000 users per transaction:
/// acks waited over 10 s). At 50 the gate is held for tens of milliseconds.
pub const ERASE_USERS_PER_TX: u64 = 50;
/// Most expired archive rows one purge transaction reads.
pub(crate) const ARCHIVE_ROWS_PER_TX: i64 = 500;

/// The table of the message (an email or SMS: [`Erasure::Messages`]) a
/// delivery is about.
pub(crate) fn message_table(event_type: &str) -> Option<&'static str> {
    let kind = Kind::from_family(event_type.split('.').next()?)?;
    match kind.spec().erasure {
        Erasure::Messages => Some(kind.table()),
        Erasure::Keep | Erasure::UserTombstones => None,
    }
}

/// The tables whose rows keep something of a deleted user, and how each is
/// erased: declared per kind (clerk/kind.rs), walked by each backend's purge.
pub(crate) fn erased_tables() -> impl Iterator<Item = (&'static str, Erasure)> {
    Kind::ALL
        .into_iter()
        .filter_map(|kind| match kind.spec().erasure {
            Erasure::Keep => None,
            e @ (Erasure::UserTombstones | Erasure::Messages) => Some((kind.table(), e)),
        })
}

/// Purges, in one short transaction, archive rows older than `cutoff_ms` (at
/// most 500) and erases the personal data of the deleted users among them (at
/// most [`ERASE_USERS_PER_TX`]), rewriting values as `redact` says. Call it
/// again until it reports no archive rows, yielding in between: the backend
/// lets intake go first (SQLite: the background side of the write gate).
pub async fn purge_expired(
    db: &Database,
    cutoff_ms: i64,
    redact: &Redaction,
) -> Result<PurgeReport, StoreError> {
    backend!(db, |b| b.purge_expired(cutoff_ms, redact).await)
}

/// After an erasure: removes the old copies of erased values the backend
/// still keeps on disk (SQLite: checkpoints and truncates the WAL; PostgreSQL
/// keeps old row versions until VACUUM, which autovacuum runs). Returns false
/// when that has to wait (a reader still holds an old snapshot): the next
/// erasure tries again.
pub async fn truncate_wal(db: &Database) -> Result<bool, StoreError> {
    backend!(db, |b| b.scrub_after_erasure().await)
}

/// Deletes up to `limit` change-feed entries committed before `cutoff_ms` that
/// every consumer has already handled (its checkpoint is at or past them); returns
/// how many. Entries a consumer still needs stay, however old: a consumer that
/// stopped for a week resumes without a gap. A consumer removed for good should
/// have its row deleted from `feed_checkpoints`, or it holds the feed forever.
pub async fn prune_feed(db: &Database, cutoff_ms: i64, limit: i64) -> Result<u64, StoreError> {
    backend!(db, |b| {
        let oldest = b.oldest_feed_seq().await?;
        let newest = b.last_feed_seq().await?;
        let checkpoint = b.min_checkpoint().await?;
        // A bounded seq range from the oldest entry: the delete never scans the
        // whole feed, however long it is. The newest entry always stays: it is the
        // feed's head, which realtime clients resume against.
        let upper = checkpoint.min(oldest + limit - 1).min(newest - 1);
        if oldest == 0 || upper < oldest {
            return Ok(0);
        }
        b.delete_feed(oldest, upper, cutoff_ms).await
    })
}

/// What one step of the raw-body retention did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BodyExpiry {
    /// Bodies deleted.
    pub deleted: u64,
    /// The last inbox seq looked at: the next step starts after it.
    pub next_after: i64,
    /// False once the walk reached a delivery received at or after the cutoff
    /// (or the end of the inbox): nothing older is left to look at.
    pub more: bool,
}

/// Deletes the raw bodies of applied (`done`) and discarded deliveries received
/// before `cutoff_ms`, looking at up to `limit` inbox rows after `after` (or
/// after the oldest body still kept, whichever is later) in one short
/// transaction. Pending, failed and dead deliveries keep theirs: they may still
/// be applied. The inbox rows stay (ids, type, times, status): deduplication
/// and the operators' view are unchanged; `replay` covers the deliveries whose
/// bodies are kept.
pub async fn expire_bodies(
    db: &Database,
    after: i64,
    cutoff_ms: i64,
    limit: i64,
) -> Result<BodyExpiry, StoreError> {
    backend!(db, |b| b.expire_bodies(after, cutoff_ms, limit).await)
}

/// Which of `rows` ((seq, received_at, status), in seq order) lose their body,
/// and where the walk stands: both backends decide the same way.
pub(crate) fn bodies_to_expire(
    rows: &[(i64, i64, String)],
    after: i64,
    cutoff_ms: i64,
    limit: i64,
) -> (Vec<i64>, BodyExpiry) {
    let mut out = Vec::new();
    let mut next_after = after;
    for (seq, received_at, status) in rows {
        if *received_at >= cutoff_ms {
            let r = BodyExpiry {
                deleted: 0,
                next_after,
                more: false,
            };
            return (out, r);
        }
        next_after = *seq;
        if status == "done" || status == "discarded" {
            out.push(*seq);
        }
    }
    let more = rows.len() as i64 >= limit;
    let r = BodyExpiry {
        deleted: 0,
        next_after,
        more,
    };
    (out, r)
}

/// The oldest change-feed entry still kept (0 when the feed is empty).
pub async fn oldest_feed_seq(db: &Database) -> Result<i64, StoreError> {
    backend!(db, |b| b.oldest_feed_seq().await)
}
