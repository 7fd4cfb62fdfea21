//! Change-feed consumers: everything that happens *after* a commit.
//!
//! Owns: reading the committed change feed in order, in batches, from each
//! consumer's durable checkpoint, and handing batches to consumers (cache,
//! search, realtime). Delivery to a consumer is at-least-once: a crash between
//! handling a batch and saving the checkpoint hands the batch over again, so
//! consumers are idempotent (they re-read the store or upsert by id). Must never:
//! read an uncommitted change (the feed is written in the apply transaction), or
//! advance a checkpoint past a batch its consumer has not handled.

use crate::clerk::model::Kind;
use crate::store::db::{on_pool, Database};
use async_trait::async_trait;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub mod cache;
pub mod realtime;
pub mod search;
pub mod waiters;

/// One committed change.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FeedEntry {
    pub seq: i64,
    pub kind: Kind,
    pub entity_id: String,
    pub operation: String,
    pub changed_fields: Vec<String>,
    pub version: i64,
    pub svix_id: String,
    pub committed_at: i64,
    /// The user and organization whose topics the change is on (set by the
    /// apply for users, organizations and memberships).
    pub user_id: Option<String>,
    pub organization_id: Option<String>,
}

#[derive(sqlx::FromRow)]
struct FeedRow {
    seq: i64,
    kind: String,
    entity_id: String,
    operation: String,
    changed_fields: String,
    version: i64,
    svix_id: String,
    committed_at: i64,
    user_id: Option<String>,
    organization_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{0}")]
    Consumer(String),
}

/// Which rows of the feed to read: all, or one user's or organization's
/// (indexed, for a realtime replay of one topic).
#[derive(Debug, Clone, Copy)]
pub enum FeedFilter<'a> {
    All,
    User(&'a str),
    Organization(&'a str),
}

/// Reads feed entries after `after`, oldest first.
pub async fn read_after(
    db: &Database,
    after: i64,
    limit: i64,
) -> Result<Vec<FeedEntry>, sqlx::Error> {
    read_filtered(db, FeedFilter::All, after, limit).await
}

/// Reads the feed entries of `filter` after `after`, oldest first.
pub async fn read_filtered(
    db: &Database,
    filter: FeedFilter<'_>,
    after: i64,
    limit: i64,
) -> Result<Vec<FeedEntry>, sqlx::Error> {
    // Parameters numbered in order of appearance: SQLite binds `$N` by position.
    let (q, key) = match filter {
        FeedFilter::All => (
            "SELECT seq, kind, entity_id, operation, changed_fields, version, svix_id, committed_at, user_id, organization_id \
             FROM change_feed WHERE seq > $1 ORDER BY seq LIMIT $2",
            None,
        ),
        FeedFilter::User(u) => (
            "SELECT seq, kind, entity_id, operation, changed_fields, version, svix_id, committed_at, user_id, organization_id \
             FROM change_feed WHERE user_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            Some(u),
        ),
        FeedFilter::Organization(o) => (
            "SELECT seq, kind, entity_id, operation, changed_fields, version, svix_id, committed_at, user_id, organization_id \
             FROM change_feed WHERE organization_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            Some(o),
        ),
    };
    let rows: Vec<FeedRow> = match db {
        // Every consumer reads every row: through sqlx each row crossed threads.
        Database::Sqlite(_, gate) => gate.read(|c| {
            let mut stmt = c.prepare_cached(q)?;
            let map = |r: &rusqlite::Row<'_>| {
                Ok(FeedRow {
                    seq: r.get(0)?,
                    kind: r.get(1)?,
                    entity_id: r.get(2)?,
                    operation: r.get(3)?,
                    changed_fields: r.get(4)?,
                    version: r.get(5)?,
                    svix_id: r.get(6)?,
                    committed_at: r.get(7)?,
                    user_id: r.get(8)?,
                    organization_id: r.get(9)?,
                })
            };
            match key {
                None => stmt
                    .query_map(rusqlite::params![after, limit], map)?
                    .collect(),
                Some(k) => stmt
                    .query_map(rusqlite::params![k, after, limit], map)?
                    .collect(),
            }
        })?,
        Database::Postgres(p) => {
            let q = sqlx::query_as(q);
            let q = match key {
                None => q,
                Some(k) => q.bind(k),
            };
            q.bind(after).bind(limit).fetch_all(p).await?
        }
    };
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            Some(FeedEntry {
                seq: r.seq,
                kind: Kind::parse(&r.kind)?,
                entity_id: r.entity_id,
                operation: r.operation,
                changed_fields: serde_json::from_str(&r.changed_fields).unwrap_or_default(),
                version: r.version,
                svix_id: r.svix_id,
                committed_at: r.committed_at,
                user_id: r.user_id,
                organization_id: r.organization_id,
            })
        })
        .collect())
}

/// How many of `filter`'s entries follow `after`, counting no further than
/// `cap` (so the answer costs at most `cap` index entries).
pub async fn count_filtered(
    db: &Database,
    filter: FeedFilter<'_>,
    after: i64,
    cap: i64,
) -> Result<i64, sqlx::Error> {
    let (q, key) = match filter {
        FeedFilter::All => (
            "SELECT COUNT(*) FROM (SELECT 1 FROM change_feed WHERE seq > $1 LIMIT $2) t",
            None,
        ),
        FeedFilter::User(u) => (
            "SELECT COUNT(*) FROM (SELECT 1 FROM change_feed WHERE user_id = $1 AND seq > $2 LIMIT $3) t",
            Some(u),
        ),
        FeedFilter::Organization(o) => (
            "SELECT COUNT(*) FROM (SELECT 1 FROM change_feed WHERE organization_id = $1 AND seq > $2 LIMIT $3) t",
            Some(o),
        ),
    };
    on_pool!(db, |p| {
        let q = sqlx::query_scalar::<_, i64>(q);
        let q = match key {
            None => q,
            Some(k) => q.bind(k),
        };
        q.bind(after).bind(cap).fetch_one(p).await
    })
}

pub async fn last_seq(db: &Database) -> Result<i64, sqlx::Error> {
    on_pool!(db, |p| sqlx::query_scalar::<_, Option<i64>>(
        "SELECT MAX(seq) FROM change_feed"
    )
    .fetch_one(p)
    .await)
    .map(|v| v.unwrap_or(0))
}

pub async fn load_checkpoint(db: &Database, consumer: &str) -> Result<i64, sqlx::Error> {
    on_pool!(db, |p| sqlx::query_scalar::<_, i64>(
        "SELECT seq FROM feed_checkpoints WHERE consumer = $1"
    )
    .bind(consumer)
    .fetch_optional(p)
    .await)
    .map(|v| v.unwrap_or(0))
}

/// Loads a consumer's checkpoint, first creating it at 0 for a consumer never
/// seen: from then on the feed is not pruned past what it has read.
async fn register(db: &Database, consumer: &str, now: i64) -> Result<i64, sqlx::Error> {
    {
        let _gate = db.write_lock().await;
        on_pool!(db, |p| sqlx::query(
            "INSERT INTO feed_checkpoints (consumer, seq, updated_at) VALUES ($1, 0, $2) \
             ON CONFLICT (consumer) DO NOTHING"
        )
        .bind(consumer)
        .bind(now)
        .execute(p)
        .await
        .map(|_| ()))?;
    }
    load_checkpoint(db, consumer).await
}

pub async fn save_checkpoint(
    db: &Database,
    consumer: &str,
    seq: i64,
    now: i64,
) -> Result<(), sqlx::Error> {
    let _gate = db.write_lock().await;
    on_pool!(db, |p| sqlx::query(
        "INSERT INTO feed_checkpoints (consumer, seq, updated_at) VALUES ($1, $2, $3) \
         ON CONFLICT (consumer) DO UPDATE SET seq = excluded.seq, updated_at = excluded.updated_at"
    )
    .bind(consumer)
    .bind(seq)
    .bind(now)
    .execute(p)
    .await
    .map(|_| ()))
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
