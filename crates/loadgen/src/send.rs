//! Sending the planned deliveries: closed loop or open loop, with latency histograms.
//!
//! Owns: signing each delivery at send time (a fresh `svix-timestamp`, as a Svix
//! retry would carry), the HTTP requests, the loop disciplines and the counts.
//! Plain `http://` targets go through the lean client of [`crate::http1`] (the
//! measuring tool must not eat the cores of what it measures); `https://` ones
//! through reqwest.
//!
//! Must never: measure open-loop latency from the moment a request actually went
//! out (that hides the server's stalls: "coordinated omission"; it is measured
//! from the intended send time instead), let in-flight requests grow without bound,
//! or retry a failed request (a failure is a result to report, not to paper over).

use super::http1::{self, Conn, Target, Webhook};
use super::plan::Delivery;
use clerksync::webhook::WebhookSecret;
use hdrhistogram::Histogram;
use reqwest::header::CONTENT_TYPE;
use reqwest::{Client, Url};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

#[derive(Debug, Clone)]
pub struct SendConfig {
    pub url: Url,
    /// Closed loop: this many workers, each with one request in flight (one
    /// keep-alive connection each).
    pub connections: usize,
    /// Open loop: at most this many requests in flight.
    pub max_in_flight: usize,
    pub timeout: Duration,
    /// Print progress lines to stderr.
    pub progress: bool,
}

/// The keys deliveries are signed with.
#[derive(Debug, Clone)]
pub struct Signer {
    pub genuine: WebhookSecret,
    /// A key the server does not know, for `--forged` deliveries.
    pub forged: WebhookSecret,
}

/// What happened to the requests.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Ack latency of genuine deliveries answered 2xx, in microseconds.
    pub latency_us: Histogram<u64>,
    pub sent: u64,
    pub status_2xx: u64,
    /// Genuine deliveries answered with anything but 2xx, by status.
    pub non_2xx: BTreeMap<u16, u64>,
    /// Forged deliveries by answer status (a correct server: all 401).
    pub forged_by_status: BTreeMap<u16, u64>,
    pub transport_errors: u64,
    pub first_transport_error: Option<String>,
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            // 1 µs .. 1 h at 3 significant digits; values above saturate.
            latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("valid histogram bounds"),
            sent: 0,
            status_2xx: 0,
            non_2xx: BTreeMap::new(),
            forged_by_status: BTreeMap::new(),
            transport_errors: 0,
            first_transport_error: None,
        }
    }

    fn record(&mut self, forged: bool, result: &Result<u16, SendError>, latency: Duration) {
        self.sent += 1;
        match result {
            Ok(status) if forged => *self.forged_by_status.entry(*status).or_default() += 1,
            Ok(status) if (200..300).contains(status) => {
                self.status_2xx += 1;
                let us = u64::try_from(latency.as_micros())
                    .unwrap_or(u64::MAX)
                    .max(1);
                self.latency_us.saturating_record(us);
            }
            Ok(status) => *self.non_2xx.entry(*status).or_default() += 1,
            Err(e) => {
                self.transport_errors += 1;
                if self.first_transport_error.is_none() {
                    self.first_transport_error = Some(e.describe());
                }
            }
        }
    }

    fn merge(&mut self, other: &Stats) {
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms share bounds");
        self.sent += other.sent;
        self.status_2xx += other.status_2xx;
        for (k, v) in &other.non_2xx {
            *self.non_2xx.entry(*k).or_default() += v;
        }
        for (k, v) in &other.forged_by_status {
            *self.forged_by_status.entry(*k).or_default() += v;
        }
        self.transport_errors += other.transport_errors;
        if self.first_transport_error.is_none() {
            self.first_transport_error = other.first_transport_error.clone();
        }
    }
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

/// The result of a sending run.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub stats: Stats,
    pub elapsed: Duration,
    /// Open loop: how often a due delivery had to wait for an in-flight slot.
    pub in_flight_limit_hits: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot build the HTTP client: {0}")]
    Tls(#[from] reqwest::Error),
    #[error("cannot reach the target: {0}")]
    Target(#[from] http1::HttpError),
}

/// Why one request got no answer: a transport error, counted and reported.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Http(#[from] http1::HttpError),
    #[error(transparent)]
    Tls(#[from] reqwest::Error),
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
}

impl SendError {
    /// The message for the report, causes included.
    fn describe(&self) -> String {
        match self {
            // reqwest's Display hides the cause chain; the cause says why.
            SendError::Tls(e) => {
                let mut msg = e.to_string();
                let mut source = std::error::Error::source(e);
                while let Some(s) = source {
                    msg.push_str(": ");
                    msg.push_str(&s.to_string());
                    source = s.source();
                }
                msg
            }
            // These name their cause in their own message.
            SendError::Http(_) | SendError::Timeout(_) => self.to_string(),
        }
    }
}

/// How requests go out.
enum Transport {
    /// `http://`: one lean keep-alive connection per request in flight.
    Plain { target: Target, timeout: Duration },
    /// `https://`: reqwest (TLS is not worth hand-rolling for a bench tool).
    Tls { client: Client, url: Url },
}

impl Transport {
    async fn new(cfg: &SendConfig, pool: usize) -> Result<Transport, ClientError> {
        if cfg.url.scheme() == "http" {
            return Ok(Transport::Plain {
                target: Target::resolve(&cfg.url).await?,
                timeout: cfg.timeout,
            });
        }
        let client = Client::builder()
            .pool_max_idle_per_host(pool)
            .tcp_nodelay(true)
            .timeout(cfg.timeout)
            .build()?;
        Ok(Transport::Tls {
            client,
            url: cfg.url.clone(),
        })
    }

    /// Signs and sends one delivery on `conn` (a fresh connection if it is
    /// `None` or was closed while idle). `conn` is left `Some` only if the
    /// answer allows reusing it; after any error it is `None`.
    async fn send(
        &self,
        conn: &mut Option<Conn>,
        signer: &Signer,
        d: &Delivery,
    ) -> Result<u16, SendError> {
        // Signed now, not at generation: the server refuses timestamps more than
        // five minutes off, and a long run must not age out of the window.
        let ts = unix_secs();
        let key = if d.forged {
            &signer.forged
        } else {
            &signer.genuine
        };
        let signature = key.sign(&d.svix_id, ts, &d.body);
        match self {
            Transport::Plain { target, timeout } => {
                let webhook = Webhook {
                    svix_id: &d.svix_id,
                    timestamp: ts,
                    signature: &signature,
                    body: &d.body,
                };
                let exchange = async {
                    let mut c = match conn.take() {
                        Some(c) if c.still_open() => c,
                        _ => target.connect().await?,
                    };
                    let answer = c.post(target, &webhook).await?;
                    if answer.reusable {
                        *conn = Some(c);
                    }
                    Ok(answer.status)
                };
                tokio::time::timeout(*timeout, exchange)
                    .await
                    .map_err(|_| SendError::Timeout(*timeout))?
            }
            Transport::Tls { client, url } => {
                let resp = client
                    .post(url.clone())
                    .header("svix-id", &*d.svix_id)
                    .header("svix-timestamp", ts.to_string())
                    .header("svix-signature", signature)
                    .header(CONTENT_TYPE, "application/json")
                    .body(d.body.clone())
                    .send()
                    .await?;
                let status = resp.status().as_u16();
                // Read the answer to its end: only then is the ack complete and
                // the keep-alive connection free for the next request.
                resp.bytes().await?;
                Ok(status)
            }
        }
    }
}

fn unix_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Counters the progress printer reads while the run goes on.
#[derive(Default)]
struct Progress {
    done: AtomicU64,
    acks: AtomicU64,
}

/// Prints a line to stderr every few seconds until aborted.
fn spawn_progress(
    progress: Arc<Progress>,
    total: usize,
    start: Instant,
) -> tokio::task::JoinHandle<()> {
    const EVERY: Duration = Duration::from_secs(3);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at((start + EVERY).into(), EVERY);
        let mut last_acks = 0;
        loop {
            tick.tick().await;
            let acks = progress.acks.load(Ordering::Relaxed);
            let done = progress.done.load(Ordering::Relaxed);
            eprintln!(
                "loadgen: {:>5.1} s  sent {done}/{total}  acks {acks}  {:.0} acks/s",
                start.elapsed().as_secs_f64(),
                (acks - last_acks) as f64 / EVERY.as_secs_f64(),
            );
            last_acks = acks;
        }
    })
}

/// Closed loop: `connections` workers, each sending its next delivery as soon as
/// the previous one is answered. Measures the server's capacity.
pub async fn closed_loop(
    cfg: &SendConfig,
    deliveries: Arc<Vec<Delivery>>,
    signer: Arc<Signer>,
) -> Result<Outcome, ClientError> {
    let transport = Arc::new(Transport::new(cfg, cfg.connections).await?);
    let next = Arc::new(AtomicUsize::new(0));
    let progress = Arc::new(Progress::default());
    let start = Instant::now();
    let printer = cfg
        .progress
        .then(|| spawn_progress(progress.clone(), deliveries.len(), start));
    let mut workers = JoinSet::new();
    for _ in 0..cfg.connections.clamp(1, deliveries.len().max(1)) {
        let (transport, deliveries) = (transport.clone(), deliveries.clone());
        let (next, signer, progress) = (next.clone(), signer.clone(), progress.clone());
        workers.spawn(async move {
            // Worker-local stats and connection: no shared lock on the hot path.
            let mut stats = Stats::new();
            let mut conn = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(d) = deliveries.get(i) else { break };
                let t0 = Instant::now();
                let r = transport.send(&mut conn, &signer, d).await;
                stats.record(d.forged, &r, t0.elapsed());
                progress.done.fetch_add(1, Ordering::Relaxed);
                if matches!(r, Ok(s) if !d.forged && (200..300).contains(&s)) {
                    progress.acks.fetch_add(1, Ordering::Relaxed);
                }
            }
            stats
        });
    }
    let mut stats = Stats::new();
    while let Some(worker) = workers.join_next().await {
        stats.merge(&worker.expect("a loadgen worker panicked"));
    }
    let elapsed = start.elapsed();
    if let Some(p) = printer {
        p.abort();
    }
    Ok(Outcome {
        stats,
        elapsed,
        in_flight_limit_hits: 0,
    })
}

/// Open loop: delivery `i` is due at `start + i/rate` whatever the server does;
/// latency runs from that due time, so a stall shows up in every delivery it
/// delays. In-flight requests are bounded; when the bound is hit the dispatcher
/// waits (and the wait counts in the latency of what it delays).
pub async fn open_loop(
    cfg: &SendConfig,
    rate: f64,
    deliveries: Arc<Vec<Delivery>>,
    signer: Arc<Signer>,
) -> Result<Outcome, ClientError> {
    let transport = Arc::new(Transport::new(cfg, cfg.max_in_flight).await?);
    // Idle keep-alive connections; never more than `max_in_flight` exist.
    let idle: Arc<Mutex<Vec<Conn>>> = Arc::default();
    let slots = Arc::new(Semaphore::new(cfg.max_in_flight));
    let stats = Arc::new(Mutex::new(Stats::new()));
    let progress = Arc::new(Progress::default());
    let mut limit_hits = 0;
    let start = Instant::now();
    let printer = cfg
        .progress
        .then(|| spawn_progress(progress.clone(), deliveries.len(), start));
    let interval = Duration::from_secs_f64(1.0 / rate);
    for i in 0..deliveries.len() {
        // Computed from `start` each time (not accumulated) so rounding never drifts.
        let due = start + interval.mul_f64(i as f64);
        if due > Instant::now() {
            // tokio's timer has 1 ms resolution: deliveries due within the same
            // millisecond are released together, at most ~1 ms late.
            tokio::time::sleep_until(due.into()).await;
        }
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                limit_hits += 1;
                slots
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed")
            }
        };
        let (transport, deliveries, idle) = (transport.clone(), deliveries.clone(), idle.clone());
        let (signer, stats, progress) = (signer.clone(), stats.clone(), progress.clone());
        tokio::spawn(async move {
            let d = &deliveries[i];
            let mut conn = idle.lock().expect("idle lock").pop();
            let r = transport.send(&mut conn, &signer, d).await;
            let latency = due.elapsed();
            if let Some(c) = conn {
                idle.lock().expect("idle lock").push(c);
            }
            stats
                .lock()
                .expect("stats lock")
                .record(d.forged, &r, latency);
            progress.done.fetch_add(1, Ordering::Relaxed);
            if matches!(r, Ok(s) if !d.forged && (200..300).contains(&s)) {
                progress.acks.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
        });
    }
    // All requests have finished once every slot is free again.
    let all = u32::try_from(cfg.max_in_flight).unwrap_or(u32::MAX);
    let _all = slots
        .acquire_many(all)
        .await
        .expect("the semaphore is never closed");
    let elapsed = start.elapsed();
    if let Some(p) = printer {
        p.abort();
    }
    let stats = stats.lock().expect("stats lock").clone();
    Ok(Outcome {
        stats,
        elapsed,
        in_flight_limit_hits: limit_hits,
    })
}
