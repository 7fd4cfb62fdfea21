//! The write side of the store: one transaction, the operations `sync` needs.
//!
//! Why a trait: the convergence rules in `sync` are written once and run on both
//! backends. The SQL is the same text on both (SQLite accepts `$n` parameters);
//! a macro stamps out the two implementations. Must never: decide anything
//! (that is `sync`'s job) or commit on its own.

use crate::clerk::model::Kind;
use crate::store::db::Database;
use async_trait::async_trait;

/// One row of an entity table.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct EntityRow {
    pub id: String,
    pub version: i64,
    pub version_key: String,
    pub deleted: bool,
    pub user_id: Option<String>,
    pub organization_id: Option<String>,
    /// Raw JSON; None for tombstones.
    pub data: Option<String>,
    pub synced_at: i64,
}

/// The referencing columns an entity can be found by.
#[derive(Debug, Clone, Copy)]
pub enum RefCol {
    UserId,
    OrganizationId,
}

impl RefCol {
    fn column(self) -> &'static str {
        match self {
            RefCol::UserId => "user_id",
            RefCol::OrganizationId => "organization_id",
        }
    }
}

/// A user's contact points, derived from the user record.
#[derive(Debug, Default, Clone)]
pub struct Contacts {
    /// (id, address, is_primary)
    pub emails: Vec<(String, String, bool)>,
    pub phones: Vec<(String, String, bool)>,
    /// (id, provider, email)
    pub external_accounts: Vec<(String, Option<String>, Option<String>)>,
}

#[derive(Debug, Clone)]
pub struct AuditRow<'a> {
    pub svix_id: &'a str,
    pub kind: Kind,
    pub entity_id: &'a str,
    pub user_id: Option<&'a str>,
    pub operation: &'a str,
    pub changes: String,
    pub version: i64,
    pub at: i64,
}

#[derive(Debug, Clone)]
pub struct FeedRow<'a> {
    pub kind: Kind,
    pub entity_id: &'a str,
    pub operation: &'a str,
    pub changed_fields: String,
    pub version: i64,
    pub svix_id: &'a str,
    pub committed_at: i64,
}

#[async_trait]
pub trait StoreTx: Send {
    /// Serializes transactions touching `key` (PostgreSQL advisory lock; SQLite's
    /// `BEGIN IMMEDIATE` already serializes writers).
    async fn lock(&mut self, key: &str) -> Result<(), sqlx::Error>;
    async fn get(&mut self, kind: Kind, id: &str) -> Result<Option<EntityRow>, sqlx::Error>;
    async fn put(&mut self, kind: Kind, row: &EntityRow) -> Result<(), sqlx::Error>;
    /// Live (not deleted) rows of `kind` whose `by` column is `value`.
    async fn live_by(
        &mut self,
        kind: Kind,
        by: RefCol,
        value: &str,
    ) -> Result<Vec<EntityRow>, sqlx::Error>;
    async fn replace_contacts(&mut self, user_id: &str, c: &Contacts) -> Result<(), sqlx::Error>;
    async fn archive(&mut self, kind: Kind, row: &EntityRow, at: i64) -> Result<(), sqlx::Error>;
    async fn audit(&mut self, a: &AuditRow<'_>) -> Result<(), sqlx::Error>;
    async fn feed(&mut self, f: &FeedRow<'_>) -> Result<(), sqlx::Error>;
    async fn inbox_status(&mut self, seq: i64) -> Result<Option<String>, sqlx::Error>;
    async fn mark_done(&mut self, seq: i64, at: i64, duration_us: i64) -> Result<(), sqlx::Error>;
    /// Commits; returns the entities whose changes went into the feed.
    async fn commit(self: Box<Self>) -> Result<Vec<(Kind, String)>, sqlx::Error>;
}

/// A feed row waiting for commit.
struct PendingFeed {
    kind: Kind,
    entity_id: String,
    operation: String,
    changed_fields: String,
    version: i64,
    svix_id: String,
    committed_at: i64,
}

/// Feed rows are buffered and written at commit, so the feed lock (PostgreSQL)
/// is the last lock a transaction takes and cannot be part of a deadlock.
pub struct SqliteTx(
    sqlx::Transaction<'static, sqlx::Sqlite>,
    Vec<PendingFeed>,
    // Declared last: dropped after the transaction, so the gate opens only once
    // the transaction has committed or rolled back.
    #[allow(dead_code)] Option<tokio::sync::OwnedMutexGuard<()>>,
);
pub struct PgTx(sqlx::Transaction<'static, sqlx::Postgres>, Vec<PendingFeed>);

/// Starts a write transaction.
pub async fn begin(db: &Database) -> Result<Box<dyn StoreTx>, sqlx::Error> {
    Ok(match db {
        // IMMEDIATE takes the write lock up front: a deferred transaction that reads
        // then writes can fail with SQLITE_BUSY when another writer got in between.
        Database::Sqlite(p, ..) => {
            let gate = db.write_lock().await;
            Box::new(SqliteTx(
                p.begin_with("BEGIN IMMEDIATE").await?,
                Vec::new(),
                gate,
            ))
        }
        Database::Postgres(p) => Box::new(PgTx(p.begin().await?, Vec::new())),
    })
}

const COLS: &str = "id, version, version_key, deleted, user_id, organization_id, data, synced_at";

macro_rules! store_tx_impl {
    ($ty:ty, $lock_sql:expr, $status_sql:expr, $feed_lock_sql:expr) => {
        #[async_trait]
        impl StoreTx for $ty {
            async fn lock(&mut self, key: &str) -> Result<(), sqlx::Error> {
                let sql: Option<&str> = $lock_sql;
                if let Some(sql) = sql {
                    sqlx::query(sql).bind(key).execute(&mut *self.0).await?;
                }
                Ok(())
            }

            async fn get(&mut self, kind: Kind, id: &str) -> Result<Option<EntityRow>, sqlx::Error> {
                let sql = format!("SELECT {COLS} FROM {} WHERE id = $1", kind.table());
                sqlx::query_as(&sql).bind(id).fetch_optional(&mut *self.0).await
            }

            async fn put(&mut self, kind: Kind, r: &EntityRow) -> Result<(), sqlx::Error> {
                let sql = format!(
                    "INSERT INTO {} ({COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                     ON CONFLICT (id) DO UPDATE SET version = excluded.version, \
                     version_key = excluded.version_key, deleted = excluded.deleted, \
                     user_id = excluded.user_id, organization_id = excluded.organization_id, \
                     data = excluded.data, synced_at = excluded.synced_at",
                    kind.table()
                );
                sqlx::query(&sql)
                    .bind(&r.id)
                    .bind(r.version)
                    .bind(&r.version_key)
                    .bind(r.deleted)
                    .bind(&r.user_id)
                    .bind(&r.organization_id)
                    .bind(&r.data)
                    .bind(r.synced_at)
                    .execute(&mut *self.0)
                    .await
                    .map(|_| ())
            }

            async fn live_by(
                &mut self,
                kind: Kind,
                by: RefCol,
                value: &str,
            ) -> Result<Vec<EntityRow>, sqlx::Error> {
                let sql = format!(
                    "SELECT {COLS} FROM {} WHERE {} = $1 AND deleted = $2 ORDER BY id",
                    kind.table(),
                    by.column()
                );
                sqlx::query_as(&sql)
                    .bind(value)
                    .bind(false)
                    .fetch_all(&mut *self.0)
                    .await
            }

            async fn replace_contacts(&mut self, user_id: &str, c: &Contacts) -> Result<(), sqlx::Error> {
                for t in ["user_emails", "user_phones", "user_external_accounts"] {
                    sqlx::query(&format!("DELETE FROM {t} WHERE user_id = $1"))
                        .bind(user_id)
                        .execute(&mut *self.0)
                        .await?;
                }
                for (id, addr, primary) in &c.emails {
                    sqlx::query(
                        "INSERT INTO user_emails (user_id, id, email_address, is_primary) VALUES ($1, $2, $3, $4) \
                         ON CONFLICT DO NOTHING",
                    )
                    .bind(user_id)
                    .bind(id)
                    .bind(addr)
                    .bind(*primary)
                    .execute(&mut *self.0)
                    .await?;
                }
                for (id, number, primary) in &c.phones {
                    sqlx::query(
                        "INSERT INTO user_phones (user_id, id, phone_number, is_primary) VALUES ($1, $2, $3, $4) \
                         ON CONFLICT DO NOTHING",
                    )
                    .bind(user_id)
                    .bind(id)
                    .bind(number)
                    .bind(*primary)
                    .execute(&mut *self.0)
                    .await?;
                }
                for (id, provider, email) in &c.external_accounts {
                    sqlx::query(
                        "INSERT INTO user_external_accounts (user_id, id, provider, email_address) \
                         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                    )
                    .bind(user_id)
                    .bind(id)
                    .bind(provider)
                    .bind(email)
                    .execute(&mut *self.0)
                    .await?;
                }
                Ok(())
            }

            async fn archive(&mut self, kind: Kind, r: &EntityRow, at: i64) -> Result<(), sqlx::Error> {
                let user = if kind == Kind::User { Some(r.id.as_str()) } else { r.user_id.as_deref() };
                sqlx::query(
                    "INSERT INTO archive (kind, entity_id, user_id, version, data, archived_at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(kind.as_str())
                .bind(&r.id)
                .bind(user)
                .bind(r.version)
                .bind(&r.data)
                .bind(at)
                .execute(&mut *self.0)
                .await
                .map(|_| ())
            }

            async fn audit(&mut self, a: &AuditRow<'_>) -> Result<(), sqlx::Error> {
                sqlx::query(
                    "INSERT INTO audit (svix_id, kind, entity_id, user_id, operation, changes, version, at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(a.svix_id)
                .bind(a.kind.as_str())
                .bind(a.entity_id)
                .bind(a.user_id)
                .bind(a.operation)
                .bind(&a.changes)
                .bind(a.version)
                .bind(a.at)
                .execute(&mut *self.0)
                .await
                .map(|_| ())
            }

            async fn feed(&mut self, f: &FeedRow<'_>) -> Result<(), sqlx::Error> {
                self.1.push(PendingFeed {
                    kind: f.kind,
                    entity_id: f.entity_id.to_string(),
                    operation: f.operation.to_string(),
                    changed_fields: f.changed_fields.clone(),
                    version: f.version,
                    svix_id: f.svix_id.to_string(),
                    committed_at: f.committed_at,
                });
                Ok(())
            }

            async fn inbox_status(&mut self, seq: i64) -> Result<Option<String>, sqlx::Error> {
                sqlx::query_scalar($status_sql)
                    .bind(seq)
                    .fetch_optional(&mut *self.0)
                    .await
            }

            async fn mark_done(&mut self, seq: i64, at: i64, duration_us: i64) -> Result<(), sqlx::Error> {
                sqlx::query(
                    "UPDATE inbox SET status = 'done', processed_at = $2, duration_us = $3, \
                     leased_until = NULL, attempts = attempts + 1 WHERE seq = $1",
                )
                .bind(seq)
                .bind(at)
                .bind(duration_us)
                .execute(&mut *self.0)
                .await
                .map(|_| ())
            }

            async fn commit(mut self: Box<Self>) -> Result<Vec<(Kind, String)>, sqlx::Error> {
                let feed = std::mem::take(&mut self.1);
                if !feed.is_empty() {
                    let feed_lock: Option<&str> = $feed_lock_sql;
                    if let Some(sql) = feed_lock {
                        sqlx::query(sql).execute(&mut *self.0).await?;
                    }
                    for f in &feed {
                        sqlx::query(
                            "INSERT INTO change_feed (kind, entity_id, operation, changed_fields, version, svix_id, committed_at) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7)",
                        )
                        .bind(f.kind.as_str())
                        .bind(&f.entity_id)
                        .bind(&f.operation)
                        .bind(&f.changed_fields)
                        .bind(f.version)
                        .bind(&f.svix_id)
                        .bind(f.committed_at)
                        .execute(&mut *self.0)
                        .await?;
                    }
                }
                self.0.commit().await?;
                Ok(feed.into_iter().map(|f| (f.kind, f.entity_id)).collect())
            }
        }
    };
}

// SQLite has one writer at a time, so feed sequence numbers follow commit order.
store_tx_impl!(
    SqliteTx,
    None,
    "SELECT status FROM inbox WHERE seq = $1",
    None
);
// FOR UPDATE: if a lease expired and two workers hold the same event, the second
// waits here for the first to commit and then sees it done.
store_tx_impl!(
    PgTx,
    Some("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))"),
    "SELECT status FROM inbox WHERE seq = $1 FOR UPDATE",
    // A BIGSERIAL is handed out at insert, not at commit: two transactions could
    // commit their feed rows out of sequence order and a consumer that has read
    // past a gap would never see the row that fills it. Holding this lock from
    // the first feed insert to commit makes feed order commit order.
    Some("SELECT pg_advisory_xact_lock(7161285123001)")
);
