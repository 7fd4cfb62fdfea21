//! The backfill's own rows: per-resource checkpoints and the set of entities
//! the current pass has listed (migration `0020_backfill.sql` of each backend),
//! and the read-only questions reconciliation asks of the entity tables.
//!
//! Owns: the row types and the functions `backfill/` calls; each backend
//! answers with its own SQL ([`BackfillStore`](super::BackfillStore)). Must
//! never: write an entity table (entities change only through `sync`).

use crate::clerk::model::Kind;
use crate::store::db::{backend, Database};
use crate::store::{BackfillStore, Result};
use std::collections::HashMap;

/// Where a resource's pass stands.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Checkpoint {
    pub resource: String,
    pub pass_id: String,
    pub started_at: i64,
    pub next_offset: i64,
    /// `running` (listing), `listed` (reconciling), `complete`, `refused`.
    pub status: String,
    pub seen: i64,
    pub created: i64,
    pub updated: i64,
    pub unchanged: i64,
    pub deleted: i64,
    pub finished_at: Option<i64>,
    pub note: Option<String>,
}

impl Checkpoint {
    /// A pass that stopped before it finished: the next run continues it.
    pub fn resumable(&self) -> bool {
        matches!(self.status.as_str(), "running" | "listed")
    }
}

/// A live entity the pass did not list: (id, user_id, organization_id).
pub type Missing = (String, Option<String>, Option<String>);

/// The columns of `backfill_checkpoints`, in [`Checkpoint`]'s field order.
pub(crate) const CHECKPOINT_COLS: &str = "resource, pass_id, started_at, next_offset, status, seen, created, updated, unchanged, deleted, finished_at, note";

/// Ids per statement when a page's ids are written or looked up: well under
/// both backends' parameter limits.
pub(crate) const IDS_PER_STATEMENT: usize = 300;

pub async fn load(db: &Database, resource: &str) -> Result<Option<Checkpoint>> {
    backend!(db, |b| b.load_checkpoint(resource).await)
}

pub async fn load_all(db: &Database) -> Result<Vec<Checkpoint>> {
    backend!(db, |b| b.load_checkpoints().await)
}

/// Starts a new pass: forgets what earlier passes listed.
pub async fn start(db: &Database, cp: &Checkpoint) -> Result<()> {
    backend!(db, |b| b.start_pass(cp).await)
}

/// Records a page as listed: its ids join the pass's seen set and the
/// checkpoint moves past it, in one transaction. The page's records were
/// applied (committed) before this: a crash in between re-lists the page on
/// the next run, and applying the same records again changes nothing.
pub async fn advance(db: &Database, cp: &Checkpoint, ids: &[String]) -> Result<()> {
    backend!(db, |b| b.advance_pass(cp, ids).await)
}

/// Writes the checkpoint's position, status and counters.
pub async fn save(db: &Database, cp: &Checkpoint) -> Result<()> {
    backend!(db, |b| b.save_checkpoint_row(cp).await)
}

/// (version, deleted) of each of these entities that the store has.
pub async fn local_versions(
    db: &Database,
    kind: Kind,
    ids: &[String],
) -> Result<HashMap<String, (i64, bool)>> {
    backend!(db, |b| b.local_versions(kind, ids).await)
}

/// Live entities of `kind`.
pub async fn count_live(db: &Database, kind: Kind) -> Result<i64> {
    backend!(db, |b| b.count_live(kind).await)
}

/// How many live entities of `kind` the pass did not list and nothing has
/// written since it began.
pub async fn count_missing(db: &Database, kind: Kind, cp: &Checkpoint) -> Result<i64> {
    backend!(db, |b| b.count_missing(kind, cp).await)
}

/// The next `limit` of them after `after` (by id), so a long list is read in
/// bounded pieces.
pub async fn missing_after(
    db: &Database,
    kind: Kind,
    cp: &Checkpoint,
    after: &str,
    limit: i64,
) -> Result<Vec<Missing>> {
    backend!(db, |b| b.missing_after(kind, cp, after, limit).await)
}

/// Live ids of `kind` after `after`, in id order (a dry run's comparison).
pub async fn live_after(db: &Database, kind: Kind, after: &str, limit: i64) -> Result<Vec<String>> {
    backend!(db, |b| b.live_after(kind, after, limit).await)
}
