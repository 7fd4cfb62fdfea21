//! Group commit: many concurrent deliveries, one transaction, one fsync.
//!
//! Why: a durable ack needs an fsync, and one fsync per request caps ingress at
//! the disk's sync rate. One writer task takes everything queued while the last
//! commit was in flight and commits it together, so the batch grows with load
//! and latency stays one commit at low load. The fsync that makes a batch
//! durable runs beside the next batch's commit ([`Durability`]). Must never:
//! answer a submitter before the commit holding its row is durable (committed
//! and, on SQLite, fsynced).

use super::inbox::NewDelivery;
use crate::store::db::Database;
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;

/// The result of a submitted delivery once durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    Accepted,
    Duplicate,
}

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("the inbox is not accepting deliveries (shutting down)")]
    Closed,
    #[error("storing the delivery failed: {0}")]
    Storage(String),
}

type Reply = oneshot::Sender<Result<AppendOutcome, CommitError>>;

/// A delivery on its way to the writer: the row, its body as stored
/// (compressed by the submitter, see [`GroupCommitter::submit`]) and where its
/// answer goes.
type Submission = (NewDelivery, Vec<u8>, Reply);

/// Answers of one committed batch, held until the fsync that makes it durable.
type Answers = Vec<(Reply, AppendOutcome)>;

/// Handle used by ingress; cheap to clone.
#[derive(Clone)]
pub struct GroupCommitter {
    tx: mpsc::Sender<Submission>,
    /// For [`Database::compress_body`] on the submitter's task.
    db: Database,
}

/// Largest batch one transaction takes: bounds the time a commit holds SQLite's
/// write lock (the processor needs it too).
pub const MAX_BATCH: usize = 2000;

impl GroupCommitter {
    /// Starts the writer. It ends when every handle is dropped, after draining
    /// and answering everything submitted.
    /// `committed` is notified after each commit that stored new rows.
    pub fn start(db: Database, committed: Arc<Notify>) -> (GroupCommitter, JoinHandle<()>) {
        // Bounded: under overload, handlers wait here (backpressure) instead of
        // growing memory without limit.
        let (tx, rx) = mpsc::channel(8192);
        // Where the backend's writers run best (SQLite: a thread of its own,
        // taking turns at the one write lock with the apply loop; measured ~3%
        // more deliveries applied per second end to end).
        let handle = db
            .clone()
            .spawn_writer("inbox-writer", writer(db.clone(), rx, committed));
        (GroupCommitter { tx, db }, handle)
    }

    /// Stores `row` durably; resolves once committed.
    ///
    /// The body is compressed here, on the submitter's task (an HTTP worker),
    /// so the work is spread over every worker instead of queued on the one
    /// writer, which only inserts and commits (perf, ingest alone: zstd was a
    /// quarter of the writer thread's time, all of it serial).
    pub async fn submit(&self, row: NewDelivery) -> Result<AppendOutcome, CommitError> {
        let stored = self.db.compress_body(&row.body);
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((row, stored, reply))
            .await
            .map_err(|_| CommitError::Closed)?;
        rx.await.map_err(|_| CommitError::Closed)?
    }
}

/// Answers batches once durable: on SQLite, a thread of its own fsyncs the WAL
/// and answers every batch committed before that fsync started, while the
/// writer commits the next batch (the fsync no longer sits between two
/// commits: perf put the writer's cycle at about a fifth fsync). On
/// PostgreSQL a commit is durable when it returns: batches are answered at
/// once.
///
/// At most [`MAX_UNSYNCED`] committed batches wait for an fsync: the writer
/// commits one batch while the last one is fsynced, then waits for that
/// fsync, so each fsync period ends in one commit of everything that arrived
/// meanwhile. Committing as fast as rows came in made many small commits,
/// each rewriting into the WAL every index page it touched (svix-id, entity,
/// user, contacts: about one page per row and index at these batch sizes).
struct Durability {
    syncer: Option<(
        std::sync::mpsc::Sender<Answers>,
        std::thread::JoinHandle<()>,
    )>,
    /// Batches handed to the syncer, and (from it) batches it has answered.
    handed: u64,
    answered: Option<tokio::sync::watch::Receiver<u64>>,
}

/// Committed batches that may wait for an fsync while the writer commits
/// another (see [`Durability`]).
const MAX_UNSYNCED: u64 = 1;

impl Durability {
    fn start(db: &Database) -> Durability {
        if !db.appends_need_sync() {
            return Durability {
                syncer: None,
                handed: 0,
                answered: None,
            };
        }
        let (tx, rx) = std::sync::mpsc::channel::<Answers>();
        let (answered_tx, answered_rx) = tokio::sync::watch::channel(0u64);
        let db = db.clone();
        let handle = std::thread::Builder::new()
            .name("inbox-sync".into())
            .spawn(move || {
                let mut answered = 0u64;
                while let Ok(first) = rx.recv() {
                    // Everything queued so far was committed before this fsync.
                    let batches: Vec<Answers> =
                        std::iter::once(first).chain(rx.try_iter()).collect();
                    let synced = db.sync_appends();
                    if let Err(e) = &synced {
                        tracing::error!(error = %e, "inbox fsync failed");
                    }
                    answered += batches.len() as u64;
                    for (reply, outcome) in batches.into_iter().flatten() {
                        let _ = reply.send(match &synced {
                            Ok(()) => Ok(outcome),
                            Err(e) => Err(CommitError::Storage(e.to_string())),
                        });
                    }
                    let _ = answered_tx.send(answered);
                }
            })
            .expect("a thread starts");
        Durability {
            syncer: Some((tx, handle)),
            handed: 0,
            answered: Some(answered_rx),
        }
    }

    /// Waits until at most [`MAX_UNSYNCED`] committed batches wait for an
    /// fsync, so the next commit may go ahead.
    async fn ready(&mut self) {
        let Some(answered) = self.answered.as_mut() else {
            return;
        };
        while self.handed.saturating_sub(*answered.borrow_and_update()) > MAX_UNSYNCED {
            // The syncer is gone (`answer` reports it): nothing to wait for.
            if answered.changed().await.is_err() {
                return;
            }
        }
    }

    /// Answers a committed batch once it is durable.
    fn answer(&mut self, answers: Answers) {
        let answers = match &self.syncer {
            Some((tx, _)) => match tx.send(answers) {
                Ok(()) => {
                    self.handed += 1;
                    return;
                }
                // The syncer is gone (it panicked): nothing can make these
                // durable; dropping the replies answers them 503.
                Err(std::sync::mpsc::SendError(a)) => {
                    tracing::error!("the inbox fsync thread is gone");
                    drop(a);
                    return;
                }
            },
            None => answers,
        };
        for (reply, outcome) in answers {
            let _ = reply.send(Ok(outcome));
        }
    }

    /// Waits until every batch handed over is answered (blocking: called on
    /// the writer's own thread when it ends).
    fn finish(self) {
        if let Some((tx, handle)) = self.syncer {
            drop(tx);
            let _ = handle.join();
        }
    }
}

async fn writer(db: Database, mut rx: mpsc::Receiver<Submission>, committed: Arc<Notify>) {
    let mut durability = Durability::start(&db);
    let mut batch: Vec<Submission> = Vec::with_capacity(256);
    loop {
        // Rows queue in the channel while the last fsync finishes.
        durability.ready().await;
        if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
            break;
        }
        let mut deliveries = Vec::with_capacity(batch.len());
        let mut bodies = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for (d, b, r) in batch.drain(..) {
            deliveries.push(d);
            bodies.push(b);
            replies.push(r);
        }
        // Two deliveries of one id in the same batch: the first is stored, the
        // rest are duplicates of it.
        let mut seen = HashSet::with_capacity(deliveries.len());
        let first: Vec<bool> = deliveries
            .iter()
            .map(|d| seen.insert(d.svix_id.as_str()))
            .collect();
        // Bodies are ~2 KB: copied only in the rare batch that holds a duplicate.
        let result = if first.iter().all(|f| *f) {
            db.append_committed(&deliveries, &bodies).await
        } else {
            let keep = |i: &usize| first[*i];
            let idx: Vec<usize> = (0..deliveries.len()).filter(keep).collect();
            let rows: Vec<NewDelivery> = idx.iter().map(|&i| deliveries[i].clone()).collect();
            let stored: Vec<Vec<u8>> = idx.iter().map(|&i| bodies[i].clone()).collect();
            db.append_committed(&rows, &stored).await
        };
        match result {
            Ok(flags) => {
                let any_new = flags.iter().any(|n| *n);
                // The first submitter of a new id gets Accepted, everyone else
                // Duplicate; `flags` holds one entry per first submitter.
                let mut flags = flags.into_iter();
                let answers: Answers = replies
                    .into_iter()
                    .zip(first)
                    .map(|(reply, is_first)| {
                        let outcome = if is_first && flags.next() == Some(true) {
                            AppendOutcome::Accepted
                        } else {
                            AppendOutcome::Duplicate
                        };
                        (reply, outcome)
                    })
                    .collect();
                // Committed: the processor may apply these rows now. They are
                // durable before anything committed after them (the WAL is a
                // prefix), so an apply never outlives its delivery.
                if any_new {
                    committed.notify_waiters();
                    committed.notify_one();
                }
                // A duplicate's answer waits too: the row it duplicates may be
                // in a batch committed but not yet fsynced.
                durability.answer(answers);
            }
            Err(e) => {
                tracing::error!(error = %e, rows = deliveries.len(), "inbox append failed");
                let msg = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(CommitError::Storage(msg.clone())));
                }
            }
        }
    }
    durability.finish();
}
