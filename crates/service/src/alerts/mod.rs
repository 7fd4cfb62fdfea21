//! Operator alerts: a Slack-compatible webhook (`POST {"text": "..."}`).
//!
//! Owns: deciding when to alert (an event dead-letters, webhook signature
//! failures above a rate, sync lag above a threshold, a reconciliation pass
//! that found more drift than a threshold: webhooks are being lost), deduplicating and
//! rate-limiting per kind of alert, and delivering them from a background task
//! with retries. Must never: block or slow the caller (ingress, processor: alerts
//! are queued with `try_send` and dropped, counted, when the queue is full), put
//! an event body, a secret or the alert URL's path (Slack URLs carry a token) in
//! an alert or a log line.

use crate::clock::Clock;
use crate::processor::EventObserver;
use crate::setting::Invalid;
use crate::store::db::Database;
use crate::sync::{Delivery, Outcome};
use crate::telemetry::metrics::Metrics;
use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub const DEFAULT_SIGNATURE_FAILURES_PER_MINUTE: u32 = 20;
pub const DEFAULT_LAG_SECS: u64 = 60;
pub const DEFAULT_MIN_INTERVAL_SECS: u64 = 300;
/// Records a reconciliation pass may find out of step before it alerts: a
/// few are webhooks still in flight while the pass listed; more are lost.
pub const DEFAULT_RECONCILE_DRIFT: u64 = 10;

/// Alerts waiting for the sender; more are dropped (and counted as failed).
const QUEUE: usize = 64;
/// Attempts per alert, with a per-attempt timeout and doubling waits between.
const ATTEMPTS: u32 = 4;
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY_BASE: Duration = Duration::from_millis(500);
/// How often the lag is looked at.
const LAG_CHECK: Duration = Duration::from_secs(5);
/// Longest error text quoted in an alert.
const MAX_ERROR_CHARS: usize = 400;

/// The alert webhook's address. `Debug`/`Display` show only scheme and host:
/// the path of a Slack (or similar) webhook URL is its credential.
#[derive(Clone, PartialEq, Eq)]
pub struct AlertUrl(url::Url);

impl AlertUrl {
    /// An absolute `http`/`https` URL with a host. The error never quotes the input.
    pub fn parse(s: &str) -> Result<AlertUrl, String> {
        let u = url::Url::parse(s.trim()).map_err(|_| {
            "not a URL: use the full webhook address, e.g. https://hooks.slack.com/services/..."
                .to_string()
        })?;
        if !matches!(u.scheme(), "http" | "https") {
            return Err("must be an http:// or https:// URL".into());
        }
        if u.host_str().is_none_or(str::is_empty) {
            return Err("the URL has no host".into());
        }
        Ok(AlertUrl(u))
    }

    /// `scheme://host[:port]`: what logs and errors may show.
    pub fn redacted(&self) -> String {
        let host = self.0.host_str().unwrap_or("");
        match self.0.port() {
            Some(p) => format!("{}://{host}:{p}", self.0.scheme()),
            None => format!("{}://{host}", self.0.scheme()),
        }
    }
}

impl fmt::Debug for AlertUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AlertUrl({}/<redacted>)", self.redacted())
    }
}

impl fmt::Display for AlertUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// The alert settings as given (flags, `CLERKSYNC_ALERT_*`, config file keys):
/// one field per setting, checked by [`AlertSettings::build`].
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize, clap::Args)]
pub struct AlertSettings {
    /// Alert webhook (Slack-compatible `{"text": ...}`); alerts are off when unset.
    #[arg(
        long,
        global = true,
        env = "CLERKSYNC_ALERT_WEBHOOK_URL",
        hide_env_values = true
    )]
    pub alert_webhook_url: Option<String>,
    /// Signature failures per minute above which an alert is sent.
    #[arg(
        long,
        global = true,
        env = "CLERKSYNC_ALERT_SIGNATURE_FAILURES_PER_MINUTE"
    )]
    pub alert_signature_failures_per_minute: Option<u32>,
    /// Sync lag (oldest pending event, or receipt -> applied) above which an alert is sent.
    #[arg(long, global = true, env = "CLERKSYNC_ALERT_LAG_SECONDS")]
    pub alert_lag_seconds: Option<u64>,
    /// At most one alert of each kind per this many seconds.
    #[arg(long, global = true, env = "CLERKSYNC_ALERT_MIN_INTERVAL_SECS")]
    pub alert_min_interval_secs: Option<u64>,
    /// Records a reconciliation pass finds to create, update or delete (all
    /// resources) above which an alert is sent: webhooks are being lost.
    #[arg(long, global = true, env = "CLERKSYNC_ALERT_RECONCILE_DRIFT")]
    pub alert_reconcile_drift: Option<u64>,
}

impl AlertSettings {
    /// The alert configuration, defaults filled in. The URL is never quoted in
    /// an error (its path is a token).
    pub fn build(&self) -> Result<AlertConfig, Invalid> {
        let url = match self.alert_webhook_url.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(u) => Some(
                AlertUrl::parse(u).map_err(|m| Invalid::new("CLERKSYNC_ALERT_WEBHOOK_URL", m))?,
            ),
        };
        let per_minute = self
            .alert_signature_failures_per_minute
            .unwrap_or(DEFAULT_SIGNATURE_FAILURES_PER_MINUTE);
        if per_minute == 0 {
            return Err(Invalid::new(
                "CLERKSYNC_ALERT_SIGNATURE_FAILURES_PER_MINUTE",
                "must be at least 1",
            ));
        }
        let lag = self.alert_lag_seconds.unwrap_or(DEFAULT_LAG_SECS);
        if lag == 0 {
            return Err(Invalid::new(
                "CLERKSYNC_ALERT_LAG_SECONDS",
                "must be at least 1",
            ));
        }
        let interval = self
            .alert_min_interval_secs
            .unwrap_or(DEFAULT_MIN_INTERVAL_SECS);
        Ok(AlertConfig {
            url,
            signature_failures_per_minute: per_minute,
            lag: Duration::from_secs(lag),
            min_interval: Duration::from_secs(interval),
            reconcile_drift: self
                .alert_reconcile_drift
                .unwrap_or(DEFAULT_RECONCILE_DRIFT),
        })
    }
}

/// The checked alert configuration.
#[derive(Debug, Clone)]
pub struct AlertConfig {
    /// None: alerts are off.
    pub url: Option<AlertUrl>,
    /// More webhook signature failures than this within a minute raise an alert.
    pub signature_failures_per_minute: u32,
    /// The oldest pending event older than this, or an event applied this long
    /// after it was received, raises an alert.
    pub lag: Duration,
    /// At most one alert of each kind per this window; the rest are counted.
    pub min_interval: Duration,
    /// A reconciliation pass that finds more drift than this raises an alert.
    pub reconcile_drift: u64,
}

impl Default for AlertConfig {
    fn default() -> Self {
        Self {
            url: None,
            signature_failures_per_minute: DEFAULT_SIGNATURE_FAILURES_PER_MINUTE,
            lag: Duration::from_secs(DEFAULT_LAG_SECS),
            min_interval: Duration::from_secs(DEFAULT_MIN_INTERVAL_SECS),
            reconcile_drift: DEFAULT_RECONCILE_DRIFT,
        }
    }
}

/// The kinds of alert; each is deduplicated on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertKind {
    DeadLetter = 0,
    SignatureFailures = 1,
    Lag = 2,
    ReconcileDrift = 3,
}

#[derive(Default)]
struct KindState {
    last_sent: Option<Instant>,
    suppressed: u64,
}

/// Fixed one-minute buckets: simple, bounded memory, and at most one alert
/// raised per minute however long an attack goes on.
struct SignatureWindow {
    started: Instant,
    count: u32,
}

/// Decides what to alert on; cheap to call from hot paths. Shared by ingress
/// (signature failures), the processor (as its [`EventObserver`]) and the lag
/// check. When alerts are off every method returns at once.
pub struct Alerter {
    config: AlertConfig,
    tx: Option<mpsc::Sender<String>>,
    kinds: Mutex<[KindState; 4]>,
    signatures: Mutex<SignatureWindow>,
    /// Largest received -> applied lag seen since the last lag check (ms).
    max_sync_lag_ms: AtomicI64,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
}

/// Delivers queued alerts; [`AlertSender::run`] is the background task.
pub struct AlertSender {
    rx: mpsc::Receiver<String>,
    url: AlertUrl,
    client: reqwest::Client,
    metrics: Arc<Metrics>,
}

impl Alerter {
    /// The alerter and, when an alert URL is configured, the sender to spawn.
    pub fn new(
        config: AlertConfig,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
    ) -> (Arc<Alerter>, Option<AlertSender>) {
        let (tx, sender) = match &config.url {
            Some(url) => {
                let (tx, rx) = mpsc::channel(QUEUE);
                let client = reqwest::Client::builder()
                    .timeout(ATTEMPT_TIMEOUT)
                    .build()
                    .unwrap_or_default();
                let sender = AlertSender {
                    rx,
                    url: url.clone(),
                    client,
                    metrics: metrics.clone(),
                };
                (Some(tx), Some(sender))
            }
            None => (None, None),
        };
        let alerter = Alerter {
            config,
            tx,
            kinds: Mutex::new(Default::default()),
            signatures: Mutex::new(SignatureWindow {
                started: Instant::now(),
                count: 0,
            }),
            max_sync_lag_ms: AtomicI64::new(0),
            metrics,
            clock,
        };
        (Arc::new(alerter), sender)
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues an alert of `kind` unless one went out within the window; `text`
    /// is only built when the alert is sent.
    pub fn raise(&self, kind: AlertKind, text: impl FnOnce() -> String) {
        let Some(tx) = &self.tx else { return };
        let suppressed = {
            let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
            let k = &mut kinds[kind as usize];
            let now = Instant::now();
            if k.last_sent
                .is_some_and(|t| now.duration_since(t) < self.config.min_interval)
            {
                k.suppressed += 1;
                self.metrics.alerts_suppressed.inc();
                return;
            }
            k.last_sent = Some(now);
            std::mem::take(&mut k.suppressed)
        };
        let mut text = text();
        if suppressed > 0 {
            text.push_str(&format!(" ({suppressed} more suppressed)"));
        }
        if tx.try_send(text).is_err() {
            // Full (the receiver is slow or down) or closed (shutting down):
            // never wait here, the caller is ingress or the processor.
            self.metrics.alerts_failed.inc();
            tracing::warn!(kind = ?kind, "alert queue full; alert dropped");
        }
    }

    /// Called by ingress for each delivery refused for its signature.
    pub fn signature_failure(&self) {
        if self.tx.is_none() {
            return;
        }
        let threshold = self.config.signature_failures_per_minute;
        let crossed = {
            let mut w = self.signatures.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            if now.duration_since(w.started) >= Duration::from_secs(60) {
                w.started = now;
                w.count = 0;
            }
            w.count = w.count.saturating_add(1);
            w.count == threshold.saturating_add(1)
        };
        if crossed {
            self.raise(AlertKind::SignatureFailures, || {
                format!(
                    "clerksync: more than {threshold} webhook signature failures within a minute \
                     (forged deliveries, or CLERKSYNC_WEBHOOK_SECRET does not match the endpoint's signing secret)"
                )
            });
        }
    }

    /// Called when a reconciliation pass ends with what it found out of step:
    /// (resource, records to create + update + delete).
    pub fn reconcile_drift(&self, per_resource: &[(&str, i64)], dry_run: bool) {
        let total: i64 = per_resource.iter().map(|(_, n)| n).sum();
        if total <= self.config.reconcile_drift as i64 {
            return;
        }
        let threshold = self.config.reconcile_drift;
        self.raise(AlertKind::ReconcileDrift, || {
            let parts: Vec<String> = per_resource
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(r, n)| format!("{r} {n}"))
                .collect();
            format!(
                "clerksync: a reconciliation pass{} found {total} records out of step with Clerk \
                 (more than {threshold}: {}); webhooks are being lost: check the endpoint in \
                 Clerk's dashboard (disabled? failing deliveries?)",
                if dry_run { " (dry run)" } else { "" },
                parts.join(", ")
            )
        });
    }

    /// Looks at the lag every few seconds until `cancel`.
    pub async fn watch_lag(self: Arc<Self>, db: Database, cancel: CancellationToken) {
        if self.tx.is_none() {
            return;
        }
        let threshold_ms = self.config.lag.as_millis() as i64;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(LAG_CHECK) => {}
                _ = cancel.cancelled() => return,
            }
            let now = self.clock.now_ms();
            let oldest = match crate::store::events::oldest_pending_received_at(&db).await {
                Ok(o) => o,
                Err(e) => {
                    tracing::debug!(error = %e, "lag check: reading the inbox failed");
                    None
                }
            };
            let pending_age = oldest.map(|t| (now - t).max(0)).unwrap_or(0);
            let applied_lag = self.max_sync_lag_ms.swap(0, Ordering::Relaxed);
            if pending_age > threshold_ms || applied_lag > threshold_ms {
                let limit = self.config.lag.as_secs_f64();
                self.raise(AlertKind::Lag, || {
                    format!(
                        "clerksync: sync lag over {limit:.0} s: oldest pending event waiting {:.0} s, \
                         slowest event applied in the last {} s took {:.0} s from receipt",
                        pending_age as f64 / 1000.0,
                        LAG_CHECK.as_secs(),
                        applied_lag as f64 / 1000.0
                    )
                });
            }
        }
    }
}

impl EventObserver for Alerter {
    fn on_applied(&self, d: &Delivery, _outcome: Outcome) {
        if self.tx.is_some() {
            let lag = self.clock.now_ms() - d.received_at;
            self.max_sync_lag_ms.fetch_max(lag, Ordering::Relaxed);
        }
    }

    fn on_error(&self, d: &Delivery, error: &str, dead: bool) {
        if !dead {
            return;
        }
        self.raise(AlertKind::DeadLetter, || {
            format!(
                "clerksync: event dead-lettered: {} {} (entity {}) after {} attempt(s): {}",
                slack_escape(&d.event_type),
                slack_escape(&d.svix_id),
                slack_escape(d.entity_key.as_deref().unwrap_or("none")),
                d.attempts + 1,
                slack_escape(&truncate(&elide_quoted(error), MAX_ERROR_CHARS)),
            )
        });
    }
}

impl AlertSender {
    /// Sends queued alerts one at a time until `cancel`.
    pub async fn run(mut self, cancel: CancellationToken) {
        loop {
            let text = tokio::select! {
                t = self.rx.recv() => match t {
                    Some(t) => t,
                    None => return,
                },
                _ = cancel.cancelled() => return,
            };
            self.deliver(&text, &cancel).await;
        }
    }

    async fn deliver(&self, text: &str, cancel: &CancellationToken) {
        let body = serde_json::json!({ "text": text });
        let mut last_error = String::new();
        for attempt in 1..=ATTEMPTS {
            let sent = tokio::select! {
                r = self.client.post(self.url.0.clone()).json(&body).send() => r,
                // Shutting down: a hung receiver must not hold the app up.
                _ = cancel.cancelled() => return,
            };
            match sent {
                Ok(r) if r.status().is_success() => {
                    self.metrics.alerts_sent.inc();
                    return;
                }
                Ok(r) => last_error = format!("HTTP {}", r.status()),
                // reqwest puts the whole URL in its errors: strip it.
                Err(e) => last_error = error_chain(&e.without_url()),
            }
            if attempt < ATTEMPTS {
                tokio::select! {
                    _ = tokio::time::sleep(RETRY_BASE * 2u32.pow(attempt - 1)) => {}
                    _ = cancel.cancelled() => break,
                }
            }
        }
        self.metrics.alerts_failed.inc();
        tracing::warn!(
            target_host = %self.url,
            error = %last_error,
            "alert delivery failed"
        );
    }
}

/// An error and its sources on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Parse errors quote the offending value (`` `42` ``, `"ada@example.com"`):
/// an alert leaves the service, so quoted values are elided, keeping the field path.
fn elide_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '"' || c == '`' {
            out.push_str("...");
            for inner in chars.by_ref() {
                if inner == c {
                    out.push(c);
                    break;
                }
            }
        }
    }
    out
}

fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// Slack treats `<`, `>` and `&` as markup; escaped, an id or error reads as text.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_shows_only_scheme_and_host() {
        let u = AlertUrl::parse("https://hooks.slack.com/services/T000/B000/XXXXsecret").unwrap();
        assert_eq!(u.redacted(), "https://hooks.slack.com");
        assert!(!format!("{u:?} {u}").contains("XXXXsecret"));
        let u = AlertUrl::parse("http://127.0.0.1:9999/hook?token=abc").unwrap();
        assert_eq!(u.to_string(), "http://127.0.0.1:9999");
    }

    #[test]
    fn bad_urls_are_refused_without_being_quoted() {
        for s in [
            "hooks.slack.com/services/sekrit",
            "ftp://h/sekrit",
            "mailto:sekrit@x",
            "",
        ] {
            let e = AlertUrl::parse(s).unwrap_err();
            assert!(!e.contains("sekrit"), "{e}");
        }
    }

    fn alerter(interval: Duration) -> (Arc<Alerter>, AlertSender) {
        let config = AlertConfig {
            url: Some(AlertUrl::parse("http://127.0.0.1:1/x").unwrap()),
            signature_failures_per_minute: 3,
            min_interval: interval,
            ..Default::default()
        };
        let (a, s) = Alerter::new(config, Arc::new(Metrics::new()), crate::clock::system());
        (a, s.unwrap())
    }

    #[test]
    fn one_alert_per_window_then_the_count_of_suppressed_ones() {
        let (a, mut s) = alerter(Duration::from_secs(3600));
        for i in 0..5 {
            a.raise(AlertKind::DeadLetter, || format!("dead {i}"));
        }
        a.raise(AlertKind::Lag, || "lag".into());
        assert_eq!(s.rx.try_recv().unwrap(), "dead 0");
        assert_eq!(s.rx.try_recv().unwrap(), "lag");
        assert!(s.rx.try_recv().is_err());
        assert_eq!(a.metrics.alerts_suppressed.get(), 4);

        let (a, mut s) = alerter(Duration::ZERO);
        a.raise(AlertKind::DeadLetter, || "a".into());
        a.raise(AlertKind::DeadLetter, || "b".into());
        assert_eq!(s.rx.try_recv().unwrap(), "a");
        assert_eq!(s.rx.try_recv().unwrap(), "b");
    }

    #[test]
    fn suppressed_count_rides_on_the_next_alert() {
        let (a, mut s) = alerter(Duration::from_secs(3600));
        a.raise(AlertKind::DeadLetter, || "first".into());
        a.raise(AlertKind::DeadLetter, || "x".into());
        a.raise(AlertKind::DeadLetter, || "y".into());
        // The window passes (without waiting for it).
        a.kinds.lock().unwrap()[0].last_sent = None;
        a.raise(AlertKind::DeadLetter, || "second".into());
        assert_eq!(s.rx.try_recv().unwrap(), "first");
        assert_eq!(s.rx.try_recv().unwrap(), "second (2 more suppressed)");
    }

    #[test]
    fn signature_failures_alert_once_when_the_rate_is_crossed() {
        let (a, mut s) = alerter(Duration::ZERO);
        for _ in 0..3 {
            a.signature_failure();
        }
        assert!(s.rx.try_recv().is_err(), "at the threshold: no alert");
        for _ in 0..10 {
            a.signature_failure();
        }
        assert!(s.rx.try_recv().unwrap().contains("more than 3"));
        assert!(s.rx.try_recv().is_err(), "one alert per minute");
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        let (a, _s) = alerter(Duration::ZERO);
        for _ in 0..QUEUE + 5 {
            a.raise(AlertKind::Lag, || "lag".into());
        }
        assert_eq!(a.metrics.alerts_failed.get(), 5);
    }

    #[test]
    fn dead_letter_text_names_the_event_and_escapes_markup() {
        let (a, mut s) = alerter(Duration::ZERO);
        let d = Delivery {
            seq: 1,
            svix_id: "msg_1".into(),
            event_type: "user.created".into(),
            entity_key: Some("user_<1>".into()),
            svix_timestamp: 0,
            event_timestamp: None,
            received_at: 0,
            body: "{\"secret\":\"body\"}".into(),
            attempts: 0,
        };
        a.on_error(&d, "bad", false);
        assert!(s.rx.try_recv().is_err(), "a retryable failure is no alert");
        a.on_error(&d, &"e".repeat(1000), true);
        let text = s.rx.try_recv().unwrap();
        assert!(text.contains("msg_1") && text.contains("user.created"));
        assert!(text.contains("user_&lt;1&gt;"));
        let (a, mut s) = alerter(Duration::ZERO);
        a.on_error(
            &d,
            "invalid user payload: email_addresses[0].email_address: invalid type: string \"ada@example.com\", expected u64",
            true,
        );
        let text = s.rx.try_recv().unwrap();
        assert!(!text.contains("ada@"), "{text}");
        assert!(
            text.contains("email_addresses[0].email_address: invalid type: string \"...\""),
            "{text}"
        );
        assert!(!text.contains("body"));
        assert!(text.len() < 600);
    }
}
