//! SQLite's named leases ([`LeaseStore`]): writes go through the write gate
//! like every write, so taking a lease is one atomic upsert.

use super::Sqlite;
use crate::store::lease::Lease;
use crate::store::{LeaseStore, Result};
use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};

#[async_trait]
impl LeaseStore for Sqlite<'_> {
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now: i64,
        ttl_ms: i64,
        finished_before: i64,
    ) -> Result<bool> {
        self.write(|c| {
            // The upsert's WHERE leaves a held, unexpired lease (or a job not
            // yet due) alone: then no row changes.
            let n = c
                .prepare_cached(
                    "INSERT INTO reconcile_lease (name, holder, expires_at, started_at) \
                     VALUES (?1, ?2, ?3 + ?4, ?3) ON CONFLICT (name) DO UPDATE SET \
                     holder = excluded.holder, expires_at = excluded.expires_at, \
                     started_at = excluded.started_at \
                     WHERE (reconcile_lease.holder IS NULL OR reconcile_lease.expires_at <= ?3) \
                     AND (reconcile_lease.last_finished_at IS NULL OR reconcile_lease.last_finished_at <= ?5)",
                )?
                .execute(params![name, holder, now, ttl_ms, finished_before])?;
            Ok(n == 1)
        })
        .await
    }

    async fn renew_lease(&self, name: &str, holder: &str, now: i64, ttl_ms: i64) -> Result<bool> {
        self.write(|c| {
            let n = c
                .prepare_cached(
                    "UPDATE reconcile_lease SET expires_at = ?3 + ?4 \
                     WHERE name = ?1 AND holder = ?2 AND expires_at > ?3",
                )?
                .execute(params![name, holder, now, ttl_ms])?;
            Ok(n == 1)
        })
        .await
    }

    async fn release_lease(
        &self,
        name: &str,
        holder: &str,
        finished_at: Option<i64>,
        result: &str,
    ) -> Result<bool> {
        self.write(|c| {
            let n = c
                .prepare_cached(
                    "UPDATE reconcile_lease SET holder = NULL, expires_at = 0, \
                     last_finished_at = COALESCE(?3, last_finished_at), last_result = ?4 \
                     WHERE name = ?1 AND holder = ?2",
                )?
                .execute(params![name, holder, finished_at, result])?;
            Ok(n == 1)
        })
        .await
    }

    async fn load_lease(&self, name: &str) -> Result<Option<Lease>> {
        self.read(|c| {
            c.prepare_cached(
                "SELECT name, holder, expires_at, started_at, last_finished_at, last_result \
                 FROM reconcile_lease WHERE name = ?1",
            )?
            .query_row([name], |r| {
                Ok(Lease {
                    name: r.get(0)?,
                    holder: r.get(1)?,
                    expires_at: r.get(2)?,
                    started_at: r.get(3)?,
                    last_finished_at: r.get(4)?,
                    last_result: r.get(5)?,
                })
            })
            .optional()
        })
    }
}
