//! The ingress handler.

use crate::app::AppState;
use crate::clerk::envelope::{parse_head, EnvelopeError};
use crate::http_error::ApiError;
use crate::queue::committer::CommitError;
use crate::queue::{AppendOutcome, NewDelivery};
use crate::telemetry::metrics::Outcome;
use crate::webhook::verify::{verify, DeliveryHeaders, VerifyError};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::field::Empty;
use tracing::Instrument;

fn header<'a>(h: &'a HeaderMap, svix: &str, standard: &str) -> Option<&'a str> {
    h.get(svix)
        .or_else(|| h.get(standard))
        .map(|v| v.to_str().unwrap_or(""))
}

/// Webhook body bytes held in memory at once, over all requests. A delivery
/// reserves its declared length (the body limit when it declares none) before
/// reading, so many slow bodies cannot add up to more than the budget.
#[derive(Clone)]
pub struct BodyBudget {
    permits: Arc<Semaphore>,
    reserved: Gauge,
}

/// Bytes reserved from the [`BodyBudget`]; given back when dropped.
pub struct Reservation {
    _permit: OwnedSemaphorePermit,
    bytes: i64,
    reserved: Gauge,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.reserved.dec_by(self.bytes);
    }
}

impl BodyBudget {
    /// `bytes` must fit in a u32 (config.rs checks it).
    pub fn new(bytes: usize, reserved: Gauge) -> BodyBudget {
        BodyBudget {
            permits: Arc::new(Semaphore::new(bytes)),
            reserved,
        }
    }

    /// None when the budget cannot cover `bytes` right now.
    pub fn try_reserve(&self, bytes: usize) -> Option<Reservation> {
        let n = u32::try_from(bytes.max(1)).ok()?;
        let permit = self.permits.clone().try_acquire_many_owned(n).ok()?;
        self.reserved.inc_by(i64::from(n));
        Some(Reservation {
            _permit: permit,
            bytes: i64::from(n),
            reserved: self.reserved.clone(),
        })
    }
}

/// How much of a refused body is read and thrown away after the 413, as a
/// multiple of the body limit: a client that writes its whole body before
/// reading the answer then sees the 413, not a reset connection. Past this
/// (or the body timeout) the connection is closed.
const DRAIN_FACTOR: usize = 16;

/// Reads at most `limit` bytes; a larger body is refused without buffering it
/// (a declared Content-Length over the limit is refused before reading at all).
async fn read_limited(
    declared: Option<u64>,
    body: Body,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    if declared.is_some_and(|n| n > limit as u64) {
        drain_in_background(body, limit.saturating_mul(DRAIN_FACTOR));
        return Err(ApiError::TooLarge(limit));
    }
    let mut body = body;
    let mut buf = bytes::BytesMut::with_capacity(declared.unwrap_or(0) as usize);
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    if buf.len() + data.len() > limit {
                        let left = limit.saturating_mul(DRAIN_FACTOR).saturating_sub(buf.len());
                        drain_in_background(body, left);
                        return Err(ApiError::TooLarge(limit));
                    }
                    buf.extend_from_slice(data);
                }
            }
            Err(e) if crate::serve::is_body_timeout(&e) => {
                return Err(ApiError::RequestTimeout(
                    "the request body did not arrive in time".into(),
                ))
            }
            Err(_) => {
                return Err(ApiError::BadRequest(
                    "could not read the request body".into(),
                ))
            }
        }
    }
    Ok(buf.freeze())
}

/// Reads and discards up to `max` more bytes of a refused body while the 413
/// goes out (the body's own deadline bounds the time), so the client is not
/// reset in the middle of its write; then the rest, if any, closes the connection.
fn drain_in_background(mut body: Body, max: usize) {
    tokio::spawn(async move {
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                seen += data.len();
            }
            if seen > max {
                break;
            }
        }
    });
}

/// The svix-id is stored and used as the deduplication key: it must look like
/// one (Svix sends `msg_` + 27 characters).
fn check_id(id: &str) -> Result<(), ApiError> {
    if id.len() > MAX_ID_LEN || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::BadRequest(format!(
            "invalid svix-id header: expected at most {MAX_ID_LEN} visible ASCII characters"
        )));
    }
    Ok(())
}

pub const MAX_ID_LEN: usize = 256;

#[utoipa::path(
    post,
    path = "/webhooks/clerk",
    tag = "webhooks", request_body(content = Object, content_type = "application/json", description = "A Clerk event envelope, as Svix delivers it"),
    params(("svix-id" = String, Header, description = "The delivery id (or webhook-id)"), ("svix-timestamp" = String, Header, description = "Unix seconds (or webhook-timestamp)"), ("svix-signature" = String, Header, description = "v1,<base64 HMAC-SHA256> entries (or webhook-signature)")),
    responses(
        (status = 200, description = "Durable (accepted) or already stored (duplicate)", body = WebhookAck),
        (status = 400, description = "Missing or malformed headers, or not a Clerk event envelope", body = crate::http_error::ErrorBody),
        (status = 401, description = "No matching signature, or a timestamp more than 5 minutes off", body = crate::http_error::ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = crate::http_error::ErrorBody),
        (status = 413, description = "The body is over the limit", body = crate::http_error::ErrorBody),
        (status = 503, description = "Shutting down, storage unavailable or the body budget spent (Svix retries)", body = crate::http_error::ErrorBody)
    )
)]
pub async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    // One span per delivery; event type and entity are recorded once the body
    // is verified and parsed (receive_inner).
    let span = tracing::info_span!(
        "delivery",
        svix_id = Empty,
        event_type = Empty,
        entity_id = Empty
    );
    let result = receive_inner(&state, &headers, body)
        .instrument(span.clone())
        .await;
    let outcome = match &result {
        Ok(AppendOutcome::Accepted) => Outcome::accepted,
        Ok(AppendOutcome::Duplicate) => Outcome::duplicate,
        Err(ApiError::TooLarge(_)) => Outcome::too_large,
        Err(ApiError::Unauthorized(_)) => Outcome::bad_signature,
        Err(ApiError::Unavailable(_)) | Err(ApiError::Internal(_)) => Outcome::unavailable,
        Err(_) => Outcome::malformed,
    };
    state.metrics.delivery(outcome);
    if outcome == Outcome::bad_signature {
        state.alerts.signature_failure();
    }
    span.in_scope(|| tracing::debug!(outcome = ?outcome, "webhook delivery"));
    if result.is_ok() {
        state
            .metrics
            .ack_seconds
            .observe(started.elapsed().as_secs_f64());
    }
    Ok(ack(result?))
}

/// The answer to a stored delivery ([`WebhookAck`]): one of two fixed bodies,
/// not a JSON value built and serialized per request.
fn ack(outcome: AppendOutcome) -> Response {
    let body = match outcome {
        AppendOutcome::Accepted => r#"{"status":"accepted"}"#,
        AppendOutcome::Duplicate => r#"{"status":"duplicate"}"#,
    };
    (
        [(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

async fn receive_inner(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<AppendOutcome, ApiError> {
    let dh = DeliveryHeaders {
        id: header(headers, "svix-id", "webhook-id"),
        timestamp: header(headers, "svix-timestamp", "webhook-timestamp"),
        signature: header(headers, "svix-signature", "webhook-signature"),
    };
    // The id is not secret and helps trace a refused delivery too; an odd one
    // (too long, not printable) is left out of the logs. Never the signature.
    if let Some(id) = dh
        .id
        .filter(|id| !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()))
    {
        tracing::Span::current().record("svix_id", id);
    }
    // Header presence is checked before the body is read: a request that can never
    // verify costs us nothing.
    if dh.id.map(str::trim).is_none_or(str::is_empty)
        || dh.timestamp.map(str::trim).is_none_or(str::is_empty)
        || dh.signature.map(str::trim).is_none_or(str::is_empty)
    {
        let e = verify(&state.secrets, dh, b"", 0, false).unwrap_err();
        return Err(ApiError::BadRequest(e.to_string()));
    }
    check_id(dh.id.map(str::trim).unwrap_or_default())?;
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let limit = state.max_body_bytes;
    // Past the limit is a 413 whatever the budget; below it, the declared
    // length (or the limit, for a body of unknown length) is reserved first.
    let reserve = declared.map_or(limit, |n| n.min(limit as u64) as usize);
    let _reservation = match state.body_budget.try_reserve(reserve) {
        Some(r) => r,
        None if declared.is_some_and(|n| n > limit as u64) => {
            drain_in_background(body, limit.saturating_mul(DRAIN_FACTOR));
            return Err(ApiError::TooLarge(limit));
        }
        None => {
            state.metrics.http.body_budget_exhausted.inc();
            return Err(ApiError::Unavailable(
                "too many deliveries in progress; retry later".into(),
            ));
        }
    };
    let body = read_limited(declared, body, limit).await?;
    let now = state.clock.now_secs();
    let verified = verify(&state.secrets, dh, &body, now, true).map_err(|e| match e {
        e @ (VerifyError::MissingHeader(_) | VerifyError::InvalidTimestamp) => {
            ApiError::BadRequest(e.to_string())
        }
        e => ApiError::Unauthorized(e.to_string()),
    })?;
    let head = parse_head(&body).map_err(|e| match e {
        EnvelopeError::NotJson(_) => ApiError::BadRequest("body is not valid JSON".into()),
        e => ApiError::BadRequest(e.to_string()),
    })?;
    // Kept as text (the stored body is read back as a String). `Vec::from`
    // takes the buffer `read_limited` filled without copying it.
    let body = String::from_utf8(Vec::from(body))
        .map_err(|_| ApiError::BadRequest("body is not valid UTF-8".into()))?;
    let span = tracing::Span::current();
    span.record("event_type", head.event_type.as_str());
    if let Some(entity) = head.entity_key.as_deref() {
        span.record("entity_id", entity);
    }
    let row = NewDelivery {
        svix_id: verified.svix_id,
        svix_timestamp: verified.timestamp,
        event_type: head.event_type,
        entity_key: head.entity_key,
        object_id: head.object_id,
        event_timestamp_ms: head.timestamp_ms,
        received_at_ms: state.clock.now_ms(),
        body,
        user_id: head.user_id,
        contacts: head.contacts,
    };
    state.committer.submit(row).await.map_err(|e| match e {
        CommitError::Closed => ApiError::Unavailable("shutting down; retry later".into()),
        CommitError::Storage(_) => ApiError::Unavailable("storage unavailable; retry later".into()),
    })
}

/// A webhook delivery's answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct WebhookAck {
    /// `accepted` (durable now) or `duplicate` (this svix-id was stored before).
    pub status: String,
}
