//! The processor: applies stored deliveries, in parallel across partitions.
//!
//! Owns: claiming pending inbox rows under a lease, routing each to the worker
//! of its partition (hash of the entity key, so one partition's events are
//! applied one at a time and in arrival order), batching a worker's queue into
//! one transaction, retries with backoff, dead letters, and the retention job.
//! Must never: apply an event outside a transaction that also marks it done,
//! let a failing event block the ones behind it, or hold a transaction across
//! anything but database calls.

pub mod replay;

use crate::clerk::model::{Parsed, PayloadError};
use crate::clock::Clock;
use crate::store::maintenance::prune_feed;
use crate::store::tx::begin;
use crate::store::{Database, StoreError};
use crate::sync::erasure::purge_expired;
use crate::sync::{apply_parsed, parse, plan_batch, Delivery, Outcome, SyncError};
use crate::telemetry::metrics::{event_type_label, EventLabels, Metrics};
use futures::FutureExt;
use std::hash::{Hash, Hasher};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

#[derive(Debug, Clone)]
pub struct ProcessorConfig {
    /// Workers, i.e. partitions applied at once.
    pub max_concurrent: usize,
    /// Attempts before a transiently failing event is dead-lettered.
    pub max_attempts: u32,
    /// How long a claimed event stays reserved for this node.
    pub lease: Duration,
    /// Most events applied in one transaction.
    pub batch_max: usize,
    /// First retry delay; doubles per attempt, with jitter.
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub archive_retention: Duration,
    pub feed_retention: Duration,
    /// Applied deliveries received longer ago than this lose their raw body.
    pub raw_body_retention: Duration,
    /// How often the retention job runs.
    pub purge_interval: Duration,
    /// Apply nothing (`apply_paused`): deliveries are still acknowledged and
    /// stored, and wait as pending until a start without it.
    pub paused: bool,
}

impl ProcessorConfig {
    /// The retry schedule and job interval are fixed; the rest comes from the
    /// settings (`Config::processor` fills them).
    pub const RETRY_BASE: Duration = Duration::from_secs(1);
    pub const RETRY_MAX: Duration = Duration::from_secs(300);
    pub const PURGE_INTERVAL: Duration = Duration::from_secs(60);
}

/// Hooks for what happens to events (logging, metrics, alerting).
pub trait EventObserver: Send + Sync {
    fn on_applied(&self, _d: &Delivery, _outcome: Outcome) {}
    fn on_error(&self, _d: &Delivery, _error: &str, _dead: bool) {}
}

/// The processor's handle to everything it shares with the HTTP side.
#[derive(Clone)]
pub struct Processor {
    pub db: Database,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    pub config: ProcessorConfig,
    /// Notified by ingress after each inbox commit.
    pub wake: Arc<Notify>,
    /// Bumped after every apply commit; read API waiters watch it.
    pub applied: watch::Sender<u64>,
    pub observer: Option<Arc<dyn EventObserver>>,
    /// Refreshed after each commit in write-through mode.
    pub cache: Option<Arc<crate::feed::cache::EntityCache>>,
    /// `wait_ms` waiters, woken by the ids each commit changed.
    pub waiters: Option<Arc<crate::feed::waiters::Waiters>>,
}

type Job = (Delivery, OwnedSemaphorePermit);

/// Due events read and parsed ahead of their transaction.
struct DueBatch {
    jobs: Vec<(Delivery, ())>,
    parsed: Vec<Result<Parsed, PayloadError>>,
}

/// Reads up to `limit` due events other than `skip` and parses their bodies:
/// the part of a batch that needs no write lock.
async fn read_due(
    db: &Database,
    now: i64,
    skip: &[i64],
    limit: i64,
) -> Result<DueBatch, StoreError> {
    let due = db.due(now, skip, limit).await?;
    let parsed = due.iter().map(parse).collect();
    let jobs = due.into_iter().map(|d| (d, ())).collect();
    Ok(DueBatch { jobs, parsed })
}

impl Processor {
    /// Runs until `cancel`; then stops claiming, finishes the batches in hand and
    /// releases the leases of events still queued.
    pub async fn run(self, cancel: CancellationToken) {
        if self.config.paused {
            tracing::warn!("apply is paused (apply_paused): deliveries are stored, not applied");
            cancel.cancelled().await;
            return;
        }
        let n = self.config.max_concurrent.max(1);
        if n == 1 && self.db.strategy().in_place_when_single {
            let purger = tokio::spawn(self.clone().purge_loop(cancel.clone()));
            // Where the backend's writers run best (SQLite: a thread of its
            // own, measured ~5% more events applied per second end to end);
            // reads ahead still run on `shared`.
            let shared = tokio::runtime::Handle::current();
            let me = self.clone();
            let apply =
                self.db.spawn_writer(
                    "apply",
                    async move { me.run_in_place(cancel, shared).await },
                );
            let _ = apply.await;
            let _ = purger.await;
            return;
        }
        // Bounds claimed-but-unfinished events: enough to keep every worker's next
        // batch ready, small enough that leases never expire in a queue.
        let capacity = n * self.config.batch_max * 4;
        let sem = Arc::new(Semaphore::new(capacity));
        let mut workers = JoinSet::new();
        let mut queues = Vec::with_capacity(n);
        for _ in 0..n {
            let (tx, rx) = mpsc::channel::<Vec<Job>>(capacity);
            queues.push(tx);
            workers.spawn(self.clone().worker(rx, cancel.clone()));
        }
        let purger = tokio::spawn(self.clone().purge_loop(cancel.clone()));
        // The backend's upkeep while workers run (PostgreSQL: planner statistics).
        let (db, stop) = (self.db.clone(), cancel.clone());
        tokio::spawn(async move { db.keep_statistics_fresh(stop).await });
        self.dispatch(&queues, &sem, &cancel).await;
        drop(queues);
        while workers.join_next().await.is_some() {}
        let _ = purger.await;
    }

    async fn dispatch(
        &self,
        queues: &[mpsc::Sender<Vec<Job>>],
        sem: &Arc<Semaphore>,
        cancel: &CancellationToken,
    ) {
        let poll = Duration::from_millis(500);
        loop {
            if cancel.is_cancelled() {
                return;
            }
            // Wait for room before claiming, so a claim never outruns the workers.
            let first = tokio::select! {
                p = sem.clone().acquire_owned() => p.expect("semaphore is never closed"),
                _ = cancel.cancelled() => return,
            };
            let room = sem.available_permits() + 1;
            // Register for the wake-up before looking, so a commit between the
            // claim and the wait is not missed.
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = self.clock.now_ms();
            let lease_until = now + self.config.lease.as_millis() as i64;
            let rows = match self.db.claim(now, lease_until, room.min(1000) as i64).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "claiming events failed; retrying");
                    drop(first);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = cancel.cancelled() => return,
                    }
                    continue;
                }
            };
            if rows.is_empty() {
                drop(first);
                tokio::select! {
                    _ = &mut notified => {}
                    _ = tokio::time::sleep(poll) => {}
                    _ = cancel.cancelled() => return,
                }
                continue;
            }
            // Each worker gets its share of the claim in one message, so it
            // applies it as one batch instead of waking for the first event.
            let mut first = Some(first);
            let mut shares: Vec<Vec<Job>> = (0..queues.len()).map(|_| Vec::new()).collect();
            for d in rows {
                let permit = match first.take() {
                    Some(p) => p,
                    None => sem
                        .clone()
                        .acquire_owned()
                        .await
                        .expect("semaphore is never closed"),
                };
                shares[partition(&d, queues.len())].push((d, permit));
            }
            for (queue, share) in queues.iter().zip(shares) {
                if !share.is_empty() && queue.send(share).await.is_err() {
                    return;
                }
            }
        }
    }

    /// One worker on a backend that applies in place (SQLite): each transaction
    /// finds its due events itself and applies them. SQLite lets one writer in
    /// at a time anyway, so a separate
    /// claim (a lease write) would only add a second turn at the write lock per
    /// batch — measured, it halved apply throughput while webhooks kept coming.
    /// Exactly-once holds as everywhere: the done mark commits with the effects.
    ///
    /// Pipelined: while one batch is applied under the write gate, the next is
    /// read and parsed beside it (a WAL reader needs no gate), so the writer
    /// does not sit idle between batches. Reading outside the transaction is
    /// safe: apply checks each event's status again inside it, and this is the
    /// only worker; the read leaves out the batch in hand, still pending in the
    /// snapshot it reads.
    async fn run_in_place(&self, cancel: CancellationToken, shared: tokio::runtime::Handle) {
        let limit = self.config.batch_max as i64;
        let mut ready: Option<DueBatch> = None;
        loop {
            if cancel.is_cancelled() {
                return;
            }
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let batch = match ready.take() {
                Some(b) => Ok(b),
                // This thread is the apply loop's own: it may block.
                None => read_due(&self.db, self.clock.now_ms(), &[], limit).await,
            };
            match batch {
                Ok(b) if b.jobs.is_empty() => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = cancel.cancelled() => return,
                    }
                }
                // A full batch means a backlog: read the next one beside it. A
                // short one drained the backlog; reading beside it would only
                // find the few events that came in since, so the next turn
                // reads after the commit and finds everything that came in
                // meanwhile (measured: reading ahead at every batch cost 8% more
                // CPU per event at moderate load, for smaller batches).
                Ok(b) if b.jobs.len() as i64 >= limit => {
                    let in_hand: Vec<i64> = b.jobs.iter().map(|(d, _)| d.seq).collect();
                    let now = self.clock.now_ms();
                    let ahead = self.db.clone();
                    // A blocking thread: the read's calls block (SQLite).
                    let next = shared.spawn_blocking(move || {
                        futures::executor::block_on(read_due(&ahead, now, &in_hand, limit))
                    });
                    let applied = self.apply_due(b).await;
                    // A failed read only costs the overlap: the next turn reads again.
                    ready = match next.await {
                        Ok(Ok(b)) if !b.jobs.is_empty() && applied.is_ok() => Some(b),
                        _ => None,
                    };
                    if let Err(e) = applied {
                        self.pause_after(e, &cancel).await;
                    }
                }
                Ok(b) => {
                    if let Err(e) = self.apply_due(b).await {
                        self.pause_after(e, &cancel).await;
                    }
                }
                Err(e) => self.pause_after(e, &cancel).await,
            }
        }
    }

    /// The database could not be read or written at all: wait a second.
    async fn pause_after(&self, e: StoreError, cancel: &CancellationToken) {
        tracing::warn!(error = %e, "the database is not answering; retrying in 1 s");
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = cancel.cancelled() => {}
        }
    }

    /// Applies one batch of due events in one transaction; when that fails,
    /// one by one, so a bad event does not sink its neighbours. Err only when
    /// no transaction can be opened: nothing was tried, nothing counts as an
    /// attempt, and the events are read again on the next turn.
    async fn apply_due(&self, b: DueBatch) -> Result<(), StoreError> {
        let DueBatch { jobs, parsed } = b;
        let tx = begin(&self.db).await?;
        let result = self.apply_in(tx, &jobs, parsed).await;
        self.settle(&jobs, result).await;
        Ok(())
    }

    /// After a batch's transaction: its outcomes, or on failure each event again
    /// in a transaction of its own, so one bad event does not sink its
    /// neighbours (a lone event's failure is recorded as it is).
    async fn settle<P>(&self, items: &[(Delivery, P)], result: Result<Vec<Outcome>, SyncError>) {
        match result {
            Ok(outcomes) => {
                for ((d, _), o) in items.iter().zip(outcomes) {
                    self.applied_ok(d, o);
                }
                self.applied.send_modify(|v| *v += 1);
            }
            Err(e) if items.len() == 1 => self.failed(&items[0].0, &e).await,
            Err(e) => {
                tracing::debug!(error = %e, size = items.len(), "batch failed; applying events singly");
                for (d, _) in items {
                    match self.apply_all(&[(d.clone(), ())]).await {
                        Ok(o) => {
                            self.applied_ok(d, o[0]);
                            self.applied.send_modify(|v| *v += 1);
                        }
                        Err(e) => self.failed(d, &e).await,
                    }
                }
            }
        }
    }

    async fn worker(self, mut rx: mpsc::Receiver<Vec<Job>>, cancel: CancellationToken) {
        let mut batch: Vec<Job> = Vec::with_capacity(self.config.batch_max);
        loop {
            let got = tokio::select! {
                share = rx.recv() => share,
                _ = cancel.cancelled() => None,
            };
            let Some(share) = got else { break };
            batch.extend(share);
            while batch.len() < self.config.batch_max {
                match rx.try_recv() {
                    Ok(more) => batch.extend(more),
                    Err(_) => break,
                }
            }
            // In arrival order, at most batch_max per transaction.
            while !batch.is_empty() {
                let n = batch.len().min(self.config.batch_max);
                let mut chunk: Vec<Job> = batch.drain(..n).collect();
                self.process_batch(&mut chunk).await;
            }
        }
        // Shutting down: give back what is queued here so another run (or node)
        // takes it at once instead of after the lease.
        rx.close();
        while let Ok(jobs) = rx.try_recv() {
            batch.extend(jobs);
        }
        if !batch.is_empty() {
            let seqs: Vec<i64> = batch.iter().map(|(d, _)| d.seq).collect();
            if let Err(e) = self.db.release(&seqs).await {
                tracing::warn!(error = %e, "releasing leases at shutdown failed; they expire on their own");
            }
        }
    }

    async fn process_batch(&self, batch: &mut [Job]) {
        let result = self.apply_all(batch).await;
        self.settle(batch, result).await;
    }

    /// Applies the deliveries in one transaction.
    async fn apply_all<P>(&self, items: &[(Delivery, P)]) -> Result<Vec<Outcome>, SyncError> {
        // Parsed before the transaction opens: its locks are held for less.
        let parsed = items.iter().map(|(d, _)| parse(d)).collect();
        let tx = match begin(&self.db).await {
            Ok(tx) => tx,
            Err(e) => return Err(e.into()),
        };
        self.apply_in(tx, items, parsed).await
    }

    /// Applies the deliveries in `tx` and commits it.
    /// `parsed`: [`parse`] of each item, in order.
    async fn apply_in<P>(
        &self,
        mut tx: Box<dyn crate::store::tx::StoreTx>,
        items: &[(Delivery, P)],
        parsed: Vec<Result<Parsed, PayloadError>>,
    ) -> Result<Vec<Outcome>, SyncError> {
        let strategy = self.db.strategy();
        let fut = async {
            let seqs: Vec<i64> = items.iter().map(|(d, _)| d.seq).collect();
            // A single writer (SQLite) needs no entity locks, and its reads are
            // local. A single event takes its locks in `apply`.
            if items.len() > 1 && strategy.lock_entities {
                let plan = plan_batch(&parsed);
                plan.prepare(tx.as_mut(), &seqs).await?;
            } else {
                tx.prefetch_statuses(&seqs).await?;
            }
            let mut out = Vec::with_capacity(items.len());
            for ((d, _), p) in items.iter().zip(parsed) {
                // One span per apply: fields only, so it costs little per event.
                let span = tracing::info_span!(
                    "apply",
                    svix_id = %d.svix_id,
                    event_type = %d.event_type,
                    entity_id = d.entity_key.as_deref().unwrap_or("")
                );
                let started = std::time::Instant::now();
                let o = apply_parsed(tx.as_mut(), d, p, self.clock.now_ms())
                    .instrument(span.clone())
                    .await?;
                self.metrics.applied_in(&d.event_type, started.elapsed());
                span.in_scope(|| tracing::debug!(outcome = ?o, "applied"));
                out.push(o);
            }
            let changed = tx.commit().await?;
            Ok::<_, SyncError>((out, changed))
        };
        let fut = AssertUnwindSafe(fut).catch_unwind();
        // As the backend runs its transactions best (SQLite: every call inside
        // completes at once, so on this thread without the scheduler).
        let result = self.db.run_tx(fut).await;
        match result {
            Ok(Ok((out, changed))) => {
                // Write-through: the cache forgets the old records before anyone
                // is told the change is processed.
                if let Some(cache) = &self.cache {
                    if cache.strategy == crate::feed::cache::Strategy::WriteThrough
                        && !changed.is_empty()
                    {
                        cache.apply_changes(&self.db, &changed).await;
                    }
                }
                if let Some(w) = &self.waiters {
                    w.wake(changed.iter().map(|(_, id)| id.as_str()));
                }
                Ok(out)
            }
            Ok(Err(e)) => Err(e),
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                Err(SyncError::Panicked(msg))
            }
        }
    }

    fn applied_ok(&self, d: &Delivery, o: Outcome) {
        let status = match o {
            Outcome::Changed => "applied",
            Outcome::Unchanged => "unchanged",
            Outcome::Ignored => "ignored",
            Outcome::AlreadyDone => return,
        };
        self.metrics
            .events_processed
            .get_or_create(&EventLabels {
                event_type: event_type_label(&d.event_type),
                status: status.into(),
            })
            .inc();
        self.metrics.throughput.processed();
        let lag = (self.clock.now_ms() - d.received_at).max(0) as f64 / 1000.0;
        self.metrics.sync_lag_seconds.observe(lag);
        // Ingress already read Clerk's timestamp into the inbox row.
        if let Some(ts) = d.event_timestamp {
            let lag = (self.clock.now_ms() - ts).max(0) as f64 / 1000.0;
            self.metrics.clerk_sync_lag_seconds.observe(lag);
        }
        if let Some(obs) = &self.observer {
            obs.on_applied(d, o);
        }
    }

    async fn failed(&self, d: &Delivery, e: &SyncError) {
        let attempts = d.attempts + 1;
        let dead = e.is_permanent() || attempts as u32 >= self.config.max_attempts;
        let now = self.clock.now_ms();
        let next = now + backoff(&self.config, attempts as u32).as_millis() as i64;
        let msg = e.to_string();
        tracing::warn!(
            svix_id = %d.svix_id,
            event_type = %d.event_type,
            entity_id = d.entity_key.as_deref().unwrap_or(""),
            attempts,
            dead,
            error = %msg,
            "event failed"
        );
        if let Err(err) = self.db.mark_failed(d.seq, &msg, dead, next).await {
            // The lease will expire and the event will be tried again.
            tracing::error!(svix_id = %d.svix_id, error = %err, "recording a failure failed");
        }
        let status = if dead { "dead" } else { "failed" };
        self.metrics
            .events_processed
            .get_or_create(&EventLabels {
                event_type: event_type_label(&d.event_type),
                status: status.into(),
            })
            .inc();
        if !dead {
            self.metrics.retries.inc();
        }
        if let Some(obs) = &self.observer {
            obs.on_error(d, &msg, dead);
        }
    }

    async fn purge_loop(self, cancel: CancellationToken) {
        // Where the raw-body walk stands: bodies before it are expired or kept
        // on purpose (dead letters). Starts at the oldest body left.
        let mut bodies_after = 0i64;
        loop {
            let cutoff = self.clock.now_ms() - self.config.archive_retention.as_millis() as i64;
            let mut erased = 0;
            loop {
                match purge_expired(&self.db, cutoff).await {
                    Ok(r) if r.archive_rows > 0 => {
                        erased += r.users_erased;
                        tracing::info!(
                            archive_rows = r.archive_rows,
                            users_erased = r.users_erased,
                            "retention purge"
                        );
                        if cancel.is_cancelled() {
                            return;
                        }
                        // One small transaction at a time; others go in between.
                        tokio::task::yield_now().await;
                    }
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "retention purge failed; will retry");
                        break;
                    }
                }
            }
            if erased > 0 {
                match crate::store::maintenance::truncate_wal(&self.db).await {
                    Ok(true) => {}
                    Ok(false) => tracing::debug!("WAL still in use after erasure; truncated later"),
                    Err(e) => tracing::warn!(error = %e, "truncating the WAL after erasure failed"),
                }
            }
            self.prune_feed(&cancel).await;
            bodies_after = self.expire_bodies(bodies_after, &cancel).await;
            tokio::select! {
                _ = tokio::time::sleep(self.config.purge_interval) => {}
                _ = cancel.cancelled() => return,
            }
        }
    }

    /// Drops the raw bodies of applied deliveries past the raw-body retention,
    /// a bounded range of the inbox per transaction; returns where the walk
    /// stopped (the next run starts there).
    async fn expire_bodies(&self, mut after: i64, cancel: &CancellationToken) -> i64 {
        let cutoff = self.clock.now_ms() - self.config.raw_body_retention.as_millis() as i64;
        let mut total = 0;
        loop {
            match crate::store::maintenance::expire_bodies(&self.db, after, cutoff, 2000).await {
                Ok(r) => {
                    total += r.deleted;
                    after = r.next_after;
                    if !r.more {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "raw-body retention failed; will retry");
                    break;
                }
            }
            if cancel.is_cancelled() {
                break;
            }
            tokio::task::yield_now().await;
        }
        if total > 0 {
            tracing::info!(bodies = total, "raw bodies past their retention dropped");
        }
        after
    }

    /// Drops change-feed entries past their retention that every consumer has read,
    /// in small batches so the write lock is never held for long.
    async fn prune_feed(&self, cancel: &CancellationToken) {
        let cutoff = self.clock.now_ms() - self.config.feed_retention.as_millis() as i64;
        let mut total = 0;
        loop {
            match prune_feed(&self.db, cutoff, 5000).await {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(e) => {
                    tracing::warn!(error = %e, "change-feed pruning failed; will retry");
                    break;
                }
            }
            if cancel.is_cancelled() {
                break;
            }
        }
        if total > 0 {
            tracing::info!(entries = total, "change feed pruned");
        }
    }
}

/// Same entity key, same worker: that is what keeps one partition in order.
fn partition(d: &Delivery, n: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    d.entity_key.as_deref().unwrap_or(&d.svix_id).hash(&mut h);
    (h.finish() % n as u64) as usize
}

/// Exponential backoff with ±25% jitter, so retries of a burst spread out.
pub fn backoff(c: &ProcessorConfig, attempts: u32) -> Duration {
    let exp = c
        .retry_base
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(20))
        .min(c.retry_max);
    let jitter = rand::random::<f64>() * 0.5 + 0.75;
    exp.mul_f64(jitter)
}

/// What a [`Processor::drain`] did.
#[derive(Debug, Default, Clone, Copy)]
pub struct DrainReport {
    pub applied: u64,
    pub failed: u64,
    pub elapsed: Duration,
}

impl DrainReport {
    pub fn per_second(&self) -> f64 {
        self.applied as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl Processor {
    /// Applies every due event with one worker, in arrival order, batch by batch,
    /// and returns when none is left (replay, benchmarks). `progress` prints a
    /// line to stderr every few seconds.
    pub async fn drain(&self, progress: bool) -> Result<DrainReport, StoreError> {
        let started = std::time::Instant::now();
        let mut last_report = started;
        let mut report = DrainReport::default();
        loop {
            let now = self.clock.now_ms();
            let lease_until = now + self.config.lease.as_millis() as i64;
            let rows = self
                .db
                .claim(now, lease_until, self.config.batch_max as i64)
                .await?;
            if rows.is_empty() {
                break;
            }
            let n = rows.len() as u64;
            let mut jobs: Vec<(Delivery, ())> = rows.into_iter().map(|d| (d, ())).collect();
            let failed_before = self.count_failures(&mut jobs).await;
            report.applied += n - failed_before;
            report.failed += failed_before;
            if progress && last_report.elapsed() >= Duration::from_secs(3) {
                last_report = std::time::Instant::now();
                eprintln!(
                    "replay: {} applied, {} failed, {:.0} events/s",
                    report.applied,
                    report.failed,
                    report.applied as f64 / started.elapsed().as_secs_f64()
                );
            }
        }
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// Applies a batch like a worker does; returns how many failed.
    async fn count_failures(&self, jobs: &mut [(Delivery, ())]) -> u64 {
        if let Ok(outcomes) = self.apply_all(jobs).await {
            for ((d, _), o) in jobs.iter().zip(outcomes) {
                self.applied_ok(d, o);
            }
            return 0;
        }
        let mut failed = 0;
        for (d, _) in jobs.iter() {
            match self.apply_all(std::slice::from_ref(&(d.clone(), ()))).await {
                Ok(o) => self.applied_ok(d, o[0]),
                Err(e) => {
                    failed += 1;
                    self.failed(d, &e).await;
                }
            }
        }
        failed
    }
}
