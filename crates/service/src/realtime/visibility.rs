//! What a viewer may see: session viewers get allow-listed fields only, and an
//! `org:` topic only while they are a live member of the organization.
//!
//! Owns: applying the field allow-lists declared per Clerk kind (clerk/kind.rs,
//! `Spec::public`) and the membership check against the synced store. Must
//! never: show a session viewer a field that is not allow-listed (a field Clerk
//! adds tomorrow stays private until someone decides otherwise), or write to
//! the store. See ARCHITECTURE.md.

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

fn keep(map: &Map<String, Value>, allowed: &[&str]) -> Map<String, Value> {
    map.iter()
        .filter(|(k, _)| allowed.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The top-level fields a session viewer sees of `kind` (declared per kind:
/// [`Kind::spec`]'s `public`); empty: none.
pub(crate) fn allow_list(kind: Kind) -> &'static [&'static str] {
    kind.spec().public.fields
}

/// The public view of a record (`data` of a frame for a session viewer).
pub fn public_data(kind: Kind, data: &Value) -> Value {
    let Value::Object(m) = data else {
        return Value::Null;
    };
    let public = kind.spec().public;
    let mut out = keep(m, public.fields);
    for (field, allowed) in public.nested {
        if let Some(Value::Object(inner)) = out.get(*field) {
            let inner = keep(inner, allowed);
            out.insert((*field).into(), Value::Object(inner));
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
