//! PostgreSQL's retention purge and erasure.
//!
//! Must never: erase more than [`ERASE_USERS_PER_TX`] users in one
//! transaction, or hold its transaction across anything but these statements.

use crate::clerk::kind::Erasure;
use crate::store::maintenance::{
    erased_tables, message_table, PurgeReport, Redaction, ARCHIVE_ROWS_PER_TX, ERASE_USERS_PER_TX,
};
use crate::store::StoreError;
use sqlx::PgPool;

/// Redacts the personal values of the audit rows whose `$col` is `$id`.
macro_rules! redact_audit {
    ($tx:expr, $redact:expr, $col:literal, $id:expr) => {{
        let audits: Vec<(i64, String)> = sqlx::query_as(concat!(
            "SELECT seq, changes FROM audit WHERE ",
            $col,
            " = $1"
        ))
        .bind($id)
        .fetch_all(&mut *$tx)
        .await?;
        for (aseq, changes) in audits {
            sqlx::query("UPDATE audit SET changes = $2 WHERE seq = $1")
                .bind(aseq)
                .bind(($redact.changes)(&changes))
                .execute(&mut *$tx)
                .await?;
        }
    }};
}

/// One purge transaction (see [`crate::store::maintenance::purge_expired`]).
pub(super) async fn purge(
    pool: &PgPool,
    cutoff_ms: i64,
    redact: &Redaction,
) -> Result<PurgeReport, StoreError> {
    let mut report = PurgeReport::default();
    let mut tx = pool.begin().await?;
    let expired: Vec<(i64, String, String, Option<String>)> = sqlx::query_as(
        "SELECT seq, kind, entity_id, data FROM archive WHERE archived_at < $1 ORDER BY seq LIMIT $2",
    )
    .bind(cutoff_ms)
    .bind(ARCHIVE_ROWS_PER_TX)
    .fetch_all(&mut *tx)
    .await?;
    for (seq, kind, entity_id, data) in expired {
        if kind == "user" {
            if report.users_erased == ERASE_USERS_PER_TX {
                // The rest waits for the next transaction.
                break;
            }
            let uid = entity_id.as_str();
            redact_audit!(tx, redact, "user_id", uid);
            // The user's addresses and numbers: from its last record and
            // from every delivery about it (an address it no longer had).
            let mut contacts = Vec::new();
            if let Some(v) = data.as_deref().and_then(|d| serde_json::from_str(d).ok()) {
                crate::clerk::envelope::contacts_in(&v, &mut contacts);
            }
            let known: Vec<String> = sqlx::query_scalar(
                "SELECT DISTINCT c.contact FROM inbox i JOIN inbox_contacts c ON c.seq = i.seq \
                 WHERE i.user_id = $1",
            )
            .bind(uid)
            .fetch_all(&mut *tx)
            .await?;
            contacts.extend(known);
            contacts.sort();
            contacts.dedup();
            // Its deliveries, by index: about it, in its partition, or
            // naming one of its addresses (an email.created with user_id null).
            let mut seqs = std::collections::BTreeSet::new();
            for sql in [
                "SELECT seq FROM inbox WHERE user_id = $1",
                "SELECT seq FROM inbox WHERE entity_key = $1",
            ] {
                let found: Vec<i64> = sqlx::query_scalar(sql)
                    .bind(uid)
                    .fetch_all(&mut *tx)
                    .await?;
                seqs.extend(found);
            }
            for c in &contacts {
                let found: Vec<i64> =
                    sqlx::query_scalar("SELECT seq FROM inbox_contacts WHERE contact = $1")
                        .bind(c)
                        .fetch_all(&mut *tx)
                        .await?;
                seqs.extend(found);
            }
            let mut messages = Vec::new();
            for iseq in seqs {
                // No body row: expired by the retention, nothing to redact.
                // (event type, object id, stored body, body row's seq)
                type Row = (String, Option<String>, Option<Vec<u8>>, Option<i64>);
                let row: Option<Row> = sqlx::query_as(
                    "SELECT event_type, object_id, \
                         COALESCE(b.body_zstd, convert_to(b.body, 'UTF8')), b.seq FROM inbox \
                         LEFT JOIN inbox_bodies b USING (seq) WHERE seq = $1",
                )
                .bind(iseq)
                .fetch_optional(&mut *tx)
                .await?;
                let Some((event_type, object_id, stored, has_body)) = row else {
                    continue;
                };
                let body = has_body.map(|_| crate::store::body::decode(stored.as_deref()));
                if let Some(body) = body {
                    // The redacted body is small: kept as plain text.
                    sqlx::query(
                        "UPDATE inbox_bodies SET body = $2, body_zstd = NULL WHERE seq = $1",
                    )
                    .bind(iseq)
                    .bind((redact.body)(&body))
                    .execute(&mut *tx)
                    .await?;
                }
                sqlx::query("DELETE FROM inbox_contacts WHERE seq = $1")
                    .bind(iseq)
                    .execute(&mut *tx)
                    .await?;
                if let (Some(t), Some(id)) = (message_table(&event_type), object_id) {
                    messages.push((t, id));
                }
            }
            // Emails and SMS sent to the user (also those Clerk sent with
            // no user_id): their records and audit values.
            messages.sort();
            messages.dedup();
            for (t, id) in &messages {
                sqlx::query(&format!("UPDATE {t} SET data = NULL WHERE id = $1"))
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                redact_audit!(tx, redact, "entity_id", id);
            }
            for (t, erasure) in erased_tables() {
                let sql = match erasure {
                    Erasure::UserTombstones => {
                        format!("UPDATE {t} SET data = NULL WHERE user_id = $1 AND deleted = TRUE")
                    }
                    Erasure::Messages => format!("UPDATE {t} SET data = NULL WHERE user_id = $1"),
                    Erasure::Keep => continue,
                };
                sqlx::query(&sql).bind(uid).execute(&mut *tx).await?;
            }
            let n = sqlx::query("DELETE FROM archive WHERE user_id = $1")
                .bind(uid)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            report.archive_rows += n;
            report.users_erased += 1;
        } else {
            let n = sqlx::query("DELETE FROM archive WHERE seq = $1")
                .bind(seq)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            report.archive_rows += n;
        }
    }
    tx.commit().await?;
    Ok(report)
}
