//! A topic's current state for a client that has none yet.
//!
//! Owns: reading a user's or an organization's record and its live memberships
//! (bounded by [`SNAPSHOT_MAX_MEMBERS`]), filtered for the viewer. Must never:
//! write to the store, or show a session viewer more than its public view.
//! See ARCHITECTURE.md.

use crate::clerk::model::Kind;
use crate::realtime::protocol::Topic;
use crate::realtime::render::current_data;
use crate::realtime::visibility::{public_data, Viewer};
use crate::store::db::Database;
use crate::store::read;
use crate::store::tx::RefCol;
use crate::views::membership_json;
use serde_json::{json, Value};

/// Members listed in a snapshot at most (`truncated` says when there are more).
pub const SNAPSHOT_MAX_MEMBERS: usize = 1000;

/// A topic's current state, for a client that has none yet (a browser cannot
/// call the read API with a session token): `{"user"|"organization": record,
/// "memberships": [...], "truncated": bool}`, public fields only for a session.
/// Applying the live frames that follow it (each carries its entity's current
/// record) converges on the store's state, even for changes the snapshot
/// already shows.
pub async fn snapshot(db: &Database, topic: &Topic, viewer: &Viewer) -> Result<Value, sqlx::Error> {
    let (kind, id, by) = match topic {
        Topic::User(id) => (Kind::User, id, RefCol::UserId),
        Topic::Org(id) => (Kind::Organization, id, RefCol::OrganizationId),
        Topic::All => return Ok(Value::Null),
    };
    let view = |kind: Kind, v: Value| match viewer {
        Viewer::Service => v,
        Viewer::User(_) => public_data(kind, &v),
    };
    let record = view(kind, current_data(db, kind, id).await?);
    let mut memberships = Vec::new();
    let mut after: Option<String> = None;
    let truncated = loop {
        let rows =
            read::list_live(db, Kind::Membership, Some((by, id)), after.as_deref(), 200).await?;
        let full_page = rows.len() == 200;
        after = rows.last().map(|r| r.id.clone());
        for r in rows {
            if memberships.len() == SNAPSHOT_MAX_MEMBERS {
                break;
            }
            memberships.push(view(Kind::Membership, membership_json(&r)));
        }
        if memberships.len() == SNAPSHOT_MAX_MEMBERS {
            break full_page || after.is_some();
        }
        if !full_page {
            break false;
        }
    };
    let key = if kind == Kind::User {
        "user"
    } else {
        "organization"
    };
    Ok(json!({ key: record, "memberships": memberships, "truncated": truncated }))
}
