//! One committed change turned into realtime frames: the topics it is on and
//! the text each kind of viewer gets.
//!
//! Owns: routing a feed entry to topics (a membership goes to its user and its
//! organization), reading the entity's current record as the read API renders
//! it ([`crate::views`]), and building the full and the public frame. Must
//! never: send anything (the hub and the writer do) or write to the store.
//! Message data is the entity's record read when the message is built, not the
//! version of the change: two quick updates may both carry the newer record,
//! and a client always ends on the current state. See ARCHITECTURE.md.

use crate::clerk::kind::Topics;
use crate::clerk::model::Kind;
use crate::feed::FeedEntry;
use crate::realtime::protocol::Topic;
use crate::realtime::visibility::{allow_list, public_data};
use crate::store::db::Database;
use crate::store::read;
use crate::views::entity_json;
use axum::extract::ws::Utf8Bytes;
use serde_json::{json, Value};

/// A feed entry with what it takes to route it.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub entry: FeedEntry,
    /// For memberships: whose and in which organization (tombstones keep both).
    pub user_id: Option<String>,
    pub organization_id: Option<String>,
}

impl Resolved {
    /// The topics this change is published on, `*` last.
    pub fn topics(&self) -> Vec<Topic> {
        let mut t = Vec::with_capacity(3);
        match self.entry.kind.spec().topics {
            Topics::OwnUser => t.push(Topic::User(self.entry.entity_id.clone())),
            Topics::OwnOrganization => t.push(Topic::Org(self.entry.entity_id.clone())),
            Topics::UserAndOrganization => {
                t.extend(self.organization_id.clone().map(Topic::Org));
                t.extend(self.user_id.clone().map(Topic::User));
            }
            // Invitations, sessions, ... are for backends only.
            Topics::None => {}
        }
        t.push(Topic::All);
        t
    }

    /// The (user, organization) whose membership this change ended, if any.
    pub fn ended_membership(&self) -> Option<(&str, &str)> {
        let membership = self.entry.kind.spec().topics == Topics::UserAndOrganization;
        if membership && self.entry.operation == "delete" {
            Some((self.user_id.as_deref()?, self.organization_id.as_deref()?))
        } else {
            None
        }
    }
}

/// What routing needs (a membership's user and organization): on the feed
/// row; read from the store only for a membership row that lacks both.
pub async fn resolve(
    db: &Database,
    entry: FeedEntry,
) -> Result<Resolved, crate::store::StoreError> {
    let (user_id, organization_id) = match entry.kind.spec().topics {
        Topics::OwnUser | Topics::OwnOrganization | Topics::None => (None, None),
        Topics::UserAndOrganization => {
            if entry.user_id.is_some() || entry.organization_id.is_some() {
                (entry.user_id.clone(), entry.organization_id.clone())
            } else {
                match read::get(db, entry.kind, &entry.entity_id).await? {
                    Some(r) => (r.user_id, r.organization_id),
                    None => (None, None),
                }
            }
        }
    };
    Ok(Resolved {
        entry,
        user_id,
        organization_id,
    })
}

/// The entity's current record as the read API renders it; null when deleted.
pub async fn current_data(
    db: &Database,
    kind: Kind,
    id: &str,
) -> Result<Value, crate::store::StoreError> {
    Ok(match read::get(db, kind, id).await? {
        Some(r) if !r.deleted => entity_json(kind, &r),
        _ => Value::Null,
    })
}

/// One change, rendered for each of its topics.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub seq: i64,
    /// When the change committed (unix ms): the delivery-lag metric's start.
    pub committed_at: i64,
    /// (topic, frame for the API token, frame for a session viewer). A session
    /// frame is None on `*` and when nothing it may see changed.
    pub frames: Vec<(Topic, Utf8Bytes, Option<Utf8Bytes>)>,
}

/// Builds the frames of one change. `data` is the entity's current record.
pub fn render(r: &Resolved, topics: &[Topic], data: &Value) -> Rendered {
    let e = &r.entry;
    let mut full = json!({
        "seq": e.seq,
        "topic": Value::Null,
        "type": e.operation,
        "kind": e.kind,
        "id": e.entity_id,
        "changed_fields": e.changed_fields,
        "committed_at": e.committed_at,
        "data": data,
    });
    let allowed = allow_list(e.kind);
    let visible: Vec<&String> = e
        .changed_fields
        .iter()
        .filter(|f| allowed.contains(&f.as_str()))
        .collect();
    // An update that touched only private fields (and so `updated_at`) shows a
    // session viewer nothing.
    let public_worthwhile = !allowed.is_empty()
        && (visible.iter().any(|f| *f != "updated_at")
            || !matches!(e.operation.as_str(), "update" | "refresh"));
    let mut public = public_worthwhile.then(|| {
        json!({
            "seq": e.seq,
            "topic": Value::Null,
            "type": e.operation,
            "kind": e.kind,
            "id": e.entity_id,
            "changed_fields": visible,
            "committed_at": e.committed_at,
            "data": public_data(e.kind, data),
        })
    });
    let frames = topics
        .iter()
        .map(|t| {
            full["topic"] = Value::String(t.to_string());
            let f = Utf8Bytes::from(full.to_string());
            let p = match (&mut public, t) {
                (Some(p), Topic::User(_) | Topic::Org(_)) => {
                    p["topic"] = Value::String(t.to_string());
                    Some(Utf8Bytes::from(p.to_string()))
                }
                _ => None,
            };
            (t.clone(), f, p)
        })
        .collect();
    Rendered {
        seq: e.seq,
        committed_at: e.committed_at,
        frames,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: Kind, op: &str, fields: &[&str]) -> Resolved {
        Resolved {
            entry: FeedEntry {
                seq: 7,
                kind,
                entity_id: "x".into(),
                operation: op.into(),
                changed_fields: fields.iter().map(|s| s.to_string()).collect(),
                version: 1,
                svix_id: "msg".into(),
                committed_at: 1,
                user_id: Some("u".into()),
                organization_id: Some("o".into()),
            },
            user_id: Some("u".into()),
            organization_id: Some("o".into()),
        }
    }

    #[test]
    fn private_only_updates_show_session_viewers_nothing() {
        let r = entry(Kind::User, "update", &["private_metadata"]);
        let out = render(&r, &r.topics(), &json!({"id": "x"}));
        assert!(out.frames.iter().all(|(_, _, p)| p.is_none()));
        let r = entry(Kind::User, "update", &["first_name", "private_metadata"]);
        let out = render(&r, &r.topics(), &json!({"id": "x"}));
        let (t, _, p) = &out.frames[0];
        assert_eq!(t, &Topic::User("x".into()));
        let p: Value = serde_json::from_str(p.as_ref().unwrap()).unwrap();
        assert_eq!(p["changed_fields"], json!(["first_name"]));
        // `*` is never for session viewers.
        assert!(out.frames.last().unwrap().2.is_none());
    }

    #[test]
    fn a_create_names_no_field_and_still_shows_session_viewers() {
        // A create's feed row names no field: every field is new.
        let r = entry(Kind::User, "create", &[]);
        let out = render(&r, &r.topics(), &json!({"id": "x", "first_name": "Ada"}));
        let (_, f, p) = &out.frames[0];
        let f: Value = serde_json::from_str(f.as_ref()).unwrap();
        assert_eq!(f["changed_fields"], json!([]));
        let p: Value = serde_json::from_str(p.as_ref().unwrap()).unwrap();
        assert_eq!(p["type"], "create");
        assert_eq!(p["data"]["first_name"], "Ada");
    }

    #[test]
    fn memberships_go_to_their_org_and_user() {
        let r = entry(Kind::Membership, "delete", &["deleted"]);
        assert_eq!(
            r.topics(),
            vec![Topic::Org("o".into()), Topic::User("u".into()), Topic::All]
        );
        assert_eq!(r.ended_membership(), Some(("u", "o")));
        assert_eq!(
            entry(Kind::Session, "create", &[]).topics(),
            vec![Topic::All]
        );
    }
}
