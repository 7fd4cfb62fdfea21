//! Who opened a realtime connection: the API token, or a Clerk session token
//! verified locally.
//!
//! Owns: checking a connection's token (the server's API token, or a Clerk
//! session JWT: signature against the configured keys, `exp`/`nbf` with the
//! leeway, `sid`, lifetime, `iss` and `azp` allow-lists) with the app's clock.
//! Must never: make a network call to verify a token, or put the token in an
//! error message. See ARCHITECTURE.md.

use crate::realtime::config::{RealtimeConfig, SessionKeys};
use crate::realtime::visibility::Viewer;
use crate::setting::Token;
use crate::telemetry::metrics::RejectReason;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

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
    pub(crate) fn key(&self) -> String {
        match self {
            Principal::Service => "service".into(),
            Principal::User(sub) => format!("user:{sub}"),
        }
    }

    pub(crate) fn viewer(&self) -> Viewer {
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

/// Who `token` is, and until when (a session token's `exp`, unix seconds;
/// None for the API token and an open server). `now` is in seconds (the app's
/// injectable clock).
pub fn authenticate_until(
    api_token: Option<&Token>,
    rt: &RealtimeConfig,
    token: Option<&str>,
    now: i64,
) -> Result<(Principal, Option<i64>), AuthError> {
    if is_open(api_token, rt) {
        return Ok((Principal::Service, None));
    }
    let token = token.map(str::trim).filter(|t| !t.is_empty());
    let Some(token) = token else {
        return Err(AuthError::Missing);
    };
    if api_token.is_some_and(|t| t.matches(token)) {
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

/// Is the stream open to anyone (no API token, no session keys)?
pub fn is_open(api_token: Option<&Token>, rt: &RealtimeConfig) -> bool {
    api_token.is_none() && rt.session_keys.is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_that_are_not_jwts_are_malformed() {
        let keys = SessionKeys { keys: Vec::new() };
        let rt = RealtimeConfig::default();
        assert_eq!(
            verify_session_claims(&rt, &keys, "abc", 0),
            Err(AuthError::Malformed)
        );
    }
}
