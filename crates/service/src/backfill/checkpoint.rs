//! The backfill's own rows: per-resource checkpoints and the set of entities
//! the current pass has listed (migration `0020_backfill.sql`).
//!
//! Owns: every SQL statement on `backfill_checkpoints` and `backfill_seen`, and
//! the read-only queries reconciliation makes over the entity tables. Must
//! never: write an entity table (entities change only through `sync`).

use crate::clerk::model::Kind;
use crate::store::db::{on_pool, Database};

/// Where a resource's pass stands.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
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

const COLS: &str = "resource, pass_id, started_at, next_offset, status, seen, created, updated, unchanged, deleted, finished_at, note";

/// The checkpoint's position, status and counters, written in `$tx` (a
/// macro: the statement is the same on both backends, the executor type not).
macro_rules! save_in {
    ($tx:expr, $cp:expr) => {
        sqlx::query(
            "UPDATE backfill_checkpoints SET next_offset = $2, status = $3, seen = $4, created = $5, \
             updated = $6, unchanged = $7, deleted = $8, finished_at = $9, note = $10 WHERE resource = $1",
        )
        .bind(&$cp.resource)
        .bind($cp.next_offset)
        .bind(&$cp.status)
        .bind($cp.seen)
        .bind($cp.created)
        .bind($cp.updated)
        .bind($cp.unchanged)
        .bind($cp.deleted)
        .bind($cp.finished_at)
        .bind(&$cp.note)
        .execute(&mut *$tx)
        .await
    };
}

pub async fn load(db: &Database, resource: &str) -> Result<Option<Checkpoint>, sqlx::Error> {
    let q = format!("SELECT {COLS} FROM backfill_checkpoints WHERE resource = $1");
    on_pool!(db, |p| sqlx::query_as::<_, Checkpoint>(&q)
        .bind(resource)
        .fetch_optional(p)
        .await)
}

pub async fn load_all(db: &Database) -> Result<Vec<Checkpoint>, sqlx::Error> {
    let q = format!("SELECT {COLS} FROM backfill_checkpoints ORDER BY resource");
    on_pool!(db, |p| sqlx::query_as::<_, Checkpoint>(&q)
        .fetch_all(p)
        .await)
}

/// Starts a new pass: forgets what earlier passes listed.
pub async fn start(db: &Database, cp: &Checkpoint) -> Result<(), sqlx::Error> {
    let _gate = db.write_lock().await;
    on_pool!(db, |p| {
        let mut tx = p.begin().await?;
        sqlx::query("DELETE FROM backfill_seen WHERE resource = $1")
            .bind(&cp.resource)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM backfill_checkpoints WHERE resource = $1")
            .bind(&cp.resource)
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!(
            "INSERT INTO backfill_checkpoints ({COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        ))
        .bind(&cp.resource)
        .bind(&cp.pass_id)
        .bind(cp.started_at)
        .bind(cp.next_offset)
        .bind(&cp.status)
        .bind(cp.seen)
        .bind(cp.created)
        .bind(cp.updated)
        .bind(cp.unchanged)
        .bind(cp.deleted)
        .bind(cp.finished_at)
        .bind(&cp.note)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    })
}

/// Records a page as listed: its ids join the pass's seen set and the
/// checkpoint moves past it, in one transaction. The page's records were
/// applied (committed) before this: a crash in between re-lists the page on
/// the next run, and applying the same records again changes nothing.
pub async fn advance(db: &Database, cp: &Checkpoint, ids: &[String]) -> Result<(), sqlx::Error> {
    let _gate = db.write_lock().await;
    on_pool!(db, |p| {
        let mut tx = p.begin().await?;
        // 300 rows (900 parameters) per statement: well under both backends' limits.
        for chunk in ids.chunks(300) {
            let mut sql =
                String::from("INSERT INTO backfill_seen (resource, entity_id, pass_id) VALUES ");
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push(',');
                }
                sql.push_str(&format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3));
            }
            sql.push_str(
                " ON CONFLICT (resource, entity_id) DO UPDATE SET pass_id = excluded.pass_id",
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(&cp.resource).bind(id).bind(&cp.pass_id);
            }
            q.execute(&mut *tx).await?;
        }
        save_in!(tx, cp)?;
        tx.commit().await
    })
}

/// Writes the checkpoint's position, status and counters.
pub async fn save(db: &Database, cp: &Checkpoint) -> Result<(), sqlx::Error> {
    let _gate = db.write_lock().await;
    on_pool!(db, |p| {
        let mut tx = p.begin().await?;
        save_in!(tx, cp)?;
        tx.commit().await
    })
}

/// (version, deleted) of each of these entities that the store has.
pub async fn local_versions(
    db: &Database,
    kind: Kind,
    ids: &[String],
) -> Result<std::collections::HashMap<String, (i64, bool)>, sqlx::Error> {
    let mut out = std::collections::HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(500) {
        let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT id, version, deleted FROM {} WHERE id IN ({})",
            kind.table(),
            marks.join(",")
        );
        let rows: Vec<(String, i64, bool)> = on_pool!(db, |p| {
            let mut q = sqlx::query_as(&sql);
            for id in chunk {
                q = q.bind(id);
            }
            q.fetch_all(p).await
        })?;
        out.extend(rows.into_iter().map(|(id, v, d)| (id, (v, d))));
    }
    Ok(out)
}

/// Live entities of `kind`.
pub async fn count_live(db: &Database, kind: Kind) -> Result<i64, sqlx::Error> {
    let sql = format!("SELECT COUNT(*) FROM {} WHERE NOT deleted", kind.table());
    on_pool!(db, |p| sqlx::query_scalar(&sql).fetch_one(p).await)
}

/// A live entity the pass did not list: (id, user_id, organization_id).
pub type Missing = (String, Option<String>, Option<String>);

fn missing_where(kind: Kind) -> String {
    format!(
        "FROM {} t WHERE NOT t.deleted AND t.synced_at < $1 AND NOT EXISTS \
         (SELECT 1 FROM backfill_seen s WHERE s.resource = $2 AND s.entity_id = t.id AND s.pass_id = $3)",
        kind.table()
    )
}

/// How many live entities of `kind` the pass did not list and nothing has
/// written since it began.
pub async fn count_missing(db: &Database, kind: Kind, cp: &Checkpoint) -> Result<i64, sqlx::Error> {
    let sql = format!("SELECT COUNT(*) {}", missing_where(kind));
    on_pool!(db, |p| sqlx::query_scalar(&sql)
        .bind(cp.started_at)
        .bind(&cp.resource)
        .bind(&cp.pass_id)
        .fetch_one(p)
        .await)
}

/// The next `limit` of them after `after` (by id), so a long list is read in
/// bounded pieces.
pub async fn missing_after(
    db: &Database,
    kind: Kind,
    cp: &Checkpoint,
    after: &str,
    limit: i64,
) -> Result<Vec<Missing>, sqlx::Error> {
    let sql = format!(
        "SELECT t.id, t.user_id, t.organization_id {} AND t.id > $4 ORDER BY t.id LIMIT $5",
        missing_where(kind)
    );
    on_pool!(db, |p| sqlx::query_as(&sql)
        .bind(cp.started_at)
        .bind(&cp.resource)
        .bind(&cp.pass_id)
        .bind(after)
        .bind(limit)
        .fetch_all(p)
        .await)
}

/// Live ids of `kind` after `after`, in id order (a dry run's comparison).
pub async fn live_after(
    db: &Database,
    kind: Kind,
    after: &str,
    limit: i64,
) -> Result<Vec<String>, sqlx::Error> {
    let sql = format!(
        "SELECT id FROM {} WHERE NOT deleted AND id > $1 ORDER BY id LIMIT $2",
        kind.table()
    );
    on_pool!(db, |p| sqlx::query_scalar(&sql)
        .bind(after)
        .bind(limit)
        .fetch_all(p)
        .await)
}
