//! PostgreSQL's named leases ([`LeaseStore`]): taking a lease is one
//! `INSERT .. ON CONFLICT DO UPDATE .. WHERE`, which locks the row, so two
//! nodes racing for a free lease cannot both get it.

use super::Postgres;
use crate::store::lease::Lease;
use crate::store::{LeaseStore, Result};
use async_trait::async_trait;
use sqlx::Row;

#[async_trait]
impl LeaseStore for Postgres<'_> {
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now: i64,
        ttl_ms: i64,
        finished_before: i64,
    ) -> Result<bool> {
        let r = sqlx::query(
            "INSERT INTO reconcile_lease (name, holder, expires_at, started_at) \
             VALUES ($1, $2, $3 + $4, $3) ON CONFLICT (name) DO UPDATE SET \
             holder = excluded.holder, expires_at = excluded.expires_at, \
             started_at = excluded.started_at \
             WHERE (reconcile_lease.holder IS NULL OR reconcile_lease.expires_at <= $3) \
             AND (reconcile_lease.last_finished_at IS NULL OR reconcile_lease.last_finished_at <= $5)",
        )
        .bind(name)
        .bind(holder)
        .bind(now)
        .bind(ttl_ms)
        .bind(finished_before)
        .execute(self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn renew_lease(&self, name: &str, holder: &str, now: i64, ttl_ms: i64) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE reconcile_lease SET expires_at = $3 + $4 \
             WHERE name = $1 AND holder = $2 AND expires_at > $3",
        )
        .bind(name)
        .bind(holder)
        .bind(now)
        .bind(ttl_ms)
        .execute(self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn release_lease(
        &self,
        name: &str,
        holder: &str,
        finished_at: Option<i64>,
        result: &str,
    ) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE reconcile_lease SET holder = NULL, expires_at = 0, \
             last_finished_at = COALESCE($3, last_finished_at), last_result = $4 \
             WHERE name = $1 AND holder = $2",
        )
        .bind(name)
        .bind(holder)
        .bind(finished_at)
        .bind(result)
        .execute(self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn load_lease(&self, name: &str) -> Result<Option<Lease>> {
        let row = sqlx::query(
            "SELECT name, holder, expires_at, started_at, last_finished_at, last_result \
             FROM reconcile_lease WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(Lease {
            name: r.try_get(0)?,
            holder: r.try_get(1)?,
            expires_at: r.try_get(2)?,
            started_at: r.try_get(3)?,
            last_finished_at: r.try_get(4)?,
            last_result: r.try_get(5)?,
        }))
    }
}
