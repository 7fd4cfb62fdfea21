//! Typed Clerk payloads and the mapping from an event to the entity it changes.
//!
//! Every field but the id is optional, and the raw JSON of each object is kept
//! beside the typed view, so a field Clerk adds tomorrow is stored, not lost. A
//! field of the wrong type is an error (the event can never apply), reported with
//! the field's name.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::borrow::Cow;

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
    /// The object as delivered (for deletes, whatever Clerk sent), serialized
    /// as the store keeps it (`serde_json::to_string` of its `Map`: compact,
    /// keys sorted), done here rather than in the apply transaction: parsing
    /// runs before the write lock is taken.
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
///
/// Two readers, one answer: [`read_borrowed`] reads the body without building
/// a `Value` tree (the tree of a ~1.7 KB body, its allocations and their
/// frees were most of the apply side's parsing cost), and gives up on anything
/// unusual; then [`read_tree`], the reference reader, reads it again and
/// reports the error. What the fast one returns is what the reference one
/// would (unit tests below compare them on every payload shape).
pub fn parse_event(
    event_type: &str,
    body: &str,
    svix_timestamp: i64,
) -> Result<Parsed, PayloadError> {
    let Some((kind, action)) = resolve(event_type) else {
        return Ok(Parsed::Unknown);
    };
    if let Some(c) = read_borrowed(kind, action, body, svix_timestamp) {
        return Ok(Parsed::Change(Box::new(c)));
    }
    read_tree(kind, action, body, svix_timestamp)
}

/// The reference reader: the body as a `Value` tree.
fn read_tree(
    kind: Kind,
    action: Action,
    body: &str,
    svix_timestamp: i64,
) -> Result<Parsed, PayloadError> {
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

/// The envelope's two fields apply reads, borrowed from the body.
#[derive(Deserialize)]
struct RawEnvelope<'a> {
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    timestamp: Option<&'a RawValue>,
}

/// [`read_tree`] without the tree: `None` whenever the body is not a plain
/// well-formed event (not an object, a duplicated envelope field, a payload
/// error of any kind), so the reference reader decides those.
fn read_borrowed(kind: Kind, action: Action, body: &str, svix_timestamp: i64) -> Option<Change> {
    // A struct also reads from a JSON array; the reference reader does not.
    if !body.trim_start().starts_with('{') {
        return None;
    }
    let env: RawEnvelope<'_> = serde_json::from_str(body).ok()?;
    let data = env.data?;
    let fields = object_fields(data.get())?;
    let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.get());
    let id = match field("id") {
        Some(raw) if raw.starts_with('"') => serde_json::from_str::<String>(raw).ok()?,
        _ => return None,
    };
    if id.is_empty() {
        return None;
    }
    let delete = action == Action::Delete || field("deleted").map(str::trim) == Some("true");
    let text = data.get();
    let (updated_at, user_id, organization_id, user) = match kind.spec().payload {
        Payload::User => {
            let u: User = serde_json::from_str(text).ok()?;
            (
                u.updated_at,
                None,
                None,
                if delete { None } else { Some(u) },
            )
        }
        Payload::Membership => {
            let m: Membership = serde_json::from_str(text).ok()?;
            let (user, org) = membership_refs(&m);
            if !delete && (org.is_none() || user.is_none()) {
                return None;
            }
            (m.updated_at, user, org, None)
        }
        Payload::Generic {
            user_id,
            organization_id,
        } => {
            let g: Generic = serde_json::from_str(text).ok()?;
            let org = g.organization_id.filter(|_| organization_id);
            let user = g.user_id.filter(|_| user_id);
            (g.updated_at, user, org, None)
        }
        Payload::Billing => {
            let b: Billing = serde_json::from_str(text).ok()?;
            let payer = b.payer.unwrap_or_default();
            (b.updated_at, payer.user_id, payer.organization_id, None)
        }
    };
    let envelope_ts = env
        .timestamp
        .and_then(|t| serde_json::from_str::<Value>(t.get()).ok())
        .and_then(|t| t.as_i64());
    let mut data_json = String::with_capacity(text.len());
    write_canonical_object(fields, &mut data_json)?;
    Some(Change {
        kind,
        id,
        delete,
        version: version_of(updated_at, envelope_ts, svix_timestamp),
        user_id,
        organization_id,
        data_json,
        user,
    })
}

/// A membership's (user, organization).
fn membership_refs(m: &Membership) -> (Option<String>, Option<String>) {
    let org = m
        .organization
        .as_ref()
        .and_then(|o| o.id.clone())
        .or(m.organization_id.clone());
    let user = m.public_user_data.as_ref().and_then(|p| p.user_id.clone());
    (user, org)
}

/// `updated_at`, else the envelope's `timestamp`, else the svix timestamp (s -> ms).
fn version_of(updated_at: Option<i64>, envelope_ts: Option<i64>, svix_timestamp: i64) -> i64 {
    updated_at
        .or(envelope_ts)
        .unwrap_or(svix_timestamp.saturating_mul(1000))
}

/// An object's key, borrowed unless it had escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// An object's members as written, in order, duplicates kept.
struct Fields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Fields<'de>, A::Error> {
                let mut out = Vec::with_capacity(m.size_hint().unwrap_or(16));
                while let Some(Key(k)) = m.next_key()? {
                    let v: &'de RawValue = m.next_value()?;
                    out.push((k, v));
                }
                Ok(Fields(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// The members of the JSON object `text` as a `serde_json::Map` holds them:
/// sorted by key, a duplicated key's last value only. `None` if `text` is not
/// a JSON object.
pub(crate) fn object_fields(text: &str) -> Option<Vec<(Cow<'_, str>, &RawValue)>> {
    if !text.trim_start().starts_with('{') {
        return None;
    }
    let Fields(mut fields) = serde_json::from_str(text).ok()?;
    // Stable: among equal keys the last written stays last.
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out: Vec<(Cow<'_, str>, &RawValue)> = Vec::with_capacity(fields.len());
    for f in fields {
        match out.last_mut() {
            Some(last) if last.0 == f.0 => *last = f,
            _ => out.push(f),
        }
    }
    Some(out)
}

/// Appends a string as `serde_json` writes it.
fn write_json_str(s: &str, out: &mut String) {
    out.push_str(&serde_json::to_string(s).expect("a string serializes"));
}

fn write_canonical_object(fields: Vec<(Cow<'_, str>, &RawValue)>, out: &mut String) -> Option<()> {
    write_canonical_object_at(fields, out, MAX_CANONICAL_DEPTH)
}

fn write_canonical_object_at(
    fields: Vec<(Cow<'_, str>, &RawValue)>,
    out: &mut String,
    depth: usize,
) -> Option<()> {
    out.push('{');
    for (i, (k, v)) in fields.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match k {
            // Read without escapes, so it needs none (serde_json refuses raw
            // control characters in strings).
            Cow::Borrowed(k) => {
                out.push('"');
                out.push_str(k);
                out.push('"');
            }
            Cow::Owned(k) => write_json_str(&k, out),
        }
        out.push(':');
        write_canonical_at(v.get(), out, depth)?;
    }
    out.push('}');
    Some(())
}

/// Appends the JSON value `raw` exactly as `serde_json::to_string` of its
/// parsed `Value` would write it (the form records are stored in: compact,
/// every object's keys sorted), without building the `Value`: plain strings,
/// integers and literals are copied as they are, only the rest is parsed.
/// `None` if `raw` is not JSON. (Apply writes whole records through
/// [`write_canonical_object`]; this entry point is the tests'.)
#[cfg(test)]
fn write_canonical(raw: &str, out: &mut String) -> Option<()> {
    write_canonical_at(raw, out, MAX_CANONICAL_DEPTH)
}

/// How deep canonical writing goes before it gives up (and the reference
/// reader, whose parser stops at 128 levels, decides): each level is a call
/// of its own, and a body nested thousands of levels deep must not overflow
/// the stack.
const MAX_CANONICAL_DEPTH: usize = 64;

fn write_canonical_at(raw: &str, out: &mut String, depth: usize) -> Option<()> {
    let depth = depth.checked_sub(1)?;
    let raw = raw.trim_matches([' ', '\t', '\n', '\r']);
    match raw.as_bytes().first()? {
        b'{' => write_canonical_object_at(object_fields(raw)?, out, depth),
        b'[' => {
            let items: Vec<&RawValue> = serde_json::from_str(raw).ok()?;
            out.push('[');
            for (i, v) in items.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical_at(v.get(), out, depth)?;
            }
            out.push(']');
            Some(())
        }
        // Without a backslash nothing in it is escaped, in or out.
        b'"' if !raw.contains('\\') && raw.len() >= 2 && raw.ends_with('"') => {
            out.push_str(raw);
            Some(())
        }
        b't' | b'f' | b'n' if matches!(raw, "true" | "false" | "null") => {
            out.push_str(raw);
            Some(())
        }
        _ if plain_integer(raw) => {
            out.push_str(raw);
            Some(())
        }
        // Escaped strings, floats, integers past 64 bits, `-0`: as serde_json
        // reads and writes them.
        _ => {
            let v: Value = serde_json::from_str(raw).ok()?;
            out.push_str(&v.to_string());
            Some(())
        }
    }
}

/// An integer serde_json keeps as one (not a float) and writes back as read.
fn plain_integer(raw: &str) -> bool {
    let digits = raw.strip_prefix('-').unwrap_or(raw);
    let well_formed = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    if !well_formed {
        return false;
    }
    if raw.starts_with('-') {
        // `-0` is a float to serde_json.
        digits != "0" && raw.parse::<i64>().is_ok()
    } else {
        raw.parse::<u64>().is_ok()
    }
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
            let (user, org) = membership_refs(&m);
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
    Ok(Parsed::Change(Box::new(Change {
        kind,
        id,
        delete,
        version: version_of(updated_at, envelope_ts, svix_timestamp),
        user_id,
        organization_id,
        data_json: serde_json::to_string(&data).expect("a JSON map serializes"),
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

    /// What both readers make of a body, in a comparable form.
    fn read_with(
        reader: impl Fn(Kind, Action, &str, i64) -> Result<Parsed, PayloadError>,
        event_type: &str,
        body: &str,
    ) -> Result<String, PayloadError> {
        let (kind, action) = resolve(event_type).unwrap();
        match reader(kind, action, body, 7)? {
            Parsed::Change(c) => Ok(format!(
                "{:?} {} {} {} {:?} {:?} {} {:?}",
                c.kind,
                c.id,
                c.delete,
                c.version,
                c.user_id,
                c.organization_id,
                c.data_json,
                c.user
                    .map(|u| (u.id, u.first_name, u.email_addresses.map(|e| e.len())))
            )),
            Parsed::Unknown => Ok("unknown".into()),
        }
    }

    #[test]
    fn the_borrowed_reader_agrees_with_the_tree_or_defers_to_it() {
        let cases: &[(&str, &str)] = &[
            (
                "user.updated",
                r#"{"type":"user.updated","timestamp":1700000000123,"object":"event","data":{"updated_at":1700000000100,"id":"user_1","first_name":"Ada","last_name":null,"email_addresses":[{"id":"idn_1","email_address":"ada@x.io","verification":{"status":"verified","strategy":"email_code","attempts":null}}],"primary_email_address_id":"idn_1","public_metadata":{"z":1,"a":{"y":[1,2.50,{"b":true,"a":false}],"x":"\u00e9\n\"q\""}},"private_metadata":{},"unsafe_metadata":{"big":18446744073709551616,"neg":-5,"negzero":-0,"exp":1e3,"max":18446744073709551615,"min":-9223372036854775808}}}"#,
            ),
            (
                "user.created",
                "{ \"data\" : { \"id\" : \"user_2\" , \"k\\u0065y\" : 1, \"key\": 2, \"dup\": 1, \"dup\": 2 } , \"timestamp\": \"soon\" }",
            ),
            ("user.deleted", r#"{"data":{"id":"user_3","deleted":true,"object":"user"}}"#),
            ("user.updated", r#"{"data":{"id":"user_3","deleted":true}}"#),
            (
                "organizationMembership.created",
                r#"{"data":{"id":"orgmem_1","role":"admin","organization":{"id":"org_1","name":"A"},"public_user_data":{"user_id":"user_1","identifier":"a@x.io"},"updated_at":5},"timestamp":6}"#,
            ),
            (
                "organizationMembership.deleted",
                r#"{"data":{"id":"orgmem_2","organization":{"id":"org_1"}}}"#,
            ),
            ("organization.updated", r#"{"data":{"id":"org_1","name":"B","updated_at":9}}"#),
            // Errors, and bodies only the tree reader reads as it should.
            ("organizationMembership.created", r#"{"data":{"id":"orgmem_3","organization":{"id":"org_1"}}}"#),
            ("user.updated", r#"{"data":{"id":"u","first_name":3}}"#),
            ("user.updated", r#"{"data":{"id":"u","first_name":"a","first_name":"b"}}"#),
            ("user.updated", r#"{"data":{"id":"u"},"data":{"id":"v"}}"#),
            ("user.updated", r#"{"data":{"id":""}}"#),
            ("user.updated", r#"{"data":{"id":5}}"#),
            ("user.updated", r#"{"data":[1]}"#),
            ("user.updated", r#"[{"id":"u"},1]"#),
            ("user.updated", r#"{"data":null}"#),
            ("user.updated", r#"{"data":{"id":"u"}"#),
            ("user.updated", "not json"),
        ];
        for (t, body) in cases {
            let tree = read_with(read_tree, t, body);
            let fast = read_with(
                |k, a, b, ts| {
                    read_borrowed(k, a, b, ts)
                        .map(|c| Parsed::Change(Box::new(c)))
                        .ok_or(PayloadError::NoData)
                },
                t,
                body,
            );
            if let Ok(f) = &fast {
                assert_eq!(tree.as_ref(), Ok(f), "{body}");
            }
            assert_eq!(
                read_with(
                    |k, a, b, ts| {
                        let _ = (k, a);
                        parse_event(t, b, ts)
                    },
                    t,
                    body
                ),
                tree,
                "{body}"
            );
        }
        // The common shapes take the borrowed path.
        for (t, body) in &cases[..7] {
            let (k, a) = resolve(t).unwrap();
            assert!(read_borrowed(k, a, body, 7).is_some(), "{body}");
        }
    }

    #[test]
    fn canonical_text_is_serde_jsons() {
        for raw in [
            r#"{"b":1,"a":[{"d":null,"c":"x\/y"}],"\u0061":2,"a":3}"#,
            r#"[1, -1, 0, -0, 1.0, 1e2, -9223372036854775809, 18446744073709551615, 12345678901234567890123]"#,
            r#"" plain ""#,
            r#""esc\u00e9\t""#,
            "true",
            " null ",
            r#"{"x":{"z":{},"y":[]}}"#,
        ] {
            let mut out = String::new();
            write_canonical(raw, &mut out).unwrap();
            let v: Value = serde_json::from_str(raw).unwrap();
            assert_eq!(out, v.to_string(), "{raw}");
        }
        assert!(write_canonical("{", &mut String::new()).is_none());
        // Deeper than the reference reader goes: given up, not a stack overflow.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(write_canonical(&deep, &mut String::new()).is_none());
        let ok = format!("{}{}", "[".repeat(32), "]".repeat(32));
        let mut out = String::new();
        write_canonical(&ok, &mut out).unwrap();
        assert_eq!(out, ok);
    }

    #[test]
    fn legacy_roles_normalize() {
        assert_eq!(normalize_role("admin"), "org:admin");
        assert_eq!(normalize_role("basic_member"), "org:member");
        assert_eq!(normalize_role("org:billing"), "org:billing");
    }
}
