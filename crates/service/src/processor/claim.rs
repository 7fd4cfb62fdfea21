//! Claiming, releasing and failing inbox rows.

use crate::store::db::{on_pool, Database};
use crate::sync::Delivery;

/// The inbox columns a [`Delivery`] is read from, the body from its own table
/// (a subquery, so the same list serves a SELECT and an UPDATE's RETURNING).
/// A body that is missing (it is written in the row's own transaction, so only
/// by hand) reads as empty: that event dead-letters with a parse error instead
/// of failing every read of the due events.
const DELIVERY: &str = "seq, svix_id, event_type, entity_key, svix_timestamp, event_timestamp, \
     received_at, COALESCE((SELECT body FROM inbox_bodies b WHERE b.seq = inbox.seq), '') AS body, \
     attempts";

/// Leases up to `limit` due events (pending, or failed and due for retry, whose
/// lease is free), oldest first.
pub async fn claim(
    db: &Database,
    now: i64,
    lease_until: i64,
    limit: i64,
) -> Result<Vec<Delivery>, sqlx::Error> {
    let _gate = db.background_write_lock().await;
    let mut rows: Vec<Delivery> = match db {
        Database::Sqlite(p, ..) => {
            let sql = format!(
                "UPDATE inbox SET leased_until = $1 WHERE seq IN (\
                   SELECT seq FROM inbox WHERE status IN ('pending', 'failed') AND next_attempt_at <= $2 \
                   AND (leased_until IS NULL OR leased_until < $2) ORDER BY seq LIMIT $3) RETURNING {DELIVERY}"
            );
            sqlx::query_as(&sql)
                .bind(lease_until)
                .bind(now)
                .bind(limit)
                .fetch_all(p)
                .await?
        }
        Database::Postgres(p) => {
            // SKIP LOCKED: several nodes claim side by side without waiting on each other.
            let sql = format!(
                "UPDATE inbox SET leased_until = $1 WHERE seq IN (\
                   SELECT seq FROM inbox WHERE status IN ('pending', 'failed') AND next_attempt_at <= $2 \
                   AND (leased_until IS NULL OR leased_until < $2) ORDER BY seq LIMIT $3 \
                   FOR UPDATE SKIP LOCKED) RETURNING {DELIVERY}"
            );
            sqlx::query_as(&sql)
                .bind(lease_until)
                .bind(now)
                .bind(limit)
                .fetch_all(p)
                .await?
        }
    };
    rows.sort_by_key(|d| d.seq);
    Ok(rows)
}

/// Due events (pending, or failed and due for retry, not leased by anyone),
/// oldest first, without leasing them, leaving out the seqs in `skip` (the
/// batch being applied while this reads): for SQLite's single in-place
/// worker, which re-checks each one's status inside its transaction. On a
/// reader connection ([`crate::store::db::WriteGate::read`]).
pub fn due(
    conn: &rusqlite::Connection,
    now: i64,
    skip: &[i64],
    limit: i64,
) -> rusqlite::Result<Vec<Delivery>> {
    // The seqs to skip travel as one JSON array: one statement text, however many.
    let skip = serde_json::to_string(skip).expect("a list of integers serializes");
    let sql = format!(
        "SELECT {DELIVERY} FROM inbox WHERE status IN ('pending', 'failed') AND next_attempt_at <= ?1 \
         AND (leased_until IS NULL OR leased_until < ?1) AND seq NOT IN (SELECT value FROM json_each(?2)) \
         ORDER BY seq LIMIT ?3"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(rusqlite::params![now, skip, limit], |r| {
        Ok(Delivery {
            seq: r.get(0)?,
            svix_id: r.get(1)?,
            event_type: r.get(2)?,
            entity_key: r.get(3)?,
            svix_timestamp: r.get(4)?,
            event_timestamp: r.get(5)?,
            received_at: r.get(6)?,
            body: r.get(7)?,
            attempts: r.get(8)?,
        })
    })?;
    rows.collect()
}

/// Gives back leases (shutdown).
pub async fn release(db: &Database, seqs: &[i64]) -> Result<(), sqlx::Error> {
    let _gate = db.write_lock().await;
    for s in seqs {
        on_pool!(db, |p| sqlx::query(
            "UPDATE inbox SET leased_until = NULL WHERE seq = $1 AND status <> 'done'"
        )
        .bind(*s)
        .execute(p)
        .await
        .map(|_| ()))?;
    }
    Ok(())
}

/// Records a failed attempt: retried after `next_attempt_at`, or dead.
pub async fn mark_failed(
    db: &Database,
    seq: i64,
    error: &str,
    dead: bool,
    next_attempt_at: i64,
) -> Result<(), sqlx::Error> {
    let _gate = db.write_lock().await;
    let status = if dead { "dead" } else { "failed" };
    // Bounded: an error message is for humans, not a place to store payloads.
    let error: String = error.chars().take(2000).collect();
    on_pool!(db, |p| sqlx::query(
        "UPDATE inbox SET status = $2, attempts = attempts + 1, last_error = $3, \
         next_attempt_at = $4, leased_until = NULL WHERE seq = $1 AND status <> 'done'"
    )
    .bind(seq)
    .bind(status)
    .bind(&error)
    .bind(next_attempt_at)
    .execute(p)
    .await
    .map(|_| ()))?;
    Ok(())
}
