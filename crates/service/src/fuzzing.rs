//! Entry points for the fuzz targets in `fuzz/` (`cargo fuzz`, not run in CI)
//! and for the seed test that runs them over the fixtures in every test run.
//!
//! Owns: one function per untrusted input the service parses — a webhook
//! delivery's headers and signature, the Clerk envelope, every payload kind,
//! realtime client frames, page cursors and search queries — each feeding its
//! bytes to the same code a request would reach. Must never: panic itself,
//! skip a check the real path makes, or hold state between calls beyond a
//! fixed secret. Like `app`, it sits on top of every layer, so it is the one
//! module besides `app` that reaches into `api/` (the cursor parser).

use crate::clerk::{envelope, model};
use crate::webhook::verify::{self, DeliveryHeaders, SecretSet, WebhookSecret};

/// An event-type family the apply path does not model (kept, never applied).
const UNMODELLED_FAMILY: &str = "subscription";

const ACTIONS: [&str; 4] = ["created", "updated", "deleted", "accepted"];

/// A delivery: `id \n timestamp \n signature \n body`. With the first byte
/// odd, a correct signature is added to the list, so the fuzzer also reaches
/// everything after the MAC check.
pub fn webhook_delivery(data: &[u8]) {
    let secret = WebhookSecret::from_key(b"clerksync-fuzzing-key-32-bytes!!".to_vec());
    let mut parts = data.splitn(4, |b| *b == b'\n');
    let text = |p: Option<&[u8]>| {
        p.and_then(|p| std::str::from_utf8(p).ok())
            .map(String::from)
    };
    let (id, ts, sig) = (text(parts.next()), text(parts.next()), text(parts.next()));
    let body = parts.next().unwrap_or_default();
    let sig = match (&id, &ts, data.first()) {
        (Some(id), Some(ts), Some(b)) if b % 2 == 1 => {
            let good = ts
                .trim()
                .parse::<i64>()
                .map(|t| secret.sign(id.trim(), t, body))
                .unwrap_or_default();
            Some(format!("{} {good}", sig.unwrap_or_default()))
        }
        _ => sig,
    };
    let secrets = SecretSet::new(vec![secret]);
    let headers = DeliveryHeaders {
        id: id.as_deref(),
        timestamp: ts.as_deref(),
        signature: sig.as_deref(),
    };
    let now = 1_700_000_000;
    for check_tolerance in [true, false] {
        if verify::verify(&secrets, headers, body, now, check_tolerance).is_ok() {
            let _ = envelope::parse_head(body);
        }
    }
}

/// The envelope read at intake (type, timestamp, ids, partition key).
pub fn envelope(data: &[u8]) {
    let _ = envelope::parse_head(data);
}

/// A stored delivery parsed for apply: under its own `type` when it has one,
/// and under a type of every family, so each payload kind sees every body.
pub fn payload(data: &[u8]) {
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(head) = envelope::parse_head(data) {
        let _ = model::parse_event(&head.event_type, body, 1_700_000_000);
    }
    let action = ACTIONS[data.len() % ACTIONS.len()];
    let families = model::Kind::ALL.map(model::Kind::family);
    for family in families.iter().chain([&UNMODELLED_FAMILY]) {
        let _ = model::parse_event(&format!("{family}.{action}"), body, 1_700_000_000);
    }
}

/// A frame a realtime client sends, and the topic it names.
pub fn realtime_message(data: &[u8]) {
    use crate::realtime::protocol::{parse_client_message, ClientMessage};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(ClientMessage::Subscribe { topic, .. } | ClientMessage::Unsubscribe { topic }) =
        parse_client_message(text)
    {
        let _ = crate::realtime::Topic::parse(&topic);
    }
}

/// A `cursor` query parameter of the read and admin APIs.
pub fn cursor(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = crate::cursor::decode_id(Some(text));
    let _ = crate::cursor::decode_seq(Some(text));
}

/// A `q` of `GET /v1/search`.
pub fn search_query(data: &[u8]) {
    if let Ok(q) = std::str::from_utf8(data) {
        let _ = crate::search::parse_query(q);
    }
}
