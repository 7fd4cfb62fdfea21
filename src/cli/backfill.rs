//! `clerksync backfill`: import what Clerk already has and reconcile deletions.
//!
//! Owns: the command's flags, reading the Clerk key from the environment only
//! (a flag would show it in `ps`), asking a running server to run the pass
//! (`--url`: `POST /admin/reconcile`, then following `GET /admin/reconcile`),
//! progress on the terminal (an indicatif bar per resource with counts, rate
//! and ETA on a TTY; a plain line per resource every few seconds otherwise)
//! and the summary. Must never: print or log the key.

use anyhow::Context;
use clerksync::backfill::client::{ClerkClient, ClientConfig, Rate, SecretKey, DEFAULT_API_URL};
use clerksync::backfill::schedule::{PassResult, ResourceProgress};
use clerksync::backfill::{Ending, Options, Progress, Report, Resource};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Flags of `clerksync backfill` (the summary line is on `Command::Backfill`).
#[derive(clap::Args)]
#[command(after_help = "\
The key is read from CLERKSYNC_CLERK_SECRET_KEY (never a flag: it would show in ps). \
Pages are listed oldest first and applied with the same version rules as webhooks, so it \
is safe beside a running webhook stream. A pass killed halfway continues from its \
checkpoint on the next run (--restart starts over). After a complete pass, what the store \
has and Clerk no longer lists is deleted, unless that is more than --max-delete-share of a \
resource (then it refuses and says how many; --force to go ahead). With --url, the running \
server at that address runs the pass (POST /admin/reconcile with CLERKSYNC_ADMIN_TOKEN; the \
server's own key and guard) and this command follows it; only --resources, --dry-run and \
--force apply then. Exit status: 0 done, 1 error, 3 refused by the delete guard.")]
pub struct BackfillArgs {
    #[command(flatten)]
    pub db: super::db::DbArgs,
    /// Comma-separated: users, organizations, memberships, invitations, domains,
    /// roles, permissions, waitlist_entries, or all [default:
    /// users,organizations,memberships].
    #[arg(long)]
    pub resources: Option<String>,
    /// Compare and print the drift (would create / update / delete); change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Apply what Clerk lists; never delete.
    #[arg(long)]
    pub no_delete: bool,
    /// Refuse to delete more than this share of a resource's entities [default: 0.1].
    #[arg(long)]
    pub max_delete_share: Option<f64>,
    /// Delete even beyond --max-delete-share.
    #[arg(long)]
    pub force: bool,
    /// Start new passes, discarding interrupted ones' checkpoints.
    #[arg(long)]
    pub restart: bool,
    /// Base URL of Clerk's Backend API (the client appends /v1/...).
    #[arg(long, env = "CLERKSYNC_CLERK_API_URL", default_value = DEFAULT_API_URL)]
    pub clerk_api_url: String,
    /// Requests allowed, e.g. 1000/10s, or off [default: by key, sk_live_ 1000/10s, sk_test_ 100/10s].
    #[arg(long, env = "CLERKSYNC_CLERK_RATE")]
    pub clerk_rate: Option<String>,
    /// Records per request (Clerk allows 1 to 500).
    #[arg(long, default_value_t = 500, hide = true)]
    pub page_size: u32,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Base URL of a running server, e.g. http://127.0.0.1:8080: it runs the pass.
    #[arg(long)]
    pub url: Option<String>,
    /// The server's admin token (with --url).
    #[arg(long, env = "CLERKSYNC_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

/// The process exit status when the delete guard refused.
pub const EXIT_REFUSED: i32 = 3;

pub fn options(a: &BackfillArgs) -> anyhow::Result<Options> {
    let resources = match &a.resources {
        Some(s) => Resource::parse_list(s)?,
        None => Resource::DEFAULT.to_vec(),
    };
    let o = Options {
        resources,
        dry_run: a.dry_run,
        no_delete: a.no_delete,
        max_delete_share: a.max_delete_share.unwrap_or(0.1),
        force: a.force,
        restart: a.restart,
        page_size: a.page_size.clamp(1, 500),
        ..Options::default()
    };
    o.validate()?;
    Ok(o)
}

pub fn client(a: &BackfillArgs) -> anyhow::Result<ClerkClient> {
    let key = std::env::var("CLERKSYNC_CLERK_SECRET_KEY").map_err(|_| {
        anyhow::anyhow!("set CLERKSYNC_CLERK_SECRET_KEY to the instance's secret key (sk_live_... or sk_test_..., from the Clerk dashboard, API keys)")
    })?;
    let mut c = ClientConfig::new(&a.clerk_api_url, SecretKey::parse(&key)?)?;
    if let Some(r) = &a.clerk_rate {
        c.rate = Rate::parse(r)?;
    }
    Ok(ClerkClient::new(c)?)
}

/// Runs the backfill against the database and prints the result; returns
/// the exit status.
pub async fn run(db: &clerksync::store::Database, a: &BackfillArgs) -> anyhow::Result<i32> {
    let opts = options(a)?;
    let client = client(a)?;
    let bar = Bar::new(std::io::stderr().is_terminal());
    let report = clerksync::backfill::run(db, &client, &opts, &|p: &Progress| {
        bar.show(&Shown::from(p))
    })
    .await;
    bar.finish();
    let report = report?;
    if a.json {
        super::out(serde_json::to_string(&report)?);
    } else {
        print_report(&report, opts.dry_run);
    }
    Ok(if report.refused() { EXIT_REFUSED } else { 0 })
}

fn print_report(r: &Report, dry: bool) {
    for x in &r.resources {
        if dry {
            super::out(format_args!(
                "{}: {} listed; would create {}, update {}, delete {} (dry run: nothing changed)",
                x.resource, x.seen, x.created, x.updated, x.missing
            ));
            continue;
        }
        let resumed = if x.resumed_at > 0 {
            format!(" (resumed at offset {})", x.resumed_at)
        } else {
            String::new()
        };
        super::out(format_args!(
            "{}: {} listed{resumed}; {} created, {} updated, {} unchanged, {} deleted",
            x.resource, x.seen, x.created, x.updated, x.unchanged, x.deleted
        ));
        match x.ending {
            Ending::Refused => super::out(format_args!(
                "{}: REFUSED to delete {} of {} (more than --max-delete-share); nothing was deleted. \
                 If Clerk really no longer has them, rerun with --force",
                x.resource, x.missing, x.live_before
            )),
            Ending::NoReconcile if x.invalid > 0 => super::out(format_args!(
                "{}: {} listed records could not apply (see the log); deletions skipped",
                x.resource, x.invalid
            )),
            _ => {}
        }
    }
    super::out(format_args!(
        "{} requests ({} rate-limited) in {:.1} s, {:.0} records/s",
        r.requests,
        r.throttled,
        r.elapsed_ms as f64 / 1000.0,
        r.per_second()
    ));
}

/// `--url`: asks the server at that address to run a pass and follows it
/// until it ends; returns the exit status.
pub async fn remote(a: &BackfillArgs, base: &str) -> anyhow::Result<i32> {
    if a.no_delete || a.restart || a.max_delete_share.is_some() {
        anyhow::bail!(
            "--no-delete, --restart and --max-delete-share do not apply with --url: the server's pass uses its own guard (CLERKSYNC_RECONCILE_MAX_DELETE_SHARE)"
        );
    }
    let token = a
        .admin_token
        .as_deref()
        .filter(|t| !t.trim().is_empty())
        .context(
        "backfill --url needs the server's admin token: set CLERKSYNC_ADMIN_TOKEN or --admin-token",
    )?;
    let url = format!("{}/admin/reconcile", base.trim_end_matches('/'));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut body = json!({ "dry_run": a.dry_run, "force": a.force });
    if let Some(r) = &a.resources {
        let names: Vec<&str> = Resource::parse_list(r)?.iter().map(|r| r.name()).collect();
        body["resources"] = json!(names);
    }
    let resp = http
        .post(&url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("cannot reach the server at {base}"))?;
    let status = resp.status().as_u16();
    let answer: Value = resp.json().await.unwrap_or(Value::Null);
    let why = answer["error"].as_str().unwrap_or("").to_string();
    let started_at = match status {
        202 => answer["started_at"].as_i64().unwrap_or(0),
        404 => {
            anyhow::bail!("the server has no admin API (set CLERKSYNC_ADMIN_TOKEN on the server)")
        }
        401 => anyhow::bail!("the server refused the admin token (check CLERKSYNC_ADMIN_TOKEN)"),
        409 => anyhow::bail!("refused: {why}"),
        _ => anyhow::bail!("the server answered {status}: {why}"),
    };
    tracing::info!(server = %base, "reconciliation pass started on the server");
    let bar = Bar::new(std::io::stderr().is_terminal());
    let result = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let resp = http.get(&url).bearer_auth(token).send().await?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            anyhow::bail!("the server answered {status} to GET /admin/reconcile");
        }
        let v: Value = resp.json().await?;
        let mine = v["running"]["node"] == "this"
            && v["running"]["started_at"].as_i64() == Some(started_at);
        if mine {
            let progress: Vec<ResourceProgress> =
                serde_json::from_value(v["running"]["resources"].clone()).unwrap_or_default();
            for p in progress.iter().filter(|p| p.phase != "pending") {
                bar.show(&Shown::from(p));
            }
            continue;
        }
        let last: Option<PassResult> = serde_json::from_value(v["last"].clone()).ok();
        match last {
            Some(r) if r.started_at == started_at => break r,
            _ => anyhow::bail!("the pass ended on the server, but its result was replaced before it was read (GET /admin/reconcile)"),
        }
    };
    // The last poll may have come before the end: each resource's final counts.
    for x in &result.resources {
        bar.show(&Shown {
            resource: &x.resource,
            phase: "done",
            seen: x.seen,
            total: None,
            created: x.created,
            updated: x.updated,
            deleted: x.deleted,
        });
    }
    bar.finish();
    if a.json {
        super::out(serde_json::to_string(&result)?);
    }
    if let Some(e) = &result.error {
        anyhow::bail!("the pass failed on the server: {e}");
    }
    if !a.json {
        for x in &result.resources {
            let line = if result.dry_run {
                format!(
                    "{}: {} listed; would create {}, update {}, delete {} (dry run: nothing changed)",
                    x.resource, x.seen, x.created, x.updated, x.missing
                )
            } else {
                format!(
                    "{}: {} listed; {} created, {} updated, {} unchanged, {} deleted",
                    x.resource, x.seen, x.created, x.updated, x.unchanged, x.deleted
                )
            };
            super::out(line);
            if x.ending == "refused" {
                super::out(format_args!(
                    "{}: REFUSED to delete {} (more than the server's CLERKSYNC_RECONCILE_MAX_DELETE_SHARE); nothing was deleted. \
                     If Clerk really no longer has them, rerun with --force",
                    x.resource, x.missing
                ));
            }
        }
        super::out(format_args!(
            "{} requests ({} rate-limited) in {:.1} s; drift {}",
            result.requests,
            result.throttled,
            (result.finished_at - result.started_at) as f64 / 1000.0,
            result.drift
        ));
    }
    let refused = result.resources.iter().any(|x| x.ending == "refused");
    Ok(if refused { EXIT_REFUSED } else { 0 })
}

/// One resource's progress, from a local pass or a server's status.
struct Shown<'a> {
    resource: &'a str,
    phase: &'a str,
    seen: i64,
    total: Option<u64>,
    created: i64,
    updated: i64,
    deleted: i64,
}

impl<'a> From<&'a Progress> for Shown<'a> {
    fn from(p: &'a Progress) -> Self {
        Shown {
            resource: p.resource,
            phase: p.phase,
            seen: p.seen,
            total: p.total,
            created: p.created,
            updated: p.updated,
            deleted: p.deleted,
        }
    }
}

impl<'a> From<&'a ResourceProgress> for Shown<'a> {
    fn from(p: &'a ResourceProgress) -> Self {
        Shown {
            resource: &p.resource,
            phase: &p.phase,
            seen: p.seen,
            total: p.total,
            created: p.created,
            updated: p.updated,
            deleted: p.deleted,
        }
    }
}

/// How often a plain progress line is written per resource when stderr is
/// not a terminal (logs, CI); a phase change is always written.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// Progress: on a terminal one indicatif bar per resource (records listed of
/// Clerk's count when known, rate, ETA, created/updated/deleted); otherwise
/// plain lines (no escape codes in a log file).
struct Bar {
    multi: Option<MultiProgress>,
    bars: Mutex<HashMap<String, ProgressBar>>,
    /// Plain mode: per resource, when its last line went out and its phase then.
    plain: Mutex<HashMap<String, (Instant, String, Instant)>>,
}

impl Bar {
    fn new(tty: bool) -> Bar {
        Bar {
            multi: tty.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
            bars: Mutex::new(HashMap::new()),
            plain: Mutex::new(HashMap::new()),
        }
    }

    fn show(&self, p: &Shown<'_>) {
        let counts = format!("+{} ~{} -{}", p.created, p.updated, p.deleted);
        let Some(multi) = &self.multi else {
            return self.plain(p, &counts);
        };
        let mut bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        let bar = bars.entry(p.resource.to_string()).or_insert_with(|| {
            let b = multi.add(ProgressBar::no_length());
            b.set_prefix(p.resource.to_string());
            b.set_style(spinner_style());
            b
        });
        if bar.is_finished() {
            return;
        }
        match p.total {
            Some(t) if bar.length() != Some(t) => {
                bar.set_length(t);
                bar.set_style(bar_style());
            }
            _ => {}
        }
        bar.set_position(p.seen.max(0) as u64);
        bar.set_message(format!("{} {counts}", p.phase));
        if p.phase == "done" {
            bar.finish();
        }
    }

    fn plain(&self, p: &Shown<'_>, counts: &str) {
        let mut plain = self.plain.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let entry = plain
            .entry(p.resource.to_string())
            .or_insert_with(|| (now, String::new(), now));
        let due = entry.1 != p.phase || now.duration_since(entry.0) >= PLAIN_EVERY;
        if !due {
            return;
        }
        entry.0 = now;
        entry.1 = p.phase.to_string();
        let secs = now.duration_since(entry.2).as_secs_f64().max(0.001);
        let rate = p.seen as f64 / secs;
        let of = match p.total {
            Some(t) if t > 0 => {
                let pct = (p.seen as f64 * 100.0 / t as f64).min(100.0);
                // No rate yet, no estimate.
                let eta = if p.seen > 0 {
                    let left = (t as f64 - p.seen as f64).max(0.0) / rate;
                    format!(", ETA {left:.0}s")
                } else {
                    String::new()
                };
                format!("{}/{t} ({pct:.0}%){eta}", p.seen)
            }
            _ => format!("{} listed", p.seen),
        };
        let _ = writeln!(
            std::io::stderr().lock(),
            "{} {}: {of}, {rate:.0}/s, {counts}",
            p.resource,
            p.phase
        );
    }

    fn finish(&self) {
        for b in self.bars.lock().unwrap_or_else(|e| e.into_inner()).values() {
            if !b.is_finished() {
                b.abandon();
            }
        }
    }
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{prefix:>16} [{bar:30}] {human_pos}/{human_len} {per_sec:>12} ETA {eta:>4} {msg}",
    )
    .expect("a valid template")
    .progress_chars("#>-")
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:>16} {spinner} {human_pos} listed {per_sec:>12} {msg}")
        .expect("a valid template")
}
