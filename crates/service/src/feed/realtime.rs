//! The realtime hub: committed changes fanned out to WebSocket connections by topic.
//!
//! Owns: turning change-feed entries into topic messages (`user:{id}`, `org:{id}`,
//! `*`), the registry of connections and their subscriptions, per-connection
//! bounded queues, the resume buffers that make a `since` replay gapless, live
//! revocation of `org:` subscriptions when a membership is deleted, and the
//! allow-lists that strip private fields for session-token viewers.
//! Must never: wait on a connection (the hub only `try_send`s; a full queue marks
//! the connection as too slow and stops feeding it), write to the store, or save a
//! feed checkpoint: realtime is live-only plus resume, so the hub starts at the
//! feed head at boot and keeps its position in memory. A durable checkpoint would
//! replay, after a restart, changes nobody is connected to receive (and a
//! reconnecting client resumes from *its* last `seq` via [`replay_page`] anyway).
//!
//! Message data is the entity's record read from the store when the message is
//! built, not the version of the change: two quick updates may both carry the
//! newer record, and a client always ends on the current state.

use crate::api::read::{membership_json, user_json};
use crate::clerk::model::Kind;
use crate::feed::{last_seq, read_after, read_filtered, FeedEntry, FeedFilter};
use crate::store::db::Database;
use crate::store::read;
use crate::store::tx::{EntityRow, RefCol};
use axum::extract::ws::Utf8Bytes;
use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// The consumer's name (the lag metric's label). It has no checkpoint row.
pub const CONSUMER: &str = "realtime";

/// Feed entries read per round.
const BATCH: i64 = 500;

/// A stream a connection can subscribe to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// A user's own record and its memberships.
    User(String),
    /// An organization's record and its memberships (the member list).
    Org(String),
    /// Every change of every kind (API token only).
    All,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("unknown topic: use user:{{id}}, org:{{id}} or *")]
    Unknown,
    #[error("invalid id in topic: 1 to 128 letters, digits, '_' or '-'")]
    BadId,
}

impl Topic {
    pub fn parse(s: &str) -> Result<Topic, TopicError> {
        if s == "*" {
            return Ok(Topic::All);
        }
        let (make, id): (fn(String) -> Topic, &str) = if let Some(id) = s.strip_prefix("user:") {
            (Topic::User, id)
        } else if let Some(id) = s.strip_prefix("org:") {
            (Topic::Org, id)
        } else {
            return Err(TopicError::Unknown);
        };
        // Clerk ids are `user_2abc...`: a strict alphabet keeps topics unambiguous
        // and keeps odd bytes out of log lines and error frames.
        let ok = !id.is_empty()
            && id.len() <= 128
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok {
            return Err(TopicError::BadId);
        }
        Ok(make(id.to_string()))
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topic::User(id) => write!(f, "user:{id}"),
            Topic::Org(id) => write!(f, "org:{id}"),
            Topic::All => f.write_str("*"),
        }
    }
}

/// Who is watching: decides which frames a connection gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Viewer {
    /// The server-side API token (or an open server): full records, any topic.
    Service,
    /// A Clerk session: only public fields, only its own user and its organizations.
    User(String),
}

// ---------------------------------------------------------------------------
// What a session viewer may see.
//
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

fn allow_list(kind: Kind) -> &'static [&'static str] {
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

// ---------------------------------------------------------------------------
// Building messages.

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
        match self.entry.kind {
            Kind::User => t.push(Topic::User(self.entry.entity_id.clone())),
            Kind::Organization => t.push(Topic::Org(self.entry.entity_id.clone())),
            Kind::Membership => {
                t.extend(self.organization_id.clone().map(Topic::Org));
                t.extend(self.user_id.clone().map(Topic::User));
            }
            // Invitations, sessions, ... are for backends only.
            _ => {}
        }
        t.push(Topic::All);
        t
    }

    /// The (user, organization) whose membership this change ended, if any.
    pub fn ended_membership(&self) -> Option<(&str, &str)> {
        if self.entry.kind == Kind::Membership && self.entry.operation == "delete" {
            Some((self.user_id.as_deref()?, self.organization_id.as_deref()?))
        } else {
            None
        }
    }
}

/// What routing needs (a membership's user and organization): on the feed
/// row; read from the store only for a membership row that lacks both.
pub async fn resolve(db: &Database, entry: FeedEntry) -> Result<Resolved, sqlx::Error> {
    let (user_id, organization_id) = if entry.kind != Kind::Membership {
        (None, None)
    } else if entry.user_id.is_some() || entry.organization_id.is_some() {
        (entry.user_id.clone(), entry.organization_id.clone())
    } else {
        match read::get(db, Kind::Membership, &entry.entity_id).await? {
            Some(r) => (r.user_id, r.organization_id),
            None => (None, None),
        }
    };
    Ok(Resolved {
        entry,
        user_id,
        organization_id,
    })
}

fn object(row: &EntityRow) -> Value {
    match row.data.as_deref().map(serde_json::from_str::<Value>) {
        Some(Ok(v @ Value::Object(_))) => v,
        _ => Value::Object(Map::new()),
    }
}

/// The entity's current record as the read API renders it; null when deleted.
pub async fn current_data(db: &Database, kind: Kind, id: &str) -> Result<Value, sqlx::Error> {
    Ok(match read::get(db, kind, id).await? {
        Some(r) if !r.deleted => match kind {
            Kind::User => user_json(&r),
            Kind::Membership => membership_json(&r),
            _ => object(&r),
        },
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

// ---------------------------------------------------------------------------
// Resume.

/// How far back a `since` may reach.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResumeWindow {
    pub max_age: Duration,
    pub max_entries: i64,
}

/// Why a `since` cannot be honoured: the client must reload instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResumeRefused {
    #[error("since is older than the resume window")]
    TooOld,
    #[error("since is ahead of the change feed (was the server's database replaced?)")]
    Ahead,
    #[error("more than {0} changes to replay: reload the topic's state")]
    TooMany(i64),
}

/// Checks `since` against the window and against what the feed still holds
/// (entries past `feed_retention_days` are pruned).
pub async fn check_resume(
    db: &Database,
    since: i64,
    now_ms: i64,
    window: &ResumeWindow,
) -> Result<Result<(), ResumeRefused>, sqlx::Error> {
    let head = last_seq(db).await?;
    if since > head {
        return Ok(Err(ResumeRefused::Ahead));
    }
    if head - since > window.max_entries {
        return Ok(Err(ResumeRefused::TooOld));
    }
    // Entries after `since` were pruned (or never existed: a sequence gap; a
    // needless resync is the safe side of that doubt).
    let oldest = crate::store::maintenance::oldest_feed_seq(db).await?;
    if oldest > 0 && since + 1 < oldest {
        return Ok(Err(ResumeRefused::TooOld));
    }
    // The first change the client missed: older than the window, and the client
    // has been gone too long (a by-seq lookup, no scan).
    if let Some(first) = read_after(db, since, 1).await?.first() {
        let age_ms = now_ms.saturating_sub(first.committed_at);
        if age_ms > window.max_age.as_millis().min(i64::MAX as u128) as i64 {
            return Ok(Err(ResumeRefused::TooOld));
        }
    }
    Ok(Ok(()))
}

/// One frame of a replay.
#[derive(Debug, Clone)]
pub struct ReplayFrame {
    pub seq: i64,
    pub text: Utf8Bytes,
    /// Set when this change ended the viewer's own membership in this organization.
    pub ends_membership_in: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ReplayPage {
    pub frames: Vec<ReplayFrame>,
    /// Feed entries read for this page.
    pub read: usize,
    /// Every feed entry up to here was looked at (matching the topic or not).
    pub covered: i64,
    /// The feed head was reached.
    pub done: bool,
}

/// The feed rows a topic's replay reads: a user's or an organization's by
/// their index, every row for `*`.
pub fn feed_filter(topic: &Topic) -> FeedFilter<'_> {
    match topic {
        Topic::User(u) => FeedFilter::User(u),
        Topic::Org(o) => FeedFilter::Organization(o),
        Topic::All => FeedFilter::All,
    }
}

/// The frames for `topic` among the feed entries after `after` (one page).
pub async fn replay_page(
    db: &Database,
    topic: &Topic,
    viewer: &Viewer,
    after: i64,
    limit: i64,
) -> Result<ReplayPage, sqlx::Error> {
    // The head before the read: every entry of the topic up to it is in what
    // the read returns (feed order is commit order), so a last page covers it.
    let head = last_seq(db).await?;
    let entries = read_filtered(db, feed_filter(topic), after, limit).await?;
    let read = entries.len();
    let done = (entries.len() as i64) < limit;
    let last = entries.last().map_or(after, |e| e.seq);
    let covered = if done { last.max(head) } else { last };
    // Data is read at send time; within a page one read per entity is enough.
    let mut data_cache: HashMap<(Kind, String), Value> = HashMap::new();
    let mut frames = Vec::new();
    for e in entries {
        let maybe = match (topic, e.kind) {
            (Topic::All, _) | (_, Kind::Membership) => true,
            (Topic::User(u), Kind::User) => *u == e.entity_id,
            (Topic::Org(o), Kind::Organization) => *o == e.entity_id,
            _ => false,
        };
        if !maybe {
            continue;
        }
        let r = resolve(db, e).await?;
        let topics = r.topics();
        if !topics.contains(topic) {
            continue;
        }
        let key = (r.entry.kind, r.entry.entity_id.clone());
        let data = match data_cache.get(&key) {
            Some(d) => d.clone(),
            None => {
                let d = current_data(db, r.entry.kind, &r.entry.entity_id).await?;
                data_cache.insert(key, d.clone());
                d
            }
        };
        let rendered = render(&r, std::slice::from_ref(topic), &data);
        let Some((_, full, public)) = rendered.frames.into_iter().next() else {
            continue;
        };
        let text = match viewer {
            Viewer::Service => full,
            Viewer::User(_) => match public {
                Some(p) => p,
                None => continue,
            },
        };
        let ends_membership_in = match (viewer, r.ended_membership()) {
            (Viewer::User(me), Some((u, o))) if me == u => Some(o.to_string()),
            _ => None,
        };
        frames.push(ReplayFrame {
            seq: r.entry.seq,
            text,
            ends_membership_in,
        });
    }
    Ok(ReplayPage {
        frames,
        read,
        covered,
        done,
    })
}

// ---------------------------------------------------------------------------
// The hub.

/// What a connection's writer sends, in queue order.
#[derive(Debug)]
pub enum Outbound {
    /// A text frame (a control message, or a replayed change).
    Frame(Utf8Bytes),
    /// A live change's frame; `committed_at` (unix ms) times its delivery.
    Change { text: Utf8Bytes, committed_at: i64 },
    /// A WebSocket ping.
    Ping,
    /// Sends `ack`, replays `topic` after `since`, then lets the subscription's
    /// buffered live frames through; skipped if subscription `sub` is gone.
    Replay {
        topic: Topic,
        sub: u64,
        since: i64,
        ack: Utf8Bytes,
    },
    /// Sends a close frame and ends the connection.
    Close { code: u16, reason: String },
}

/// A control message (`{"type": ..., ...}`) as a frame.
pub fn control(v: Value) -> Outbound {
    Outbound::Frame(Utf8Bytes::from(v.to_string()))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    #[error("too many connections for this {0} (limit {1})")]
    TooManyConnections(&'static str, usize),
    #[error("already subscribed to this topic")]
    AlreadySubscribed,
    #[error("too many subscriptions on this connection (limit {0})")]
    TooManySubscriptions(usize),
    #[error("not subscribed to this topic")]
    NotSubscribed,
}

enum SubState {
    /// Registered, but live frames wait in `buffer` until the subscription is
    /// authorized and any replay is done (so nothing overtakes the replay).
    Pending {
        after: i64,
        buffer: Vec<(i64, Outbound)>,
    },
    /// Frames with `seq > floor` go straight to the queue.
    Live { floor: i64 },
}

/// One subscription of one connection. `id` tells it apart from an earlier
/// subscription to the same topic (unsubscribe, subscribe again) whose replay
/// may still be queued.
struct Sub {
    id: u64,
    state: SubState,
}

struct ConnSlot {
    tx: mpsc::Sender<Outbound>,
    viewer: Viewer,
    /// The budgets this connection counts against.
    keys: Vec<String>,
    too_slow: CancellationToken,
    topics: HashSet<Topic>,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    next_sub: u64,
    /// The last feed `seq` fanned out (or skipped for lack of subscribers).
    position: i64,
    conns: HashMap<u64, ConnSlot>,
    topics: HashMap<Topic, HashMap<u64, Sub>>,
    per_key: HashMap<String, usize>,
}

impl Registry {
    fn drop_sub(&mut self, id: u64, topic: &Topic) -> bool {
        let removed = match self.topics.get_mut(topic) {
            Some(subs) => {
                let r = subs.remove(&id).is_some();
                if subs.is_empty() {
                    self.topics.remove(topic);
                }
                r
            }
            None => false,
        };
        if let Some(c) = self.conns.get_mut(&id) {
            c.topics.remove(topic);
        }
        removed
    }

    /// Stops feeding a connection that cannot keep up and tells its writer.
    fn too_slow(&mut self, id: u64) {
        let topics: Vec<Topic> = match self.conns.get(&id) {
            Some(c) => c.topics.iter().cloned().collect(),
            None => return,
        };
        for t in &topics {
            self.drop_sub(id, t);
        }
        if let Some(c) = self.conns.get(&id) {
            c.too_slow.cancel();
        }
    }

    /// Hands one change's frames to its subscribers; returns the connections
    /// that could not take them.
    fn fan_out(&mut self, rendered: &Rendered, capacity: usize) -> Vec<u64> {
        let seq = rendered.seq;
        let mut slow = Vec::new();
        let Registry { topics, conns, .. } = self;
        for (topic, full, public) in &rendered.frames {
            let Some(subs) = topics.get_mut(topic) else {
                continue;
            };
            for (id, sub) in subs.iter_mut() {
                let Some(c) = conns.get(id) else {
                    continue;
                };
                let frame = match &c.viewer {
                    Viewer::Service => full.clone(),
                    Viewer::User(_) => match public {
                        Some(p) => p.clone(),
                        None => continue,
                    },
                };
                let out = Outbound::Change {
                    text: frame,
                    committed_at: rendered.committed_at,
                };
                let kept_up = match &mut sub.state {
                    SubState::Live { floor } => seq <= *floor || c.tx.try_send(out).is_ok(),
                    SubState::Pending { after, buffer } => {
                        if seq > *after {
                            buffer.push((seq, out));
                        }
                        buffer.len() <= capacity
                    }
                };
                if !kept_up {
                    slow.push(*id);
                }
            }
        }
        slow
    }

    /// Ends `user`'s session subscriptions to `org`; returns the connections
    /// that could not take the notice.
    fn revoke_user(&mut self, user: &str, org: &str) -> Vec<u64> {
        let topic = Topic::Org(org.to_string());
        let ids: Vec<u64> = match self.topics.get(&topic) {
            Some(subs) => subs
                .keys()
                .copied()
                .filter(|id| {
                    self.conns
                        .get(id)
                        .is_some_and(|c| matches!(&c.viewer, Viewer::User(u) if u == user))
                })
                .collect(),
            None => Vec::new(),
        };
        let mut slow = Vec::new();
        for id in ids {
            self.drop_sub(id, &topic);
            if !self.offer(id, Outbound::Frame(revoked_frame(&topic))) {
                slow.push(id);
            }
        }
        slow
    }

    /// Queues a frame without waiting; false if the connection is full or gone.
    fn offer(&self, id: u64, out: Outbound) -> bool {
        match self.conns.get(&id) {
            Some(c) => c.tx.try_send(out).is_ok(),
            None => false,
        }
    }
}

/// Fans committed changes out to connections. Cheap to share (`Arc`).
pub struct RealtimeHub {
    db: Database,
    registry: Mutex<Registry>,
    /// Frames a connection may have queued (and buffered during a resume).
    queue_capacity: usize,
    shutdown: CancellationToken,
}

/// A registered connection: deregisters (and frees its slot) when dropped.
pub struct Connection {
    pub id: u64,
    hub: Arc<RealtimeHub>,
    /// Cancelled when the hub gave up on this connection (queue full).
    pub too_slow: CancellationToken,
}

impl Drop for Connection {
    fn drop(&mut self) {
        let mut reg = self.hub.lock();
        if let Some(c) = reg.conns.remove(&self.id) {
            for t in &c.topics {
                if let Some(subs) = reg.topics.get_mut(t) {
                    subs.remove(&self.id);
                    if subs.is_empty() {
                        reg.topics.remove(t);
                    }
                }
            }
            for key in &c.keys {
                if let Some(n) = reg.per_key.get_mut(key) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        reg.per_key.remove(key);
                    }
                }
            }
        }
    }
}

impl RealtimeHub {
    /// A hub that starts after `position` (the feed head at boot).
    pub fn new(db: Database, position: i64, queue_capacity: usize) -> Self {
        Self {
            db,
            registry: Mutex::new(Registry {
                position,
                ..Default::default()
            }),
            queue_capacity: queue_capacity.max(1),
            shutdown: CancellationToken::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding the lock leaves plain maps behind, still usable.
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn db(&self) -> &Database {
        &self.db
    }

    /// The last `seq` the hub has fanned out.
    pub fn position(&self) -> i64 {
        self.lock().position
    }

    pub fn queue_capacity(&self) -> usize {
        self.queue_capacity
    }

    /// Cancelled when the server shuts down: every connection closes.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    pub fn connection_count(&self) -> usize {
        self.lock().conns.len()
    }

    /// Registers a connection if each of its `budgets` (key, most connections:
    /// a token identity, a client address) has room; returns it with the
    /// receiving end of its queue.
    pub fn connect(
        self: &Arc<Self>,
        budgets: Vec<(String, usize)>,
        viewer: Viewer,
    ) -> Result<(Connection, mpsc::Sender<Outbound>, mpsc::Receiver<Outbound>), HubError> {
        let (tx, rx) = mpsc::channel(self.queue_capacity);
        let too_slow = CancellationToken::new();
        let mut reg = self.lock();
        for (key, max) in &budgets {
            if reg.per_key.get(key).copied().unwrap_or(0) >= *max {
                let what = if key.starts_with("addr:") {
                    "address"
                } else {
                    "token"
                };
                return Err(HubError::TooManyConnections(what, *max));
            }
        }
        let mut keys = Vec::with_capacity(budgets.len());
        for (key, _) in budgets {
            *reg.per_key.entry(key.clone()).or_default() += 1;
            keys.push(key);
        }
        reg.next_id += 1;
        let id = reg.next_id;
        reg.conns.insert(
            id,
            ConnSlot {
                tx: tx.clone(),
                viewer,
                keys,
                too_slow: too_slow.clone(),
                topics: HashSet::new(),
            },
        );
        drop(reg);
        Ok((
            Connection {
                id,
                hub: self.clone(),
                too_slow,
            },
            tx,
            rx,
        ))
    }

    /// Registers a pending subscription (its live frames are buffered until
    /// [`Self::go_live`]); returns the position it starts after and its id.
    pub fn begin(&self, conn: u64, topic: &Topic, max_subs: usize) -> Result<(i64, u64), HubError> {
        let mut reg = self.lock();
        let position = reg.position;
        reg.next_sub += 1;
        let sub = reg.next_sub;
        let Some(c) = reg.conns.get_mut(&conn) else {
            return Err(HubError::NotSubscribed);
        };
        if c.topics.contains(topic) {
            return Err(HubError::AlreadySubscribed);
        }
        if c.topics.len() >= max_subs {
            return Err(HubError::TooManySubscriptions(max_subs));
        }
        c.topics.insert(topic.clone());
        reg.topics.entry(topic.clone()).or_default().insert(
            conn,
            Sub {
                id: sub,
                state: SubState::Pending {
                    after: position,
                    buffer: Vec::new(),
                },
            },
        );
        Ok((position, sub))
    }

    /// Ends a pending subscription's buffering: the `ack` frames first, then the frames
    /// after `covered` (what a replay delivered, or the start position), in
    /// order; later ones follow directly. Frames at or before `covered` are
    /// dropped: the replay already sent them. Under the hub's lock, so a
    /// revocation notice comes either instead of the ack or after it.
    pub fn go_live(
        &self,
        conn: u64,
        topic: &Topic,
        sub: u64,
        covered: i64,
        ack: Vec<Utf8Bytes>,
    ) -> Result<(), HubError> {
        let mut reg = self.lock();
        let Some(s) = reg
            .topics
            .get_mut(topic)
            .and_then(|s| s.get_mut(&conn))
            .filter(|s| s.id == sub)
        else {
            return Err(HubError::NotSubscribed);
        };
        let (floor, buffered) = match &mut s.state {
            SubState::Pending { after, buffer } => ((*after).max(covered), std::mem::take(buffer)),
            SubState::Live { floor } => (*floor, Vec::new()),
        };
        s.state = SubState::Live { floor };
        let frames = ack.into_iter().map(Outbound::Frame).chain(
            buffered
                .into_iter()
                .filter(|(seq, _)| *seq > floor)
                .map(|(_, f)| f),
        );
        for frame in frames {
            if !reg.offer(conn, frame) {
                reg.too_slow(conn);
                break;
            }
        }
        Ok(())
    }

    pub fn unsubscribe(&self, conn: u64, topic: &Topic) -> bool {
        self.lock().drop_sub(conn, topic)
    }

    /// Subscriptions a connection holds (pending ones included).
    pub fn subscription_count(&self, conn: u64) -> usize {
        self.lock().conns.get(&conn).map_or(0, |c| c.topics.len())
    }

    /// Is subscription `sub` still there?
    pub fn is_subscribed(&self, conn: u64, topic: &Topic, sub: u64) -> bool {
        self.lock()
            .topics
            .get(topic)
            .and_then(|s| s.get(&conn))
            .is_some_and(|s| s.id == sub)
    }

    /// Ends subscription `sub` because its membership is gone, telling the client.
    pub fn revoke(&self, conn: u64, topic: &Topic, sub: u64) {
        let mut reg = self.lock();
        let current = reg
            .topics
            .get(topic)
            .and_then(|s| s.get(&conn))
            .is_some_and(|s| s.id == sub);
        if current
            && reg.drop_sub(conn, topic)
            && !reg.offer(conn, Outbound::Frame(revoked_frame(topic)))
        {
            reg.too_slow(conn);
        }
    }

    /// Advances past `seq` without building anything if nobody listens to any
    /// of `topics` (or to anything, when `topics` is None). Decided and advanced
    /// under one lock, so a subscription made afterwards starts after `seq`.
    fn skip_if_unheard(&self, seq: i64, topics: Option<&[Topic]>) -> bool {
        let mut reg = self.lock();
        let unheard = match topics {
            None => reg.topics.is_empty(),
            Some(ts) => !ts.iter().any(|t| reg.topics.contains_key(t)),
        };
        if unheard {
            reg.position = reg.position.max(seq);
        }
        unheard
    }

    /// Publishes one committed change to its topics' subscribers.
    pub async fn publish(&self, entry: FeedEntry) -> Result<(), sqlx::Error> {
        let seq = entry.seq;
        if self.skip_if_unheard(seq, None) {
            return Ok(());
        }
        let r = resolve(&self.db, entry).await?;
        let topics = r.topics();
        if self.skip_if_unheard(seq, Some(&topics)) {
            return Ok(());
        }
        // A deleted membership ends the user's org subscription, unless the
        // user is (again) a member by another membership.
        let revoke = match r.ended_membership() {
            Some((u, o)) if !is_member(&self.db, u, o).await? => Some((u.to_string(), o)),
            _ => None,
        };
        let data = current_data(&self.db, r.entry.kind, &r.entry.entity_id).await?;
        let rendered = render(&r, &topics, &data);
        let mut reg = self.lock();
        let mut slow = reg.fan_out(&rendered, self.queue_capacity);
        if let Some((user, org)) = &revoke {
            slow.extend(reg.revoke_user(user, org));
        }
        for id in slow {
            reg.too_slow(id);
        }
        reg.position = reg.position.max(seq);
        Ok(())
    }

    /// Follows the change feed from the hub's position until `cancel`, woken by
    /// apply commits (`applied`) with a slow poll as the fallback; then closes
    /// every connection.
    pub async fn run(
        self: Arc<Self>,
        mut applied: watch::Receiver<u64>,
        lag: prometheus_client::metrics::gauge::Gauge,
        cancel: CancellationToken,
    ) {
        let mut failures = 0u32;
        while !cancel.is_cancelled() {
            applied.borrow_and_update();
            let pos = self.position();
            let entries = match read_after(&self.db, pos, BATCH).await {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(consumer = CONSUMER, error = %e, "reading the change feed failed");
                    Vec::new()
                }
            };
            if let Ok(last) = last_seq(&self.db).await {
                lag.set(last.saturating_sub(pos).max(0));
            }
            if entries.is_empty() {
                tokio::select! {
                    _ = applied.changed() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = cancel.cancelled() => break,
                }
                continue;
            }
            for e in entries {
                // The position advances entry by entry, so a retry after a
                // failure neither skips nor repeats a change.
                if let Err(e) = self.publish(e).await {
                    failures += 1;
                    let wait = Duration::from_millis(100u64 << failures.min(6));
                    tracing::warn!(consumer = CONSUMER, error = %e, retry_in_ms = wait.as_millis() as u64, "realtime publish failed");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = cancel.cancelled() => {}
                    }
                    break;
                }
                failures = 0;
            }
        }
        self.shutdown.cancel();
    }
}

fn revoked_frame(topic: &Topic) -> Utf8Bytes {
    Utf8Bytes::from(
        json!({"type": "unsubscribed", "topic": topic.to_string(), "reason": "membership deleted"})
            .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_parse_strictly() {
        assert_eq!(Topic::parse("*"), Ok(Topic::All));
        assert_eq!(
            Topic::parse("user:user_1"),
            Ok(Topic::User("user_1".into()))
        );
        assert_eq!(Topic::parse("org:org_1"), Ok(Topic::Org("org_1".into())));
        assert_eq!(Topic::parse("org:"), Err(TopicError::BadId));
        assert_eq!(Topic::parse("user:a b"), Err(TopicError::BadId));
        assert_eq!(Topic::parse("session:x"), Err(TopicError::Unknown));
        assert_eq!(Topic::User("u".into()).to_string(), "user:u");
    }

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
