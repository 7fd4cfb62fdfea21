//! Layered configuration: flags > `CLERKSYNC_*` env > `--config` TOML > defaults.
//!
//! Owns: the sources of settings and their order ([`Layers`], on figment),
//! naming a bad setting as the user gave it ([`ConfigError::named_by`]), and
//! building the typed [`Config`] from the subsystems' own settings. Each
//! subsystem declares its settings once (flag, `CLERKSYNC_*` variable and file
//! key in one field of a `clap::Args` + serde struct), next to their defaults
//! and checks: `serve::HttpSettings`, `feed::cache::settings::CacheSettings`,
//! `alerts::AlertSettings`, `realtime::RealtimeSettings`,
//! `backfill::schedule::ReconcileSettings`. [`Settings`]
//! flattens those groups with the core settings (addresses, database, tokens,
//! the processor's), and a new group takes one line in [`Layers::settings`].
//! Must never: be re-read after start-up, hold a default or limit of a group,
//! or print a secret (the `Debug` of secrets and tokens is redacted).

use crate::alerts::AlertSettings;
use crate::backfill::schedule::ReconcileSettings;
use crate::feed::cache::settings::CacheSettings;
use crate::realtime::RealtimeSettings;
use crate::serve::HttpSettings;
use crate::setting::Invalid;
use crate::webhook::verify::{SecretError, SecretSet};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use crate::setting::{redact_url, Token};
pub use crate::telemetry::LogFormat;

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

impl From<Invalid> for ConfigError {
    fn from(e: Invalid) -> Self {
        ConfigError::BadValue {
            name: e.name,
            message: e.message,
        }
    }
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

/// Every setting as given by flags/env or the file, all optional until
/// layered: the core ones here, each subsystem's in its own flattened group.
/// A field's name is its file key; its flag and variable are spelled from it.
#[derive(Debug, Default, Clone, Serialize, Deserialize, clap::Args)]
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
    #[command(flatten)]
    #[serde(flatten)]
    pub http: HttpSettings,
    /// Log format: human or json.
    #[arg(long, global = true, env = "CLERKSYNC_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
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
    /// Days an applied delivery keeps its raw body (what `replay` re-applies);
    /// older applied deliveries keep only their metadata.
    #[arg(long, global = true, env = "CLERKSYNC_RAW_BODY_RETENTION_DAYS")]
    pub raw_body_retention_days: Option<f64>,
    #[command(flatten)]
    #[serde(flatten)]
    pub cache: CacheSettings,
    /// Directory of the search index (default: <data dir>/search).
    #[arg(long, global = true, env = "CLERKSYNC_SEARCH_DIR")]
    pub search_dir: Option<PathBuf>,
    /// Memory tantivy's writer may buffer before it writes a segment, in MB (at least 15).
    #[arg(long, global = true, env = "CLERKSYNC_SEARCH_WRITER_MEMORY_MB")]
    pub search_writer_memory_mb: Option<usize>,
    /// Milliseconds between search index commits (how stale a search may be).
    #[arg(long, global = true, env = "CLERKSYNC_SEARCH_COMMIT_INTERVAL_MS")]
    pub search_commit_interval_ms: Option<u64>,
    /// Accept and store deliveries but apply none (maintenance, ingest measurements).
    #[arg(long, global = true, env = "CLERKSYNC_APPLY_PAUSED")]
    pub apply_paused: Option<bool>,
    #[command(flatten)]
    #[serde(flatten)]
    pub alerts: AlertSettings,
    #[command(flatten)]
    #[serde(flatten)]
    pub realtime: RealtimeSettings,
    #[command(flatten)]
    #[serde(flatten)]
    pub reconcile: ReconcileSettings,
}

/// The sources of settings, layered: what clap parsed (flags over
/// `CLERKSYNC_*` variables) over the TOML file. figment merges them and
/// remembers which one gave each key.
pub struct Layers {
    figment: Figment,
    file: Option<PathBuf>,
}

/// One source as figment sees it: a name (and a path for the file) and the
/// keys it gives.
struct Layer {
    metadata: Metadata,
    dict: Dict,
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        self.metadata.clone()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

impl Layers {
    /// `given` (the flags and variables clap parsed) over the TOML `file`.
    pub fn new(given: &Settings, file: Option<&Path>) -> Result<Layers, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = file {
            figment = figment.merge(Layer {
                metadata: Metadata::from("config file", path),
                dict: read_file(path)?,
            });
        }
        // A setting not given serializes as empty: left out, it lets the file's show.
        let mut dict = match Value::serialize(given) {
            Ok(Value::Dict(_, dict)) => dict,
            _ => unreachable!("Settings serializes as a map"),
        };
        dict.retain(|_, v| !matches!(v, Value::Empty(..)));
        figment = figment.merge(Layer {
            metadata: Metadata::named("command line"),
            dict,
        });
        Ok(Layers {
            figment,
            file: file.map(Path::to_path_buf),
        })
    }

    /// The settings, each from the highest source that gives it. A value of
    /// the wrong type in the file is named by its key and the file.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        // Each group on its own first: inside `#[serde(flatten)]` an error
        // loses its key, and the whole extraction then fails only on a core key.
        self.extract::<HttpSettings>()?;
        self.extract::<CacheSettings>()?;
        self.extract::<AlertSettings>()?;
        self.extract::<RealtimeSettings>()?;
        self.extract::<ReconcileSettings>()?;
        self.extract()
    }

    fn extract<T: serde::de::DeserializeOwned>(&self) -> Result<T, ConfigError> {
        self.figment.extract().map_err(|e| {
            let path = self.file.clone().unwrap_or_default();
            // figment quotes serde's already quoted list of variants again.
            let message = e.kind.to_string().replace("``", "`");
            match e.path.last() {
                Some(key) => ConfigError::Named(format!(
                    "{key} in config file {} is invalid: {message}",
                    path.display()
                )),
                None => ConfigError::ParseFile { path, message },
            }
        })
    }

    /// The file, if `key`'s value comes from it (no flag or variable gave one).
    pub fn file_of(&self, key: &str) -> Option<&Path> {
        self.figment
            .find_metadata(key)?
            .source
            .as_ref()?
            .file_path()
    }
}

/// The file's keys, each one a setting.
fn read_file(path: &Path) -> Result<Dict, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |message: String| ConfigError::ParseFile {
        path: path.to_path_buf(),
        message,
    };
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        // toml's message may take several lines ("invalid array\nexpected `]`").
        let message = e.message().trim().replace('\n', ": ");
        match e.span() {
            Some(at) => bad(format!(
                "line {}: {message}",
                text[..at.start].matches('\n').count() + 1
            )),
            None => bad(message),
        }
    })?;
    let known = known_keys();
    if let Some(key) = table.keys().find(|k| !known.contains(k)) {
        return Err(bad(format!("unknown setting `{key}`")));
    }
    match Value::serialize(table) {
        Ok(Value::Dict(_, dict)) => Ok(dict),
        Ok(_) => unreachable!("a TOML table serializes as a map"),
        Err(e) => Err(bad(e.to_string())),
    }
}

/// The key of every setting: the ids clap gives [`Settings`]' flags.
fn known_keys() -> Vec<String> {
    use clap::Args;
    Settings::augment_args(clap::Command::new("settings"))
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .collect()
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// None for the commands that verify no delivery (migrate, events, replay).
    pub secrets: Option<SecretSet>,
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
    /// Applied deliveries older than this lose their raw body.
    pub raw_body_retention: std::time::Duration,
    pub cache_strategy: crate::feed::cache::Strategy,
    pub cache_invalidation: crate::feed::cache::Invalidation,
    pub cache_max_entries: u64,
    pub cache_max_bytes: u64,
    /// moka, or redis with its URL, prefix, TTL and local layer size.
    pub cache_backend: crate::feed::cache::Backend,
    /// The search index's directory; None keeps it in memory (tests, embedding).
    pub search_dir: Option<PathBuf>,
    /// The search writer's memory budget and commit pacing.
    pub search: crate::search::IndexOptions,
    /// Deliveries are acknowledged and stored, none is applied.
    pub apply_paused: bool,
    /// `/v1/realtime`: session-token keys, limits, resume window.
    pub realtime: crate::realtime::RealtimeConfig,
    /// The alert webhook and its thresholds (alerts/mod.rs).
    pub alerts: crate::alerts::AlertConfig,
    /// Scheduled reconciliation and the Clerk key (backfill/schedule.rs).
    pub reconcile: crate::backfill::schedule::ReconcileConfig,
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
/// A week of raw bodies: `replay --since` reaches back that far, which covers
/// recovering from a bad deploy noticed within days; older deliveries keep
/// their metadata (ids, type, times, status) but not the payload.
pub const DEFAULT_RAW_BODY_RETENTION_DAYS: f64 = 7.0;

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
        Self::from_settings(Layers::new(&cli_env, file)?.settings()?)
    }

    /// Validates merged settings, filling defaults.
    pub fn from_settings(s: Settings) -> Result<Config, ConfigError> {
        let secrets = match s.webhook_secret.as_deref().map(str::trim) {
            None | Some("") => return Err(ConfigError::MissingSecret),
            Some(v) => SecretSet::parse_list(v).map_err(ConfigError::BadSecret)?,
        };
        let rest = Self::without_secret(s)?;
        rest.check_exposure()?;
        Ok(Config {
            secrets: Some(secrets),
            ..rest
        })
    }

    /// Validates everything but the secret (for commands that never verify a
    /// delivery: migrate, events, replay); `secrets` is None.
    pub fn without_secret(s: Settings) -> Result<Config, ConfigError> {
        let realtime = s.realtime.build()?;
        let cache = s.cache.build()?;
        let alerts = s.alerts.build()?;
        let reconcile = s.reconcile.build()?;
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
        let http = s.http.build(max_body_bytes)?;
        let log_format = s.log_format.unwrap_or(LogFormat::Human);
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
        let body_days = s
            .raw_body_retention_days
            .unwrap_or(DEFAULT_RAW_BODY_RETENTION_DAYS);
        if !(body_days.is_finite() && body_days >= 0.0) {
            return Err(ConfigError::BadValue {
                name: "CLERKSYNC_RAW_BODY_RETENTION_DAYS",
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
        let search_memory_mb = s
            .search_writer_memory_mb
            .unwrap_or(crate::search::DEFAULT_WRITER_MEMORY_MB);
        if !(15..=4096).contains(&search_memory_mb) {
            return Err(ConfigError::BadValue {
                name: "CLERKSYNC_SEARCH_WRITER_MEMORY_MB",
                message: "must be between 15 and 4096 (MB)".into(),
            });
        }
        let commit_ms = s
            .search_commit_interval_ms
            .unwrap_or(crate::search::DEFAULT_COMMIT_INTERVAL_MS);
        if !(10..=60_000).contains(&commit_ms) {
            return Err(ConfigError::BadValue {
                name: "CLERKSYNC_SEARCH_COMMIT_INTERVAL_MS",
                message: "must be between 10 and 60000 milliseconds".into(),
            });
        }
        let search = crate::search::IndexOptions {
            commit_interval: std::time::Duration::from_millis(commit_ms),
            writer_memory_bytes: search_memory_mb * 1_000_000,
            ..crate::search::IndexOptions::default()
        };
        let token = |t: Option<String>| t.filter(|t| !t.trim().is_empty()).map(Token::new);
        Ok(Config {
            secrets: None,
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
            raw_body_retention: std::time::Duration::from_secs_f64(body_days * 86400.0),
            cache_strategy: cache.strategy,
            cache_invalidation: cache.invalidation,
            cache_max_entries: cache.max_entries,
            cache_max_bytes: cache.max_bytes,
            cache_backend: cache.backend,
            search_dir: Some(search_dir),
            search,
            apply_paused: s.apply_paused.unwrap_or(false),
            realtime,
            alerts,
            reconcile,
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

impl Config {
    /// The processor's part of the configuration.
    pub fn processor(&self) -> crate::processor::ProcessorConfig {
        use crate::processor::ProcessorConfig as P;
        P {
            max_concurrent: self.max_concurrent,
            max_attempts: self.max_attempts,
            lease: self.lease,
            batch_max: self.batch_max,
            retry_base: P::RETRY_BASE,
            retry_max: P::RETRY_MAX,
            archive_retention: self.archive_retention,
            feed_retention: self.feed_retention,
            raw_body_retention: self.raw_body_retention,
            purge_interval: P::PURGE_INTERVAL,
            paused: self.apply_paused,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    /// `given` layered over a config file of `toml`.
    fn layered(given: Settings, toml: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, toml).unwrap();
        Config::load(given, Some(&file))
    }

    #[test]
    fn alert_settings_are_layered_and_a_malformed_url_is_a_clear_error() {
        let secret = || Some(SECRET.to_string());
        let c = Config::from_settings(Settings {
            webhook_secret: secret(),
            ..Default::default()
        })
        .unwrap();
        assert!(c.alerts.url.is_none(), "alerts are off by default");
        assert_eq!(c.alerts.min_interval.as_secs(), 300);
        let cli = Settings {
            alerts: AlertSettings {
                alert_lag_seconds: Some(5),
                ..Default::default()
            },
            ..Default::default()
        };
        let file = format!(
            "webhook_secret = \"{SECRET}\"\n\
             alert_webhook_url = \"https://hooks.example.com/services/T1/B2/tok3n\"\n\
             alert_lag_seconds = 99\nalert_min_interval_secs = 7\n"
        );
        let c = layered(cli, &file).unwrap();
        assert_eq!(c.alerts.lag.as_secs(), 5);
        assert_eq!(c.alerts.min_interval.as_secs(), 7);
        assert!(
            !format!("{c:?}").contains("tok3n"),
            "Debug hides the URL's path"
        );
        let with = |alerts: AlertSettings| {
            Config::from_settings(Settings {
                webhook_secret: secret(),
                alerts,
                ..Default::default()
            })
        };
        for bad in [
            "hooks.example.com/tok3n",
            "ftp://h/tok3n",
            "not a url tok3n",
        ] {
            let e = with(AlertSettings {
                alert_webhook_url: Some(bad.into()),
                ..Default::default()
            })
            .unwrap_err()
            .to_string();
            assert!(e.contains("CLERKSYNC_ALERT_WEBHOOK_URL"), "{e}");
            assert!(!e.contains("tok3n"), "never echo the URL: {e}");
        }
        let e = with(AlertSettings {
            alert_signature_failures_per_minute: Some(0),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("SIGNATURE_FAILURES_PER_MINUTE"));
    }

    #[test]
    fn flags_win_over_file_and_the_file_over_defaults() {
        let cli = Settings {
            listen: Some("127.0.0.1:9".into()),
            ..Default::default()
        };
        let file = format!(
            "listen = \"127.0.0.1:10\"\nwebhook_secret = \"{SECRET}\"\n\
             cache_strategy = \"write-behind\"\nlog_format = \"text\"\nlease_secs = 5\n"
        );
        let c = layered(cli, &file).unwrap();
        assert_eq!(c.listen.port(), 9);
        assert_eq!(c.cache_strategy, crate::feed::cache::Strategy::WriteBehind);
        assert_eq!(c.log_format, LogFormat::Human, "text is human's other name");
        assert_eq!(c.lease.as_secs(), 5, "an integer where a number is due");
        assert_eq!(
            c.cache_invalidation,
            crate::feed::cache::Invalidation::Precise
        );
        assert!(c.secrets.is_some());
    }

    #[test]
    fn a_bad_file_names_the_key_and_the_file() {
        let given = || Settings {
            webhook_secret: Some(SECRET.into()),
            ..Default::default()
        };
        let e = layered(given(), "cache_backend = \"memcached\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cache_backend in config file"), "{e}");
        assert!(e.contains("c.toml is invalid") && e.contains("moka"), "{e}");
        let e = layered(given(), "http_max_connections = \"many\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("http_max_connections"), "{e}");
        let e = layered(given(), "lisen = \"127.0.0.1:1\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown setting `lisen`"), "{e}");
        let e = layered(given(), "listen = 1\nlisten = [")
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.toml is invalid: line 2: "), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }

    #[test]
    fn the_file_is_named_as_a_key_source_only_when_no_flag_gave_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:1\"\nbatch_max = 4\n").unwrap();
        let given = Settings {
            batch_max: Some(8),
            ..Default::default()
        };
        let layers = Layers::new(&given, Some(&file)).unwrap();
        assert_eq!(layers.file_of("listen"), Some(file.as_path()));
        assert_eq!(layers.file_of("batch_max"), None);
        assert_eq!(layers.file_of("data_dir"), None);
        assert_eq!(layers.settings().unwrap().batch_max, Some(8));
    }

    #[test]
    fn a_missing_secret_is_none_only_where_none_is_needed() {
        let c = Config::without_secret(Settings::default()).unwrap();
        assert!(c.secrets.is_none());
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
