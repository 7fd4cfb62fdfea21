//! Reads for the API and the feed consumers: entities, lists with keyset
//! pagination, audit history.
//!
//! Owns: the read functions the rest of the program calls. Must never: write.

use crate::clerk::model::Kind;
use crate::store::db::{backend, Database};
use crate::store::tx::{EntityRow, RefCol};
use crate::store::{EntityStore, StoreError};

pub async fn get(db: &Database, kind: Kind, id: &str) -> Result<Option<EntityRow>, StoreError> {
    backend!(db, |b| b.get(kind, id).await)
}

/// The rows of `kind` with these ids, in one query (those that exist, in no
/// particular order): the search consumer reads a whole feed batch's records
/// this way instead of one round trip each.
pub async fn get_many(
    db: &Database,
    kind: Kind,
    ids: &[&str],
) -> Result<Vec<EntityRow>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    backend!(db, |b| b.get_many(kind, ids).await)
}

/// Live rows ordered by id, after `after` (exclusive).
pub async fn list_live(
    db: &Database,
    kind: Kind,
    filter: Option<(RefCol, &str)>,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<EntityRow>, StoreError> {
    let after = after.unwrap_or("");
    backend!(db, |b| b.list_live(kind, filter, after, limit).await)
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct AuditEntry {
    pub seq: i64,
    pub svix_id: String,
    pub kind: String,
    pub entity_id: String,
    pub operation: String,
    pub changes: String,
    pub version: i64,
    pub at: i64,
}

pub async fn audit(
    db: &Database,
    entity_id: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<AuditEntry>, StoreError> {
    backend!(db, |b| b.audit(entity_id, after, limit).await)
}
