//! SQLite's write gate: the one writer connection, the order writers take
//! turns in, and the reader connections.
//!
//! Must never: be taken by anyone outside the SQLite backend (callers never see
//! it), or hand the writer connection to a caller that does not hold it.

use super::conn::{blocking, open_reader, sync_wal};
use crate::store::StoreError;
use std::sync::Arc;

/// Orders SQLite's writers in the process.
///
/// SQLite has one writer at a time; left to itself, a second writer waits in
/// SQLite's busy handler, which sleeps in growing steps (up to 100 ms) and lets
/// newcomers overtake: under load that showed as 1-2 s stalls. Here writers queue
/// on a fair async mutex instead, and readers (WAL) are untouched. Short writes
/// (a webhook's durable append: someone is waiting for the ack) and the
/// processor's apply batches alternate: at most one background writer waits for
/// the gate, and it lets an already waiting short writer through first, so an
/// ack waits for at most one (small) apply transaction and apply never starves.
///
/// The gate owns the writer connection of the hot paths (`store::sqlite`): holding
/// the gate is what gives access to it. ///
/// It also keeps the read-only connections of the hot reads ([`WriteGate::read`]):
/// they belong to the same file and need no gate.
#[derive(Debug)]
pub struct WriteGate {
    lock: Arc<tokio::sync::Mutex<rusqlite::Connection>>,
    background: Arc<tokio::sync::Mutex<()>>,
    urgent_waiting: std::sync::atomic::AtomicUsize,
    urgent_done: tokio::sync::Notify,
    /// The writer's WAL file, fsynced outside the gate ([`WriteGate::sync`]).
    wal: std::fs::File,
    /// The database file, for reader connections ([`WriteGate::read`]).
    path: std::path::PathBuf,
    /// Reader connections kept for [`WriteGate::read`].
    readers: std::sync::Mutex<Vec<rusqlite::Connection>>,
    /// Reader connections opened so far (`/metrics`).
    opened: std::sync::atomic::AtomicUsize,
    /// How this database's delivery bodies are compressed (its dictionaries).
    bodies: crate::store::body::BodyCodec,
}

/// Holds the gate until dropped.
pub(crate) struct WriteGuard {
    lock: tokio::sync::OwnedMutexGuard<rusqlite::Connection>,
    _background: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl WriteGuard {
    /// SQLite's writer connection, which only the gate's holder may use.
    pub(crate) fn conn(&mut self) -> &mut rusqlite::Connection {
        &mut self.lock
    }
}

impl WriteGate {
    pub(crate) fn new(
        writer: rusqlite::Connection,
        wal: std::fs::File,
        path: std::path::PathBuf,
    ) -> WriteGate {
        WriteGate {
            wal,
            path,
            readers: Default::default(),
            opened: Default::default(),
            lock: Arc::new(tokio::sync::Mutex::new(writer)),
            background: Default::default(),
            urgent_waiting: Default::default(),
            urgent_done: Default::default(),
            bodies: Default::default(),
        }
    }

    /// Runs a read on a reader connection of its own (opened on first need and
    /// kept), blocking: for reads that return many rows often (due events, the
    /// change feed), where sqlx's per-row hand-off between threads cost more
    /// than the read (`perf` at saturation: sqlx's worker thread used ~14% of
    /// the server's samples and switched context about once per row).
    pub(crate) fn read<R>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<R>,
    ) -> Result<R, StoreError> {
        let pooled = self
            .readers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop();
        let conn = match pooled {
            Some(c) => c,
            None => {
                let c = open_reader(&self.path)?;
                self.opened
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                c
            }
        };
        let out = blocking(|| f(&conn)).map_err(StoreError::from);
        self.readers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(conn);
        out
    }

    pub(crate) async fn urgent(&self) -> WriteGuard {
        use std::sync::atomic::Ordering;
        self.urgent_waiting.fetch_add(1, Ordering::SeqCst);
        let lock = self.lock.clone().lock_owned().await;
        self.urgent_waiting.fetch_sub(1, Ordering::SeqCst);
        self.urgent_done.notify_waiters();
        WriteGuard {
            lock,
            _background: None,
        }
    }

    pub(crate) async fn background(&self) -> WriteGuard {
        use std::sync::atomic::Ordering;
        let background = self.background.clone().lock_owned().await;
        // Let a short writer that is already waiting go first, but only that one:
        // waiting until none waits would starve apply under steady webhook
        // traffic (measured: 1.5 s sync lag at 2,000 deliveries/s). The mutex is
        // FIFO, so from here on the two kinds of writer alternate.
        if self.urgent_waiting.load(Ordering::SeqCst) > 0 {
            let done = self.urgent_done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if self.urgent_waiting.load(Ordering::SeqCst) > 0 {
                let _ = tokio::time::timeout(std::time::Duration::from_millis(20), done).await;
            }
        }
        WriteGuard {
            lock: self.lock.clone().lock_owned().await,
            _background: Some(background),
        }
    }
}

impl WriteGate {
    /// This database's body compression.
    pub(crate) fn bodies(&self) -> &crate::store::body::BodyCodec {
        &self.bodies
    }

    /// The database file.
    pub(crate) fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Connections open (the writer and the readers), and how many readers are idle.
    pub(crate) fn connections(&self) -> (u32, usize) {
        let opened = self.opened.load(std::sync::atomic::Ordering::Relaxed);
        let idle = self
            .readers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len();
        (1 + opened as u32, idle)
    }

    /// Makes every commit so far durable: fsyncs the WAL without holding the
    /// gate, so writers go on while it waits for the disk.
    pub(crate) fn sync(&self) -> Result<(), StoreError> {
        Ok(sync_wal(&self.wal)?)
    }
}
