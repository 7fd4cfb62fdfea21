//! SQLite's answers to the backfill's questions ([`BackfillStore`]): its
//! checkpoint and seen-set writes go through the write gate like every write.

use super::Sqlite;
use crate::clerk::model::Kind;
use crate::store::backfill::{Checkpoint, Missing, CHECKPOINT_COLS, IDS_PER_STATEMENT};
use crate::store::{BackfillStore, Result};
use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;

fn checkpoint(r: &rusqlite::Row<'_>) -> rusqlite::Result<Checkpoint> {
    Ok(Checkpoint {
        resource: r.get(0)?,
        pass_id: r.get(1)?,
        started_at: r.get(2)?,
        next_offset: r.get(3)?,
        status: r.get(4)?,
        seen: r.get(5)?,
        created: r.get(6)?,
        updated: r.get(7)?,
        unchanged: r.get(8)?,
        deleted: r.get(9)?,
        finished_at: r.get(10)?,
        note: r.get(11)?,
    })
}

fn save_in(c: &Connection, cp: &Checkpoint) -> rusqlite::Result<()> {
    c.prepare_cached(
        "UPDATE backfill_checkpoints SET next_offset = ?2, status = ?3, seen = ?4, created = ?5, \
         updated = ?6, unchanged = ?7, deleted = ?8, finished_at = ?9, note = ?10 WHERE resource = ?1",
    )?
    .execute(params![
        cp.resource,
        cp.next_offset,
        cp.status,
        cp.seen,
        cp.created,
        cp.updated,
        cp.unchanged,
        cp.deleted,
        cp.finished_at,
        cp.note
    ])?;
    Ok(())
}

fn missing_where(kind: Kind) -> String {
    format!(
        "FROM {} t WHERE NOT t.deleted AND t.synced_at < ?1 AND NOT EXISTS \
         (SELECT 1 FROM backfill_seen s WHERE s.resource = ?2 AND s.entity_id = t.id AND s.pass_id = ?3)",
        kind.table()
    )
}

#[async_trait]
impl BackfillStore for Sqlite<'_> {
    async fn load_checkpoint(&self, resource: &str) -> Result<Option<Checkpoint>> {
        let sql = format!("SELECT {CHECKPOINT_COLS} FROM backfill_checkpoints WHERE resource = ?1");
        self.read(|c| {
            c.prepare_cached(&sql)?
                .query_row([resource], checkpoint)
                .optional()
        })
    }

    async fn load_checkpoints(&self) -> Result<Vec<Checkpoint>> {
        let sql = format!("SELECT {CHECKPOINT_COLS} FROM backfill_checkpoints ORDER BY resource");
        self.read(|c| c.prepare_cached(&sql)?.query_map([], checkpoint)?.collect())
    }

    async fn start_pass(&self, cp: &Checkpoint) -> Result<()> {
        self.write(|c| {
            let tx = c.transaction()?;
            tx.prepare_cached("DELETE FROM backfill_seen WHERE resource = ?1")?
                .execute([&cp.resource])?;
            tx.prepare_cached(
                "INSERT INTO backfill_checkpoints (resource, pass_id, started_at, next_offset, status) \
                 VALUES (?1, ?2, ?3, 0, '') ON CONFLICT (resource) DO UPDATE SET \
                 pass_id = excluded.pass_id, started_at = excluded.started_at",
            )?
            .execute(params![cp.resource, cp.pass_id, cp.started_at])?;
            // Position, status and counters: the one statement `save` uses.
            save_in(&tx, cp)?;
            tx.commit()
        })
        .await
    }

    async fn advance_pass(&self, cp: &Checkpoint, ids: &[String]) -> Result<()> {
        self.write(|c| {
            let tx = c.transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO backfill_seen (resource, entity_id, pass_id) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (resource, entity_id) DO UPDATE SET pass_id = excluded.pass_id",
                )?;
                // One cached statement per id: SQLite runs it in-process, no round trips.
                for id in ids {
                    stmt.execute(params![cp.resource, id, cp.pass_id])?;
                }
            }
            save_in(&tx, cp)?;
            tx.commit()
        })
        .await
    }

    async fn save_checkpoint_row(&self, cp: &Checkpoint) -> Result<()> {
        self.write(|c| save_in(c, cp)).await
    }

    async fn local_versions(
        &self,
        kind: Kind,
        ids: &[String],
    ) -> Result<HashMap<String, (i64, bool)>> {
        let sql = format!(
            "SELECT id, version, deleted FROM {} WHERE id IN (SELECT value FROM json_each(?1))",
            kind.table()
        );
        let mut out = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(IDS_PER_STATEMENT) {
            let list = serde_json::to_string(chunk).expect("strings serialize");
            let rows: Vec<(String, i64, bool)> = self.read(|c| {
                c.prepare_cached(&sql)?
                    .query_map([list], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect()
            })?;
            out.extend(rows.into_iter().map(|(id, v, d)| (id, (v, d))));
        }
        Ok(out)
    }

    async fn count_live(&self, kind: Kind) -> Result<i64> {
        let sql = format!("SELECT COUNT(*) FROM {} WHERE NOT deleted", kind.table());
        self.read(|c| c.prepare_cached(&sql)?.query_row([], |r| r.get(0)))
    }

    async fn count_missing(&self, kind: Kind, cp: &Checkpoint) -> Result<i64> {
        let sql = format!("SELECT COUNT(*) {}", missing_where(kind));
        self.read(|c| {
            c.prepare_cached(&sql)?
                .query_row(params![cp.started_at, cp.resource, cp.pass_id], |r| {
                    r.get(0)
                })
        })
    }

    async fn missing_after(
        &self,
        kind: Kind,
        cp: &Checkpoint,
        after: &str,
        limit: i64,
    ) -> Result<Vec<Missing>> {
        let sql = format!(
            "SELECT t.id, t.user_id, t.organization_id {} AND t.id > ?4 ORDER BY t.id LIMIT ?5",
            missing_where(kind)
        );
        self.read(|c| {
            c.prepare_cached(&sql)?
                .query_map(
                    params![cp.started_at, cp.resource, cp.pass_id, after, limit],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )?
                .collect()
        })
    }

    async fn live_after(&self, kind: Kind, after: &str, limit: i64) -> Result<Vec<String>> {
        let sql = format!(
            "SELECT id FROM {} WHERE NOT deleted AND id > ?1 ORDER BY id LIMIT ?2",
            kind.table()
        );
        self.read(|c| {
            c.prepare_cached(&sql)?
                .query_map(params![after, limit], |r| r.get(0))?
                .collect()
        })
    }
}
