//! Named leases in the store (migration `0021_reconcile_lease.sql`): one
//! holder at a time across every node sharing the database, expiring so a
//! killed node's lease is taken over, and the last result of the job the
//! lease guards (scheduled reconciliation, `backfill/schedule.rs`).
//!
//! Owns: the row type and the functions callers use; each backend answers
//! with its own SQL ([`LeaseStore`](super::LeaseStore)). Must never: decide
//! when a job is due or what its result means (the caller passes times and
//! an opaque JSON text).

use crate::store::db::{backend, Database};
use crate::store::{LeaseStore, Result};

/// A lease's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub name: String,
    /// None: free.
    pub holder: Option<String>,
    /// ms; at or past it the lease is free whoever holds it.
    pub expires_at: i64,
    /// ms; when the holder took it.
    pub started_at: Option<i64>,
    /// ms; when a pass that counts for the schedule last finished.
    pub last_finished_at: Option<i64>,
    /// The last pass's result as JSON text (the caller's shape).
    pub last_result: Option<String>,
}

impl Lease {
    /// Held by someone at `now`.
    pub fn held(&self, now: i64) -> bool {
        self.holder.is_some() && self.expires_at > now
    }
}

/// Takes the lease `name` for `holder` until `now + ttl_ms`, when it is free
/// (never taken, released, or expired) and its job last finished at or before
/// `finished_before` (`i64::MAX`: whenever). Whether it was taken.
pub async fn acquire(
    db: &Database,
    name: &str,
    holder: &str,
    now: i64,
    ttl_ms: i64,
    finished_before: i64,
) -> Result<bool> {
    backend!(db, |b| b
        .acquire_lease(name, holder, now, ttl_ms, finished_before)
        .await)
}

/// Extends `holder`'s lease to `now + ttl_ms`; false when it holds it no
/// longer (it expired and another node took it).
pub async fn renew(db: &Database, name: &str, holder: &str, now: i64, ttl_ms: i64) -> Result<bool> {
    backend!(db, |b| b.renew_lease(name, holder, now, ttl_ms).await)
}

/// Frees `holder`'s lease and records the result; `finished_at` (None leaves
/// the last one) is what the schedule counts from. Nothing when another node
/// holds it now.
pub async fn release(
    db: &Database,
    name: &str,
    holder: &str,
    finished_at: Option<i64>,
    result: &str,
) -> Result<bool> {
    backend!(db, |b| b
        .release_lease(name, holder, finished_at, result)
        .await)
}

pub async fn load(db: &Database, name: &str) -> Result<Option<Lease>> {
    backend!(db, |b| b.load_lease(name).await)
}
