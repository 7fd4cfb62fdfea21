//! SQLite's migrations, run on a rusqlite connection.
//!
//! Keeps sqlx's bookkeeping: databases made by earlier builds (whose
//! migrations sqlx ran) carry `_sqlx_migrations` rows with these versions and
//! checksums, and upgrade from there. Must never: apply a migration twice
//! (each one commits with its bookkeeping row), or accept a database whose
//! applied migration differs from the embedded one.

use rusqlite::{params, Connection};
use sqlx::migrate::{MigrateError, Migrator};
use std::collections::HashMap;

/// Why migrating failed.
#[derive(Debug, thiserror::Error)]
pub enum SqliteMigrateError {
    /// The database's recorded migrations do not fit this build's.
    #[error(transparent)]
    Version(#[from] MigrateError),
    #[error("migration {version} failed: {source}")]
    Execute {
        version: i64,
        source: rusqlite::Error,
    },
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

/// Applies the migrations of `migrator` that `conn`'s database lacks.
pub(super) fn run(conn: &mut Connection, migrator: &Migrator) -> Result<(), SqliteMigrateError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS _sqlx_migrations (
            version BIGINT PRIMARY KEY,
            description TEXT NOT NULL,
            installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
            success BOOLEAN NOT NULL,
            checksum BLOB NOT NULL,
            execution_time BIGINT NOT NULL
        );",
    )?;
    let dirty: Option<i64> = conn
        .query_row(
            "SELECT version FROM _sqlx_migrations WHERE success = false ORDER BY version LIMIT 1",
            [],
            |r| r.get(0),
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })?;
    if let Some(version) = dirty {
        return Err(MigrateError::Dirty(version).into());
    }
    let applied: HashMap<i64, Vec<u8>> = {
        let mut stmt =
            conn.prepare("SELECT version, checksum FROM _sqlx_migrations ORDER BY version")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for version in applied.keys() {
        if !migrator.iter().any(|m| m.version == *version) {
            return Err(MigrateError::VersionMissing(*version).into());
        }
    }
    for m in migrator.iter() {
        if m.migration_type.is_down_migration() {
            continue;
        }
        if let Some(checksum) = applied.get(&m.version) {
            if checksum.as_slice() != &*m.checksum {
                return Err(MigrateError::VersionMismatch(m.version).into());
            }
            continue;
        }
        let started = std::time::Instant::now();
        let execute = |source| SqliteMigrateError::Execute {
            version: m.version,
            source,
        };
        // The script and its bookkeeping row in one transaction: a crash
        // between them cannot run it twice.
        let tx = conn.transaction()?;
        tx.execute_batch(&m.sql).map_err(execute)?;
        tx.execute(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (?1, ?2, TRUE, ?3, -1)",
            params![m.version, &*m.description, &*m.checksum],
        )?;
        tx.commit()?;
        conn.execute(
            "UPDATE _sqlx_migrations SET execution_time = ?1 WHERE version = ?2",
            params![started.elapsed().as_nanos() as i64, m.version],
        )?;
    }
    Ok(())
}
