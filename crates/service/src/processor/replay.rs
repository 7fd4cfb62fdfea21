//! Replay: rebuilding a store from the stored event log.
//!
//! `into`: copies every delivery (but discarded ones) into an empty database
//! and applies them all there — the way back from a bad migration or a
//! corrupted table. `since`: re-applies deliveries received from a time onwards
//! on top of the current store (already-applied changes are no-ops under the
//! convergence rules). Must never: write into a target that already holds data.

use crate::clock::Clock;
use crate::processor::{DrainReport, Processor, ProcessorConfig};
use crate::queue::{append_batch, NewDelivery};
use crate::store::db::{on_pool, Database};
use crate::telemetry::metrics::Metrics;
use std::sync::Arc;
use tokio::sync::{watch, Notify};

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("the target database already holds {0} deliveries; replay needs an empty one")]
    TargetNotEmpty(i64),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

fn processor(db: Database, clock: Arc<dyn Clock>, config: ProcessorConfig) -> Processor {
    Processor {
        db,
        clock,
        metrics: Arc::new(Metrics::new()),
        config,
        wake: Arc::new(Notify::new()),
        applied: watch::channel(0).0,
        observer: None,
        cache: None,
        waiters: None,
    }
}

#[derive(sqlx::FromRow)]
struct LogRow {
    seq: i64,
    svix_id: String,
    event_type: String,
    entity_key: Option<String>,
    object_id: Option<String>,
    svix_timestamp: i64,
    event_timestamp: Option<i64>,
    received_at: i64,
    body: String,
}

/// Copies the log of `source` into the empty `target` and applies it there.
pub async fn replay_into(
    source: &Database,
    target: Database,
    clock: Arc<dyn Clock>,
    config: ProcessorConfig,
    progress: bool,
) -> Result<(u64, DrainReport), ReplayError> {
    let existing: i64 = on_pool!(&target, |p| sqlx::query_scalar(
        "SELECT COUNT(*) FROM inbox"
    )
    .fetch_one(p)
    .await)?;
    if existing > 0 {
        return Err(ReplayError::TargetNotEmpty(existing));
    }
    let mut after = 0i64;
    let mut copied = 0u64;
    loop {
        let rows: Vec<LogRow> = on_pool!(source, |p| {
            sqlx::query_as(
            "SELECT seq, svix_id, event_type, entity_key, object_id, svix_timestamp, event_timestamp, \
             received_at, COALESCE(body, '') AS body FROM inbox LEFT JOIN inbox_bodies USING (seq) \
             WHERE seq > $1 AND status <> 'discarded' ORDER BY seq LIMIT 2000"
        )
        .bind(after)
        .fetch_all(p)
        .await
        })?;
        let Some(last) = rows.last() else { break };
        after = last.seq;
        let batch: Vec<NewDelivery> = rows
            .into_iter()
            .map(|r| {
                // The source may predate the subject columns: read them again.
                let head = crate::clerk::envelope::parse_head(r.body.as_bytes()).ok();
                let (user_id, contacts) =
                    head.map_or((None, Vec::new()), |h| (h.user_id, h.contacts));
                NewDelivery {
                    svix_id: r.svix_id,
                    svix_timestamp: r.svix_timestamp,
                    event_type: r.event_type,
                    entity_key: r.entity_key,
                    object_id: r.object_id,
                    event_timestamp_ms: r.event_timestamp,
                    received_at_ms: r.received_at,
                    body: r.body,
                    user_id,
                    contacts,
                }
            })
            .collect();
        copied += batch.len() as u64;
        append_batch(&target, &batch).await?;
    }
    if progress {
        eprintln!("replay: copied {copied} deliveries; applying");
    }
    // The copied log is a table full of rows the statistics do not know about
    // yet; the store's tables grow from empty (see keep_statistics_fresh).
    let stats = tokio_util::sync::CancellationToken::new();
    if let Database::Postgres(p) = &target {
        crate::store::maintenance::analyze_grown_tables(p).await?;
        // The worker pool (max_concurrent > 1) runs its own.
        if config.max_concurrent <= 1 {
            tokio::spawn(crate::store::maintenance::keep_statistics_fresh(
                p.clone(),
                stats.clone(),
            ));
        }
    }
    let report = apply_everything(processor(target, clock, config), progress).await;
    stats.cancel();
    Ok((copied, report?))
}

/// Re-queues deliveries received at or after `since_ms` and applies them.
pub async fn replay_since(
    db: Database,
    since_ms: i64,
    clock: Arc<dyn Clock>,
    config: ProcessorConfig,
    progress: bool,
) -> Result<(u64, DrainReport), ReplayError> {
    let gate = db.write_lock().await;
    let queued = on_pool!(&db, |p| sqlx::query(
        "UPDATE inbox SET status = 'pending', next_attempt_at = 0, leased_until = NULL \
         WHERE received_at >= $1 AND status = 'done'"
    )
    .bind(since_ms)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))?;
    drop(gate);
    let report = apply_everything(processor(db, clock, config), progress).await?;
    Ok((queued, report))
}

/// Applies every due event: with one worker in arrival order (`drain`), or with
/// the parallel pool when `max_concurrent` > 1, stopping once nothing is pending.
/// The second form is also how the processor's scaling is measured.
async fn apply_everything(p: Processor, progress: bool) -> Result<DrainReport, sqlx::Error> {
    if p.config.max_concurrent <= 1 {
        return p.drain(progress).await;
    }
    let started = std::time::Instant::now();
    let before = crate::store::inbox_counts(&p.db).await?;
    let cancel = tokio_util::sync::CancellationToken::new();
    let db = p.db.clone();
    let run = tokio::spawn(p.run(cancel.clone()));
    let mut last_report = started;
    let counts = loop {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        // An index lookup; counting every status scans the whole inbox.
        if !anything_due(&db).await? {
            break crate::store::inbox_counts(&db).await?;
        }
        if progress && last_report.elapsed() >= std::time::Duration::from_secs(3) {
            last_report = std::time::Instant::now();
            let c = crate::store::inbox_counts(&db).await?;
            let done = c.processed - before.processed;
            eprintln!(
                "replay: {done} applied, {} pending, {:.0} events/s",
                c.pending,
                done as f64 / started.elapsed().as_secs_f64()
            );
        }
    };
    let elapsed = started.elapsed();
    cancel.cancel();
    let _ = run.await;
    Ok(DrainReport {
        applied: (counts.processed - before.processed).max(0) as u64,
        failed: (counts.dead - before.dead).max(0) as u64,
        elapsed,
    })
}

/// Is any delivery pending or waiting for a retry?
async fn anything_due(db: &Database) -> Result<bool, sqlx::Error> {
    on_pool!(db, |p| sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM inbox WHERE status IN ('pending', 'failed'))"
    )
    .fetch_one(p)
    .await)
}
