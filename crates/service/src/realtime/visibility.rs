//! What a viewer may see: session viewers get allow-listed fields only, and an
//! `org:` topic only while they are a live member of the organization.
//!
//! Owns: the field allow-lists per Clerk kind (read from
//! [`Kind::public_fields`](crate::clerk::model::Kind::public_fields)) and the
//! membership check against the synced store. Must never: show a session viewer
//! a field that is not allow-listed (a field Clerk adds tomorrow stays private
//! until someone decides otherwise), or write to the store. See ARCHITECTURE.md.

use crate::clerk::model::Kind;
use crate::store::db::Database;
use crate::store::read;
use crate::store::tx::RefCol;
use serde_json::{Map, Value};

/// Who is watching: decides which frames a connection gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Viewer {
    /// The server-side API token (or an open server): full records, any topic.
    Service,
    /// A Clerk session: only public fields, only its own user and its organizations.
    User(String),
}

// Allow-lists, not deny-lists: a field Clerk adds tomorrow stays private until
// someone decides otherwise. Modelled on what Clerk's own Frontend API shows a
// signed-in user: never `private_metadata`; for other people only the
// `public_user_data` Clerk itself puts on memberships.

/// A user record, as its owner sees it. A session may subscribe to `user:{id}`
/// only for its own id, so `primary_email_address` goes only to the user it
/// belongs to; other people's email and phone lists never do.
pub const USER_PUBLIC: &[&str] = &[
    "id",
    "object",
    "first_name",
    "last_name",
    "username",
    "image_url",
    "profile_image_url",
    "has_image",
    "public_metadata",
    "primary_email_address",
    "created_at",
    "updated_at",
];

/// An organization, as its members see it.
pub const ORG_PUBLIC: &[&str] = &[
    "id",
    "object",
    "name",
    "slug",
    "image_url",
    "has_image",
    "public_metadata",
    "members_count",
    "max_allowed_memberships",
    "admin_delete_enabled",
    "created_at",
    "updated_at",
];

/// A membership, as the organization's members see it.
pub const MEMBERSHIP_PUBLIC: &[&str] = &[
    "id",
    "object",
    "role",
    "role_name",
    "permissions",
    "public_metadata",
    "public_user_data",
    "organization",
    "organization_id",
    "user_id",
    "created_at",
    "updated_at",
];

/// Clerk's public user data (what other members of an organization see).
pub const PUBLIC_USER_DATA: &[&str] = &[
    "user_id",
    "first_name",
    "last_name",
    "username",
    "image_url",
    "profile_image_url",
    "has_image",
    "identifier",
];

fn keep(map: &Map<String, Value>, allowed: &[&str]) -> Map<String, Value> {
    map.iter()
        .filter(|(k, _)| allowed.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

pub(crate) fn allow_list(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::User => USER_PUBLIC,
        Kind::Organization => ORG_PUBLIC,
        Kind::Membership => MEMBERSHIP_PUBLIC,
        _ => &[],
    }
}

/// The public view of a record (`data` of a frame for a session viewer).
pub fn public_data(kind: Kind, data: &Value) -> Value {
    let Value::Object(m) = data else {
        return Value::Null;
    };
    let mut out = keep(m, allow_list(kind));
    if kind == Kind::Membership {
        if let Some(Value::Object(p)) = out.get("public_user_data") {
            let p = keep(p, PUBLIC_USER_DATA);
            out.insert("public_user_data".into(), Value::Object(p));
        }
        if let Some(Value::Object(o)) = out.get("organization") {
            let o = keep(o, ORG_PUBLIC);
            out.insert("organization".into(), Value::Object(o));
        }
    }
    Value::Object(out)
}

/// Is `user_id` a live member of `org_id` in the synced store?
pub async fn is_member(db: &Database, user_id: &str, org_id: &str) -> Result<bool, sqlx::Error> {
    const PAGE: i64 = 500;
    let mut after: Option<String> = None;
    loop {
        let rows = read::list_live(
            db,
            Kind::Membership,
            Some((RefCol::UserId, user_id)),
            after.as_deref(),
            PAGE,
        )
        .await?;
        if rows
            .iter()
            .any(|m| m.organization_id.as_deref() == Some(org_id))
        {
            return Ok(true);
        }
        if (rows.len() as i64) < PAGE {
            return Ok(false);
        }
        after = rows.last().map(|r| r.id.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn public_data_keeps_only_allowed_fields() {
        let m = json!({
            "id": "orgmem_1", "role": "org:admin", "private_metadata": {"x": 1},
            "public_user_data": {"user_id": "u", "first_name": "A", "secret": 1},
            "organization": {"id": "o", "name": "O", "private_metadata": {"y": 2}},
        });
        let p = public_data(Kind::Membership, &m);
        assert!(p.get("private_metadata").is_none());
        assert_eq!(
            p["public_user_data"],
            json!({"user_id": "u", "first_name": "A"})
        );
        assert_eq!(p["organization"], json!({"id": "o", "name": "O"}));
        let u = json!({"id": "u", "first_name": "A", "private_metadata": {}, "unsafe_metadata": {},
                       "email_addresses": [], "primary_email_address": "a@x"});
        let p = public_data(Kind::User, &u);
        assert_eq!(
            p,
            json!({"id": "u", "first_name": "A", "primary_email_address": "a@x"})
        );
        assert_eq!(public_data(Kind::User, &Value::Null), Value::Null);
    }
}
