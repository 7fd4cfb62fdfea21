//! Retention: purging expired archive rows and erasing deleted users' data;
//! keeping PostgreSQL's planner statistics fresh while tables grow.

use crate::store::db::Database;
use crate::sync::erasure::{redact_body, redact_changes};

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PurgeReport {
    pub archive_rows: u64,
    pub users_erased: u64,
}

macro_rules! purge_impl {
    ($pool:expr, $cutoff:expr) => {{
        let pool = $pool;
        let mut report = PurgeReport::default();
        let mut tx = pool.begin().await?;
        let expired: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT seq, kind, entity_id FROM archive WHERE archived_at < $1 ORDER BY seq LIMIT 1000",
        )
        .bind($cutoff)
        .fetch_all(&mut *tx)
        .await?;
        for (seq, kind, entity_id) in expired {
            if kind == "user" {
                let uid = entity_id.as_str();
                let audits: Vec<(i64, String)> =
                    sqlx::query_as("SELECT seq, changes FROM audit WHERE user_id = $1")
                        .bind(uid)
                        .fetch_all(&mut *tx)
                        .await?;
                for (aseq, changes) in audits {
                    sqlx::query("UPDATE audit SET changes = $2 WHERE seq = $1")
                        .bind(aseq)
                        .bind(redact_changes(&changes))
                        .execute(&mut *tx)
                        .await?;
                }
                let bodies: Vec<(i64, String)> = sqlx::query_as(
                    "SELECT seq, body FROM inbox JOIN inbox_bodies USING (seq) WHERE entity_key = $1 \
                     OR (event_type LIKE 'organizationMembership.%' AND body LIKE '%' || $1 || '%')",
                )
                .bind(uid)
                .fetch_all(&mut *tx)
                .await?;
                for (iseq, body) in bodies {
                    sqlx::query("UPDATE inbox_bodies SET body = $2 WHERE seq = $1")
                        .bind(iseq)
                        .bind(redact_body(&body))
                        .execute(&mut *tx)
                        .await?;
                }
                for t in ["sessions", "emails", "sms_messages", "memberships"] {
                    sqlx::query(&format!("UPDATE {t} SET data = NULL WHERE user_id = $1 AND deleted = $2"))
                        .bind(uid)
                        .bind(true)
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

/// Purges archive rows older than `cutoff_ms` (at most 1000 per call) and erases
/// the personal data of the deleted users among them.
pub async fn purge_expired(db: &Database, cutoff_ms: i64) -> Result<PurgeReport, sqlx::Error> {
    let _gate = db.write_lock().await;
    match db {
        Database::Sqlite(p, ..) => purge_impl!(p, cutoff_ms),
        Database::Postgres(p) => purge_impl!(p, cutoff_ms),
    }
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
