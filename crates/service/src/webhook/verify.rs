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

/// Every vector in `tests/fixtures/svix/vectors.json` (copied from the shared
/// fixtures so a clean clone is self-contained), run against this module with
/// "now" injected as the vector says.
#[cfg(test)]
mod vector_tests {
    use super::*;
    use serde_json::Value;

    const VECTORS: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/svix/vectors.json"
    );

    fn vectors() -> Value {
        let text = std::fs::read_to_string(VECTORS).expect("read vectors.json");
        serde_json::from_str(&text).expect("vectors.json is JSON")
    }

    fn section<'a>(v: &'a Value, name: &str) -> &'a [Value] {
        let s = v[name].as_array().expect("section is an array");
        assert!(!s.is_empty(), "{name} is empty");
        s
    }

    fn str_field<'a>(v: &'a Value, name: &str) -> &'a str {
        v[name]
            .as_str()
            .unwrap_or_else(|| panic!("{}: `{name}` is not a string", v["id"]))
    }

    /// The payload, literal or as `{"char", "count"}` repetition.
    fn payload(v: &Value) -> Vec<u8> {
        if let Some(p) = v["payload"].as_str() {
            return p.as_bytes().to_vec();
        }
        let rep = &v["payload_repeat"];
        let ch = rep["char"].as_str().expect("payload_repeat.char");
        let n = rep["count"].as_u64().expect("payload_repeat.count") as usize;
        ch.repeat(n).into_bytes()
    }

    /// Header lookup as HTTP does it: case-insensitive names, the `svix-*` name
    /// first, then its Standard Webhooks `webhook-*` alias.
    fn header<'a>(headers: &'a serde_json::Map<String, Value>, suffix: &str) -> Option<&'a str> {
        let find = |name: String| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(&name))
                .and_then(|(_, v)| v.as_str())
        };
        find(format!("svix-{suffix}")).or_else(|| find(format!("webhook-{suffix}")))
    }

    fn reason_matches(reason: &str, err: &VerifyError) -> bool {
        match reason {
            "missing_header" => matches!(err, VerifyError::MissingHeader(_)),
            "invalid_timestamp" => *err == VerifyError::InvalidTimestamp,
            "timestamp_too_old" => *err == VerifyError::TimestampTooOld,
            "timestamp_too_new" => *err == VerifyError::TimestampTooNew,
            "invalid_signature" => *err == VerifyError::InvalidSignature,
            other => panic!("unknown reason in vectors.json: {other}"),
        }
    }

    #[test]
    fn every_sign_vector() {
        let v = vectors();
        let mut failures = Vec::new();
        let cases = section(&v, "sign_vectors");
        for case in cases {
            let id = str_field(case, "id");
            let secret = WebhookSecret::parse(str_field(case, "secret"))
                .unwrap_or_else(|e| panic!("{id}: secret does not parse: {e}"));
            let ts = case["timestamp"].as_i64().expect("timestamp");
            let got = secret.sign(str_field(case, "msg_id"), ts, &payload(case));
            let want = str_field(case, "expected_signature");
            if got != want {
                failures.push(format!("{id}: signed {got}, expected {want}"));
            }
        }
        assert!(
            failures.is_empty(),
            "sign vectors failed:\n{}",
            failures.join("\n")
        );
    }

    #[test]
    fn every_verify_vector() {
        let v = vectors();
        let mut failures = Vec::new();
        let cases = section(&v, "verify_vectors");
        for case in cases {
            let id = str_field(case, "id");
            let secrets = SecretSet::parse_list(str_field(case, "secret"))
                .unwrap_or_else(|e| panic!("{id}: secret does not parse: {e}"));
            let headers = case["headers"].as_object().expect("headers object");
            let dh = DeliveryHeaders {
                id: header(headers, "id"),
                timestamp: header(headers, "timestamp"),
                signature: header(headers, "signature"),
            };
            let now = case["now"].as_i64().expect("now");
            let check_tolerance = match str_field(case, "mode") {
                "verify" => true,
                "verify_ignoring_timestamp" => false,
                other => panic!("{id}: unknown mode {other}"),
            };
            let result = verify(&secrets, dh, &payload(case), now, check_tolerance);
            match (str_field(case, "expected"), &result) {
                ("valid", Ok(verified)) => {
                    let want_id = dh.id.expect("a valid vector has an id").trim();
                    let want_ts: i64 = dh.timestamp.unwrap().trim().parse().unwrap();
                    if verified.svix_id != want_id || verified.timestamp != want_ts {
                        failures.push(format!("{id}: verified as {verified:?}"));
                    }
                }
                ("invalid", Err(err)) => {
                    let reason = str_field(case, "reason");
                    if !reason_matches(reason, err) {
                        failures.push(format!("{id}: expected {reason}, got {err:?}"));
                    }
                }
                (expected, got) => failures.push(format!("{id}: expected {expected}, got {got:?}")),
            }
        }
        assert!(
            failures.is_empty(),
            "verify vectors failed:\n{}",
            failures.join("\n")
        );
    }

    #[test]
    fn every_secret_vector() {
        let v = vectors();
        let mut failures = Vec::new();
        let cases = section(&v, "secret_vectors");
        for case in cases {
            let id = str_field(case, "id");
            let parsed = WebhookSecret::parse(str_field(case, "secret"));
            match (str_field(case, "expected"), &parsed) {
                ("ok", Ok(secret)) => {
                    let want = case["key_len"].as_u64().expect("key_len") as usize;
                    if secret.key_len() != want {
                        failures.push(format!("{id}: key_len {} != {want}", secret.key_len()));
                    }
                }
                ("error", Err(err)) => {
                    let want = match str_field(case, "reason") {
                        "empty_secret" => SecretError::Empty,
                        "invalid_secret" => SecretError::InvalidBase64,
                        other => panic!("{id}: unknown reason {other}"),
                    };
                    if *err != want {
                        failures.push(format!("{id}: expected {want:?}, got {err:?}"));
                    }
                }
                (expected, got) => failures.push(format!("{id}: expected {expected}, got {got:?}")),
            }
            // The same rules hold for the configured list form.
            if let Err(e) = &parsed {
                if SecretSet::parse_list(str_field(case, "secret"))
                    .as_ref()
                    .err()
                    != Some(e)
                {
                    failures.push(format!("{id}: parse_list disagrees with parse"));
                }
            }
        }
        assert!(
            failures.is_empty(),
            "secret vectors failed:\n{}",
            failures.join("\n")
        );
    }

    const OLD: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const NEW: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

    fn delivery(secret: &str, body: &[u8]) -> (String, String) {
        let ts = 1_700_000_000;
        let sig = WebhookSecret::parse(secret)
            .unwrap()
            .sign("msg_rot", ts, body);
        (ts.to_string(), sig)
    }

    #[test]
    fn rotation_accepts_a_delivery_signed_by_the_second_secret_only() {
        let body = br#"{"type":"user.created","data":{"id":"user_1"}}"#;
        let (ts, sig) = delivery(NEW, body);
        let headers = DeliveryHeaders {
            id: Some("msg_rot"),
            timestamp: Some(&ts),
            signature: Some(&sig),
        };
        let both = SecretSet::parse_list(&format!("{OLD}, {NEW}")).unwrap();
        let verified = verify(&both, headers, body, 1_700_000_000, true).unwrap();
        assert_eq!(verified.svix_id, "msg_rot");
        let both = SecretSet::new(vec![
            WebhookSecret::parse(OLD).unwrap(),
            WebhookSecret::parse(NEW).unwrap(),
        ]);
        assert!(verify(&both, headers, body, 1_700_000_000, true).is_ok());
        // Without the second secret the same delivery is refused.
        let old_only = SecretSet::parse_list(OLD).unwrap();
        assert_eq!(
            verify(&old_only, headers, body, 1_700_000_000, true),
            Err(VerifyError::InvalidSignature)
        );
    }

    #[test]
    fn rotation_with_two_signatures_in_the_header() {
        // During a rotation Svix may send one signature per secret.
        let body = br#"{"type":"user.updated","data":{"id":"user_1"}}"#;
        let (ts, old_sig) = delivery(OLD, body);
        let (_, new_sig) = delivery(NEW, body);
        let sig = format!("{old_sig} {new_sig}");
        let headers = DeliveryHeaders {
            id: Some("msg_rot"),
            timestamp: Some(&ts),
            signature: Some(&sig),
        };
        for secrets in [OLD, NEW, &format!("{OLD},{NEW}")] {
            let set = SecretSet::parse_list(secrets).unwrap();
            assert!(verify(&set, headers, body, 1_700_000_000, true).is_ok());
        }
        let unrelated = SecretSet::parse_list("whsec_plJ3nmyCDGBKInavdOK15jsl").unwrap();
        assert_eq!(
            verify(&unrelated, headers, body, 1_700_000_000, true),
            Err(VerifyError::InvalidSignature)
        );
    }

    #[test]
    fn a_bad_secret_in_a_list_is_refused() {
        assert_eq!(
            SecretSet::parse_list(&format!("{OLD},whsec_not*base64!")).unwrap_err(),
            SecretError::InvalidBase64
        );
        assert_eq!(
            SecretSet::parse_list(" , ").unwrap_err(),
            SecretError::Empty
        );
    }

    #[test]
    fn errors_and_debug_never_show_secret_material() {
        let secret = WebhookSecret::parse(OLD).unwrap();
        assert!(!format!("{secret:?}").contains("MfKQ9r8"));
        let set = SecretSet::parse_list(OLD).unwrap();
        assert!(!format!("{set:?}").contains("MfKQ9r8"));
        let body = b"{}";
        let (ts, sig) = delivery(NEW, body);
        let err = verify(
            &set,
            DeliveryHeaders {
                id: Some("msg_x"),
                timestamp: Some(&ts),
                signature: Some(&sig),
            },
            body,
            1_700_000_000,
            true,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(!text.contains("MfKQ9r8") && !text.contains(&sig[3..]));
    }
}
