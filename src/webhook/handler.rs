//! The ingress handler.

use crate::api::error::ApiError;
use crate::app::AppState;
use crate::clerk::envelope::{parse_head, EnvelopeError};
use crate::queue::committer::CommitError;
use crate::queue::{AppendOutcome, NewDelivery};
use crate::telemetry::metrics::Outcome;
use crate::webhook::verify::{verify, DeliveryHeaders, VerifyError};
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::{json, Value};
use std::time::Instant;
use tracing::field::Empty;
use tracing::Instrument;

fn header<'a>(h: &'a HeaderMap, svix: &str, standard: &str) -> Option<&'a str> {
    h.get(svix)
        .or_else(|| h.get(standard))
        .map(|v| v.to_str().unwrap_or(""))
}

/// Reads at most `limit` bytes; a larger body is refused without buffering it
/// (a declared Content-Length over the limit is refused before reading at all).
async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::TooLarge(limit));
    }
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError::TooLarge(limit)),
        Err(_) => Err(ApiError::BadRequest(
            "could not read the request body".into(),
        )),
    }
}

pub async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
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
    let status = match result? {
        AppendOutcome::Accepted => "accepted",
        AppendOutcome::Duplicate => "duplicate",
    };
    Ok(Json(json!({ "status": status })))
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
    let body = read_limited(headers, body, state.max_body_bytes).await?;
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
    // The body parsed as JSON, so it is UTF-8.
    let body = String::from_utf8(body.to_vec())
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
