//! The schema migrations of each backend, embedded at build time (`build.rs`
//! lists `migrations/<backend>/`).
//!
//! Owns: turning the embedded files into sqlx migrators. Must never: change a
//! migration's text once released (sqlx refuses a database whose applied
//! migration's checksum differs) or derive versions differently from sqlx's
//! own file-name rules (databases made by earlier builds carry those).

use sqlx::migrate::{Migration, MigrationType, Migrator};
use std::borrow::Cow;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/migrations.rs"));
}

/// The SQLite schema's migrator.
pub fn sqlite() -> Migrator {
    migrator(embedded::SQLITE)
}

/// The PostgreSQL schema's migrator.
pub fn postgres() -> Migrator {
    migrator(embedded::POSTGRES)
}

fn migrator(files: &'static [(i64, &'static str, &'static str)]) -> Migrator {
    let migrations = files
        .iter()
        .map(|&(version, description, sql)| {
            Migration::new(
                version,
                Cow::Borrowed(description),
                MigrationType::Simple,
                Cow::Borrowed(sql),
                sql.starts_with("-- no-transaction"),
            )
        })
        .collect();
    // The same settings `sqlx::migrate!` produces.
    Migrator {
        migrations: Cow::Owned(migrations),
        ignore_missing: false,
        locking: true,
        no_tx: false,
    }
}
