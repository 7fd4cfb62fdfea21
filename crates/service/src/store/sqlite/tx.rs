//! SQLite's apply transaction, on the write gate's writer connection.
//!
//! Must never: outlive the gate guard it holds, or leave a transaction open
//! when dropped (it rolls back, then the gate reopens).

use super::conn::blocking;
use super::gate::WriteGuard;
use crate::clerk::model::Kind;
use crate::store::tx::{
    AuditRow, Contacts, EntityRow, FeedRow, Pending, PendingAudit, PendingFeed, RefCol, StoreTx,
    COLS, ON_CONFLICT_UPDATE,
};
use crate::store::StoreError;
use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

pub(crate) fn entity(r: &rusqlite::Row<'_>) -> rusqlite::Result<EntityRow> {
    Ok(EntityRow {
        id: r.get(0)?,
        version: r.get(1)?,
        version_key: r.get(2)?,
        deleted: r.get(3)?,
        user_id: r.get(4)?,
        organization_id: r.get(5)?,
        data: r.get(6)?,
        synced_at: r.get(7)?,
    })
}

/// An apply transaction on the writer connection (`BEGIN IMMEDIATE`: this is
/// the only writer, so no entity locks are needed). Rolled back if dropped
/// uncommitted.
pub(crate) struct SqliteTx {
    pending: Pending,
    open: bool,
    gate: WriteGuard,
}

impl SqliteTx {
    pub(crate) fn begin(mut gate: WriteGuard) -> Result<SqliteTx, StoreError> {
        blocking(|| gate.conn().execute_batch("BEGIN IMMEDIATE")).map_err(StoreError::from)?;
        Ok(SqliteTx {
            pending: Pending::default(),
            open: true,
            gate,
        })
    }

    fn conn(&mut self) -> &mut Connection {
        self.gate.conn()
    }

    fn write_pending(&mut self, p: &Pending) -> rusqlite::Result<()> {
        let conn = self.gate.conn();
        let mut done = conn.prepare_cached(
            "UPDATE inbox SET status = 'done', leased_until = NULL, attempts = attempts + 1, \
             processed_at = ?2, duration_us = ?3 WHERE seq = ?1",
        )?;
        for (seq, at, us) in &p.done {
            done.execute(params![seq, at, us])?;
        }
        let mut audit = conn.prepare_cached(
            "INSERT INTO audit (svix_id, kind, entity_id, user_id, operation, changes, version, at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        for a in &p.audit {
            audit.execute(params![
                a.svix_id,
                a.kind.as_str(),
                a.entity_id,
                a.user_id,
                a.operation,
                a.changes,
                a.version,
                a.at
            ])?;
        }
        let mut feed = conn.prepare_cached(
            "INSERT INTO change_feed (kind, entity_id, operation, changed_fields, version, svix_id, committed_at, user_id, organization_id) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        for f in &p.feed {
            feed.execute(params![
                f.kind.as_str(),
                f.entity_id,
                f.operation,
                f.changed_fields,
                f.version,
                f.svix_id,
                f.committed_at,
                f.user_id,
                f.organization_id
            ])?;
        }
        Ok(())
    }
}

impl Drop for SqliteTx {
    fn drop(&mut self) {
        if self.open {
            // The gate (dropped after this) is only reopened once SQLite's
            // write lock is released.
            let conn = self.gate.conn();
            let _ = blocking(|| conn.execute_batch("ROLLBACK"));
        }
    }
}

#[async_trait]
impl StoreTx for SqliteTx {
    async fn lock(&mut self, _key: &str) -> Result<(), StoreError> {
        Ok(())
    }

    async fn lock_shared(&mut self, _key: &str) -> Result<(), StoreError> {
        Ok(())
    }

    async fn lock_all(&mut self, _keys: &[(String, bool)]) -> Result<(), StoreError> {
        Ok(())
    }

    async fn get(&mut self, kind: Kind, id: &str) -> Result<Option<EntityRow>, StoreError> {
        let sql = format!("SELECT {COLS} FROM {} WHERE id = ?1", kind.table());
        let mut stmt = self.conn().prepare_cached(&sql).map_err(StoreError::from)?;
        stmt.query_row([id], entity)
            .optional()
            .map_err(StoreError::from)
    }

    async fn put(&mut self, kind: Kind, r: &EntityRow) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO {} ({COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8){ON_CONFLICT_UPDATE}",
            kind.table()
        );
        let mut stmt = self.conn().prepare_cached(&sql).map_err(StoreError::from)?;
        stmt.execute(params![
            r.id,
            r.version,
            r.version_key,
            r.deleted,
            r.user_id,
            r.organization_id,
            r.data,
            r.synced_at
        ])
        .map(|_| ())
        .map_err(StoreError::from)
    }

    async fn live_by(
        &mut self,
        kind: Kind,
        by: RefCol,
        value: &str,
    ) -> Result<Vec<EntityRow>, StoreError> {
        let sql = format!(
            "SELECT {COLS} FROM {} WHERE {} = ?1 AND deleted = 0 ORDER BY id",
            kind.table(),
            by.column()
        );
        let mut stmt = self.conn().prepare_cached(&sql).map_err(StoreError::from)?;
        let rows = stmt.query_map([value], entity).map_err(StoreError::from)?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(StoreError::from)
    }

    async fn replace_contacts(&mut self, user_id: &str, c: &Contacts) -> Result<(), StoreError> {
        let conn = self.conn();
        let run = || -> rusqlite::Result<()> {
            for t in ["user_emails", "user_phones", "user_external_accounts"] {
                conn.prepare_cached(&format!("DELETE FROM {t} WHERE user_id = ?1"))?
                    .execute([user_id])?;
            }
            let mut s = conn.prepare_cached(
                "INSERT INTO user_emails (user_id, id, email_address, is_primary) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
            )?;
            for (id, addr, primary) in &c.emails {
                s.execute(params![user_id, id, addr, primary])?;
            }
            let mut s = conn.prepare_cached(
                "INSERT INTO user_phones (user_id, id, phone_number, is_primary) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
            )?;
            for (id, number, primary) in &c.phones {
                s.execute(params![user_id, id, number, primary])?;
            }
            let mut s = conn.prepare_cached(
                "INSERT INTO user_external_accounts (user_id, id, provider, email_address) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
            )?;
            for (id, provider, email) in &c.external_accounts {
                s.execute(params![user_id, id, provider, email])?;
            }
            Ok(())
        };
        run().map_err(StoreError::from)
    }

    async fn archive(&mut self, kind: Kind, r: &EntityRow, at: i64) -> Result<(), StoreError> {
        let user = if kind == Kind::User {
            Some(r.id.as_str())
        } else {
            r.user_id.as_deref()
        };
        let mut stmt = self
            .conn()
            .prepare_cached(
                "INSERT INTO archive (kind, entity_id, user_id, version, data, archived_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(StoreError::from)?;
        stmt.execute(params![kind.as_str(), r.id, user, r.version, r.data, at])
            .map(|_| ())
            .map_err(StoreError::from)
    }

    async fn audit(&mut self, a: &AuditRow<'_>) -> Result<(), StoreError> {
        self.pending.audit.push(PendingAudit::from(a));
        Ok(())
    }

    async fn feed(&mut self, f: &FeedRow<'_>) -> Result<(), StoreError> {
        self.pending.feed.push(PendingFeed::from(f));
        Ok(())
    }

    async fn inbox_status(&mut self, seq: i64) -> Result<Option<String>, StoreError> {
        if let Some(st) = self.pending.statuses.get(&seq) {
            return Ok(Some(st.clone()));
        }
        let mut stmt = self
            .conn()
            .prepare_cached("SELECT status FROM inbox WHERE seq = ?1")
            .map_err(StoreError::from)?;
        stmt.query_row([seq], |r| r.get(0))
            .optional()
            .map_err(StoreError::from)
    }

    async fn prefetch_statuses(&mut self, _seqs: &[i64]) -> Result<(), StoreError> {
        // One indexed lookup per event costs about what a batched IN (...) would,
        // without a new statement text per batch size.
        Ok(())
    }

    async fn mark_done(&mut self, seq: i64, at: i64, duration_us: i64) -> Result<(), StoreError> {
        self.pending.done.push((seq, at, duration_us));
        self.pending.statuses.insert(seq, "done".into());
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<Vec<(Kind, String)>, StoreError> {
        let pending = std::mem::take(&mut self.pending);
        self.write_pending(&pending).map_err(StoreError::from)?;
        let conn = self.gate.conn();
        blocking(|| conn.execute_batch("COMMIT")).map_err(StoreError::from)?;
        self.open = false;
        Ok(pending
            .feed
            .into_iter()
            .map(|f| (f.kind, f.entity_id))
            .collect())
    }
}
