//! `GET /v1/realtime`: the WebSocket change stream.
//!
//! Owns: authenticating a connection (the server's API token, or a Clerk session
//! JWT verified locally against the configured public key), what each principal
//! may subscribe to, the client protocol (subscribe / unsubscribe / resume), and
//! each connection's two tasks: a controller that reads client frames and keeps
//! the heartbeat, and a writer that alone writes to the socket (queued frames,
//! replays, close frames). Must never: let a session see a topic it is not
//! entitled to (its own user; organizations it is a live member of, re-checked
//! when a membership is deleted), make a network call to verify a token, block
//! the hub on a slow socket, or echo a token in an error.
//!
//! Protocol (text frames, JSON):
//! - connect with `Authorization: Bearer <token>` or `?token=<token>` (browsers
//!   cannot set headers on a WebSocket). A bad or missing token is refused with
//!   HTTP 401 before the upgrade, too many connections for one token with 429.
//!   With neither `CLERKSYNC_API_TOKEN` nor a Clerk key configured the stream is
//!   open, like the read API: on a loopback address and `Host` only (421), to
//!   same-origin pages and `CLERKSYNC_ALLOWED_ORIGINS` only (403: a page on
//!   any site could otherwise read it), and with a per-address share (429) of
//!   the anonymous connection budget. Session tokens need `sid` and a lifetime
//!   (`exp - iat`) within `CLERKSYNC_CLERK_MAX_TOKEN_LIFETIME_SECS`.
//! - subscribe requests past `CLERKSYNC_REALTIME_SUBSCRIBES_PER_MINUTE` get an
//!   error frame; a `since` with more than `CLERKSYNC_REALTIME_MAX_REPLAY`
//!   changes of the topic gets `resync`.
//! - server: `{"type":"ready","user_id":..|null,"seq":N}` once connected.
//! - client: `{"type":"subscribe","topic":"user:ID"|"org:ID"|"*","since":SEQ?,"snapshot":bool?}`
//!   → `{"type":"subscribed","topic":..,"seq":N}` (live after N); with
//!   `snapshot` then `{"type":"snapshot","topic":..,"seq":N,"data":{"user"|"organization":..,
//!   "memberships":[..],"truncated":bool}}` (a browser cannot call the read API
//!   with a session token; live changes after N follow); with `since`
//!   `{"type":"subscribed","topic":..,"since":SEQ}`, the missed changes, then
//!   `{"type":"replayed","topic":..,"seq":N,"count":C}` and live changes after N;
//!   a `since` outside the resume window gets `{"type":"resync",..}` (reload
//!   the topic's state from the read API) and the subscription goes on live.
//!   Denied: `{"type":"error","topic":..,"error":".."}`.
//! - client: `{"type":"unsubscribe","topic":..}` → `{"type":"unsubscribed",..}`;
//!   `{"type":"ping"}` → `{"type":"pong"}`.
//! - changes: `{"seq","topic","type","kind","id","changed_fields","committed_at","data"}`.
//! - a deleted membership ends the session's `org:` subscription with
//!   `{"type":"unsubscribed","topic":..,"reason":"membership deleted"}`.
//! - too slow (queue full): `{"type":"resync","reason":..}` and close 4008; the
//!   client may reconnect and resume each topic from the last `seq` it saw.
//! - session expiry: `ready` carries `expires_at` (the session token's `exp`,
//!   unix seconds; null for the API token). Before then the client sends
//!   `{"type":"auth","token":"<fresh session token>"}` (Clerk session tokens
//!   live about a minute: send each refreshed one), verified exactly like the
//!   connecting token and for the same `sub` →
//!   `{"type":"authenticated","user_id":..,"expires_at":..}`; a refused one gets
//!   `{"type":"error","error":"auth refused: .."}` and changes nothing. Past
//!   `expires_at` + the leeway (`CLERKSYNC_CLERK_LEEWAY_SECS`) the connection is
//!   closed with code 4001, reason "token expired"; reconnect with a fresh token
//!   and resume with `since`.
//!
//! What a session may see is enforced from the synced store (memberships), and
//! for no longer than its token (refreshed or not) is valid.

use crate::api::error::ApiError;
use crate::api::extract::Query;
use crate::app::AppState;
use crate::clock::Clock;
use crate::config::{ConfigError, Settings};
use crate::feed::count_filtered;
use crate::feed::realtime::{
    check_resume, control, feed_filter, is_member, replay_page, Connection, HubError, Outbound,
    RealtimeHub, ResumeRefused, ResumeWindow, Topic, Viewer,
};
use crate::telemetry::metrics::{RealtimeMetrics, RejectReason};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Extension;
use axum::{Json, Router};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::json;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

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
/// Subscriptions one connection may hold.
pub const MAX_SUBSCRIPTIONS: usize = 100;
/// Longest one socket write may take before the connection is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing connection's writer may take to flush what is queued.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Feed entries read per replay page.
const REPLAY_PAGE: i64 = 500;

/// Close codes (4000-4999 are the application's).
pub mod close_code {
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const TOO_BIG: u16 = 1009;
    pub const IDLE: u16 = 4000;
    pub const TOKEN_EXPIRED: u16 = 4001;
    pub const NO_PONG: u16 = 4002;
    pub const TOO_SLOW: u16 = 4008;
}

// ---------------------------------------------------------------------------
// Configuration.

/// Public keys that verify Clerk session tokens: a PEM key and/or a JWKS file.
#[derive(Clone)]
pub struct SessionKeys {
    /// (key id, key); a PEM key has no id and is tried for any token.
    keys: Vec<(Option<String>, DecodingKey)>,
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

fn bad(name: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::BadValue {
        name,
        message: message.into(),
    }
}

impl RealtimeConfig {
    pub fn from_settings(s: &Settings) -> Result<Self, ConfigError> {
        let pem = match s.clerk_jwt_key.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(p) => Some(SessionKeys::from_pem(p).map_err(|e| {
                bad(
                    "CLERKSYNC_CLERK_JWT_KEY",
                    format!("not an RSA public key in PEM form ({e}): paste the PEM public key from the Clerk dashboard's API keys page"),
                )
            })?),
        };
        let jwks = match &s.clerk_jwks_file {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    bad(
                        "CLERKSYNC_CLERK_JWKS_FILE",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                Some(SessionKeys::from_jwks(&text).map_err(|e| {
                    bad(
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
            Some(0) => Err(bad(name, "must be at least 1")),
            v => Ok(v.unwrap_or(default)),
        };
        let days = s.realtime_retention_days.unwrap_or(DEFAULT_RETENTION_DAYS);
        if !(days.is_finite() && days >= 0.0) {
            return Err(bad(
                "CLERKSYNC_REALTIME_RETENTION_DAYS",
                "must be a non-negative number of days",
            ));
        }
        let max_message_bytes = s
            .realtime_max_message_bytes
            .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
        if max_message_bytes < 256 {
            return Err(bad(
                "CLERKSYNC_REALTIME_MAX_MESSAGE_BYTES",
                "must be at least 256",
            ));
        }
        Ok(Self {
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
        Self::from_settings(&Settings::default()).expect("the defaults are valid")
    }
}

// ---------------------------------------------------------------------------
// Authentication.

/// Who opened a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The API token, or anyone on a server with no token configured.
    Service,
    /// A Clerk session of this user (`sub`).
    User(String),
}

impl Principal {
    /// The connection-limit key: one per token identity (a user's sessions and
    /// tabs share one).
    fn key(&self) -> String {
        match self {
            Principal::Service => "service".into(),
            Principal::User(sub) => format!("user:{sub}"),
        }
    }

    fn viewer(&self) -> Viewer {
        match self {
            Principal::Service => Viewer::Service,
            Principal::User(sub) => Viewer::User(sub.clone()),
        }
    }
}

/// Why a token was refused. Messages name the problem, never the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing token: send Authorization: Bearer <token> or ?token=<token>")]
    Missing,
    #[error("invalid token")]
    Invalid,
    #[error("malformed session token")]
    Malformed,
    #[error("session token signature does not verify")]
    BadSignature,
    #[error("session token key id is not among the configured keys")]
    UnknownKey,
    #[error("session token must be signed with RS256")]
    WrongAlgorithm,
    #[error("session token has expired")]
    Expired,
    #[error("session token is not valid yet")]
    NotYetValid,
    #[error("session token has no {0} claim")]
    MissingClaim(&'static str),
    #[error("session token issuer is not allowed")]
    IssuerNotAllowed,
    #[error("session token authorized party (azp) is not allowed")]
    PartyNotAllowed,
    #[error("session token lives longer than {0} s (exp - iat): use a Clerk session token, not a long-lived JWT template")]
    TooLong(i64),
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    sid: Option<String>,
    iat: Option<i64>,
    exp: Option<i64>,
    nbf: Option<i64>,
    iss: Option<String>,
    azp: Option<String>,
}

impl AuthError {
    /// The refusal metric's label.
    pub fn reason(&self) -> RejectReason {
        match self {
            AuthError::Missing => RejectReason::missing_token,
            AuthError::Expired => RejectReason::expired_token,
            AuthError::IssuerNotAllowed | AuthError::PartyNotAllowed => RejectReason::not_allowed,
            _ => RejectReason::invalid_token,
        }
    }
}

/// Who `token` is. `now` is in seconds (the app's injectable clock).
pub fn authenticate(
    config: &crate::config::Config,
    token: Option<&str>,
    now: i64,
) -> Result<Principal, AuthError> {
    authenticate_until(config, token, now).map(|(p, _)| p)
}

/// Who `token` is, and until when (a session token's `exp`, unix seconds;
/// None for the API token and an open server).
pub fn authenticate_until(
    config: &crate::config::Config,
    token: Option<&str>,
    now: i64,
) -> Result<(Principal, Option<i64>), AuthError> {
    let rt = &config.realtime;
    if config.api_token.is_none() && rt.session_keys.is_none() {
        return Ok((Principal::Service, None));
    }
    let token = token.map(str::trim).filter(|t| !t.is_empty());
    let Some(token) = token else {
        return Err(AuthError::Missing);
    };
    if config.api_token.as_ref().is_some_and(|t| t.matches(token)) {
        return Ok((Principal::Service, None));
    }
    match &rt.session_keys {
        Some(keys) => verify_session_claims(rt, keys, token, now)
            .map(|s| (Principal::User(s.sub), Some(s.exp))),
        // No key to verify a session with: a JWT is as unknown as any string.
        None => Err(AuthError::Invalid),
    }
}

/// A verified session token's subject and expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub sub: String,
    /// Unix seconds.
    pub exp: i64,
}

/// Verifies a Clerk session token; returns its `sub`.
pub fn verify_session(
    rt: &RealtimeConfig,
    keys: &SessionKeys,
    token: &str,
    now: i64,
) -> Result<String, AuthError> {
    verify_session_claims(rt, keys, token, now).map(|s| s.sub)
}

/// Verifies a Clerk session token: signature, `exp`/`nbf` with the leeway, a
/// `sid`, a lifetime (`exp - iat`) within the cap, `iss` and `azp` allow-lists,
/// a non-empty `sub`.
pub fn verify_session_claims(
    rt: &RealtimeConfig,
    keys: &SessionKeys,
    token: &str,
    now: i64,
) -> Result<Session, AuthError> {
    use jsonwebtoken::errors::ErrorKind;
    let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
    if header.alg != Algorithm::RS256 {
        return Err(AuthError::WrongAlgorithm);
    }
    // Times and claims are checked below with the app's clock; the library
    // checks only the signature.
    let mut v = Validation::new(Algorithm::RS256);
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.required_spec_claims.clear();
    let candidates: Vec<&DecodingKey> = keys
        .keys
        .iter()
        .filter(|(kid, _)| match (kid, &header.kid) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        })
        .map(|(_, k)| k)
        .collect();
    if candidates.is_empty() {
        return Err(AuthError::UnknownKey);
    }
    let mut err = AuthError::BadSignature;
    let mut claims = None;
    for key in candidates {
        match jsonwebtoken::decode::<Claims>(token, key, &v) {
            Ok(d) => {
                claims = Some(d.claims);
                break;
            }
            Err(e) => {
                err = match e.kind() {
                    ErrorKind::InvalidSignature
                    | ErrorKind::Crypto(_)
                    | ErrorKind::InvalidRsaKey(_) => AuthError::BadSignature,
                    ErrorKind::InvalidAlgorithm => AuthError::WrongAlgorithm,
                    _ => AuthError::Malformed,
                };
                if err != AuthError::BadSignature {
                    break;
                }
            }
        }
    }
    let c = claims.ok_or(err)?;
    let exp = c.exp.ok_or(AuthError::MissingClaim("exp"))?;
    if now > exp.saturating_add(rt.leeway_secs) {
        return Err(AuthError::Expired);
    }
    if c.nbf
        .is_some_and(|nbf| nbf > now.saturating_add(rt.leeway_secs))
    {
        return Err(AuthError::NotYetValid);
    }
    // A session token names its session; a JWT template handed to a third
    // party need not, and may live for years: neither opens a stream.
    if c.sid.as_deref().is_none_or(str::is_empty) {
        return Err(AuthError::MissingClaim("sid"));
    }
    let issued = c.iat.unwrap_or(now);
    if exp.saturating_sub(issued) > rt.max_token_lifetime_secs {
        return Err(AuthError::TooLong(rt.max_token_lifetime_secs));
    }
    if !rt.issuers.is_empty() {
        let iss = c.iss.as_deref().ok_or(AuthError::MissingClaim("iss"))?;
        if !rt.issuers.iter().any(|i| i == iss) {
            return Err(AuthError::IssuerNotAllowed);
        }
    }
    if let Some(azp) = c.azp.as_deref() {
        if !rt.authorized_parties.is_empty() && !rt.authorized_parties.iter().any(|p| p == azp) {
            return Err(AuthError::PartyNotAllowed);
        }
    }
    match c.sub {
        Some(sub) if !sub.is_empty() => Ok(Session { sub, exp }),
        _ => Err(AuthError::MissingClaim("sub")),
    }
}

/// Why a connection was refused before the upgrade.
#[derive(Debug, thiserror::Error)]
pub enum RealtimeError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("{0}")]
    Hub(#[from] HubError),
    #[error("not a WebSocket request: {0}")]
    NotWebSocket(String),
    /// A disallowed Origin or Host.
    #[error(transparent)]
    Refused(#[from] ApiError),
}

impl IntoResponse for RealtimeError {
    fn into_response(self) -> Response {
        match self {
            RealtimeError::Auth(e) => ApiError::Unauthorized(e.to_string()).into_response(),
            // ApiError has no 429; the body has its shape.
            RealtimeError::Hub(e @ HubError::TooManyConnections(..)) => (
                StatusCode::TOO_MANY_REQUESTS,
                Json(json!({"error": e.to_string()})),
            )
                .into_response(),
            RealtimeError::Hub(e) => ApiError::internal(e).into_response(),
            RealtimeError::NotWebSocket(m) => {
                ApiError::BadRequest(format!("not a WebSocket request: {m}")).into_response()
            }
            RealtimeError::Refused(e) => e.into_response(),
        }
    }
}

// ---------------------------------------------------------------------------
// The endpoint.

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/realtime", get(connect))
}

#[derive(Deserialize)]
struct ConnectParams {
    token: Option<String>,
}

fn header_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Is the stream open to anyone (no API token, no session keys)?
fn is_open(config: &crate::config::Config) -> bool {
    config.api_token.is_none() && config.realtime.session_keys.is_none()
}

/// Against cross-site WebSocket hijacking: browsers send `Origin` on a
/// WebSocket handshake and let any page open one. No Origin (not a browser)
/// and same-origin pages pass; other origins pass when listed in
/// `allowed_origins`, or, with no list, when connecting needs a token (which a
/// page cannot take from a cookie). On an open server nothing else passes.
fn check_origin(config: &crate::config::Config, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(origin) = headers.get(axum::http::header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin
        .to_str()
        .unwrap_or("")
        .trim()
        .trim_end_matches('/')
        .to_ascii_lowercase();
    let rt = &config.realtime;
    if rt.allowed_origins.contains(&origin) {
        return Ok(());
    }
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| h.trim().to_ascii_lowercase());
    let origin_host = origin.split_once("://").map(|(_, h)| h);
    if origin_host.is_some() && origin_host == host.as_deref() {
        return Ok(());
    }
    if rt.allowed_origins.is_empty() && !is_open(config) {
        return Ok(());
    }
    Err(ApiError::Forbidden(
        "this origin may not open the realtime stream: add it to CLERKSYNC_ALLOWED_ORIGINS".into(),
    ))
}

async fn connect(
    State(state): State<AppState>,
    Query(p): Query<ConnectParams>,
    headers: HeaderMap,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, RealtimeError> {
    // Authenticate before looking at the upgrade: a refused client learns why
    // (HTTP 401 with a JSON body) and costs no socket task.
    let metrics = &state.metrics.realtime;
    check_origin(&state.config, &headers)
        .inspect_err(|_| metrics.reject(RejectReason::origin_denied))?;
    if is_open(&state.config) {
        crate::api::read::local_host_only(&state.config, &headers)?;
    }
    let token = header_token(&headers).or(p.token.as_deref());
    let (principal, expires_at) = authenticate_until(&state.config, token, state.clock.now_secs())
        .inspect_err(|e| {
            metrics.reject(e.reason());
        })?;
    let ws = ws.map_err(|e| RealtimeError::NotWebSocket(e.body_text()))?;
    let rt = &state.config.realtime;
    let mut budgets = vec![(principal.key(), rt.max_connections_per_token)];
    // Anonymous clients share the one "service" budget; each address gets
    // only part of it, so one client cannot take every slot. Without the peer
    // address (a server not wired with connect info) only the shared budget holds.
    if is_open(&state.config) {
        if let Some(Extension(ConnectInfo(addr))) = peer {
            budgets.push((
                format!("addr:{}", addr.ip()),
                rt.max_connections_per_address,
            ));
        }
    }
    let (conn, tx, rx) = state
        .realtime
        .connect(budgets, principal.viewer())
        .inspect_err(|e| {
            if matches!(e, HubError::TooManyConnections(..)) {
                metrics.reject(RejectReason::too_many_connections);
            }
        })?;
    let limit = rt.max_message_bytes;
    Ok(ws
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| serve(socket, state, principal, expires_at, conn, tx, rx)))
}

/// Counts an open connection while it lives.
struct Open(RealtimeMetrics);

impl Open {
    fn new(m: &RealtimeMetrics) -> Self {
        m.connections.inc();
        Open(m.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.connections.dec();
    }
}

async fn serve(
    socket: WebSocket,
    state: AppState,
    principal: Principal,
    expires_at: Option<i64>,
    conn: Connection,
    tx: mpsc::Sender<Outbound>,
    rx: mpsc::Receiver<Outbound>,
) {
    let _open = Open::new(&state.metrics.realtime);
    let hub = state.realtime.clone();
    let (sink, stream) = socket.split();
    let abort = CancellationToken::new();
    let writer_done = CancellationToken::new();
    let writer = Writer {
        sink,
        rx,
        hub: hub.clone(),
        conn: conn.id,
        viewer: principal.viewer(),
        too_slow: conn.too_slow.clone(),
        abort: abort.clone(),
        metrics: state.metrics.realtime.clone(),
        clock: state.clock.clone(),
    };
    let done = writer_done.clone();
    let writer = tokio::spawn(async move {
        writer.run().await;
        done.cancel();
    });
    let user_id = match &principal {
        Principal::User(sub) => Some(sub.clone()),
        Principal::Service => None,
    };
    let _ = tx.try_send(control(
        json!({"type": "ready", "user_id": user_id, "seq": hub.position(), "expires_at": expires_at}),
    ));
    let mut ctl = Controller {
        state: &state,
        hub: &hub,
        conn: conn.id,
        principal: &principal,
        tx: &tx,
        expires_at,
        subscribes_left: f64::from(state.config.realtime.subscribes_per_minute),
        refilled_at: Instant::now(),
    };
    if let Some((code, reason)) = ctl.run(stream, &writer_done).await {
        let _ = tx.try_send(Outbound::Close { code, reason });
    }
    drop(tx);
    // The hub lets go of its sender too: the writer's queue ends after what is
    // already in it.
    drop(conn);
    if tokio::time::timeout(CLOSE_GRACE, writer).await.is_err() {
        abort.cancel();
    }
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ClientMessage {
    Subscribe {
        topic: String,
        since: Option<i64>,
        #[serde(default)]
        snapshot: bool,
    },
    Unsubscribe {
        topic: String,
    },
    /// A refreshed session token (same `sub`) that extends the connection.
    Auth {
        token: String,
    },
    Ping,
}

/// One client frame; anything else is answered with an error frame.
pub(crate) fn parse_client_message(text: &str) -> Result<ClientMessage, serde_json::Error> {
    serde_json::from_str(text)
}

/// Reads client frames, answers them, keeps the heartbeat and the idle limit.
struct Controller<'a> {
    state: &'a AppState,
    hub: &'a Arc<RealtimeHub>,
    conn: u64,
    principal: &'a Principal,
    tx: &'a mpsc::Sender<Outbound>,
    /// The session token's `exp` (unix seconds), moved on by `auth` messages.
    expires_at: Option<i64>,
    /// Subscribe requests left (a token bucket of `subscribes_per_minute`,
    /// refilled continuously) and when it was last refilled.
    subscribes_left: f64,
    refilled_at: Instant,
}

/// A reason to close: (code, reason).
type Close = (u16, String);

impl Controller<'_> {
    /// Runs until the client or the writer ends the connection; returns the
    /// close frame to send, if any.
    async fn run(
        &mut self,
        mut stream: SplitStream<WebSocket>,
        writer_done: &CancellationToken,
    ) -> Option<Close> {
        let rt = &self.state.config.realtime;
        let mut ping =
            tokio::time::interval_at(Instant::now() + rt.ping_interval, rt.ping_interval);
        // After a stall (a slow answer), the next ping is one interval later, not
        // a burst of two that would count the first as unanswered.
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut awaiting_pong = false;
        // When the connection was last seen holding a subscription.
        let mut busy_at = Instant::now();
        loop {
            let idle_check = busy_at + rt.idle_timeout;
            let expiry = self.expiry_check();
            tokio::select! {
                _ = writer_done.cancelled() => return None,
                _ = self.hub.shutdown().cancelled() => return None,
                _ = async {
                    match expiry {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {
                    if self.expired() {
                        self.state.metrics.realtime.reject(RejectReason::session_expired);
                        return Some((close_code::TOKEN_EXPIRED, "token expired".into()));
                    }
                }
                _ = ping.tick() => {
                    if awaiting_pong {
                        return Some((close_code::NO_PONG, format!("no pong within {} s", rt.ping_interval.as_secs())));
                    }
                    awaiting_pong = true;
                    // A full queue means the hub is about to drop this connection anyway.
                    let _ = self.tx.try_send(Outbound::Ping);
                }
                _ = tokio::time::sleep_until(idle_check) => {
                    if self.hub.subscription_count(self.conn) > 0 {
                        busy_at = Instant::now();
                    } else {
                        return Some((close_code::IDLE, format!("idle: no subscription for {} s", rt.idle_timeout.as_secs())));
                    }
                }
                msg = stream.next() => {
                    // Any frame proves the client is alive.
                    awaiting_pong = false;
                    match msg {
                        None | Some(Ok(Message::Close(_))) => return None,
                        Some(Err(e)) => return Some(read_error(&e, rt.max_message_bytes)),
                        Some(Ok(Message::Text(t))) => {
                            if let Err(close) = self.handle(&t).await {
                                return Some(close);
                            }
                            if self.hub.subscription_count(self.conn) > 0 {
                                busy_at = Instant::now();
                            }
                        }
                        Some(Ok(Message::Binary(_))) => {
                            let m = json!({"type": "error", "error": "binary messages are not supported: send JSON text"});
                            if let Err(close) = self.reply(m).await {
                                return Some(close);
                            }
                        }
                        // Pings are answered by the WebSocket layer.
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    }
                }
            }
        }
    }

    /// The last moment the session token is valid (`exp` + leeway, by the app's
    /// clock), as a timer deadline; None for connections that do not expire.
    fn expiry_check(&self) -> Option<Instant> {
        let exp = self.expires_at?;
        let leeway = self.state.config.realtime.leeway_secs;
        // Expired once `now_secs > exp + leeway`, i.e. from the next whole second.
        let end_ms = exp
            .saturating_add(leeway)
            .saturating_add(1)
            .saturating_mul(1000);
        let left = end_ms.saturating_sub(self.state.clock.now_ms()).max(0) as u64;
        Some(Instant::now() + Duration::from_millis(left))
    }

    fn expired(&self) -> bool {
        let leeway = self.state.config.realtime.leeway_secs;
        self.expires_at
            .is_some_and(|exp| self.state.clock.now_secs() > exp.saturating_add(leeway))
    }

    /// `{"type":"auth","token":..}`: a refreshed session token for the same user
    /// moves the connection's expiry; anything else changes nothing.
    async fn refresh(&mut self, token: &str) -> Result<(), Close> {
        let metrics = &self.state.metrics.realtime;
        let refuse =
            |why: String| json!({"type": "error", "error": format!("auth refused: {why}")});
        let Principal::User(me) = self.principal else {
            metrics.reject(RejectReason::refresh_refused);
            return self
                .reply(refuse(
                    "this connection does not expire: auth is for session tokens".into(),
                ))
                .await;
        };
        let rt = &self.state.config.realtime;
        let Some(keys) = &rt.session_keys else {
            metrics.reject(RejectReason::refresh_refused);
            return self
                .reply(refuse("session tokens are not configured".into()))
                .await;
        };
        match verify_session_claims(rt, keys, token.trim(), self.state.clock.now_secs()) {
            Err(e) => {
                metrics.reject(e.reason());
                self.reply(refuse(e.to_string())).await
            }
            Ok(s) if s.sub != *me => {
                metrics.reject(RejectReason::refresh_refused);
                self.reply(refuse(
                    "the token is for another user: open a new connection".into(),
                ))
                .await
            }
            Ok(s) => {
                self.expires_at = Some(s.exp);
                self.reply(json!({"type": "authenticated", "user_id": me, "expires_at": s.exp}))
                    .await
            }
        }
    }

    /// Queues an answer; a client that does not read its answers is closed.
    async fn reply(&self, v: serde_json::Value) -> Result<(), Close> {
        self.queue(control(v)).await
    }

    async fn queue(&self, out: Outbound) -> Result<(), Close> {
        let wait = self.state.config.realtime.ping_interval;
        match tokio::time::timeout(wait, self.tx.send(out)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err((
                close_code::TOO_SLOW,
                "too slow: answers are not being read".into(),
            )),
            Err(_) => {
                self.state.metrics.realtime.resyncs.inc();
                Err((
                    close_code::TOO_SLOW,
                    "too slow: answers are not being read".into(),
                ))
            }
        }
    }

    async fn handle(&mut self, text: &str) -> Result<(), Close> {
        let msg = match parse_client_message(text) {
            Ok(m) => m,
            Err(e) => {
                return self
                    .reply(json!({"type": "error", "error": format!("malformed message: {e}")}))
                    .await
            }
        };
        match msg {
            ClientMessage::Ping => self.reply(json!({"type": "pong"})).await,
            ClientMessage::Auth { token } => self.refresh(&token).await,
            ClientMessage::Unsubscribe { topic } => match Topic::parse(&topic) {
                Ok(t) if self.hub.unsubscribe(self.conn, &t) => {
                    self.reply(
                        json!({"type": "unsubscribed", "topic": topic, "reason": "requested"}),
                    )
                    .await
                }
                Ok(_) => {
                    self.reply(json!({"type": "error", "topic": topic, "error": "not subscribed"}))
                        .await
                }
                Err(e) => {
                    self.reply(json!({"type": "error", "topic": topic, "error": e.to_string()}))
                        .await
                }
            },
            ClientMessage::Subscribe {
                topic,
                since,
                snapshot,
            } => {
                if !self.take_subscribe() {
                    let per_minute = self.state.config.realtime.subscribes_per_minute;
                    self.state
                        .metrics
                        .realtime
                        .reject(RejectReason::subscribe_rate);
                    return self
                        .reply(json!({"type": "error", "topic": topic, "error": format!("too many subscribe requests: at most {per_minute} per minute")}))
                        .await;
                }
                self.subscribe(topic, since, snapshot).await
            }
        }
    }

    /// Takes one subscribe request from the connection's allowance: each one
    /// may cost a membership check, a snapshot or a replay.
    fn take_subscribe(&mut self) -> bool {
        let per_minute = f64::from(self.state.config.realtime.subscribes_per_minute);
        let now = Instant::now();
        let refill = now.duration_since(self.refilled_at).as_secs_f64() * per_minute / 60.0;
        self.refilled_at = now;
        self.subscribes_left = (self.subscribes_left + refill).min(per_minute);
        if self.subscribes_left >= 1.0 {
            self.subscribes_left -= 1.0;
            true
        } else {
            false
        }
    }

    async fn subscribe(
        &mut self,
        raw: String,
        since: Option<i64>,
        snapshot: bool,
    ) -> Result<(), Close> {
        let deny = |error: String| json!({"type": "error", "topic": raw, "error": error});
        let topic = match Topic::parse(&raw) {
            Ok(t) => t,
            Err(e) => return self.reply(deny(e.to_string())).await,
        };
        if let Principal::User(me) = self.principal {
            let refusal = match &topic {
                Topic::All => Some("topic * needs the API token"),
                Topic::User(id) if id != me => {
                    Some("not allowed: a session may subscribe only to its own user")
                }
                _ => None,
            };
            if let Some(r) = refusal {
                self.state
                    .metrics
                    .realtime
                    .reject(RejectReason::topic_denied);
                return self.reply(deny(r.into())).await;
            }
        }
        let bad_request = match (since, snapshot, &topic) {
            (Some(s), _, _) if s < 0 => Some("since must be a sequence number >= 0"),
            (Some(_), true, _) => Some("since and snapshot exclude each other"),
            (None, true, Topic::All) => Some("snapshot is for user: and org: topics"),
            _ => None,
        };
        if let Some(r) = bad_request {
            return self.reply(deny(r.into())).await;
        }
        // Registered first, checked second: a membership deleted between the
        // check and the registration would otherwise never revoke it. Until
        // `go_live`, its live frames wait in the hub.
        let (start, sub) = match self.hub.begin(self.conn, &topic, MAX_SUBSCRIPTIONS) {
            Ok(p) => p,
            Err(e) => return self.reply(deny(e.to_string())).await,
        };
        if let (Principal::User(me), Topic::Org(org)) = (self.principal, &topic) {
            let refusal = match is_member(&self.state.db, me, org).await {
                Ok(true) => None,
                Ok(false) => {
                    self.state
                        .metrics
                        .realtime
                        .reject(RejectReason::topic_denied);
                    Some("not allowed: not a member of this organization".to_string())
                }
                Err(e) => {
                    tracing::error!(error = %e, "realtime: membership check failed");
                    Some("internal error".to_string())
                }
            };
            if let Some(r) = refusal {
                self.hub.unsubscribe(self.conn, &topic);
                return self.reply(deny(r)).await;
            }
        }
        let frame = |v: serde_json::Value| Utf8Bytes::from(v.to_string());
        if snapshot {
            // Read after registering: the live frames meanwhile are buffered
            // and follow the snapshot, so nothing falls between the two.
            let state = match crate::feed::realtime::snapshot(
                &self.state.db,
                &topic,
                &self.principal.viewer(),
            )
            .await
            {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(error = %e, "realtime: snapshot failed");
                    self.hub.unsubscribe(self.conn, &topic);
                    return self.reply(deny("internal error".into())).await;
                }
            };
            let _ = self.hub.go_live(
                self.conn,
                &topic,
                sub,
                start,
                vec![
                    frame(json!({"type": "subscribed", "topic": raw, "seq": start})),
                    frame(json!({"type": "snapshot", "topic": raw, "seq": start, "data": state})),
                ],
            );
            return Ok(());
        }
        let Some(since) = since else {
            // The ack goes out with the switch to live, under the hub's lock: a
            // revocation in the meantime sends its notice instead (NotSubscribed).
            let _ = self.hub.go_live(
                self.conn,
                &topic,
                sub,
                start,
                vec![frame(
                    json!({"type": "subscribed", "topic": raw, "seq": start}),
                )],
            );
            return Ok(());
        };
        let now = self.state.clock.now_ms();
        let rt = &self.state.config.realtime;
        let resume = match check_resume(&self.state.db, since, now, &rt.resume).await {
            // A replay is bounded: past `max_replay` changes the client
            // reloads the topic's state instead (cheaper for both sides).
            Ok(Ok(())) => count_filtered(
                &self.state.db,
                feed_filter(&topic),
                since,
                rt.max_replay + 1,
            )
            .await
            .map(|n| {
                if n > rt.max_replay {
                    Err(ResumeRefused::TooMany(rt.max_replay))
                } else {
                    Ok(())
                }
            }),
            other => other,
        };
        match resume {
            Ok(Ok(())) => {
                // The writer acks, replays, then lets the buffered live frames through.
                let ack = json!({"type": "subscribed", "topic": raw, "since": since});
                self.queue(Outbound::Replay {
                    topic,
                    sub,
                    since,
                    ack: Utf8Bytes::from(ack.to_string()),
                })
                .await
            }
            Ok(Err(refused)) => {
                self.reply(json!({"type": "resync", "topic": raw, "reason": refused.to_string()}))
                    .await?;
                let _ = self.hub.go_live(
                    self.conn,
                    &topic,
                    sub,
                    start,
                    vec![frame(
                        json!({"type": "subscribed", "topic": raw, "seq": start}),
                    )],
                );
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "realtime: resume check failed");
                self.hub.unsubscribe(self.conn, &topic);
                self.reply(deny("internal error".into())).await
            }
        }
    }
}

/// The close for a failed read: too big (the limit), or a protocol error.
fn read_error(e: &axum::Error, limit: usize) -> Close {
    // axum wraps tungstenite's error without exposing its type; its capacity
    // error reads "Space limit exceeded: Message too long: N > M".
    if e.to_string().contains("Space limit exceeded") {
        (
            close_code::TOO_BIG,
            format!("message too big: the limit is {limit} bytes"),
        )
    } else {
        (close_code::PROTOCOL_ERROR, "protocol error".into())
    }
}

/// The one task that writes to the socket.
struct Writer {
    sink: SplitSink<WebSocket, Message>,
    rx: mpsc::Receiver<Outbound>,
    hub: Arc<RealtimeHub>,
    conn: u64,
    viewer: Viewer,
    too_slow: CancellationToken,
    abort: CancellationToken,
    metrics: RealtimeMetrics,
    clock: Arc<dyn Clock>,
}

impl Writer {
    async fn run(mut self) {
        loop {
            let out = tokio::select! {
                biased;
                _ = self.abort.cancelled() => return,
                _ = self.too_slow.cancelled() => return self.close_too_slow().await,
                _ = self.hub.shutdown().cancelled() => {
                    return self.close(close_code::GOING_AWAY, "server shutting down").await
                }
                out = self.rx.recv() => out,
            };
            let ok = match out {
                None => {
                    let _ = tokio::time::timeout(WRITE_TIMEOUT, self.sink.close()).await;
                    return;
                }
                Some(Outbound::Frame(t)) => self.put(Message::Text(t)).await,
                Some(Outbound::Change { text, committed_at }) => {
                    let ok = self.put(Message::Text(text)).await;
                    if ok {
                        let lag_ms = self.clock.now_ms().saturating_sub(committed_at).max(0);
                        self.metrics
                            .delivery_lag_seconds
                            .observe(lag_ms as f64 / 1000.0);
                    }
                    ok
                }
                Some(Outbound::Ping) => self.put(Message::Ping(Default::default())).await,
                Some(Outbound::Close { code, reason }) => return self.close(code, &reason).await,
                Some(Outbound::Replay {
                    topic,
                    sub,
                    since,
                    ack,
                }) => self.replay(topic, sub, since, ack).await,
            };
            if !ok {
                return;
            }
        }
    }

    /// Writes one message, flushing when nothing else is queued (so bursts go
    /// out in few syscalls). False: the socket is gone or stuck.
    async fn put(&mut self, m: Message) -> bool {
        if matches!(m, Message::Text(_)) {
            self.metrics.messages_sent.inc();
        }
        let flush = self.rx.is_empty();
        let write = async {
            if flush {
                self.sink.send(m).await
            } else {
                self.sink.feed(m).await
            }
        };
        tokio::select! {
            biased;
            _ = self.abort.cancelled() => false,
            r = tokio::time::timeout(WRITE_TIMEOUT, write) => matches!(r, Ok(Ok(()))),
        }
    }

    async fn close(&mut self, code: u16, reason: &str) {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from(reason),
        };
        let _ =
            tokio::time::timeout(WRITE_TIMEOUT, self.sink.send(Message::Close(Some(frame)))).await;
    }

    async fn close_too_slow(&mut self) {
        self.metrics.resyncs.inc();
        let reason = format!(
            "too slow: more than {} messages waiting; reconnect and resume from the last seq you saw",
            self.hub.queue_capacity()
        );
        let resync = json!({"type": "resync", "reason": reason}).to_string();
        if self.put(Message::Text(resync.into())).await {
            self.close(close_code::TOO_SLOW, "too slow").await;
        }
    }

    /// Sends `topic`'s changes after `since` straight from the feed, then lets
    /// the live frames the hub buffered meanwhile through (those after what the
    /// replay covered): no gap, no duplicate. False: the socket is gone.
    async fn replay(&mut self, topic: Topic, sub: u64, since: i64, ack: Utf8Bytes) -> bool {
        if !self.hub.is_subscribed(self.conn, &topic, sub) {
            return true;
        }
        if !self.put(Message::Text(ack)).await {
            return false;
        }
        let mut after = since;
        let mut count = 0u64;
        loop {
            // Unsubscribed, revoked or dropped as too slow meanwhile.
            if !self.hub.is_subscribed(self.conn, &topic, sub) {
                return true;
            }
            let page = match replay_page(self.hub.db(), &topic, &self.viewer, after, REPLAY_PAGE)
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "realtime: replay failed");
                    if self.hub.is_subscribed(self.conn, &topic, sub) {
                        self.hub.unsubscribe(self.conn, &topic);
                    }
                    let m = json!({"type": "error", "topic": topic.to_string(), "error": "replay failed: subscribe again"});
                    return self.put(Message::Text(m.to_string().into())).await;
                }
            };
            for f in page.frames {
                if !self.put(Message::Text(f.text)).await {
                    return false;
                }
                count += 1;
                // The session's own membership ended in the replayed history:
                // if it is still not a member, the subscription ends here.
                if let (Some(org), Viewer::User(me)) = (&f.ends_membership_in, &self.viewer) {
                    if topic == Topic::Org(org.clone())
                        && !is_member(self.hub.db(), me, org).await.unwrap_or(false)
                    {
                        self.hub.revoke(self.conn, &topic, sub);
                        return true;
                    }
                }
            }
            self.metrics.replay_rows_read.inc_by(page.read as u64);
            after = page.covered;
            if page.done {
                break;
            }
        }
        // The marker goes ahead of the buffered live frames, through the queue.
        let done =
            json!({"type": "replayed", "topic": topic.to_string(), "seq": after, "count": count});
        let _ = self.hub.go_live(
            self.conn,
            &topic,
            sub,
            after,
            vec![Utf8Bytes::from(done.to_string())],
        );
        true
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
        let e = RealtimeConfig::from_settings(&Settings {
            clerk_jwt_key: Some("not a key".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("CLERKSYNC_CLERK_JWT_KEY"), "{e}");
        let e = RealtimeConfig::from_settings(&Settings {
            realtime_queue: Some(0),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("CLERKSYNC_REALTIME_QUEUE"), "{e}");
    }

    #[test]
    fn tokens_that_are_not_jwts_are_malformed() {
        let keys = SessionKeys { keys: Vec::new() };
        let rt = RealtimeConfig::default();
        assert_eq!(
            verify_session(&rt, &keys, "abc", 0),
            Err(AuthError::Malformed)
        );
    }
}
