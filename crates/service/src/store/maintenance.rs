//! Retention: purging expired archive rows and erasing deleted users' data,
//! pruning the change feed; the database's own upkeep.
//!
//! Owns: which rows hold a deleted user's data and the order they are purged
//! in (the `purge_impl!` walk, run by each backend under its own write
//! discipline). Must never: decide how a value is redacted (that policy is
//! `sync::erasure`'s, handed in as a [`Redaction`]), or hold a purge
//! transaction longer than [`ERASE_USERS_PER_TX`] users.

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

/// Redacts the personal values of the audit rows whose `$col` is `$id`.
macro_rules! redact_audit {
    ($tx:expr, $redact:expr, $col:literal, $id:expr) => {{
        let audits: Vec<(i64, String)> = sqlx::query_as(concat!(
            "SELECT seq, changes FROM audit WHERE ",
            $col,
            " = $1"
        ))
        .bind($id)
        .fetch_all(&mut *$tx)
        .await?;
        for (aseq, changes) in audits {
            sqlx::query("UPDATE audit SET changes = $2 WHERE seq = $1")
                .bind(aseq)
                .bind(($redact.changes)(&changes))
                .execute(&mut *$tx)
                .await?;
        }
    }};
}

/// One purge transaction on a sqlx pool (both backends' pools accept this SQL;
/// each backend calls it under its own write discipline).
macro_rules! purge_impl {
    ($pool:expr, $cutoff:expr, $redact:expr) => {{
        use crate::store::maintenance::{
            message_table, PurgeReport, ARCHIVE_ROWS_PER_TX, ERASE_USERS_PER_TX,
        };
        let redact: &crate::store::maintenance::Redaction = $redact;
        let pool = $pool;
        let mut report = PurgeReport::default();
        let mut tx = pool.begin().await?;
        let expired: Vec<(i64, String, String, Option<String>)> = sqlx::query_as(
            "SELECT seq, kind, entity_id, data FROM archive WHERE archived_at < $1 ORDER BY seq LIMIT $2",
        )
        .bind($cutoff)
        .bind(ARCHIVE_ROWS_PER_TX)
        .fetch_all(&mut *tx)
        .await?;
        for (seq, kind, entity_id, data) in expired {
            if kind == "user" {
                if report.users_erased == ERASE_USERS_PER_TX {
                    // The rest waits for the next transaction.
                    break;
                }
                let uid = entity_id.as_str();
                crate::store::maintenance::redact_audit!(tx, redact, "user_id", uid);
                // The user's addresses and numbers: from its last record and
                // from every delivery about it (an address it no longer had).
                let mut contacts = Vec::new();
                if let Some(v) = data.as_deref().and_then(|d| serde_json::from_str(d).ok()) {
                    crate::clerk::envelope::contacts_in(&v, &mut contacts);
                }
                let known: Vec<String> = sqlx::query_scalar(
                    "SELECT DISTINCT c.contact FROM inbox i JOIN inbox_contacts c ON c.seq = i.seq \
                     WHERE i.user_id = $1",
                )
                .bind(uid)
                .fetch_all(&mut *tx)
                .await?;
                contacts.extend(known);
                contacts.sort();
                contacts.dedup();
                // Its deliveries, by index: about it, in its partition, or
                // naming one of its addresses (an email.created with user_id null).
                let mut seqs = std::collections::BTreeSet::new();
                for sql in [
                    "SELECT seq FROM inbox WHERE user_id = $1",
                    "SELECT seq FROM inbox WHERE entity_key = $1",
                ] {
                    let found: Vec<i64> = sqlx::query_scalar(sql)
                        .bind(uid)
                        .fetch_all(&mut *tx)
                        .await?;
                    seqs.extend(found);
                }
                for c in &contacts {
                    let found: Vec<i64> =
                        sqlx::query_scalar("SELECT seq FROM inbox_contacts WHERE contact = $1")
                            .bind(c)
                            .fetch_all(&mut *tx)
                            .await?;
                    seqs.extend(found);
                }
                let mut messages = Vec::new();
                for iseq in seqs {
                    let row: Option<(String, Option<String>, Option<String>)> = sqlx::query_as(
                        "SELECT event_type, object_id, body FROM inbox \
                         LEFT JOIN inbox_bodies USING (seq) WHERE seq = $1",
                    )
                    .bind(iseq)
                    .fetch_optional(&mut *tx)
                    .await?;
                    let Some((event_type, object_id, body)) = row else {
                        continue;
                    };
                    if let Some(body) = body {
                        sqlx::query("UPDATE inbox_bodies SET body = $2 WHERE seq = $1")
                            .bind(iseq)
                            .bind((redact.body)(&body))
                            .execute(&mut *tx)
                            .await?;
                    }
                    sqlx::query("DELETE FROM inbox_contacts WHERE seq = $1")
                        .bind(iseq)
                        .execute(&mut *tx)
                        .await?;
                    if let (Some(t), Some(id)) = (message_table(&event_type), object_id) {
                        messages.push((t, id));
                    }
                }
                // Emails and SMS sent to the user (also those Clerk sent with
                // no user_id): their records and audit values.
                messages.sort();
                messages.dedup();
                for (t, id) in &messages {
                    sqlx::query(&format!("UPDATE {t} SET data = NULL WHERE id = $1"))
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    crate::store::maintenance::redact_audit!(tx, redact, "entity_id", id);
                }
                for t in ["sessions", "memberships"] {
                    sqlx::query(&format!("UPDATE {t} SET data = NULL WHERE user_id = $1 AND deleted = $2"))
                        .bind(uid)
                        .bind(true)
                        .execute(&mut *tx)
                        .await?;
                }
                for t in ["emails", "sms_messages"] {
                    sqlx::query(&format!("UPDATE {t} SET data = NULL WHERE user_id = $1"))
                        .bind(uid)
                        .execute(&mut *tx)
                        .await?;
                }
                let n = sqlx::query("DELETE FROM archive WHERE user_id = $1")
                    .bind(uid)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                report.archive_rows += n;
                report.users_erased += 1;
            } else {
                let n = sqlx::query("DELETE FROM archive WHERE seq = $1")
                    .bind(seq)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                report.archive_rows += n;
            }
        }
        tx.commit().await?;
        Ok(report)
    }};
}
pub(crate) use purge_impl;
pub(crate) use redact_audit;

/// The table of the message an email or SMS delivery is about.
pub(crate) fn message_table(event_type: &str) -> Option<&'static str> {
    match event_type.split('.').next() {
        Some("email") => Some("emails"),
        Some("sms") => Some("sms_messages"),
        _ => None,
    }
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

/// The oldest change-feed entry still kept (0 when the feed is empty).
pub async fn oldest_feed_seq(db: &Database) -> Result<i64, StoreError> {
    backend!(db, |b| b.oldest_feed_seq().await)
}
