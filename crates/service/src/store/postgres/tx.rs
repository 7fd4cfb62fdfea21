//! PostgreSQL's apply transaction: advisory locks per entity, rows kept in
//! memory and written at commit, many per statement.
//!
//! Round trips, not rows, are what a batch costs when the database is across
//! a network (each one at least the link's round-trip time), so a batch makes
//! the same few whatever its size: BEGIN; the locks and the inbox statuses;
//! every row it reads; (the contact rows it replaces); every write but the
//! feed's; the feed rows under the feed lock; COMMIT.
//!
//! Must never: take a lock out of the one global order a batch's plan gives
//! (two workers would deadlock), or insert feed rows before taking the feed
//! lock (feed order must be commit order).

use crate::clerk::model::Kind;
use crate::store::tx::{
    column, AuditRow, Contacts, EntityRow, ExternalAccount, FeedRow, Pending, PendingAudit,
    PendingFeed, RefCol, StoreTx, COLS, ON_CONFLICT_UPDATE,
};
use crate::store::StoreError;
use async_trait::async_trait;

pub(crate) struct PgTx {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    pending: Pending,
    /// Archived records, inserted at commit with the other writes.
    archive: Vec<PendingArchive>,
}

/// (kind, entity id, user id, version, data, archived_at)
type PendingArchive = (Kind, String, Option<String>, i64, Option<String>, i64);

impl PgTx {
    pub(crate) async fn begin(pool: &sqlx::PgPool) -> Result<PgTx, StoreError> {
        Ok(PgTx {
            tx: pool.begin().await?,
            pending: Pending::default(),
            archive: Vec::new(),
        })
    }
}

/// A prefetched row and which part of the prefetch statement found it.
#[derive(sqlx::FromRow)]
struct Tagged {
    part: i32,
    #[sqlx(flatten)]
    row: EntityRow,
}

/// One bound parameter of a statement assembled from parts: the parts of a
/// batch's write statement bind columns of several types.
enum Param<'a> {
    Texts(Vec<&'a str>),
    OptTexts(Vec<Option<&'a str>>),
    Ints(Vec<i64>),
    Bools(Vec<bool>),
}

/// A statement assembled from parts, its parameters numbered in order.
#[derive(Default)]
struct Assembled<'a> {
    params: Vec<Param<'a>>,
}

impl<'a> Assembled<'a> {
    /// Adds a parameter; returns its placeholder (`$n`).
    fn bind(&mut self, p: Param<'a>) -> String {
        self.params.push(p);
        format!("${}", self.params.len())
    }

    fn query(
        self,
        sql: &'a str,
    ) -> sqlx::query::Query<'a, sqlx::Postgres, sqlx::postgres::PgArguments> {
        let mut q = sqlx::query(sql);
        for p in self.params {
            q = match p {
                Param::Texts(v) => q.bind(v),
                Param::OptTexts(v) => q.bind(v),
                Param::Ints(v) => q.bind(v),
                Param::Bools(v) => q.bind(v),
            };
        }
        q
    }
}

/// Deletes the contact rows of every user in `contacts` (one statement for the
/// three tables); the new rows are inserted by the batch's write statement
/// ([`contact_inserts`]), which runs after it.
async fn delete_contacts(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    contacts: &std::collections::BTreeMap<String, Contacts>,
) -> Result<(), StoreError> {
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
    Ok(())
}

/// The parts of the write statement that insert the new contact rows.
fn contact_inserts<'a>(
    contacts: &'a std::collections::BTreeMap<String, Contacts>,
    q: &mut Assembled<'a>,
    parts: &mut Vec<String>,
) {
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
        let (a, b, c, d) = (
            q.bind(Param::Texts(column(&rows, |r| r.0))),
            q.bind(Param::Texts(column(&rows, |r| r.1))),
            q.bind(Param::Texts(column(&rows, |r| r.2))),
            q.bind(Param::Bools(column(&rows, |r| r.3))),
        );
        parts.push(format!(
            "INSERT INTO {head} SELECT * FROM unnest({a}::text[], {b}::text[], {c}::text[], {d}::bool[]) \
             ON CONFLICT DO NOTHING"
        ));
    }
    let accounts: Vec<(&str, &ExternalAccount)> = contacts
        .iter()
        .flat_map(|(u, c)| c.external_accounts.iter().map(move |a| (u.as_str(), a)))
        .collect();
    if !accounts.is_empty() {
        let (a, b, c, d) = (
            q.bind(Param::Texts(column(&accounts, |(u, _)| *u))),
            q.bind(Param::Texts(column(&accounts, |(_, a)| a.0.as_str()))),
            q.bind(Param::OptTexts(column(&accounts, |(_, a)| a.1.as_deref()))),
            q.bind(Param::OptTexts(column(&accounts, |(_, a)| a.2.as_deref()))),
        );
        parts.push(format!(
            "INSERT INTO user_external_accounts (user_id, id, provider, email_address) \
             SELECT * FROM unnest({a}::text[], {b}::text[], {c}::text[], {d}::text[]) \
             ON CONFLICT DO NOTHING"
        ));
    }
}

#[async_trait]
impl StoreTx for PgTx {
    async fn lock(&mut self, key: &str) -> Result<(), StoreError> {
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

    async fn lock_shared(&mut self, key: &str) -> Result<(), StoreError> {
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

    async fn lock_all(&mut self, keys: &[(String, bool)]) -> Result<(), StoreError> {
        pg_lock_all(&mut self.tx, &mut self.pending.locks, keys).await
    }

    async fn prefetch(&mut self, keys: &[(Kind, String)]) -> Result<(), StoreError> {
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
    ) -> Result<(), StoreError> {
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

    async fn get(&mut self, kind: Kind, id: &str) -> Result<Option<EntityRow>, StoreError> {
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
            .map_err(StoreError::from)
    }

    /// Kept until commit (one upsert per kind for the whole batch): a round
    /// trip per event was most of a PostgreSQL batch's time. The row's lock is
    /// already held (advisory), so nobody else can write it meanwhile.
    async fn put(&mut self, kind: Kind, r: &EntityRow) -> Result<(), StoreError> {
        self.pending.puts.insert((kind, r.id.clone()), r.clone());
        Ok(())
    }

    async fn live_by(
        &mut self,
        kind: Kind,
        by: RefCol,
        value: &str,
    ) -> Result<Vec<EntityRow>, StoreError> {
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
    async fn replace_contacts(&mut self, user_id: &str, c: &Contacts) -> Result<(), StoreError> {
        self.pending.contacts.insert(user_id.to_string(), c.clone());
        Ok(())
    }

    /// Kept until commit, like `put`: nothing in the transaction reads it back.
    async fn archive(&mut self, kind: Kind, r: &EntityRow, at: i64) -> Result<(), StoreError> {
        let user = if kind == Kind::User {
            Some(r.id.clone())
        } else {
            r.user_id.clone()
        };
        self.archive
            .push((kind, r.id.clone(), user, r.version, r.data.clone(), at));
        Ok(())
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
        // FOR UPDATE: if a lease expired and two workers hold the same event,
        // the second waits here for the first to commit and then sees it done.
        sqlx::query_scalar("SELECT status FROM inbox WHERE seq = $1 FOR UPDATE")
            .bind(seq)
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(StoreError::from)
    }

    async fn prefetch_statuses(&mut self, seqs: &[i64]) -> Result<(), StoreError> {
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

    /// The locks first (the status query's one-time filter runs before it
    /// reads a row), then the inbox rows `FOR UPDATE`: one round trip. The rows
    /// are read at their latest committed version whatever the statement's
    /// snapshot (`FOR UPDATE` in READ COMMITTED), so taking the advisory locks
    /// in the same statement changes nothing they return.
    async fn lock_all_then_statuses(
        &mut self,
        keys: &[(String, bool)],
        seqs: &[i64],
    ) -> Result<(), StoreError> {
        let todo = locks_to_take(&self.pending.locks, keys);
        if todo.is_empty() {
            return self.prefetch_statuses(seqs).await;
        }
        let names: Vec<&str> = todo.iter().map(|(k, _)| k.as_str()).collect();
        let exclusive: Vec<bool> = todo.iter().map(|(_, x)| *x).collect();
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "WITH l AS MATERIALIZED (SELECT count(CASE WHEN x \
               THEN pg_advisory_xact_lock(hashtextextended(k, 0))::text \
               ELSE pg_advisory_xact_lock_shared(hashtextextended(k, 0))::text END) AS n \
               FROM unnest($1::text[], $2::bool[]) AS t(k, x)) \
             SELECT seq, status FROM inbox WHERE seq = ANY($3) AND (SELECT n FROM l) >= 0 \
             FOR UPDATE OF inbox",
        )
        .bind(&names)
        .bind(&exclusive)
        .bind(seqs)
        .fetch_all(&mut *self.tx)
        .await?;
        for (k, x) in todo {
            self.pending.locks.insert(k.clone(), *x);
        }
        self.pending.statuses.extend(rows);
        Ok(())
    }

    /// Every kind's rows and the live rows by `by` in one statement (UNION ALL,
    /// one part per kind): the locks are held, so one snapshot reads them all.
    async fn prefetch_with_live(
        &mut self,
        rows: &[(Kind, String)],
        kind: Kind,
        by: RefCol,
        values: &[String],
    ) -> Result<(), StoreError> {
        let mut by_kind: std::collections::BTreeMap<Kind, Vec<&str>> = Default::default();
        for (k, id) in rows {
            if !self.pending.rows.contains_key(&(*k, id.clone())) {
                by_kind.entry(*k).or_default().push(id);
            }
        }
        let live: Vec<&str> = values
            .iter()
            .filter(|v| !self.pending.live.contains_key(&(kind, by, v.to_string())))
            .map(String::as_str)
            .collect();
        let mut parts: Vec<String> = Vec::new();
        let mut binds: Vec<&Vec<&str>> = Vec::new();
        for (i, (k, ids)) in by_kind.iter().enumerate() {
            parts.push(format!(
                "SELECT {i} AS part, {COLS} FROM {} WHERE id = ANY(${})",
                k.table(),
                i + 1
            ));
            binds.push(ids);
        }
        let live_part = parts.len() as i32;
        if !live.is_empty() {
            parts.push(format!(
                "SELECT {live_part} AS part, {COLS} FROM {} WHERE {} = ANY(${}) AND deleted = FALSE",
                kind.table(),
                by.column(),
                parts.len() + 1
            ));
            binds.push(&live);
        }
        if parts.is_empty() {
            return Ok(());
        }
        let sql = parts.join(" UNION ALL ");
        let mut q = sqlx::query_as::<_, Tagged>(&sql);
        for b in binds {
            q = q.bind(b);
        }
        let found = q.fetch_all(&mut *self.tx).await?;
        let kinds: Vec<Kind> = by_kind.keys().copied().collect();
        for (k, ids) in &by_kind {
            for id in ids {
                self.pending.rows.insert((*k, id.to_string()), None);
            }
        }
        for v in &live {
            self.pending
                .live
                .insert((kind, by, v.to_string()), Vec::new());
        }
        for Tagged { part, row } in found {
            if part == live_part {
                if let Some(list) = by
                    .of(&row)
                    .and_then(|v| self.pending.live.get_mut(&(kind, by, v.to_string())))
                {
                    list.push(row);
                }
            } else if let Some(k) = kinds.get(part as usize) {
                self.pending.rows.insert((*k, row.id.clone()), Some(row));
            }
        }
        // As `live_by` answers: by id.
        for v in &live {
            if let Some(list) = self.pending.live.get_mut(&(kind, by, v.to_string())) {
                list.sort_by(|a, b| a.id.cmp(&b.id));
            }
        }
        Ok(())
    }

    async fn mark_done(&mut self, seq: i64, at: i64, duration_us: i64) -> Result<(), StoreError> {
        self.pending.done.push((seq, at, duration_us));
        self.pending.statuses.insert(seq, "done".into());
        Ok(())
    }

    /// Three round trips whatever the batch wrote (four when contact rows
    /// change): every row but the feed's in one statement of writable CTEs,
    /// the feed rows under the feed lock, COMMIT. The write statement's parts
    /// touch different rows (one upsert per table, each entity once), so the
    /// order PostgreSQL runs them in does not matter.
    async fn commit(mut self: Box<Self>) -> Result<Vec<(Kind, String)>, StoreError> {
        let pending = std::mem::take(&mut self.pending);
        let archive = std::mem::take(&mut self.archive);
        // Before the write statement, which inserts the new rows.
        delete_contacts(&mut self.tx, &pending.contacts).await?;
        let mut by_kind: std::collections::BTreeMap<Kind, Vec<&EntityRow>> = Default::default();
        for ((kind, _), row) in &pending.puts {
            by_kind.entry(*kind).or_default().push(row);
        }
        let mut q = Assembled::default();
        let mut parts: Vec<String> = Vec::new();
        // Each part binds whole columns as arrays: one text per combination of
        // parts whatever the batch size, so a connection prepares it once.
        for (kind, rows) in &by_kind {
            let c = [
                q.bind(Param::Texts(column(rows, |r| r.id.as_str()))),
                q.bind(Param::Ints(column(rows, |r| r.version))),
                q.bind(Param::Texts(column(rows, |r| r.version_key.as_str()))),
                q.bind(Param::Bools(column(rows, |r| r.deleted))),
                q.bind(Param::OptTexts(column(rows, |r| r.user_id.as_deref()))),
                q.bind(Param::OptTexts(column(rows, |r| {
                    r.organization_id.as_deref()
                }))),
                q.bind(Param::OptTexts(column(rows, |r| r.data.as_deref()))),
                q.bind(Param::Ints(column(rows, |r| r.synced_at))),
            ];
            parts.push(format!(
                "INSERT INTO {} ({COLS}) SELECT * FROM unnest({}::text[], {}::bigint[], \
                 {}::text[], {}::bool[], {}::text[], {}::text[], {}::text[], {}::bigint[]){ON_CONFLICT_UPDATE}",
                kind.table(),
                c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]
            ));
        }
        contact_inserts(&pending.contacts, &mut q, &mut parts);
        if !archive.is_empty() {
            let c = [
                q.bind(Param::Texts(column(&archive, |a| a.0.as_str()))),
                q.bind(Param::Texts(column(&archive, |a| a.1.as_str()))),
                q.bind(Param::OptTexts(column(&archive, |a| a.2.as_deref()))),
                q.bind(Param::Ints(column(&archive, |a| a.3))),
                q.bind(Param::OptTexts(column(&archive, |a| a.4.as_deref()))),
                q.bind(Param::Ints(column(&archive, |a| a.5))),
            ];
            parts.push(format!(
                "INSERT INTO archive (kind, entity_id, user_id, version, data, archived_at) \
                 SELECT * FROM unnest({}::text[], {}::text[], {}::text[], {}::bigint[], \
                 {}::text[], {}::bigint[])",
                c[0], c[1], c[2], c[3], c[4], c[5]
            ));
        }
        if !pending.done.is_empty() {
            let c = [
                q.bind(Param::Ints(column(&pending.done, |d| d.0))),
                q.bind(Param::Ints(column(&pending.done, |d| d.1))),
                q.bind(Param::Ints(column(&pending.done, |d| d.2))),
            ];
            parts.push(format!(
                "UPDATE inbox SET status = 'done', leased_until = NULL, attempts = attempts + 1, \
                 processed_at = d.at, duration_us = d.us \
                 FROM unnest({}::bigint[], {}::bigint[], {}::bigint[]) AS d(seq, at, us) \
                 WHERE inbox.seq = d.seq",
                c[0], c[1], c[2]
            ));
        }
        let audit = &pending.audit;
        if !audit.is_empty() {
            let c = [
                q.bind(Param::Texts(column(audit, |a| a.svix_id.as_str()))),
                q.bind(Param::Texts(column(audit, |a| a.kind.as_str()))),
                q.bind(Param::Texts(column(audit, |a| a.entity_id.as_str()))),
                q.bind(Param::OptTexts(column(audit, |a| a.user_id.as_deref()))),
                q.bind(Param::Texts(column(audit, |a| a.operation.as_str()))),
                q.bind(Param::Texts(column(audit, |a| a.changes.as_str()))),
                q.bind(Param::Ints(column(audit, |a| a.version))),
                q.bind(Param::Ints(column(audit, |a| a.at))),
            ];
            // unnest yields rows in array order: audit seqs follow the batch.
            parts.push(format!(
                "INSERT INTO audit (svix_id, kind, entity_id, user_id, operation, changes, version, at) \
                 SELECT * FROM unnest({}::text[], {}::text[], {}::text[], {}::text[], {}::text[], \
                 {}::text[], {}::bigint[], {}::bigint[])",
                c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]
            ));
        }
        if !parts.is_empty() {
            let ctes: Vec<String> = parts
                .iter()
                .enumerate()
                .map(|(i, p)| format!("w{i} AS ({p})"))
                .collect();
            let sql = format!("WITH {} SELECT 1", ctes.join(", "));
            q.query(&sql).execute(&mut *self.tx).await?;
        }
        let feed = &pending.feed;
        if !feed.is_empty() {
            // A BIGSERIAL is handed out at insert, not at commit: two
            // transactions could commit their feed rows out of sequence
            // order and a consumer that has read past a gap would never
            // see the row that fills it. Holding this lock from the first
            // feed insert to commit makes feed order commit order. The lock
            // is taken in the insert's own statement (the materialized CTE
            // yields its row before the insert draws its first seq), so it is
            // held for this round trip and COMMIT's.
            // unnest yields rows in array order: feed seqs follow the batch.
            sqlx::query(
                "WITH l AS MATERIALIZED (SELECT pg_advisory_xact_lock(7161285123001)) \
                 INSERT INTO change_feed (kind, entity_id, operation, changed_fields, version, svix_id, committed_at, user_id, organization_id) \
                 SELECT t.* FROM l, unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], \
                 $6::text[], $7::bigint[], $8::text[], $9::text[]) AS t",
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

/// The keys of `keys` not yet held as strongly as asked, in the caller's order.
fn locks_to_take<'k>(
    held: &std::collections::HashMap<String, bool>,
    keys: &'k [(String, bool)],
) -> Vec<&'k (String, bool)> {
    keys.iter()
        .filter(|(k, x)| match held.get(k) {
            Some(exclusive) => *x && !*exclusive,
            None => true,
        })
        .collect()
}

/// PostgreSQL: every advisory lock of a batch in one round trip.
async fn pg_lock_all(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    held: &mut std::collections::HashMap<String, bool>,
    keys: &[(String, bool)],
) -> Result<(), StoreError> {
    let todo = locks_to_take(held, keys);
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
