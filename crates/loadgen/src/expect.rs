//! The final state a correct sync must reach for a set of events (`--expect FILE`).
//!
//! Owns: an independent, deliberately simple reference implementation of the
//! convergence rules of ARCHITECTURE.md ("The rules every part keeps"), computed from the raw bodies (not
//! from the generator's internals, so it also checks hand-written streams).
//!
//! Must never: depend on delivery order or on duplicates (the result is a function
//! of the *set* of events), or share code with the real sync: an oracle that
//! reuses the code under test proves nothing.
//!
//! # File format
//!
//! One JSON object:
//!
//! ```json
//! {
//!   "users": {
//!     "user_...": {"deleted": false, "updated_at": 1735689600123,
//!                  "first_name": "Ada", "last_name": null, "username": "ada1",
//!                  "primary_email_address": "ada@example.org"}
//!   },
//!   "organizations": {
//!     "org_...": {"deleted": false, "updated_at": 1735689600456,
//!                 "name": "Acme Labs", "slug": "acme-labs"}
//!   },
//!   "memberships": {
//!     "orgmem_...": {"deleted": true, "organization_id": "org_...",
//!                    "user_id": "user_...", "role": "org:member"}
//!   }
//! }
//! ```
//!
//! Rules, per entity id:
//! - The record (every field but `deleted`) comes from the winning *full* payload:
//!   the greatest `(version, is_delete, svix_id)`, where version is `data.updated_at`,
//!   else the envelope `timestamp`, else 0. Deleted users and organizations arrive as
//!   `{deleted, id, object}` only and never provide a record; a deleted membership
//!   arrives as its full object and does.
//! - `deleted` is true once any `*.deleted` event for the id exists: a tombstone is
//!   never resurrected (Clerk never reuses ids).
//! - For a deleted entity the other fields describe its last full record (what the
//!   archive keeps), or are null when no full record was seen.
//! - Cascade: a membership whose user or organization is deleted is deleted.
//! - `primary_email_address` is the `email_address` of the entry of
//!   `email_addresses` whose `id` is `primary_email_address_id`.
//! - `role` uses today's keys: the legacy `admin` / `basic_member` become
//!   `org:admin` / `org:member` (and a bare key `x` becomes `org:x`), as the read
//!   API reports roles.
//! - Events of other types are ignored; the maps are sorted by id.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpectedUser {
    pub deleted: bool,
    pub updated_at: Option<i64>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub username: Option<String>,
    pub primary_email_address: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpectedOrganization {
    pub deleted: bool,
    pub updated_at: Option<i64>,
    pub name: Option<String>,
    pub slug: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpectedMembership {
    pub deleted: bool,
    pub organization_id: Option<String>,
    pub user_id: Option<String>,
    pub role: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpectedState {
    pub users: BTreeMap<String, ExpectedUser>,
    pub organizations: BTreeMap<String, ExpectedOrganization>,
    pub memberships: BTreeMap<String, ExpectedMembership>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExpectError {
    #[error("event {svix_id} is not JSON: {source}")]
    NotJson {
        svix_id: String,
        source: serde_json::Error,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Family {
    User,
    Organization,
    Membership,
}

/// One last-writer-wins register.
#[derive(Default)]
struct Register {
    /// ((version, is_delete, svix_id), data) of the winning full payload.
    record: Option<((i64, bool, String), Value)>,
    deleted: bool,
}

fn opt_str(v: &Value) -> Option<String> {
    v.as_str().map(str::to_owned)
}

/// Clerk's legacy role keys as today's, written out here on purpose (see the
/// module doc: the oracle does not call the sync's own normalization).
fn current_role(role: &str) -> String {
    match role {
        "admin" => "org:admin".to_owned(),
        "basic_member" => "org:member".to_owned(),
        r if r.contains(':') => r.to_owned(),
        r => format!("org:{r}"),
    }
}

/// `{deleted, id, object}` and nothing else: a tombstone notice, not a record.
fn is_full_record(data: &serde_json::Map<String, Value>) -> bool {
    data.keys()
        .any(|k| !matches!(k.as_str(), "deleted" | "id" | "object"))
}

/// Folds `(svix_id, body)` pairs (any order, duplicates allowed) into the state.
pub fn expected_state<'a, I>(events: I) -> Result<ExpectedState, ExpectError>
where
    I: IntoIterator<Item = (&'a str, &'a [u8])>,
{
    let mut regs: HashMap<(Family, String), Register> = HashMap::new();
    for (svix_id, body) in events {
        let v: Value = serde_json::from_slice(body).map_err(|source| ExpectError::NotJson {
            svix_id: svix_id.to_owned(),
            source,
        })?;
        let Some((family, action)) = v["type"].as_str().and_then(|t| t.split_once('.')) else {
            continue;
        };
        let family = match family {
            "user" => Family::User,
            "organization" => Family::Organization,
            "organizationMembership" => Family::Membership,
            _ => continue,
        };
        let Some(data) = v["data"].as_object() else {
            continue;
        };
        let Some(id) = data.get("id").and_then(Value::as_str) else {
            continue;
        };
        let is_delete = action == "deleted" || data.get("deleted") == Some(&Value::Bool(true));
        let version = data
            .get("updated_at")
            .and_then(Value::as_i64)
            .or_else(|| v["timestamp"].as_i64())
            .unwrap_or(0);
        let reg = regs.entry((family, id.to_owned())).or_default();
        reg.deleted |= is_delete;
        if is_full_record(data) {
            let rank = (version, is_delete, svix_id.to_owned());
            if reg.record.as_ref().is_none_or(|(best, _)| rank > *best) {
                reg.record = Some((rank, Value::Object(data.clone())));
            }
        }
    }

    let mut state = ExpectedState::default();
    let deleted_ids: HashSet<&str> = regs
        .iter()
        .filter(|((f, _), r)| r.deleted && *f != Family::Membership)
        .map(|((_, id), _)| id.as_str())
        .collect();
    for ((family, id), reg) in &regs {
        let null = Value::Null;
        let d = reg.record.as_ref().map_or(&null, |(_, d)| d);
        let updated_at = d["updated_at"].as_i64();
        match family {
            Family::User => {
                let primary = d["primary_email_address_id"].as_str();
                let primary_email_address = d["email_addresses"].as_array().and_then(|list| {
                    list.iter()
                        .find(|e| primary.is_some() && e["id"].as_str() == primary)
                        .and_then(|e| opt_str(&e["email_address"]))
                });
                state.users.insert(
                    id.clone(),
                    ExpectedUser {
                        deleted: reg.deleted,
                        updated_at,
                        first_name: opt_str(&d["first_name"]),
                        last_name: opt_str(&d["last_name"]),
                        username: opt_str(&d["username"]),
                        primary_email_address,
                    },
                );
            }
            Family::Organization => {
                state.organizations.insert(
                    id.clone(),
                    ExpectedOrganization {
                        deleted: reg.deleted,
                        updated_at,
                        name: opt_str(&d["name"]),
                        slug: opt_str(&d["slug"]),
                    },
                );
            }
            Family::Membership => {
                let organization_id =
                    opt_str(&d["organization"]["id"]).or_else(|| opt_str(&d["organization_id"]));
                let user_id =
                    opt_str(&d["public_user_data"]["user_id"]).or_else(|| opt_str(&d["user_id"]));
                // Cascade: deleting a user or an organization deletes its memberships,
                // and a membership for an already-deleted one is never created.
                let cascaded = [&organization_id, &user_id]
                    .iter()
                    .any(|x| x.as_deref().is_some_and(|x| deleted_ids.contains(x)));
                state.memberships.insert(
                    id.clone(),
                    ExpectedMembership {
                        deleted: reg.deleted || cascaded,
                        organization_id,
                        user_id,
                        role: d["role"].as_str().map(current_role),
                    },
                );
            }
        }
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{generate, GenConfig};
    use crate::plan::{plan, PlanConfig};
    use serde_json::json;

    fn user(id: &str, at: i64, first: &str, emails: &[(&str, &str)], primary: &str) -> Value {
        let list: Vec<Value> = emails
            .iter()
            .map(|(i, a)| json!({"id": i, "email_address": a, "object": "email_address"}))
            .collect();
        json!({"type": "user.updated", "timestamp": at, "object": "event", "data": {
            "id": id, "object": "user", "first_name": first, "last_name": null,
            "username": null, "email_addresses": list, "primary_email_address_id": primary,
            "updated_at": at}})
    }

    fn deleted(ty: &str, id: &str, object: &str, at: i64) -> Value {
        json!({"type": ty, "timestamp": at, "object": "event",
               "data": {"deleted": true, "id": id, "object": object}})
    }

    fn org(ty: &str, id: &str, at: i64, name: &str) -> Value {
        json!({"type": ty, "timestamp": at, "object": "event", "data": {
            "id": id, "object": "organization", "name": name, "slug": name.to_lowercase(),
            "updated_at": at}})
    }

    fn mem(ty: &str, id: &str, org: &str, user: &str, role: &str, at: i64) -> Value {
        json!({"type": ty, "timestamp": at, "object": "event", "data": {
            "id": id, "object": "organization_membership", "organization": {"id": org},
            "public_user_data": {"user_id": user}, "role": role, "updated_at": at}})
    }

    fn fold(events: &[(&str, Value)]) -> ExpectedState {
        let bodies: Vec<(String, Vec<u8>)> = events
            .iter()
            .map(|(id, v)| (id.to_string(), serde_json::to_vec(v).unwrap()))
            .collect();
        expected_state(bodies.iter().map(|(i, b)| (i.as_str(), b.as_slice()))).unwrap()
    }

    /// A hand-checked stream: every rule once.
    fn hand_stream() -> Vec<(&'static str, Value)> {
        let mut created = user("user_a", 100, "Ann", &[("idn_1", "ann@x.org")], "idn_1");
        created["type"] = json!("user.created");
        vec![
            ("msg_01", created),
            // Newer record wins even if it arrives first...
            (
                "msg_03",
                user(
                    "user_a",
                    300,
                    "Anna",
                    &[("idn_1", "ann@x.org"), ("idn_2", "anna@y.org")],
                    "idn_2",
                ),
            ),
            // ...and an older one arriving late changes nothing.
            (
                "msg_02",
                user("user_a", 200, "Annie", &[("idn_1", "ann@x.org")], "idn_1"),
            ),
            // Equal versions: the greater svix-id wins.
            ("msg_10", user("user_b", 500, "Bo", &[], "")),
            ("msg_11", user("user_b", 500, "Bob", &[], "")),
            // User c is deleted; a late update never resurrects it, and the record
            // reported is the last full one.
            ("msg_20", user("user_c", 100, "Cy", &[], "")),
            ("msg_22", deleted("user.deleted", "user_c", "user", 150)),
            ("msg_21", user("user_c", 120, "Cyd", &[], "")),
            ("msg_30", org("organization.created", "org_1", 100, "One")),
            ("msg_31", org("organization.updated", "org_1", 400, "Uno")),
            ("msg_40", org("organization.created", "org_2", 100, "Two")),
            (
                "msg_41",
                deleted("organization.deleted", "org_2", "organization", 900),
            ),
            // m1: role change wins by version.
            (
                "msg_50",
                mem(
                    "organizationMembership.created",
                    "orgmem_1",
                    "org_1",
                    "user_a",
                    "org:member",
                    100,
                ),
            ),
            (
                "msg_51",
                mem(
                    "organizationMembership.updated",
                    "orgmem_1",
                    "org_1",
                    "user_a",
                    "org:admin",
                    200,
                ),
            ),
            // m2: its user is deleted -> cascade.
            (
                "msg_60",
                mem(
                    "organizationMembership.created",
                    "orgmem_2",
                    "org_1",
                    "user_c",
                    "basic_member",
                    110,
                ),
            ),
            // m3: its org is deleted -> cascade.
            (
                "msg_70",
                mem(
                    "organizationMembership.created",
                    "orgmem_3",
                    "org_2",
                    "user_a",
                    "admin",
                    120,
                ),
            ),
            // m4: deleted itself; at an equal version the delete's record wins.
            (
                "msg_80",
                mem(
                    "organizationMembership.created",
                    "orgmem_4",
                    "org_1",
                    "user_b",
                    "org:member",
                    100,
                ),
            ),
            (
                "msg_82",
                mem(
                    "organizationMembership.deleted",
                    "orgmem_4",
                    "org_1",
                    "user_b",
                    "org:admin",
                    300,
                ),
            ),
            (
                "msg_83",
                mem(
                    "organizationMembership.updated",
                    "orgmem_4",
                    "org_1",
                    "user_b",
                    "org:member",
                    300,
                ),
            ),
            // Unknown types are ignored.
            (
                "msg_90",
                json!({"type": "session.created", "data": {"id": "sess_1"}}),
            ),
        ]
    }

    #[test]
    fn hand_checked_stream() {
        let s = fold(&hand_stream());
        let u = |first: &str, at: i64, email: Option<&str>, deleted: bool| ExpectedUser {
            deleted,
            updated_at: Some(at),
            first_name: Some(first.into()),
            last_name: None,
            username: None,
            primary_email_address: email.map(Into::into),
        };
        assert_eq!(s.users["user_a"], u("Anna", 300, Some("anna@y.org"), false));
        assert_eq!(s.users["user_b"], u("Bob", 500, None, false));
        assert_eq!(s.users["user_c"], u("Cyd", 120, None, true));
        assert_eq!(s.users.len(), 3);
        let o = |name: &str, slug: &str, deleted: bool| ExpectedOrganization {
            deleted,
            updated_at: Some(if deleted { 100 } else { 400 }),
            name: Some(name.into()),
            slug: Some(slug.into()),
        };
        assert_eq!(s.organizations["org_1"], o("Uno", "uno", false));
        assert_eq!(s.organizations["org_2"], o("Two", "two", true));
        let m = |org: &str, user: &str, role: &str, deleted: bool| ExpectedMembership {
            deleted,
            organization_id: Some(org.into()),
            user_id: Some(user.into()),
            role: Some(role.into()),
        };
        assert_eq!(
            s.memberships["orgmem_1"],
            m("org_1", "user_a", "org:admin", false)
        );
        assert_eq!(
            s.memberships["orgmem_2"],
            m("org_1", "user_c", "org:member", true)
        );
        assert_eq!(
            s.memberships["orgmem_3"],
            m("org_2", "user_a", "org:admin", true)
        );
        assert_eq!(
            s.memberships["orgmem_4"],
            m("org_1", "user_b", "org:admin", true)
        );
        assert_eq!(s.memberships.len(), 4);
    }

    #[test]
    fn order_and_duplicates_do_not_matter() {
        let mut events = hand_stream();
        let expected = fold(&events);
        events.reverse();
        let again = events.clone();
        events.extend(again);
        assert_eq!(fold(&events), expected);
    }

    #[test]
    fn a_generated_delivery_sequence_folds_to_the_same_state_as_its_events() {
        let ev = generate(&GenConfig {
            seed: 5,
            events: 3000,
            ..GenConfig::default()
        });
        let in_order = expected_state(ev.iter().map(|e| (&*e.svix_id, e.body.as_ref()))).unwrap();
        let p = plan(
            &ev,
            &PlanConfig {
                seed: 5,
                out_of_order: 0.3,
                duplicates: 0.3,
                forged: 0.0,
            },
        );
        let shuffled =
            expected_state(p.deliveries.iter().map(|d| (&*d.svix_id, d.body.as_ref()))).unwrap();
        assert_eq!(in_order, shuffled);
        // The stream exercises every kind of outcome.
        assert!(in_order.users.values().any(|u| u.deleted));
        assert!(in_order.users.values().any(|u| !u.deleted));
        assert!(in_order.organizations.values().any(|o| o.deleted));
        assert!(in_order.memberships.values().any(|m| m.deleted));
        assert!(in_order.memberships.values().any(|m| !m.deleted));
        // Non-deleted entities report the last generated version.
        let last = ev
            .iter()
            .rev()
            .find(|e| {
                e.action != crate::generate::Action::Deleted
                    && e.kind == crate::generate::EntityKind::User
                    && !in_order.users[&e.entity_id].deleted
            })
            .unwrap();
        assert_eq!(
            in_order.users[&last.entity_id].updated_at,
            Some(last.timestamp_ms)
        );
    }
}
