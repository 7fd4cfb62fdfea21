//! The read cache: entities (and, with group invalidation, their lists) in front
//! of the store. Two backends: in-process moka (one node), or a shared Redis with
//! a small moka layer on each node (`redis.rs` explains that protocol).
//!
//! Never stale after an invalidation: every invalidation takes a fresh number
//! from one counter and records it against its key; a reader notes the counter
//! (its stamp) before its store read and may fill the key only if no
//! invalidation of that key came after the stamp. So a read that raced a commit
//! cannot put the older record back. The record of recent invalidations is kept
//! apart from the moka entries on purpose: moka may evict (or refuse to admit)
//! any entry, and a lost marker would let a raced reader fill the old record.
//! That record is bounded; what falls out raises a floor below which every
//! stamp is refused.
//! Must never: be the source of truth (a miss always falls back to the store),
//! hold a lock across a store read or a network call, or answer from a layer it
//! cannot prove coherent (on any Redis error a read goes to the store).

use crate::clerk::model::Kind;
use crate::feed::{FeedConsumer, FeedEntry, FeedError};
use crate::store::db::Database;
use crate::store::read;
use crate::store::tx::EntityRow;
use async_trait::async_trait;
use moka::ops::compute::Op;
use prometheus_client::metrics::counter::Counter;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::broadcast;

pub mod redis;
pub mod settings;

/// A setting (`CLERKSYNC_CACHE_STRATEGY`): its names are the variants' in kebab case.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// The processor refreshes the cache after each commit, before the change
    /// counts as processed (read-your-writes).
    WriteThrough,
    /// The feed consumer refreshes it asynchronously, in batches.
    WriteBehind,
}

/// A setting (`CLERKSYNC_CACHE_INVALIDATION`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Invalidation {
    /// Only the changed entities' own keys.
    Precise,
    /// Also the lists that contain them (an organization's members, a user's organizations).
    Group,
}

/// Where cached values live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// In this process only.
    Moka,
    /// A shared Redis, plus a small moka layer per node.
    Redis(redis::RedisOptions),
}

/// What a cached key holds.
#[derive(Debug, Clone)]
pub enum Cached {
    Row(Arc<EntityRow>),
    Rows(Arc<Vec<EntityRow>>),
}

/// What a reader noted before its store read; hand it back to [`EntityCache::fill`].
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    local: u64,
    /// The shared generation (Redis); None in moka mode.
    shared: Option<u64>,
    at: Instant,
    /// False when the cache could not be consulted (Redis error): no fill.
    fillable: bool,
}

/// The answer of [`EntityCache::lookup`].
pub enum Lookup {
    Hit(Cached),
    /// Read the store, then `fill` with this stamp.
    Miss(Stamp),
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The reason is kept as text: one line, not repeated by an error chain.
    #[error("cannot reach Redis at {url} (CLERKSYNC_REDIS_URL): {reason}")]
    Connect { url: String, reason: String },
    #[error("Redis error: {0}")]
    Redis(#[from] ::redis::RedisError),
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

/// How many recent invalidations are remembered key by key.
const RECENT: usize = 100_000;

/// A key as [`Recent`] remembers it: a 64-bit hash, not the string, so the
/// record costs ~40 bytes per invalidation instead of ~160 (two copies of a
/// ~40-byte key). Two keys with one hash only make a fill be refused that
/// could have been allowed: a miss more, never a stale hit.
fn key_hash(key: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

/// Recent invalidations: key (hashed) -> the number of its last one.
#[derive(Default)]
struct Recent {
    by_key: HashMap<u64, u64>,
    order: VecDeque<(u64, u64)>,
    /// Every forgotten invalidation is at or below this.
    floor: u64,
}

impl Recent {
    fn record(&mut self, key: &str, gen: u64) {
        let k = key_hash(key);
        self.by_key.insert(k, gen);
        self.order.push_back((gen, k));
        while self.order.len() > RECENT {
            let Some((g, k)) = self.order.pop_front() else {
                break;
            };
            if self.by_key.get(&k) == Some(&g) {
                self.by_key.remove(&k);
            }
            self.floor = self.floor.max(g);
        }
    }

    /// True when no invalidation of `key` came after `stamp`.
    fn allows(&self, key: &str, stamp: u64) -> bool {
        stamp >= self.floor && self.by_key.get(&key_hash(key)).is_none_or(|g| *g <= stamp)
    }

    /// Refuses every stamp taken up to now (the local layer was reset).
    fn refuse_until(&mut self, gen: u64) {
        self.floor = self.floor.max(gen);
    }
}

pub struct EntityCache {
    local: moka::future::Cache<String, Cached>,
    recent: Mutex<Recent>,
    counter: AtomicU64,
    shared: Option<redis::Shared>,
    pub strategy: Strategy,
    pub invalidation: Invalidation,
    pub hits: Counter,
    pub misses: Counter,
    /// Redis failures (each one answered from the store instead).
    pub errors: Counter,
    /// `on_invalidate`: every invalidated key (this node's and, with Redis,
    /// other nodes'), for application caches to drop theirs.
    pub invalidations: broadcast::Sender<String>,
}

/// What the moka layer may hold: at most `entries` values and `bytes` bytes
/// (by [`weight`]), whichever is reached first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub entries: u64,
    pub bytes: u64,
}

/// Roughly what a cached value costs in memory: its strings, the key, and the
/// fixed size of a row and of moka's bookkeeping. A list weighs its rows.
pub fn weight(key: &str, value: &Cached) -> u64 {
    const FIXED: u64 = 160;
    let row = |r: &EntityRow| {
        (std::mem::size_of::<EntityRow>()
            + r.id.len()
            + r.version_key.len()
            + r.user_id.as_ref().map_or(0, String::len)
            + r.organization_id.as_ref().map_or(0, String::len)
            + r.data.as_ref().map_or(0, String::len)) as u64
    };
    let value = match value {
        Cached::Row(r) => row(r),
        Cached::Rows(rs) => rs.iter().map(row).sum(),
    };
    FIXED + key.len() as u64 + value
}

fn moka_cache(cap: Capacity) -> moka::future::Cache<String, Cached> {
    // Each value weighs at least bytes/entries, so the byte budget also keeps
    // the entry count within `entries`.
    let floor = (cap.bytes / cap.entries.max(1)).max(1);
    moka::future::Cache::builder()
        .max_capacity(cap.bytes)
        .weigher(move |k: &String, v: &Cached| {
            u32::try_from(weight(k, v).max(floor)).unwrap_or(u32::MAX)
        })
        .build()
}

impl EntityCache {
    /// An in-process cache (moka backend) of at most `max_entries` values and
    /// the default byte budget.
    pub fn new(max_entries: u64, strategy: Strategy, invalidation: Invalidation) -> Self {
        let cap = Capacity {
            entries: max_entries,
            bytes: settings::DEFAULT_MAX_BYTES,
        };
        Self::with_shared(cap, strategy, invalidation, None)
    }

    fn with_shared(
        cap: Capacity,
        strategy: Strategy,
        invalidation: Invalidation,
        shared: Option<redis::Shared>,
    ) -> Self {
        Self {
            local: moka_cache(cap),
            recent: Mutex::new(Recent::default()),
            counter: AtomicU64::new(1),
            shared,
            strategy,
            invalidation,
            hits: Counter::default(),
            misses: Counter::default(),
            errors: Counter::default(),
            invalidations: broadcast::channel(1024).0,
        }
    }

    /// The cache for `backend`; with Redis, connects (an unreachable Redis is
    /// an error here, at start-up) and starts the invalidation subscriber.
    pub async fn open(
        backend: &Backend,
        cap: Capacity,
        strategy: Strategy,
        invalidation: Invalidation,
    ) -> Result<Arc<Self>, CacheError> {
        match backend {
            Backend::Moka => Ok(Arc::new(Self::with_shared(
                cap,
                strategy,
                invalidation,
                None,
            ))),
            Backend::Redis(opts) => {
                let (shared, client) = redis::Shared::connect(opts).await?;
                let cache = Arc::new(Self::with_shared(
                    Capacity {
                        entries: opts.local_max_entries,
                        bytes: cap.bytes,
                    },
                    strategy,
                    invalidation,
                    Some(shared),
                ));
                tokio::spawn(redis::subscribe(Arc::downgrade(&cache), client));
                Ok(cache)
            }
        }
    }

    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    fn local_stamp(&self) -> Stamp {
        Stamp {
            local: self.counter.load(Ordering::SeqCst),
            shared: None,
            at: Instant::now(),
            fillable: true,
        }
    }

    fn unfillable() -> Stamp {
        Stamp {
            local: 0,
            shared: None,
            at: Instant::now(),
            fillable: false,
        }
    }

    /// A cached value, or the stamp to fill the key with after a store read.
    pub async fn lookup(&self, key: &str) -> Lookup {
        let stamp = self.local_stamp();
        let Some(shared) = &self.shared else {
            return match self.local.get(key).await {
                Some(v) => {
                    self.hits.inc();
                    Lookup::Hit(v)
                }
                None => {
                    self.misses.inc();
                    Lookup::Miss(stamp)
                }
            };
        };
        if shared.has_pending() {
            // Some invalidation never reached Redis: it may hold old records.
            self.misses.inc();
            return Lookup::Miss(Self::unfillable());
        }
        if let Some(v) = self.local.get(key).await {
            // The local copy counts only if this node has applied every
            // invalidation Redis has numbered so far.
            match shared.generation().await {
                Ok(g) if shared.heard_all(g) => {
                    self.hits.inc();
                    return Lookup::Hit(v);
                }
                Ok(_) => {}
                Err(e) => return self.failed(e),
            }
        }
        match shared.read(key).await {
            Ok((_, Some(v))) => {
                self.fill_local(key, v.clone(), stamp.local).await;
                self.hits.inc();
                Lookup::Hit(v)
            }
            Ok((gen, None)) => {
                self.misses.inc();
                Lookup::Miss(Stamp {
                    shared: Some(gen),
                    ..stamp
                })
            }
            Err(e) => self.failed(e),
        }
    }

    fn failed(&self, e: CacheError) -> Lookup {
        tracing::warn!(error = %e, "cache read failed; reading the store");
        self.errors.inc();
        self.misses.inc();
        Lookup::Miss(Self::unfillable())
    }

    /// Stores what a reader read, unless an invalidation came after `stamp`.
    pub async fn fill(&self, key: &str, value: Cached, stamp: Stamp) {
        if !stamp.fillable {
            return;
        }
        if let (Some(shared), Some(gen)) = (&self.shared, stamp.shared) {
            match shared.fill(key, &value, gen, stamp.at).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "cache fill failed");
                    self.errors.inc();
                    return;
                }
            }
        }
        self.fill_local(key, value, stamp.local).await;
    }

    async fn fill_local(&self, key: &str, value: Cached, stamp: u64) {
        // Both this and `drop_local` run under moka's per-key compute lock, so
        // an invalidation's removal cannot slip between the check and the put.
        self.local
            .entry(key.to_string())
            .and_compute_with(|_| {
                let fresh = self.recent.lock().expect("recent").allows(key, stamp);
                std::future::ready(if fresh { Op::Put(value) } else { Op::Nop })
            })
            .await;
    }

    /// Forgets `key` in the local layer; readers stamped before cannot fill it.
    async fn drop_local(&self, key: &str) {
        let gen = self.counter.fetch_add(1, Ordering::SeqCst) + 1;
        self.recent.lock().expect("recent").record(key, gen);
        self.local
            .entry(key.to_string())
            .and_compute_with(|_| std::future::ready(Op::<Cached>::Remove))
            .await;
    }

    /// Forgets everything local and refuses every fill stamped before now.
    async fn reset_local(&self) {
        let gen = self.counter.fetch_add(1, Ordering::SeqCst) + 1;
        self.recent.lock().expect("recent").refuse_until(gen);
        self.local.invalidate_all();
    }

    /// Drops a key everywhere; readers that started before this cannot fill it.
    pub async fn invalidate(&self, key: &str) -> Result<(), CacheError> {
        self.invalidate_keys(&[key.to_string()]).await
    }

    /// Drops keys: locally, then in Redis (which tells the other nodes). On a
    /// Redis error the keys are kept and retried, and reads bypass the cache
    /// until they got through.
    pub async fn invalidate_keys(&self, keys: &[String]) -> Result<(), CacheError> {
        for key in keys {
            self.drop_local(key).await;
            let _ = self.invalidations.send(key.clone());
        }
        match &self.shared {
            Some(shared) => shared.invalidate(keys).await.inspect_err(|e| {
                tracing::warn!(error = %e, "cache invalidation in Redis failed; will retry");
                self.errors.inc();
            }),
            None => Ok(()),
        }
    }

    /// Applies invalidations another node published.
    async fn apply_remote(&self, keys: &[String], from_self: bool) {
        for key in keys {
            self.drop_local(key).await;
            if !from_self {
                let _ = self.invalidations.send(key.clone());
            }
        }
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
                // In no cached list (a new kind must decide: clerk/kind.rs).
                Kind::Invitation
                | Kind::Domain
                | Kind::Role
                | Kind::Permission
                | Kind::Session
                | Kind::Email
                | Kind::Sms
                | Kind::WaitlistEntry
                | Kind::Subscription
                | Kind::SubscriptionItem
                | Kind::PaymentAttempt => {}
            }
        }
        keys
    }

    /// Invalidates what the changes touched (write-through, after a commit). A
    /// Redis failure is retried in the background and, until then, reads
    /// bypass the cache; the cache consumer replays the change as well.
    pub async fn apply_changes(&self, db: &Database, changes: &[(Kind, String)]) {
        let _ = self.sync_changes(db, changes).await;
    }

    /// Invalidates what the changes touched; an error means some key may
    /// still be held by Redis.
    pub async fn sync_changes(
        &self,
        db: &Database,
        changes: &[(Kind, String)],
    ) -> Result<(), CacheError> {
        let mut keys = Vec::new();
        for (kind, id) in changes {
            keys.extend(self.keys_for(db, *kind, id).await);
        }
        keys.sort();
        keys.dedup();
        self.invalidate_keys(&keys).await
    }

    /// Entries in this node's (moka) layer.
    pub fn entry_count(&self) -> u64 {
        self.local.entry_count()
    }

    /// The bytes (by [`weight`]) this node's layer holds now; moka settles
    /// its counts lazily, this runs its pending work first.
    pub async fn weighted_bytes(&self) -> u64 {
        self.local.run_pending_tasks().await;
        self.local.weighted_size()
    }
}

/// The cache's feed consumer: in write-behind mode the only updater; in
/// write-through mode a safety net that catches up after a crash. With Redis
/// the cache outlives the process, so replaying from the checkpoint is what
/// drops a record a crash left in it.
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
        // An error keeps the checkpoint where it is: the batch comes again.
        self.cache
            .sync_changes(&self.db, &changes)
            .await
            .map_err(|e| FeedError::Consumer(e.to_string()))?;
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

    async fn version(c: &EntityCache, key: &str) -> Option<i64> {
        match c.lookup(key).await {
            Lookup::Hit(Cached::Row(r)) => Some(r.version),
            _ => None,
        }
    }

    fn stamp_of(l: Lookup) -> Stamp {
        match l {
            Lookup::Miss(s) => s,
            Lookup::Hit(_) => panic!("expected a miss"),
        }
    }

    #[tokio::test]
    async fn a_read_that_raced_an_invalidation_cannot_fill_the_old_record() {
        let c = EntityCache::new(100, Strategy::WriteThrough, Invalidation::Precise);
        // Reader: stamp, then reads v1 from the store...
        let stamp = stamp_of(c.lookup("user:user_1").await);
        // ...meanwhile v2 commits and is invalidated...
        c.invalidate("user:user_1").await.unwrap();
        // ...then the reader tries to fill with v1: refused.
        c.fill("user:user_1", row(1), stamp).await;
        assert_eq!(version(&c, "user:user_1").await, None);
        // A reader that started after the invalidation fills normally.
        let stamp = stamp_of(c.lookup("user:user_1").await);
        c.fill("user:user_1", row(2), stamp).await;
        assert_eq!(version(&c, "user:user_1").await, Some(2));
    }

    #[tokio::test]
    async fn forgotten_invalidations_refuse_older_stamps() {
        let c = EntityCache::new(100, Strategy::WriteThrough, Invalidation::Precise);
        let stamp = stamp_of(c.lookup("user:user_1").await);
        c.invalidate("user:user_1").await.unwrap();
        // Push the key's invalidation out of the bounded record.
        let others: Vec<String> = (0..RECENT + 1).map(|i| format!("user:u{i}")).collect();
        c.invalidate_keys(&others).await.unwrap();
        c.fill("user:user_1", row(1), stamp).await;
        assert_eq!(version(&c, "user:user_1").await, None);
    }

    fn big_row(id: usize, bytes: usize) -> Cached {
        Cached::Row(Arc::new(EntityRow {
            id: format!("user_{id}"),
            version: 1,
            version_key: String::new(),
            deleted: false,
            user_id: None,
            organization_id: None,
            data: Some("x".repeat(bytes)),
            synced_at: 0,
        }))
    }

    #[tokio::test]
    async fn the_byte_budget_bounds_what_is_held() {
        let budget = 1_000_000;
        let c = EntityCache::with_shared(
            Capacity {
                entries: 100_000,
                bytes: budget,
            },
            Strategy::WriteThrough,
            Invalidation::Precise,
            None,
        );
        // 400 rows of ~10 KB: 4 MB offered to a 1 MB budget.
        for i in 0..400 {
            let key = format!("user:user_{i}");
            let stamp = stamp_of(c.lookup(&key).await);
            c.fill(&key, big_row(i, 10_000), stamp).await;
        }
        let held = c.weighted_bytes().await;
        assert!(held <= budget, "holds {held} bytes");
        assert!(c.entry_count() < 200, "{} entries", c.entry_count());
        assert!(c.entry_count() > 0);
    }

    #[tokio::test]
    async fn the_entry_bound_holds_for_small_values() {
        let c = EntityCache::with_shared(
            Capacity {
                entries: 50,
                bytes: 10_000_000,
            },
            Strategy::WriteThrough,
            Invalidation::Precise,
            None,
        );
        for i in 0..500 {
            let key = format!("user:user_{i}");
            let stamp = stamp_of(c.lookup(&key).await);
            c.fill(&key, big_row(i, 10), stamp).await;
        }
        c.weighted_bytes().await;
        assert!(c.entry_count() <= 50, "{} entries", c.entry_count());
    }

    #[tokio::test]
    async fn invalidations_are_published() {
        let c = EntityCache::new(100, Strategy::WriteBehind, Invalidation::Precise);
        let mut rx = c.invalidations.subscribe();
        c.invalidate("organization:org_1").await.unwrap();
        assert_eq!(rx.recv().await.unwrap(), "organization:org_1");
    }
}
