//! The inbox's rows as the rest of the program sees them: a delivery about to
//! be stored, a stored delivery handed to apply, an operator's view of a row.
//!
//! Owns: these plain types and the column list both backends read a
//! [`Delivery`] from. Must never: hold SQL that differs between backends (each
//! backend's statements are in its own folder).

/// A verified delivery about to be stored.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub svix_id: String,
    pub svix_timestamp: i64,
    pub event_type: String,
    pub entity_key: Option<String>,
    pub object_id: Option<String>,
    pub event_timestamp_ms: Option<i64>,
    pub received_at_ms: i64,
    pub body: String,
    /// The user the delivery concerns ([`crate::clerk::envelope::EnvelopeHead::user_id`]).
    pub user_id: Option<String>,
    /// Its email addresses and phone numbers, normalized; indexed in
    /// `inbox_contacts` so erasure finds the delivery by them.
    pub contacts: Vec<String>,
}

/// A stored delivery, as the processor hands it over.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub seq: i64,
    pub svix_id: String,
    pub event_type: String,
    pub entity_key: Option<String>,
    pub svix_timestamp: i64,
    /// The envelope's `timestamp` (ms), read at ingress; None when absent.
    pub event_timestamp: Option<i64>,
    pub received_at: i64,
    pub body: String,
    pub attempts: i32,
}

/// The inbox columns a [`Delivery`] is read from, in its field order, the body
/// from its own table (a subquery, so the same list serves a SELECT and an
/// UPDATE's RETURNING) as the backend's stored bytes (`BODY`: plain text or a
/// zstd frame, [`crate::store::body::decode`]). A body that is missing (expired
/// by the raw-body retention, which only takes applied rows, or deleted by
/// hand) reads as empty: that event dead-letters with a parse error instead of
/// failing every read of the due events.
macro_rules! delivery_columns {
    ($body:expr) => {
        concat!(
            "seq, svix_id, event_type, entity_key, svix_timestamp, event_timestamp, \
             received_at, (SELECT ",
            $body,
            " FROM inbox_bodies b WHERE b.seq = inbox.seq) AS body, attempts"
        )
    };
}
pub(crate) use delivery_columns;

/// The stored log in seq order, as [`LogRow`]s (discarded deliveries left out,
/// and those whose body the raw-body retention has dropped: they can no
/// longer be applied), the body as the backend's stored bytes.
macro_rules! log_page {
    ($body:expr) => {
        concat!(
            "SELECT seq, svix_id, event_type, entity_key, object_id, svix_timestamp, \
             event_timestamp, received_at, ",
            $body,
            " AS body FROM inbox JOIN inbox_bodies b USING (seq) \
             WHERE seq > $1 AND status <> 'discarded' ORDER BY seq LIMIT $2"
        )
    };
}
pub(crate) use log_page;

/// One delivery of the stored log, as replay copies it into another database.
#[derive(Debug, Clone)]
pub struct LogRow {
    pub seq: i64,
    pub svix_id: String,
    pub event_type: String,
    pub entity_key: Option<String>,
    pub object_id: Option<String>,
    pub svix_timestamp: i64,
    pub event_timestamp: Option<i64>,
    pub received_at: i64,
    pub body: String,
}

/// Inbox rows in every status but `done`, by status: a range of the
/// (status, seq) index each, so it costs what is open, not what was ever
/// received. (`GROUP BY status` over the whole inbox read every row's index
/// entry: 1.2 s at 2M rows on SQLite, and benchmarks poll it.)
pub(crate) const OPEN_COUNTS: &str = "SELECT status, COUNT(*) FROM inbox \
     WHERE status IN ('pending', 'failed', 'dead', 'discarded') GROUP BY status";

/// Inbox rows by status.
#[derive(Debug, Default, Clone, Copy, serde::Serialize, utoipa::ToSchema)]
pub struct StatusCounts {
    pub received: i64,
    pub pending: i64,
    pub processed: i64,
    pub failed: i64,
    pub dead: i64,
    pub discarded: i64,
}

impl StatusCounts {
    /// From [`OPEN_COUNTS`]' groups and the number of rows: the rest are done.
    pub(crate) fn from_open(open: Vec<(String, i64)>, total: i64) -> StatusCounts {
        let done = total - open.iter().map(|(_, n)| n).sum::<i64>();
        StatusCounts::from_groups(open.into_iter().chain([("done".to_string(), done)]))
    }

    /// Adds up `(status, rows)` pairs as `SELECT status, COUNT(*) ... GROUP BY status` returns them.
    pub(crate) fn from_groups(rows: impl IntoIterator<Item = (String, i64)>) -> StatusCounts {
        let mut c = StatusCounts::default();
        for (status, n) in rows {
            c.received += n;
            match status.as_str() {
                "pending" => c.pending += n,
                "done" => c.processed += n,
                "failed" => c.failed += n,
                "dead" => c.dead += n,
                "discarded" => c.discarded += n,
                _ => {}
            }
        }
        c
    }
}

/// How the processor applies on this backend (it asks, instead of knowing backends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplyStrategy {
    /// With one worker configured, apply in place: one loop reads the due
    /// events itself and applies them on a thread of its own, without leases
    /// (a single writer gains nothing from a separate claim write).
    pub in_place_when_single: bool,
    /// Transactions run side by side, so a batch must take its entities' locks
    /// up front ([`crate::sync::BatchPlan`]).
    pub lock_entities: bool,
    /// Every call inside a transaction completes at once (a local connection):
    /// a batch is polled on the calling thread without the scheduler.
    pub synchronous: bool,
}
