//! The write side of the store: one transaction, the operations `sync` needs.
//!
//! Why a trait: the convergence rules in `sync` are written once and run on both
//! backends. PostgreSQL's transaction is here; SQLite's runs on the write
//! gate's own connection (`store::sqlite`). Must never: decide anything (that is
//! `sync`'s job) or commit on its own.

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefCol {
    UserId,
    OrganizationId,
}

impl RefCol {
    pub(crate) fn column(self) -> &'static str {
        match self {
            RefCol::UserId => "user_id",
            RefCol::OrganizationId => "organization_id",
        }
    }

    fn of(self, r: &EntityRow) -> Option<&str> {
        match self {
            RefCol::UserId => r.user_id.as_deref(),
            RefCol::OrganizationId => r.organization_id.as_deref(),
        }
    }
}

/// (id, provider, email)
pub type ExternalAccount = (String, Option<String>, Option<String>);

/// A user's contact points, derived from the user record.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Contacts {
    /// (id, address, is_primary)
    pub emails: Vec<(String, String, bool)>,
    pub phones: Vec<(String, String, bool)>,
    pub external_accounts: Vec<ExternalAccount>,
}

impl Contacts {
    pub fn is_empty(&self) -> bool {
        self.emails.is_empty() && self.phones.is_empty() && self.external_accounts.is_empty()
    }
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
    /// The user and organization whose realtime topics this change is on.
    pub user_id: Option<&'a str>,
    pub organization_id: Option<&'a str>,
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
    /// Like `lock`, but shared with other shared holders of `key`.
    async fn lock_shared(&mut self, key: &str) -> Result<(), sqlx::Error>;
    /// Takes many locks at once, in the order given ((key, exclusive) pairs, one
    /// global order for every caller); later `lock`/`lock_shared` calls for keys
    /// held are free.
    async fn lock_all(&mut self, keys: &[(String, bool)]) -> Result<(), sqlx::Error>;
    /// Reads these rows into the transaction's memory (one query per kind), so
    /// `get` answers them without a round trip. Only for rows whose locks the
    /// transaction already holds: nobody else can change them before commit.
    async fn prefetch(&mut self, _keys: &[(Kind, String)]) -> Result<(), sqlx::Error> {
        Ok(())
    }
    /// Reads the live rows of `kind` whose `by` column is one of `values` into
    /// the transaction's memory (one query), so `live_by` answers them without
    /// a round trip. Only for values whose exclusive lock the transaction
    /// already holds: then nobody else can add, change or remove such a row
    /// before commit.
    async fn prefetch_live_by(
        &mut self,
        _kind: Kind,
        _by: RefCol,
        _values: &[String],
    ) -> Result<(), sqlx::Error> {
        Ok(())
    }
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
    /// Reads (and on PostgreSQL locks) the inbox status of a batch in one query,
    /// so `inbox_status` of each is answered from memory.
    async fn prefetch_statuses(&mut self, seqs: &[i64]) -> Result<(), sqlx::Error>;
    async fn mark_done(&mut self, seq: i64, at: i64, duration_us: i64) -> Result<(), sqlx::Error>;
    /// Commits; returns the entities whose changes went into the feed.
    async fn commit(self: Box<Self>) -> Result<Vec<(Kind, String)>, sqlx::Error>;
}

/// A feed row waiting for commit.
pub(crate) struct PendingFeed {
    pub kind: Kind,
    pub entity_id: String,
    pub user_id: Option<String>,
    pub organization_id: Option<String>,
    pub operation: String,
    pub changed_fields: String,
    pub version: i64,
    pub svix_id: String,
    pub committed_at: i64,
}

impl From<&FeedRow<'_>> for PendingFeed {
    fn from(f: &FeedRow<'_>) -> Self {
        PendingFeed {
            kind: f.kind,
            entity_id: f.entity_id.to_string(),
            user_id: f.user_id.map(str::to_string),
            organization_id: f.organization_id.map(str::to_string),
            operation: f.operation.to_string(),
            changed_fields: f.changed_fields.clone(),
            version: f.version,
            svix_id: f.svix_id.to_string(),
            committed_at: f.committed_at,
        }
    }
}

pub(crate) struct PendingAudit {
    pub svix_id: String,
    pub kind: Kind,
    pub entity_id: String,
    pub user_id: Option<String>,
    pub operation: String,
    pub changes: String,
    pub version: i64,
    pub at: i64,
}

impl From<&AuditRow<'_>> for PendingAudit {
    fn from(a: &AuditRow<'_>) -> Self {
        PendingAudit {
            svix_id: a.svix_id.to_string(),
            kind: a.kind,
            entity_id: a.entity_id.to_string(),
            user_id: a.user_id.map(str::to_string),
            operation: a.operation.to_string(),
            changes: a.changes.clone(),
            version: a.version,
            at: a.at,
        }
    }
}

/// Rows a transaction writes at commit, many per statement: a batch of events
/// costs a few statements instead of a few per event. Feed rows go last, so the
/// feed lock (PostgreSQL) is the last lock a transaction takes and cannot be
/// part of a deadlock.
#[derive(Default)]
pub(crate) struct Pending {
    pub feed: Vec<PendingFeed>,
    pub audit: Vec<PendingAudit>,
    /// (seq, processed_at, duration_us)
    pub done: Vec<(i64, i64, i64)>,
    pub statuses: std::collections::HashMap<i64, String>,
    /// Advisory locks held by this transaction: key -> exclusive.
    pub locks: std::collections::HashMap<String, bool>,
    /// Prefetched rows (None: no such row), kept current by this transaction's puts.
    pub rows: std::collections::HashMap<(Kind, String), Option<EntityRow>>,
    /// Prefetched `live_by` answers as the database had them (puts are laid
    /// over them when read).
    pub live: std::collections::HashMap<(Kind, RefCol, String), Vec<EntityRow>>,
    /// Entity rows written by this transaction, upserted together at commit
    /// (PostgreSQL): the last write of each wins, reads see them first.
    pub puts: std::collections::BTreeMap<(Kind, String), EntityRow>,
    /// Users whose contact rows this transaction replaces, with the new lists
    /// (PostgreSQL, written at commit).
    pub contacts: std::collections::BTreeMap<String, Contacts>,
}

pub struct PgTx {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    pending: Pending,
}

/// Starts a write transaction.
pub async fn begin(db: &Database) -> Result<Box<dyn StoreTx>, sqlx::Error> {
    Ok(match db {
        // The gate owns SQLite's writer connection (see `store::sqlite`).
        Database::Sqlite(..) => {
            let gate = db
                .background_write_lock()
                .await
                .expect("a SQLite database always has a write gate");
            Box::new(crate::store::sqlite::SqliteTx::begin(gate)?)
        }
        Database::Postgres(p) => Box::new(PgTx {
            tx: p.begin().await?,
            pending: Pending::default(),
        }),
    })
}

/// One field of every item, as the array a PostgreSQL `unnest($n::type[])`
/// binds: batch writes send whole columns, so their statement text does not
/// depend on the batch size.
pub(crate) fn column<'a, T, U>(items: &'a [T], f: impl FnMut(&'a T) -> U) -> Vec<U> {
    items.iter().map(f).collect()
}

/// An entity table's columns, in [`EntityRow`]'s order.
pub(crate) const COLS: &str =
    "id, version, version_key, deleted, user_id, organization_id, data, synced_at";
/// What an entity upsert does when the row exists (both backends).
pub(crate) const ON_CONFLICT_UPDATE: &str =
    " ON CONFLICT (id) DO UPDATE SET version = excluded.version, \
     version_key = excluded.version_key, deleted = excluded.deleted, \
     user_id = excluded.user_id, organization_id = excluded.organization_id, \
     data = excluded.data, synced_at = excluded.synced_at";

/// Replaces the contact rows of every user in `contacts`: one statement deletes
/// their rows from all three tables, then one insert per table.
async fn write_contacts(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    contacts: &std::collections::BTreeMap<String, Contacts>,
) -> Result<(), sqlx::Error> {
    if contacts.is_empty() {
        return Ok(());
    }
    let users: Vec<&str> = contacts.keys().map(String::as_str).collect();
    // One round trip for the three tables (writable CTEs all run).
    sqlx::query(
        "WITH e AS (DELETE FROM user_emails WHERE user_id = ANY($1)), \
         p AS (DELETE FROM user_phones WHERE user_id = ANY($1)) \
         DELETE FROM user_external_accounts WHERE user_id = ANY($1)",
    )
    .bind(&users)
    .execute(&mut **tx)
    .await?;
    // Emails and phones have one shape: (user, id, address or number, primary).
    type Point<'a> = (&'a str, &'a str, &'a str, bool);
    fn points<'a>(
        contacts: &'a std::collections::BTreeMap<String, Contacts>,
        list: fn(&Contacts) -> &Vec<(String, String, bool)>,
    ) -> Vec<Point<'a>> {
        contacts
            .iter()
            .flat_map(|(u, c)| {
                list(c)
                    .iter()
                    .map(move |(id, v, p)| (u.as_str(), id.as_str(), v.as_str(), *p))
            })
            .collect()
    }
    let by_table = [
        (
            "user_emails (user_id, id, email_address, is_primary)",
            points(contacts, |c| &c.emails),
        ),
        (
            "user_phones (user_id, id, phone_number, is_primary)",
            points(contacts, |c| &c.phones),
        ),
    ];
    for (head, rows) in by_table {
        if rows.is_empty() {
            continue;
        }
        sqlx::query(&format!(
            "INSERT INTO {head} SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bool[]) \
             ON CONFLICT DO NOTHING"
        ))
        .bind(column(&rows, |r| r.0))
        .bind(column(&rows, |r| r.1))
        .bind(column(&rows, |r| r.2))
        .bind(column(&rows, |r| r.3))
        .execute(&mut **tx)
        .await?;
    }
    let accounts: Vec<(&str, &ExternalAccount)> = contacts
        .iter()
        .flat_map(|(u, c)| c.external_accounts.iter().map(move |a| (u.as_str(), a)))
        .collect();
    if !accounts.is_empty() {
        sqlx::query(
            "INSERT INTO user_external_accounts (user_id, id, provider, email_address) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) \
             ON CONFLICT DO NOTHING",
        )
        .bind(column(&accounts, |(u, _)| *u))
        .bind(column(&accounts, |(_, a)| a.0.as_str()))
        .bind(column(&accounts, |(_, a)| a.1.as_deref()))
        .bind(column(&accounts, |(_, a)| a.2.as_deref()))
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

#[async_trait]
impl StoreTx for PgTx {
    async fn lock(&mut self, key: &str) -> Result<(), sqlx::Error> {
        if self.pending.locks.get(key) == Some(&true) {
            return Ok(());
        }
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(key)
            .execute(&mut *self.tx)
            .await?;
        self.pending.locks.insert(key.to_string(), true);
        Ok(())
    }

    async fn lock_shared(&mut self, key: &str) -> Result<(), sqlx::Error> {
        if self.pending.locks.contains_key(key) {
            return Ok(());
        }
        sqlx::query("SELECT pg_advisory_xact_lock_shared(hashtextextended($1, 0))")
            .bind(key)
            .execute(&mut *self.tx)
            .await?;
        self.pending.locks.insert(key.to_string(), false);
        Ok(())
    }

    async fn lock_all(&mut self, keys: &[(String, bool)]) -> Result<(), sqlx::Error> {
        pg_lock_all(&mut self.tx, &mut self.pending.locks, keys).await
    }

    async fn prefetch(&mut self, keys: &[(Kind, String)]) -> Result<(), sqlx::Error> {
        let mut by_kind: std::collections::BTreeMap<Kind, Vec<&str>> = Default::default();
        for (kind, id) in keys {
            if !self.pending.rows.contains_key(&(*kind, id.clone())) {
                by_kind.entry(*kind).or_default().push(id);
            }
        }
        for (kind, ids) in by_kind {
            let sql = format!("SELECT {COLS} FROM {} WHERE id = ANY($1)", kind.table());
            let found: Vec<EntityRow> = sqlx::query_as(&sql)
                .bind(&ids)
                .fetch_all(&mut *self.tx)
                .await?;
            for id in ids {
                self.pending.rows.insert((kind, id.to_string()), None);
            }
            for row in found {
                self.pending.rows.insert((kind, row.id.clone()), Some(row));
            }
        }
        Ok(())
    }

    async fn prefetch_live_by(
        &mut self,
        kind: Kind,
        by: RefCol,
        values: &[String],
    ) -> Result<(), sqlx::Error> {
        let todo: Vec<&str> = values
            .iter()
            .filter(|v| !self.pending.live.contains_key(&(kind, by, v.to_string())))
            .map(String::as_str)
            .collect();
        if todo.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "SELECT {COLS} FROM {} WHERE {} = ANY($1) AND deleted = $2 ORDER BY id",
            kind.table(),
            by.column()
        );
        let found: Vec<EntityRow> = sqlx::query_as(&sql)
            .bind(&todo)
            .bind(false)
            .fetch_all(&mut *self.tx)
            .await?;
        for v in todo {
            self.pending
                .live
                .insert((kind, by, v.to_string()), Vec::new());
        }
        for row in found {
            if let Some(v) = by.of(&row) {
                let key = (kind, by, v.to_string());
                if let Some(list) = self.pending.live.get_mut(&key) {
                    list.push(row);
                }
            }
        }
        Ok(())
    }

    async fn get(&mut self, kind: Kind, id: &str) -> Result<Option<EntityRow>, sqlx::Error> {
        let key = (kind, id.to_string());
        if let Some(row) = self.pending.puts.get(&key) {
            return Ok(Some(row.clone()));
        }
        if let Some(row) = self.pending.rows.get(&key) {
            return Ok(row.clone());
        }
        let sql = format!("SELECT {COLS} FROM {} WHERE id = $1", kind.table());
        sqlx::query_as(&sql)
            .bind(id)
            .fetch_optional(&mut *self.tx)
            .await
    }

    /// Kept until commit (one upsert per kind for the whole batch): a round
    /// trip per event was most of a PostgreSQL batch's time. The row's lock is
    /// already held (advisory), so nobody else can write it meanwhile.
    async fn put(&mut self, kind: Kind, r: &EntityRow) -> Result<(), sqlx::Error> {
        self.pending.puts.insert((kind, r.id.clone()), r.clone());
        Ok(())
    }

    async fn live_by(
        &mut self,
        kind: Kind,
        by: RefCol,
        value: &str,
    ) -> Result<Vec<EntityRow>, sqlx::Error> {
        let mut rows: Vec<EntityRow> = match self.pending.live.get(&(kind, by, value.to_string())) {
            Some(rows) => rows.clone(),
            None => {
                let sql = format!(
                    "SELECT {COLS} FROM {} WHERE {} = $1 AND deleted = $2 ORDER BY id",
                    kind.table(),
                    by.column()
                );
                sqlx::query_as(&sql)
                    .bind(value)
                    .bind(false)
                    .fetch_all(&mut *self.tx)
                    .await?
            }
        };
        // The database has not seen this transaction's puts yet: lay them over.
        if self.pending.puts.keys().any(|(k, _)| *k == kind) {
            rows.retain(|r| !self.pending.puts.contains_key(&(kind, r.id.clone())));
            rows.extend(
                self.pending
                    .puts
                    .iter()
                    .filter(|((k, _), r)| *k == kind && !r.deleted && by.of(r) == Some(value))
                    .map(|(_, r)| r.clone()),
            );
            rows.sort_by(|a, b| a.id.cmp(&b.id));
        }
        Ok(rows)
    }

    /// Kept until commit, like `put`: the last list of each user wins.
    async fn replace_contacts(&mut self, user_id: &str, c: &Contacts) -> Result<(), sqlx::Error> {
        self.pending.contacts.insert(user_id.to_string(), c.clone());
        Ok(())
    }

    async fn archive(&mut self, kind: Kind, r: &EntityRow, at: i64) -> Result<(), sqlx::Error> {
        let user = if kind == Kind::User {
            Some(r.id.as_str())
        } else {
            r.user_id.as_deref()
        };
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
        .execute(&mut *self.tx)
        .await
        .map(|_| ())
    }

    async fn audit(&mut self, a: &AuditRow<'_>) -> Result<(), sqlx::Error> {
        self.pending.audit.push(PendingAudit::from(a));
        Ok(())
    }

    async fn feed(&mut self, f: &FeedRow<'_>) -> Result<(), sqlx::Error> {
        self.pending.feed.push(PendingFeed::from(f));
        Ok(())
    }

    async fn inbox_status(&mut self, seq: i64) -> Result<Option<String>, sqlx::Error> {
        if let Some(st) = self.pending.statuses.get(&seq) {
            return Ok(Some(st.clone()));
        }
        // FOR UPDATE: if a lease expired and two workers hold the same event,
        // the second waits here for the first to commit and then sees it done.
        sqlx::query_scalar("SELECT status FROM inbox WHERE seq = $1 FOR UPDATE")
            .bind(seq)
            .fetch_optional(&mut *self.tx)
            .await
    }

    async fn prefetch_statuses(&mut self, seqs: &[i64]) -> Result<(), sqlx::Error> {
        if seqs.is_empty() {
            return Ok(());
        }
        let rows: Vec<(i64, String)> =
            sqlx::query_as("SELECT seq, status FROM inbox WHERE seq = ANY($1) FOR UPDATE")
                .bind(seqs)
                .fetch_all(&mut *self.tx)
                .await?;
        self.pending.statuses.extend(rows);
        Ok(())
    }

    async fn mark_done(&mut self, seq: i64, at: i64, duration_us: i64) -> Result<(), sqlx::Error> {
        self.pending.done.push((seq, at, duration_us));
        self.pending.statuses.insert(seq, "done".into());
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<Vec<(Kind, String)>, sqlx::Error> {
        let pending = std::mem::take(&mut self.pending);
        let mut by_kind: std::collections::BTreeMap<Kind, Vec<&EntityRow>> = Default::default();
        for ((kind, _), row) in &pending.puts {
            by_kind.entry(*kind).or_default().push(row);
        }
        // Each statement binds whole columns as arrays: one text per table
        // whatever the batch size, so a connection prepares it once (one
        // VALUES tuple per row made a new statement for every batch size).
        for (kind, rows) in by_kind {
            sqlx::query(&format!(
                "INSERT INTO {} ({COLS}) SELECT * FROM unnest($1::text[], $2::bigint[], \
                 $3::text[], $4::bool[], $5::text[], $6::text[], $7::text[], $8::bigint[]){ON_CONFLICT_UPDATE}",
                kind.table()
            ))
            .bind(column(&rows, |r| r.id.as_str()))
            .bind(column(&rows, |r| r.version))
            .bind(column(&rows, |r| r.version_key.as_str()))
            .bind(column(&rows, |r| r.deleted))
            .bind(column(&rows, |r| r.user_id.as_deref()))
            .bind(column(&rows, |r| r.organization_id.as_deref()))
            .bind(column(&rows, |r| r.data.as_deref()))
            .bind(column(&rows, |r| r.synced_at))
            .execute(&mut *self.tx)
            .await?;
        }
        write_contacts(&mut self.tx, &pending.contacts).await?;
        if !pending.done.is_empty() {
            sqlx::query(
                "UPDATE inbox SET status = 'done', leased_until = NULL, attempts = attempts + 1, \
                 processed_at = d.at, duration_us = d.us \
                 FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS d(seq, at, us) \
                 WHERE inbox.seq = d.seq",
            )
            .bind(column(&pending.done, |d| d.0))
            .bind(column(&pending.done, |d| d.1))
            .bind(column(&pending.done, |d| d.2))
            .execute(&mut *self.tx)
            .await?;
        }
        let audit = &pending.audit;
        if !audit.is_empty() {
            sqlx::query(
                "INSERT INTO audit (svix_id, kind, entity_id, user_id, operation, changes, version, at) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
                 $6::text[], $7::bigint[], $8::bigint[])",
            )
            .bind(column(audit, |a| a.svix_id.as_str()))
            .bind(column(audit, |a| a.kind.as_str()))
            .bind(column(audit, |a| a.entity_id.as_str()))
            .bind(column(audit, |a| a.user_id.as_deref()))
            .bind(column(audit, |a| a.operation.as_str()))
            .bind(column(audit, |a| a.changes.as_str()))
            .bind(column(audit, |a| a.version))
            .bind(column(audit, |a| a.at))
            .execute(&mut *self.tx)
            .await?;
        }
        let feed = &pending.feed;
        if !feed.is_empty() {
            // A BIGSERIAL is handed out at insert, not at commit: two
            // transactions could commit their feed rows out of sequence
            // order and a consumer that has read past a gap would never
            // see the row that fills it. Holding this lock from the first
            // feed insert to commit makes feed order commit order.
            sqlx::query("SELECT pg_advisory_xact_lock(7161285123001)")
                .execute(&mut *self.tx)
                .await?;
            // unnest yields rows in array order: feed seqs follow the batch.
            sqlx::query(
                "INSERT INTO change_feed (kind, entity_id, operation, changed_fields, version, svix_id, committed_at, user_id, organization_id) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], \
                 $6::text[], $7::bigint[], $8::text[], $9::text[])",
            )
            .bind(column(feed, |f| f.kind.as_str()))
            .bind(column(feed, |f| f.entity_id.as_str()))
            .bind(column(feed, |f| f.operation.as_str()))
            .bind(column(feed, |f| f.changed_fields.as_str()))
            .bind(column(feed, |f| f.version))
            .bind(column(feed, |f| f.svix_id.as_str()))
            .bind(column(feed, |f| f.committed_at))
            .bind(column(feed, |f| f.user_id.as_deref()))
            .bind(column(feed, |f| f.organization_id.as_deref()))
            .execute(&mut *self.tx)
            .await?;
        }
        self.tx.commit().await?;
        Ok(pending
            .feed
            .into_iter()
            .map(|f| (f.kind, f.entity_id))
            .collect())
    }
}

/// PostgreSQL: every advisory lock of a batch in one round trip.
async fn pg_lock_all(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    held: &mut std::collections::HashMap<String, bool>,
    keys: &[(String, bool)],
) -> Result<(), sqlx::Error> {
    let todo: Vec<&(String, bool)> = keys
        .iter()
        .filter(|(k, x)| match held.get(k) {
            Some(exclusive) => *x && !*exclusive,
            None => true,
        })
        .collect();
    if todo.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = todo.iter().map(|(k, _)| k.as_str()).collect();
    let exclusive: Vec<bool> = todo.iter().map(|(_, x)| *x).collect();
    // unnest yields its rows in array order, so the locks are taken in the
    // caller's order.
    sqlx::query(
        "SELECT CASE WHEN x THEN pg_advisory_xact_lock(hashtextextended(k, 0)) \
         ELSE pg_advisory_xact_lock_shared(hashtextextended(k, 0)) END \
         FROM unnest($1::text[], $2::bool[]) AS t(k, x)",
    )
    .bind(&names)
    .bind(&exclusive)
    .execute(&mut **tx)
    .await?;
    for (k, x) in todo {
        held.insert(k.clone(), *x);
    }
    Ok(())
}

// SQLite's transaction is in `store::sqlite`: one writer at a time, so feed
// sequence numbers follow commit order there.
