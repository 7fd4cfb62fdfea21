//! The store: the one database the inbox, the entities and the change feed
//! share, behind small traits, one implementation per backend.
//!
//! Owns: every SQL statement of the program. [`Database`] is the handle the
//! rest of the program holds; its methods (and the thin functions of
//! [`events`], [`read`], [`maintenance`], [`tx`]) dispatch to the backend's
//! implementation of the traits below, in `store/sqlite/` or `store/postgres/`.
//! Each backend keeps its own write discipline inside (SQLite's write gate,
//! PostgreSQL's locks). Must never: decide what an event means (that is
//! `sync`), hold a transaction across a network call, or let a caller see
//! which backend it is talking to (the processor asks [`Database::strategy`]).
//! Adding a backend: ARCHITECTURE.md, "The store and its backends".

pub mod backfill;
pub mod body;
pub mod db;
pub mod error;
pub mod events;
pub mod feed;
pub mod inbox;
pub mod lease;
pub mod maintenance;
pub mod migrations;
mod postgres;
pub mod read;
mod sqlite;
pub mod tx;

pub use db::Database;
pub use error::StoreError;
pub use inbox::{ApplyStrategy, Delivery, NewDelivery, StatusCounts};

use crate::clerk::model::Kind;
use async_trait::async_trait;
use events::{EventFilter, EventRecord};
use feed::{FeedEntry, FeedFilter};
use inbox::LogRow;
use maintenance::{BodyExpiry, PurgeReport, Redaction};
use read::AuditEntry;
use tx::{EntityRow, RefCol, StoreTx};

/// Result of the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The inbox: durable, deduplicated deliveries and their lifecycle.
#[async_trait]
pub(crate) trait InboxStore {
    /// Appends deliveries with distinct svix-ids in one transaction; for each
    /// row, whether it was new. `bodies`: each row's body as stored
    /// ([`crate::store::db::Database::compress_body`]), compressed by the caller (ingress compresses on
    /// the HTTP workers, not on the one inbox writer). Durable (on disk) when
    /// it returns.
    async fn append(&self, rows: &[NewDelivery], bodies: &[Vec<u8>]) -> Result<Vec<bool>>;
    /// Leases up to `limit` due events (pending, or failed and due, lease free), oldest first.
    async fn claim(&self, now: i64, lease_until: i64, limit: i64) -> Result<Vec<Delivery>>;
    /// Due events without leasing them, leaving out `skip`, oldest first (the
    /// in-place apply loop; it re-checks each status inside its transaction).
    async fn due(&self, now: i64, skip: &[i64], limit: i64) -> Result<Vec<Delivery>>;
    /// Gives back leases (shutdown).
    async fn release(&self, seqs: &[i64]) -> Result<()>;
    /// Records a failed attempt: retried after `next_attempt_at`, or dead.
    async fn mark_failed(
        &self,
        seq: i64,
        error: &str,
        dead: bool,
        next_attempt_at: i64,
    ) -> Result<()>;
    async fn counts(&self) -> Result<StatusCounts>;
    /// Is any delivery pending or waiting for a retry?
    async fn anything_due(&self) -> Result<bool>;
    /// Received-at (ms) of the oldest pending event.
    async fn oldest_pending_received_at(&self) -> Result<Option<i64>>;
    /// Queues again the done deliveries received at or after `since_ms`; how many.
    async fn requeue_since(&self, since_ms: i64) -> Result<u64>;
    /// How many deliveries are stored.
    async fn len(&self) -> Result<i64>;
    /// The stored log after `after`, in seq order, discarded ones left out.
    async fn log_page(&self, after: i64, limit: i64) -> Result<Vec<LogRow>>;
}

/// Operators' view of the inbox (`clerksync events`, the admin API).
#[async_trait]
pub(crate) trait EventStore {
    /// Newest first, before `before_seq` (exclusive).
    async fn list(&self, f: &EventFilter, before_seq: i64, limit: i64) -> Result<Vec<EventRecord>>;
    async fn show(&self, svix_id: &str) -> Result<Option<(EventRecord, String)>>;
    /// Runs `sql`, an UPDATE of one row by svix-id (`$1`); rows changed.
    async fn update_event(&self, sql: &'static str, svix_id: &str) -> Result<u64>;
    async fn event_status(&self, svix_id: &str) -> Result<Option<String>>;
    /// Queues every dead event again; how many.
    async fn retry_all_dead(&self) -> Result<u64>;
}

/// The apply transaction and how the processor should drive it.
#[async_trait]
pub(crate) trait ApplyStore {
    fn strategy(&self) -> ApplyStrategy;
    /// Starts a write transaction (waiting for the backend's write discipline).
    async fn begin(&self) -> Result<Box<dyn StoreTx>>;
}

/// The change feed and its consumers' checkpoints.
#[async_trait]
pub(crate) trait FeedStore {
    async fn read_feed(
        &self,
        filter: FeedFilter<'_>,
        after: i64,
        limit: i64,
    ) -> Result<Vec<FeedEntry>>;
    async fn count_feed(&self, filter: FeedFilter<'_>, after: i64, cap: i64) -> Result<i64>;
    /// The newest entry's seq (0 when empty).
    async fn last_feed_seq(&self) -> Result<i64>;
    /// The oldest entry still kept (0 when empty).
    async fn oldest_feed_seq(&self) -> Result<i64>;
    /// The lowest checkpoint of any consumer (0 when none).
    async fn min_checkpoint(&self) -> Result<i64>;
    async fn load_checkpoint(&self, consumer: &str) -> Result<Option<i64>>;
    /// Creates a consumer's checkpoint at 0 unless it exists.
    async fn register_consumer(&self, consumer: &str, now: i64) -> Result<()>;
    async fn save_checkpoint(&self, consumer: &str, seq: i64, now: i64) -> Result<()>;
    /// Deletes entries with `from <= seq <= to` committed before `cutoff_ms`; how many.
    async fn delete_feed(&self, from: i64, to: i64, cutoff_ms: i64) -> Result<u64>;
}

/// Reads of entities and their history for the API and the feed consumers.
#[async_trait]
pub(crate) trait EntityStore {
    async fn get(&self, kind: Kind, id: &str) -> Result<Option<EntityRow>>;
    async fn get_many(&self, kind: Kind, ids: &[&str]) -> Result<Vec<EntityRow>>;
    /// Live rows ordered by id, after `after` (exclusive), optionally by a reference.
    async fn list_live(
        &self,
        kind: Kind,
        filter: Option<(RefCol, &str)>,
        after: &str,
        limit: i64,
    ) -> Result<Vec<EntityRow>>;
    async fn audit(&self, entity_id: &str, after: i64, limit: i64) -> Result<Vec<AuditEntry>>;
}

/// Retention, durability of erasure, and the database's own upkeep.
#[async_trait]
pub(crate) trait MaintenanceStore {
    /// One short purge transaction (see [`maintenance::purge_expired`]).
    async fn purge_expired(&self, cutoff_ms: i64, redact: &Redaction) -> Result<PurgeReport>;
    /// One step of the raw-body retention (see [`maintenance::expire_bodies`]).
    async fn expire_bodies(&self, after: i64, cutoff_ms: i64, limit: i64) -> Result<BodyExpiry>;
    /// After an erasure: removes old copies of erased values the backend keeps
    /// on disk (SQLite: the WAL). False when it has to be tried again later.
    async fn scrub_after_erasure(&self) -> Result<bool>;
    /// Refreshes planner statistics of tables that grew (PostgreSQL).
    async fn refresh_statistics(&self) -> Result<()>;
    /// Keeps planner statistics fresh until `cancel` (PostgreSQL; returns at once elsewhere).
    async fn keep_statistics_fresh(&self, cancel: tokio_util::sync::CancellationToken);
    /// Is the database answering?
    async fn ping(&self) -> Result<()>;
    /// Connections open, and how many of them are idle.
    fn pool_stats(&self) -> (u32, usize);
    async fn close(&self);
}

/// The backfill's checkpoints and seen sets, and reconciliation's questions
/// (see [`backfill`]).
#[async_trait]
pub(crate) trait BackfillStore {
    async fn load_checkpoint(&self, resource: &str) -> Result<Option<backfill::Checkpoint>>;
    async fn load_checkpoints(&self) -> Result<Vec<backfill::Checkpoint>>;
    /// Replaces the resource's checkpoint and forgets its seen set, in one transaction.
    async fn start_pass(&self, cp: &backfill::Checkpoint) -> Result<()>;
    /// Adds `ids` to the pass's seen set and saves `cp`, in one transaction.
    async fn advance_pass(&self, cp: &backfill::Checkpoint, ids: &[String]) -> Result<()>;
    async fn save_checkpoint_row(&self, cp: &backfill::Checkpoint) -> Result<()>;
    async fn local_versions(
        &self,
        kind: Kind,
        ids: &[String],
    ) -> Result<std::collections::HashMap<String, (i64, bool)>>;
    async fn count_live(&self, kind: Kind) -> Result<i64>;
    async fn count_missing(&self, kind: Kind, cp: &backfill::Checkpoint) -> Result<i64>;
    async fn missing_after(
        &self,
        kind: Kind,
        cp: &backfill::Checkpoint,
        after: &str,
        limit: i64,
    ) -> Result<Vec<backfill::Missing>>;
    async fn live_after(&self, kind: Kind, after: &str, limit: i64) -> Result<Vec<String>>;
}

/// Named leases: one holder across nodes, expiring (store/lease.rs).
#[async_trait]
pub(crate) trait LeaseStore {
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now: i64,
        ttl_ms: i64,
        finished_before: i64,
    ) -> Result<bool>;
    async fn renew_lease(&self, name: &str, holder: &str, now: i64, ttl_ms: i64) -> Result<bool>;
    async fn release_lease(
        &self,
        name: &str,
        holder: &str,
        finished_at: Option<i64>,
        result: &str,
    ) -> Result<bool>;
    async fn load_lease(&self, name: &str) -> Result<Option<lease::Lease>>;
}

/// Inbox rows by status.
pub async fn inbox_counts(db: &Database) -> Result<StatusCounts> {
    db.inbox_counts().await
}
