//! `clerksync backfill`: import what Clerk already has and reconcile deletions.
//!
//! Owns: the command's flags, reading the Clerk key from the environment only
//! (a flag would show it in `ps`), progress on the terminal (one redrawn line
//! with counts, rate and ETA on a TTY; a plain line every few seconds
//! otherwise) and the summary. Must never: print or log the key.

use clerksync::backfill::client::{ClerkClient, ClientConfig, Rate, SecretKey, DEFAULT_API_URL};
use clerksync::backfill::{Ending, Options, Progress, Report, Resource};
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
resource (then it refuses and says how many; --force to go ahead). Exit status: 0 done, \
1 error, 3 refused by the delete guard.")]
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
    /// Refuse to delete more than this share of a resource's entities.
    #[arg(long, default_value_t = 0.1)]
    pub max_delete_share: f64,
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
        max_delete_share: a.max_delete_share,
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
    let report = clerksync::backfill::run(db, &client, &opts, &|p: &Progress| bar.show(p)).await;
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

/// Progress: a line redrawn in place on a terminal, a plain line every 5 s
/// otherwise (logs, CI).
struct Bar {
    tty: bool,
    started: Instant,
    last: Mutex<Option<Instant>>,
}

impl Bar {
    fn new(tty: bool) -> Bar {
        Bar {
            tty,
            started: Instant::now(),
            last: Mutex::new(None),
        }
    }

    fn show(&self, p: &Progress) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let every = if self.tty {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(5)
        };
        let due = last.is_none_or(|t| t.elapsed() >= every) || p.phase != "listing";
        if !due {
            return;
        }
        *last = Some(Instant::now());
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = p.seen as f64 / secs;
        let (bar, eta) = match p.total {
            Some(t) if t > 0 => {
                let frac = (p.seen as f64 / t as f64).min(1.0);
                let filled = (frac * 30.0) as usize;
                let left = (t as f64 - p.seen as f64).max(0.0) / rate.max(1.0);
                (
                    format!(
                        "[{}{}] {}/{t}",
                        "#".repeat(filled),
                        "-".repeat(30 - filled),
                        p.seen
                    ),
                    format!(" ETA {:.0}s", left),
                )
            }
            _ => (format!("{} listed", p.seen), String::new()),
        };
        let line = format!(
            "{} {}: {bar} {:.0}/s{eta} (+{} ~{} -{})",
            p.resource, p.phase, rate, p.created, p.updated, p.deleted
        );
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{line}");
            if p.phase == "done" {
                let _ = writeln!(err);
            }
        } else {
            let _ = writeln!(err, "{line}");
        }
    }

    fn finish(&self) {
        if self.tty {
            let _ = writeln!(std::io::stderr());
        }
    }
}
