//! Reconciliation inside `serve`: a backfill pass (with deletion
//! reconciliation and its guard) every `CLERKSYNC_RECONCILE_EVERY`, or when
//! `POST /admin/reconcile` (or `clerksync backfill --url`) asks for one.
//!
//! Owns: the settings of scheduled passes and the Clerk key the server uses
//! ([`ReconcileSettings`]); one pass at a time **across every node sharing
//! the database**, through a lease row in the store (`store::lease`), renewed
//! while the pass runs and expiring, so a killed node's lease is taken over
//! once it lapses (the pass then resumes from its checkpoints); the schedule
//! (the next pass is due `every` after the last one finished on any node);
//! this node's progress, the last result (kept in the lease row, so every
//! node answers alike), the `clerksync_reconcile_*` metrics and the drift
//! alert. Must never: run a pass without holding the lease (a pass that loses
//! it stops), delete beyond the guard (`max_delete_share`, unless a request
//! says `force`), log the key, or block a request handler on a pass.

use crate::alerts::Alerter;
use crate::backfill::client::{ClerkClient, ClientConfig, Rate, SecretKey, DEFAULT_API_URL};
use crate::backfill::{self as backfill_pass, Ending, Options, Progress, Report, Resource};
use crate::clock::Clock;
use crate::setting::Invalid;
use crate::store::db::Database;
use crate::store::lease;
use crate::telemetry::metrics::{
    Metrics, ReconcilePassLabels, ReconcileRecordLabels, ReconcileResourceLabels,
};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The lease row's name.
pub const LEASE: &str = "reconcile";
/// A pass renews its lease every third of this; a node killed mid-pass holds
/// it at most this long.
pub const DEFAULT_LEASE_SECS: u64 = 60;
/// The delete guard of server-run passes (as `clerksync backfill`'s default).
pub const DEFAULT_MAX_DELETE_SHARE: f64 = 0.1;

/// The settings of reconciliation in `serve` (flags, `CLERKSYNC_*`, config
/// file keys), checked by [`ReconcileSettings::build`].
#[derive(Debug, Default, Clone, Serialize, Deserialize, clap::Args)]
pub struct ReconcileSettings {
    /// Run a reconciliation pass this often, e.g. 24h, 30m, 90s (off when unset).
    #[arg(long, global = true, env = "CLERKSYNC_RECONCILE_EVERY")]
    pub reconcile_every: Option<String>,
    /// A server-run pass refuses to delete more than this share of a resource (0..1).
    #[arg(long, global = true, env = "CLERKSYNC_RECONCILE_MAX_DELETE_SHARE")]
    pub reconcile_max_delete_share: Option<f64>,
    /// Resources a scheduled pass covers: comma-separated, or all [default: users,organizations,memberships].
    #[arg(long, global = true, env = "CLERKSYNC_RECONCILE_RESOURCES")]
    pub reconcile_resources: Option<String>,
    /// Seconds a pass's lease lasts unrenewed (a killed node's pass is taken over after it).
    #[arg(long, global = true, env = "CLERKSYNC_RECONCILE_LEASE_SECS")]
    pub reconcile_lease_secs: Option<u64>,
    /// The Clerk instance's secret key (sk_live_... / sk_test_...): prefer the variable.
    #[arg(
        long,
        global = true,
        env = "CLERKSYNC_CLERK_SECRET_KEY",
        hide_env_values = true,
        hide = true
    )]
    pub clerk_secret_key: Option<String>,
    /// Base URL of Clerk's Backend API (the client appends /v1/...).
    #[arg(long, global = true, env = "CLERKSYNC_CLERK_API_URL")]
    pub clerk_api_url: Option<String>,
    /// Requests to Clerk allowed, e.g. 1000/10s, or off [default: by key].
    #[arg(long, global = true, env = "CLERKSYNC_CLERK_RATE")]
    pub clerk_rate: Option<String>,
}

/// `90s`, `30m`, `24h`, `7d`.
pub fn parse_every(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let bad = || format!("{s:?} is not a duration: use a number and s, m, h or d, e.g. 24h");
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let secs = match unit.trim() {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(bad()),
    };
    if secs == 0 {
        return Err("must be at least 1s".into());
    }
    Ok(Duration::from_secs(secs))
}

impl ReconcileSettings {
    pub fn build(&self) -> Result<ReconcileConfig, Invalid> {
        let every = match self.reconcile_every.as_deref().map(str::trim) {
            None | Some("") | Some("off") => None,
            Some(s) => {
                Some(parse_every(s).map_err(|m| Invalid::new("CLERKSYNC_RECONCILE_EVERY", m))?)
            }
        };
        let share = self
            .reconcile_max_delete_share
            .unwrap_or(DEFAULT_MAX_DELETE_SHARE);
        if !(0.0..=1.0).contains(&share) {
            return Err(Invalid::new(
                "CLERKSYNC_RECONCILE_MAX_DELETE_SHARE",
                "must be between 0 and 1",
            ));
        }
        let resources = match &self.reconcile_resources {
            Some(s) => Resource::parse_list(s)
                .map_err(|e| Invalid::new("CLERKSYNC_RECONCILE_RESOURCES", e.to_string()))?,
            None => Resource::DEFAULT.to_vec(),
        };
        let lease_secs = self.reconcile_lease_secs.unwrap_or(DEFAULT_LEASE_SECS);
        if !(3..=3600).contains(&lease_secs) {
            return Err(Invalid::new(
                "CLERKSYNC_RECONCILE_LEASE_SECS",
                "must be between 3 and 3600 seconds",
            ));
        }
        let client = match self.clerk_secret_key.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(k) => {
                let key = SecretKey::parse(k)
                    .map_err(|e| Invalid::new("CLERKSYNC_CLERK_SECRET_KEY", e.to_string()))?;
                let url = self.clerk_api_url.as_deref().unwrap_or(DEFAULT_API_URL);
                let mut c = ClientConfig::new(url, key)
                    .map_err(|e| Invalid::new("CLERKSYNC_CLERK_API_URL", e.to_string()))?;
                if let Some(r) = &self.clerk_rate {
                    c.rate = Rate::parse(r)
                        .map_err(|e| Invalid::new("CLERKSYNC_CLERK_RATE", e.to_string()))?;
                }
                Some(c)
            }
        };
        if every.is_some() && client.is_none() {
            return Err(Invalid::new(
                "CLERKSYNC_RECONCILE_EVERY",
                "a pass lists the instance through Clerk's Backend API: set CLERKSYNC_CLERK_SECRET_KEY to the instance's secret key (sk_live_... or sk_test_...), or unset CLERKSYNC_RECONCILE_EVERY",
            ));
        }
        Ok(ReconcileConfig {
            every,
            client,
            max_delete_share: share,
            resources,
            lease: Duration::from_secs(lease_secs),
        })
    }
}

/// The checked reconciliation configuration.
#[derive(Debug, Clone)]
pub struct ReconcileConfig {
    /// None: no scheduled passes (`POST /admin/reconcile` still runs one).
    pub every: Option<Duration>,
    /// None: no key; the server cannot run a pass.
    pub client: Option<ClientConfig>,
    pub max_delete_share: f64,
    /// What a scheduled pass (and a request naming none) covers.
    pub resources: Vec<Resource>,
    pub lease: Duration,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig {
            every: None,
            client: None,
            max_delete_share: DEFAULT_MAX_DELETE_SHARE,
            resources: Resource::DEFAULT.to_vec(),
            lease: Duration::from_secs(DEFAULT_LEASE_SECS),
        }
    }
}

/// What `POST /admin/reconcile` may choose (all optional).
#[derive(Debug, Default, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PassRequest {
    /// Resources to list [default: the server's CLERKSYNC_RECONCILE_RESOURCES].
    pub resources: Option<Vec<String>>,
    /// Compare and report the drift; change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Delete even beyond the server's CLERKSYNC_RECONCILE_MAX_DELETE_SHARE.
    #[serde(default)]
    pub force: bool,
}

/// Why a pass did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("this server has no Clerk key: set CLERKSYNC_CLERK_SECRET_KEY on the server to let it run a pass")]
    NoKey,
    #[error("a reconciliation pass is already running{0} (GET /admin/reconcile shows it)")]
    Busy(&'static str),
    #[error("{0}")]
    BadRequest(String),
    #[error("database error: {0}")]
    Db(#[from] crate::store::StoreError),
}

/// What one resource's pass did, as kept and shown.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ResourceResult {
    pub resource: String,
    pub seen: i64,
    pub created: i64,
    pub updated: i64,
    pub deleted: i64,
    pub unchanged: i64,
    /// Local entities Clerk did not list (deletion candidates).
    pub missing: i64,
    /// Created + updated + deleted (a dry run: + missing): what webhooks missed.
    pub drift: i64,
    /// `complete`, `no_reconcile`, `refused` (the delete guard), `dry_run`.
    pub ending: String,
}

/// The last pass that ended, on any node.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PassResult {
    /// `schedule` or `request`.
    pub trigger: String,
    pub dry_run: bool,
    /// unix ms.
    pub started_at: i64,
    pub finished_at: i64,
    /// Every resource listed and applied (a refusal by the guard is not an error).
    pub ok: bool,
    /// Why it failed, when it did.
    #[schema(required = true)]
    pub error: Option<String>,
    pub requests: u64,
    /// Requests Clerk answered 429.
    pub throttled: u64,
    /// Sum of the resources' drift.
    pub drift: i64,
    pub resources: Vec<ResourceResult>,
}

/// A pass in progress.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Running {
    /// `this` (this node runs it; progress below) or `other` (another node
    /// sharing the database holds the lease).
    pub node: String,
    #[schema(required = true)]
    pub trigger: Option<String>,
    #[schema(required = true)]
    pub dry_run: Option<bool>,
    /// unix ms.
    #[schema(required = true)]
    pub started_at: Option<i64>,
    /// Per resource, in pass order: phase (`pending`, `listing`, `reconciling`,
    /// `done`), records seen, Clerk's total when known, created, updated, deleted.
    pub resources: Vec<ResourceProgress>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ResourceProgress {
    pub resource: String,
    pub phase: String,
    pub seen: i64,
    #[schema(required = true)]
    pub total: Option<u64>,
    pub created: i64,
    pub updated: i64,
    pub deleted: i64,
}

impl ResourceProgress {
    fn pending(r: Resource) -> Self {
        ResourceProgress {
            resource: r.name().into(),
            phase: "pending".into(),
            seen: 0,
            total: None,
            created: 0,
            updated: 0,
            deleted: 0,
        }
    }
}

/// `GET /admin/reconcile`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReconcileStatus {
    /// `idle` or `running`.
    pub status: String,
    /// Seconds between scheduled passes; null when not scheduled.
    #[schema(required = true)]
    pub every_secs: Option<u64>,
    /// Whether this server has a Clerk key (can run a pass at all).
    pub key_configured: bool,
    #[schema(required = true)]
    pub running: Option<Running>,
    #[schema(required = true)]
    pub last: Option<PassResult>,
    /// unix ms of the next scheduled pass; null when not scheduled.
    #[schema(required = true)]
    pub next_run_at: Option<i64>,
}

/// `POST /admin/reconcile` (202).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PassStarted {
    /// `started`.
    pub status: String,
    pub started_at: i64,
    pub resources: Vec<String>,
    pub dry_run: bool,
}

struct Local {
    running: Option<Running>,
    task: Option<JoinHandle<()>>,
}

/// Runs passes for this node. Cheap to share; every method is safe to call
/// from a request handler (a pass runs on its own task).
pub struct Reconciler {
    db: Database,
    config: ReconcileConfig,
    /// This node's name in the lease row: random per process, so a restarted
    /// node does not mistake its predecessor's lease for its own.
    holder: String,
    metrics: Arc<Metrics>,
    alerts: Arc<Alerter>,
    clock: Arc<dyn Clock>,
    cancel: CancellationToken,
    local: Mutex<Local>,
}

#[derive(Clone, Copy)]
enum Trigger {
    Schedule,
    Request,
}

impl Trigger {
    fn name(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Request => "request",
        }
    }
}

impl Reconciler {
    pub fn new(
        db: Database,
        config: ReconcileConfig,
        metrics: Arc<Metrics>,
        alerts: Arc<Alerter>,
        clock: Arc<dyn Clock>,
        cancel: CancellationToken,
    ) -> Arc<Reconciler> {
        Arc::new(Reconciler {
            db,
            config,
            holder: format!(
                "{}-{}-{:08x}",
                std::process::id(),
                crate::clock::system().now_ms(),
                rand::random::<u32>()
            ),
            metrics,
            alerts,
            clock,
            cancel,
            local: Mutex::new(Local {
                running: None,
                task: None,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lease_ms(&self) -> i64 {
        self.config.lease.as_millis() as i64
    }

    /// Where passes stand: this node's progress, another node's lease, the
    /// last result and the next scheduled pass.
    pub async fn status(&self) -> Result<ReconcileStatus, crate::store::StoreError> {
        let row = lease::load(&self.db, LEASE).await?;
        let now = self.clock.now_ms();
        let mine = self.lock().running.clone();
        let running = match (mine, &row) {
            (Some(r), _) => Some(r),
            (None, Some(l)) if l.held(now) => Some(Running {
                node: "other".into(),
                trigger: None,
                dry_run: None,
                started_at: l.started_at,
                resources: Vec::new(),
            }),
            _ => None,
        };
        let last = row
            .as_ref()
            .and_then(|l| l.last_result.as_deref())
            .and_then(|t| serde_json::from_str::<PassResult>(t).ok());
        let next_run_at = self.config.every.map(|every| {
            let last = row.as_ref().and_then(|l| l.last_finished_at);
            match last {
                Some(t) => t + every.as_millis() as i64,
                None => now,
            }
        });
        Ok(ReconcileStatus {
            status: if running.is_some() { "running" } else { "idle" }.into(),
            every_secs: self.config.every.map(|d| d.as_secs()),
            key_configured: self.config.client.is_some(),
            running,
            last,
            next_run_at,
        })
    }

    /// Starts a pass now (`POST /admin/reconcile`), unless one runs anywhere.
    pub async fn request(self: &Arc<Self>, req: PassRequest) -> Result<PassStarted, StartError> {
        let resources = match &req.resources {
            Some(list) if !list.is_empty() => Resource::parse_list(&list.join(","))
                .map_err(|e| StartError::BadRequest(e.to_string()))?,
            _ => self.config.resources.clone(),
        };
        self.start(
            Trigger::Request,
            resources,
            req.dry_run,
            req.force,
            i64::MAX,
        )
        .await
    }

    async fn start(
        self: &Arc<Self>,
        trigger: Trigger,
        resources: Vec<Resource>,
        dry_run: bool,
        force: bool,
        finished_before: i64,
    ) -> Result<PassStarted, StartError> {
        let Some(client_config) = self.config.client.clone() else {
            return Err(StartError::NoKey);
        };
        if self.lock().running.is_some() {
            return Err(StartError::Busy(" on this node"));
        }
        let now = self.clock.now_ms();
        let got = lease::acquire(
            &self.db,
            LEASE,
            &self.holder,
            now,
            self.lease_ms(),
            finished_before,
        )
        .await?;
        if !got {
            return Err(StartError::Busy(" on a node sharing this database"));
        }
        let opts = Options {
            resources: resources.clone(),
            dry_run,
            max_delete_share: self.config.max_delete_share,
            force,
            ..Options::default()
        };
        let running = Running {
            node: "this".into(),
            trigger: Some(trigger.name().into()),
            dry_run: Some(dry_run),
            started_at: Some(now),
            resources: resources
                .iter()
                .map(|r| ResourceProgress::pending(*r))
                .collect(),
        };
        {
            // The lease excludes every other pass, this node's included.
            let mut local = self.lock();
            local.running = Some(running);
            let me = self.clone();
            local.task = Some(tokio::spawn(async move {
                me.run_pass(trigger, client_config, opts, now).await
            }));
        }
        tracing::info!(
            trigger = trigger.name(),
            dry_run,
            resources = %resources.iter().map(|r| r.name()).collect::<Vec<_>>().join(","),
            "reconciliation pass started"
        );
        Ok(PassStarted {
            status: "started".into(),
            started_at: now,
            resources: resources.iter().map(|r| r.name().to_string()).collect(),
            dry_run,
        })
    }

    fn observe(&self, p: &Progress) {
        let mut local = self.lock();
        if let Some(r) = local.running.as_mut() {
            if let Some(x) = r.resources.iter_mut().find(|x| x.resource == p.resource) {
                x.phase = p.phase.into();
                x.seen = p.seen;
                x.total = p.total;
                x.created = p.created;
                x.updated = p.updated;
                x.deleted = p.deleted;
            }
        }
    }

    /// One pass, holding the lease: renewed every third of its length; a
    /// pass whose lease was taken (this node stalled past it) stops, as does
    /// one the server's shutdown interrupts (the next holder resumes it from
    /// its checkpoints).
    async fn run_pass(
        self: Arc<Self>,
        trigger: Trigger,
        client_config: ClientConfig,
        opts: Options,
        started_at: i64,
    ) {
        self.metrics.reconcile.running.set(1);
        let clock = Instant::now();
        let outcome: Result<Report, String> = match ClerkClient::new(client_config) {
            Err(e) => Err(e.to_string()),
            Ok(client) => {
                let me = self.clone();
                let observer = move |p: &Progress| me.observe(p);
                let pass = backfill_pass::run(&self.db, &client, &opts, &observer);
                tokio::select! {
                    r = pass => r.map_err(|e| e.to_string()),
                    why = self.hold_lease() => Err(why),
                    _ = self.cancel.cancelled() => Err("stopped by the server's shutdown; the next pass resumes from its checkpoints".into()),
                }
            }
        };
        let elapsed = clock.elapsed();
        let finished_at = self.clock.now_ms();
        let result = self.record(trigger, &opts, started_at, finished_at, elapsed, outcome);
        // A pass that changed nothing (dry) or was cut short by shutdown does
        // not move the schedule: the repair it was for is still due.
        let counts = !opts.dry_run && !self.cancel.is_cancelled();
        let text = serde_json::to_string(&result).unwrap_or_default();
        if let Err(e) = lease::release(
            &self.db,
            LEASE,
            &self.holder,
            counts.then_some(finished_at),
            &text,
        )
        .await
        {
            tracing::warn!(error = %e, "reconciliation: releasing the lease failed; it expires on its own");
        }
        self.metrics.reconcile.running.set(0);
        self.lock().running = None;
    }

    /// Renews the lease until it cannot; returns why.
    async fn hold_lease(&self) -> String {
        let every = self.config.lease / 3;
        loop {
            tokio::time::sleep(every).await;
            let now = self.clock.now_ms();
            match lease::renew(&self.db, LEASE, &self.holder, now, self.lease_ms()).await {
                Ok(true) => {}
                Ok(false) => {
                    return "the lease expired before it was renewed (another node may run the pass now)".into()
                }
                // A blip: the lease still has two thirds of its time.
                Err(e) => tracing::warn!(error = %e, "reconciliation: renewing the lease failed"),
            }
        }
    }

    /// Metrics, the drift alert and a log line for a pass that ended; the
    /// result kept in the lease row.
    fn record(
        &self,
        trigger: Trigger,
        opts: &Options,
        started_at: i64,
        finished_at: i64,
        elapsed: Duration,
        outcome: Result<Report, String>,
    ) -> PassResult {
        let m = &self.metrics.reconcile;
        m.duration_seconds.observe(elapsed.as_secs_f64());
        let (report, error) = match outcome {
            Ok(r) => (Some(r), None),
            Err(e) => (None, Some(e)),
        };
        let resources: Vec<ResourceResult> = report
            .iter()
            .flat_map(|r| r.resources.iter())
            .map(|x| ResourceResult {
                resource: x.resource.to_string(),
                seen: x.seen,
                created: x.created,
                updated: x.updated,
                deleted: x.deleted,
                unchanged: x.unchanged,
                missing: x.missing,
                drift: x.drift(),
                ending: match x.ending {
                    Ending::Complete => "complete",
                    Ending::NoReconcile => "no_reconcile",
                    Ending::Refused => "refused",
                    Ending::DryRun => "dry_run",
                }
                .into(),
            })
            .collect();
        let (requests, throttled) = report
            .as_ref()
            .map(|r| (r.requests, r.throttled))
            .unwrap_or((0, 0));
        m.requests.inc_by(requests);
        m.throttled.inc_by(throttled);
        for x in &resources {
            for (outcome, n) in [
                ("seen", x.seen),
                ("created", x.created),
                ("updated", x.updated),
                ("deleted", x.deleted),
                ("unchanged", x.unchanged),
            ] {
                m.records
                    .get_or_create(&ReconcileRecordLabels {
                        resource: x.resource.clone(),
                        outcome: outcome.into(),
                    })
                    .inc_by(n.max(0) as u64);
            }
            m.last_drift
                .get_or_create(&ReconcileResourceLabels {
                    resource: x.resource.clone(),
                })
                .set(x.drift);
        }
        let refused = resources.iter().any(|x| x.ending == "refused");
        let label = match (&error, opts.dry_run, refused) {
            (Some(_), _, _) => "failed",
            (None, true, _) => "dry_run",
            (None, false, true) => "refused",
            (None, false, false) => "complete",
        };
        m.passes
            .get_or_create(&ReconcilePassLabels {
                result: label.into(),
            })
            .inc();
        if error.is_none() && !opts.dry_run && !refused {
            m.last_success_timestamp.set(finished_at / 1000);
        }
        let drift: i64 = resources.iter().map(|x| x.drift).sum();
        let per: Vec<(&str, i64)> = resources
            .iter()
            .map(|x| (x.resource.as_str(), x.drift))
            .collect();
        self.alerts.reconcile_drift(&per, opts.dry_run);
        match &error {
            None => tracing::info!(
                trigger = trigger.name(),
                drift,
                requests,
                throttled,
                seconds = elapsed.as_secs_f64(),
                result = label,
                "reconciliation pass finished"
            ),
            Some(e) => tracing::warn!(
                trigger = trigger.name(),
                error = %e,
                "reconciliation pass failed"
            ),
        }
        PassResult {
            trigger: trigger.name().into(),
            dry_run: opts.dry_run,
            started_at,
            finished_at,
            ok: error.is_none(),
            error,
            requests,
            throttled,
            drift,
            resources,
        }
    }

    /// Starts a scheduled pass whenever one is due, until `cancel`. Every node
    /// runs this; the lease lets one of them run each pass, and the shared
    /// last-finished time makes the others wait for the next.
    pub async fn run_schedule(self: Arc<Self>) {
        let Some(every) = self.config.every else {
            return;
        };
        // How often a waiting node looks again: soon enough to take over a
        // lapsed lease within about its length, rarely enough to cost nothing.
        let tick = every.min(self.config.lease / 3).max(Duration::from_secs(1));
        let every_ms = every.as_millis() as i64;
        loop {
            let now = self.clock.now_ms();
            let due = match lease::load(&self.db, LEASE).await {
                Ok(row) => {
                    let held = row.as_ref().is_some_and(|l| l.held(now));
                    let last = row.and_then(|l| l.last_finished_at);
                    !held && last.is_none_or(|t| t + every_ms <= now)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reconciliation schedule: reading the lease failed");
                    false
                }
            };
            if due && self.lock().running.is_none() {
                let resources = self.config.resources.clone();
                match self
                    .start(Trigger::Schedule, resources, false, false, now - every_ms)
                    .await
                {
                    Ok(_) | Err(StartError::Busy(_)) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "reconciliation schedule: a pass did not start")
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = self.cancel.cancelled() => return,
            }
        }
    }

    /// Waits for this node's pass (cancelled with the server) to give back
    /// its lease.
    pub async fn stopped(&self) {
        let task = self.lock().task.take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_every("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_every("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_every(" 30m ").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_every("7d").unwrap(), Duration::from_secs(7 * 86400));
        for bad in ["", "h", "24", "24x", "0s", "-1h", "1.5h"] {
            assert!(parse_every(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_schedule_needs_a_key() {
        let s = ReconcileSettings {
            reconcile_every: Some("24h".into()),
            ..Default::default()
        };
        let e = s.build().unwrap_err();
        assert_eq!(e.name, "CLERKSYNC_RECONCILE_EVERY");
        assert!(e.message.contains("CLERKSYNC_CLERK_SECRET_KEY"), "{e}");
        let off = ReconcileSettings::default().build().unwrap();
        assert!(off.every.is_none() && off.client.is_none());
        let on = ReconcileSettings {
            reconcile_every: Some("24h".into()),
            clerk_secret_key: Some("sk_test_abc".into()),
            ..Default::default()
        }
        .build()
        .unwrap();
        assert_eq!(on.every, Some(Duration::from_secs(86400)));
        assert!(!format!("{on:?}").contains("sk_test_abc"));
    }
}
