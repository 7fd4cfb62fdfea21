//! Backfill and reconciliation from Clerk's Backend API.
//!
//! Owns: passes over the resources the store models (users, organizations,
//! memberships, ...): listing each in ascending creation order, page by page,
//! and applying every listed record **through `sync`'s apply path** as the
//! same change a `<family>.updated` webhook carrying it would make (source
//! `backfill`), so the version rules decide between webhook and backfill in
//! both directions; per-resource checkpoints (a killed pass continues where it
//! stopped); and, after a complete error-free listing, deletion of what Clerk
//! no longer has (reconciliation), behind a guard on the share deleted.
//!
//! Must never: write an entity table other than through `sync::apply_parsed`;
//! delete anything after a listing that failed or was cut short; hold a
//! database transaction across a request to Clerk; keep a whole resource in
//! memory (pages are streamed; the seen set lives in the database).
//!
//! How the sources show: audit and change-feed rows written by a backfill
//! carry the delivery key `backfill` (where a webhook's carry its svix-id),
//! deletions by reconciliation `reconcile: not in Clerk`. At equal versions a
//! webhook's svix-id (`msg_...`) orders after `backfill`, so the same state
//! arriving both ways is written once.

pub mod client;
pub mod schedule;

use crate::clerk::events::Action;
use crate::clerk::model::{parse_data, Change, Kind, Parsed, PayloadError};
use crate::store::backfill::{self as checkpoint, Checkpoint};
use crate::store::db::Database;
use crate::store::tx::begin;
use crate::sync::{apply_parsed, plan_batch, Delivery, SyncError};
use client::{ClerkClient, ClientError};
use futures::StreamExt;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// The delivery key of records applied by a backfill (audit and feed rows).
pub const SOURCE: &str = "backfill";
/// The delivery key of deletions made by reconciliation.
pub const RECONCILE_SOURCE: &str = "reconcile: not in Clerk";

/// A list endpoint of Clerk's Backend API and the kind it fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    Users,
    Organizations,
    Memberships,
    Invitations,
    Domains,
    Roles,
    Permissions,
    WaitlistEntries,
}

impl Resource {
    pub const ALL: [Resource; 8] = [
        Resource::Users,
        Resource::Organizations,
        Resource::Memberships,
        Resource::Invitations,
        Resource::Domains,
        Resource::Roles,
        Resource::Permissions,
        Resource::WaitlistEntries,
    ];
    /// What `clerksync backfill` does without `--resources`: what every
    /// instance has and what the read API serves.
    pub const DEFAULT: [Resource; 3] = [
        Resource::Users,
        Resource::Organizations,
        Resource::Memberships,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Resource::Users => "users",
            Resource::Organizations => "organizations",
            Resource::Memberships => "memberships",
            Resource::Invitations => "invitations",
            Resource::Domains => "domains",
            Resource::Roles => "roles",
            Resource::Permissions => "permissions",
            Resource::WaitlistEntries => "waitlist_entries",
        }
    }

    pub fn kind(self) -> Kind {
        match self {
            Resource::Users => Kind::User,
            Resource::Organizations => Kind::Organization,
            Resource::Memberships => Kind::Membership,
            Resource::Invitations => Kind::Invitation,
            Resource::Domains => Kind::Domain,
            Resource::Roles => Kind::Role,
            Resource::Permissions => Kind::Permission,
            Resource::WaitlistEntries => Kind::WaitlistEntry,
        }
    }

    /// The list endpoint, after `/v1`; for a resource Clerk lists only per
    /// organization, the list under `/organizations/{id}`.
    pub fn path(self) -> &'static str {
        match self {
            Resource::Users => "/users",
            Resource::Organizations => "/organizations",
            // Instance-wide since 2025; before, only per organization.
            Resource::Memberships => "/organization_memberships",
            // Instance-wide (`ListInstanceOrganizationInvitations`), every
            // status unless filtered; ordered by `order_by` like the others.
            Resource::Invitations => "/organization_invitations",
            // Only `/organizations/{id}/domains` (no instance-wide list, no
            // `order_by`).
            Resource::Domains => "/domains",
            Resource::Roles => "/organization_roles",
            Resource::Permissions => "/organization_permissions",
            Resource::WaitlistEntries => "/waitlist_entries",
        }
    }

    /// `/users` alone answers a bare array; every other list `{data, total_count}`.
    fn bare_array(self) -> bool {
        self == Resource::Users
    }

    /// Whether Clerk lists this resource only organization by organization.
    fn per_organization(self) -> bool {
        match self {
            Resource::Domains => true,
            Resource::Users
            | Resource::Organizations
            | Resource::Memberships
            | Resource::Invitations
            | Resource::Roles
            | Resource::Permissions
            | Resource::WaitlistEntries => false,
        }
    }

    /// `users,organizations,...` (or `all`).
    pub fn parse_list(s: &str) -> Result<Vec<Resource>, BackfillError> {
        if s.trim() == "all" {
            return Ok(Resource::ALL.to_vec());
        }
        let mut out = Vec::new();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let r = Resource::ALL
                .into_iter()
                .find(|r| r.name() == name)
                .ok_or_else(|| BackfillError::UnknownResource(name.to_string()))?;
            if !out.contains(&r) {
                out.push(r);
            }
        }
        if out.is_empty() {
            return Err(BackfillError::UnknownResource(s.to_string()));
        }
        // Parents before children, whatever order was asked for.
        out.sort_by_key(|r| Resource::ALL.iter().position(|a| a == r));
        Ok(out)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error("unknown resource {0:?}: expected a comma-separated list of {names} (or all)", names = Resource::ALL.map(Resource::name).join(", "))]
    UnknownResource(String),
    #[error("--max-delete-share must be between 0 and 1, not {0}")]
    BadShare(f64),
    #[error(transparent)]
    Clerk(#[from] ClientError),
    #[error("database error: {0}")]
    Db(#[from] crate::store::StoreError),
    #[error("applying a page of {resource} failed: {source}")]
    Apply {
        resource: &'static str,
        source: SyncError,
    },
}

/// What a run does.
#[derive(Debug, Clone)]
pub struct Options {
    pub resources: Vec<Resource>,
    /// Lists and compares; writes nothing (not even checkpoints).
    pub dry_run: bool,
    /// Apply what Clerk lists, never delete.
    pub no_delete: bool,
    /// Refuse a reconciliation that would delete more than this share of a
    /// resource's live entities...
    pub max_delete_share: f64,
    /// ...unless forced.
    pub force: bool,
    /// Start new passes even where one was interrupted.
    pub restart: bool,
    /// Records per request (Clerk's maximum is 500).
    pub page_size: u32,
    /// Pages requested ahead of the one being applied.
    pub pages_ahead: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            resources: Resource::DEFAULT.to_vec(),
            dry_run: false,
            no_delete: false,
            max_delete_share: 0.1,
            force: false,
            restart: false,
            page_size: 500,
            pages_ahead: 4,
        }
    }
}

impl Options {
    pub fn validate(&self) -> Result<(), BackfillError> {
        if !(0.0..=1.0).contains(&self.max_delete_share) {
            return Err(BackfillError::BadShare(self.max_delete_share));
        }
        Ok(())
    }
}

/// How a resource's pass ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    /// Listed, applied and reconciled.
    Complete,
    /// Listed and applied; deletions left alone (`--no-delete`, or records
    /// that could not apply made the listing incomplete).
    NoReconcile,
    /// Reconciliation refused: it would delete more than the allowed share.
    Refused,
    /// Nothing written.
    DryRun,
}

/// What a pass did (or, dry, would do) to one resource.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ResourceReport {
    pub resource: &'static str,
    pub pass_id: String,
    /// Where this run began listing (non-zero: a resumed pass).
    pub resumed_at: i64,
    pub seen: i64,
    pub created: i64,
    pub updated: i64,
    pub unchanged: i64,
    pub deleted: i64,
    /// Local entities the listing did not contain (the deletion candidates).
    pub missing: i64,
    pub live_before: i64,
    /// Records that could not apply (logged by id); they make the pass incomplete.
    pub invalid: i64,
    pub ending: Ending,
}

impl ResourceReport {
    /// Anything to create, update or delete.
    pub fn drift(&self) -> i64 {
        self.created
            + self.updated
            + self.deleted.max(if self.ending == Ending::DryRun {
                self.missing
            } else {
                0
            })
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub resources: Vec<ResourceReport>,
    pub requests: u64,
    pub throttled: u64,
    pub elapsed_ms: u64,
}

impl Report {
    pub fn refused(&self) -> bool {
        self.resources.iter().any(|r| r.ending == Ending::Refused)
    }

    /// Records applied per second over the run.
    pub fn per_second(&self) -> f64 {
        let n: i64 = self.resources.iter().map(|r| r.seen).sum();
        n as f64 / (self.elapsed_ms.max(1) as f64 / 1000.0)
    }
}

/// Where a pass is, for progress bars and `GET /admin/reconcile`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Progress {
    pub resource: &'static str,
    /// `listing`, `reconciling`, `done`.
    pub phase: &'static str,
    pub seen: i64,
    /// Clerk's count, when known (it moves while we page).
    pub total: Option<u64>,
    pub created: i64,
    pub updated: i64,
    pub deleted: i64,
}

/// Told about progress after every page (a progress bar, log lines, the
/// server's status).
pub trait Observer: Send + Sync {
    fn progress(&self, p: &Progress);
}

impl<F: Fn(&Progress) + Send + Sync> Observer for F {
    fn progress(&self, p: &Progress) {
        self(p)
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Runs a pass over each resource of `opts`, in order.
pub async fn run(
    db: &Database,
    client: &ClerkClient,
    opts: &Options,
    observer: &dyn Observer,
) -> Result<Report, BackfillError> {
    opts.validate()?;
    let started = Instant::now();
    let mut reports = Vec::new();
    for &r in &opts.resources {
        let report = Pass::open(db, client, opts, r).await?.run(observer).await?;
        tracing::info!(
            resource = report.resource,
            seen = report.seen,
            created = report.created,
            updated = report.updated,
            deleted = report.deleted,
            missing = report.missing,
            ending = ?report.ending,
            "backfill pass finished"
        );
        reports.push(report);
    }
    Ok(Report {
        resources: reports,
        requests: client.stats.requests.load(Ordering::Relaxed),
        throttled: client.stats.throttled.load(Ordering::Relaxed),
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

/// One resource's pass in progress.
struct Pass<'a> {
    db: &'a Database,
    client: &'a ClerkClient,
    opts: &'a Options,
    resource: Resource,
    cp: Checkpoint,
    /// A dry run keeps what it listed here instead of in `backfill_seen`.
    dry_seen: HashSet<String>,
    invalid: i64,
    resumed_at: i64,
    total: Option<u64>,
    /// The writes of the page before, while they run.
    pending: Option<PageWriting>,
}

/// A page's writes on their task: the checkpoint they saved and the ids they applied.
type PageWriting = tokio::task::JoinHandle<Result<(Checkpoint, Vec<String>), BackfillError>>;

impl<'a> Pass<'a> {
    async fn open(
        db: &'a Database,
        client: &'a ClerkClient,
        opts: &'a Options,
        resource: Resource,
    ) -> Result<Pass<'a>, BackfillError> {
        let existing = checkpoint::load(db, resource.name()).await?;
        let cp = match existing {
            Some(cp) if cp.resumable() && !opts.restart && !opts.dry_run => {
                tracing::info!(resource = resource.name(), pass_id = %cp.pass_id, offset = cp.next_offset, "resuming an interrupted backfill pass");
                cp
            }
            _ => {
                let now = now_ms();
                let cp = Checkpoint {
                    resource: resource.name().to_string(),
                    pass_id: format!("{now}-{:08x}", rand::random::<u32>()),
                    started_at: now,
                    next_offset: 0,
                    status: "running".into(),
                    seen: 0,
                    created: 0,
                    updated: 0,
                    unchanged: 0,
                    deleted: 0,
                    finished_at: None,
                    note: None,
                };
                if !opts.dry_run {
                    checkpoint::start(db, &cp).await?;
                }
                cp
            }
        };
        Ok(Pass {
            db,
            client,
            opts,
            resource,
            resumed_at: cp.next_offset,
            cp,
            dry_seen: HashSet::new(),
            invalid: 0,
            total: None,
            pending: None,
        })
    }

    fn progress(&self, observer: &dyn Observer, phase: &'static str) {
        observer.progress(&Progress {
            resource: self.resource.name(),
            phase,
            seen: self.cp.seen,
            total: self.total,
            created: self.cp.created,
            updated: self.cp.updated,
            deleted: self.cp.deleted,
        });
    }

    async fn run(mut self, observer: &dyn Observer) -> Result<ResourceReport, BackfillError> {
        let live_before = checkpoint::count_live(self.db, self.resource.kind()).await?;
        if self.cp.status == "running" {
            self.total = match self.resource {
                Resource::Users => Some(self.client.count("/users/count").await?),
                _ => None,
            };
            self.progress(observer, "listing");
            self.list(observer).await?;
            if !self.opts.dry_run {
                self.cp.status = "listed".into();
                checkpoint::save(self.db, &self.cp).await?;
            }
        }
        self.progress(observer, "reconciling");
        let (missing, ending) = self.reconcile().await?;
        if !self.opts.dry_run {
            self.cp.status = if ending == Ending::Refused {
                "refused"
            } else {
                "complete"
            }
            .into();
            self.cp.finished_at = Some(now_ms());
            checkpoint::save(self.db, &self.cp).await?;
        }
        self.progress(observer, "done");
        Ok(ResourceReport {
            resource: self.resource.name(),
            pass_id: self.cp.pass_id.clone(),
            resumed_at: self.resumed_at,
            seen: self.cp.seen,
            created: self.cp.created,
            updated: self.cp.updated,
            unchanged: self.cp.unchanged,
            deleted: self.cp.deleted,
            missing,
            live_before,
            invalid: self.invalid,
            ending,
        })
    }

    /// Lists from the checkpoint to the end, applying page by page. Pages are
    /// requested `pages_ahead` at a time (Clerk's latency, not its limit, is
    /// what bounds a single stream) and applied in order.
    ///
    /// Offset paging skips a row when rows before the offset are deleted
    /// between two requests (everything after shifts down). A skipped row that
    /// the store does not have yet would never be imported, so consecutive
    /// pages overlap by [`overlap`] rows: a page must start with a row the
    /// previous one ended with. When it does not, more rows than the overlap
    /// shifted, and listing backs up one page and continues from there
    /// (repeats are harmless: a record applies once under the version rules).
    async fn list(&mut self, observer: &dyn Observer) -> Result<(), BackfillError> {
        let listed = if self.resource.per_organization() {
            self.list_per_organization(observer).await
        } else {
            self.list_pages(observer).await
        };
        // The last page's writes, or the one running when listing failed: a
        // failed pass returns only once nothing of it is still writing.
        let settled = self.settle().await;
        listed.and(settled)
    }

    async fn list_pages(&mut self, observer: &dyn Observer) -> Result<(), BackfillError> {
        let limit = self.opts.page_size.clamp(1, 500);
        let ov = overlap(limit);
        let step = (limit - ov) as u64;
        let client = self.client;
        let (path, bare) = (self.resource.path(), self.resource.bare_array());
        // The ids the previous page ended with (what the next one must start with).
        let mut tail: Vec<String> = Vec::new();
        let mut first = (self.cp.next_offset - ov as i64).max(0) as u64;
        'stream: loop {
            let pages = futures::stream::iter((0u64..).map(move |i| first + i * step))
                .map(|offset| async move { (offset, client.list(path, bare, offset, limit).await) })
                .buffered(self.opts.pages_ahead.max(1));
            futures::pin_mut!(pages);
            while let Some((offset, page)) = pages.next().await {
                let page = page?;
                if self.total.is_none() {
                    self.total = page.total;
                }
                let n = page.records.len();
                // Each record is read once, here: its id for the overlap and
                // its object for the apply path.
                let records: Vec<Listed> = page.records.iter().map(|r| Listed::read(r)).collect();
                drop(page.records);
                let ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
                if offset > 0 && !tail.is_empty() && n > 0 && !tail.contains(&ids[0]) {
                    // Rows before this page went away mid-pass: back up.
                    tracing::debug!(
                        resource = self.resource.name(),
                        offset,
                        "the listing shifted; backing up a page"
                    );
                    first = offset.saturating_sub(limit as u64);
                    tail.clear();
                    continue 'stream;
                }
                // The overlap was applied with the page before: not again.
                let fresh: Vec<Listed> = records
                    .into_iter()
                    .zip(&ids)
                    .filter(|(_, id)| !tail.contains(id))
                    .map(|(r, _)| r)
                    .collect();
                tail = ids[n.saturating_sub(ov as usize)..].to_vec();
                // Parsed while the page before is still being written...
                let changes = self.parse_page(fresh);
                self.settle().await?;
                self.progress(observer, "listing");
                // ...and written while the next one is fetched and parsed.
                self.cp.next_offset = (offset + n as u64) as i64;
                self.pending = Some(tokio::spawn(write_page(self.page_write(changes))));
                if n < limit as usize {
                    break 'stream;
                }
            }
            break;
        }
        Ok(())
    }

    /// Lists a resource Clerk lists only under each organization (domains):
    /// every page of `/organizations/{id}{path}` for each live organization
    /// of the store, by id (so the organizations pass, which runs first,
    /// decides which organizations there are). Organizations are requested
    /// `pages_ahead` at a time and applied in order.
    ///
    /// The checkpoint's offset counts the organizations done. A resumed pass
    /// starts [`ORGS_BACK`] organizations before it: organizations created or
    /// deleted meanwhile shift the count, and a repeat is harmless; one still
    /// skipped is looked up by reconciliation before anything is deleted.
    async fn list_per_organization(
        &mut self,
        observer: &dyn Observer,
    ) -> Result<(), BackfillError> {
        let limit = self.opts.page_size.clamp(1, 500);
        let client = self.client;
        let path = self.resource.path();
        let skip = (self.cp.next_offset - ORGS_BACK).max(0);
        let mut index = 0i64;
        let mut after = String::new();
        loop {
            let orgs = checkpoint::live_after(self.db, Kind::Organization, &after, 500).await?;
            let Some(last) = orgs.last() else { break };
            after = last.clone();
            // The organizations before the resume point count as done.
            let mut todo = Vec::with_capacity(orgs.len());
            for org in orgs {
                if index < skip {
                    index += 1;
                } else {
                    todo.push(org);
                }
            }
            let lists = futures::stream::iter(todo)
                .map(|org| async move { list_under(client, &org, path, limit).await })
                .buffered(self.opts.pages_ahead.max(1));
            futures::pin_mut!(lists);
            while let Some(records) = lists.next().await {
                let records = records?;
                if !records.is_empty() {
                    let listed: Vec<Listed> = records.iter().map(|r| Listed::read(r)).collect();
                    drop(records);
                    let changes = self.parse_page(listed);
                    self.settle().await?;
                    // Saved with the organizations before this one done.
                    self.cp.next_offset = index;
                    self.pending = Some(tokio::spawn(write_page(self.page_write(changes))));
                }
                index += 1;
                self.cp.next_offset = index;
                if index % 100 == 0 && !self.opts.dry_run {
                    // After the write in flight, so checkpoints never go back.
                    self.settle().await?;
                    checkpoint::save(self.db, &self.cp).await?;
                }
                self.progress(observer, "listing");
            }
        }
        Ok(())
    }

    /// The changes a page's records make, as a `<family>.updated` webhook
    /// carrying each would; records that cannot apply are counted and logged.
    fn parse_page(&mut self, records: Vec<Listed>) -> Vec<Change> {
        let kind = self.resource.kind();
        let now = now_ms();
        let mut changes = Vec::with_capacity(records.len());
        for r in records {
            // The same parser as a webhook's `data`, so a listed record is
            // the change a `<family>.updated` carrying it would make.
            let parsed = r
                .data
                .and_then(|data| parse_data(kind, Action::Upsert, data, None, now / 1000));
            match parsed {
                Ok(Parsed::Change(c)) => changes.push(*c),
                Ok(Parsed::Unknown) => {}
                Err(e) => {
                    // The record is skipped, and the pass cannot reconcile:
                    // it did not see everything there is.
                    self.invalid += 1;
                    tracing::warn!(resource = self.resource.name(), entity_id = %r.id, error = %e, "a listed record cannot apply; skipped");
                }
            }
        }
        changes
    }

    /// A page's writes, owning what they need (they run on a task of their own).
    fn page_write(&self, changes: Vec<Change>) -> PageWrite {
        PageWrite {
            db: self.db.clone(),
            kind: self.resource.kind(),
            resource: self.resource.name(),
            changes,
            cp: self.cp.clone(),
            dry_run: self.opts.dry_run,
        }
    }

    /// Waits for the page being written, and takes its checkpoint (counters
    /// and position) as the pass's.
    async fn settle(&mut self) -> Result<(), BackfillError> {
        let Some(handle) = self.pending.take() else {
            return Ok(());
        };
        let (cp, ids) = match handle.await {
            Ok(written) => written?,
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                // Only the runtime shutting down cancels it: nothing is left to report to.
                Err(e) => panic!("a backfill page's writes were cancelled: {e}"),
            },
        };
        self.cp = cp;
        if self.opts.dry_run {
            self.dry_seen.extend(ids);
        }
        Ok(())
    }

    /// Applies one page in one transaction, then records it as listed (what
    /// listing pipelines; reconciliation calls it for one page at a time).
    async fn apply_page(&mut self, records: Vec<Listed>) -> Result<(), BackfillError> {
        let changes = self.parse_page(records);
        self.settle().await?;
        self.pending = Some(tokio::spawn(write_page(self.page_write(changes))));
        self.settle().await
    }

    /// Deletes what the complete listing did not contain, unless the pass
    /// may not (`--no-delete`, invalid records) or the guard refuses.
    /// Each candidate is asked for by id first: offset paging skips a row
    /// when an earlier one is deleted mid-pass, and only Clerk's 404 proves
    /// a row gone. One it still has is applied instead.
    async fn reconcile(&mut self) -> Result<(i64, Ending), BackfillError> {
        let kind = self.resource.kind();
        if self.opts.dry_run {
            let mut missing = 0;
            let mut after = String::new();
            loop {
                let ids = checkpoint::live_after(self.db, kind, &after, 1000).await?;
                let Some(last) = ids.last() else { break };
                after = last.clone();
                missing += ids.iter().filter(|id| !self.dry_seen.contains(*id)).count() as i64;
            }
            return Ok((missing, Ending::DryRun));
        }
        let missing = checkpoint::count_missing(self.db, kind, &self.cp).await?;
        if self.opts.no_delete || self.invalid > 0 {
            if self.invalid > 0 {
                self.cp.note = Some(format!(
                    "{} records could not apply: deletions skipped",
                    self.invalid
                ));
            }
            return Ok((missing, Ending::NoReconcile));
        }
        let live = checkpoint::count_live(self.db, kind).await?;
        if missing > 0
            && missing as f64 > self.opts.max_delete_share * live as f64
            && !self.opts.force
        {
            self.cp.note = Some(format!(
                "refused: would delete {missing} of {live} {} (more than {}); rerun with --force if Clerk really lost them",
                self.resource.name(),
                self.opts.max_delete_share
            ));
            tracing::warn!(
                resource = self.resource.name(),
                missing,
                live,
                "reconciliation refused by the delete guard"
            );
            return Ok((missing, Ending::Refused));
        }
        let mut after = String::new();
        loop {
            let batch = checkpoint::missing_after(self.db, kind, &self.cp, &after, 200).await?;
            let Some(last) = batch.last() else { break };
            after = last.0.clone();
            let mut gone = Vec::new();
            let mut still = Vec::new();
            for m in batch {
                match self.lookup(&m).await? {
                    Some(raw) => still.push(Listed::read(&raw)),
                    None => gone.push(m),
                }
            }
            if !still.is_empty() {
                // Skipped by the paging, not gone: applied like a listed page.
                self.apply_page(still).await?;
            }
            let now = now_ms();
            let deletes: Vec<Change> = gone
                .into_iter()
                .map(|(id, user_id, organization_id)| Change {
                    kind,
                    id,
                    delete: true,
                    // Deletes are final whatever their version; the pass's
                    // start orders it after everything it listed.
                    version: self.cp.started_at,
                    user_id,
                    organization_id,
                    data_json: "{}".into(),
                    user: None,
                })
                .collect();
            self.cp.deleted += deletes.len() as i64;
            apply_changes(self.db, deletes, RECONCILE_SOURCE, now)
                .await
                .map_err(|source| BackfillError::Apply {
                    resource: self.resource.name(),
                    source,
                })?;
            checkpoint::save(self.db, &self.cp).await?;
        }
        Ok((missing, Ending::Complete))
    }

    /// The record Clerk has for a deletion candidate, or None when it has none.
    async fn lookup(
        &self,
        m: &checkpoint::Missing,
    ) -> Result<Option<Box<RawValue>>, BackfillError> {
        let (id, user_id, org_id) = m;
        let path = match self.resource {
            Resource::Users => format!("/users/{id}"),
            Resource::Organizations => format!("/organizations/{id}"),
            Resource::Memberships => {
                let (Some(org), Some(user)) = (org_id, user_id) else {
                    return Ok(None);
                };
                let q = [("user_id", user.clone()), ("limit", "100".to_string())];
                let text = match self
                    .client
                    .get(&format!("/organizations/{org}/memberships"), &q)
                    .await
                {
                    Ok(t) => t,
                    Err(e) if e.is_not_found() => return Ok(None),
                    Err(e) => return Err(e.into()),
                };
                #[derive(serde::Deserialize)]
                struct List {
                    data: Vec<Box<RawValue>>,
                }
                let list: List = serde_json::from_str(&text).map_err(|e| ClientError::Shape {
                    path: "/organizations/{id}/memberships".into(),
                    message: e.to_string(),
                })?;
                let needle = format!("\"{id}\"");
                return Ok(list.data.into_iter().find(|r| r.get().contains(&needle)));
            }
            Resource::Invitations => {
                let Some(org) = org_id else { return Ok(None) };
                format!("/organizations/{org}/invitations/{id}")
            }
            Resource::Domains => {
                // No single-domain read: the organization's list.
                let Some(org) = org_id else { return Ok(None) };
                let needle = format!("\"{id}\"");
                let list = list_under(self.client, org, self.resource.path(), 500).await?;
                return Ok(list.into_iter().find(|r| r.get().contains(&needle)));
            }
            Resource::Roles => format!("/organization_roles/{id}"),
            Resource::Permissions => format!("/organization_permissions/{id}"),
            // No single-entry endpoint: the listing is all we know.
            Resource::WaitlistEntries => return Ok(None),
        };
        match self.client.get(&path, &[]).await {
            Ok(text) => Ok(Some(RawValue::from_string(text).map_err(|e| {
                ClientError::Shape {
                    path,
                    message: e.to_string(),
                }
            })?)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// Organizations a resumed per-organization pass lists again (see
/// `list_per_organization`).
const ORGS_BACK: i64 = 20;

/// Every record of `/organizations/{org}{path}` (`{data, total_count}`
/// pages, no `order_by`: the per-organization lists have none). An
/// organization deleted meanwhile (404) has none.
async fn list_under(
    client: &ClerkClient,
    org: &str,
    path: &str,
    limit: u32,
) -> Result<Vec<Box<RawValue>>, BackfillError> {
    #[derive(serde::Deserialize)]
    struct List {
        data: Vec<Box<RawValue>>,
    }
    let url = format!("/organizations/{org}{path}");
    let mut out = Vec::new();
    loop {
        let q = [
            ("limit", limit.to_string()),
            ("offset", out.len().to_string()),
        ];
        let text = match client.get(&url, &q).await {
            Ok(t) => t,
            Err(e) if e.is_not_found() => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let page: List = serde_json::from_str(&text).map_err(|e| ClientError::Shape {
            path: format!("/organizations/{{id}}{path}"),
            message: e.to_string(),
        })?;
        let n = page.data.len();
        out.extend(page.data);
        if n < limit as usize {
            return Ok(out);
        }
    }
}

/// Rows each page repeats of the one before: enough to notice a shift and to
/// absorb a few deletions without backing up.
fn overlap(limit: u32) -> u32 {
    if limit <= 1 {
        0
    } else {
        (limit / 10).clamp(1, 20)
    }
}

/// One page's writes, owned so they run on a task of their own while the
/// next page is fetched and parsed (SQLite's calls block the task making them).
struct PageWrite {
    db: Database,
    kind: Kind,
    resource: &'static str,
    changes: Vec<Change>,
    /// The pass's checkpoint with this page's position.
    cp: Checkpoint,
    dry_run: bool,
}

/// Counts what the page creates, updates or leaves as it is, applies it in
/// one transaction and then records it as listed; returns the checkpoint
/// after it and the page's ids.
async fn write_page(w: PageWrite) -> Result<(Checkpoint, Vec<String>), BackfillError> {
    let PageWrite {
        db,
        kind,
        resource,
        changes,
        mut cp,
        dry_run,
    } = w;
    let ids: Vec<String> = changes.iter().map(|c| c.id.clone()).collect();
    let local = checkpoint::local_versions(&db, kind, &ids).await?;
    for c in &changes {
        match local.get(&c.id) {
            None => cp.created += 1,
            Some((_, true)) => cp.unchanged += 1,
            Some((v, false)) if c.version > *v => cp.updated += 1,
            Some(_) => cp.unchanged += 1,
        }
    }
    cp.seen += changes.len() as i64;
    if dry_run {
        return Ok((cp, ids));
    }
    apply_changes(&db, changes, SOURCE, now_ms())
        .await
        .map_err(|source| BackfillError::Apply { resource, source })?;
    checkpoint::advance(&db, &cp, &ids).await?;
    Ok((cp, ids))
}

/// A listed record, read once: its id ("" when it has none: such a record
/// cannot apply anyway) and its object, or why it is not one.
struct Listed {
    id: String,
    data: Result<Map<String, Value>, PayloadError>,
}

impl Listed {
    fn read(raw: &RawValue) -> Listed {
        let data = match serde_json::from_str::<Value>(raw.get()) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err(PayloadError::NoData),
            Err(e) => Err(PayloadError::NotJson(e.to_string())),
        };
        let id = data
            .as_ref()
            .ok()
            .and_then(|m| m.get("id"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        Listed { id, data }
    }
}

/// Applies changes in one store transaction through `sync`, like the
/// processor applies a batch of deliveries: locks and rows taken for the
/// whole batch first (PostgreSQL), each change with its own delivery key.
/// Each gets a negative sequence number: no inbox row has one, so the
/// "already done?" check finds nothing and marking it done touches nothing.
pub async fn apply_changes(
    db: &Database,
    changes: Vec<Change>,
    source: &str,
    now: i64,
) -> Result<(), SyncError> {
    if changes.is_empty() {
        return Ok(());
    }
    let lock_entities = db.strategy().lock_entities;
    let parsed: Vec<Result<Parsed, PayloadError>> = changes
        .into_iter()
        .map(|c| Ok(Parsed::Change(Box::new(c))))
        .collect();
    let mut tx = begin(db).await?;
    let fut = async move {
        let seqs: Vec<i64> = (1..=parsed.len() as i64).map(|i| -i).collect();
        if lock_entities {
            plan_batch(&parsed).prepare(tx.as_mut(), &seqs).await?;
        } else {
            tx.prefetch_statuses(&seqs).await?;
        }
        for (seq, p) in seqs.into_iter().zip(parsed) {
            let d = Delivery {
                seq,
                svix_id: source.to_string(),
                event_type: String::new(),
                entity_key: None,
                svix_timestamp: now / 1000,
                event_timestamp: None,
                received_at: now,
                body: String::new(),
                attempts: 0,
            };
            apply_parsed(tx.as_mut(), &d, p, now).await?;
        }
        tx.commit().await?;
        Ok::<_, SyncError>(())
    };
    // As the processor runs a batch: the store knows how its calls complete.
    db.run_tx(fut).await?;
    Ok(())
}
