//! The cache's settings: what the operator gives (flags, `CLERKSYNC_CACHE_*`,
//! config file keys) and the checked [`CacheConfig`] built from it.
//!
//! Owns: the cache settings' names, defaults and limits. Must never: connect
//! to Redis (start-up does, in `EntityCache::open`, and says when it cannot).

use super::redis::{self, RedisOptions};
use super::{Backend, Invalidation, Strategy};
use crate::setting::Invalid;

/// `CLERKSYNC_CACHE_BACKEND`: where cached values live.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// In this process only.
    Moka,
    /// A shared Redis, plus a small moka layer per node.
    Redis,
}

/// The cache settings as given: one field per setting.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize, clap::Args)]
pub struct CacheSettings {
    /// Cache strategy: write-through (read-your-writes) or write-behind (batched, async).
    #[arg(long, global = true, env = "CLERKSYNC_CACHE_STRATEGY")]
    pub cache_strategy: Option<Strategy>,
    /// Cache invalidation: precise (changed entities only) or group (also their lists).
    #[arg(long, global = true, env = "CLERKSYNC_CACHE_INVALIDATION")]
    pub cache_invalidation: Option<Invalidation>,
    /// Most entries the in-process cache holds.
    #[arg(long, global = true, env = "CLERKSYNC_CACHE_MAX_ENTRIES")]
    pub cache_max_entries: Option<u64>,
    /// Most bytes of values the in-process cache (or the Redis backend's local layer) holds.
    #[arg(long, global = true, env = "CLERKSYNC_CACHE_MAX_BYTES")]
    pub cache_max_bytes: Option<u64>,
    /// Cache backend: moka (in-process) or redis (shared, with a small local layer).
    #[arg(long, global = true, env = "CLERKSYNC_CACHE_BACKEND")]
    pub cache_backend: Option<BackendKind>,
    /// Redis for the redis cache backend (default redis://127.0.0.1:6379).
    #[arg(
        long,
        global = true,
        env = "CLERKSYNC_REDIS_URL",
        hide_env_values = true
    )]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key and channel the cache uses.
    #[arg(long, global = true, env = "CLERKSYNC_CACHE_REDIS_PREFIX")]
    pub cache_redis_prefix: Option<String>,
    /// Seconds a value (or an invalidation marker) lives in Redis.
    #[arg(long, global = true, env = "CLERKSYNC_CACHE_TTL_SECS")]
    pub cache_ttl_secs: Option<u64>,
    /// Redis backend: most entries each node's local (moka) layer holds.
    #[arg(long, global = true, env = "CLERKSYNC_CACHE_LOCAL_MAX_ENTRIES")]
    pub cache_local_max_entries: Option<u64>,
}

/// The cache's checked configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    pub strategy: Strategy,
    pub invalidation: Invalidation,
    pub max_entries: u64,
    pub max_bytes: u64,
    /// moka, or redis with its URL, prefix, TTL and local layer size.
    pub backend: Backend,
}

pub const DEFAULT_MAX_ENTRIES: u64 = 100_000;
/// 16 MiB: ~8,000 realistic user records (~2 KB each with the row's fields).
/// Memory is the budget that matters on a small node; entries are not all alike.
pub const DEFAULT_MAX_BYTES: u64 = 16 << 20;
/// Less than this and a single large organization member list may not fit.
pub const MIN_MAX_BYTES: u64 = 1 << 20;

impl CacheSettings {
    /// The configuration, defaults filled in. A Redis URL is never quoted with
    /// its password.
    pub fn build(&self) -> Result<CacheConfig, Invalid> {
        let backend = match self.cache_backend.unwrap_or(BackendKind::Moka) {
            BackendKind::Moka => Backend::Moka,
            BackendKind::Redis => Backend::Redis(self.redis()?),
        };
        let max_bytes = self.cache_max_bytes.unwrap_or(DEFAULT_MAX_BYTES);
        if max_bytes < MIN_MAX_BYTES {
            return Err(Invalid::new(
                "CLERKSYNC_CACHE_MAX_BYTES",
                "must be at least 1048576 (1 MiB)",
            ));
        }
        Ok(CacheConfig {
            strategy: self.cache_strategy.unwrap_or(Strategy::WriteThrough),
            invalidation: self.cache_invalidation.unwrap_or(Invalidation::Precise),
            max_entries: self.cache_max_entries.unwrap_or(DEFAULT_MAX_ENTRIES),
            max_bytes,
            backend,
        })
    }

    fn redis(&self) -> Result<RedisOptions, Invalid> {
        let url = self
            .redis_url
            .clone()
            .unwrap_or_else(|| redis::DEFAULT_URL.to_string());
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(Invalid::new(
                "CLERKSYNC_REDIS_URL",
                format!(
                    "'{}': use redis://host:port",
                    crate::setting::redact_url(&url)
                ),
            ));
        }
        let ttl_secs = self.cache_ttl_secs.unwrap_or(redis::DEFAULT_TTL_SECS);
        // Shorter would expire invalidation markers while reads are in flight.
        if ttl_secs < 10 {
            return Err(Invalid::new(
                "CLERKSYNC_CACHE_TTL_SECS",
                "must be at least 10 seconds",
            ));
        }
        Ok(RedisOptions {
            url,
            prefix: self
                .cache_redis_prefix
                .clone()
                .unwrap_or_else(|| redis::DEFAULT_PREFIX.to_string()),
            ttl_secs,
            local_max_entries: self
                .cache_local_max_entries
                .unwrap_or(redis::DEFAULT_LOCAL_MAX_ENTRIES),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_settings() {
        let with = |backend: BackendKind, url: Option<&str>| {
            CacheSettings {
                cache_backend: Some(backend),
                redis_url: url.map(str::to_string),
                ..Default::default()
            }
            .build()
        };
        assert_eq!(
            with(BackendKind::Moka, None).unwrap().backend,
            Backend::Moka
        );
        match with(BackendKind::Redis, None).unwrap().backend {
            Backend::Redis(o) => {
                assert_eq!(o.url, "redis://127.0.0.1:6379");
                assert_eq!(o.prefix, "clerksync:");
            }
            Backend::Moka => panic!("redis expected"),
        }
        let e = with(BackendKind::Redis, Some("http://u:hunter2@x"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("CLERKSYNC_REDIS_URL") && !e.contains("hunter2"),
            "{e}"
        );
        let c = with(BackendKind::Redis, Some("redis://u:hunter2@x:6379")).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
