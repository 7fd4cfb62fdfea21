//! `GET /admin/reconcile` and `POST /admin/reconcile`: where reconciliation
//! passes stand, and starting one now (what `clerksync backfill --url` asks).
//!
//! Owns: the request and response shapes of the two routes. Must never: run
//! a pass itself or wait for one (`backfill::schedule` runs it on its own
//! task), or show the Clerk key.

use crate::app::AppState;
use crate::backfill::schedule::{PassRequest, PassStarted, ReconcileStatus, StartError};
use crate::http_error::ApiError;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};

pub fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/admin/reconcile", get(status).post(start))
        .layer(axum::middleware::from_fn_with_state(
            state,
            crate::api::admin::require_admin,
        ))
}

impl From<StartError> for ApiError {
    fn from(e: StartError) -> Self {
        match e {
            StartError::Busy(_) => ApiError::Conflict(e.to_string()),
            // Not a server fault: this server is not set up to run passes (a 5xx
            // would read as an outage to monitors and clients that retry).
            StartError::NoKey => ApiError::Conflict(e.to_string()),
            StartError::BadRequest(m) => ApiError::BadRequest(m),
            StartError::Db(e) => ApiError::internal(e),
        }
    }
}

/// Idle or running (with this node's progress per resource), the last pass's
/// result on any node (per resource: seen, created, updated, deleted,
/// unchanged, drift, ending) and the next scheduled pass.
#[utoipa::path(
    get,
    path = "/admin/reconcile",
    tag = "admin", security(("admin_token" = [])),
    responses(
        (status = 200, description = "Where reconciliation passes stand", body = ReconcileStatus),
        (status = 401, description = "Missing or wrong bearer token", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "No admin token is configured, or no such thing", body = crate::api::openapi::ErrorBody)
    )
)]
pub(crate) async fn status(State(s): State<AppState>) -> Result<Json<ReconcileStatus>, ApiError> {
    Ok(Json(
        s.reconcile.status().await.map_err(ApiError::internal)?,
    ))
}

/// Starts a pass now (202); its progress and result at `GET /admin/reconcile`.
/// The body is optional: `{"resources": ["users"], "dry_run": true, "force": false}`.
#[utoipa::path(
    post,
    path = "/admin/reconcile",
    tag = "admin", security(("admin_token" = [])),
    request_body(content = Option<PassRequest>, description = "What the pass covers (all optional)", content_type = "application/json"),
    responses(
        (status = 202, description = "A pass started", body = PassStarted),
        (status = 400, description = "The body is not a pass request (unknown resource or field)", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "No admin token is configured, or no such thing", body = crate::api::openapi::ErrorBody),
        (status = 409, description = "A pass is running on this or another node sharing the database, or this server has no Clerk key (CLERKSYNC_CLERK_SECRET_KEY); the error says which", body = crate::api::openapi::ErrorBody),
    )
)]
pub(crate) async fn start(
    State(s): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<PassStarted>), ApiError> {
    let req: PassRequest = if body.iter().all(u8::is_ascii_whitespace) {
        PassRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("the body is not a pass request: {e}")))?
    };
    let started = s.reconcile.request(req).await?;
    Ok((StatusCode::ACCEPTED, Json(started)))
}
