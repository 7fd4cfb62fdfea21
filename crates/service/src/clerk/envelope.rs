//! The Clerk event envelope, read just far enough to route a delivery.
//!
//! Owns: deciding whether a verified body is a Clerk event envelope (`type` and a
//! `data` object) and deriving its partition key (declared per kind in
//! clerk/kind.rs). Must never: reject a delivery for
//! a field it does not need (Clerk's payloads drift; everything but the ids is
//! optional and unknown fields are kept in the stored raw body).

use crate::clerk::events::resolve;
use crate::clerk::kind::{Kind, Partition, Payload};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use std::borrow::Cow;
use std::fmt;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("body is empty")]
    Empty,
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
    #[error("body is not a Clerk event envelope: {0}")]
    NotEnvelope(&'static str),
}

/// What ingress needs of an event: its type, the time Clerk says it happened, and
/// the entity it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeHead {
    pub event_type: String,
    /// Envelope `timestamp` (ms), when present.
    pub timestamp_ms: Option<i64>,
    /// The entity id the event is about (`data.id`), when present.
    pub object_id: Option<String>,
    /// The partition key: events with the same key are applied one at a time.
    pub entity_key: Option<String>,
    /// The user the delivery concerns, when it names one: erasure finds a
    /// deleted user's deliveries by this (an indexed inbox column).
    pub user_id: Option<String>,
    /// Email addresses and phone numbers the delivery carries, normalized
    /// ([`normalize_contact`]): erasure also finds deliveries that name no user
    /// (`email.created` with `user_id: null`) by the user's addresses.
    pub contacts: Vec<String>,
}

/// Keys whose string value is an email address or a phone number, wherever
/// they appear in `data` (top level, list elements, `public_user_data`).
const CONTACT_KEYS: [&str; 6] = [
    "email_address",
    "to_email_address",
    "phone_number",
    "to_phone_number",
    "from_email_address",
    "identifier",
];

/// Lists of objects (in `data`) whose elements hold contact keys.
const CONTACT_LISTS: [&str; 4] = [
    "email_addresses",
    "phone_numbers",
    "external_accounts",
    "web3_wallets",
];

/// The form a contact is indexed and looked up in: trimmed and lowercased (an
/// address differs only in case across Clerk's objects).
pub fn normalize_contact(v: &str) -> Option<String> {
    let v = v.trim();
    (!v.is_empty() && v.len() <= 320).then(|| v.to_lowercase())
}

/// Every contact in an entity's or event's `data` object (see [`CONTACT_KEYS`]).
pub fn contacts_in(data: &serde_json::Value, out: &mut Vec<String>) {
    let Some(m) = data.as_object() else { return };
    for (k, v) in m {
        if CONTACT_KEYS.contains(&k.as_str()) {
            out.extend(v.as_str().and_then(normalize_contact));
        } else if CONTACT_LISTS.contains(&k.as_str()) {
            for e in v.as_array().into_iter().flatten() {
                contacts_in(e, out);
            }
        } else if k == "public_user_data" {
            contacts_in(v, out);
        }
    }
}

/// A visitor's answer to the scalars it does not read (booleans, numbers,
/// null): `$none`, whatever the type.
macro_rules! ignore_scalars {
    ($out:ty, $none:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<$out, E> {
            Ok($none)
        }
        fn visit_i64<E>(self, _: i64) -> Result<$out, E> {
            Ok($none)
        }
        fn visit_u64<E>(self, _: u64) -> Result<$out, E> {
            Ok($none)
        }
        fn visit_f64<E>(self, _: f64) -> Result<$out, E> {
            Ok($none)
        }
        fn visit_unit<E>(self) -> Result<$out, E> {
            Ok($none)
        }
        fn visit_none<E>(self) -> Result<$out, E> {
            Ok($none)
        }
    };
}

/// A string id, or nothing when the field is absent, null or of another type.
#[derive(Default)]
struct LenientId(Option<String>);

impl<'de> Deserialize<'de> for LenientId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LenientId;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<LenientId, E> {
                Ok(LenientId(Some(v.to_owned())))
            }
            ignore_scalars!(LenientId, LenientId(None));
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<LenientId, D::Error> {
                d.deserialize_any(V)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<LenientId, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(LenientId(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<LenientId, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(LenientId(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// `organization: {id}` on memberships; lenient about everything. Read in
/// place: the organization object (name, slug, metadata, ...) is skipped, not
/// built.
#[derive(Default)]
struct OrgRef(Option<String>);

impl<'de> Deserialize<'de> for OrgRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OrgRef;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<OrgRef, A::Error> {
                let mut id = None;
                while let Some(k) = a.next_key::<Cow<'de, str>>()? {
                    if k == "id" {
                        id = a.next_value::<LenientId>()?.0;
                    } else {
                        a.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(OrgRef(id))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<OrgRef, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(OrgRef(None))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<OrgRef, D::Error> {
                d.deserialize_any(V)
            }
            fn visit_str<E>(self, _: &str) -> Result<OrgRef, E> {
                Ok(OrgRef(None))
            }
            ignore_scalars!(OrgRef, OrgRef(None));
        }
        d.deserialize_any(V)
    }
}

/// [`contacts_in`] read straight from the JSON text of one value: the contacts
/// of an object (and of the lists and `public_user_data` it holds), without
/// building it as a `serde_json::Value` first (perf at intake: building the
/// email, phone and account lists as values, then walking them, was most of
/// the envelope parse). Anything but an object holds no contact.
struct ObjectContacts<'a> {
    out: &'a mut Vec<String>,
    /// Where this object's own `user_id` goes, when the caller wants it
    /// (`public_user_data.user_id`).
    user_id: Option<&'a mut Option<String>>,
}

/// A list whose object elements hold contacts ([`CONTACT_LISTS`]).
struct ListContacts<'a>(&'a mut Vec<String>);

impl<'de> de::DeserializeSeed<'de> for ObjectContacts<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ObjectContacts<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(mut self, mut a: A) -> Result<(), A::Error> {
        while let Some(k) = a.next_key::<Cow<'de, str>>()? {
            let k = k.as_ref();
            if CONTACT_KEYS.contains(&k) {
                let v = a.next_value::<LenientId>()?.0;
                self.out.extend(v.as_deref().and_then(normalize_contact));
            } else if CONTACT_LISTS.contains(&k) {
                a.next_value_seed(ListContacts(self.out))?;
            } else if k == "public_user_data" {
                a.next_value_seed(ObjectContacts {
                    out: self.out,
                    user_id: None,
                })?;
            } else if let (Some(slot), "user_id") = (self.user_id.as_deref_mut(), k) {
                // A string, else nothing (as `Value::as_str` read it).
                *slot = a.next_value::<LenientId>()?.0;
            } else {
                a.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
        while a.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    ignore_scalars!((), ());
}

impl<'de> de::DeserializeSeed<'de> for ListContacts<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ListContacts<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
        while a
            .next_element_seed(ObjectContacts {
                out: &mut *self.0,
                user_id: None,
            })?
            .is_some()
        {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
        while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    ignore_scalars!((), ());
}

/// `data` must be a JSON object; we read only the routing ids and the contacts.
struct DataHead {
    id: Option<String>,
    user_id: Option<String>,
    organization_id: Option<String>,
    organization: Option<String>,
    /// `public_user_data.user_id` (memberships).
    public_user_id: Option<String>,
    /// `payer.user_id` and `payer.organization_id` (Billing objects).
    payer_user_id: Option<String>,
    payer_organization_id: Option<String>,
    contacts: Vec<String>,
}

impl<'de> Deserialize<'de> for DataHead {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = DataHead;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<DataHead, A::Error> {
                let mut h = DataHead {
                    id: None,
                    user_id: None,
                    organization_id: None,
                    organization: None,
                    public_user_id: None,
                    payer_user_id: None,
                    payer_organization_id: None,
                    contacts: Vec::new(),
                };
                while let Some(k) = a.next_key::<Cow<'de, str>>()? {
                    match k.as_ref() {
                        k if CONTACT_KEYS.contains(&k) => {
                            let v = a.next_value::<LenientId>()?.0;
                            h.contacts.extend(v.as_deref().and_then(normalize_contact));
                        }
                        k if CONTACT_LISTS.contains(&k) => {
                            a.next_value_seed(ListContacts(&mut h.contacts))?;
                        }
                        "public_user_data" => {
                            a.next_value_seed(ObjectContacts {
                                out: &mut h.contacts,
                                user_id: Some(&mut h.public_user_id),
                            })?;
                        }
                        "payer" => {
                            // A Billing payer: its user or organization, and
                            // its email (the payer's contact).
                            let v = a.next_value::<serde_json::Value>()?;
                            let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
                            h.payer_user_id = s("user_id");
                            h.payer_organization_id = s("organization_id");
                            h.contacts
                                .extend(s("email").as_deref().and_then(normalize_contact));
                        }
                        "id" => h.id = a.next_value::<LenientId>()?.0,
                        "user_id" => h.user_id = a.next_value::<LenientId>()?.0,
                        "organization_id" => h.organization_id = a.next_value::<LenientId>()?.0,
                        "organization" => h.organization = a.next_value::<OrgRef>()?.0,
                        _ => {
                            a.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(h)
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Deserialize)]
struct RawEnvelope<'a> {
    #[serde(rename = "type", borrow)]
    ty: Option<Cow<'a, str>>,
    data: Option<DataHead>,
    #[serde(default)]
    timestamp: Option<serde_json::Value>,
}

/// Parses the routing head of an envelope from the raw (already verified) body.
pub fn parse_head(body: &[u8]) -> Result<EnvelopeHead, EnvelopeError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(EnvelopeError::Empty);
    }
    let raw: RawEnvelope<'_> = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) if e.is_data() => {
            // Valid JSON of the wrong shape (an array, `data` not an object, ...).
            return Err(if serde_json::from_slice::<IgnoredAny>(body).is_ok() {
                EnvelopeError::NotEnvelope("expected an object with `type` and a `data` object")
            } else {
                EnvelopeError::NotJson(e.to_string())
            });
        }
        Err(e) => return Err(EnvelopeError::NotJson(e.to_string())),
    };
    let event_type = match raw.ty {
        Some(t) if !t.trim().is_empty() => t.into_owned(),
        Some(_) => return Err(EnvelopeError::NotEnvelope("`type` is empty")),
        None => return Err(EnvelopeError::NotEnvelope("missing `type`")),
    };
    let data = raw
        .data
        .ok_or(EnvelopeError::NotEnvelope("missing `data` object"))?;
    // A timestamp of another type is ignored: the version then falls back to the
    // svix-timestamp (see sync), which is better than refusing a genuine delivery.
    let timestamp_ms = raw.timestamp.and_then(|v| {
        v.as_i64()
            .or_else(|| v.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
    });
    let kind = resolve(&event_type).map(|(k, _)| k);
    let entity_key = entity_key(kind, &data);
    let user_id = subject_user(kind, &data);
    let mut contacts = data.contacts;
    contacts.sort();
    contacts.dedup();
    Ok(EnvelopeHead {
        event_type,
        timestamp_ms,
        object_id: data.id,
        entity_key,
        user_id,
        contacts,
    })
}

/// The user a delivery concerns: the user itself, or the user a session,
/// email, SMS, membership (or any object with a `user_id`, modelled or not)
/// belongs to.
fn subject_user(kind: Option<Kind>, d: &DataHead) -> Option<String> {
    match kind.map(|k| k.spec().payload) {
        Some(Payload::User) => d.id.clone(),
        Some(Payload::Membership) => d.public_user_id.clone().or_else(|| d.user_id.clone()),
        Some(Payload::Billing) => d.payer_user_id.clone(),
        Some(Payload::Generic { .. }) | None => d.user_id.clone(),
    }
}

/// The partition an event belongs to ([`Kind::spec`]'s `partition`): its user
/// for user-scoped events, its organization for organization-scoped ones, else
/// the object itself (also for a family not modelled).
fn entity_key(kind: Option<Kind>, d: &DataHead) -> Option<String> {
    let key = kind.and_then(|k| {
        let spec = k.spec();
        match spec.partition {
            Partition::Own => d.id.clone(),
            Partition::User => d.user_id.clone().or_else(|| d.id.clone()),
            // Read in the order the payload names them (a membership nests its
            // organization; invitations and domains carry `organization_id`).
            Partition::Organization => match spec.payload {
                Payload::Membership => d.organization.clone().or_else(|| d.organization_id.clone()),
                Payload::Billing => d.payer_organization_id.clone(),
                Payload::User | Payload::Generic { .. } => {
                    d.organization_id.clone().or_else(|| d.organization.clone())
                }
            },
        }
    });
    key.or_else(|| d.id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_partitions_by_org() {
        let h = parse_head(br#"{"type":"organizationMembership.created","data":{"id":"orgmem_1","organization":{"id":"org_1"},"public_user_data":{"user_id":"user_1"}},"timestamp":5}"#).unwrap();
        assert_eq!(h.entity_key.as_deref(), Some("org_1"));
        assert_eq!(h.timestamp_ms, Some(5));
        assert_eq!(h.user_id.as_deref(), Some("user_1"));
    }

    #[test]
    fn subjects_and_contacts_are_read_at_intake() {
        let h = parse_head(br#"{"type":"user.updated","data":{"id":"user_1","email_addresses":[{"id":"idn_1","email_address":"Ada@X.io"}],"phone_numbers":[{"phone_number":"+15550001111"}],"first_name":"Ada"}}"#).unwrap();
        assert_eq!(h.user_id.as_deref(), Some("user_1"));
        assert_eq!(h.contacts, ["+15550001111", "ada@x.io"]);
        let h = parse_head(br#"{"type":"email.created","data":{"id":"ema_1","user_id":null,"to_email_address":"ada@x.io","body":"code 123"}}"#).unwrap();
        assert_eq!(h.user_id, None);
        assert_eq!(h.contacts, ["ada@x.io"]);
        let h = parse_head(br#"{"type":"sms.created","data":{"id":"sms_1","user_id":"user_2","to_phone_number":"+1555"}}"#).unwrap();
        assert_eq!(h.user_id.as_deref(), Some("user_2"));
        assert_eq!(h.contacts, ["+1555"]);
        let h = parse_head(br#"{"type":"organizationMembership.created","data":{"id":"m","public_user_data":{"user_id":"user_3","identifier":"Bo@x.io"}}}"#).unwrap();
        assert_eq!(
            (h.user_id.as_deref(), h.contacts),
            (Some("user_3"), vec!["bo@x.io".to_string()])
        );
    }

    /// The contacts read in place at intake are the ones [`contacts_in`] finds
    /// in the same `data` as a value (erasure looks deliveries up by them).
    #[test]
    fn contacts_read_in_place_match_contacts_in() {
        let bodies = [
            r#"{"type":"user.created","data":{"id":"user_1","email_addresses":[{"id":"idn_1","email_address":" Ada@X.io ","verification":{"status":"verified","strategy":"email_code"},"linked_to":[]},{"email_address":7},"x",[{"email_address":"nested@x.io"}]],"phone_numbers":{"phone_number":"+1 not a list"},"external_accounts":[{"provider":"google","email_address":"ada@gmail.com","identifier":"ADA@gmail.com","public_user_data":{"identifier":"deep@x.io"}}],"web3_wallets":null,"public_user_data":{"user_id":"user_9","identifier":"Pub@x.io","phone_numbers":[{"phone_number":"+1555"}],"public_user_data":{"email_address":"twice@x.io"}},"identifier":"top@x.io","unsafe_metadata":{"email_address":"meta@x.io"}}}"#,
            r#"{"type":"organizationMembership.created","data":{"id":"orgmem_1","organization":{"id":"org_1","name":"A","public_metadata":{"identifier":"no@x.io"}},"public_user_data":{"user_id":42,"identifier":""}}}"#,
            r#"{"type":"email.created","data":{"id":"ema_1","to_email_address":"To@X.io","from_email_address":null,"data":{"email_address":"inner@x.io"}}}"#,
        ];
        for body in bodies {
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            let mut expected = Vec::new();
            contacts_in(&v["data"], &mut expected);
            expected.sort();
            expected.dedup();
            let head = parse_head(body.as_bytes()).unwrap();
            assert_eq!(head.contacts, expected, "{body}");
            let public_user = v["data"]["public_user_data"]["user_id"].as_str();
            if head.event_type.starts_with("organizationMembership") {
                assert_eq!(head.user_id.as_deref(), public_user);
            }
        }
        let h = parse_head(bodies[0].as_bytes()).unwrap();
        assert!(h.contacts.contains(&"ada@x.io".to_string()));
        assert!(h.contacts.contains(&"twice@x.io".to_string()));
        assert!(!h.contacts.contains(&"meta@x.io".to_string()));
        let h = parse_head(bodies[1].as_bytes()).unwrap();
        assert_eq!(h.entity_key.as_deref(), Some("org_1"));
    }

    #[test]
    fn lenient_about_odd_fields() {
        let h = parse_head(br#"{"type":"x.y","data":{"id":7,"user_id":null,"organization":[1]},"timestamp":"soon"}"#).unwrap();
        assert_eq!(h.entity_key, None);
        assert_eq!(h.timestamp_ms, None);
    }

    #[test]
    fn rejects_non_envelopes() {
        assert_eq!(parse_head(b""), Err(EnvelopeError::Empty));
        assert!(matches!(
            parse_head(b"not json"),
            Err(EnvelopeError::NotJson(_))
        ));
        assert!(matches!(
            parse_head(b"[1,2]"),
            Err(EnvelopeError::NotEnvelope(_))
        ));
        assert!(matches!(
            parse_head(br#"{"data":{}}"#),
            Err(EnvelopeError::NotEnvelope(_))
        ));
        assert!(matches!(
            parse_head(br#"{"type":"user.created"}"#),
            Err(EnvelopeError::NotEnvelope(_))
        ));
        assert!(matches!(
            parse_head(br#"{"type":"user.created","data":"x"}"#),
            Err(EnvelopeError::NotEnvelope(_))
        ));
    }
}
