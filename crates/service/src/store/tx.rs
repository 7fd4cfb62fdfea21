//! The write side of the store: one transaction, the operations `sync` needs.
//!
//! Why a trait: the convergence rules in `sync` are written once and run on both
//! backends. Each backend's transaction is in its folder (`store::sqlite::tx`,
//! `store::postgres::tx`). Must never: decide anything (that is
//! `sync`'s job) or commit on its own.

use crate::clerk::model::Kind;
use crate::store::db::Database;
use crate::store::{ApplyStore, StoreError};
use async_trait::async_trait;

/// One row of an entity table.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct EntityRow {
    pub id: String,
    pub version: i64,
    pub version_key: String,
    pub deleted: bool,
    pub user_id: Option<String>,
    pub organization_id: Option<String>,
    /// Raw JSON; None for tombstones.
    pub data: Option<String>,
    pub synced_at: i64,
}

/// The referencing columns an entity can be found by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefCol {
    UserId,
    OrganizationId,
}

impl RefCol {
    pub(crate) fn column(self) -> &'static str {
        match self {
            RefCol::UserId => "user_id",
            RefCol::OrganizationId => "organization_id",
        }
    }

    pub(crate) fn of(self, r: &EntityRow) -> Option<&str> {
        match self {
            RefCol::UserId => r.user_id.as_deref(),
            RefCol::OrganizationId => r.organization_id.as_deref(),
        }
    }
}

/// (id, provider, email)
pub type ExternalAccount = (String, Option<String>, Option<String>);

/// A user's contact points, derived from the user record.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Contacts {
    /// (id, address, is_primary)
    pub emails: Vec<(String, String, bool)>,
    pub phones: Vec<(String, String, bool)>,
    pub external_accounts: Vec<ExternalAccount>,
}

impl Contacts {
    pub fn is_empty(&self) -> bool {
        self.emails.is_empty() && self.phones.is_empty() && self.external_accounts.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct AuditRow<'a> {
    pub svix_id: &'a str,
    pub kind: Kind,
    pub entity_id: &'a str,
    pub user_id: Option<&'a str>,
    pub operation: &'a str,
    pub changes: String,
    pub version: i64,
    pub at: i64,
}

#[derive(Debug, Clone)]
pub struct FeedRow<'a> {
    pub kind: Kind,
    pub entity_id: &'a str,
    /// The user and organization whose realtime topics this change is on.
    pub user_id: Option<&'a str>,
    pub organization_id: Option<&'a str>,
    pub operation: &'a str,
    pub changed_fields: String,
    pub version: i64,
    pub svix_id: &'a str,
    pub committed_at: i64,
}

#[async_trait]
pub trait StoreTx: Send {
    /// Serializes transactions touching `key` (PostgreSQL advisory lock; SQLite's
    /// `BEGIN IMMEDIATE` already serializes writers).
    async fn lock(&mut self, key: &str) -> Result<(), StoreError>;
    /// Like `lock`, but shared with other shared holders of `key`.
    async fn lock_shared(&mut self, key: &str) -> Result<(), StoreError>;
    /// Takes many locks at once, in the order given ((key, exclusive) pairs, one
    /// global order for every caller); later `lock`/`lock_shared` calls for keys
    /// held are free.
    async fn lock_all(&mut self, keys: &[(String, bool)]) -> Result<(), StoreError>;
    /// Reads these rows into the transaction's memory (one query per kind), so
    /// `get` answers them without a round trip. Only for rows whose locks the
    /// transaction already holds: nobody else can change them before commit.
    async fn prefetch(&mut self, _keys: &[(Kind, String)]) -> Result<(), StoreError> {
        Ok(())
    }
    /// Reads the live rows of `kind` whose `by` column is one of `values` into
    /// the transaction's memory (one query), so `live_by` answers them without
    /// a round trip. Only for values whose exclusive lock the transaction
    /// already holds: then nobody else can add, change or remove such a row
    /// before commit.
    async fn prefetch_live_by(
        &mut self,
        _kind: Kind,
        _by: RefCol,
        _values: &[String],
    ) -> Result<(), StoreError> {
        Ok(())
    }
    async fn get(&mut self, kind: Kind, id: &str) -> Result<Option<EntityRow>, StoreError>;
    async fn put(&mut self, kind: Kind, row: &EntityRow) -> Result<(), StoreError>;
    /// Live (not deleted) rows of `kind` whose `by` column is `value`.
    async fn live_by(
        &mut self,
        kind: Kind,
        by: RefCol,
        value: &str,
    ) -> Result<Vec<EntityRow>, StoreError>;
    async fn replace_contacts(&mut self, user_id: &str, c: &Contacts) -> Result<(), StoreError>;
    async fn archive(&mut self, kind: Kind, row: &EntityRow, at: i64) -> Result<(), StoreError>;
    async fn audit(&mut self, a: &AuditRow<'_>) -> Result<(), StoreError>;
    async fn feed(&mut self, f: &FeedRow<'_>) -> Result<(), StoreError>;
    async fn inbox_status(&mut self, seq: i64) -> Result<Option<String>, StoreError>;
    /// Reads (and on PostgreSQL locks) the inbox status of a batch in one query,
    /// so `inbox_status` of each is answered from memory.
    async fn prefetch_statuses(&mut self, seqs: &[i64]) -> Result<(), StoreError>;
    /// `lock_all(keys)` then `prefetch_statuses(seqs)`; PostgreSQL sends both
    /// in one statement (a round trip less per batch), the locks first.
    async fn lock_all_then_statuses(
        &mut self,
        keys: &[(String, bool)],
        seqs: &[i64],
    ) -> Result<(), StoreError> {
        self.lock_all(keys).await?;
        self.prefetch_statuses(seqs).await
    }
    /// `prefetch(rows)` then `prefetch_live_by(kind, by, values)`, with the
    /// same preconditions; PostgreSQL reads them all in one statement.
    async fn prefetch_with_live(
        &mut self,
        rows: &[(Kind, String)],
        kind: Kind,
        by: RefCol,
        values: &[String],
    ) -> Result<(), StoreError> {
        self.prefetch(rows).await?;
        self.prefetch_live_by(kind, by, values).await
    }
    async fn mark_done(&mut self, seq: i64, at: i64, duration_us: i64) -> Result<(), StoreError>;
    /// Commits; returns the entities whose changes went into the feed.
    async fn commit(self: Box<Self>) -> Result<Vec<(Kind, String)>, StoreError>;
}

/// A feed row waiting for commit.
pub(crate) struct PendingFeed {
    pub kind: Kind,
    pub entity_id: String,
    pub user_id: Option<String>,
    pub organization_id: Option<String>,
    pub operation: String,
    pub changed_fields: String,
    pub version: i64,
    pub svix_id: String,
    pub committed_at: i64,
}

impl From<&FeedRow<'_>> for PendingFeed {
    fn from(f: &FeedRow<'_>) -> Self {
        PendingFeed {
            kind: f.kind,
            entity_id: f.entity_id.to_string(),
            user_id: f.user_id.map(str::to_string),
            organization_id: f.organization_id.map(str::to_string),
            operation: f.operation.to_string(),
            changed_fields: f.changed_fields.clone(),
            version: f.version,
            svix_id: f.svix_id.to_string(),
            committed_at: f.committed_at,
        }
    }
}

pub(crate) struct PendingAudit {
    pub svix_id: String,
    pub kind: Kind,
    pub entity_id: String,
    pub user_id: Option<String>,
    pub operation: String,
    pub changes: String,
    pub version: i64,
    pub at: i64,
}

impl From<&AuditRow<'_>> for PendingAudit {
    fn from(a: &AuditRow<'_>) -> Self {
        PendingAudit {
            svix_id: a.svix_id.to_string(),
            kind: a.kind,
            entity_id: a.entity_id.to_string(),
            user_id: a.user_id.map(str::to_string),
            operation: a.operation.to_string(),
            changes: a.changes.clone(),
            version: a.version,
            at: a.at,
        }
    }
}

/// Rows a transaction writes at commit, many per statement: a batch of events
/// costs a few statements instead of a few per event. Feed rows go last, so the
/// feed lock (PostgreSQL) is the last lock a transaction takes and cannot be
/// part of a deadlock.
#[derive(Default)]
pub(crate) struct Pending {
    pub feed: Vec<PendingFeed>,
    pub audit: Vec<PendingAudit>,
    /// (seq, processed_at, duration_us)
    pub done: Vec<(i64, i64, i64)>,
    pub statuses: std::collections::HashMap<i64, String>,
    /// Advisory locks held by this transaction: key -> exclusive.
    pub locks: std::collections::HashMap<String, bool>,
    /// Prefetched rows (None: no such row), kept current by this transaction's puts.
    pub rows: std::collections::HashMap<(Kind, String), Option<EntityRow>>,
    /// Prefetched `live_by` answers as the database had them (puts are laid
    /// over them when read).
    pub live: std::collections::HashMap<(Kind, RefCol, String), Vec<EntityRow>>,
    /// Entity rows written by this transaction, upserted together at commit
    /// (PostgreSQL): the last write of each wins, reads see them first.
    pub puts: std::collections::BTreeMap<(Kind, String), EntityRow>,
    /// Users whose contact rows this transaction replaces, with the new lists
    /// (PostgreSQL, written at commit).
    pub contacts: std::collections::BTreeMap<String, Contacts>,
}

/// Starts a write transaction.
pub async fn begin(db: &Database) -> Result<Box<dyn StoreTx>, StoreError> {
    crate::store::db::backend!(db, |b| b.begin().await)
}

/// One field of every item, as the array a PostgreSQL `unnest($n::type[])`
/// binds: batch writes send whole columns, so their statement text does not
/// depend on the batch size.
pub(crate) fn column<'a, T, U>(items: &'a [T], f: impl FnMut(&'a T) -> U) -> Vec<U> {
    items.iter().map(f).collect()
}

/// An entity table's columns, in [`EntityRow`]'s order.
pub(crate) const COLS: &str =
    "id, version, version_key, deleted, user_id, organization_id, data, synced_at";
/// What an entity upsert does when the row exists (both backends).
pub(crate) const ON_CONFLICT_UPDATE: &str =
    " ON CONFLICT (id) DO UPDATE SET version = excluded.version, \
     version_key = excluded.version_key, deleted = excluded.deleted, \
     user_id = excluded.user_id, organization_id = excluded.organization_id, \
     data = excluded.data, synced_at = excluded.synced_at";
