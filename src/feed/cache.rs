//! The read cache: entities (and, with group invalidation, their lists) in front
//! of the store.
//!
//! Never stale after an invalidation: every invalidation takes a fresh number
//! from one counter and leaves it in the slot; a reader notes the counter before
//! its store read and may fill the slot only if no invalidation came after that
//! note. So a read that raced a commit cannot put the older record back.
//! Must never: be the source of truth (a miss always falls back to the store),
//! or hold a lock across a store read.

use crate::clerk::model::Kind;
use crate::feed::{FeedConsumer, FeedEntry, FeedError};
use crate::store::db::Database;
use crate::store::read;
use crate::store::tx::EntityRow;
use async_trait::async_trait;
use moka::ops::compute::Op;
use prometheus_client::metrics::counter::Counter;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::broadcast;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// The processor refreshes the cache after each commit, before the change
    /// counts as processed (read-your-writes).
    WriteThrough,
    /// The feed consumer refreshes it asynchronously, in batches.
    WriteBehind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalidation {
    /// Only the changed entities' own keys.
    Precise,
    /// Also the lists that contain them (an organization's members, a user's organizations).
    Group,
}

/// What a cached key holds.
#[derive(Debug, Clone)]
pub enum Cached {
    Row(Arc<EntityRow>),
    Rows(Arc<Vec<EntityRow>>),
}

#[derive(Clone)]
struct Slot {
    /// The counter value of the last invalidation (0: filled by a reader, never invalidated).
    gen: u64,
    value: Option<Cached>,
}

pub fn entity_key(kind: Kind, id: &str) -> String {
    format!("{}:{id}", kind.as_str())
}
pub fn org_members_key(org: &str) -> String {
    format!("organization:{org}:memberships")
}
pub fn user_orgs_key(user: &str) -> String {
    format!("user:{user}:organizations")
}

pub struct EntityCache {
    slots: moka::future::Cache<String, Slot>,
    counter: AtomicU64,
    pub strategy: Strategy,
    pub invalidation: Invalidation,
    pub hits: Counter,
    pub misses: Counter,
    /// `on_invalidate`: every invalidated key, for application caches to drop theirs.
    pub invalidations: broadcast::Sender<String>,
}

impl EntityCache {
    pub fn new(max_entries: u64, strategy: Strategy, invalidation: Invalidation) -> Self {
        Self {
            slots: moka::future::Cache::new(max_entries),
            counter: AtomicU64::new(1),
            strategy,
            invalidation,
            hits: Counter::default(),
            misses: Counter::default(),
            invalidations: broadcast::channel(1024).0,
        }
    }

    /// Note the counter before reading the store; pass it to [`Self::fill`].
    pub fn stamp(&self) -> u64 {
        self.counter.load(Ordering::SeqCst)
    }

    pub async fn get(&self, key: &str) -> Option<Cached> {
        let v = self.slots.get(key).await.and_then(|s| s.value);
        if v.is_some() {
            self.hits.inc();
        } else {
            self.misses.inc();
        }
        v
    }

    /// Stores what a reader read, unless an invalidation came after `stamp`.
    pub async fn fill(&self, key: &str, value: Cached, stamp: u64) {
        self.slots
            .entry(key.to_string())
            .and_compute_with(|cur| {
                let fresh = cur.as_ref().is_none_or(|s| s.value().gen <= stamp);
                std::future::ready(if fresh {
                    Op::Put(Slot {
                        gen: 0,
                        value: Some(value),
                    })
                } else {
                    Op::Nop
                })
            })
            .await;
    }

    /// Drops a key; readers that started before this cannot fill it.
    pub async fn invalidate(&self, key: &str) {
        let gen = self.counter.fetch_add(1, Ordering::SeqCst) + 1;
        self.slots
            .insert(key.to_string(), Slot { gen, value: None })
            .await;
        let _ = self.invalidations.send(key.to_string());
    }

    /// The keys a change touches under this cache's invalidation pattern.
    pub async fn keys_for(&self, db: &Database, kind: Kind, id: &str) -> Vec<String> {
        let mut keys = vec![entity_key(kind, id)];
        if self.invalidation == Invalidation::Group {
            match kind {
                Kind::Membership => {
                    if let Ok(Some(m)) = read::get(db, Kind::Membership, id).await {
                        keys.extend(m.organization_id.as_deref().map(org_members_key));
                        keys.extend(m.user_id.as_deref().map(user_orgs_key));
                    }
                }
                Kind::Organization => {
                    keys.push(org_members_key(id));
                    // The organization's name shows in each member's organization list.
                    let members = read::list_live(
                        db,
                        Kind::Membership,
                        Some((crate::store::tx::RefCol::OrganizationId, id)),
                        None,
                        10_000,
                    )
                    .await
                    .unwrap_or_default();
                    keys.extend(
                        members
                            .iter()
                            .filter_map(|m| m.user_id.as_deref())
                            .map(user_orgs_key),
                    );
                }
                Kind::User => keys.push(user_orgs_key(id)),
                _ => {}
            }
        }
        keys
    }

    /// Invalidates what the changes touched.
    pub async fn apply_changes(&self, db: &Database, changes: &[(Kind, String)]) {
        for (kind, id) in changes {
            for key in self.keys_for(db, *kind, id).await {
                self.invalidate(&key).await;
            }
        }
    }

    pub fn entry_count(&self) -> u64 {
        self.slots.entry_count()
    }
}

/// The cache's feed consumer: in write-behind mode the only updater; in
/// write-through mode a safety net that catches up after a crash.
pub struct CacheConsumer {
    pub cache: Arc<EntityCache>,
    pub db: Database,
    pub staleness_ms: prometheus_client::metrics::gauge::Gauge,
    pub clock: Arc<dyn crate::clock::Clock>,
}

#[async_trait]
impl FeedConsumer for CacheConsumer {
    fn name(&self) -> &'static str {
        "cache"
    }

    async fn handle(&self, batch: &[FeedEntry]) -> Result<(), FeedError> {
        let changes: Vec<(Kind, String)> = batch
            .iter()
            .map(|e| (e.kind, e.entity_id.clone()))
            .collect();
        self.cache.apply_changes(&self.db, &changes).await;
        if let Some(last) = batch.last() {
            self.staleness_ms
                .set((self.clock.now_ms() - last.committed_at).max(0));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(v: i64) -> Cached {
        Cached::Row(Arc::new(EntityRow {
            id: "user_1".into(),
            version: v,
            version_key: String::new(),
            deleted: false,
            user_id: None,
            organization_id: None,
            data: None,
            synced_at: 0,
        }))
    }

    fn version(c: Option<Cached>) -> Option<i64> {
        match c {
            Some(Cached::Row(r)) => Some(r.version),
            _ => None,
        }
    }

    #[tokio::test]
    async fn a_read_that_raced_an_invalidation_cannot_fill_the_old_record() {
        let c = EntityCache::new(100, Strategy::WriteThrough, Invalidation::Precise);
        // Reader: stamp, then reads v1 from the store...
        let stamp = c.stamp();
        // ...meanwhile v2 commits and is invalidated...
        c.invalidate("user:user_1").await;
        // ...then the reader tries to fill with v1: refused.
        c.fill("user:user_1", row(1), stamp).await;
        assert_eq!(version(c.get("user:user_1").await), None);
        // A reader that started after the invalidation fills normally.
        let stamp = c.stamp();
        c.fill("user:user_1", row(2), stamp).await;
        assert_eq!(version(c.get("user:user_1").await), Some(2));
    }

    #[tokio::test]
    async fn invalidations_are_published() {
        let c = EntityCache::new(100, Strategy::WriteBehind, Invalidation::Precise);
        let mut rx = c.invalidations.subscribe();
        c.invalidate("organization:org_1").await;
        assert_eq!(rx.recv().await.unwrap(), "organization:org_1");
    }
}
