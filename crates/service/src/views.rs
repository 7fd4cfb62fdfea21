//! JSON views of stored entities: users, organizations and memberships as the
//! read API returns them and as realtime frames carry them.
//!
//! Owns: the one rendering of a store row as JSON (Clerk's field names, plus
//! `primary_email_address` on users and the routing ids and normalized role on
//! memberships), shared by `api/` and `realtime/` so both show the same record.
//! Must never: read the store (callers hand rows in), or filter fields for a
//! viewer (that is [`crate::realtime::visibility`]). See ARCHITECTURE.md.

use crate::clerk::kind::View;
use crate::clerk::model::{normalize_role, Kind, User};
use crate::store::tx::EntityRow;
use serde_json::{json, Map, Value};

/// The stored record as a JSON object (empty when a row has no readable data).
pub fn data_map(row: &EntityRow) -> Map<String, Value> {
    match row.data.as_deref().map(serde_json::from_str::<Value>) {
        Some(Ok(Value::Object(m))) => m,
        _ => Map::new(),
    }
}

/// An entity as the read API and realtime render it (declared per kind:
/// [`Kind::spec`]'s `view`).
pub fn entity_json(kind: Kind, row: &EntityRow) -> Value {
    match kind.spec().view {
        View::User => user_json(row),
        View::Membership => membership_json(row),
        View::Record => record_json(row),
    }
}

/// Any entity's record as stored (organizations and the kinds without a view
/// of their own).
pub fn record_json(row: &EntityRow) -> Value {
    Value::Object(data_map(row))
}

/// A user as Clerk names its fields, plus the primary email as a string.
pub fn user_json(row: &EntityRow) -> Value {
    let mut m = data_map(row);
    let primary = row
        .data
        .as_deref()
        .and_then(|d| serde_json::from_str::<User>(d).ok())
        .and_then(|u| u.primary_email_address().map(str::to_string));
    m.insert(
        "primary_email_address".into(),
        primary.map(Value::String).unwrap_or(Value::Null),
    );
    Value::Object(m)
}

/// A membership with its user and organization ids and its role normalized
/// (`admin` -> `org:admin`).
pub fn membership_json(row: &EntityRow) -> Value {
    let mut m = data_map(row);
    let role = m.get("role").and_then(Value::as_str).map(normalize_role);
    m.insert("user_id".into(), json!(row.user_id));
    m.insert("organization_id".into(), json!(row.organization_id));
    m.insert("role".into(), json!(role));
    Value::Object(m)
}
