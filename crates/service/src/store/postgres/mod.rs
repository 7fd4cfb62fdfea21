//! The PostgreSQL backend: several nodes side by side on one database.
//!
//! Owns: the PostgreSQL pool, its SQL for every store trait, and its write
//! discipline: concurrent transactions, advisory locks per entity taken in one
//! global order (`tx`), `FOR UPDATE SKIP LOCKED` claims so nodes do not wait on
//! each other, and fresh planner statistics. Must never: rely on being the only
//! writer (another node may hold any row), or hand out a `sqlx` type outside
//! the store.

mod backfill;
mod lease;
mod purge;
mod tx;

use crate::clerk::model::Kind;
use crate::config::redact_url;
use crate::store::body;
use crate::store::db::{Database, DbError};
use crate::store::events::{EventFilter, EventRecord, EVENT_FIELDS};
use crate::store::feed::{entries, FeedEntry, FeedFilter, StoredFeedRow};
use crate::store::inbox::{
    delivery_columns, log_page, ApplyStrategy, Delivery, LogRow, NewDelivery, StatusCounts,
    OPEN_COUNTS,
};
use crate::store::maintenance::{bodies_to_expire, BodyExpiry, PurgeReport, Redaction};
use crate::store::read::AuditEntry;
use crate::store::tx::{column, EntityRow, RefCol, StoreTx, COLS};
use crate::store::{
    ApplyStore, EntityStore, EventStore, FeedStore, InboxStore, MaintenanceStore, Result,
    StoreError,
};
use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::str::FromStr;
use std::time::Duration;

/// The backend, borrowed from a [`Database`] for one call.
pub(crate) struct Postgres<'a> {
    pub pool: &'a PgPool,
}

/// Connects, checks the server says yes to this database and schema, and migrates.
pub(crate) async fn open(u: &str) -> Result<Database, DbError> {
    let opts = PgConnectOptions::from_str(u).map_err(|source| DbError::Open {
        url: redact_url(u),
        source,
    })?;
    check_postgres(&opts, u).await?;
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(10))
        // sqlx pings every connection it hands out by default: a round trip
        // before every transaction and claim (a millisecond each across a
        // network). Only a connection idle long enough for the server or a
        // middlebox to have dropped it is checked; a connection that broke
        // while busy fails its statement, and the batch is retried.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IDLE_AFTER {
                    use sqlx::Connection;
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .connect_with(opts)
        .await
        .map_err(|source| DbError::Open {
            url: redact_url(u),
            source,
        })?;
    crate::store::migrations::postgres().run(&pool).await?;
    Ok(Database::Postgres(pool))
}

/// A pooled connection idle at least this long is pinged before it is used.
const PING_IDLE_AFTER: Duration = Duration::from_secs(10);

/// How long one first connection to PostgreSQL may take before start-up gives up.
const PG_CONNECT_SECS: u64 = 10;

/// One connection before the pool: the pool retries a failed connect until its
/// acquire timeout and then only says "pool timed out", where a single attempt
/// tells a refused port at once, and which database or schema is missing.
async fn check_postgres(opts: &PgConnectOptions, url: &str) -> Result<(), DbError> {
    use sqlx::{ConnectOptions, Connection};
    let addr = format!("{}:{}", opts.get_host(), opts.get_port());
    let name = opts
        .get_database()
        .unwrap_or(opts.get_username())
        .to_string();
    let timeout = Duration::from_secs(PG_CONNECT_SECS);
    let mut conn = match tokio::time::timeout(timeout, opts.connect()).await {
        Err(_) => {
            return Err(DbError::PgTimeout {
                addr,
                secs: PG_CONNECT_SECS,
            })
        }
        Ok(Ok(c)) => c,
        Ok(Err(sqlx::Error::Io(e))) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Err(DbError::PgRefused { addr })
        }
        Ok(Err(sqlx::Error::Database(e))) if e.code().as_deref() == Some("3D000") => {
            return Err(DbError::PgNoDatabase { name, addr })
        }
        Ok(Err(source)) => {
            return Err(DbError::Open {
                url: redact_url(url),
                source,
            })
        }
    };
    // With no schema on the search_path that exists, every CREATE fails with "no
    // schema has been selected to create in": say which path, once.
    let schema: Result<(Option<String>, String), sqlx::Error> = async {
        let current = sqlx::query_scalar("SELECT current_schema()")
            .fetch_one(&mut conn)
            .await?;
        let path = sqlx::query_scalar("SHOW search_path")
            .fetch_one(&mut conn)
            .await?;
        Ok((current, path))
    }
    .await;
    let _ = conn.close().await;
    match schema {
        Ok((None, search_path)) => {
            // The schema named on the path, leaving out the default "$user".
            let named: Vec<&str> = search_path
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty() && *s != "\"$user\"")
                .collect();
            let schema = match named.as_slice() {
                [one] => one.to_string(),
                _ => "...".to_string(),
            };
            Err(DbError::PgNoSchema {
                search_path,
                name,
                schema,
            })
        }
        Ok(_) => Ok(()),
        Err(source) => Err(DbError::Open {
            url: redact_url(url),
            source,
        }),
    }
}

/// PostgreSQL: a batch of deliveries as one row per array element. unnest
/// yields rows in array order, so seqs follow the order of the batch.
const INSERT_UNNEST: &str = "INSERT INTO inbox (svix_id, event_type, entity_key, object_id, \
     svix_timestamp, event_timestamp, received_at, next_attempt_at, user_id) \
     SELECT i, t, k, o, st, et, r, r, u FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], \
     $5::bigint[], $6::bigint[], $7::bigint[], $8::text[]) AS d(i, t, k, o, st, et, r, u) \
     ON CONFLICT (svix_id) DO NOTHING RETURNING seq, svix_id";

/// A stored body as bytes: the zstd frame, else the plain text of an older row.
const BODY: &str = "COALESCE(b.body_zstd, convert_to(b.body, 'UTF8'))";
const DELIVERY: &str = delivery_columns!("COALESCE(b.body_zstd, convert_to(b.body, 'UTF8'))");
const LOG_PAGE: &str = log_page!("COALESCE(b.body_zstd, convert_to(b.body, 'UTF8'))");

/// The `body` column (bytes, or NULL) as a body ([`body::decode`]).
fn body_of(r: &sqlx::postgres::PgRow) -> std::result::Result<String, sqlx::Error> {
    use sqlx::Row;
    Ok(body::decode(
        r.try_get::<Option<Vec<u8>>, _>("body")?.as_deref(),
    ))
}

impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for Delivery {
    fn from_row(r: &'r sqlx::postgres::PgRow) -> std::result::Result<Self, sqlx::Error> {
        use sqlx::Row;
        Ok(Delivery {
            seq: r.try_get("seq")?,
            svix_id: r.try_get("svix_id")?,
            event_type: r.try_get("event_type")?,
            entity_key: r.try_get("entity_key")?,
            svix_timestamp: r.try_get("svix_timestamp")?,
            event_timestamp: r.try_get("event_timestamp")?,
            received_at: r.try_get("received_at")?,
            body: body_of(r)?,
            attempts: r.try_get("attempts")?,
        })
    }
}

impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for LogRow {
    fn from_row(r: &'r sqlx::postgres::PgRow) -> std::result::Result<Self, sqlx::Error> {
        use sqlx::Row;
        Ok(LogRow {
            seq: r.try_get("seq")?,
            svix_id: r.try_get("svix_id")?,
            event_type: r.try_get("event_type")?,
            entity_key: r.try_get("entity_key")?,
            object_id: r.try_get("object_id")?,
            svix_timestamp: r.try_get("svix_timestamp")?,
            event_timestamp: r.try_get("event_timestamp")?,
            received_at: r.try_get("received_at")?,
            body: body_of(r)?,
        })
    }
}

#[async_trait]
impl InboxStore for Postgres<'_> {
    async fn append(&self, rows: &[NewDelivery], bodies: &[Vec<u8>]) -> Result<Vec<bool>> {
        // Whole columns as arrays: one statement text whatever the batch
        // size, so each connection prepares it once. Rows built with one
        // VALUES tuple per delivery were a new statement for every batch
        // size, parsed and planned again whenever sqlx's cache evicted it.
        let mut inserted = std::collections::HashSet::new();
        let mut tx = self.pool.begin().await?;
        let new: Vec<(i64, String)> = sqlx::query_as(INSERT_UNNEST)
            .bind(column(rows, |r| r.svix_id.as_str()))
            .bind(column(rows, |r| r.event_type.as_str()))
            .bind(column(rows, |r| r.entity_key.as_deref()))
            .bind(column(rows, |r| r.object_id.as_deref()))
            .bind(column(rows, |r| r.svix_timestamp))
            .bind(column(rows, |r| r.event_timestamp_ms))
            .bind(column(rows, |r| r.received_at_ms))
            .bind(column(rows, |r| r.user_id.as_deref()))
            .fetch_all(&mut *tx)
            .await?;
        if !new.is_empty() {
            // Ids are distinct within `rows`, so each new seq has one body.
            let by_id: std::collections::HashMap<&str, (&NewDelivery, &[u8])> = rows
                .iter()
                .zip(bodies)
                .map(|(r, b)| (r.svix_id.as_str(), (r, b.as_slice())))
                .collect();
            let seqs: Vec<i64> = new.iter().map(|(seq, _)| *seq).collect();
            let bodies: Vec<&[u8]> = new.iter().map(|(_, id)| by_id[id.as_str()].1).collect();
            let (mut contact_seqs, mut contacts) = (Vec::new(), Vec::new());
            for (seq, id) in &new {
                for c in &by_id[id.as_str()].0.contacts {
                    contact_seqs.push(*seq);
                    contacts.push(c.as_str());
                }
            }
            if !contacts.is_empty() {
                sqlx::query(
                    "INSERT INTO inbox_contacts (contact, seq) \
                     SELECT * FROM unnest($1::text[], $2::bigint[]) ON CONFLICT DO NOTHING",
                )
                .bind(&contacts)
                .bind(&contact_seqs)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query(
                "INSERT INTO inbox_bodies (seq, body, body_zstd) \
                 SELECT seq, '', z FROM unnest($1::bigint[], $2::bytea[]) AS t (seq, z)",
            )
            .bind(&seqs)
            .bind(&bodies)
            .execute(&mut *tx)
            .await?;
            inserted.extend(new.into_iter().map(|(_, id)| id));
        }
        // A PostgreSQL commit is durable when it returns.
        tx.commit().await?;
        Ok(rows.iter().map(|r| inserted.contains(&r.svix_id)).collect())
    }

    async fn claim(&self, now: i64, lease_until: i64, limit: i64) -> Result<Vec<Delivery>> {
        // SKIP LOCKED: several nodes claim side by side without waiting on each other.
        let sql = format!(
            "UPDATE inbox SET leased_until = $1 WHERE seq IN (\
               SELECT seq FROM inbox WHERE status IN ('pending', 'failed') AND next_attempt_at <= $2 \
               AND (leased_until IS NULL OR leased_until < $2) ORDER BY seq LIMIT $3 \
               FOR UPDATE SKIP LOCKED) RETURNING {DELIVERY}"
        );
        Ok(sqlx::query_as(&sql)
            .bind(lease_until)
            .bind(now)
            .bind(limit)
            .fetch_all(self.pool)
            .await?)
    }

    async fn due(&self, now: i64, skip: &[i64], limit: i64) -> Result<Vec<Delivery>> {
        let sql = format!(
            "SELECT {DELIVERY} FROM inbox WHERE status IN ('pending', 'failed') AND next_attempt_at <= $1 \
             AND (leased_until IS NULL OR leased_until < $1) AND NOT (seq = ANY($2)) \
             ORDER BY seq LIMIT $3"
        );
        Ok(sqlx::query_as(&sql)
            .bind(now)
            .bind(skip)
            .bind(limit)
            .fetch_all(self.pool)
            .await?)
    }

    async fn release(&self, seqs: &[i64]) -> Result<()> {
        sqlx::query(
            "UPDATE inbox SET leased_until = NULL WHERE seq = ANY($1) AND status <> 'done'",
        )
        .bind(seqs)
        .execute(self.pool)
        .await?;
        Ok(())
    }

    async fn mark_failed(
        &self,
        seq: i64,
        error: &str,
        dead: bool,
        next_attempt_at: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE inbox SET status = $2, attempts = attempts + 1, last_error = $3, \
             next_attempt_at = $4, leased_until = NULL WHERE seq = $1 AND status <> 'done'",
        )
        .bind(seq)
        .bind(if dead { "dead" } else { "failed" })
        .bind(error)
        .bind(next_attempt_at)
        .execute(self.pool)
        .await?;
        Ok(())
    }

    async fn counts(&self) -> Result<StatusCounts> {
        let open: Vec<(String, i64)> = sqlx::query_as(OPEN_COUNTS).fetch_all(self.pool).await?;
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM inbox")
            .fetch_one(self.pool)
            .await?;
        Ok(StatusCounts::from_open(open, total))
    }

    async fn anything_due(&self) -> Result<bool> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM inbox WHERE status IN ('pending', 'failed'))",
        )
        .fetch_one(self.pool)
        .await?)
    }

    async fn oldest_pending_received_at(&self) -> Result<Option<i64>> {
        // By seq, so the inbox's (status, seq) index answers without scanning a backlog.
        Ok(sqlx::query_scalar(
            "SELECT received_at FROM inbox WHERE status = 'pending' ORDER BY seq LIMIT 1",
        )
        .fetch_optional(self.pool)
        .await?)
    }

    async fn requeue_since(&self, since_ms: i64) -> Result<u64> {
        Ok(sqlx::query(
            "UPDATE inbox SET status = 'pending', next_attempt_at = 0, leased_until = NULL \
             WHERE received_at >= $1 AND status = 'done' \
             AND EXISTS (SELECT 1 FROM inbox_bodies b WHERE b.seq = inbox.seq)",
        )
        .bind(since_ms)
        .execute(self.pool)
        .await?
        .rows_affected())
    }

    async fn len(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM inbox")
            .fetch_one(self.pool)
            .await?)
    }

    async fn log_page(&self, after: i64, limit: i64) -> Result<Vec<LogRow>> {
        Ok(sqlx::query_as(LOG_PAGE)
            .bind(after)
            .bind(limit)
            .fetch_all(self.pool)
            .await?)
    }
}

#[async_trait]
impl EventStore for Postgres<'_> {
    async fn list(&self, f: &EventFilter, before_seq: i64, limit: i64) -> Result<Vec<EventRecord>> {
        // Absent filters bind as NULL and match everything: one statement.
        let sql = format!(
            "SELECT {EVENT_FIELDS} FROM inbox WHERE ($1::text IS NULL OR status = $1) \
             AND ($2::text IS NULL OR event_type = $2) AND ($3::text IS NULL OR entity_key = $3) \
             AND ($4::bigint IS NULL OR received_at >= $4) AND ($5::bigint IS NULL OR received_at < $5) \
             AND seq < $6 ORDER BY seq DESC LIMIT $7"
        );
        Ok(sqlx::query_as(&sql)
            .bind(f.status.as_deref())
            .bind(f.event_type.as_deref())
            .bind(f.entity.as_deref())
            .bind(f.since)
            .bind(f.until)
            .bind(before_seq)
            .bind(limit)
            .fetch_all(self.pool)
            .await?)
    }

    async fn show(&self, svix_id: &str) -> Result<Option<(EventRecord, String)>> {
        let sql = format!("SELECT {EVENT_FIELDS} FROM inbox WHERE svix_id = $1");
        let rec: Option<EventRecord> = sqlx::query_as(&sql)
            .bind(svix_id)
            .fetch_optional(self.pool)
            .await?;
        let Some(rec) = rec else { return Ok(None) };
        // A body past the raw-body retention reads as empty: the row's metadata stays.
        let stored: Option<Vec<u8>> = sqlx::query_scalar(&format!(
            "SELECT {BODY} FROM inbox_bodies b WHERE b.seq = $1"
        ))
        .bind(rec.seq)
        .fetch_optional(self.pool)
        .await?;
        Ok(Some((rec, body::decode(stored.as_deref()))))
    }

    async fn update_event(&self, sql: &'static str, svix_id: &str) -> Result<u64> {
        Ok(sqlx::query(sql)
            .bind(svix_id)
            .execute(self.pool)
            .await?
            .rows_affected())
    }

    async fn event_status(&self, svix_id: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT status FROM inbox WHERE svix_id = $1")
                .bind(svix_id)
                .fetch_optional(self.pool)
                .await?,
        )
    }

    async fn retry_all_dead(&self) -> Result<u64> {
        Ok(sqlx::query(
            "UPDATE inbox SET status = 'pending', next_attempt_at = 0, leased_until = NULL \
             WHERE status = 'dead'",
        )
        .execute(self.pool)
        .await?
        .rows_affected())
    }
}

#[async_trait]
impl ApplyStore for Postgres<'_> {
    fn strategy(&self) -> ApplyStrategy {
        ApplyStrategy {
            in_place_when_single: false,
            lock_entities: true,
            synchronous: false,
        }
    }

    async fn begin(&self) -> Result<Box<dyn StoreTx>> {
        Ok(Box::new(tx::PgTx::begin(self.pool).await?))
    }
}

#[async_trait]
impl FeedStore for Postgres<'_> {
    async fn read_feed(
        &self,
        filter: FeedFilter<'_>,
        after: i64,
        limit: i64,
    ) -> Result<Vec<FeedEntry>> {
        let q = sqlx::query_as(filter.read_sql());
        let q = match filter.key() {
            None => q,
            Some(k) => q.bind(k),
        };
        let rows: Vec<StoredFeedRow> = q.bind(after).bind(limit).fetch_all(self.pool).await?;
        Ok(entries(rows))
    }

    async fn count_feed(&self, filter: FeedFilter<'_>, after: i64, cap: i64) -> Result<i64> {
        let q = sqlx::query_scalar::<_, i64>(filter.count_sql());
        let q = match filter.key() {
            None => q,
            Some(k) => q.bind(k),
        };
        Ok(q.bind(after).bind(cap).fetch_one(self.pool).await?)
    }

    async fn last_feed_seq(&self) -> Result<i64> {
        let v: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM change_feed")
            .fetch_one(self.pool)
            .await?;
        Ok(v.unwrap_or(0))
    }

    async fn oldest_feed_seq(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT COALESCE(MIN(seq), 0) FROM change_feed")
                .fetch_one(self.pool)
                .await?,
        )
    }

    async fn min_checkpoint(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT COALESCE(MIN(seq), 0) FROM feed_checkpoints")
                .fetch_one(self.pool)
                .await?,
        )
    }

    async fn load_checkpoint(&self, consumer: &str) -> Result<Option<i64>> {
        Ok(
            sqlx::query_scalar("SELECT seq FROM feed_checkpoints WHERE consumer = $1")
                .bind(consumer)
                .fetch_optional(self.pool)
                .await?,
        )
    }

    async fn register_consumer(&self, consumer: &str, now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO feed_checkpoints (consumer, seq, updated_at) VALUES ($1, 0, $2) \
             ON CONFLICT (consumer) DO NOTHING",
        )
        .bind(consumer)
        .bind(now)
        .execute(self.pool)
        .await?;
        Ok(())
    }

    async fn save_checkpoint(&self, consumer: &str, seq: i64, now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO feed_checkpoints (consumer, seq, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (consumer) DO UPDATE SET seq = excluded.seq, updated_at = excluded.updated_at",
        )
        .bind(consumer)
        .bind(seq)
        .bind(now)
        .execute(self.pool)
        .await?;
        Ok(())
    }

    async fn delete_feed(&self, from: i64, to: i64, cutoff_ms: i64) -> Result<u64> {
        Ok(sqlx::query(
            "DELETE FROM change_feed WHERE seq >= $1 AND seq <= $2 AND committed_at < $3",
        )
        .bind(from)
        .bind(to)
        .bind(cutoff_ms)
        .execute(self.pool)
        .await?
        .rows_affected())
    }
}

#[async_trait]
impl EntityStore for Postgres<'_> {
    async fn get(&self, kind: Kind, id: &str) -> Result<Option<EntityRow>> {
        let sql = format!("SELECT {COLS} FROM {} WHERE id = $1", kind.table());
        Ok(sqlx::query_as(&sql)
            .bind(id)
            .fetch_optional(self.pool)
            .await?)
    }

    async fn get_many(&self, kind: Kind, ids: &[&str]) -> Result<Vec<EntityRow>> {
        let sql = format!("SELECT {COLS} FROM {} WHERE id = ANY($1)", kind.table());
        Ok(sqlx::query_as(&sql).bind(ids).fetch_all(self.pool).await?)
    }

    async fn list_live(
        &self,
        kind: Kind,
        filter: Option<(RefCol, &str)>,
        after: &str,
        limit: i64,
    ) -> Result<Vec<EntityRow>> {
        let table = kind.table();
        let rows = match filter {
            Some((by, value)) => {
                let sql = format!(
                    "SELECT {COLS} FROM {table} WHERE deleted = FALSE AND id > $1 AND {} = $3 \
                     ORDER BY id LIMIT $2",
                    by.column()
                );
                sqlx::query_as(&sql)
                    .bind(after)
                    .bind(limit)
                    .bind(value)
                    .fetch_all(self.pool)
                    .await?
            }
            None => {
                let sql = format!(
                    "SELECT {COLS} FROM {table} WHERE deleted = FALSE AND id > $1 ORDER BY id LIMIT $2"
                );
                sqlx::query_as(&sql)
                    .bind(after)
                    .bind(limit)
                    .fetch_all(self.pool)
                    .await?
            }
        };
        Ok(rows)
    }

    async fn audit(&self, entity_id: &str, after: i64, limit: i64) -> Result<Vec<AuditEntry>> {
        Ok(sqlx::query_as(
            "SELECT seq, svix_id, kind, entity_id, operation, changes, version, at FROM audit \
             WHERE entity_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(entity_id)
        .bind(after)
        .bind(limit)
        .fetch_all(self.pool)
        .await?)
    }
}

#[async_trait]
impl MaintenanceStore for Postgres<'_> {
    async fn purge_expired(&self, cutoff_ms: i64, redact: &Redaction) -> Result<PurgeReport> {
        purge::purge(self.pool, cutoff_ms, redact).await
    }

    async fn expire_bodies(&self, after: i64, cutoff_ms: i64, limit: i64) -> Result<BodyExpiry> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<(i64, i64, String)> = sqlx::query_as(
            "SELECT seq, received_at, status FROM inbox \
             WHERE seq > GREATEST($1, COALESCE((SELECT MIN(seq) FROM inbox_bodies), 0) - 1) \
             ORDER BY seq LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let (seqs, mut report) = bodies_to_expire(&rows, after, cutoff_ms, limit);
        if !seqs.is_empty() {
            report.deleted = sqlx::query("DELETE FROM inbox_bodies WHERE seq = ANY($1)")
                .bind(&seqs)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        Ok(report)
    }

    /// PostgreSQL keeps old row versions until VACUUM reclaims them
    /// (autovacuum does; run `VACUUM` to be sure at once).
    async fn scrub_after_erasure(&self) -> Result<bool> {
        Ok(true)
    }

    async fn refresh_statistics(&self) -> Result<()> {
        analyze_grown_tables(self.pool).await?;
        Ok(())
    }

    async fn keep_statistics_fresh(&self, cancel: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(STATS_EVERY) => {}
                _ = cancel.cancelled() => return,
            }
            if let Err(e) = analyze_grown_tables(self.pool).await {
                tracing::debug!(error = %e, "refreshing planner statistics failed");
            }
        }
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(self.pool).await?;
        Ok(())
    }

    fn pool_stats(&self) -> (u32, usize) {
        (self.pool.size(), self.pool.num_idle())
    }

    async fn close(&self) {
        self.pool.close().await
    }
}

/// How often [`MaintenanceStore::keep_statistics_fresh`] looks at the tables.
///
/// PostgreSQL plans statements from table statistics, and autovacuum refreshes
/// them about once a minute: a service (or a replay) starting on empty tables
/// runs its first minute on plans made for empty tables, which scan whole tables
/// (measured: a replay of 100k events went from 1,600 to 3,500 events/s with
/// fresh statistics). Every few seconds the loop analyzes the tables that have
/// changed as many rows as they hold (a table that grew from empty, or doubled),
/// so it costs nothing once the tables are large.
const STATS_EVERY: Duration = Duration::from_secs(5);

/// Analyzes this schema's tables that changed as many rows as they hold since their
/// last analyze; returns their names.
pub async fn analyze_grown_tables(pool: &PgPool) -> Result<Vec<String>, StoreError> {
    let grown: Vec<String> = sqlx::query_scalar(
        "SELECT relname::text FROM pg_stat_user_tables \
         WHERE schemaname = current_schema() AND n_mod_since_analyze >= GREATEST(500, n_live_tup) \
         ORDER BY relname",
    )
    .fetch_all(pool)
    .await?;
    for t in &grown {
        // Names come from the catalog; quoted all the same.
        sqlx::query(&format!("ANALYZE \"{}\"", t.replace('"', "\"\"")))
            .execute(pool)
            .await?;
    }
    Ok(grown)
}
