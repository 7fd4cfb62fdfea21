//! Typed Clerk payloads and the mapping from an event to the entity it changes.
//!
//! Every field but the id is optional, and the raw JSON of each object is kept
//! beside the typed view, so a field Clerk adds tomorrow is stored, not lost. A
//! field of the wrong type is an error (the event can never apply), reported with
//! the field's name.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::clerk::events::{resolve, Action};
pub use crate::clerk::kind::{Kind, Payload};

#[derive(Debug, Clone, Deserialize, Default)]
pub struct EmailAddress {
    pub id: Option<String>,
    pub email_address: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct PhoneNumber {
    pub id: Option<String>,
    pub phone_number: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct ExternalAccount {
    pub id: Option<String>,
    pub provider: Option<String>,
    pub email_address: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct User {
    pub id: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub username: Option<String>,
    pub image_url: Option<String>,
    pub has_image: Option<bool>,
    pub primary_email_address_id: Option<String>,
    pub primary_phone_number_id: Option<String>,
    pub email_addresses: Option<Vec<EmailAddress>>,
    pub phone_numbers: Option<Vec<PhoneNumber>>,
    pub external_accounts: Option<Vec<ExternalAccount>>,
    pub created_at: Option<i64>,
    pub updated_at: Option<i64>,
    pub deleted: Option<bool>,
}

impl User {
    /// The primary email as a string (Clerk sends only its id).
    pub fn primary_email_address(&self) -> Option<&str> {
        let pid = self.primary_email_address_id.as_deref()?;
        self.email_addresses
            .as_ref()?
            .iter()
            .find(|e| e.id.as_deref() == Some(pid))
            .and_then(|e| e.email_address.as_deref())
    }

    pub fn primary_phone_number(&self) -> Option<&str> {
        let pid = self.primary_phone_number_id.as_deref()?;
        self.phone_numbers
            .as_ref()?
            .iter()
            .find(|e| e.id.as_deref() == Some(pid))
            .and_then(|e| e.phone_number.as_deref())
    }

    /// What Clerk shows of a user to other members of an organization
    /// (`public_user_data` on memberships).
    pub fn public_user_data(&self) -> Map<String, Value> {
        let mut m = Map::new();
        let s = |v: &Option<String>| v.clone().map(Value::String).unwrap_or(Value::Null);
        m.insert("user_id".into(), Value::String(self.id.clone()));
        m.insert("first_name".into(), s(&self.first_name));
        m.insert("last_name".into(), s(&self.last_name));
        m.insert("image_url".into(), s(&self.image_url));
        m.insert(
            "has_image".into(),
            self.has_image.map(Value::Bool).unwrap_or(Value::Null),
        );
        let identifier = self
            .primary_email_address()
            .or(self.username.as_deref())
            .or(self.primary_phone_number());
        m.insert(
            "identifier".into(),
            identifier
                .map(|s| Value::String(s.into()))
                .unwrap_or(Value::Null),
        );
        m
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct IdRef {
    pub id: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct PublicUserData {
    pub user_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct Membership {
    pub id: String,
    pub role: Option<String>,
    pub organization: Option<IdRef>,
    pub organization_id: Option<String>,
    pub public_user_data: Option<PublicUserData>,
    pub created_at: Option<i64>,
    pub updated_at: Option<i64>,
}

/// Objects we keep whole, reading only ids and times: organizations, invitations,
/// domains, roles, permissions, sessions, emails, SMS, waitlist entries.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct Generic {
    pub id: String,
    pub user_id: Option<String>,
    pub organization_id: Option<String>,
    pub name: Option<String>,
    pub slug: Option<String>,
    pub key: Option<String>,
    pub status: Option<String>,
    pub email_address: Option<String>,
    pub created_at: Option<i64>,
    pub updated_at: Option<i64>,
}

/// A Billing payer: a user or an organization.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct Payer {
    pub user_id: Option<String>,
    pub organization_id: Option<String>,
}

/// Billing objects (subscriptions, subscription items, payment attempts), kept
/// whole; read for their payer and times.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct Billing {
    pub id: String,
    pub payer: Option<Payer>,
    pub updated_at: Option<i64>,
}

/// Legacy role keys (`admin`, `basic_member`) as today's (`org:admin`, `org:member`).
pub fn normalize_role(role: &str) -> String {
    match role {
        "admin" => "org:admin".into(),
        "basic_member" => "org:member".into(),
        r if r.contains(':') => r.into(),
        r => format!("org:{r}"),
    }
}

/// Why an event's data can never apply.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PayloadError {
    #[error("event body is not JSON: {0}")]
    NotJson(String),
    #[error("`data` is missing or not an object")]
    NoData,
    #[error("`data.id` is missing or not a string")]
    MissingId,
    #[error("invalid {kind} payload: {message}")]
    Invalid { kind: &'static str, message: String },
    #[error("{kind} {id} has no {field}")]
    MissingRef {
        kind: &'static str,
        id: String,
        field: &'static str,
    },
}

/// An event reduced to what the store needs to apply it.
#[derive(Debug, Clone)]
pub struct Change {
    pub kind: Kind,
    pub id: String,
    pub delete: bool,
    /// `updated_at`, else the envelope `timestamp`, else the svix timestamp (ms).
    pub version: i64,
    pub user_id: Option<String>,
    pub organization_id: Option<String>,
    /// The object as delivered (for deletes, whatever Clerk sent).
    pub data: Map<String, Value>,
    /// `data` serialized as the store keeps it, done here rather than in the
    /// apply transaction: parsing runs before the write lock is taken.
    pub data_json: String,
    /// Set for user upserts: the typed view used for contact tables and cascades.
    pub user: Option<User>,
}

/// What an event means for the store.
#[derive(Debug, Clone)]
pub enum Parsed {
    Change(Box<Change>),
    /// An event type clerksync does not model: stored and counted, nothing applied.
    Unknown,
}

fn typed<T: for<'de> Deserialize<'de>>(
    kind: Kind,
    data: &Map<String, Value>,
) -> Result<T, PayloadError> {
    // Straight from the borrowed map (a copy of it was ~1% of the server's CPU).
    // serde_path_to_error names the field (`email_addresses[0].id: invalid type`).
    serde_path_to_error::deserialize(data).map_err(|e| PayloadError::Invalid {
        kind: kind.as_str(),
        message: format!("{}: {}", e.path(), without_values(&e.inner().to_string())),
    })
}

/// A serde error message without the payload value it quotes: the message is
/// stored in `inbox.last_error` and logged, and the value may be an email
/// address or a name that erasure could not reach there. `invalid type: string
/// "ada@x.io", expected u64` becomes `invalid type: string, expected u64`; the
/// field's path (added by the caller) and the expected type stay.
pub fn without_values(msg: &str) -> String {
    for lead in [
        "invalid type: ",
        "invalid value: ",
        "unknown variant ",
        "unknown field ",
    ] {
        if let Some(rest) = msg.strip_prefix(lead) {
            // The unexpected value comes first, the expectation last (the value
            // may itself contain ", expected").
            let what = match lead {
                "unknown variant " | "unknown field " => "",
                // `string "x"`, `floating point `1.5``, `map`: the words before the value.
                _ => rest.split(['`', '"', ',']).next().unwrap_or("").trim(),
            };
            let expected = rest.rfind(", expected").map(|i| &rest[i..]).unwrap_or("");
            let head = lead.trim_end();
            return if what.is_empty() {
                format!("{head}{expected}")
            } else {
                format!("{head} {what}{expected}")
            };
        }
    }
    msg.to_string()
}

/// Reads a stored delivery. `svix_timestamp` is seconds.
pub fn parse_event(
    event_type: &str,
    body: &str,
    svix_timestamp: i64,
) -> Result<Parsed, PayloadError> {
    let Some((kind, action)) = resolve(event_type) else {
        return Ok(Parsed::Unknown);
    };
    let mut env: Map<String, Value> = match serde_json::from_str::<Value>(body) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err(PayloadError::NoData),
        Err(e) => return Err(PayloadError::NotJson(e.to_string())),
    };
    let data = match env.remove("data") {
        Some(Value::Object(m)) => m,
        _ => return Err(PayloadError::NoData),
    };
    let envelope_ts = env.get("timestamp").and_then(Value::as_i64);
    parse_data(kind, action, data, envelope_ts, svix_timestamp)
}

/// What an event's `data` object means for the store, once the envelope is
/// read: [`parse_event`]'s second half, and how a backfill reads a listed
/// record (the object itself, as a `<family>.updated` would carry it,
/// without writing and re-reading an envelope around it).
pub fn parse_data(
    kind: Kind,
    action: Action,
    data: Map<String, Value>,
    envelope_ts: Option<i64>,
    svix_timestamp: i64,
) -> Result<Parsed, PayloadError> {
    let id = match data.get("id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(PayloadError::MissingId),
    };
    let delete = action == Action::Delete || data.get("deleted") == Some(&Value::Bool(true));
    let (updated_at, user_id, organization_id, user) = match kind.spec().payload {
        Payload::User => {
            let u: User = typed(kind, &data)?;
            let at = u.updated_at;
            (at, None, None, if delete { None } else { Some(u) })
        }
        Payload::Membership => {
            let m: Membership = typed(kind, &data)?;
            let org = m
                .organization
                .as_ref()
                .and_then(|o| o.id.clone())
                .or(m.organization_id.clone());
            let user = m.public_user_data.as_ref().and_then(|p| p.user_id.clone());
            if !delete {
                if org.is_none() {
                    return Err(PayloadError::MissingRef {
                        kind: kind.as_str(),
                        id,
                        field: "organization.id",
                    });
                }
                if user.is_none() {
                    return Err(PayloadError::MissingRef {
                        kind: kind.as_str(),
                        id,
                        field: "public_user_data.user_id",
                    });
                }
            }
            (m.updated_at, user, org, None)
        }
        Payload::Generic {
            user_id,
            organization_id,
        } => {
            let g: Generic = typed(kind, &data)?;
            let org = g.organization_id.filter(|_| organization_id);
            let user = g.user_id.filter(|_| user_id);
            (g.updated_at, user, org, None)
        }
        Payload::Billing => {
            let b: Billing = typed(kind, &data)?;
            let payer = b.payer.unwrap_or_default();
            (b.updated_at, payer.user_id, payer.organization_id, None)
        }
    };
    let version = updated_at
        .or(envelope_ts)
        .unwrap_or(svix_timestamp.saturating_mul(1000));
    Ok(Parsed::Change(Box::new(Change {
        kind,
        id,
        delete,
        version,
        user_id,
        organization_id,
        data_json: serde_json::to_string(&data).expect("a JSON map serializes"),
        data,
        user,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_texts_name_the_field_never_the_value() {
        let data: Map<String, Value> = serde_json::from_str(
            r#"{"id":"user_1","email_addresses":[{"id":"idn_1","email_address":{"a":"ada@x.io"}}],"first_name":"Ada","created_at":"ada@x.io"}"#,
        )
        .unwrap();
        let e = parse_event(
            "user.created",
            &serde_json::json!({"type": "user.created", "data": data}).to_string(),
            1,
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(!text.contains("ada@x.io"), "{text}");
        assert!(text.contains("invalid type"), "{text}");
        assert_eq!(
            without_values(r#"invalid type: string "ada@x.io, expected x", expected u64"#),
            "invalid type: string, expected u64"
        );
        assert_eq!(
            without_values("invalid value: integer `5`, expected a bool"),
            "invalid value: integer, expected a bool"
        );
        assert_eq!(
            without_values("unknown variant `ada@x.io`, expected one of `a`, `b`"),
            "unknown variant, expected one of `a`, `b`"
        );
        assert_eq!(without_values("missing field `id`"), "missing field `id`");
    }

    #[test]
    fn versions_fall_back_in_order() {
        let p = |b: &str| match parse_event("user.updated", b, 7).unwrap() {
            Parsed::Change(c) => c.version,
            Parsed::Unknown => panic!(),
        };
        assert_eq!(p(r#"{"data":{"id":"u","updated_at":5},"timestamp":6}"#), 5);
        assert_eq!(p(r#"{"data":{"id":"u"},"timestamp":6}"#), 6);
        assert_eq!(p(r#"{"data":{"id":"u"}}"#), 7000);
    }

    #[test]
    fn wrong_types_name_the_field() {
        let e =
            parse_event("user.updated", r#"{"data":{"id":"u","first_name":3}}"#, 1).unwrap_err();
        assert!(e.to_string().contains("first_name"), "{e}");
        assert_eq!(
            parse_event("user.updated", r#"{"data":{"first_name":"x"}}"#, 1).unwrap_err(),
            PayloadError::MissingId
        );
    }

    #[test]
    fn legacy_roles_normalize() {
        assert_eq!(normalize_role("admin"), "org:admin");
        assert_eq!(normalize_role("basic_member"), "org:member");
        assert_eq!(normalize_role("org:billing"), "org:billing");
    }
}
