//! Event -> changes: versions, tombstones, cascades, audit and change feed.
//!
//! Owns the convergence rules (ARCHITECTURE.md, "The rules every part keeps"). Every entity is a
//! last-writer-wins register ordered by (version, svix-id); a delete is final
//! (Clerk never reuses ids), so a delete applies whatever its version and a
//! tombstone never comes back to life; a tombstone's version is the greatest
//! version any event *of that entity* carried (a cascade does not lend it the
//! parent's). With these rules the stored rows are a function of the set of
//! deliveries alone. With these rules the final state does not
//! depend on arrival order or duplication. Must never: commit (the caller owns
//! the transaction), touch anything outside the transaction it is given, or
//! produce a side effect other than change-feed rows.

pub mod erasure;

use crate::clerk::kind::{Parent, Payload, Topics};
use crate::clerk::model::{object_fields, parse_event, Change, Kind, Parsed, PayloadError, User};
use crate::store::tx::{AuditRow, Contacts, EntityRow, FeedRow, RefCol, StoreTx};
use crate::store::StoreError;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

pub use crate::store::Delivery;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The payload can never apply: retrying cannot help.
    #[error(transparent)]
    Payload(#[from] PayloadError),
    #[error("database error: {0}")]
    Db(#[from] StoreError),
    /// Applying panicked (a bug): reported like a transient failure, so the
    /// event is retried and dead-lettered after its attempts.
    #[error("apply panicked: {0}")]
    Panicked(String),
}

impl SyncError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, SyncError::Payload(_))
    }
}

/// What applying one delivery did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// At least one effective change (audit and feed rows written).
    Changed,
    /// Applied, but nothing visible changed (no-op update, stale, tombstoned).
    Unchanged,
    /// An event type clerksync does not model: stored and counted.
    Ignored,
    /// Another worker already applied it (a lease expired under it).
    AlreadyDone,
}

struct Ctx<'a> {
    svix_id: &'a str,
    now: i64,
    changed: bool,
}

/// A delivery's body read into a change. Pure: callers do it before they open
/// the transaction, so parsing never lengthens the time locks (or SQLite's one
/// write lock) are held.
pub fn parse(d: &Delivery) -> Result<Parsed, PayloadError> {
    parse_event(&d.event_type, &d.body, d.svix_timestamp)
}

/// Applies one delivery inside `tx` and marks its inbox row done.
pub async fn apply(tx: &mut dyn StoreTx, d: &Delivery, now_ms: i64) -> Result<Outcome, SyncError> {
    apply_parsed(tx, d, parse(d), now_ms).await
}

/// [`apply`] with the body already parsed ([`parse`] of this delivery).
pub async fn apply_parsed(
    tx: &mut dyn StoreTx,
    d: &Delivery,
    parsed: Result<Parsed, PayloadError>,
    now_ms: i64,
) -> Result<Outcome, SyncError> {
    let started = std::time::Instant::now();
    match tx.inbox_status(d.seq).await?.as_deref() {
        Some("done") | Some("discarded") => return Ok(Outcome::AlreadyDone),
        _ => {}
    }
    let outcome = match parsed? {
        Parsed::Unknown => Outcome::Ignored,
        Parsed::Change(c) => {
            let mut ctx = Ctx {
                svix_id: &d.svix_id,
                now: now_ms,
                changed: false,
            };
            lock_for(tx, &c).await?;
            if c.delete {
                let refs = (c.user_id.clone(), c.organization_id.clone());
                delete(tx, &mut ctx, c.kind, &c.id, c.version, refs).await?;
            } else {
                upsert(tx, &mut ctx, *c).await?;
            }
            if ctx.changed {
                Outcome::Changed
            } else {
                Outcome::Unchanged
            }
        }
    };
    tx.mark_done(d.seq, now_ms, started.elapsed().as_micros() as i64)
        .await?;
    Ok(outcome)
}

/// Events of different partitions meet at users and organizations (a user
/// deletion cascades into memberships applied on organization partitions; a
/// user update refreshes copies held on memberships). An event takes its own
/// entity exclusively and the parents it depends on shared: memberships of one
/// organization apply side by side, while a change to the organization or user
/// itself waits for them (and they for it).
fn lock_keys(c: &Change) -> Vec<(String, bool)> {
    let mut keys = vec![(c.id.clone(), true)];
    keys.extend(c.user_id.iter().map(|u| (u.clone(), false)));
    keys.extend(c.organization_id.iter().map(|o| (o.clone(), false)));
    keys
}

/// What a batch touches, read from its events once before it applies anything.
#[derive(Debug, Default)]
pub struct BatchPlan {
    /// Every lock of the batch, in the one global order (by key; exclusive wins
    /// over shared). A batch takes them all before it applies anything, so two
    /// workers can never each hold a key the other waits for: taken event by
    /// event, a worker holding user A shared (a membership) and waiting for user
    /// B could meet one holding B exclusively (a user update) and waiting for A.
    pub locks: Vec<(String, bool)>,
    /// The rows the events read first: each event's entity and its parents.
    /// Once the locks are held nobody else can change them, so they can be read
    /// in one query per kind instead of one per event.
    pub rows: Vec<(Kind, String)>,
    /// Users changed by the batch: each reads its live memberships (to refresh
    /// their copy of its public data, or to delete them with it). The batch
    /// holds each such user's lock exclusively, so they can be read at once.
    pub members_of: Vec<String>,
}

impl BatchPlan {
    /// Takes the batch's locks and reads (on PostgreSQL: locks) the inbox
    /// status of its events `seqs`, then reads what it will read into the
    /// transaction: two round trips on PostgreSQL, whatever the batch holds.
    pub async fn prepare(&self, tx: &mut dyn StoreTx, seqs: &[i64]) -> Result<(), StoreError> {
        tx.lock_all_then_statuses(&self.locks, seqs).await?;
        tx.prefetch_with_live(
            &self.rows,
            Kind::Membership,
            RefCol::UserId,
            &self.members_of,
        )
        .await
    }
}

/// `parsed`: each event of the batch, [`parse`]d.
pub fn plan_batch(parsed: &[Result<Parsed, PayloadError>]) -> BatchPlan {
    let mut locks: std::collections::BTreeMap<String, bool> = Default::default();
    let mut rows: std::collections::BTreeSet<(Kind, String)> = Default::default();
    let mut members_of: std::collections::BTreeSet<String> = Default::default();
    for p in parsed {
        // An event that does not parse takes no lock; it fails on its own in apply.
        if let Ok(Parsed::Change(c)) = p {
            for (k, exclusive) in lock_keys(c) {
                *locks.entry(k).or_insert(false) |= exclusive;
            }
            rows.insert((c.kind, c.id.clone()));
            if c.kind == Kind::User {
                members_of.insert(c.id.clone());
            }
            for (k, id) in parents(c) {
                rows.insert((k, id.to_string()));
            }
        }
    }
    BatchPlan {
        locks: locks.into_iter().collect(),
        rows: rows.into_iter().collect(),
        members_of: members_of.into_iter().collect(),
    }
}

/// Takes the event's locks (no-ops for those its batch already holds), keys in
/// the global order.
async fn lock_for(tx: &mut dyn StoreTx, c: &Change) -> Result<(), StoreError> {
    let mut keys = lock_keys(c);
    keys.sort_unstable();
    keys.dedup_by(|a, b| a.0 == b.0);
    for (k, exclusive) in keys {
        if exclusive || k == c.id {
            tx.lock(&k).await?;
        } else {
            tx.lock_shared(&k).await?;
        }
    }
    Ok(())
}

/// The fields of a user that Clerk bumps on every sign-in and every active
/// session (three in four `user.updated` in real traffic change only these).
/// None of them is public user data, a contact point or anything a
/// membership copies, so a change to them alone needs no contact rewrite and
/// no membership refresh.
const ACTIVITY_FIELDS: [&str; 3] = ["last_active_at", "last_sign_in_at", "updated_at"];

/// Whether a user change touches nothing but [`ACTIVITY_FIELDS`].
fn activity_only(changes: &Map<String, Value>) -> bool {
    !changes.is_empty()
        && changes
            .keys()
            .all(|k| ACTIVITY_FIELDS.contains(&k.as_str()))
}

/// (version, svix-id) ordering of two non-delete writes.
fn newer(version: i64, key: &str, cur: &EntityRow) -> bool {
    version > cur.version || (version == cur.version && key > cur.version_key.as_str())
}

fn parse_map(data: Option<&str>) -> Option<Map<String, Value>> {
    match serde_json::from_str(data?) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    }
}

/// Top-level fields that differ, with before and after. A payload identical to
/// the stored one (a re-sent state) has none: it writes, audits and emits nothing.
fn diff(before: Option<&Map<String, Value>>, after: &Map<String, Value>) -> Map<String, Value> {
    let empty = Map::new();
    let before = before.unwrap_or(&empty);
    let mut out = Map::new();
    let keys: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for k in keys {
        let (b, a) = (before.get(k), after.get(k));
        if b != a {
            let mut ch = Map::new();
            ch.insert("before".into(), b.cloned().unwrap_or(Value::Null));
            ch.insert("after".into(), a.cloned().unwrap_or(Value::Null));
            out.insert(k.clone(), Value::Object(ch));
        }
    }
    out
}

/// [`diff`] of two records as stored, JSON object texts: `after` is one in
/// the store's serialization (`Change::data_json`), `before` the stored row's.
/// Only the fields whose texts differ are read into values (an activity-only
/// user update: three of some thirty), and the values decide, so a stored
/// text in another serialization still diffs by value. Also says whether
/// `before` was an object ([`diff`]'s `before` was `Some`).
fn diff_text(before: Option<&str>, after: &str) -> (Map<String, Value>, bool) {
    let Some(a) = object_fields(after) else {
        let (b, a) = (
            parse_map(before),
            parse_map(Some(after)).unwrap_or_default(),
        );
        return (diff(b.as_ref(), &a), b.is_some());
    };
    let b = before.and_then(object_fields);
    let before_is_object = b.is_some();
    let b = b.unwrap_or_default();
    let value = |raw: &RawValue| serde_json::from_str::<Value>(raw.get()).unwrap_or(Value::Null);
    let change = |before: Value, after: Value| {
        let mut ch = Map::new();
        ch.insert("before".into(), before);
        ch.insert("after".into(), after);
        Value::Object(ch)
    };
    let mut out = Map::new();
    let (mut i, mut j) = (0, 0);
    loop {
        let order = match (b.get(i), a.get(j)) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some((bk, _)), Some((ak, _))) => bk.cmp(ak),
        };
        match order {
            std::cmp::Ordering::Less => {
                let (k, v) = &b[i];
                out.insert(k.to_string(), change(value(v), Value::Null));
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                let (k, v) = &a[j];
                out.insert(k.to_string(), change(Value::Null, value(v)));
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let ((k, bv), av) = (&b[i], a[j].1);
                // The same text is the same value; different texts may still be.
                if bv.get() != av.get() {
                    let (bv, av) = (value(bv), value(av));
                    if bv != av {
                        out.insert(k.to_string(), change(bv, av));
                    }
                }
                i += 1;
                j += 1;
            }
        }
    }
    (out, before_is_object)
}

/// A create's changes: its fields by name, values not read. They only tell
/// an empty record (nothing to record) from a new one, and a user's
/// activity-only update from a create: a create's audit and feed rows are
/// stored without them ([`audit_changes`], [`feed_fields`]), so reading each
/// value of a new record (a third of all events in real traffic) would be
/// work thrown away.
fn created_fields(after: &str) -> Map<String, Value> {
    match object_fields(after) {
        Some(fields) => fields
            .into_iter()
            .map(|(k, _)| (k.into_owned(), Value::Null))
            .collect(),
        None => diff(None, &parse_map(Some(after)).unwrap_or_default()),
    }
}

/// The audit's copy of a change. A create's is `{}`: every field is new and
/// its values are the record's first version, which the entity row holds
/// until its next change and every later row's `before` values lead back to
/// (a create used to copy the whole record into the audit: a third of the
/// database; naming each field with `{}` still cost some 670 bytes per user
/// create, for nothing the row's operation does not already say). Where a
/// field's before and after are both objects (a membership's
/// `public_user_data`, an organization's metadata), only their members that
/// differ are kept, each under its path (`public_user_data.first_name`), so a
/// one-name change does not store the whole object twice. Arrays and scalars
/// are kept whole. The change feed names an update's top-level fields.
fn audit_changes(operation: &str, changes: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    if operation == "create" {
        return out;
    }
    for (k, ch) in changes {
        match (ch.get("before"), ch.get("after")) {
            (Some(Value::Object(b)), Some(Value::Object(a))) => nested_diff(k, b, a, &mut out),
            _ => {
                out.insert(k.clone(), ch.clone());
            }
        }
    }
    out
}

fn nested_diff(
    path: &str,
    before: &Map<String, Value>,
    after: &Map<String, Value>,
    out: &mut Map<String, Value>,
) {
    let keys: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for k in keys {
        let (b, a) = (before.get(k), after.get(k));
        if b == a {
            continue;
        }
        let sub = format!("{path}.{k}");
        match (b, a) {
            (Some(Value::Object(b)), Some(Value::Object(a))) => nested_diff(&sub, b, a, out),
            _ => {
                let mut ch = Map::new();
                ch.insert("before".into(), b.cloned().unwrap_or(Value::Null));
                ch.insert("after".into(), a.cloned().unwrap_or(Value::Null));
                out.insert(sub, Value::Object(ch));
            }
        }
    }
}

/// The feed's `changed_fields` of a change: the top-level fields it changed,
/// none for a create (all of them are new: the operation says it, and naming
/// each field cost some 570 bytes per user create). Readers treat a create as
/// touching every field (search indexes it, realtime shows it).
fn feed_fields(operation: &str, changes: &Map<String, Value>) -> String {
    if operation == "create" {
        return "[]".to_string();
    }
    let fields: Vec<&String> = changes.keys().collect();
    serde_json::to_string(&fields).expect("strings serialize")
}

fn user_of(kind: Kind, id: &str, row_user: Option<&str>) -> Option<String> {
    if kind == Kind::User {
        Some(id.to_string())
    } else {
        row_user.map(str::to_string)
    }
}

async fn record(
    tx: &mut dyn StoreTx,
    ctx: &mut Ctx<'_>,
    kind: Kind,
    row: &EntityRow,
    operation: &str,
    changes: &Map<String, Value>,
) -> Result<(), StoreError> {
    let user = user_of(kind, &row.id, row.user_id.as_deref());
    tx.audit(&AuditRow {
        svix_id: ctx.svix_id,
        kind,
        entity_id: &row.id,
        user_id: user.as_deref(),
        operation,
        changes: serde_json::to_string(&audit_changes(operation, changes))
            .expect("a JSON map serializes"),
        version: row.version,
        at: ctx.now,
    })
    .await?;
    // The realtime topics it is on (realtime/render.rs `Resolved::topics`).
    let (topic_user, topic_org) = match kind.spec().topics {
        Topics::OwnUser => (Some(row.id.as_str()), None),
        Topics::OwnOrganization => (None, Some(row.id.as_str())),
        Topics::UserAndOrganization => (row.user_id.as_deref(), row.organization_id.as_deref()),
        Topics::None => (None, None),
    };
    tx.feed(&FeedRow {
        kind,
        entity_id: &row.id,
        user_id: topic_user,
        organization_id: topic_org,
        operation,
        changed_fields: feed_fields(operation, changes),
        version: row.version,
        svix_id: ctx.svix_id,
        committed_at: ctx.now,
    })
    .await?;
    ctx.changed = true;
    Ok(())
}

/// The parents whose deletion means this entity must not exist (declared per
/// kind: [`Kind::spec`]'s `parents`), with the ids the change names them by.
fn parents(c: &Change) -> Vec<(Kind, &str)> {
    c.kind
        .spec()
        .parents
        .iter()
        .filter_map(|p| Some((p.kind(), reference(c, *p)?)))
        .collect()
}

/// The id of the parent `p` a change names.
fn reference(c: &Change, p: Parent) -> Option<&str> {
    match p {
        Parent::User => c.user_id.as_deref(),
        Parent::Organization => c.organization_id.as_deref(),
    }
}

/// The store column a child names its parent `p` by.
fn ref_col(p: Parent) -> RefCol {
    match p {
        Parent::User => RefCol::UserId,
        Parent::Organization => RefCol::OrganizationId,
    }
}

async fn upsert(tx: &mut dyn StoreTx, ctx: &mut Ctx<'_>, c: Change) -> Result<(), StoreError> {
    let cur = tx.get(c.kind, &c.id).await?;
    if let Some(cur) = &cur {
        if cur.deleted {
            return bump_tombstone(tx, ctx, c.kind, cur, c.version).await;
        }
        if !newer(c.version, ctx.svix_id, cur) {
            return Ok(()); // stale
        }
    }
    // The live parent user, if any: its public data is copied onto memberships.
    let mut parent_user: Option<EntityRow> = None;
    for (pk, pid) in parents(&c) {
        if let Some(parent) = tx.get(pk, pid).await? {
            if parent.deleted {
                // Too late: the parent is gone, so this child is too. The child's
                // tombstone carries its own version, never the parent's, so it is
                // the same row as when a cascade had deleted it.
                let refs = (c.user_id.clone(), c.organization_id.clone());
                return delete(tx, ctx, c.kind, &c.id, c.version, refs).await;
            }
            // Only a membership holds a copy of its user's public data
            // (billing rows name their payer but copy nothing).
            let copies_user = match c.kind.spec().payload {
                Payload::Membership => true,
                Payload::User | Payload::Generic { .. } | Payload::Billing => false,
            };
            if pk == Kind::User && copies_user {
                parent_user = Some(parent);
            }
        }
    }
    let mut data_json = c.data_json;
    if let Some(user) = parent_user
        .and_then(|r| r.data)
        .and_then(|d| serde_json::from_str::<User>(&d).ok())
    {
        if let Some(mut data) = parse_map(Some(&data_json)) {
            refresh_public_user_data(&mut data, &user);
            data_json = serde_json::to_string(&data).expect("a JSON map serializes");
        }
    }
    // The store writes records in one serialization (sorted keys), so the same
    // text is the same record: a re-sent state needs no parse and no diff.
    let before_text = cur.as_ref().and_then(|r| r.data.as_deref());
    let same = before_text == Some(data_json.as_str());
    let (changes, before_is_object) = if same {
        (Map::new(), true)
    } else if cur.is_none() {
        (created_fields(&data_json), false)
    } else {
        diff_text(before_text, &data_json)
    };
    let row = EntityRow {
        id: c.id.clone(),
        version: c.version,
        version_key: ctx.svix_id.to_string(),
        deleted: false,
        user_id: c.user_id.clone(),
        organization_id: c.organization_id.clone(),
        data: Some(data_json),
        synced_at: ctx.now,
    };
    tx.put(c.kind, &row).await?;
    if !changes.is_empty() {
        let op = if cur.is_none() { "create" } else { "update" };
        record(tx, ctx, c.kind, &row, op, &changes).await?;
    }
    if c.user.is_some() && activity_only(&changes) {
        // The narrow path: the row and its small audit and feed rows are
        // written; contacts and the memberships' copies cannot have changed.
        return Ok(());
    }
    if let Some(user) = &c.user {
        // Most user updates leave emails and phones alone: rewrite the contact
        // rows only when they differ from the stored record's (the same record
        // has the same contacts); the stored record is read as a user only here.
        if !same {
            let old = before_text
                .filter(|_| before_is_object)
                .and_then(|t| serde_json::from_str::<User>(t).ok())
                .map(|u| contacts(&u));
            let new = contacts(user);
            if old.as_ref() != Some(&new) && !(old.is_none() && new.is_empty()) {
                tx.replace_contacts(&user.id, &new).await?;
            }
        }
        refresh_memberships(tx, ctx, user).await?;
    }
    Ok(())
}

/// A tombstone keeps the greatest version seen, so its row is the same whatever
/// order the events came in. Nothing visible changes: no audit, no feed.
async fn bump_tombstone(
    tx: &mut dyn StoreTx,
    ctx: &Ctx<'_>,
    kind: Kind,
    cur: &EntityRow,
    version: i64,
) -> Result<(), StoreError> {
    if version > cur.version {
        let mut row = cur.clone();
        row.version = version;
        row.synced_at = ctx.now;
        tx.put(kind, &row).await?;
    }
    Ok(())
}

fn refresh_public_user_data(data: &mut Map<String, Value>, user: &User) {
    let entry = data
        .entry("public_user_data")
        .or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    if let Value::Object(p) = entry {
        for (k, v) in user.public_user_data() {
            p.insert(k, v);
        }
    }
}

/// The copies of a user's public data held on its memberships follow the user.
async fn refresh_memberships(
    tx: &mut dyn StoreTx,
    ctx: &mut Ctx<'_>,
    user: &User,
) -> Result<(), StoreError> {
    for m in tx
        .live_by(Kind::Membership, RefCol::UserId, &user.id)
        .await?
    {
        let Some(before) = parse_map(m.data.as_deref()) else {
            continue;
        };
        let mut after = before.clone();
        refresh_public_user_data(&mut after, user);
        let changes = diff(Some(&before), &after);
        if changes.is_empty() {
            continue;
        }
        let row = EntityRow {
            data: Some(Value::Object(after).to_string()),
            synced_at: ctx.now,
            ..m
        };
        tx.put(Kind::Membership, &row).await?;
        record(tx, ctx, Kind::Membership, &row, "refresh", &changes).await?;
    }
    Ok(())
}

fn contacts(u: &User) -> Contacts {
    let mut c = Contacts::default();
    for e in u.email_addresses.iter().flatten() {
        if let (Some(id), Some(addr)) = (&e.id, &e.email_address) {
            let primary = u.primary_email_address_id.as_ref() == Some(id);
            c.emails.push((id.clone(), addr.clone(), primary));
        }
    }
    for p in u.phone_numbers.iter().flatten() {
        if let (Some(id), Some(n)) = (&p.id, &p.phone_number) {
            let primary = u.primary_phone_number_id.as_ref() == Some(id);
            c.phones.push((id.clone(), n.clone(), primary));
        }
    }
    for a in u.external_accounts.iter().flatten() {
        if let Some(id) = &a.id {
            c.external_accounts
                .push((id.clone(), a.provider.clone(), a.email_address.clone()));
        }
    }
    c
}

/// Deletes an entity (leaving a tombstone), archives its last record and cascades.
/// Boxed because cascades recurse (user -> memberships).
fn delete<'a>(
    tx: &'a mut dyn StoreTx,
    ctx: &'a mut Ctx<'_>,
    kind: Kind,
    id: &'a str,
    version: i64,
    refs: (Option<String>, Option<String>),
) -> futures::future::BoxFuture<'a, Result<(), StoreError>> {
    Box::pin(async move {
        let cur = tx.get(kind, id).await?;
        if let Some(cur) = &cur {
            if cur.deleted {
                return bump_tombstone(tx, ctx, kind, cur, version).await;
            }
        }
        let tomb = EntityRow {
            id: id.to_string(),
            version: cur.as_ref().map_or(version, |c| c.version.max(version)),
            // Tombstones are final, so the key that ordered writes is meaningless:
            // a fixed value keeps the row identical whichever delete came first.
            version_key: String::new(),
            deleted: true,
            user_id: cur.as_ref().map_or(refs.0, |c| c.user_id.clone()),
            organization_id: cur.as_ref().map_or(refs.1, |c| c.organization_id.clone()),
            data: None,
            synced_at: ctx.now,
        };
        tx.put(kind, &tomb).await?;
        if let Some(cur) = &cur {
            tx.archive(kind, cur, ctx.now).await?;
            let mut changes = Map::new();
            changes.insert(
                "deleted".into(),
                serde_json::json!({"before": false, "after": true}),
            );
            record(tx, ctx, kind, &tomb, "delete", &changes).await?;
        }
        // Cascades run even for a first-seen tombstone: children may have
        // arrived before any event of their parent.
        if kind == Kind::User {
            tx.replace_contacts(id, &Contacts::default()).await?;
        }
        // The children: every kind that declares this one as a parent.
        for (child_kind, parent) in kind.children() {
            for child in tx.live_by(child_kind, ref_col(parent), id).await? {
                delete(tx, ctx, child_kind, &child.id, child.version, (None, None)).await?;
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_reports_both_sides_and_nothing_for_equal_records() {
        let a: Map<String, Value> = serde_json::from_str(r#"{"x":1,"updated_at":1}"#).unwrap();
        let b: Map<String, Value> =
            serde_json::from_str(r#"{"x":2,"updated_at":2,"y":3}"#).unwrap();
        let d = diff(Some(&a), &b);
        assert_eq!(d.len(), 3);
        assert_eq!(d["x"]["before"], 1);
        assert_eq!(d["y"]["after"], 3);
        assert_eq!(diff(Some(&b), &b).len(), 0);
        let c: Map<String, Value> = serde_json::from_str(r#"{"x":1,"updated_at":9}"#).unwrap();
        assert_eq!(diff(Some(&a), &c).len(), 1);
    }

    #[test]
    fn text_diff_is_the_value_diff() {
        let texts = [
            r#"{"a":1,"b":{"x":[1,2]},"c":null,"updated_at":1}"#,
            r#"{"a":1,"b":{"x":[1,3]},"d":null,"updated_at":2}"#,
            // Another serialization of the first: no difference by value.
            r#"{ "updated_at": 1, "c": null, "b": {"x": [1, 2]}, "a": 1 }"#,
            r#"{"a":1.0,"b":{"x":[1,2]},"c":null,"updated_at":1,"updated_at":5}"#,
            r#"{}"#,
            r#"[1]"#,
            "not json",
        ];
        for b in texts.iter().map(Some).chain([None]) {
            for a in &texts[..5] {
                let before = parse_map(b.copied());
                let after = parse_map(Some(a)).unwrap();
                let (got, before_is_object) = diff_text(b.copied(), a);
                assert_eq!(got, diff(before.as_ref(), &after), "{b:?} -> {a}");
                assert_eq!(before_is_object, before.is_some(), "{b:?}");
            }
        }
        // A create: the same names (an empty record records nothing).
        for a in &texts[..5] {
            let after = parse_map(Some(a)).unwrap();
            let (by_value, by_name) = (diff(None, &after), created_fields(a));
            assert!(by_value.keys().eq(by_name.keys()), "{a}");
        }
    }

    #[test]
    fn audit_keeps_only_the_members_of_an_object_that_changed() {
        let a: Map<String, Value> = serde_json::from_str(
            r#"{"role":"admin","public_user_data":{"first_name":"Ada","image_url":"u","identifier":"a@x.io"},"tags":[1]}"#,
        )
        .unwrap();
        let b: Map<String, Value> = serde_json::from_str(
            r#"{"role":"admin","public_user_data":{"first_name":"Grace","image_url":"u","identifier":"a@x.io","has_image":true},"tags":[1,2]}"#,
        )
        .unwrap();
        let audit = audit_changes("update", &diff(Some(&a), &b));
        assert_eq!(audit.len(), 3, "{audit:?}");
        assert_eq!(audit["public_user_data.first_name"]["before"], "Ada");
        assert_eq!(audit["public_user_data.first_name"]["after"], "Grace");
        assert_eq!(audit["public_user_data.has_image"]["before"], Value::Null);
        assert_eq!(audit["tags"]["after"], serde_json::json!([1, 2]));
        // A create stores neither its fields nor their values (the entity's
        // row has them), in the audit as in the feed.
        let created = diff(None, &a);
        assert!(audit_changes("create", &created).is_empty());
        assert_eq!(feed_fields("create", &created), "[]");
        assert_eq!(
            feed_fields("update", &diff(Some(&a), &b)),
            r#"["public_user_data","tags"]"#
        );
    }
}
