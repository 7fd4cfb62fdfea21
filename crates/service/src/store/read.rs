//! Reads for the API: entities, lists with keyset pagination, audit history.

use crate::clerk::model::Kind;
use crate::store::db::{on_pool, Database};
use crate::store::tx::{EntityRow, RefCol};

const COLS: &str = "id, version, version_key, deleted, user_id, organization_id, data, synced_at";

pub async fn get(db: &Database, kind: Kind, id: &str) -> Result<Option<EntityRow>, sqlx::Error> {
    let sql = format!("SELECT {COLS} FROM {} WHERE id = $1", kind.table());
    on_pool!(db, |p| sqlx::query_as(&sql)
        .bind(id)
        .fetch_optional(p)
        .await)
}

/// The rows of `kind` with these ids, in one query (those that exist, in no
/// particular order): the search consumer reads a whole feed batch's records
/// this way instead of one round trip each.
pub async fn get_many(
    db: &Database,
    kind: Kind,
    ids: &[&str],
) -> Result<Vec<EntityRow>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let table = kind.table();
    match db {
        // The ids travel as one JSON array: one statement text, however many.
        Database::Sqlite(p, _) => {
            let list = serde_json::to_string(ids).expect("a list of strings serializes");
            let sql =
                format!("SELECT {COLS} FROM {table} WHERE id IN (SELECT value FROM json_each($1))");
            sqlx::query_as(&sql).bind(list).fetch_all(p).await
        }
        Database::Postgres(p) => {
            let sql = format!("SELECT {COLS} FROM {table} WHERE id = ANY($1)");
            sqlx::query_as(&sql).bind(ids).fetch_all(p).await
        }
    }
}

/// Live rows ordered by id, after `after` (exclusive).
pub async fn list_live(
    db: &Database,
    kind: Kind,
    filter: Option<(RefCol, &str)>,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<EntityRow>, sqlx::Error> {
    let (cond, value) = match filter {
        Some((RefCol::UserId, v)) => ("AND user_id = $4", v),
        Some((RefCol::OrganizationId, v)) => ("AND organization_id = $4", v),
        None => ("AND $4 = $4", ""),
    };
    let sql = format!(
        "SELECT {COLS} FROM {} WHERE deleted = $1 AND id > $2 {cond} ORDER BY id LIMIT $3",
        kind.table()
    );
    on_pool!(db, |p| sqlx::query_as(&sql)
        .bind(false)
        .bind(after.unwrap_or(""))
        .bind(limit)
        .bind(value)
        .fetch_all(p)
        .await)
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
) -> Result<Vec<AuditEntry>, sqlx::Error> {
    const Q: &str =
        "SELECT seq, svix_id, kind, entity_id, operation, changes, version, at FROM audit \
                     WHERE entity_id = $1 AND seq > $2 ORDER BY seq LIMIT $3";
    on_pool!(db, |p| sqlx::query_as(Q)
        .bind(entity_id)
        .bind(after)
        .bind(limit)
        .fetch_all(p)
        .await)
}
