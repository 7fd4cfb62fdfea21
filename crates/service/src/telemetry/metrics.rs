//! The Prometheus metrics of one running app.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// What happened to one webhook delivery at ingress.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    accepted,
    duplicate,
    bad_signature,
    malformed,
    too_large,
    unavailable,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerLabels {
    pub consumer: String,
}

/// One series per running binary: the crate version and the commit it was built
/// from (`CLERKSYNC_GIT_SHA` at build time, else "unknown"), so two labels of
/// bounded cardinality.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
    pub commit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventTypeLabels {
    pub event_type: String,
}

/// 50 µs .. ~1.6 s: one event's statements inside its batch transaction.
fn apply_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.00005, 2.0, 16))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub event_type: String,
    pub status: String,
}

pub struct Metrics {
    registry: Registry,
    /// `/v1/realtime` (names used by dashboards: keep them).
    pub realtime: RealtimeMetrics,
    /// The HTTP server's connection limits and the webhook body budget (serve.rs).
    pub http: HttpMetrics,
    /// Reconciliation passes run by the server (`clerksync_reconcile_*`).
    pub reconcile: ReconcileMetrics,
    pub deliveries: Family<OutcomeLabels, Counter>,
    pub ack_seconds: Histogram,
    pub events_processed: Family<EventLabels, Counter>,
    /// By `event_type` (see [`event_type_label`]).
    pub apply_seconds: Family<EventTypeLabels, Histogram, fn() -> Histogram>,
    pub sync_lag_seconds: Histogram,
    /// Clerk's event timestamp (envelope `timestamp`) -> committed: includes
    /// Svix's delivery delay and retries, so its buckets reach a day.
    pub clerk_sync_lag_seconds: Histogram,
    pub retries: Counter,
    /// Read at scrape time from the inbox.
    pub pending: Gauge,
    pub failed: Gauge,
    pub dead: Gauge,
    pub consumer_lag: Family<ConsumerLabels, Gauge>,
    pub cache_staleness_ms: Gauge,
    /// Operator alerts (alerts/mod.rs).
    pub alerts_sent: Counter,
    pub alerts_failed: Counter,
    pub alerts_suppressed: Counter,
    /// Always 1; the labels carry the build.
    pub build_info: Family<BuildLabels, Gauge>,
    /// Read at scrape time from the database pool.
    pub db_pool_in_use: Gauge,
    pub db_pool_idle: Gauge,
    /// Read at scrape time from the search index (live documents).
    pub search_index_documents: Gauge,
    /// The last five minutes of received/processed per second (the dashboard's chart).
    pub throughput: super::history::Throughput,
}

/// The commit this binary was built from, when the build said (no build script:
/// `CLERKSYNC_GIT_SHA=$(git rev-parse --short HEAD) cargo build`).
pub fn git_commit() -> &'static str {
    match option_env!("CLERKSYNC_GIT_SHA") {
        Some(s) if !s.is_empty() => s,
        _ => "unknown",
    }
}

/// Event types are not a bounded set (Clerk adds new ones): the known ones
/// (clerk/events.rs) are labelled by name, every other shares `other`.
pub fn event_type_label(t: &str) -> String {
    match crate::clerk::events::known(t) {
        Some(e) => e.name.to_string(),
        None => "other".to_string(),
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("clerksync");
        let deliveries = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Webhook deliveries received, by outcome",
            deliveries.clone(),
        );
        // 100 µs .. ~1.6 s: an ack is one group commit; anything slower is an incident.
        let ack_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 15));
        registry.register(
            "webhook_ack_duration_seconds",
            "Time from request start to durable acknowledgement",
            ack_seconds.clone(),
        );
        let events_processed = Family::<EventLabels, Counter>::default();
        registry.register(
            "events_processed",
            "Events applied, by type and final status",
            events_processed.clone(),
        );
        let apply_seconds =
            Family::<EventTypeLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                apply_histogram,
            );
        registry.register(
            "apply_duration_seconds",
            "Time to apply one event inside its batch transaction (commit excluded), by type",
            apply_seconds.clone(),
        );
        // 1 ms .. ~65 s: received -> committed.
        let sync_lag_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        registry.register(
            "sync_lag_seconds",
            "Time from receipt of a delivery to the commit of its effects",
            sync_lag_seconds.clone(),
        );
        // 10 ms .. ~23 h: Svix retries a failing endpoint for about a day.
        let clerk_sync_lag_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 24));
        registry.register(
            "clerk_sync_lag_seconds",
            "Time from Clerk's event timestamp to the commit of its effects",
            clerk_sync_lag_seconds.clone(),
        );
        let retries = Counter::default();
        registry.register(
            "event_retries",
            "Failed apply attempts scheduled for retry",
            retries.clone(),
        );
        let pending = Gauge::default();
        registry.register(
            "events_pending",
            "Events stored and not yet applied",
            pending.clone(),
        );
        let failed = Gauge::default();
        registry.register(
            "events_failed",
            "Events waiting for a retry",
            failed.clone(),
        );
        let dead = Gauge::default();
        registry.register("events_dead", "Events dead-lettered", dead.clone());
        let consumer_lag = Family::<ConsumerLabels, Gauge>::default();
        registry.register(
            "feed_consumer_lag_entries",
            "Change-feed entries committed but not yet handled, per consumer",
            consumer_lag.clone(),
        );
        let alerts_sent = Counter::default();
        registry.register(
            "alerts_sent",
            "Alerts delivered to the alert webhook",
            alerts_sent.clone(),
        );
        let alerts_failed = Counter::default();
        registry.register(
            "alerts_failed",
            "Alerts not delivered: every attempt failed, or the queue was full",
            alerts_failed.clone(),
        );
        let alerts_suppressed = Counter::default();
        registry.register(
            "alerts_suppressed",
            "Alerts held back by the per-kind rate limit",
            alerts_suppressed.clone(),
        );
        let cache_staleness_ms = Gauge::default();
        registry.register(
            "cache_staleness_milliseconds",
            "Write-behind: age of the newest change the cache has caught up with, when it did",
            cache_staleness_ms.clone(),
        );
        let build_info = Family::<BuildLabels, Gauge>::default();
        registry.register(
            "build_info",
            "Build of the running binary (always 1)",
            build_info.clone(),
        );
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
                commit: git_commit().to_string(),
            })
            .set(1);
        let db_pool_in_use = Gauge::default();
        registry.register(
            "db_pool_connections_in_use",
            "Database pool connections checked out",
            db_pool_in_use.clone(),
        );
        let db_pool_idle = Gauge::default();
        registry.register(
            "db_pool_connections_idle",
            "Database pool connections open and idle",
            db_pool_idle.clone(),
        );
        let search_index_documents = Gauge::default();
        registry.register(
            "search_index_documents",
            "Documents (users and organizations) in the search index",
            search_index_documents.clone(),
        );
        let realtime = RealtimeMetrics::register(&mut registry);
        let http = HttpMetrics::register(&mut registry);
        let reconcile = ReconcileMetrics::register(&mut registry);
        Self {
            reconcile,
            throughput: super::history::Throughput::new(),
            realtime,
            http,
            build_info,
            db_pool_in_use,
            db_pool_idle,
            search_index_documents,
            clerk_sync_lag_seconds,
            consumer_lag,
            cache_staleness_ms,
            alerts_sent,
            alerts_failed,
            alerts_suppressed,
            registry,
            deliveries,
            ack_seconds,
            events_processed,
            apply_seconds,
            sync_lag_seconds,
            retries,
            pending,
            failed,
            dead,
        }
    }

    /// Registers cache hit/miss counters (the cache owns them).
    pub fn register_cache(&mut self, hits: &Counter, misses: &Counter, errors: &Counter) {
        self.registry
            .register("cache_hits", "Read-API cache hits", hits.clone());
        self.registry
            .register("cache_misses", "Read-API cache misses", misses.clone());
        self.registry.register(
            "cache_errors",
            "Cache backend (Redis) failures; each read fell back to the store",
            errors.clone(),
        );
    }

    /// Records how long applying one event of `event_type` took.
    pub fn applied_in(&self, event_type: &str, took: std::time::Duration) {
        self.apply_seconds
            .get_or_create(&EventTypeLabels {
                event_type: event_type_label(event_type),
            })
            .observe(took.as_secs_f64());
    }

    pub fn delivery(&self, outcome: Outcome) {
        if outcome == Outcome::accepted {
            self.throughput.received();
        }
        self.deliveries
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Why a realtime connection, subscription or token refresh was refused (a
/// bounded set: one series each).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RejectReason {
    /// No token on the connection request.
    missing_token,
    /// Not the API token, and not a session token that verifies.
    invalid_token,
    /// A session token past `exp` (+ leeway) at connect or refresh.
    expired_token,
    /// A session token whose `iss`/`azp` is not on the allow-lists.
    not_allowed,
    /// Over the per-token connection limit.
    too_many_connections,
    /// A subscription the principal may not have.
    topic_denied,
    /// A refresh token for another user (or on a connection that has no session).
    refresh_refused,
    /// An open connection closed because its session token expired.
    session_expired,
    /// A subscribe request over the connection's per-minute allowance.
    subscribe_rate,
    /// A browser page from an origin not allowed to connect.
    origin_denied,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub reason: RejectReason,
}

/// The HTTP server's limits at work (`clerksync_http_*`, `clerksync_webhook_body_*`).
#[derive(Clone, Debug, Default)]
pub struct HttpMetrics {
    /// Open connections (upgraded WebSockets included).
    pub connections: Gauge,
    /// Connections closed because their headers did not arrive in time.
    pub header_timeouts: Counter,
    /// Connections closed while idle or still sending headers, to make room at the cap.
    pub evicted: Counter,
    /// Connections closed on accept: at the cap with none to evict.
    pub refused: Counter,
    /// Webhook body bytes reserved right now (the buffered-body budget in use).
    pub body_bytes_reserved: Gauge,
    /// Webhook deliveries answered 503 because the buffered-body budget was spent.
    pub body_budget_exhausted: Counter,
}

impl HttpMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = HttpMetrics::default();
        registry.register(
            "http_connections",
            "Open HTTP connections (WebSockets included)",
            m.connections.clone(),
        );
        registry.register(
            "http_header_timeouts",
            "Connections closed because a request's headers did not arrive in time",
            m.header_timeouts.clone(),
        );
        registry.register(
            "http_connections_evicted",
            "Idle or header-reading connections closed to make room at the connection cap",
            m.evicted.clone(),
        );
        registry.register(
            "http_connections_refused",
            "Connections closed on accept: at the cap with none idle to evict",
            m.refused.clone(),
        );
        registry.register(
            "webhook_body_bytes_reserved",
            "Webhook body bytes reserved from the buffered-body budget right now",
            m.body_bytes_reserved.clone(),
        );
        registry.register(
            "webhook_body_budget_exhausted",
            "Webhook deliveries answered 503 because the buffered-body budget was spent",
            m.body_budget_exhausted.clone(),
        );
        m
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileRecordLabels {
    /// The resource (`users`, `organizations`, ...): a bounded set.
    pub resource: String,
    /// `seen`, `created`, `updated`, `deleted`, `unchanged`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileResourceLabels {
    pub resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcilePassLabels {
    /// `complete`, `refused`, `dry_run`, `failed`.
    pub result: String,
}

/// Reconciliation passes the server runs (`clerksync_reconcile_*`,
/// backfill/schedule.rs): counted once per pass when it ends.
#[derive(Clone, Debug)]
pub struct ReconcileMetrics {
    pub records: Family<ReconcileRecordLabels, Counter>,
    /// Requests to Clerk's Backend API, and those answered 429.
    pub requests: Counter,
    pub throttled: Counter,
    pub passes: Family<ReconcilePassLabels, Counter>,
    pub duration_seconds: Histogram,
    /// What the last pass found to create, update or delete, per resource:
    /// above zero, webhooks were lost (or arrived during the pass).
    pub last_drift: Family<ReconcileResourceLabels, Gauge>,
    /// 1 while this node runs a pass.
    pub running: Gauge,
    /// Unix seconds of this node's last pass that completed.
    pub last_success_timestamp: Gauge,
}

impl ReconcileMetrics {
    fn register(registry: &mut Registry) -> Self {
        // 1 s .. ~9 h: a pass lists the whole instance under Clerk's rate limit.
        let m = ReconcileMetrics {
            records: Family::default(),
            requests: Counter::default(),
            throttled: Counter::default(),
            passes: Family::default(),
            duration_seconds: Histogram::new(exponential_buckets(1.0, 2.0, 16)),
            last_drift: Family::default(),
            running: Gauge::default(),
            last_success_timestamp: Gauge::default(),
        };
        registry.register(
            "reconcile_records",
            "Records of reconciliation passes, by resource and outcome (seen, created, updated, deleted, unchanged)",
            m.records.clone(),
        );
        registry.register(
            "reconcile_requests",
            "Requests reconciliation passes made to Clerk's Backend API",
            m.requests.clone(),
        );
        registry.register(
            "reconcile_throttled",
            "Requests of reconciliation passes Clerk answered 429 (retried after Retry-After)",
            m.throttled.clone(),
        );
        registry.register(
            "reconcile_passes",
            "Reconciliation passes ended, by result (complete, refused, dry_run, failed)",
            m.passes.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Wall time of a reconciliation pass",
            m.duration_seconds.clone(),
        );
        registry.register(
            "reconcile_last_drift",
            "Records the last pass found to create, update or delete, by resource (lost webhooks)",
            m.last_drift.clone(),
        );
        registry.register(
            "reconcile_running",
            "1 while this node runs a reconciliation pass",
            m.running.clone(),
        );
        registry.register(
            "reconcile_last_success_timestamp_seconds",
            "Unix time of the last reconciliation pass this node completed",
            m.last_success_timestamp.clone(),
        );
        m
    }
}

/// The realtime stream's metrics (`clerksync_realtime_*`).
#[derive(Clone, Debug)]
pub struct RealtimeMetrics {
    /// Open WebSocket connections.
    pub connections: Gauge,
    /// Text messages written to sockets (changes and control messages).
    pub messages_sent: Counter,
    /// Connections told to resync and closed because they could not keep up.
    pub resyncs: Counter,
    pub rejected: Family<RejectLabels, Counter>,
    /// A live change's commit -> its frame handed to the socket.
    pub delivery_lag_seconds: Histogram,
    /// Change-feed rows read by `since` replays (a topic's rows only).
    pub replay_rows_read: Counter,
}

impl RealtimeMetrics {
    fn register(registry: &mut Registry) -> Self {
        // 0.5 ms .. ~16 s.
        let m = RealtimeMetrics {
            connections: Gauge::default(),
            messages_sent: Counter::default(),
            resyncs: Counter::default(),
            rejected: Family::default(),
            delivery_lag_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            replay_rows_read: Counter::default(),
        };
        registry.register(
            "realtime_connections",
            "Open realtime WebSocket connections",
            m.connections.clone(),
        );
        registry.register(
            "realtime_messages_sent",
            "Messages written to realtime WebSocket clients",
            m.messages_sent.clone(),
        );
        registry.register(
            "realtime_resyncs",
            "Realtime clients too slow to keep up: told to resync and closed",
            m.resyncs.clone(),
        );
        registry.register(
            "realtime_rejected",
            "Realtime connections, subscriptions and token refreshes refused, by reason",
            m.rejected.clone(),
        );
        registry.register(
            "realtime_delivery_lag_seconds",
            "Time from a change's commit to its frame being handed to the WebSocket",
            m.delivery_lag_seconds.clone(),
        );
        registry.register(
            "realtime_replay_rows_read",
            "Change-feed rows read to replay realtime subscriptions (since)",
            m.replay_rows_read.clone(),
        );
        m
    }

    pub fn reject(&self, reason: RejectReason) {
        self.rejected.get_or_create(&RejectLabels { reason }).inc();
    }
}
