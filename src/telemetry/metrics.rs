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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub event_type: String,
    pub status: String,
}

pub struct Metrics {
    registry: Registry,
    pub deliveries: Family<OutcomeLabels, Counter>,
    pub ack_seconds: Histogram,
    pub events_processed: Family<EventLabels, Counter>,
    pub apply_seconds: Histogram,
    pub sync_lag_seconds: Histogram,
    pub retries: Counter,
    /// Read at scrape time from the inbox.
    pub pending: Gauge,
    pub failed: Gauge,
    pub dead: Gauge,
    pub consumer_lag: Family<ConsumerLabels, Gauge>,
    pub cache_staleness_ms: Gauge,
}

/// Event types are not a bounded set (Clerk adds new ones); unknown ones share a label.
pub fn event_type_label(t: &str) -> String {
    const KNOWN: &[&str] = &[
        "user",
        "organization",
        "organizationMembership",
        "organizationInvitation",
        "organizationDomain",
        "role",
        "permission",
        "session",
        "email",
        "sms",
        "waitlistEntry",
    ];
    let family = t.split('.').next().unwrap_or("");
    if KNOWN.contains(&family)
        && t.len() <= 48
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_')
    {
        t.to_string()
    } else {
        "other".to_string()
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
        let apply_seconds = Histogram::new(exponential_buckets(0.00005, 2.0, 16));
        registry.register(
            "apply_duration_seconds",
            "Time to apply one event (its share of a batch transaction)",
            apply_seconds.clone(),
        );
        // 1 ms .. ~65 s: received -> committed.
        let sync_lag_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        registry.register(
            "sync_lag_seconds",
            "Time from receipt of a delivery to the commit of its effects",
            sync_lag_seconds.clone(),
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
        let cache_staleness_ms = Gauge::default();
        registry.register(
            "cache_staleness_milliseconds",
            "Write-behind: age of the newest change the cache has caught up with, when it did",
            cache_staleness_ms.clone(),
        );
        Self {
            consumer_lag,
            cache_staleness_ms,
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
    pub fn register_cache(&mut self, hits: &Counter, misses: &Counter) {
        self.registry
            .register("cache_hits", "Read-API cache hits", hits.clone());
        self.registry
            .register("cache_misses", "Read-API cache misses", misses.clone());
    }

    pub fn delivery(&self, outcome: Outcome) {
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
