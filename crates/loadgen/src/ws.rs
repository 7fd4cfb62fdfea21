//! `clerksync wsbench`: the realtime stream under load. N WebSocket clients stay
//! connected to `/v1/realtime` while signed webhooks are sent open loop at a
//! rate; every change frame a client receives is timed from its commit
//! (`committed_at`, unix ms, in every change frame) to its receipt.
//!
//! Owns: the command's flags, connecting and subscribing the clients, the
//! receiving side's counts and histograms (lag, order, resyncs), deciding when a
//! step has drained, and the step / ramp report. The webhooks are the load
//! generator's own stream, sent by its open loop (`super::send`).
//!
//! Must never: touch the server's database or internals (it is a client: the
//! only things it reads are WebSocket frames and `/metrics`), count a replayed
//! or control frame as a change, or call a step "kept up" when any client was
//! told to resync, closed early, or saw a change out of order.
//!
//! Topics: `--topics mixed` (default) gives client i the topics
//! `org:<org i mod O>` and `user:<user i mod U>` of the generated stream, like a
//! browser showing a user's profile and its organization's member list: each
//! change reaches the few clients watching it. `--topics all` subscribes every
//! client to `*` (the worst case: every change to every client).
//!
//! Times: commit and receipt are read from the wall clocks of the server and of
//! this process; run both on one machine (the figures are in whole ms, the
//! resolution of `committed_at`).

use super::generate::{self, EntityKind};
use super::plan;
use super::send;
use clerksync::webhook::verify::{SecretError, WebhookSecret};
use clerksync::webhook::SecretSet;
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// The flags of `clerksync wsbench`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "\
Each step: connect --clients WebSocket clients with the API token, subscribe them \
(--topics), send --rate x --duration signed webhooks open loop, wait until the server \
has applied and fanned out everything (its /metrics), then report commit-to-receipt \
latency p50/p99/max, messages/s received and whether any client was told to resync, \
closed early or saw a change out of order. --ramp 1000,2000,4000 runs one step per \
rate and reports the largest rate kept up: no client fell behind and p99 <= --max-p99-ms.

The server needs CLERKSYNC_REALTIME_MAX_CONNECTIONS_PER_TOKEN >= --clients (the \
clients share the API token).")]
pub struct WsBenchArgs {
    /// Base URL of the server (webhooks go to /webhooks/clerk, clients to /v1/realtime).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,

    /// Signing secret, `whsec_...` (the first of a comma-separated list signs).
    #[arg(long, env = "CLERKSYNC_WEBHOOK_SECRET", hide_env_values = true)]
    pub secret: Option<String>,

    /// The server's API token (clients connect with it; `*` needs it).
    #[arg(long, env = "CLERKSYNC_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,

    /// Connected WebSocket clients.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,

    /// Webhook deliveries per second (open loop); each applies as one or more changes.
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,

    /// One step per rate, e.g. `1000,2000,4000,8000` (overrides --rate).
    #[arg(long, value_delimiter = ',')]
    pub ramp: Vec<f64>,

    /// Seconds of sending per step.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,

    /// `mixed`: one org and one user topic per client; `all`: every client on `*`.
    #[arg(long, value_enum, default_value_t = TopicMode::Mixed)]
    pub topics: TopicMode,

    /// A step keeps up when every change reached every client (no resync, no
    /// early close, in order) and commit-to-receipt p99 is at most this.
    #[arg(long, default_value_t = 50.0)]
    pub max_p99_ms: f64,

    /// Seed of the first step's stream (each step adds its index).
    #[arg(long)]
    pub seed: Option<u64>,

    /// Webhook requests in flight at most.
    #[arg(long, default_value_t = 256)]
    pub max_in_flight: usize,

    /// Seconds to wait, after sending, for the server to apply and fan out.
    #[arg(long, default_value_t = 60.0)]
    pub drain_timeout: f64,

    /// Print the report as JSON (one object: `steps`, `max_rate_kept_up`).
    #[arg(long)]
    pub json: bool,

    /// No progress lines on stderr.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum TopicMode {
    Mixed,
    All,
}

#[derive(Debug, thiserror::Error)]
pub enum WsBenchError {
    #[error("{0}")]
    InvalidArgs(String),
    #[error("no webhook secret: set CLERKSYNC_WEBHOOK_SECRET or pass --secret")]
    MissingSecret,
    #[error("invalid webhook secret: {0}")]
    Secret(#[from] SecretError),
    #[error("invalid --url {0}: use http://host:port")]
    Url(String),
    /// `who`: "client N", or "probe" (the connection that reads the hub's position).
    #[error("{who} could not connect: {message}")]
    Connect { who: String, message: String },
    #[error(transparent)]
    Http(#[from] send::ClientError),
    #[error("the generator task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// One step's settings (the in-process test builds one directly).
#[derive(Debug, Clone)]
pub struct StepConfig {
    /// `http://host:port` of the server.
    pub base: reqwest::Url,
    pub secret: WebhookSecret,
    pub api_token: Option<String>,
    pub clients: usize,
    /// Webhook deliveries per second.
    pub rate: f64,
    /// Webhooks to send (events of the generated stream; no duplicates).
    pub events: usize,
    pub seed: u64,
    pub topics: TopicMode,
    pub max_in_flight: usize,
    pub drain_timeout: Duration,
    /// A step keeps up when every change was delivered and p99 is at most this.
    pub max_p99_ms: f64,
    /// Keep every client's received seqs ([`StepResult::seqs`]), for tests.
    pub keep_seqs: bool,
    pub progress: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LagMs {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// What one step measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StepResult {
    /// Target webhook deliveries per second.
    pub rate: f64,
    pub clients: usize,
    pub topics: Option<TopicMode>,
    pub webhooks_sent: u64,
    pub webhooks_acked: u64,
    /// Achieved webhook rate (acks over the sending time).
    pub webhooks_per_s: f64,
    /// Changes committed during the step (the hub's position moved by this many seqs).
    pub changes: u64,
    /// Changes per second, from the first webhook to the last frame received.
    pub changes_per_s: f64,
    /// Change frames received by all clients together.
    pub messages: u64,
    /// Change frames per second, from the first webhook to the last frame received.
    pub messages_per_s: f64,
    /// Commit -> receipt, over every change frame.
    pub latency_ms: LagMs,
    /// Clients told to resync (too slow).
    pub resynced_clients: usize,
    /// Clients whose connection ended before the step did.
    pub closed_clients: usize,
    /// Change frames at or below the previous seq on their topic.
    pub out_of_order: u64,
    /// The server had applied and fanned out everything within the drain timeout.
    pub drained: bool,
    pub elapsed_s: f64,
    /// Every change reached its clients: drained, no resync, no early close,
    /// nothing out of order.
    pub all_delivered: bool,
    /// No client fell behind: all delivered and p99 within `max_p99_ms`.
    pub kept_up: bool,
    /// Per client, the seqs of the change frames received (only with `keep_seqs`).
    #[serde(skip)]
    pub seqs: Option<Vec<Vec<i64>>>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub url: String,
    pub seed: u64,
    pub max_p99_ms: f64,
    pub steps: Vec<StepResult>,
    /// Ramp: the largest rate whose step kept up (no client behind, p99 within bound).
    pub max_rate_kept_up: Option<f64>,
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What the receiving side parses of a frame.
#[derive(Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    topic: Option<String>,
    seq: Option<i64>,
    committed_at: Option<i64>,
}

/// Frames that are not changes.
const CONTROL: &[&str] = &[
    "ready",
    "subscribed",
    "unsubscribed",
    "replayed",
    "snapshot",
    "error",
    "pong",
    "resync",
    "authenticated",
];

/// What all clients received so far (for the drain and the rates).
#[derive(Default)]
struct Received {
    count: AtomicU64,
    /// Unix ms of the latest change frame.
    last_ms: AtomicU64,
}

/// One client's tally.
struct ClientStats {
    lag_ms: Histogram<u64>,
    messages: u64,
    out_of_order: u64,
    resynced: bool,
    closed_early: bool,
    seqs: Vec<i64>,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Reads frames until `stop`, tallying change frames.
async fn receive(
    mut ws: Ws,
    stop: CancellationToken,
    received: Arc<Received>,
    keep_seqs: bool,
) -> ClientStats {
    let mut s = ClientStats {
        // 0 .. 10 min in ms, 3 significant digits.
        lag_ms: Histogram::new_with_max(600_000, 3).expect("valid histogram bounds"),
        messages: 0,
        out_of_order: 0,
        resynced: false,
        closed_early: false,
        seqs: Vec::new(),
    };
    let mut last: HashMap<String, i64> = HashMap::new();
    loop {
        let m = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            m = ws.next() => m,
        };
        let text = match m {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                s.closed_early = true;
                break;
            }
            Some(Ok(_)) => continue,
        };
        let now = unix_ms();
        let Ok(f) = serde_json::from_str::<Frame>(&text) else {
            continue;
        };
        if f.kind == "resync" {
            s.resynced = true;
            continue;
        }
        if CONTROL.contains(&f.kind.as_str()) {
            continue;
        }
        let (Some(seq), Some(at), Some(topic)) = (f.seq, f.committed_at, f.topic) else {
            continue;
        };
        s.messages += 1;
        received.count.fetch_add(1, Ordering::Relaxed);
        received.last_ms.fetch_max(now as u64, Ordering::Relaxed);
        s.lag_ms
            .saturating_record(now.saturating_sub(at).max(0) as u64);
        let prev = last.entry(topic).or_insert(i64::MIN);
        if seq <= *prev {
            s.out_of_order += 1;
        }
        *prev = seq;
        if keep_seqs {
            s.seqs.push(seq);
        }
    }
    let _ = ws.close(None).await;
    s
}

/// Connects one client and subscribes it; retries a 429 (the previous step's
/// connections may still be closing).
async fn connect(cfg: &StepConfig, i: usize, topics: &[String]) -> Result<Ws, WsBenchError> {
    let err = |message: String| WsBenchError::Connect {
        who: if i == usize::MAX {
            "probe".into()
        } else {
            format!("client {i}")
        },
        message,
    };
    let mut url = cfg.base.clone();
    url.set_scheme(if cfg.base.scheme() == "https" {
        "wss"
    } else {
        "ws"
    })
    .map_err(|_| err("bad scheme".into()))?;
    url.set_path("/v1/realtime");
    let mut tries = 0;
    let mut ws = loop {
        let mut req = url
            .as_str()
            .into_client_request()
            .map_err(|e| err(e.to_string()))?;
        if let Some(t) = &cfg.api_token {
            req.headers_mut().insert(
                "authorization",
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| err("the API token is not a valid header value".into()))?,
            );
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok((ws, _)) => break ws,
            Err(tokio_tungstenite::tungstenite::Error::Http(r))
                if r.status().as_u16() == 429 && tries < 50 =>
            {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                let body = r
                    .body()
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default()
                    .into_owned();
                return Err(err(format!("HTTP {}: {body}", r.status())));
            }
            Err(e) => return Err(err(e.to_string())),
        }
    };
    for t in topics {
        let m = serde_json::json!({"type": "subscribe", "topic": t}).to_string();
        ws.send(Message::text(m))
            .await
            .map_err(|e| err(e.to_string()))?;
    }
    // `ready`, then one answer per subscription.
    let mut acks = 0;
    while acks < topics.len() {
        let m = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .map_err(|_| err("no answer to subscribe within 30 s".into()))?;
        let text = match m {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(_)) => continue,
            other => return Err(err(format!("closed while subscribing: {other:?}"))),
        };
        let f: Frame = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        match f.kind.as_str() {
            "subscribed" => acks += 1,
            "error" => return Err(err(format!("subscribe refused: {text}"))),
            _ => {}
        }
    }
    Ok(ws)
}

/// The topics of client `i`.
fn topics_for(mode: TopicMode, i: usize, users: &[String], orgs: &[String]) -> Vec<String> {
    match mode {
        TopicMode::All => vec!["*".into()],
        TopicMode::Mixed => {
            let mut t = Vec::with_capacity(2);
            if !orgs.is_empty() {
                t.push(format!("org:{}", orgs[i % orgs.len()]));
            }
            if !users.is_empty() {
                t.push(format!("user:{}", users[i % users.len()]));
            }
            t
        }
    }
}

/// Reads the server's `/metrics`: (events pending + failed, realtime feed lag).
async fn backlog(client: &reqwest::Client, base: &reqwest::Url) -> Option<(i64, i64)> {
    let url = base.join("/metrics").ok()?;
    let text = client.get(url).send().await.ok()?.text().await.ok()?;
    let value = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as i64)
    };
    let pending = value("clerksync_events_pending ")? + value("clerksync_events_failed ")?;
    let lag = value("clerksync_feed_consumer_lag_entries{consumer=\"realtime\"}")?;
    Some((pending, lag))
}

/// Waits until the server has applied every event and the hub has fanned out
/// every change (twice in a row), then until no client has received anything
/// for a moment (frames still queued on their way). False: timed out.
async fn drain(cfg: &StepConfig, received: &Received) -> bool {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + cfg.drain_timeout;
    let mut idle_rounds = 0;
    while idle_rounds < 2 {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        match backlog(&http, &cfg.base).await {
            Some((0, 0)) => idle_rounds += 1,
            _ => idle_rounds = 0,
        }
    }
    let mut seen = received.count.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = received.count.load(Ordering::Relaxed);
        if now == seen {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        seen = now;
    }
}

/// The hub's position: the `seq` of a fresh connection's `ready` message.
async fn position(cfg: &StepConfig) -> Result<i64, WsBenchError> {
    let mut ws = connect(cfg, usize::MAX, &[]).await?;
    let err = |message: String| WsBenchError::Connect {
        who: "probe".into(),
        message,
    };
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .map_err(|_| err("no ready message within 30 s".into()))?;
        if let Some(Ok(Message::Text(t))) = m {
            let v: serde_json::Value = serde_json::from_str(&t).map_err(|e| err(e.to_string()))?;
            if v["type"] == "ready" {
                let _ = ws.close(None).await;
                return v["seq"]
                    .as_i64()
                    .ok_or_else(|| err("ready without a seq".into()));
            }
        } else {
            return Err(err(format!("closed before ready: {m:?}")));
        }
    }
}

/// One step: connect, subscribe, send, drain, tally.
pub async fn run_step(cfg: &StepConfig) -> Result<StepResult, WsBenchError> {
    let gen_cfg = generate::GenConfig {
        seed: cfg.seed,
        events: cfg.events,
        ..Default::default()
    };
    let plan_cfg = plan::PlanConfig {
        seed: cfg.seed,
        out_of_order: 0.0,
        duplicates: 0.0,
        forged: 0.0,
    };
    let (plan, users, orgs) = tokio::task::spawn_blocking(move || {
        let events = generate::generate(&gen_cfg);
        let ids = |k: EntityKind| {
            events
                .iter()
                .filter(|e| e.kind == k && e.action == generate::Action::Created)
                .map(|e| e.entity_id.clone())
                .collect::<Vec<_>>()
        };
        let (users, orgs) = (ids(EntityKind::User), ids(EntityKind::Organization));
        (plan::plan(&events, &plan_cfg), users, orgs)
    })
    .await?;

    // Connect and subscribe everyone before the first webhook.
    let connecting = Instant::now();
    let clients: Vec<Ws> = futures::stream::iter(0..cfg.clients)
        .map(|i| {
            let topics = topics_for(cfg.topics, i, &users, &orgs);
            async move { connect(cfg, i, &topics).await }
        })
        .buffered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    if cfg.progress {
        eprintln!(
            "wsbench: {} clients connected and subscribed in {:.1} s; sending {} webhooks at {}/s",
            clients.len(),
            connecting.elapsed().as_secs_f64(),
            plan.deliveries.len(),
            cfg.rate
        );
    }
    let first_seq = position(cfg).await?;
    let stop = CancellationToken::new();
    let received = Arc::new(Received::default());
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|ws| tokio::spawn(receive(ws, stop.clone(), received.clone(), cfg.keep_seqs)))
        .collect();

    let start = Instant::now();
    let signer = Arc::new(send::Signer {
        genuine: cfg.secret.clone(),
        forged: WebhookSecret::from_key(rand::thread_rng().gen::<[u8; 24]>().to_vec()),
    });
    let send_cfg = send::SendConfig {
        url: cfg
            .base
            .join("/webhooks/clerk")
            .map_err(|e| WsBenchError::Url(e.to_string()))?,
        connections: cfg.max_in_flight,
        max_in_flight: cfg.max_in_flight,
        timeout: Duration::from_secs(30),
        progress: cfg.progress,
    };
    let outcome = send::open_loop(&send_cfg, cfg.rate, Arc::new(plan.deliveries), signer).await?;
    let drained = drain(cfg, &received).await;
    let elapsed = start.elapsed();
    stop.cancel();
    let last_seq = position(cfg).await?;
    let start_ms = unix_ms() - elapsed.as_millis() as i64;
    let last_ms = received.last_ms.load(Ordering::Relaxed) as i64;
    let window_s = if last_ms > start_ms {
        (last_ms - start_ms) as f64 / 1000.0
    } else {
        elapsed.as_secs_f64()
    };

    let mut lag = Histogram::<u64>::new_with_max(600_000, 3).expect("valid histogram bounds");
    let mut r = StepResult {
        rate: cfg.rate,
        clients: cfg.clients,
        topics: Some(cfg.topics),
        webhooks_sent: outcome.stats.sent,
        webhooks_acked: outcome.stats.status_2xx,
        webhooks_per_s: outcome.stats.status_2xx as f64 / outcome.elapsed.as_secs_f64().max(1e-9),
        drained,
        elapsed_s: elapsed.as_secs_f64(),
        ..Default::default()
    };
    let mut seqs = Vec::with_capacity(tasks.len());
    for t in tasks {
        let s = t.await?;
        lag.add(&s.lag_ms).expect("histograms share bounds");
        r.messages += s.messages;
        r.out_of_order += s.out_of_order;
        r.resynced_clients += usize::from(s.resynced);
        r.closed_clients += usize::from(s.closed_early);
        if cfg.keep_seqs {
            seqs.push(s.seqs);
        }
    }
    r.changes = last_seq.saturating_sub(first_seq).max(0) as u64;
    let secs = window_s.max(1e-9);
    r.messages_per_s = r.messages as f64 / secs;
    r.changes_per_s = r.changes as f64 / secs;
    if !lag.is_empty() {
        r.latency_ms = LagMs {
            p50: lag.value_at_quantile(0.50) as f64,
            p90: lag.value_at_quantile(0.90) as f64,
            p99: lag.value_at_quantile(0.99) as f64,
            max: lag.max() as f64,
        };
    }
    r.all_delivered =
        drained && r.resynced_clients == 0 && r.closed_clients == 0 && r.out_of_order == 0;
    r.kept_up = r.all_delivered && r.latency_ms.p99 <= cfg.max_p99_ms;
    r.seqs = cfg.keep_seqs.then_some(seqs);
    Ok(r)
}

/// Runs the command; the returned text (or JSON) is what `main` prints.
pub async fn run(args: WsBenchArgs) -> Result<String, WsBenchError> {
    let bad = |m: String| Err(WsBenchError::InvalidArgs(m));
    let rates = if args.ramp.is_empty() {
        vec![args.rate]
    } else {
        args.ramp.clone()
    };
    if let Some(r) = rates.iter().find(|r| !(r.is_finite() && **r > 0.0)) {
        return bad(format!("rates must be positive numbers, got {r}"));
    }
    if args.clients == 0 {
        return bad("--clients must be at least 1".into());
    }
    if !(args.duration.is_finite() && args.duration > 0.0) {
        return bad("--duration must be a positive number of seconds".into());
    }
    if !(args.drain_timeout.is_finite() && args.drain_timeout > 0.0) {
        return bad("--drain-timeout must be a positive number of seconds".into());
    }
    if args.max_in_flight == 0 {
        return bad("--max-in-flight must be at least 1".into());
    }
    let base = reqwest::Url::parse(&args.url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
        .ok_or_else(|| WsBenchError::Url(args.url.clone()))?;
    let list = args.secret.as_deref().ok_or(WsBenchError::MissingSecret)?;
    let secret = SecretSet::parse_list(list)?.first().clone();
    let seed = args.seed.unwrap_or_else(|| rand::thread_rng().gen());
    let mut report = Report {
        url: args.url.clone(),
        seed,
        max_p99_ms: args.max_p99_ms,
        steps: Vec::new(),
        max_rate_kept_up: None,
    };
    for (i, rate) in rates.iter().enumerate() {
        let cfg = StepConfig {
            base: base.clone(),
            secret: secret.clone(),
            api_token: args.api_token.clone(),
            clients: args.clients,
            rate: *rate,
            events: ((rate * args.duration).ceil() as usize).max(1),
            seed: seed.wrapping_add(i as u64),
            topics: args.topics,
            max_in_flight: args.max_in_flight,
            drain_timeout: Duration::from_secs_f64(args.drain_timeout),
            max_p99_ms: args.max_p99_ms,
            keep_seqs: false,
            progress: !args.quiet,
        };
        let step = run_step(&cfg).await?;
        if !args.quiet {
            eprintln!("wsbench: {}", step_line(&step));
        }
        if step.kept_up {
            report.max_rate_kept_up = Some(report.max_rate_kept_up.unwrap_or(0.0).max(*rate));
        }
        report.steps.push(step);
    }
    Ok(if args.json {
        serde_json::to_string(&report).expect("the report serializes")
    } else {
        report.to_string().trim_end().to_owned()
    })
}

fn step_line(s: &StepResult) -> String {
    format!(
        "rate {:>6}/s  acked {:>6.0}/s  changes {:>6} ({:>5.0}/s)  clients {}  messages {:>8} ({:>8.0}/s)  lag ms p50 {} p90 {} p99 {} max {}  resynced {}  closed {}  out of order {}  {}",
        s.rate,
        s.webhooks_per_s,
        s.changes,
        s.changes_per_s,
        s.clients,
        s.messages,
        s.messages_per_s,
        s.latency_ms.p50,
        s.latency_ms.p90,
        s.latency_ms.p99,
        s.latency_ms.max,
        s.resynced_clients,
        s.closed_clients,
        s.out_of_order,
        match (s.drained, s.all_delivered, s.kept_up) {
            (false, _, _) => "NOT DRAINED",
            (true, false, _) => "CLIENTS DROPPED",
            (true, true, false) => "all delivered, p99 over the bound",
            (true, true, true) => "kept up",
        }
    )
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "wsbench {} (seed {})", self.url, self.seed)?;
        if let Some(t) = self.steps.first().and_then(|s| s.topics) {
            writeln!(f, "topics: {t:?}")?;
        }
        for s in &self.steps {
            writeln!(f, "{}", step_line(s))?;
        }
        if self.steps.len() > 1 {
            match self.max_rate_kept_up {
                Some(r) => writeln!(
                    f,
                    "largest rate kept up (no client behind, p99 <= {} ms): {r}/s",
                    self.max_p99_ms
                )?,
                None => writeln!(f, "no step kept up (p99 <= {} ms)", self.max_p99_ms)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_topics_cycle_through_the_stream() {
        let users = vec!["u1".to_string(), "u2".into()];
        let orgs = vec!["o1".to_string()];
        assert_eq!(
            topics_for(TopicMode::Mixed, 3, &users, &orgs),
            vec!["org:o1", "user:u2"]
        );
        assert_eq!(topics_for(TopicMode::All, 3, &users, &orgs), vec!["*"]);
    }
}
