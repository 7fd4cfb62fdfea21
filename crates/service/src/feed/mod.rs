//! Change-feed consumers: everything that happens *after* a commit.
//!
//! Owns: reading the committed change feed in order, in batches, from each
//! consumer's durable checkpoint, and handing batches to consumers (cache,
//! search, realtime). Delivery to a consumer is at-least-once: a crash between
//! handling a batch and saving the checkpoint hands the batch over again, so
//! consumers are idempotent (they re-read the store or upsert by id). Must never:
//! read an uncommitted change (the feed is written in the apply transaction), or
//! advance a checkpoint past a batch its consumer has not handled.

use crate::store::{Database, StoreError};
use async_trait::async_trait;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub mod cache;
pub mod waiters;

pub use crate::store::feed::{FeedEntry, FeedFilter};

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("database error: {0}")]
    Db(#[from] StoreError),
    #[error("{0}")]
    Consumer(String),
}

/// Reads feed entries after `after`, oldest first.
pub async fn read_after(
    db: &Database,
    after: i64,
    limit: i64,
) -> Result<Vec<FeedEntry>, StoreError> {
    read_filtered(db, FeedFilter::All, after, limit).await
}

/// Reads the feed entries of `filter` after `after`, oldest first.
pub async fn read_filtered(
    db: &Database,
    filter: FeedFilter<'_>,
    after: i64,
    limit: i64,
) -> Result<Vec<FeedEntry>, StoreError> {
    db.read_feed(filter, after, limit).await
}

/// How many of `filter`'s entries follow `after`, counting no further than
/// `cap` (so the answer costs at most `cap` index entries).
pub async fn count_filtered(
    db: &Database,
    filter: FeedFilter<'_>,
    after: i64,
    cap: i64,
) -> Result<i64, StoreError> {
    db.count_feed(filter, after, cap).await
}

/// The newest entry's seq (0 when the feed is empty).
pub async fn last_seq(db: &Database) -> Result<i64, StoreError> {
    db.last_feed_seq().await
}

/// A consumer's checkpoint (0 for a consumer never seen).
pub async fn load_checkpoint(db: &Database, consumer: &str) -> Result<i64, StoreError> {
    Ok(db.load_checkpoint(consumer).await?.unwrap_or(0))
}

/// Loads a consumer's checkpoint, first creating it at 0 for a consumer never
/// seen: from then on the feed is not pruned past what it has read.
async fn register(db: &Database, consumer: &str, now: i64) -> Result<i64, StoreError> {
    db.register_consumer(consumer, now).await?;
    load_checkpoint(db, consumer).await
}

/// Saves a consumer's checkpoint (durably: a restart resumes after it).
pub async fn save_checkpoint(
    db: &Database,
    consumer: &str,
    seq: i64,
    now: i64,
) -> Result<(), StoreError> {
    db.save_checkpoint(consumer, seq, now).await
}

/// Longest a handled position stays unsaved while the feed keeps moving.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Something that reacts to committed changes.
#[async_trait]
pub trait FeedConsumer: Send + Sync {
    /// Stable name: the checkpoint's key.
    fn name(&self) -> &'static str;
    /// Handles a batch; an error means "hand me this batch again later".
    async fn handle(&self, batch: &[FeedEntry]) -> Result<(), FeedError>;
}

/// Runs one consumer until `cancel`: batches of up to `batch` entries, woken by
/// apply commits (`applied`), with a slow poll as the fallback.
pub async fn run_consumer(
    db: Database,
    consumer: Arc<dyn FeedConsumer>,
    mut applied: watch::Receiver<u64>,
    lag: prometheus_client::metrics::gauge::Gauge,
    clock: Arc<dyn crate::clock::Clock>,
    batch: i64,
    cancel: CancellationToken,
) {
    let name = consumer.name();
    let mut cp = loop {
        match register(&db, name, clock.now_ms()).await {
            Ok(cp) => break cp,
            Err(e) => {
                tracing::warn!(consumer = name, error = %e, "loading feed checkpoint failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = cancel.cancelled() => return,
                }
            }
        }
    };
    let mut failures = 0u32;
    // Position handled (`cp`) and position saved: saving is one more turn at
    // SQLite's write lock per batch, so it is done at most every CHECKPOINT_EVERY
    // and whenever the feed goes quiet. A crash hands the unsaved batches over
    // again; consumers are idempotent.
    let mut saved = cp;
    let mut last_save = Instant::now();
    while !cancel.is_cancelled() {
        applied.borrow_and_update();
        let entries = match read_after(&db, cp, batch).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(consumer = name, error = %e, "reading the change feed failed");
                Vec::new()
            }
        };
        if entries.is_empty() {
            lag.set(0);
            let quiet_for = if saved < cp {
                CHECKPOINT_EVERY.saturating_sub(last_save.elapsed())
            } else {
                Duration::from_secs(1)
            };
            tokio::select! {
                _ = applied.changed() => {}
                _ = tokio::time::sleep(quiet_for) => {
                    if saved < cp && save_checkpoint(&db, name, cp, clock.now_ms()).await.is_ok() {
                        saved = cp;
                        last_save = Instant::now();
                    }
                }
                _ = cancel.cancelled() => break,
            }
            continue;
        }
        // A short batch reached the head; only a full one needs the head's position.
        if entries.len() as i64 >= batch {
            if let Ok(head) = last_seq(&db).await {
                lag.set(head.saturating_sub(cp).max(0));
            }
        }
        let last = entries.last().map(|e| e.seq).unwrap_or(cp);
        match consumer.handle(&entries).await {
            Ok(()) => {
                failures = 0;
                cp = last;
                if last_save.elapsed() >= CHECKPOINT_EVERY {
                    match save_checkpoint(&db, name, cp, clock.now_ms()).await {
                        Ok(()) => saved = cp,
                        // Saved again with a later batch or when the feed goes quiet.
                        Err(e) => {
                            tracing::warn!(consumer = name, error = %e, "saving feed checkpoint failed")
                        }
                    }
                    last_save = Instant::now();
                }
            }
            Err(e) => {
                failures += 1;
                let wait = Duration::from_millis(100u64 << failures.min(8));
                tracing::warn!(consumer = name, error = %e, retry_in_ms = wait.as_millis() as u64, "feed consumer failed");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = cancel.cancelled() => break,
                }
            }
        }
    }
    // Shutting down: keep what was handled, so a restart does not redo it.
    if saved < cp {
        if let Err(e) = save_checkpoint(&db, name, cp, clock.now_ms()).await {
            tracing::warn!(consumer = name, error = %e, "saving feed checkpoint at shutdown failed");
        }
    }
}
