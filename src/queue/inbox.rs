//! Inbox rows: the append path used by ingress.

use crate::store::db::Database;
use sqlx::QueryBuilder;

/// A verified delivery about to be stored.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub svix_id: String,
    pub svix_timestamp: i64,
    pub event_type: String,
    pub entity_key: Option<String>,
    pub object_id: Option<String>,
    pub event_timestamp_ms: Option<i64>,
    pub received_at_ms: i64,
    pub body: String,
}

/// Stays well under PostgreSQL's bound-parameter limit (65,535; 8 columns per row).
pub const MAX_ROWS_PER_STATEMENT: usize = 1000;

const INSERT_HEAD: &str = "INSERT INTO inbox (svix_id, event_type, entity_key, object_id, \
     svix_timestamp, event_timestamp, received_at, next_attempt_at) ";

/// Appends deliveries whose svix-ids are distinct, in one transaction; returns,
/// for each row, whether it was new (false: that svix-id was already stored).
pub async fn append_batch(db: &Database, rows: &[NewDelivery]) -> Result<Vec<bool>, sqlx::Error> {
    let mut inserted = std::collections::HashSet::new();
    let mut gate = db.write_lock().await;
    match db {
        Database::Sqlite(..) => {
            let conn = gate
                .as_mut()
                .expect("a SQLite database always has a write gate")
                .conn();
            let flags = crate::store::sqlite::blocking(|| crate::store::sqlite::append(conn, rows))
                .map_err(crate::store::sqlite::db_err)?;
            // Durable before anyone is answered; the fsync waits without the gate.
            drop(gate);
            db.sync()?;
            return Ok(flags);
        }
        Database::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            for chunk in rows.chunks(MAX_ROWS_PER_STATEMENT) {
                let mut qb = QueryBuilder::<sqlx::Postgres>::new(INSERT_HEAD);
                qb.push_values(chunk, |mut b, r| {
                    b.push_bind(&r.svix_id)
                        .push_bind(&r.event_type)
                        .push_bind(&r.entity_key)
                        .push_bind(&r.object_id)
                        .push_bind(r.svix_timestamp)
                        .push_bind(r.event_timestamp_ms)
                        .push_bind(r.received_at_ms)
                        .push_bind(r.received_at_ms);
                });
                qb.push(" ON CONFLICT (svix_id) DO NOTHING RETURNING seq, svix_id");
                let new: Vec<(i64, String)> = qb.build_query_as().fetch_all(&mut *tx).await?;
                if new.is_empty() {
                    continue;
                }
                // Ids are distinct within `rows`, so each new seq has one body.
                let by_id: std::collections::HashMap<&str, &str> = chunk
                    .iter()
                    .map(|r| (r.svix_id.as_str(), r.body.as_str()))
                    .collect();
                let mut qb =
                    QueryBuilder::<sqlx::Postgres>::new("INSERT INTO inbox_bodies (seq, body) ");
                qb.push_values(&new, |mut b, (seq, id)| {
                    b.push_bind(*seq).push_bind(by_id[id.as_str()]);
                });
                qb.build().execute(&mut *tx).await?;
                inserted.extend(new.into_iter().map(|(_, id)| id));
            }
            tx.commit().await?;
        }
    }
    Ok(rows.iter().map(|r| inserted.contains(&r.svix_id)).collect())
}
