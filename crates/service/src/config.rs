//! Layered configuration: flags > `CLERKSYNC_*` env > `--config` TOML > defaults.
//!
//! Owns: reading every setting once, validating it, and producing a typed
//! [`Config`]. Must never: be re-read after start-up, or print a secret (the
//! `Debug` of secrets and tokens is redacted).

use crate::webhook::verify::{SecretError, SecretSet};
use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Why start-up cannot go on. Each message is one line that says what to set.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("CLERKSYNC_WEBHOOK_SECRET is not set: set it (or --webhook-secret, or webhook_secret in the config file) to your Clerk endpoint's signing secret (whsec_...)")]
    MissingSecret,
    // The cause stays out of the text: "not valid base64 after the whsec_
    // prefix" misleads when the value has no prefix at all.
    #[error("CLERKSYNC_WEBHOOK_SECRET is malformed: expected the signing secret from the Clerk dashboard, whsec_ followed by base64 (several: separate them with commas)")]
    BadSecret(SecretError),
    #[error("CLERKSYNC_LISTEN '{0}' is not a socket address: use host:port, e.g. 127.0.0.1:8080")]
    BadListen(String),
    #[error("refusing to serve /v1 without a token on {0}, which other machines can reach: set CLERKSYNC_API_TOKEN (or listen on 127.0.0.1, or set CLERKSYNC_INSECURE_OPEN_API=true to let anyone read your users)")]
    OpenApi(String),
    #[error("CLERKSYNC_DATABASE_URL '{0}' is not usable: use sqlite://path/to/file.db or postgres://user@host/db")]
    BadDatabaseUrl(String),
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("{name} is invalid: {message}")]
    BadValue { name: &'static str, message: String },
    /// Another error, its setting named as where the value came from ([`ConfigError::named_by`]).
    #[error("{0}")]
    Named(String),
}

/// Where a setting's value came from, to name it in an error as the user gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `--webhook-secret`
    Flag,
    /// `CLERKSYNC_WEBHOOK_SECRET`
    Env,
    /// `webhook_secret` in this config file.
    File(PathBuf),
}

impl ConfigError {
    /// The environment variable of the setting this error is about, if one.
    pub fn setting(&self) -> Option<&'static str> {
        match self {
            ConfigError::BadSecret(_) => Some("CLERKSYNC_WEBHOOK_SECRET"),
            ConfigError::BadListen(_) => Some("CLERKSYNC_LISTEN"),
            ConfigError::BadDatabaseUrl(_) => Some("CLERKSYNC_DATABASE_URL"),
            ConfigError::BadValue { name, .. } => Some(name),
            _ => None,
        }
    }

    /// The same error naming its setting as it was given: `--webhook-secret`,
    /// `CLERKSYNC_WEBHOOK_SECRET`, or `webhook_secret in config file FILE`.
    /// `origin` answers for a setting's key (`webhook_secret`); None leaves the
    /// error as it is.
    pub fn named_by(self, origin: impl FnOnce(&str) -> Option<Origin>) -> ConfigError {
        let Some(var) = self.setting() else {
            return self;
        };
        let key = var.trim_start_matches("CLERKSYNC_").to_ascii_lowercase();
        let name = match origin(&key) {
            None | Some(Origin::Env) => return self,
            Some(Origin::Flag) => format!("--{}", key.replace('_', "-")),
            Some(Origin::File(path)) => format!("{key} in config file {}", path.display()),
        };
        ConfigError::Named(self.to_string().replacen(var, &name, 1))
    }
}

/// A bearer token; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Constant-time comparison against a presented token.
    pub fn matches(&self, presented: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.0.len() == presented.len() && bool::from(self.0.as_bytes().ct_eq(presented.as_bytes()))
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Where the data lives, chosen once from the URL.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Sqlite(String),
    Postgres(String),
}

impl DatabaseUrl {
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("sqlite:") {
            let path = rest.trim_start_matches("//");
            if path.is_empty() {
                return Err(ConfigError::BadDatabaseUrl(s.to_string()));
            }
            Ok(Self::Sqlite(s.to_string()))
        } else if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            url::Url::parse(s).map_err(|_| ConfigError::BadDatabaseUrl(redact_url(s)))?;
            Ok(Self::Postgres(s.to_string()))
        } else {
            Err(ConfigError::BadDatabaseUrl(redact_url(s)))
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Sqlite(s) | Self::Postgres(s) => s,
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(self.as_str()))
    }
}

/// Hides a password in a URL so it can be shown in errors and logs.
pub fn redact_url(s: &str) -> String {
    match url::Url::parse(s) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => s.to_string(),
    }
}

/// Settings as given by flags/env or the file: all optional until merged.
#[derive(Debug, Default, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// One or more whsec_ signing secrets, comma-separated (rotation).
    #[arg(
        long,
        global = true,
        env = "CLERKSYNC_WEBHOOK_SECRET",
        hide_env_values = true
    )]
    pub webhook_secret: Option<String>,
    /// Address to listen on.
    #[arg(long, global = true, env = "CLERKSYNC_LISTEN")]
    pub listen: Option<String>,
    /// sqlite://path or postgres://...
    #[arg(
        long,
        global = true,
        env = "CLERKSYNC_DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// Bearer token for /v1 (read API); open when unset.
    #[arg(
        long,
        global = true,
        env = "CLERKSYNC_API_TOKEN",
        hide_env_values = true
    )]
    pub api_token: Option<String>,
    /// Serve /v1 without a token on a non-loopback address (anyone who can reach it reads everything).
    #[arg(long, global = true, env = "CLERKSYNC_INSECURE_OPEN_API")]
    pub insecure_open_api: Option<bool>,
    /// Bearer token for /admin; /admin is disabled when unset.
    #[arg(
        long,
        global = true,
        env = "CLERKSYNC_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// Directory for the embedded database.
    #[arg(long, global = true, env = "CLERKSYNC_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Largest accepted webhook body, in bytes.
    #[arg(long, global = true, env = "CLERKSYNC_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Webhook body bytes held in memory at once, over all requests (past it: 503).
    #[arg(long, global = true, env = "CLERKSYNC_MAX_BUFFERED_BODY_BYTES")]
    pub max_buffered_body_bytes: Option<usize>,
    /// Seconds a client has to send a request's headers (also bounds an idle keep-alive connection).
    #[arg(long, global = true, env = "CLERKSYNC_HTTP_HEADER_TIMEOUT_SECS")]
    pub http_header_timeout_secs: Option<u64>,
    /// Seconds a client has to send a request's whole body.
    #[arg(long, global = true, env = "CLERKSYNC_HTTP_BODY_TIMEOUT_SECS")]
    pub http_body_timeout_secs: Option<u64>,
    /// Most HTTP connections open at once (WebSockets included).
    #[arg(long, global = true, env = "CLERKSYNC_HTTP_MAX_CONNECTIONS")]
    pub http_max_connections: Option<usize>,
    /// Log format: human or json.
    #[arg(long, global = true, env = "CLERKSYNC_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Most events applied at once (worker pool size).
    #[arg(long, global = true, env = "CLERKSYNC_MAX_CONCURRENT")]
    pub max_concurrent: Option<usize>,
    /// Attempts before a failing event is dead-lettered.
    #[arg(long, global = true, env = "CLERKSYNC_MAX_ATTEMPTS")]
    pub max_attempts: Option<u32>,
    /// Most events applied in one transaction (1 = one transaction per event).
    #[arg(long, global = true, env = "CLERKSYNC_BATCH_MAX")]
    pub batch_max: Option<usize>,
    /// Seconds a claimed event stays reserved for its worker; a worker that died
    /// leaves its events to others once this has passed.
    #[arg(long, global = true, env = "CLERKSYNC_LEASE_SECS")]
    pub lease_secs: Option<f64>,
    /// Days a deleted entity's archived record (and its personal data in audit rows) is kept.
    #[arg(long, global = true, env = "CLERKSYNC_ARCHIVE_RETENTION_DAYS")]
    pub archive_retention_days: Option<f64>,
    /// Days change-feed entries are kept once every feed consumer has read them.
    #[arg(long, global = true, env = "CLERKSYNC_FEED_RETENTION_DAYS")]
    pub feed_retention_days: Option<f64>,
    /// Cache strategy: write-through (read-your-writes) or write-behind (batched, async).
    #[arg(long, global = true, env = "CLERKSYNC_CACHE_STRATEGY")]
    pub cache_strategy: Option<String>,
    /// Cache invalidation: precise (changed entities only) or group (also their lists).
    #[arg(long, global = true, env = "CLERKSYNC_CACHE_INVALIDATION")]
    pub cache_invalidation: Option<String>,
    /// Most entries the in-process cache holds.
    #[arg(long, global = true, env = "CLERKSYNC_CACHE_MAX_ENTRIES")]
    pub cache_max_entries: Option<u64>,
    /// Cache backend: moka (in-process) or redis (shared, with a small local layer).
    #[arg(long, global = true, env = "CLERKSYNC_CACHE_BACKEND")]
    pub cache_backend: Option<String>,
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
    /// Directory of the search index (default: <data dir>/search).
    #[arg(long, global = true, env = "CLERKSYNC_SEARCH_DIR")]
    pub search_dir: Option<PathBuf>,
    /// Alert webhook (Slack-compatible `{"text": ...}`); alerts are off when unset.
    #[arg(
        long,
        global = true,
        env = "CLERKSYNC_ALERT_WEBHOOK_URL",
        hide_env_values = true
    )]
    pub alert_webhook_url: Option<String>,
    /// Signature failures per minute above which an alert is sent.
    #[arg(
        long,
        global = true,
        env = "CLERKSYNC_ALERT_SIGNATURE_FAILURES_PER_MINUTE"
    )]
    pub alert_signature_failures_per_minute: Option<u32>,
    /// Sync lag (oldest pending event, or receipt -> applied) above which an alert is sent.
    #[arg(long, global = true, env = "CLERKSYNC_ALERT_LAG_SECONDS")]
    pub alert_lag_seconds: Option<u64>,
    /// At most one alert of each kind per this many seconds.
    #[arg(long, global = true, env = "CLERKSYNC_ALERT_MIN_INTERVAL_SECS")]
    pub alert_min_interval_secs: Option<u64>,
    /// PEM public key that verifies Clerk session tokens (/v1/realtime).
    #[arg(
        long,
        global = true,
        env = "CLERKSYNC_CLERK_JWT_KEY",
        hide_env_values = true
    )]
    pub clerk_jwt_key: Option<String>,
    /// JWKS file (Clerk's /.well-known/jwks.json) that verifies session tokens.
    #[arg(long, global = true, env = "CLERKSYNC_CLERK_JWKS_FILE")]
    pub clerk_jwks_file: Option<PathBuf>,
    /// Allowed session-token issuers (`iss`), comma-separated; any when unset.
    #[arg(long, global = true, env = "CLERKSYNC_CLERK_ISSUERS")]
    pub clerk_issuers: Option<String>,
    /// Allowed session-token parties (`azp`, your origins), comma-separated; any when unset.
    #[arg(long, global = true, env = "CLERKSYNC_CLERK_AUTHORIZED_PARTIES")]
    pub clerk_authorized_parties: Option<String>,
    /// Clock skew tolerated on session-token `exp`/`nbf`, in seconds (default 5).
    #[arg(long, global = true, env = "CLERKSYNC_CLERK_LEEWAY_SECS")]
    pub clerk_leeway_secs: Option<u64>,
    /// Longest session-token lifetime (`exp - iat`) accepted, in seconds (default 3600).
    #[arg(long, global = true, env = "CLERKSYNC_CLERK_MAX_TOKEN_LIFETIME_SECS")]
    pub clerk_max_token_lifetime_secs: Option<u64>,
    /// Browser origins allowed to open /v1/realtime, comma-separated.
    #[arg(long, global = true, env = "CLERKSYNC_ALLOWED_ORIGINS")]
    pub allowed_origins: Option<String>,
    /// Most realtime connections per token (per user for session tokens).
    #[arg(
        long,
        global = true,
        env = "CLERKSYNC_REALTIME_MAX_CONNECTIONS_PER_TOKEN"
    )]
    pub realtime_max_connections_per_token: Option<usize>,
    /// Most anonymous realtime connections from one client address (open server).
    #[arg(
        long,
        global = true,
        env = "CLERKSYNC_REALTIME_MAX_CONNECTIONS_PER_ADDRESS"
    )]
    pub realtime_max_connections_per_address: Option<usize>,
    /// Most changes one realtime `since` replay sends; past it the client resyncs.
    #[arg(long, global = true, env = "CLERKSYNC_REALTIME_MAX_REPLAY")]
    pub realtime_max_replay: Option<i64>,
    /// Subscribe requests one realtime connection may make per minute.
    #[arg(long, global = true, env = "CLERKSYNC_REALTIME_SUBSCRIBES_PER_MINUTE")]
    pub realtime_subscribes_per_minute: Option<u32>,
    /// Messages a realtime connection may have waiting before it counts as too slow.
    #[arg(long, global = true, env = "CLERKSYNC_REALTIME_QUEUE")]
    pub realtime_queue: Option<usize>,
    /// Largest message a realtime client may send, in bytes.
    #[arg(long, global = true, env = "CLERKSYNC_REALTIME_MAX_MESSAGE_BYTES")]
    pub realtime_max_message_bytes: Option<usize>,
    /// Seconds between realtime pings (a missing pong closes the connection).
    #[arg(long, global = true, env = "CLERKSYNC_REALTIME_PING_SECS")]
    pub realtime_ping_secs: Option<u64>,
    /// Seconds a realtime connection may hold no subscription.
    #[arg(long, global = true, env = "CLERKSYNC_REALTIME_IDLE_SECS")]
    pub realtime_idle_secs: Option<u64>,
    /// Days back a realtime client may resume (`since`).
    #[arg(long, global = true, env = "CLERKSYNC_REALTIME_RETENTION_DAYS")]
    pub realtime_retention_days: Option<f64>,
    /// Most feed entries a realtime resume may reach back.
    #[arg(long, global = true, env = "CLERKSYNC_REALTIME_RETENTION_ENTRIES")]
    pub realtime_retention_entries: Option<i64>,
}

impl Settings {
    /// `self` wins over `lower` field by field.
    pub fn or(self, lower: Settings) -> Settings {
        Settings {
            webhook_secret: self.webhook_secret.or(lower.webhook_secret),
            listen: self.listen.or(lower.listen),
            database_url: self.database_url.or(lower.database_url),
            api_token: self.api_token.or(lower.api_token),
            insecure_open_api: self.insecure_open_api.or(lower.insecure_open_api),
            admin_token: self.admin_token.or(lower.admin_token),
            data_dir: self.data_dir.or(lower.data_dir),
            max_body_bytes: self.max_body_bytes.or(lower.max_body_bytes),
            max_buffered_body_bytes: self
                .max_buffered_body_bytes
                .or(lower.max_buffered_body_bytes),
            http_header_timeout_secs: self
                .http_header_timeout_secs
                .or(lower.http_header_timeout_secs),
            http_body_timeout_secs: self.http_body_timeout_secs.or(lower.http_body_timeout_secs),
            http_max_connections: self.http_max_connections.or(lower.http_max_connections),
            log_format: self.log_format.or(lower.log_format),
            max_concurrent: self.max_concurrent.or(lower.max_concurrent),
            max_attempts: self.max_attempts.or(lower.max_attempts),
            batch_max: self.batch_max.or(lower.batch_max),
            lease_secs: self.lease_secs.or(lower.lease_secs),
            archive_retention_days: self.archive_retention_days.or(lower.archive_retention_days),
            feed_retention_days: self.feed_retention_days.or(lower.feed_retention_days),
            cache_strategy: self.cache_strategy.or(lower.cache_strategy),
            cache_invalidation: self.cache_invalidation.or(lower.cache_invalidation),
            cache_max_entries: self.cache_max_entries.or(lower.cache_max_entries),
            cache_backend: self.cache_backend.or(lower.cache_backend),
            redis_url: self.redis_url.or(lower.redis_url),
            cache_redis_prefix: self.cache_redis_prefix.or(lower.cache_redis_prefix),
            cache_ttl_secs: self.cache_ttl_secs.or(lower.cache_ttl_secs),
            cache_local_max_entries: self
                .cache_local_max_entries
                .or(lower.cache_local_max_entries),
            search_dir: self.search_dir.or(lower.search_dir),
            alert_webhook_url: self.alert_webhook_url.or(lower.alert_webhook_url),
            alert_signature_failures_per_minute: self
                .alert_signature_failures_per_minute
                .or(lower.alert_signature_failures_per_minute),
            alert_lag_seconds: self.alert_lag_seconds.or(lower.alert_lag_seconds),
            alert_min_interval_secs: self
                .alert_min_interval_secs
                .or(lower.alert_min_interval_secs),
            clerk_jwt_key: self.clerk_jwt_key.or(lower.clerk_jwt_key),
            clerk_jwks_file: self.clerk_jwks_file.or(lower.clerk_jwks_file),
            clerk_issuers: self.clerk_issuers.or(lower.clerk_issuers),
            clerk_authorized_parties: self
                .clerk_authorized_parties
                .or(lower.clerk_authorized_parties),
            clerk_leeway_secs: self.clerk_leeway_secs.or(lower.clerk_leeway_secs),
            clerk_max_token_lifetime_secs: self
                .clerk_max_token_lifetime_secs
                .or(lower.clerk_max_token_lifetime_secs),
            allowed_origins: self.allowed_origins.or(lower.allowed_origins),
            realtime_max_connections_per_token: self
                .realtime_max_connections_per_token
                .or(lower.realtime_max_connections_per_token),
            realtime_max_connections_per_address: self
                .realtime_max_connections_per_address
                .or(lower.realtime_max_connections_per_address),
            realtime_max_replay: self.realtime_max_replay.or(lower.realtime_max_replay),
            realtime_subscribes_per_minute: self
                .realtime_subscribes_per_minute
                .or(lower.realtime_subscribes_per_minute),
            realtime_queue: self.realtime_queue.or(lower.realtime_queue),
            realtime_max_message_bytes: self
                .realtime_max_message_bytes
                .or(lower.realtime_max_message_bytes),
            realtime_ping_secs: self.realtime_ping_secs.or(lower.realtime_ping_secs),
            realtime_idle_secs: self.realtime_idle_secs.or(lower.realtime_idle_secs),
            realtime_retention_days: self
                .realtime_retention_days
                .or(lower.realtime_retention_days),
            realtime_retention_entries: self
                .realtime_retention_entries
                .or(lower.realtime_retention_entries),
        }
    }

    /// Reads a TOML file of the same keys.
    pub fn from_file(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::ParseFile {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub secrets: SecretSet,
    pub listen: SocketAddr,
    pub database_url: DatabaseUrl,
    pub api_token: Option<Token>,
    /// `/v1` without a token on a non-loopback address, asked for explicitly.
    pub insecure_open_api: bool,
    pub admin_token: Option<Token>,
    pub data_dir: PathBuf,
    pub max_body_bytes: usize,
    /// Timeouts, the connection cap and the buffered-body budget (serve.rs).
    pub http: crate::serve::HttpConfig,
    pub log_format: LogFormat,
    pub max_concurrent: usize,
    pub max_attempts: u32,
    pub batch_max: usize,
    /// How long a claimed event stays reserved for the worker that took it.
    pub lease: std::time::Duration,
    pub archive_retention: std::time::Duration,
    /// Change-feed entries older than this, and read by every consumer, are pruned.
    pub feed_retention: std::time::Duration,
    pub cache_strategy: crate::feed::cache::Strategy,
    pub cache_invalidation: crate::feed::cache::Invalidation,
    pub cache_max_entries: u64,
    /// moka, or redis with its URL, prefix, TTL and local layer size.
    pub cache_backend: crate::feed::cache::Backend,
    /// The search index's directory; None keeps it in memory (tests, embedding).
    pub search_dir: Option<PathBuf>,
    /// `/v1/realtime`: session-token keys, limits, resume window.
    pub realtime: crate::api::realtime::RealtimeConfig,
    /// The alert webhook and its thresholds (alerts/mod.rs).
    pub alerts: crate::alerts::AlertConfig,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
pub const DEFAULT_MAX_ATTEMPTS: u32 = 8;
/// Long enough for a full batch on a slow database, short enough that a
/// crashed node's events are taken over within a minute.
pub const DEFAULT_LEASE_SECS: f64 = 60.0;
pub const DEFAULT_ARCHIVE_RETENTION_DAYS: f64 = 30.0;
/// Events per apply transaction on PostgreSQL: a batch holds its entity locks
/// until commit, so it stays small; 32 amortizes the commit well.
pub const DEFAULT_BATCH_MAX: usize = 32;
/// On SQLite a batch is only as large as the backlog (a caught-up processor
/// applies what one ack commit brought), so the bound matters under load: there
/// the commit (WAL frames, fsync) is most of a small batch's cost. Measured
/// (replay of 30k deliveries): 32 gave 5,786 events/s, 256 gave 9,500. A batch
/// holds the write lock that acks wait for (~66 µs per event): while the apply
/// loop shared the runtime's workers, 128 gave a shorter lag tail at 5,000
/// deliveries/s (p99 median 33 against 50 ms); on its own thread both stay
/// at 13-24 ms, and at saturation (256 connections) 256 keeps up with ingress
/// where 128 falls behind (lag p99 ~100 ms against ~950 ms, same throughput).
pub const DEFAULT_BATCH_MAX_SQLITE: usize = 256;

pub fn default_batch_max(db: &DatabaseUrl) -> usize {
    match db {
        DatabaseUrl::Sqlite(_) => DEFAULT_BATCH_MAX_SQLITE,
        DatabaseUrl::Postgres(_) => DEFAULT_BATCH_MAX,
    }
}
/// A week: a realtime client may resume after a weekend offline (its own window
/// may be shorter), and an operator has days to notice a stuck consumer.
pub const DEFAULT_FEED_RETENTION_DAYS: f64 = 7.0;

/// The cache backend and, for redis, its settings.
fn cache_backend(s: &Settings) -> Result<crate::feed::cache::Backend, ConfigError> {
    use crate::feed::cache::{redis, Backend};
    match s.cache_backend.as_deref().unwrap_or("moka") {
        "moka" => Ok(Backend::Moka),
        "redis" => {
            let url = s
                .redis_url
                .clone()
                .unwrap_or_else(|| redis::DEFAULT_URL.to_string());
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(ConfigError::BadValue {
                    name: "CLERKSYNC_REDIS_URL",
                    message: format!("'{}': use redis://host:port", redact_url(&url)),
                });
            }
            let ttl_secs = s.cache_ttl_secs.unwrap_or(redis::DEFAULT_TTL_SECS);
            // Shorter would expire invalidation markers while reads are in flight.
            if ttl_secs < 10 {
                return Err(ConfigError::BadValue {
                    name: "CLERKSYNC_CACHE_TTL_SECS",
                    message: "must be at least 10 seconds".into(),
                });
            }
            Ok(Backend::Redis(redis::RedisOptions {
                url,
                prefix: s
                    .cache_redis_prefix
                    .clone()
                    .unwrap_or_else(|| redis::DEFAULT_PREFIX.to_string()),
                ttl_secs,
                local_max_entries: s
                    .cache_local_max_entries
                    .unwrap_or(redis::DEFAULT_LOCAL_MAX_ENTRIES),
            }))
        }
        other => Err(ConfigError::BadValue {
            name: "CLERKSYNC_CACHE_BACKEND",
            message: format!("'{other}': use moka or redis"),
        }),
    }
}

/// Default worker count. SQLite has one writer: extra workers only split the
/// batches (measured: 2 workers applied about half as fast as 1), so it gets one
/// worker with large batches. On PostgreSQL applying is mostly waiting on round
/// trips, so several per core keep it busy.
pub fn default_max_concurrent(db: &DatabaseUrl) -> usize {
    match db {
        DatabaseUrl::Sqlite(_) => 1,
        DatabaseUrl::Postgres(_) => std::thread::available_parallelism()
            .map(|n| n.get() * 4)
            .unwrap_or(8)
            .clamp(4, 32),
    }
}

impl Config {
    /// Merges `cli_env` over the optional file and validates the result.
    pub fn load(cli_env: Settings, file: Option<&Path>) -> Result<Config, ConfigError> {
        let file = match file {
            Some(p) => Settings::from_file(p)?,
            None => Settings::default(),
        };
        Self::from_settings(cli_env.or(file))
    }

    /// Validates merged settings, filling defaults.
    pub fn from_settings(s: Settings) -> Result<Config, ConfigError> {
        let secrets = match s.webhook_secret.as_deref().map(str::trim) {
            None | Some("") => return Err(ConfigError::MissingSecret),
            Some(v) => SecretSet::parse_list(v).map_err(ConfigError::BadSecret)?,
        };
        let rest = Self::without_secret(Settings {
            webhook_secret: None,
            ..s
        })?;
        rest.check_exposure()?;
        Ok(Config { secrets, ..rest })
    }

    /// Validates everything but the secret (for commands that never verify a
    /// delivery: migrate, events, replay). The secret set is a random placeholder.
    pub fn without_secret(s: Settings) -> Result<Config, ConfigError> {
        let realtime = crate::api::realtime::RealtimeConfig::from_settings(&s)?;
        let cache_backend = cache_backend(&s)?;
        let alerts = alert_config(&s)?;
        let http = crate::serve::HttpConfig::from_settings(&s)?;
        let listen_s = s.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen: SocketAddr = listen_s
            .trim()
            .parse()
            .map_err(|_| ConfigError::BadListen(listen_s.clone()))?;
        let data_dir = s.data_dir.unwrap_or_else(|| PathBuf::from("data"));
        let search_dir = s.search_dir.unwrap_or_else(|| data_dir.join("search"));
        let db = s
            .database_url
            .unwrap_or_else(|| format!("sqlite://{}/clerksync.db", data_dir.display()));
        let database_url = DatabaseUrl::parse(&db)?;
        let max_body_bytes = s.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if max_body_bytes < 1024 {
            return Err(ConfigError::BadValue {
                name: "CLERKSYNC_MAX_BODY_BYTES",
                message: "must be at least 1024".into(),
            });
        }
        let log_format = match s.log_format.as_deref().unwrap_or("human") {
            "human" | "text" => LogFormat::Human,
            "json" => LogFormat::Json,
            other => {
                return Err(ConfigError::BadValue {
                    name: "CLERKSYNC_LOG_FORMAT",
                    message: format!("'{other}': use human or json"),
                })
            }
        };
        let max_concurrent = s
            .max_concurrent
            .unwrap_or_else(|| default_max_concurrent(&database_url));
        if max_concurrent == 0 || max_concurrent > 1024 {
            return Err(ConfigError::BadValue {
                name: "CLERKSYNC_MAX_CONCURRENT",
                message: "must be between 1 and 1024".into(),
            });
        }
        let max_attempts = s.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS).max(1);
        let batch_max = s
            .batch_max
            .unwrap_or_else(|| default_batch_max(&database_url));
        if !(1..=1000).contains(&batch_max) {
            return Err(ConfigError::BadValue {
                name: "CLERKSYNC_BATCH_MAX",
                message: "must be between 1 and 1000".into(),
            });
        }
        let lease_secs = s.lease_secs.unwrap_or(DEFAULT_LEASE_SECS);
        if !(lease_secs.is_finite() && (1.0..=86400.0).contains(&lease_secs)) {
            return Err(ConfigError::BadValue {
                name: "CLERKSYNC_LEASE_SECS",
                message: "must be between 1 and 86400 seconds".into(),
            });
        }
        let feed_days = s.feed_retention_days.unwrap_or(DEFAULT_FEED_RETENTION_DAYS);
        if !(feed_days.is_finite() && feed_days >= 0.0) {
            return Err(ConfigError::BadValue {
                name: "CLERKSYNC_FEED_RETENTION_DAYS",
                message: "must be a non-negative number of days".into(),
            });
        }
        let days = s
            .archive_retention_days
            .unwrap_or(DEFAULT_ARCHIVE_RETENTION_DAYS);
        if !(days.is_finite() && days >= 0.0) {
            return Err(ConfigError::BadValue {
                name: "CLERKSYNC_ARCHIVE_RETENTION_DAYS",
                message: "must be a non-negative number of days".into(),
            });
        }
        use crate::feed::cache::{Invalidation, Strategy};
        let cache_strategy = match s.cache_strategy.as_deref().unwrap_or("write-through") {
            "write-through" => Strategy::WriteThrough,
            "write-behind" => Strategy::WriteBehind,
            other => {
                return Err(ConfigError::BadValue {
                    name: "CLERKSYNC_CACHE_STRATEGY",
                    message: format!("'{other}': use write-through or write-behind"),
                })
            }
        };
        let cache_invalidation = match s.cache_invalidation.as_deref().unwrap_or("precise") {
            "precise" => Invalidation::Precise,
            "group" => Invalidation::Group,
            other => {
                return Err(ConfigError::BadValue {
                    name: "CLERKSYNC_CACHE_INVALIDATION",
                    message: format!("'{other}': use precise or group"),
                })
            }
        };
        let cache_max_entries = s.cache_max_entries.unwrap_or(100_000);
        let token = |t: Option<String>| t.filter(|t| !t.trim().is_empty()).map(Token::new);
        Ok(Config {
            secrets: SecretSet::new(vec![crate::webhook::verify::WebhookSecret::from_key(
                rand::random::<[u8; 32]>().to_vec(),
            )]),
            listen,
            database_url,
            api_token: token(s.api_token),
            insecure_open_api: s.insecure_open_api.unwrap_or(false),
            admin_token: token(s.admin_token),
            data_dir,
            max_body_bytes,
            http,
            log_format,
            max_concurrent,
            max_attempts,
            batch_max,
            lease: std::time::Duration::from_secs_f64(lease_secs),
            archive_retention: std::time::Duration::from_secs_f64(days * 86400.0),
            feed_retention: std::time::Duration::from_secs_f64(feed_days * 86400.0),
            cache_strategy,
            cache_invalidation,
            cache_max_entries,
            cache_backend,
            search_dir: Some(search_dir),
            realtime,
            alerts,
        })
    }

    /// Refuses to serve `/v1` without a token on an address other machines can
    /// reach, unless that was asked for by name (`CLERKSYNC_INSECURE_OPEN_API`).
    pub fn check_exposure(&self) -> Result<(), ConfigError> {
        if self.api_token.is_none() && !self.insecure_open_api && !self.listen.ip().is_loopback() {
            return Err(ConfigError::OpenApi(self.listen.to_string()));
        }
        Ok(())
    }

    /// A config for tests and embedding: the given secret and database, defaults elsewhere.
    pub fn for_tests(secret: &str, database_url: &str) -> Config {
        let mut c = Config::from_settings(Settings {
            webhook_secret: Some(secret.into()),
            database_url: Some(database_url.into()),
            listen: Some("127.0.0.1:0".into()),
            ..Default::default()
        })
        .expect("test config is valid");
        // Many test apps run at once in one working directory, and an index
        // directory admits one writer: each gets its own in-memory index.
        c.search_dir = None;
        c
    }
}

/// The alert settings; the URL is never quoted in an error (its path is a token).
fn alert_config(s: &Settings) -> Result<crate::alerts::AlertConfig, ConfigError> {
    use crate::alerts::{self, AlertConfig, AlertUrl};
    let url = match s.alert_webhook_url.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(u) => Some(AlertUrl::parse(u).map_err(|message| ConfigError::BadValue {
            name: "CLERKSYNC_ALERT_WEBHOOK_URL",
            message,
        })?),
    };
    let per_minute = s
        .alert_signature_failures_per_minute
        .unwrap_or(alerts::DEFAULT_SIGNATURE_FAILURES_PER_MINUTE);
    if per_minute == 0 {
        return Err(ConfigError::BadValue {
            name: "CLERKSYNC_ALERT_SIGNATURE_FAILURES_PER_MINUTE",
            message: "must be at least 1".into(),
        });
    }
    let lag = s.alert_lag_seconds.unwrap_or(alerts::DEFAULT_LAG_SECS);
    if lag == 0 {
        return Err(ConfigError::BadValue {
            name: "CLERKSYNC_ALERT_LAG_SECONDS",
            message: "must be at least 1".into(),
        });
    }
    let interval = s
        .alert_min_interval_secs
        .unwrap_or(alerts::DEFAULT_MIN_INTERVAL_SECS);
    Ok(AlertConfig {
        url,
        signature_failures_per_minute: per_minute,
        lag: std::time::Duration::from_secs(lag),
        min_interval: std::time::Duration::from_secs(interval),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_settings_are_layered_and_a_malformed_url_is_a_clear_error() {
        let secret = || Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_string());
        let c = Config::from_settings(Settings {
            webhook_secret: secret(),
            ..Default::default()
        })
        .unwrap();
        assert!(c.alerts.url.is_none(), "alerts are off by default");
        assert_eq!(c.alerts.min_interval.as_secs(), 300);
        let cli = Settings {
            alert_lag_seconds: Some(5),
            ..Default::default()
        };
        let file = Settings {
            webhook_secret: secret(),
            alert_webhook_url: Some("https://hooks.example.com/services/T1/B2/tok3n".into()),
            alert_lag_seconds: Some(99),
            alert_min_interval_secs: Some(7),
            ..Default::default()
        };
        let c = Config::from_settings(cli.or(file)).unwrap();
        assert_eq!(c.alerts.lag.as_secs(), 5);
        assert_eq!(c.alerts.min_interval.as_secs(), 7);
        assert!(
            !format!("{c:?}").contains("tok3n"),
            "Debug hides the URL's path"
        );
        for bad in [
            "hooks.example.com/tok3n",
            "ftp://h/tok3n",
            "not a url tok3n",
        ] {
            let e = Config::from_settings(Settings {
                webhook_secret: secret(),
                alert_webhook_url: Some(bad.into()),
                ..Default::default()
            })
            .unwrap_err()
            .to_string();
            assert!(e.contains("CLERKSYNC_ALERT_WEBHOOK_URL"), "{e}");
            assert!(!e.contains("tok3n"), "never echo the URL: {e}");
        }
        let e = Config::from_settings(Settings {
            webhook_secret: secret(),
            alert_signature_failures_per_minute: Some(0),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("SIGNATURE_FAILURES_PER_MINUTE"));
    }

    #[test]
    fn flags_win_over_file() {
        let cli = Settings {
            listen: Some("127.0.0.1:9".into()),
            ..Default::default()
        };
        let file = Settings {
            listen: Some("127.0.0.1:10".into()),
            webhook_secret: Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()),
            ..Default::default()
        };
        let c = Config::from_settings(cli.or(file)).unwrap();
        assert_eq!(c.listen.port(), 9);
    }

    #[test]
    fn missing_and_bad_values_say_what_to_set() {
        let e = Config::from_settings(Settings::default()).unwrap_err();
        assert!(e
            .to_string()
            .contains("CLERKSYNC_WEBHOOK_SECRET is not set"));
        let e = Config::from_settings(Settings {
            webhook_secret: Some("whsec_not*base64!".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("malformed"));
        assert!(!e.to_string().contains("not*base64"), "never echo a secret");
        let e = Config::from_settings(Settings {
            webhook_secret: Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()),
            database_url: Some("postgres://u:hunter2@h/db x".into()),
            ..Default::default()
        });
        if let Err(e) = e {
            assert!(!e.to_string().contains("hunter2"));
        }
        let e = Config::from_settings(Settings {
            webhook_secret: Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()),
            database_url: Some("mysql://x".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("CLERKSYNC_DATABASE_URL"));
    }

    #[test]
    fn cache_backend_settings() {
        use crate::feed::cache::Backend;
        let with = |backend: &str, url: Option<&str>| {
            Config::from_settings(Settings {
                webhook_secret: Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()),
                cache_backend: Some(backend.into()),
                redis_url: url.map(str::to_string),
                ..Default::default()
            })
        };
        assert_eq!(with("moka", None).unwrap().cache_backend, Backend::Moka);
        match with("redis", None).unwrap().cache_backend {
            Backend::Redis(o) => {
                assert_eq!(o.url, "redis://127.0.0.1:6379");
                assert_eq!(o.prefix, "clerksync:");
            }
            Backend::Moka => panic!("redis expected"),
        }
        let e = with("memcached", None).unwrap_err().to_string();
        assert!(e.contains("CLERKSYNC_CACHE_BACKEND"), "{e}");
        let e = with("redis", Some("http://u:hunter2@x"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("CLERKSYNC_REDIS_URL") && !e.contains("hunter2"),
            "{e}"
        );
        let c = with("redis", Some("redis://u:hunter2@x:6379")).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn an_error_names_its_setting_as_it_was_given() {
        let bad = || {
            Config::from_settings(Settings {
                webhook_secret: Some("notasecret".into()),
                ..Default::default()
            })
            .unwrap_err()
        };
        let from = |o: Option<Origin>| {
            bad()
                .named_by(|key| {
                    assert_eq!(key, "webhook_secret");
                    o
                })
                .to_string()
        };
        assert!(from(Some(Origin::Flag)).starts_with("--webhook-secret is malformed: expected"));
        assert!(from(Some(Origin::Env)).starts_with("CLERKSYNC_WEBHOOK_SECRET is malformed"));
        assert!(from(None).starts_with("CLERKSYNC_WEBHOOK_SECRET is malformed"));
        let e = from(Some(Origin::File("c.toml".into())));
        assert!(
            e.starts_with("webhook_secret in config file c.toml is malformed"),
            "{e}"
        );
        assert!(!e.contains("notasecret"), "never echo a secret: {e}");
        let e = ConfigError::BadValue {
            name: "CLERKSYNC_MAX_BODY_BYTES",
            message: "must be at least 1024".into(),
        };
        assert_eq!(
            e.named_by(|_| Some(Origin::Flag)).to_string(),
            "--max-body-bytes is invalid: must be at least 1024"
        );
    }

    #[test]
    fn debug_redacts_secrets() {
        let c = Config::for_tests("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "sqlite://x.db");
        let d = format!("{c:?}");
        assert!(!d.contains("MfKQ9r8"));
    }
}
