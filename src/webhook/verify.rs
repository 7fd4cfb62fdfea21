//! Svix / Standard Webhooks signature verification.
//!
//! Owns: parsing the signing secrets, checking the three delivery headers, the
//! HMAC-SHA256 over `{id}.{timestamp}.{raw body}` and the timestamp tolerance.
//! Must never: parse the body (it is verified as raw bytes first), log or echo a
//! secret or signature, or compare MACs in variable time.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Deliveries whose timestamp is further than this from "now" (either way) are refused.
pub const TOLERANCE_SECS: i64 = 300;

/// Why a webhook secret cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("webhook secret is empty")]
    Empty,
    #[error("webhook secret is not valid base64 after the whsec_ prefix")]
    InvalidBase64,
}

/// One signing secret (the key bytes after `whsec_`). `Debug` never shows the key.
#[derive(Clone)]
pub struct WebhookSecret {
    key: Vec<u8>,
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

impl WebhookSecret {
    /// Parses `whsec_<base64>` (the prefix is optional, as in Svix's libraries).
    pub fn parse(s: &str) -> Result<Self, SecretError> {
        let s = s.trim();
        let b64 = s.strip_prefix("whsec_").unwrap_or(s);
        if b64.is_empty() {
            return Err(SecretError::Empty);
        }
        let key = B64.decode(b64).map_err(|_| SecretError::InvalidBase64)?;
        if key.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Self { key })
    }

    /// A secret from raw key bytes (tests, `demo`).
    pub fn from_key(key: Vec<u8>) -> Self {
        Self { key }
    }

    /// The `whsec_...` form of this secret.
    pub fn to_whsec(&self) -> String {
        format!("whsec_{}", B64.encode(&self.key))
    }

    pub fn key_len(&self) -> usize {
        self.key.len()
    }

    fn mac(&self, id: &str, timestamp: &str, body: &[u8]) -> [u8; 32] {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC accepts any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().into()
    }

    /// The `v1,<base64>` signature of a delivery, as Svix sends it.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        format!(
            "v1,{}",
            B64.encode(self.mac(id, &timestamp.to_string(), body))
        )
    }
}

/// Several secrets: during a rotation Clerk signs with the new one while old
/// deliveries still carry the old one, so any configured secret may match.
#[derive(Clone, Debug)]
pub struct SecretSet(Vec<WebhookSecret>);

impl SecretSet {
    /// Parses a comma-separated list of secrets; at least one is required.
    pub fn parse_list(s: &str) -> Result<Self, SecretError> {
        let secrets = s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(WebhookSecret::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if secrets.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Self(secrets))
    }

    pub fn new(secrets: Vec<WebhookSecret>) -> Self {
        Self(secrets)
    }

    pub fn first(&self) -> &WebhookSecret {
        &self.0[0]
    }
}

/// Why a delivery was refused. The `Display` text goes into the JSON error body,
/// so it names the problem and never any secret material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("missing required header(s): {0}")]
    MissingHeader(String),
    #[error("invalid svix-timestamp header: expected integer unix seconds")]
    InvalidTimestamp,
    #[error("webhook timestamp is too old (more than 5 minutes before now)")]
    TimestampTooOld,
    #[error("webhook timestamp is too far in the future (more than 5 minutes after now)")]
    TimestampTooNew,
    #[error("no matching signature found")]
    InvalidSignature,
}

impl VerifyError {
    /// 400 for requests that are not well-formed deliveries, 401 for ones that are
    /// but cannot be proven genuine and fresh.
    pub fn is_malformed(&self) -> bool {
        matches!(self, Self::MissingHeader(_) | Self::InvalidTimestamp)
    }
}

/// The three delivery headers, trimmed; blank counts as missing (as Clerk's own verifier does).
#[derive(Debug, Clone, Copy)]
pub struct DeliveryHeaders<'a> {
    pub id: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub signature: Option<&'a str>,
}

/// A verified delivery's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub svix_id: String,
    pub timestamp: i64,
}

fn present(v: Option<&str>) -> Option<&str> {
    v.map(str::trim).filter(|s| !s.is_empty())
}

fn parse_timestamp(s: &str) -> Result<i64, VerifyError> {
    // Integer unix seconds only: Svix sends integers; a fraction or sign is not honoured.
    if s.is_empty() || s.len() > 18 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(VerifyError::InvalidTimestamp);
    }
    s.parse().map_err(|_| VerifyError::InvalidTimestamp)
}

/// Verifies one delivery. `now` is unix seconds; `check_tolerance = false` is
/// `verify_ignoring_timestamp` (only used by tests and replays of stored deliveries).
pub fn verify(
    secrets: &SecretSet,
    headers: DeliveryHeaders<'_>,
    body: &[u8],
    now: i64,
    check_tolerance: bool,
) -> Result<Verified, VerifyError> {
    let id = present(headers.id);
    let ts = present(headers.timestamp);
    let sig = present(headers.signature);
    let (Some(id), Some(ts_str), Some(sig)) = (id, ts, sig) else {
        let mut missing = Vec::new();
        if id.is_none() {
            missing.push("svix-id");
        }
        if ts.is_none() {
            missing.push("svix-timestamp");
        }
        if sig.is_none() {
            missing.push("svix-signature");
        }
        return Err(VerifyError::MissingHeader(missing.join(", ")));
    };
    let timestamp = if check_tolerance {
        parse_timestamp(ts_str)?
    } else {
        // Ignoring tolerance, any integer the signer used is fine (even negative).
        ts_str
            .parse::<i64>()
            .map_err(|_| VerifyError::InvalidTimestamp)?
    };
    if check_tolerance {
        if timestamp < now - TOLERANCE_SECS {
            return Err(VerifyError::TimestampTooOld);
        }
        if timestamp > now + TOLERANCE_SECS {
            return Err(VerifyError::TimestampTooNew);
        }
    }
    let mut candidates: Vec<[u8; 32]> = Vec::new();
    for entry in sig.split(' ') {
        let Some((version, b64)) = entry.split_once(',') else {
            continue;
        };
        if version != "v1" {
            continue;
        }
        if let Ok(bytes) = B64.decode(b64) {
            if let Ok(arr) = <[u8; 32]>::try_from(bytes.as_slice()) {
                candidates.push(arr);
            }
        }
    }
    if candidates.is_empty() {
        return Err(VerifyError::InvalidSignature);
    }
    let mut ok = subtle::Choice::from(0u8);
    for secret in &secrets.0 {
        let expected = secret.mac(id, ts_str, body);
        for c in &candidates {
            ok |= expected.ct_eq(c);
        }
    }
    if bool::from(ok) {
        Ok(Verified {
            svix_id: id.to_string(),
            timestamp,
        })
    } else {
        Err(VerifyError::InvalidSignature)
    }
}
