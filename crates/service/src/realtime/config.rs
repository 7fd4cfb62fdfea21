//! The realtime stream's settings: limits, timers, and the keys and allow-lists
//! that session tokens are checked against.
//!
//! Owns: the defaults and the validation of every `CLERKSYNC_REALTIME_*` and
//! `CLERKSYNC_CLERK_*` setting, and loading the session-token public keys (PEM
//! or JWKS) once at start-up. Must never: read the network (keys come from the
//! configuration, never from Clerk at run time) or accept a setting that would
//! make a limit zero. See ARCHITECTURE.md.

use crate::realtime::resume::ResumeWindow;
use crate::setting::Invalid;
use jsonwebtoken::DecodingKey;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_MAX_CONNECTIONS_PER_TOKEN: usize = 100;
/// Anonymous connections (open server) from one client address.
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 10;
/// Longest session-token lifetime (`exp - iat`) accepted; Clerk's own live 60 s.
pub const DEFAULT_MAX_TOKEN_LIFETIME_SECS: u64 = 3600;
/// Most changes one `since` replay sends before the client is told to resync.
pub const DEFAULT_MAX_REPLAY: i64 = 10_000;
/// Subscribe requests per connection per minute (also the burst).
pub const DEFAULT_SUBSCRIBES_PER_MINUTE: u32 = 120;
pub const DEFAULT_QUEUE: usize = 1024;
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4096;
pub const DEFAULT_PING_SECS: u64 = 25;
pub const DEFAULT_IDLE_SECS: u64 = 60;
pub const DEFAULT_RETENTION_DAYS: f64 = 7.0;
pub const DEFAULT_RETENTION_ENTRIES: i64 = 100_000;
/// Clock skew tolerated on `exp` and `nbf` by default (Clerk's own SDKs allow 5 s).
pub const LEEWAY_SECS: i64 = 5;
/// Public keys that verify Clerk session tokens: a PEM key and/or a JWKS file.
#[derive(Clone)]
pub struct SessionKeys {
    /// (key id, key); a PEM key has no id and is tried for any token.
    pub(crate) keys: Vec<(Option<String>, DecodingKey)>,
}

impl fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self
            .keys
            .iter()
            .map(|(k, _)| k.as_deref().unwrap_or("pem"))
            .collect();
        write!(f, "SessionKeys({ids:?})")
    }
}

impl SessionKeys {
    /// An RSA public key in PEM (`-----BEGIN PUBLIC KEY-----`, as the Clerk
    /// dashboard shows it, or PKCS#1). A literal `\n` in an env value counts as
    /// a line break.
    pub fn from_pem(pem: &str) -> Result<Self, jsonwebtoken::errors::Error> {
        let pem = pem.trim().replace("\\n", "\n");
        Ok(Self {
            keys: vec![(None, DecodingKey::from_rsa_pem(pem.as_bytes())?)],
        })
    }

    /// The RSA keys of a JWKS document (Clerk's `/.well-known/jwks.json`).
    pub fn from_jwks(json: &str) -> Result<Self, String> {
        let set: jsonwebtoken::jwk::JwkSet =
            serde_json::from_str(json).map_err(|e| format!("not a JWKS document: {e}"))?;
        let keys: Vec<_> = set
            .keys
            .iter()
            .filter(|k| matches!(k.algorithm, jsonwebtoken::jwk::AlgorithmParameters::RSA(_)))
            .filter_map(|k| Some((k.common.key_id.clone(), DecodingKey::from_jwk(k).ok()?)))
            .collect();
        if keys.is_empty() {
            return Err("the JWKS document has no RSA key".into());
        }
        Ok(Self { keys })
    }

    fn merge(mut self, other: SessionKeys) -> Self {
        self.keys.extend(other.keys);
        self
    }
}

/// The realtime endpoint's settings, validated at start-up.
#[derive(Debug, Clone)]
pub struct RealtimeConfig {
    /// None: session tokens are not accepted.
    pub session_keys: Option<SessionKeys>,
    /// Allowed `iss` values; empty: any.
    pub issuers: Vec<String>,
    /// Allowed `azp` values (your frontend origins); empty: any. As in Clerk's
    /// SDKs, a token without `azp` passes.
    pub authorized_parties: Vec<String>,
    /// Seconds of clock skew tolerated on `exp` and `nbf`; also how long an
    /// open connection outlives its session token's `exp`.
    pub leeway_secs: i64,
    pub max_connections_per_token: usize,
    /// Anonymous connections (no token configured) from one client address.
    pub max_connections_per_address: usize,
    /// Longest `exp - iat` a session token may claim, in seconds.
    pub max_token_lifetime_secs: i64,
    /// Browser origins (`scheme://host[:port]`) allowed to connect. Empty: any
    /// origin when connecting needs a token (a page cannot lift one from a
    /// cookie), only same-origin pages on an open server.
    pub allowed_origins: Vec<String>,
    /// Most changes one `since` replay sends; more and the client resyncs.
    pub max_replay: i64,
    /// Subscribe requests one connection may make per minute (and in a burst).
    pub subscribes_per_minute: u32,
    /// Frames one connection may have waiting (and buffer during a resume).
    pub queue: usize,
    /// Largest client message accepted; a larger one closes the connection.
    pub max_message_bytes: usize,
    pub ping_interval: Duration,
    /// A connection holding no subscription this long is closed.
    pub idle_timeout: Duration,
    pub resume: ResumeWindow,
}

fn list(s: Option<&str>) -> Vec<String> {
    s.unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .collect()
}

/// The realtime settings as given (flags, `CLERKSYNC_CLERK_*` and
/// `CLERKSYNC_REALTIME_*`, config file keys): one field per setting, checked
/// by [`RealtimeSettings::build`].
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize, clap::Args)]
pub struct RealtimeSettings {
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

impl RealtimeSettings {
    /// The realtime configuration, defaults filled in and keys loaded.
    pub fn build(&self) -> Result<RealtimeConfig, Invalid> {
        let s = self;
        let pem = match s.clerk_jwt_key.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(p) => Some(SessionKeys::from_pem(p).map_err(|e| {
                Invalid::new(
                    "CLERKSYNC_CLERK_JWT_KEY",
                    format!("not an RSA public key in PEM form ({e}): paste the PEM public key from the Clerk dashboard's API keys page"),
                )
            })?),
        };
        let jwks = match &s.clerk_jwks_file {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    Invalid::new(
                        "CLERKSYNC_CLERK_JWKS_FILE",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                Some(SessionKeys::from_jwks(&text).map_err(|e| {
                    Invalid::new(
                        "CLERKSYNC_CLERK_JWKS_FILE",
                        format!("{}: {e}", path.display()),
                    )
                })?)
            }
        };
        let session_keys = match (pem, jwks) {
            (Some(a), Some(b)) => Some(a.merge(b)),
            (a, b) => a.or(b),
        };
        let positive = |v: Option<u64>, default: u64, name: &'static str| match v {
            Some(0) => Err(Invalid::new(name, "must be at least 1")),
            v => Ok(v.unwrap_or(default)),
        };
        let days = s.realtime_retention_days.unwrap_or(DEFAULT_RETENTION_DAYS);
        if !(days.is_finite() && days >= 0.0) {
            return Err(Invalid::new(
                "CLERKSYNC_REALTIME_RETENTION_DAYS",
                "must be a non-negative number of days",
            ));
        }
        let max_message_bytes = s
            .realtime_max_message_bytes
            .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
        if max_message_bytes < 256 {
            return Err(Invalid::new(
                "CLERKSYNC_REALTIME_MAX_MESSAGE_BYTES",
                "must be at least 256",
            ));
        }
        Ok(RealtimeConfig {
            session_keys,
            issuers: list(s.clerk_issuers.as_deref()),
            authorized_parties: list(s.clerk_authorized_parties.as_deref()),
            leeway_secs: s
                .clerk_leeway_secs
                .map_or(LEEWAY_SECS, |v| v.min(3600) as i64),
            max_connections_per_address: positive(
                s.realtime_max_connections_per_address.map(|v| v as u64),
                DEFAULT_MAX_CONNECTIONS_PER_ADDRESS as u64,
                "CLERKSYNC_REALTIME_MAX_CONNECTIONS_PER_ADDRESS",
            )? as usize,
            max_token_lifetime_secs: positive(
                s.clerk_max_token_lifetime_secs,
                DEFAULT_MAX_TOKEN_LIFETIME_SECS,
                "CLERKSYNC_CLERK_MAX_TOKEN_LIFETIME_SECS",
            )?
            .min(i64::MAX as u64) as i64,
            allowed_origins: list(s.allowed_origins.as_deref())
                .into_iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
            max_replay: positive(
                s.realtime_max_replay.map(|v| v.max(0) as u64),
                DEFAULT_MAX_REPLAY as u64,
                "CLERKSYNC_REALTIME_MAX_REPLAY",
            )?
            .min(i64::MAX as u64) as i64,
            subscribes_per_minute: positive(
                s.realtime_subscribes_per_minute.map(u64::from),
                DEFAULT_SUBSCRIBES_PER_MINUTE as u64,
                "CLERKSYNC_REALTIME_SUBSCRIBES_PER_MINUTE",
            )?
            .min(u32::MAX as u64) as u32,
            max_connections_per_token: positive(
                s.realtime_max_connections_per_token.map(|v| v as u64),
                DEFAULT_MAX_CONNECTIONS_PER_TOKEN as u64,
                "CLERKSYNC_REALTIME_MAX_CONNECTIONS_PER_TOKEN",
            )? as usize,
            queue: positive(
                s.realtime_queue.map(|v| v as u64),
                DEFAULT_QUEUE as u64,
                "CLERKSYNC_REALTIME_QUEUE",
            )? as usize,
            max_message_bytes,
            ping_interval: Duration::from_secs(positive(
                s.realtime_ping_secs,
                DEFAULT_PING_SECS,
                "CLERKSYNC_REALTIME_PING_SECS",
            )?),
            idle_timeout: Duration::from_secs(positive(
                s.realtime_idle_secs,
                DEFAULT_IDLE_SECS,
                "CLERKSYNC_REALTIME_IDLE_SECS",
            )?),
            resume: ResumeWindow {
                max_age: Duration::from_secs_f64(days * 86400.0),
                max_entries: s
                    .realtime_retention_entries
                    .unwrap_or(DEFAULT_RETENTION_ENTRIES)
                    .max(0),
            },
        })
    }
}

impl Default for RealtimeConfig {
    fn default() -> Self {
        RealtimeSettings::default()
            .build()
            .expect("the defaults are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_trimmed() {
        assert_eq!(list(Some(" a, ,b ")), vec!["a", "b"]);
        assert!(list(None).is_empty());
    }

    #[test]
    fn bad_settings_name_the_variable() {
        let e = RealtimeSettings {
            clerk_jwt_key: Some("not a key".into()),
            ..Default::default()
        }
        .build()
        .unwrap_err();
        assert!(e.to_string().contains("CLERKSYNC_CLERK_JWT_KEY"), "{e}");
        let e = RealtimeSettings {
            realtime_queue: Some(0),
            ..Default::default()
        }
        .build()
        .unwrap_err();
        assert!(e.to_string().contains("CLERKSYNC_REALTIME_QUEUE"), "{e}");
    }
}
