//! Erasure: what is left of a deleted user's personal data goes after the retention.
//!
//! A deletion archives the last record and keeps audit rows with before/after
//! values. After `archive_retention` the archive rows are purged, and for a
//! deleted user every copy of its personal data is redacted: the audit values,
//! the raw bodies of its deliveries in the inbox, the archived records of its
//! memberships, and the rows of its sessions, emails and SMS (also those sent
//! to one of its addresses or numbers with no user id: store::maintenance finds
//! them through `inbox.user_id` and `inbox_contacts`, filled at intake). Ids,
//! event types and versions stay, so the log can still be replayed to the same
//! tombstones. Must never: touch a user that is not deleted, or change a live
//! entity's state (version, tombstone); a message's content is the user's data.

use serde_json::{Map, Value};

pub const REDACTED: &str = "[redacted]";

/// Replaces every before/after value of an audit `changes` object.
pub fn redact_changes(changes: &str) -> String {
    let Ok(Value::Object(mut m)) = serde_json::from_str::<Value>(changes) else {
        return serde_json::json!({ "redacted": true }).to_string();
    };
    for v in m.values_mut() {
        if let Value::Object(ch) = v {
            for side in ["before", "after"] {
                if let Some(x) = ch.get_mut(side) {
                    if !x.is_null() && !x.is_boolean() {
                        *x = Value::String(REDACTED.into());
                    }
                }
            }
        }
    }
    Value::Object(m).to_string()
}

/// Keeps only what routing and replay need of a delivery body: type, times and ids.
pub fn redact_body(body: &str) -> String {
    let Ok(Value::Object(env)) = serde_json::from_str::<Value>(body) else {
        return serde_json::json!({ "redacted": true }).to_string();
    };
    let mut out = Map::new();
    for k in ["type", "object", "timestamp", "instance_id"] {
        if let Some(v) = env.get(k) {
            out.insert(k.into(), v.clone());
        }
    }
    let mut data = Map::new();
    if let Some(Value::Object(d)) = env.get("data") {
        for k in ["id", "object", "user_id", "organization_id"] {
            if let Some(v) = d.get(k).filter(|v| v.is_string() || v.is_null()) {
                data.insert(k.into(), v.clone());
            }
        }
        // Times and flags only as what they should be: a payload that failed to
        // apply may hold anything there (an address where a time belongs).
        for k in ["deleted", "created_at", "updated_at"] {
            if let Some(v) = d.get(k).filter(|v| v.is_number() || v.is_boolean()) {
                data.insert(k.into(), v.clone());
            }
        }
        if let Some(id) = d.get("organization").and_then(|o| o.get("id")) {
            data.insert("organization".into(), serde_json::json!({ "id": id }));
        }
        if let Some(uid) = d.get("public_user_data").and_then(|o| o.get("user_id")) {
            data.insert(
                "public_user_data".into(),
                serde_json::json!({ "user_id": uid }),
            );
        }
    }
    data.insert("redacted".into(), Value::Bool(true));
    out.insert("data".into(), Value::Object(data));
    Value::Object(out).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_keeps_ids_and_drops_personal_data() {
        let b = r#"{"type":"organizationMembership.created","timestamp":5,"data":{"id":"orgmem_1","organization":{"id":"org_1","name":"Acme"},"public_user_data":{"user_id":"user_1","first_name":"Ada","identifier":"ada@x.io"},"updated_at":3}}"#;
        let r = redact_body(b);
        assert!(!r.contains("Ada") && !r.contains("ada@x.io") && !r.contains("Acme"));
        assert!(r.contains("user_1") && r.contains("org_1") && r.contains("orgmem_1"));
        let odd = redact_body(
            r#"{"type":"user.updated","data":{"id":"user_1","created_at":"ada@x.io","updated_at":5,"deleted":true}}"#,
        );
        assert!(
            !odd.contains("ada@x.io") && odd.contains(r#""updated_at":5"#),
            "{odd}"
        );
        let c = redact_changes(
            r#"{"first_name":{"before":null,"after":"Ada"},"deleted":{"before":false,"after":true}}"#,
        );
        assert!(!c.contains("Ada") && c.contains("first_name") && c.contains("true"));
    }
}
