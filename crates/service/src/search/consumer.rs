//! The "search" feed consumer, and the offline `clerksync reindex`.
//!
//! Owns: reconciling the consumer's checkpoint with the index at start-up,
//! following the change feed, and rebuilding an index directory with the
//! server down. Must never: save a checkpoint ahead of what the index
//! committed (the batch is handled, committed, then checkpointed by
//! [`crate::feed::run_consumer`]). See ARCHITECTURE.md.

use super::index::{IndexOptions, RebuildReport, Reconciled, SearchError, SearchIndex};
use crate::feed::{self, FeedConsumer, FeedEntry, FeedError};
use crate::store::db::Database;
use async_trait::async_trait;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The consumer's name: the key of its checkpoint in `feed_checkpoints`.
pub const CONSUMER: &str = "search";

/// `clerksync reindex` without `--url`: rebuilds the index directory with its
/// own writer (so the server must be down: the directory admits one writer,
/// and [`SearchError::Locked`] says so). The consumer's checkpoint is left as
/// it is: the rebuilt index is at least as new, and what the consumer replays
/// from its checkpoint is idempotent. `say` gets progress lines about once a second.
pub async fn reindex_offline(
    db: &Database,
    dir: &Path,
    mut say: impl FnMut(String) + Send,
) -> Result<RebuildReport, SearchError> {
    let index = SearchIndex::open(
        Some(dir),
        IndexOptions {
            // Offline, the machine is ours: both cores and a bigger buffer.
            writer_threads: 2,
            writer_memory_bytes: 256 << 20,
            ..IndexOptions::default()
        },
    )?;
    say(format!("rebuilding the search index at {}", dir.display()));
    let ticket = index.claim_rebuild()?;
    let started = Instant::now();
    let mut last_said = Instant::now();
    let report = index
        .rebuild(ticket, db, |n| {
            if last_said.elapsed() >= Duration::from_secs(1) {
                last_said = Instant::now();
                let rate = n as f64 / started.elapsed().as_secs_f64().max(1e-3);
                say(format!("  indexed {n} documents ({rate:.0}/s)"));
            }
        })
        .await?;
    say(format!(
        "reindexed {} users and {} organizations in {:.1}s; consistent with change feed position {}",
        report.users, report.organizations, report.seconds, report.seq
    ));
    Ok(report)
}

/// The search index's feed consumer.
pub struct SearchConsumer {
    pub index: Arc<SearchIndex>,
    pub db: Database,
}

#[async_trait]
impl FeedConsumer for SearchConsumer {
    fn name(&self) -> &'static str {
        CONSUMER
    }

    async fn handle(&self, batch: &[FeedEntry]) -> Result<(), FeedError> {
        self.index
            .apply_feed(&self.db, batch)
            .await
            .map_err(|e| FeedError::Consumer(e.to_string()))
    }
}

/// The search consumer's task: reconcile the checkpoint with the index (which
/// may rebuild it), then follow the feed until `cancel`.
pub async fn run(
    index: Arc<SearchIndex>,
    db: Database,
    applied: tokio::sync::watch::Receiver<u64>,
    lag: prometheus_client::metrics::gauge::Gauge,
    clock: Arc<dyn crate::clock::Clock>,
    cancel: tokio_util::sync::CancellationToken,
) {
    loop {
        let r = tokio::select! {
            r = index.reconcile(&db, clock.now_ms()) => r,
            _ = cancel.cancelled() => return,
        };
        match r {
            Ok(Reconciled::UpToDate) => break,
            Ok(r) => {
                tracing::info!(index = index.location(), outcome = ?r, "search index reconciled with the change feed");
                break;
            }
            Err(e) => {
                tracing::warn!(index = index.location(), error = %e, "search index start-up failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = cancel.cancelled() => return,
                }
            }
        }
    }
    let consumer = Arc::new(SearchConsumer {
        index,
        db: db.clone(),
    });
    feed::run_consumer(db, consumer, applied, lag, clock, 500, cancel).await
}
