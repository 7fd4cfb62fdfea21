//! The store's one error type.
//!
//! Owns: what can go wrong below the store's traits, named by the driver that
//! reported it. Must never: dress one driver's error up as another's, or carry
//! a panic (a panic in apply is the processor's to report, not a database error).

/// A failure of the database or of the file system under it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A PostgreSQL (or sqlx pool) error.
    #[error("{0}")]
    Sqlx(#[from] sqlx::Error),
    /// A SQLite error, with SQLite's own message.
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Making commits durable (fsync of SQLite's write-ahead log) failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}
