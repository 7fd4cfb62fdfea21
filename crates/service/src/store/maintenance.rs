//! Retention: purging expired archive rows and erasing deleted users' data;
//! keeping PostgreSQL's planner statistics fresh while tables grow.

use crate::clerk::envelope::contacts_in;
use crate::clerk::kind::{Erasure, Kind};
use crate::store::db::Database;
use crate::sync::erasure::{redact_body, redact_changes};

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
const ARCHIVE_ROWS_PER_TX: i64 = 500;

/// Redacts the personal values of the audit rows whose `$col` is `$id`.
macro_rules! redact_audit {
    ($tx:expr, $col:literal, $id:expr) => {{
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
                .bind(redact_changes(&changes))
                .execute(&mut *$tx)
                .await?;
        }
    }};
}

macro_rules! purge_impl {
    ($pool:expr, $cutoff:expr) => {{
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
                redact_audit!(tx, "user_id", uid);
                // The user's addresses and numbers: from its last record and
                // from every delivery about it (an address it no longer had).
                let mut contacts = Vec::new();
                if let Some(v) = data.as_deref().and_then(|d| serde_json::from_str(d).ok()) {
                    contacts_in(&v, &mut contacts);
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
                            .bind(redact_body(&body))
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
                    redact_audit!(tx, "entity_id", id);
                }
                // What each kind keeps of the user: declared per kind (clerk/kind.rs).
                for kind in Kind::ALL {
                    let t = kind.table();
                    match kind.spec().erasure {
                        Erasure::Keep => {}
                        Erasure::UserTombstones => {
                            sqlx::query(&format!("UPDATE {t} SET data = NULL WHERE user_id = $1 AND deleted = $2"))
                                .bind(uid)
                                .bind(true)
                                .execute(&mut *tx)
                                .await?;
                        }
                        Erasure::Messages => {
                            sqlx::query(&format!("UPDATE {t} SET data = NULL WHERE user_id = $1"))
                                .bind(uid)
                                .execute(&mut *tx)
                                .await?;
                        }
                    }
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

/// The table of the message (an email or SMS: [`Erasure::Messages`]) a
/// delivery is about.
fn message_table(event_type: &str) -> Option<&'static str> {
    let kind = Kind::from_family(event_type.split('.').next()?)?;
    match kind.spec().erasure {
        Erasure::Messages => Some(kind.table()),
        Erasure::Keep | Erasure::UserTombstones => None,
    }
}

/// Purges, in one short transaction, archive rows older than `cutoff_ms` (at
/// most 500) and erases the personal data of the deleted users among them (at
/// most [`ERASE_USERS_PER_TX`]). Call it again until it reports no archive
/// rows, yielding in between: on SQLite it waits for the write gate behind
/// webhook appends (the background side), so intake goes on between calls.
pub async fn purge_expired(db: &Database, cutoff_ms: i64) -> Result<PurgeReport, sqlx::Error> {
    let _gate = db.background_write_lock().await;
    match db {
        Database::Sqlite(p, ..) => purge_impl!(p, cutoff_ms),
        Database::Postgres(p) => purge_impl!(p, cutoff_ms),
    }
}

/// After an erasure on SQLite: copies the WAL into the database and truncates
/// it to zero bytes, so the frames that still held the erased values (their
/// pages before the redaction) are gone from disk. The database file itself
/// keeps no copy: every connection writes with `secure_delete`, which zeroes
/// freed space. PostgreSQL keeps old row versions until VACUUM reclaims them
/// (autovacuum does; run `VACUUM` to be sure at once). Returns whether the WAL
/// was truncated (false while a reader still holds an old snapshot: the next
/// erasure tries again).
pub async fn truncate_wal(db: &Database) -> Result<bool, sqlx::Error> {
    let Some(mut gate) = db.write_lock().await else {
        return Ok(true);
    };
    let conn = gate.conn();
    let (busy, _, _): (i64, i64, i64) = crate::store::sqlite::blocking(|| {
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
    })
    .map_err(crate::store::sqlite::db_err)?;
    Ok(busy == 0)
}

/// Deletes up to `limit` change-feed entries committed before `cutoff_ms` that
/// every consumer has already handled (its checkpoint is at or past them); returns
/// how many. Entries a consumer still needs stay, however old: a consumer that
/// stopped for a week resumes without a gap. A consumer removed for good should
/// have its row deleted from `feed_checkpoints`, or it holds the feed forever.
pub async fn prune_feed(db: &Database, cutoff_ms: i64, limit: i64) -> Result<u64, sqlx::Error> {
    let (oldest, newest): (i64, i64) = crate::store::db::on_pool!(db, |p| sqlx::query_as(
        "SELECT COALESCE(MIN(seq), 0), COALESCE(MAX(seq), 0) FROM change_feed"
    )
    .fetch_one(p)
    .await)?;
    let checkpoint: i64 = crate::store::db::on_pool!(db, |p| sqlx::query_scalar::<_, i64>(
        "SELECT COALESCE(MIN(seq), 0) FROM feed_checkpoints"
    )
    .fetch_one(p)
    .await)?;
    // A bounded seq range from the oldest entry: the delete never scans the
    // whole feed, however long it is. The newest entry always stays: it is the
    // feed's head, which realtime clients resume against.
    let upper = checkpoint.min(oldest + limit - 1).min(newest - 1);
    if oldest == 0 || upper < oldest {
        return Ok(0);
    }
    let _gate = db.background_write_lock().await;
    crate::store::db::on_pool!(db, |p| sqlx::query(
        "DELETE FROM change_feed WHERE seq >= $1 AND seq <= $2 AND committed_at < $3"
    )
    .bind(oldest)
    .bind(upper)
    .bind(cutoff_ms)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))
}

/// The oldest change-feed entry still kept (0 when the feed is empty).
pub async fn oldest_feed_seq(db: &Database) -> Result<i64, sqlx::Error> {
    crate::store::db::on_pool!(db, |p| sqlx::query_scalar::<_, i64>(
        "SELECT COALESCE(MIN(seq), 0) FROM change_feed"
    )
    .fetch_one(p)
    .await)
}

/// How often [`keep_statistics_fresh`] looks at the tables.
const STATS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// PostgreSQL plans statements from table statistics, and autovacuum refreshes
/// them about once a minute: a service (or a replay) starting on empty tables
/// runs its first minute on plans made for empty tables, which scan whole tables
/// (measured: a replay of 100k events went from 1,600 to 3,500 events/s with
/// fresh statistics). Every few seconds this analyzes the tables that have
/// changed as many rows as they hold (a table that grew from empty, or doubled),
/// so it costs nothing once the tables are large. Runs until `cancel`.
pub async fn keep_statistics_fresh(
    pool: sqlx::PgPool,
    cancel: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(STATS_EVERY) => {}
            _ = cancel.cancelled() => return,
        }
        if let Err(e) = analyze_grown_tables(&pool).await {
            tracing::debug!(error = %e, "refreshing planner statistics failed");
        }
    }
}

/// Analyzes this schema's tables that changed as many rows as they hold since their
/// last analyze; returns their names.
pub async fn analyze_grown_tables(pool: &sqlx::PgPool) -> Result<Vec<String>, sqlx::Error> {
    let grown: Vec<String> = sqlx::query_scalar(
        "SELECT relname::text FROM pg_stat_user_tables \
         WHERE schemaname = current_schema() AND n_mod_since_analyze >= GREATEST(500, n_live_tup) \
         ORDER BY relname",
    )
    .fetch_all(pool)
    .await?;
    for t in &grown {
        // Names come from the catalog; quoted all the same.
        sqlx::query(&format!("ANALYZE \"{}\"", t.replace('"', "\"\"")))
            .execute(pool)
            .await?;
    }
    Ok(grown)
}
