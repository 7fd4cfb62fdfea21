//! Inbox rows: the append path used by ingress.

use crate::store::db::Database;
use crate::store::tx::column;

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
    /// The user the delivery concerns ([`crate::clerk::envelope::EnvelopeHead::user_id`]).
    pub user_id: Option<String>,
    /// Its email addresses and phone numbers, normalized; indexed in
    /// `inbox_contacts` so erasure finds the delivery by them.
    pub contacts: Vec<String>,
}

/// PostgreSQL: a batch of deliveries as one row per array element. unnest
/// yields rows in array order, so seqs follow the order of the batch.
const INSERT_UNNEST: &str = "INSERT INTO inbox (svix_id, event_type, entity_key, object_id, \
     svix_timestamp, event_timestamp, received_at, next_attempt_at, user_id) \
     SELECT i, t, k, o, st, et, r, r, u FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], \
     $5::bigint[], $6::bigint[], $7::bigint[], $8::text[]) AS d(i, t, k, o, st, et, r, u) \
     ON CONFLICT (svix_id) DO NOTHING RETURNING seq, svix_id";

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
            // Whole columns as arrays: one statement text whatever the batch
            // size, so each connection prepares it once. Rows built with one
            // VALUES tuple per delivery were a new statement for every batch
            // size, parsed and planned again whenever sqlx's cache evicted it.
            let mut tx = pool.begin().await?;
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
                let by_id: std::collections::HashMap<&str, &NewDelivery> =
                    rows.iter().map(|r| (r.svix_id.as_str(), r)).collect();
                let seqs: Vec<i64> = new.iter().map(|(seq, _)| *seq).collect();
                let bodies: Vec<&str> = new
                    .iter()
                    .map(|(_, id)| by_id[id.as_str()].body.as_str())
                    .collect();
                let (mut contact_seqs, mut contacts) = (Vec::new(), Vec::new());
                for (seq, id) in &new {
                    for c in &by_id[id.as_str()].contacts {
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
                    "INSERT INTO inbox_bodies (seq, body) \
                     SELECT * FROM unnest($1::bigint[], $2::text[])",
                )
                .bind(&seqs)
                .bind(&bodies)
                .execute(&mut *tx)
                .await?;
                inserted.extend(new.into_iter().map(|(_, id)| id));
            }
            tx.commit().await?;
        }
    }
    Ok(rows.iter().map(|r| inserted.contains(&r.svix_id)).collect())
}
