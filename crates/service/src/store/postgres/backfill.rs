//! PostgreSQL's answers to the backfill's questions ([`BackfillStore`]).

use super::Postgres;
use crate::clerk::model::Kind;
use crate::store::backfill::{Checkpoint, Missing, CHECKPOINT_COLS, IDS_PER_STATEMENT};
use crate::store::{BackfillStore, Result};
use async_trait::async_trait;
use sqlx::postgres::PgRow;
use sqlx::{Postgres as Pg, Row, Transaction};
use std::collections::HashMap;

fn checkpoint(r: &PgRow) -> std::result::Result<Checkpoint, sqlx::Error> {
    Ok(Checkpoint {
        resource: r.try_get(0)?,
        pass_id: r.try_get(1)?,
        started_at: r.try_get(2)?,
        next_offset: r.try_get(3)?,
        status: r.try_get(4)?,
        seen: r.try_get(5)?,
        created: r.try_get(6)?,
        updated: r.try_get(7)?,
        unchanged: r.try_get(8)?,
        deleted: r.try_get(9)?,
        finished_at: r.try_get(10)?,
        note: r.try_get(11)?,
    })
}

async fn save_in(
    tx: &mut Transaction<'_, Pg>,
    cp: &Checkpoint,
) -> std::result::Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE backfill_checkpoints SET next_offset = $2, status = $3, seen = $4, created = $5, \
         updated = $6, unchanged = $7, deleted = $8, finished_at = $9, note = $10 WHERE resource = $1",
    )
    .bind(&cp.resource)
    .bind(cp.next_offset)
    .bind(&cp.status)
    .bind(cp.seen)
    .bind(cp.created)
    .bind(cp.updated)
    .bind(cp.unchanged)
    .bind(cp.deleted)
    .bind(cp.finished_at)
    .bind(&cp.note)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn missing_where(kind: Kind) -> String {
    format!(
        "FROM {} t WHERE NOT t.deleted AND t.synced_at < $1 AND NOT EXISTS \
         (SELECT 1 FROM backfill_seen s WHERE s.resource = $2 AND s.entity_id = t.id AND s.pass_id = $3)",
        kind.table()
    )
}

#[async_trait]
impl BackfillStore for Postgres<'_> {
    async fn load_checkpoint(&self, resource: &str) -> Result<Option<Checkpoint>> {
        let sql = format!("SELECT {CHECKPOINT_COLS} FROM backfill_checkpoints WHERE resource = $1");
        let row = sqlx::query(&sql)
            .bind(resource)
            .fetch_optional(self.pool)
            .await?;
        Ok(row.as_ref().map(checkpoint).transpose()?)
    }

    async fn load_checkpoints(&self) -> Result<Vec<Checkpoint>> {
        let sql = format!("SELECT {CHECKPOINT_COLS} FROM backfill_checkpoints ORDER BY resource");
        let rows = sqlx::query(&sql).fetch_all(self.pool).await?;
        Ok(rows
            .iter()
            .map(checkpoint)
            .collect::<std::result::Result<_, _>>()?)
    }

    async fn start_pass(&self, cp: &Checkpoint) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM backfill_seen WHERE resource = $1")
            .bind(&cp.resource)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO backfill_checkpoints (resource, pass_id, started_at, next_offset, status) \
             VALUES ($1, $2, $3, 0, '') ON CONFLICT (resource) DO UPDATE SET \
             pass_id = excluded.pass_id, started_at = excluded.started_at",
        )
        .bind(&cp.resource)
        .bind(&cp.pass_id)
        .bind(cp.started_at)
        .execute(&mut *tx)
        .await?;
        // Position, status and counters: the one statement `save` uses.
        save_in(&mut tx, cp).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn advance_pass(&self, cp: &Checkpoint, ids: &[String]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        // The ids as one array parameter per statement: one round trip per chunk.
        for chunk in ids.chunks(IDS_PER_STATEMENT) {
            sqlx::query(
                "INSERT INTO backfill_seen (resource, entity_id, pass_id) \
                 SELECT $1, id, $3 FROM UNNEST($2::text[]) AS id \
                 ON CONFLICT (resource, entity_id) DO UPDATE SET pass_id = excluded.pass_id",
            )
            .bind(&cp.resource)
            .bind(chunk)
            .bind(&cp.pass_id)
            .execute(&mut *tx)
            .await?;
        }
        save_in(&mut tx, cp).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn save_checkpoint_row(&self, cp: &Checkpoint) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        save_in(&mut tx, cp).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn local_versions(
        &self,
        kind: Kind,
        ids: &[String],
    ) -> Result<HashMap<String, (i64, bool)>> {
        let sql = format!(
            "SELECT id, version, deleted FROM {} WHERE id = ANY($1)",
            kind.table()
        );
        let mut out = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(IDS_PER_STATEMENT) {
            let rows: Vec<(String, i64, bool)> = sqlx::query_as(&sql)
                .bind(chunk)
                .fetch_all(self.pool)
                .await?;
            out.extend(rows.into_iter().map(|(id, v, d)| (id, (v, d))));
        }
        Ok(out)
    }

    async fn count_live(&self, kind: Kind) -> Result<i64> {
        let sql = format!("SELECT COUNT(*) FROM {} WHERE NOT deleted", kind.table());
        Ok(sqlx::query_scalar(&sql).fetch_one(self.pool).await?)
    }

    async fn count_missing(&self, kind: Kind, cp: &Checkpoint) -> Result<i64> {
        let sql = format!("SELECT COUNT(*) {}", missing_where(kind));
        Ok(sqlx::query_scalar(&sql)
            .bind(cp.started_at)
            .bind(&cp.resource)
            .bind(&cp.pass_id)
            .fetch_one(self.pool)
            .await?)
    }

    async fn missing_after(
        &self,
        kind: Kind,
        cp: &Checkpoint,
        after: &str,
        limit: i64,
    ) -> Result<Vec<Missing>> {
        let sql = format!(
            "SELECT t.id, t.user_id, t.organization_id {} AND t.id > $4 ORDER BY t.id LIMIT $5",
            missing_where(kind)
        );
        Ok(sqlx::query_as(&sql)
            .bind(cp.started_at)
            .bind(&cp.resource)
            .bind(&cp.pass_id)
            .bind(after)
            .bind(limit)
            .fetch_all(self.pool)
            .await?)
    }

    async fn live_after(&self, kind: Kind, after: &str, limit: i64) -> Result<Vec<String>> {
        let sql = format!(
            "SELECT id FROM {} WHERE NOT deleted AND id > $1 ORDER BY id LIMIT $2",
            kind.table()
        );
        Ok(sqlx::query_scalar(&sql)
            .bind(after)
            .bind(limit)
            .fetch_all(self.pool)
            .await?)
    }
}
