//! SQLite's retention purge and erasure, on the writer connection.
//!
//! Must never: run without the write gate (the caller in `sqlite/mod.rs` holds
//! its background side), or erase more than [`ERASE_USERS_PER_TX`] users in
//! one transaction (webhook acks wait for the gate meanwhile).

use crate::clerk::kind::Erasure;
use crate::store::maintenance::{
    erased_tables, message_table, PurgeReport, Redaction, ARCHIVE_ROWS_PER_TX, ERASE_USERS_PER_TX,
};
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

/// One purge transaction (see [`crate::store::maintenance::purge_expired`]).
pub(super) fn purge(
    conn: &mut Connection,
    cutoff_ms: i64,
    redact: &Redaction,
) -> rusqlite::Result<PurgeReport> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut report = PurgeReport::default();
    let expired: Vec<(i64, String, String, Option<String>)> = {
        let mut stmt = tx.prepare_cached(
            "SELECT seq, kind, entity_id, data FROM archive WHERE archived_at < ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![cutoff_ms, ARCHIVE_ROWS_PER_TX], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for (seq, kind, entity_id, data) in expired {
        if kind == "user" {
            if report.users_erased == ERASE_USERS_PER_TX {
                // The rest waits for the next transaction.
                break;
            }
            report.archive_rows += erase_user(&tx, &entity_id, data.as_deref(), redact)?;
            report.users_erased += 1;
        } else {
            let n = tx
                .prepare_cached("DELETE FROM archive WHERE seq = ?1")?
                .execute([seq])?;
            report.archive_rows += n as u64;
        }
    }
    tx.commit()?;
    Ok(report)
}

/// Every value of one deleted user; returns the archive rows deleted.
fn erase_user(
    tx: &Transaction<'_>,
    uid: &str,
    data: Option<&str>,
    redact: &Redaction,
) -> rusqlite::Result<u64> {
    redact_audit(tx, "user_id", uid, redact)?;
    // The user's addresses and numbers: from its last record and from every
    // delivery about it (an address it no longer had).
    let mut contacts = Vec::new();
    if let Some(v) = data.and_then(|d| serde_json::from_str(d).ok()) {
        crate::clerk::envelope::contacts_in(&v, &mut contacts);
    }
    contacts.extend(strings(
        tx,
        "SELECT DISTINCT c.contact FROM inbox i JOIN inbox_contacts c ON c.seq = i.seq \
         WHERE i.user_id = ?1",
        uid,
    )?);
    contacts.sort();
    contacts.dedup();
    // Its deliveries, by index: about it, in its partition, or naming one of
    // its addresses (an email.created with user_id null).
    let mut seqs = std::collections::BTreeSet::new();
    seqs.extend(seqs_of(
        tx,
        "SELECT seq FROM inbox WHERE user_id = ?1",
        uid,
    )?);
    seqs.extend(seqs_of(
        tx,
        "SELECT seq FROM inbox WHERE entity_key = ?1",
        uid,
    )?);
    for c in &contacts {
        seqs.extend(seqs_of(
            tx,
            "SELECT seq FROM inbox_contacts WHERE contact = ?1",
            c,
        )?);
    }
    let mut messages = Vec::new();
    for iseq in seqs {
        let row: Option<(String, Option<String>, Option<String>)> = tx
            .prepare_cached(
                "SELECT event_type, object_id, COALESCE(b.body_zstd, b.body), b.seq FROM inbox \
                 LEFT JOIN inbox_bodies b USING (seq) WHERE seq = ?1",
            )?
            .query_row([iseq], |r| {
                // No body row: expired by the retention, nothing to redact.
                let body = match r.get::<_, Option<i64>>(3)? {
                    Some(_) => Some(super::body_at(r, 2)?),
                    None => None,
                };
                Ok((r.get(0)?, r.get(1)?, body))
            })
            .optional()?;
        let Some((event_type, object_id, body)) = row else {
            continue;
        };
        if let Some(body) = body {
            // The redacted body is small: kept as plain text.
            tx.prepare_cached(
                "UPDATE inbox_bodies SET body = ?2, body_zstd = NULL WHERE seq = ?1",
            )?
            .execute(params![iseq, (redact.body)(&body)])?;
        }
        tx.prepare_cached("DELETE FROM inbox_contacts WHERE seq = ?1")?
            .execute([iseq])?;
        if let (Some(t), Some(id)) = (message_table(&event_type), object_id) {
            messages.push((t, id));
        }
    }
    // Emails and SMS sent to the user (also those Clerk sent with no user_id):
    // their records and audit values.
    messages.sort();
    messages.dedup();
    for (t, id) in &messages {
        tx.prepare_cached(&format!("UPDATE {t} SET data = NULL WHERE id = ?1"))?
            .execute([id])?;
        redact_audit(tx, "entity_id", id, redact)?;
    }
    for (t, erasure) in erased_tables() {
        let sql = match erasure {
            Erasure::UserTombstones => {
                format!("UPDATE {t} SET data = NULL WHERE user_id = ?1 AND deleted = 1")
            }
            Erasure::Messages => format!("UPDATE {t} SET data = NULL WHERE user_id = ?1"),
            Erasure::Keep => continue,
        };
        tx.prepare_cached(&sql)?.execute([uid])?;
    }
    let n = tx
        .prepare_cached("DELETE FROM archive WHERE user_id = ?1")?
        .execute([uid])?;
    Ok(n as u64)
}

/// Redacts the personal values of the audit rows whose `col` is `id`.
fn redact_audit(
    tx: &Transaction<'_>,
    col: &str,
    id: &str,
    redact: &Redaction,
) -> rusqlite::Result<()> {
    let audits: Vec<(i64, String)> = {
        let mut stmt =
            tx.prepare_cached(&format!("SELECT seq, changes FROM audit WHERE {col} = ?1"))?;
        let rows = stmt.query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let mut update = tx.prepare_cached("UPDATE audit SET changes = ?2 WHERE seq = ?1")?;
    for (aseq, changes) in audits {
        update.execute(params![aseq, (redact.changes)(&changes)])?;
    }
    Ok(())
}

fn strings(tx: &Transaction<'_>, sql: &str, key: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = tx.prepare_cached(sql)?;
    let rows = stmt.query_map([key], |r| r.get(0))?;
    rows.collect()
}

fn seqs_of(tx: &Transaction<'_>, sql: &str, key: &str) -> rusqlite::Result<Vec<i64>> {
    let mut stmt = tx.prepare_cached(sql)?;
    let rows = stmt.query_map([key], |r| r.get(0))?;
    rows.collect()
}
