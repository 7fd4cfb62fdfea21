//! The shared cache: values in Redis, a small moka layer on each node, and one
//! pub/sub channel that keeps the layers coherent.
//!
//! Redis holds, under the configured prefix `P`:
//! - `P gen`: one counter; every invalidation batch takes the next number.
//! - `P k:<key>`: a hash per cached key, `g` = the number of its last
//!   invalidation, `v` = the serialized value (absent after an invalidation);
//!   it expires after the TTL.
//! - channel `P invalidate`: every batch, as `{node, gen, keys}` JSON.
//!
//! The protocol, each step one Lua script (atomic in Redis):
//! - read: `GET gen` and `HGET v` together. A value is a hit. A miss returns
//!   the generation as the reader's stamp, taken before its store read.
//! - fill: store `v` only if the slot's `g` <= stamp (no invalidation since the
//!   reader's stamp) and `gen` >= stamp (a counter that went backwards means
//!   Redis lost its data, and with it the markers). A reader slower than half
//!   the TTL does not fill: the marker it would be checked against may be gone.
//! - invalidate: `INCR gen`, replace each slot by `{g: gen}` (value gone),
//!   publish the batch. The same script does all three, so no reader can see
//!   the new number without the slots being cleared, and messages go out in
//!   number order.
//!
//! The local layer: an invalidation is applied locally first, then in Redis;
//! each node's subscriber applies every published batch (its own too: that
//! closes the window where a local reader filled between the two) and then
//! records the batch's number as `heard`. A local copy is served only if
//! `GET gen` == `heard`, i.e. this node has applied every invalidation Redis
//! has numbered: one small round trip, but never a stale answer, even while
//! a message is in flight or the subscription is down. On (re)subscribing the
//! local layer is emptied and every older stamp refused before `heard` is set.
//!
//! Failures: an unreachable Redis at start-up is an error. Later, a failed read
//! goes to the store (counted in `cache_errors_total`); a failed invalidation
//! keeps its keys pending, retried every half second, and while any are
//! pending this node reads only the store. Must never: block a read on a
//! retry, or let a value into Redis or the local layer that an invalidation
//! numbered after the reader's stamp should have removed.

use super::{CacheError, Cached, EntityCache};
use crate::store::tx::EntityRow;
use futures::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

pub const DEFAULT_URL: &str = "redis://127.0.0.1:6379";
pub const DEFAULT_PREFIX: &str = "clerksync:";
pub const DEFAULT_TTL_SECS: u64 = 3600;
pub const DEFAULT_LOCAL_MAX_ENTRIES: u64 = 10_000;

/// `heard` before the subscriber has caught up: equals no generation.
const NOT_HEARD: u64 = u64::MAX;

#[derive(Clone, PartialEq, Eq)]
pub struct RedisOptions {
    pub url: String,
    pub prefix: String,
    pub ttl_secs: u64,
    pub local_max_entries: u64,
}

impl fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisOptions")
            .field("url", &crate::config::redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("ttl_secs", &self.ttl_secs)
            .field("local_max_entries", &self.local_max_entries)
            .finish()
    }
}

const READ: &str = r"
return {tonumber(redis.call('GET', KEYS[1]) or '0'), redis.call('HGET', KEYS[2], 'v')}
";

const FILL: &str = r"
local stamp = tonumber(ARGV[1])
if tonumber(redis.call('GET', KEYS[1]) or '0') < stamp then return 0 end
if tonumber(redis.call('HGET', KEYS[2], 'g') or '0') > stamp then return 0 end
redis.call('HSET', KEYS[2], 'v', ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
";

const INVALIDATE: &str = r"
local g = redis.call('INCR', KEYS[1])
local keys = {}
for i = 2, #KEYS do
  redis.call('DEL', KEYS[i])
  redis.call('HSET', KEYS[i], 'g', g)
  redis.call('EXPIRE', KEYS[i], ARGV[1])
  keys[#keys + 1] = ARGV[i + 2]
end
redis.call('PUBLISH', ARGV[2], cjson.encode({node = ARGV[3], gen = g, keys = keys}))
return g
";

/// One published invalidation batch.
#[derive(Deserialize)]
struct Message {
    node: String,
    gen: u64,
    keys: Vec<String>,
}

/// [`EntityRow`] as stored in Redis.
#[derive(Serialize, Deserialize)]
struct WireRow {
    id: String,
    version: i64,
    version_key: String,
    deleted: bool,
    user_id: Option<String>,
    organization_id: Option<String>,
    data: Option<String>,
    synced_at: i64,
}

impl From<&EntityRow> for WireRow {
    fn from(r: &EntityRow) -> Self {
        WireRow {
            id: r.id.clone(),
            version: r.version,
            version_key: r.version_key.clone(),
            deleted: r.deleted,
            user_id: r.user_id.clone(),
            organization_id: r.organization_id.clone(),
            data: r.data.clone(),
            synced_at: r.synced_at,
        }
    }
}

impl From<WireRow> for EntityRow {
    fn from(r: WireRow) -> Self {
        EntityRow {
            id: r.id,
            version: r.version,
            version_key: r.version_key,
            deleted: r.deleted,
            user_id: r.user_id,
            organization_id: r.organization_id,
            data: r.data,
            synced_at: r.synced_at,
        }
    }
}

#[derive(Serialize, Deserialize)]
enum Wire {
    Row(WireRow),
    Rows(Vec<WireRow>),
}

fn encode(v: &Cached) -> Vec<u8> {
    let w = match v {
        Cached::Row(r) => Wire::Row(r.as_ref().into()),
        Cached::Rows(rs) => Wire::Rows(rs.iter().map(WireRow::from).collect()),
    };
    serde_json::to_vec(&w).expect("cache values serialize")
}

fn decode(b: &[u8]) -> Result<Cached, serde_json::Error> {
    Ok(match serde_json::from_slice::<Wire>(b)? {
        Wire::Row(r) => Cached::Row(Arc::new(r.into())),
        Wire::Rows(rs) => Cached::Rows(Arc::new(rs.into_iter().map(EntityRow::from).collect())),
    })
}

/// This node's handle on the shared Redis.
pub(super) struct Shared {
    conn: ConnectionManager,
    prefix: String,
    ttl_secs: u64,
    node: String,
    heard: AtomicU64,
    pending: Mutex<HashSet<String>>,
    read: redis::Script,
    fill: redis::Script,
    invalidate: redis::Script,
}

impl Shared {
    pub(super) async fn connect(
        opts: &RedisOptions,
    ) -> Result<(Shared, redis::Client), CacheError> {
        let connect_err = |e: redis::RedisError| CacheError::Connect {
            url: crate::config::redact_url(&opts.url),
            reason: e.to_string(),
        };
        let client = redis::Client::open(opts.url.as_str()).map_err(connect_err)?;
        // Short timeouts and few retries: a read waits on Redis only briefly
        // before it goes to the store instead.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let mut conn = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(connect_err)?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map_err(connect_err)?;
        let shared = Shared {
            conn,
            prefix: opts.prefix.clone(),
            ttl_secs: opts.ttl_secs.max(1),
            node: format!("{:016x}", rand::random::<u64>()),
            heard: AtomicU64::new(NOT_HEARD),
            pending: Mutex::new(HashSet::new()),
            read: redis::Script::new(READ),
            fill: redis::Script::new(FILL),
            invalidate: redis::Script::new(INVALIDATE),
        };
        Ok((shared, client))
    }

    fn gen_key(&self) -> String {
        format!("{}gen", self.prefix)
    }
    fn slot_key(&self, key: &str) -> String {
        format!("{}k:{key}", self.prefix)
    }
    fn channel(&self) -> String {
        format!("{}invalidate", self.prefix)
    }

    pub(super) fn has_pending(&self) -> bool {
        !self.pending.lock().expect("pending").is_empty()
    }

    /// True when this node has applied every invalidation up to `gen` (and none
    /// numbered above it: a Redis that lost its counter is not trusted either).
    pub(super) fn heard_all(&self, gen: u64) -> bool {
        self.heard.load(Ordering::SeqCst) == gen
    }

    pub(super) async fn generation(&self) -> Result<u64, CacheError> {
        let g: Option<u64> = redis::cmd("GET")
            .arg(self.gen_key())
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(g.unwrap_or(0))
    }

    /// The generation and, if present, the value of `key`.
    pub(super) async fn read(&self, key: &str) -> Result<(u64, Option<Cached>), CacheError> {
        let (gen, v): (u64, Option<Vec<u8>>) = self
            .read
            .key(self.gen_key())
            .key(self.slot_key(key))
            .invoke_async(&mut self.conn.clone())
            .await?;
        let v = match v.as_deref().map(decode) {
            Some(Ok(v)) => Some(v),
            // Unreadable (another version's format): a miss; the fill replaces it.
            Some(Err(e)) => {
                tracing::warn!(key, error = %e, "unreadable cache value in Redis");
                None
            }
            None => None,
        };
        Ok((gen, v))
    }

    /// Stores `value` unless an invalidation came after `stamp`; true if stored.
    pub(super) async fn fill(
        &self,
        key: &str,
        value: &Cached,
        stamp: u64,
        stamped_at: Instant,
    ) -> Result<bool, CacheError> {
        if stamped_at.elapsed() > Duration::from_secs(self.ttl_secs / 2) {
            return Ok(false);
        }
        let stored: i64 = self
            .fill
            .key(self.gen_key())
            .key(self.slot_key(key))
            .arg(stamp)
            .arg(encode(value))
            .arg(self.ttl_secs)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(stored == 1)
    }

    /// Invalidates `keys` (and any still pending) in Redis and publishes them.
    pub(super) async fn invalidate(&self, keys: &[String]) -> Result<(), CacheError> {
        let mut batch: Vec<String> = self
            .pending
            .lock()
            .expect("pending")
            .iter()
            .cloned()
            .collect();
        batch.extend(keys.iter().cloned());
        batch.sort();
        batch.dedup();
        if batch.is_empty() {
            return Ok(());
        }
        let mut inv = self.invalidate.prepare_invoke();
        inv.key(self.gen_key());
        for k in &batch {
            inv.key(self.slot_key(k));
        }
        inv.arg(self.ttl_secs).arg(self.channel()).arg(&self.node);
        for k in &batch {
            inv.arg(k);
        }
        let result: Result<u64, _> = inv.invoke_async(&mut self.conn.clone()).await;
        let mut pending = self.pending.lock().expect("pending");
        match result {
            Ok(_) => {
                for k in &batch {
                    pending.remove(k);
                }
                Ok(())
            }
            Err(e) => {
                pending.extend(batch);
                Err(e.into())
            }
        }
    }
}

/// The subscriber: applies every published invalidation to this node's local
/// layer and retries pending ones, until the cache is dropped.
pub(super) async fn subscribe(cache: Weak<EntityCache>, client: redis::Client) {
    let tick = Duration::from_millis(500);
    loop {
        let Some(c) = cache.upgrade() else { return };
        let shared = c.shared.as_ref().expect("redis cache");
        shared.heard.store(NOT_HEARD, Ordering::SeqCst);
        let channel = shared.channel();
        let ps = async {
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(&channel).await?;
            Ok::<_, CacheError>(ps)
        }
        .await;
        let mut ps = match ps {
            Ok(ps) => ps,
            Err(e) => {
                tracing::warn!(error = %e, "cache invalidation subscriber cannot connect; retrying");
                drop(c);
                tokio::time::sleep(tick).await;
                continue;
            }
        };
        // Subscribed: from here every batch reaches us. What was published
        // before is covered by emptying the local layer.
        match shared.generation().await {
            Ok(g) => {
                c.reset_local().await;
                shared.heard.store(g, Ordering::SeqCst);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cache invalidation subscriber cannot read the generation");
                drop(c);
                tokio::time::sleep(tick).await;
                continue;
            }
        }
        drop(c);
        let mut messages = ps.on_message();
        loop {
            match tokio::time::timeout(tick, messages.next()).await {
                Ok(Some(msg)) => {
                    let Some(c) = cache.upgrade() else { return };
                    let shared = c.shared.as_ref().expect("redis cache");
                    match serde_json::from_slice::<Message>(msg.get_payload_bytes()) {
                        Ok(m) => {
                            c.apply_remote(&m.keys, m.node == shared.node).await;
                            shared.heard.fetch_max(m.gen, Ordering::SeqCst);
                        }
                        Err(e) => {
                            // Cannot tell what to drop: start over, which empties the layer.
                            tracing::warn!(error = %e, "unreadable cache invalidation message");
                            break;
                        }
                    }
                }
                Ok(None) => {
                    tracing::warn!("cache invalidation subscription lost; resubscribing");
                    break;
                }
                Err(_) => {
                    let Some(c) = cache.upgrade() else { return };
                    let shared = c.shared.as_ref().expect("redis cache");
                    if shared.has_pending() && shared.invalidate(&[]).await.is_ok() {
                        tracing::info!("pending cache invalidations reached Redis");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        let row = EntityRow {
            id: "user_1".into(),
            version: 7,
            version_key: "k".into(),
            deleted: false,
            user_id: None,
            organization_id: Some("org_1".into()),
            data: Some("{\"id\":\"user_1\"}".into()),
            synced_at: 3,
        };
        match decode(&encode(&Cached::Row(Arc::new(row.clone())))).unwrap() {
            Cached::Row(r) => assert_eq!(*r, row),
            Cached::Rows(_) => panic!("wrong shape"),
        }
        match decode(&encode(&Cached::Rows(Arc::new(vec![row.clone()])))).unwrap() {
            Cached::Rows(r) => assert_eq!(*r, vec![row]),
            Cached::Row(_) => panic!("wrong shape"),
        }
    }
}
