//! `GET /v1/realtime`: authenticates a WebSocket request and upgrades it.
//!
//! Owns: what happens before the upgrade: the Origin and Host checks, the token
//! (header or `?token=`), the connection budgets, and the HTTP answer to a
//! refusal (401, 403, 421, 429). Must never: serve the socket itself (that is
//! [`crate::realtime::session`]) or accept a connection before its token
//! verified. The protocol is described in [`crate::realtime`]; see ARCHITECTURE.md.

use crate::api::extract::Query;
use crate::app::AppState;
use crate::http_error::ApiError;
use crate::realtime::auth::{authenticate_until, is_open, AuthError};
use crate::realtime::hub::HubError;
use crate::realtime::session::{serve, SessionEnv};
use crate::telemetry::metrics::RejectReason;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Extension;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::net::SocketAddr;

/// Why a connection was refused before the upgrade.
#[derive(Debug, thiserror::Error)]
pub enum RealtimeError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("{0}")]
    Hub(#[from] HubError),
    #[error("not a WebSocket request: {0}")]
    NotWebSocket(String),
    /// A disallowed Origin or Host.
    #[error(transparent)]
    Refused(#[from] ApiError),
}

impl IntoResponse for RealtimeError {
    fn into_response(self) -> Response {
        match self {
            RealtimeError::Auth(e) => ApiError::Unauthorized(e.to_string()).into_response(),
            // ApiError has no 429; the body has its shape.
            RealtimeError::Hub(e @ HubError::TooManyConnections(..)) => (
                StatusCode::TOO_MANY_REQUESTS,
                Json(json!({"error": e.to_string()})),
            )
                .into_response(),
            RealtimeError::Hub(e) => ApiError::internal(e).into_response(),
            RealtimeError::NotWebSocket(m) => {
                ApiError::BadRequest(format!("not a WebSocket request: {m}")).into_response()
            }
            RealtimeError::Refused(e) => e.into_response(),
        }
    }
}

// ---------------------------------------------------------------------------
// The endpoint.

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/realtime", get(connect))
}

#[derive(Deserialize)]
struct ConnectParams {
    token: Option<String>,
}

fn header_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Against cross-site WebSocket hijacking: browsers send `Origin` on a
/// WebSocket handshake and let any page open one. No Origin (not a browser)
/// and same-origin pages pass; other origins pass when listed in
/// `allowed_origins`, or, with no list, when connecting needs a token (which a
/// page cannot take from a cookie). On an open server nothing else passes.
fn check_origin(config: &crate::config::Config, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(origin) = headers.get(axum::http::header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin
        .to_str()
        .unwrap_or("")
        .trim()
        .trim_end_matches('/')
        .to_ascii_lowercase();
    let rt = &config.realtime;
    if rt.allowed_origins.contains(&origin) {
        return Ok(());
    }
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| h.trim().to_ascii_lowercase());
    let origin_host = origin.split_once("://").map(|(_, h)| h);
    if origin_host.is_some() && origin_host == host.as_deref() {
        return Ok(());
    }
    if rt.allowed_origins.is_empty() && !is_open(config.api_token.as_ref(), rt) {
        return Ok(());
    }
    Err(ApiError::Forbidden(
        "this origin may not open the realtime stream: add it to CLERKSYNC_ALLOWED_ORIGINS".into(),
    ))
}

#[utoipa::path(
    get,
    path = "/v1/realtime",
    tag = "realtime", security((), ("api_token" = []), ("session_token" = [])),
    params(("token" = Option<String>, Query, description = "The token, for clients that cannot set headers (browsers)")),
    responses(
        (status = 101, description = "Upgraded: the stream's frames are described by clients/realtime.schema.json"),
        (status = 400, description = "Not a WebSocket request", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing, invalid or expired token", body = crate::api::openapi::ErrorBody),
        (status = 403, description = "This browser origin may not open the stream", body = crate::api::openapi::ErrorBody),
        (status = 421, description = "A token-less server answers only for localhost, 127.0.0.1 or [::1]", body = crate::api::openapi::ErrorBody),
        (status = 429, description = "Too many connections for this token or address", body = crate::api::openapi::ErrorBody)
    )
)]
async fn connect(
    State(state): State<AppState>,
    Query(p): Query<ConnectParams>,
    headers: HeaderMap,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, RealtimeError> {
    // Authenticate before looking at the upgrade: a refused client learns why
    // (HTTP 401 with a JSON body) and costs no socket task.
    let metrics = &state.metrics.realtime;
    check_origin(&state.config, &headers)
        .inspect_err(|_| metrics.reject(RejectReason::origin_denied))?;
    let open = is_open(state.config.api_token.as_ref(), &state.config.realtime);
    if open {
        crate::api::read::local_host_only(&state.config, &headers)?;
    }
    let token = header_token(&headers).or(p.token.as_deref());
    let (principal, expires_at) = authenticate_until(
        state.config.api_token.as_ref(),
        &state.config.realtime,
        token,
        state.clock.now_secs(),
    )
    .inspect_err(|e| {
        metrics.reject(e.reason());
    })?;
    let ws = ws.map_err(|e| RealtimeError::NotWebSocket(e.body_text()))?;
    let rt = &state.config.realtime;
    let mut budgets = vec![(principal.key(), rt.max_connections_per_token)];
    // Anonymous clients share the one "service" budget; each address gets
    // only part of it, so one client cannot take every slot. Without the peer
    // address (a server not wired with connect info) only the shared budget holds.
    if open {
        if let Some(Extension(ConnectInfo(addr))) = peer {
            budgets.push((
                format!("addr:{}", addr.ip()),
                rt.max_connections_per_address,
            ));
        }
    }
    let (conn, tx, rx) = state
        .realtime
        .connect(budgets, principal.viewer())
        .inspect_err(|e| {
            if matches!(e, HubError::TooManyConnections(..)) {
                metrics.reject(RejectReason::too_many_connections);
            }
        })?;
    let limit = rt.max_message_bytes;
    Ok(ws
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| {
            let env = SessionEnv {
                db: state.db.clone(),
                hub: state.realtime.clone(),
                config: state.realtime_config.clone(),
                metrics: state.metrics.clone(),
                clock: state.clock.clone(),
            };
            serve(socket, env, principal, expires_at, conn, tx, rx)
        }))
}
