//! The load generator (`clerksync loadgen`): a realistic, signed Clerk event
//! stream sent to a running server, with throughput and ack-latency figures.
//!
//! Owns: the command's flags and the pipeline generate -> plan -> (write files)
//! -> send -> report. The stages live in their own modules: [`generate`] (the
//! events), [`plan`] (delivery order, duplicates, forgeries), [`expect`] (the
//! state a correct sync must reach), `send` (loops, signing, histograms) over
//! `http1` (a lean HTTP/1.1 client, so the loadgen leaves the cores to the
//! server), [`report`].
//! [`ws`] is `clerksync wsbench`: the same stream sent while WebSocket clients
//! measure the realtime stream's commit-to-receipt latency.
//!
//! Must never: touch the server's database or internals (it is a client, like
//! Svix), sign with anything but the configured secret (forged deliveries use a
//! random key and are counted apart), or let sending change what was generated:
//! `--dry-run` with the same flags writes exactly the files a real run writes.

pub mod check;
pub mod clerk_api;
pub mod expect;
pub mod generate;
mod http1;
pub mod ids;
pub mod plan;
pub mod report;
mod send;
pub mod ws;

use clerksync::webhook::verify::{SecretError, WebhookSecret};
use clerksync::webhook::SecretSet;
use rand::Rng;
use report::{Latency, Report};
use serde::Serialize;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The flags of `clerksync loadgen`. The `after_help` text (shown by `--help`)
/// explains the stream, the two loop disciplines and the output; `main`'s
/// subcommand doc comment supplies the one-line summary.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "\
Stream: --events events in all; each entity (user, organization, membership) gets a \
*.created, *.updated events with increasing updated_at and, for a --deletes share, a \
*.deleted. Memberships only join live users and organizations of the stream. \
--profile realistic (default) is shaped like production Clerk traffic: full payloads \
(~1.9 KB on average: emails with verification objects, OAuth accounts, phone numbers, \
metadata of a few hundred bytes), ~1.6 memberships per user, ~40% user.updated, most \
of them touching only activity fields, 3% deletes. --profile classic is the original \
lean mix (every entity 1..=--max-updates updates, 10% deletes).

Modes: closed loop by default (--connections workers, each sending its next delivery \
when the previous one is answered); open loop with --rate (latency from the intended \
send time). Each delivery is signed when sent. --dry-run writes --stream/--expect only.

Output: sent, 2xx, non-2xx by status, transport errors, elapsed, throughput (acks/s), \
ack latency p50/p90/p99/max in ms; --json prints one JSON object instead.")]
pub struct LoadgenArgs {
    /// Webhook endpoint to send to.
    #[arg(long, default_value = "http://127.0.0.1:8080/webhooks/clerk")]
    pub url: String,

    /// Signing secret, `whsec_...` (a comma-separated list is accepted; the first
    /// signs). Required unless --dry-run.
    #[arg(long, env = "CLERKSYNC_WEBHOOK_SECRET", hide_env_values = true)]
    pub secret: Option<String>,

    /// Number of events to generate (exact).
    #[arg(long, default_value_t = 10_000)]
    pub events: usize,

    /// Seed of the stream; the same seed and flags give the same stream and files.
    /// Default: a random seed, printed in the report.
    #[arg(long)]
    pub seed: Option<u64>,

    /// The mix of events and payload shapes (see below).
    #[arg(long, value_enum, default_value_t = generate::Profile::Realistic)]
    pub profile: generate::Profile,

    /// Classic: each entity gets 1..=N `*.updated` events (uniform; 0: none).
    /// Realistic: each user and organization 0..=N, a membership 0..=2.
    #[arg(long, default_value_t = 5)]
    pub max_updates: u32,

    /// Share (0..1) of entities that are eventually deleted [default: 0.03
    /// realistic, 0.1 classic].
    #[arg(long)]
    pub deletes: Option<f64>,

    /// Users per organization in the mix (memberships: 1.6x this per organization,
    /// 1.2x in the classic profile).
    #[arg(long, default_value_t = 10)]
    pub users_per_org: u32,

    /// Time of the first event, unix ms (each next event is 1..=1500 ms later).
    #[arg(long, default_value_t = generate::DEFAULT_START_MS)]
    pub start_ms: i64,

    /// Share (0..1) of deliveries displaced by 2..=40 positions.
    #[arg(long, default_value_t = 0.05)]
    pub out_of_order: f64,

    /// Share (0..1) of events delivered a second time (same svix-id and body), later.
    #[arg(long, default_value_t = 0.01)]
    pub duplicates: f64,

    /// Share (0..1) of events that also get a forged delivery (same svix-id and
    /// body, signed with a wrong key); the server must refuse every one.
    #[arg(long, default_value_t = 0.0)]
    pub forged: f64,

    /// Closed loop: number of concurrent keep-alive connections.
    #[arg(long, short = 'c', default_value_t = 64)]
    pub connections: usize,

    /// Open loop: send at this many deliveries per second; latency is measured
    /// from each delivery's intended send time.
    #[arg(long)]
    pub rate: Option<f64>,

    /// Open loop: bound on requests in flight [default: 4 x --connections].
    #[arg(long)]
    pub max_in_flight: Option<usize>,

    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,

    /// Print the report as one JSON object (keys: see `loadgen::report`).
    #[arg(long)]
    pub json: bool,

    /// Write the delivery sequence as JSON lines `{"svix_id": .., "body": ..}` in
    /// send order (`body` is the exact raw body; forged copies add `"forged": true`).
    #[arg(long, value_name = "FILE")]
    pub stream: Option<PathBuf>,

    /// Write the final state a correct sync must reach (format: `loadgen::expect`).
    #[arg(long, value_name = "FILE")]
    pub expect: Option<PathBuf>,

    /// Generate and write --stream/--expect files only; send nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Instead of sending: compare the server's read API (at the root of --url)
    /// with this --expect file; prints matches/total and fails on any mismatch.
    #[arg(long, value_name = "FILE")]
    pub check: Option<PathBuf>,

    /// Bearer token for the read API (--check), when the server sets CLERKSYNC_API_TOKEN.
    #[arg(long, env = "CLERKSYNC_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,

    /// No progress lines on stderr.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error("{0}")]
    InvalidArgs(String),
    #[error("no webhook secret: set CLERKSYNC_WEBHOOK_SECRET or pass --secret (or use --dry-run)")]
    MissingSecret,
    #[error(
        "invalid webhook secret (set CLERKSYNC_WEBHOOK_SECRET or --secret to whsec_<base64>): {0}"
    )]
    Secret(#[from] SecretError),
    #[error("invalid --url {url}: {source}")]
    Url {
        url: String,
        source: url::ParseError,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Client(#[from] send::ClientError),
    #[error("building the expected state failed: {0}")]
    Expect(#[from] expect::ExpectError),
    #[error("the generator task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Check(#[from] check::CheckError),
    #[error("{0}")]
    Mismatch(String),
}

/// The in-flight bound for the open loop has to fit a semaphore permit count.
const MAX_IN_FLIGHT_LIMIT: usize = 1_000_000;

impl LoadgenArgs {
    fn delete_share(&self) -> f64 {
        self.deletes
            .unwrap_or_else(|| self.profile.default_delete_share())
    }

    fn validate(&self) -> Result<(), LoadgenError> {
        let bad = |m: String| Err(LoadgenError::InvalidArgs(m));
        for (name, v) in [
            ("--deletes", self.delete_share()),
            ("--out-of-order", self.out_of_order),
            ("--duplicates", self.duplicates),
            ("--forged", self.forged),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return bad(format!("{name} must be a share between 0 and 1, got {v}"));
            }
        }
        if self.events == 0 {
            return bad("--events must be at least 1".into());
        }
        if u32::try_from(self.events).is_err() {
            return bad(format!("--events must be at most {}", u32::MAX));
        }
        if self.users_per_org == 0 {
            return bad("--users-per-org must be at least 1".into());
        }
        if self.start_ms < 0 {
            return bad("--start-ms must not be negative".into());
        }
        if self.connections == 0 {
            return bad("--connections must be at least 1".into());
        }
        if let Some(r) = self.rate {
            if !(r.is_finite() && r > 0.0) {
                return bad(format!("--rate must be a positive number, got {r}"));
            }
        }
        if self
            .max_in_flight
            .is_some_and(|m| m == 0 || m > MAX_IN_FLIGHT_LIMIT)
        {
            return bad(format!(
                "--max-in-flight must be between 1 and {MAX_IN_FLIGHT_LIMIT}"
            ));
        }
        if !(self.timeout.is_finite() && self.timeout > 0.0) {
            return bad(format!(
                "--timeout must be a positive number of seconds, got {}",
                self.timeout
            ));
        }
        Ok(())
    }
}

/// One line of the `--stream` file.
#[derive(Serialize)]
struct StreamLine<'a> {
    svix_id: &'a str,
    body: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    forged: bool,
}

fn write_file(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<(), LoadgenError> {
    let err = |source| LoadgenError::Write {
        path: path.to_owned(),
        source,
    };
    let mut w = BufWriter::new(File::create(path).map_err(err)?);
    write(&mut w).map_err(err)?;
    w.flush().map_err(err)
}

fn write_stream(path: &Path, plan: &plan::Plan) -> Result<(), LoadgenError> {
    write_file(path, |w| {
        for d in &plan.deliveries {
            let line = StreamLine {
                svix_id: &d.svix_id,
                // Generated bodies are serde_json output, hence UTF-8.
                body: std::str::from_utf8(&d.body).expect("generated bodies are UTF-8"),
                forged: d.forged,
            };
            serde_json::to_writer(&mut *w, &line)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })
}

fn write_expect(path: &Path, state: &expect::ExpectedState) -> Result<(), LoadgenError> {
    write_file(path, |w| {
        serde_json::to_writer(&mut *w, state)?;
        w.write_all(b"\n")
    })
}

/// Runs the command; the returned text (or JSON) is what `main` prints.
pub async fn run(args: LoadgenArgs) -> Result<String, LoadgenError> {
    execute(args).await.map(|(text, _)| text)
}

/// [`run`], with the report of a run that generated a stream (none for
/// `--check`), so that `main` can set the exit status from [`Report::failure`].
pub async fn execute(args: LoadgenArgs) -> Result<(String, Option<Report>), LoadgenError> {
    args.validate()?;
    let url = reqwest::Url::parse(&args.url).map_err(|source| LoadgenError::Url {
        url: args.url.clone(),
        source,
    })?;
    if let Some(file) = &args.check {
        let base = format!("{}://{}", url.scheme(), url.authority());
        let report = check::check(file, &base, args.api_token.clone()).await?;
        return if report.mismatches.is_empty() {
            Ok((report.to_string(), None))
        } else {
            Err(LoadgenError::Mismatch(report.to_string()))
        };
    }
    // Check the secret before spending seconds on generation; a dry run signs
    // nothing and needs none.
    let secret = if args.dry_run {
        None
    } else {
        let list = args.secret.as_deref().ok_or(LoadgenError::MissingSecret)?;
        Some(SecretSet::parse_list(list)?.first().clone())
    };
    let seed = args.seed.unwrap_or_else(|| rand::thread_rng().gen());
    let gen_cfg = generate::GenConfig {
        seed,
        events: args.events,
        max_updates: args.max_updates,
        delete_share: args.delete_share(),
        users_per_org: args.users_per_org,
        start_ms: args.start_ms,
        profile: args.profile,
    };
    let plan_cfg = plan::PlanConfig {
        seed,
        out_of_order: args.out_of_order,
        duplicates: args.duplicates,
        forged: args.forged,
    };
    // Generating and writing the files is seconds of CPU and blocking I/O for
    // large streams: keep it off the async workers.
    let plan = tokio::task::spawn_blocking({
        let (stream, expect) = (args.stream.clone(), args.expect.clone());
        move || -> Result<plan::Plan, LoadgenError> {
            let events = generate::generate(&gen_cfg);
            let plan = plan::plan(&events, &plan_cfg);
            if let Some(path) = &stream {
                write_stream(path, &plan)?;
            }
            if let Some(path) = &expect {
                let state =
                    expect::expected_state(events.iter().map(|e| (&*e.svix_id, e.body.as_ref())))?;
                write_expect(path, &state)?;
            }
            Ok(plan)
        }
    })
    .await??;

    let open_loop = args.rate.is_some();
    let max_in_flight = args
        .max_in_flight
        .unwrap_or(args.connections.saturating_mul(4))
        .min(MAX_IN_FLIGHT_LIMIT);
    let mut report = Report {
        mode: match (args.dry_run, open_loop) {
            (true, _) => "dry-run",
            (false, true) => "open",
            (false, false) => "closed",
        }
        .into(),
        url: args.url.clone(),
        seed,
        events: args.events,
        deliveries: plan.deliveries.len(),
        duplicates: plan.duplicates,
        displaced: plan.displaced,
        forged: plan.forged,
        connections: args.connections,
        rate: args.rate,
        max_in_flight: open_loop.then_some(max_in_flight),
        stream_file: args.stream.as_ref().map(|p| p.display().to_string()),
        expect_file: args.expect.as_ref().map(|p| p.display().to_string()),
        ..Report::default()
    };

    if let Some(genuine) = secret {
        // A random key of the usual length: never equal to the real one.
        let forged = WebhookSecret::from_key(rand::thread_rng().gen::<[u8; 24]>().to_vec());
        let signer = Arc::new(send::Signer { genuine, forged });
        let cfg = send::SendConfig {
            url,
            connections: args.connections,
            max_in_flight,
            timeout: Duration::from_secs_f64(args.timeout),
            progress: !args.quiet,
        };
        let deliveries = Arc::new(plan.deliveries);
        let outcome = match args.rate {
            Some(rate) => send::open_loop(&cfg, rate, deliveries, signer).await?,
            None => send::closed_loop(&cfg, deliveries, signer).await?,
        };
        let s = &outcome.stats;
        report.sent = s.sent;
        report.status_2xx = s.status_2xx;
        report.non_2xx = s.non_2xx.clone();
        report.transport_errors = s.transport_errors;
        report.first_transport_error = s.first_transport_error.clone();
        report.forged_by_status = s.forged_by_status.clone();
        report.in_flight_limit_hits = outcome.in_flight_limit_hits;
        report.elapsed_s = outcome.elapsed.as_secs_f64();
        report.throughput_acks_per_s = s.status_2xx as f64 / report.elapsed_s.max(1e-9);
        report.latency_ms = Latency::from_stats(s);
    }
    let text = if args.json {
        report.to_json()
    } else {
        // `main` adds the final newline.
        report.to_string().trim_end().to_owned()
    };
    Ok((text, Some(report)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::collections::BTreeMap;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: LoadgenArgs,
    }

    fn args(extra: &[&str]) -> LoadgenArgs {
        let mut argv = vec!["loadgen"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).expect("valid flags").args
    }

    #[tokio::test]
    async fn dry_run_writes_stream_and_expect_files_reproducibly() {
        let dir = tempfile::tempdir().unwrap();
        let [s1, e1, s2, e2] = ["s1.jsonl", "e1.json", "s2.jsonl", "e2.json"]
            .map(|n| dir.path().join(n).display().to_string());
        let common = [
            "--dry-run",
            "--json",
            "--seed",
            "77",
            "--events",
            "500",
            "--duplicates",
            "0.2",
        ];
        let mut a = common.to_vec();
        a.extend(["--stream", &s1, "--expect", &e1]);
        let mut b = common.to_vec();
        b.extend(["--stream", &s2, "--expect", &e2]);
        // CLERKSYNC_WEBHOOK_SECRET may be set where tests run; a dry run needs none.
        let mut a_args = args(&a);
        a_args.secret = None;
        let mut b_args = args(&b);
        b_args.secret = None;
        let report: Report = serde_json::from_str(&run(a_args).await.unwrap()).unwrap();
        run(b_args).await.unwrap();
        assert_eq!(report.mode, "dry-run");
        assert_eq!(report.events, 500);
        assert_eq!(report.sent, 0);
        assert_eq!(report.deliveries, 500 + report.duplicates);
        let read = |n: &str| std::fs::read_to_string(dir.path().join(n)).unwrap();
        assert_eq!(read("s1.jsonl"), read("s2.jsonl"));
        assert_eq!(read("e1.json"), read("e2.json"));
        let lines: Vec<serde_json::Value> = read("s1.jsonl")
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), report.deliveries);
        for l in &lines {
            let body = l["body"].as_str().unwrap();
            clerksync::clerk::envelope::parse_head(body.as_bytes()).unwrap();
            assert!(l["svix_id"].as_str().unwrap().starts_with("msg_"));
        }
        let state: expect::ExpectedState = serde_json::from_str(&read("e1.json")).unwrap();
        assert!(!state.users.is_empty() && !state.memberships.is_empty());
    }

    #[tokio::test]
    async fn refuses_bad_flags_and_a_missing_secret() {
        let mut a = args(&["--events", "10"]);
        a.secret = None;
        assert!(matches!(run(a).await, Err(LoadgenError::MissingSecret)));
        for bad in [
            ["--duplicates", "1.5"],
            ["--events", "0"],
            ["--rate", "0"],
            ["--connections", "0"],
        ] {
            let mut a = args(&bad);
            a.dry_run = true;
            assert!(
                matches!(run(a).await, Err(LoadgenError::InvalidArgs(_))),
                "{bad:?}"
            );
        }
        let mut a = args(&["--secret", "whsec_!!!"]);
        a.dry_run = false;
        assert!(matches!(run(a).await, Err(LoadgenError::Secret(_))));
    }

    /// A minimal keep-alive HTTP/1.1 server that verifies each delivery like the
    /// real ingress does (204 when genuine, 401 when not). Independent of the
    /// real server so these tests check the load generator alone.
    async fn verifying_server(secret: &str) -> std::net::SocketAddr {
        use clerksync::webhook::verify::{verify, DeliveryHeaders};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let set = SecretSet::parse_list(secret).unwrap();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let set = set.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    loop {
                        let head_end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            match sock.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                        let header = |name: &str| {
                            head.lines().find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
                            })
                        };
                        let len: usize = header("content-length").unwrap().parse().unwrap();
                        while buf.len() < head_end + len {
                            match sock.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let body: Vec<u8> = buf.drain(..head_end + len).skip(head_end).collect();
                        let (id, ts, sig) = (
                            header("svix-id"),
                            header("svix-timestamp"),
                            header("svix-signature"),
                        );
                        let headers = DeliveryHeaders {
                            id: id.as_deref(),
                            timestamp: ts.as_deref(),
                            signature: sig.as_deref(),
                        };
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap()
                            .as_secs() as i64;
                        let genuine = verify(&set, headers, &body, now, true).is_ok()
                            && clerksync::clerk::envelope::parse_head(&body).is_ok();
                        let resp: &[u8] = if genuine {
                            b"HTTP/1.1 204 No Content\r\n\r\n"
                        } else {
                            b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 2\r\n\r\n{}"
                        };
                        if sock.write_all(resp).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn closed_loop_sends_signed_deliveries_and_counts_answers() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let url = format!("http://{}/webhooks/clerk", verifying_server(secret).await);
        let a = args(&[
            "--url",
            &url,
            "--secret",
            secret,
            "--events",
            "400",
            "--seed",
            "3",
            "--connections",
            "4",
            "--json",
            "--quiet",
            "--duplicates",
            "0.1",
            "--forged",
            "0.1",
        ]);
        let r: Report = serde_json::from_str(&run(a).await.unwrap()).unwrap();
        assert_eq!(r.mode, "closed");
        assert!(r.forged > 0 && r.duplicates > 0);
        assert_eq!(r.sent as usize, r.deliveries);
        assert_eq!(r.status_2xx as usize, r.deliveries - r.forged, "{r:?}");
        assert!(r.non_2xx.is_empty(), "{r:?}");
        assert_eq!(r.forged_by_status, BTreeMap::from([(401, r.forged as u64)]));
        assert_eq!(r.transport_errors, 0);
        assert!(r.latency_ms.p50 > 0.0 && r.latency_ms.max >= r.latency_ms.p99);
        assert!(r.throughput_acks_per_s > 0.0);
    }

    #[tokio::test]
    async fn open_loop_keeps_the_rate_and_counts_transport_errors() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let url = format!("http://{}/webhooks/clerk", verifying_server(secret).await);
        let a = args(&[
            "--url", &url, "--secret", secret, "--events", "200", "--seed", "4", "--rate", "2000",
            "--json", "--quiet",
        ]);
        let r: Report = serde_json::from_str(&run(a).await.unwrap()).unwrap();
        assert_eq!(r.mode, "open");
        assert_eq!(r.status_2xx as usize, r.deliveries, "{r:?}");
        assert_eq!(r.max_in_flight, Some(256));
        // The last delivery is due at (n-1)/rate seconds.
        let due = (r.deliveries - 1) as f64 / 2000.0;
        assert!(r.elapsed_s >= due, "{} < {due}", r.elapsed_s);

        // Nobody listening: every request is a transport error, none an ack.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = format!("http://{}/webhooks/clerk", closed.local_addr().unwrap());
        drop(closed);
        let a = args(&[
            "--url", &dead, "--secret", secret, "--events", "20", "--rate", "1000", "--json",
            "--quiet",
        ]);
        let r: Report = serde_json::from_str(&run(a).await.unwrap()).unwrap();
        assert_eq!(r.status_2xx, 0);
        assert_eq!(r.transport_errors as usize, r.deliveries);
        assert!(r.first_transport_error.is_some());
    }
}
