//! The admin API (`/admin`): queue statistics, recent throughput and event operations.
//!
//! Disabled (404) unless `CLERKSYNC_ADMIN_TOKEN` is set; then every request needs
//! it as a bearer token. Must never: return a secret, or change an event that
//! is already applied.

use crate::api::extract::{Path, Query};
use crate::api::openapi::{EventDetail, EventPage};
use crate::api::read::bearer;
use crate::app::AppState;
use crate::cursor;
use crate::http_error::ApiError;
use crate::store::events::{self, EventFilter, Transition, STATUSES};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

pub fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/admin/stats", get(stats))
        .route("/admin/throughput", get(throughput))
        .route("/admin/events", get(list))
        .route("/admin/events/retry-dead", post(retry_dead))
        .route("/admin/events/{svix_id}", get(show))
        .route("/admin/events/{svix_id}/retry", post(retry))
        .route("/admin/events/{svix_id}/discard", post(discard))
        .route("/admin/entities/{id}", get(entity))
        .layer(axum::middleware::from_fn_with_state(state, require_admin))
}

/// 404 while no admin token is configured, else the bearer token must match.
pub(crate) async fn require_admin(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(token) = &state.config.admin_token else {
        return Err(ApiError::NotFound);
    };
    if !bearer(&req).is_some_and(|t| token.matches(t)) {
        return Err(ApiError::Unauthorized(
            "missing or invalid admin bearer token".into(),
        ));
    }
    Ok(next.run(req).await)
}

#[utoipa::path(
    get,
    path = "/admin/stats",
    tag = "admin", security(("admin_token" = [])),
    responses(
        (status = 200, description = "Stored events by status", body = crate::store::StatusCounts),
        (status = 401, description = "Missing or wrong bearer token", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "No admin token is configured, or no such thing", body = crate::api::openapi::ErrorBody)
    )
)]
async fn stats(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    let c = crate::store::inbox_counts(&s.db)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!(c)))
}

/// The last five minutes of per-second received/processed counts, kept by the
/// server, so a page opened now draws the whole chart at once.
#[utoipa::path(
    get,
    path = "/admin/throughput",
    tag = "admin", security(("admin_token" = [])),
    responses(
        (status = 200, description = "Per-second counts of the last five minutes", body = crate::telemetry::history::History),
        (status = 401, description = "Missing or wrong bearer token", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "No admin token is configured, or no such thing", body = crate::api::openapi::ErrorBody)
    )
)]
async fn throughput(State(s): State<AppState>) -> Json<crate::telemetry::history::History> {
    Json(s.metrics.throughput.snapshot())
}

#[derive(Deserialize)]
struct ListParams {
    #[serde(flatten)]
    filter: EventFilter,
    limit: Option<i64>,
    cursor: Option<String>,
}

#[utoipa::path(
    get,
    path = "/admin/events",
    tag = "admin", security(("admin_token" = [])),
    params(
        ("status" = Option<String>, Query, description = "pending, done, failed, dead or discarded"),
        ("type" = Option<String>, Query, description = "Event type, e.g. user.created"),
        ("entity" = Option<String>, Query, description = "Entity id"),
        ("since" = Option<i64>, Query, description = "Received at or after (unix ms)"),
        ("until" = Option<i64>, Query, description = "Received before (unix ms)"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 500, description = "Events per page (default 50)"),
        ("cursor" = Option<String>, Query, description = "A previous page's next_cursor"),
    ),
    responses(
        (status = 200, description = "Stored events, newest first", body = crate::api::openapi::EventPage),
        (status = 400, description = "Bad input: a parameter, cursor or id (the error names it)", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "No admin token is configured, or no such thing", body = crate::api::openapi::ErrorBody)
    )
)]
async fn list(
    State(s): State<AppState>,
    Query(p): Query<ListParams>,
) -> Result<Json<EventPage>, ApiError> {
    if let Some(st) = p.filter.status.as_deref() {
        if !STATUSES.contains(&st) {
            return Err(ApiError::BadRequest(format!(
                "status must be one of {}",
                STATUSES.join(", ")
            )));
        }
    }
    let limit = p.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::BadRequest(
            "limit must be between 1 and 500".into(),
        ));
    }
    let before = cursor::decode_seq(p.cursor.as_deref())?;
    let mut rows = events::list(&s.db, &p.filter, before, limit + 1)
        .await
        .map_err(ApiError::internal)?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next = if more {
        rows.last().map(|r| cursor::encode(r.seq))
    } else {
        None
    };
    // The documented types (api/openapi.rs), so the document cannot drift.
    Ok(Json(EventPage {
        data: rows,
        next_cursor: next,
    }))
}

#[utoipa::path(
    get,
    path = "/admin/events/{svix_id}",
    tag = "admin", security(("admin_token" = [])),
    params(("svix_id" = String, Path, description = "The delivery's svix-id")),
    responses(
        (status = 200, description = "The stored event with its body", body = crate::api::openapi::EventDetail),
        (status = 401, description = "Missing or wrong bearer token", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "No admin token is configured, or no such thing", body = crate::api::openapi::ErrorBody)
    )
)]
async fn show(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<EventDetail>, ApiError> {
    let (record, body) = events::show(&s.db, &id)
        .await
        .map_err(ApiError::internal)?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(EventDetail {
        record,
        body: serde_json::from_str(&body).unwrap_or(Value::String(body)),
    }))
}

fn answer(t: Transition, what: &str) -> Result<Json<Value>, ApiError> {
    match t {
        Transition::Done => Ok(Json(json!({ "status": what }))),
        Transition::NotFound => Err(ApiError::NotFound),
        Transition::Conflict { status } => Err(ApiError::Conflict(format!(
            "the event cannot be {what}: it is {}",
            events::describe_status(&status)
        ))),
    }
}

#[utoipa::path(
    post,
    path = "/admin/events/{svix_id}/retry",
    tag = "admin", security(("admin_token" = [])),
    params(("svix_id" = String, Path, description = "The delivery's svix-id")),
    responses(
        (status = 200, description = "Queued for another attempt", body = crate::api::openapi::Transition),
        (status = 401, description = "Missing or wrong bearer token", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "No admin token is configured, or no such thing", body = crate::api::openapi::ErrorBody),
        (status = 409, description = "The event cannot be retried in its status", body = crate::api::openapi::ErrorBody)
    )
)]
async fn retry(State(s): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let t = events::retry(&s.db, &id)
        .await
        .map_err(ApiError::internal)?;
    s.inbox_committed.notify_one();
    answer(t, "queued")
}

#[utoipa::path(
    post,
    path = "/admin/events/{svix_id}/discard",
    tag = "admin", security(("admin_token" = [])),
    params(("svix_id" = String, Path, description = "The delivery's svix-id")),
    responses(
        (status = 200, description = "Set aside, never applied", body = crate::api::openapi::Transition),
        (status = 401, description = "Missing or wrong bearer token", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "No admin token is configured, or no such thing", body = crate::api::openapi::ErrorBody),
        (status = 409, description = "The event cannot be discarded in its status", body = crate::api::openapi::ErrorBody)
    )
)]
async fn discard(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let t = events::discard(&s.db, &id)
        .await
        .map_err(ApiError::internal)?;
    answer(t, "discarded")
}

#[utoipa::path(
    post,
    path = "/admin/events/retry-dead",
    tag = "admin", security(("admin_token" = [])),
    responses(
        (status = 200, description = "Every dead event queued again", body = crate::api::openapi::RetriedDead),
        (status = 401, description = "Missing or wrong bearer token", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "No admin token is configured, or no such thing", body = crate::api::openapi::ErrorBody)
    )
)]
async fn retry_dead(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    let n = events::retry_all_dead(&s.db)
        .await
        .map_err(ApiError::internal)?;
    s.inbox_committed.notify_one();
    Ok(Json(json!({ "queued": n })))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct EntityParams {
    /// Audit entries per page (default 200).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// A previous page's `next_cursor`.
    cursor: Option<String>,
}

/// One user or organization for the dashboard's entity page: the stored record
/// (tombstones included, which `/v1` answers with 410) and its audit history,
/// oldest first. Behind the admin token, so the dashboard never needs the read
/// API's token as well.
#[utoipa::path(
    get,
    path = "/admin/entities/{id}",
    tag = "admin", security(("admin_token" = [])),
    params(("id" = String, Path, description = "A user (user_...) or organization (org_...) id"), EntityParams),
    responses(
        (status = 200, description = "The stored record and its audit history", body = crate::api::openapi::EntityDetail),
        (status = 400, description = "Bad input: a parameter, cursor or id (the error names it)", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "No admin token is configured, or no such thing", body = crate::api::openapi::ErrorBody)
    )
)]
async fn entity(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(p): Query<EntityParams>,
) -> Result<Json<Value>, ApiError> {
    use crate::clerk::model::Kind;
    use crate::store::read;
    let kind = if id.starts_with("user_") {
        Kind::User
    } else if id.starts_with("org_") {
        Kind::Organization
    } else {
        return Err(ApiError::BadRequest(
            "entity id must start with user_ or org_".into(),
        ));
    };
    if id.len() > 128 {
        return Err(ApiError::BadRequest("invalid id".into()));
    }
    let limit = p.limit.unwrap_or(200);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::BadRequest(
            "limit must be between 1 and 500".into(),
        ));
    }
    let after = cursor::decode_seq(p.cursor.as_deref())?.unwrap_or(0);
    let row = read::get(&s.db, kind, &id)
        .await
        .map_err(ApiError::internal)?;
    let audit = read::audit(&s.db, &id, after, limit + 1)
        .await
        .map_err(ApiError::internal)?;
    if row.is_none() && audit.is_empty() && after == 0 {
        return Err(ApiError::NotFound);
    }
    let more = audit.len() as i64 > limit;
    let audit = &audit[..audit.len().min(limit as usize)];
    let next = if more {
        audit.last().map(|a| cursor::encode(a.seq))
    } else {
        None
    };
    let record = row.as_ref().filter(|r| !r.deleted).map(|r| match kind {
        Kind::User => crate::views::user_json(r),
        _ => r
            .data
            .as_deref()
            .and_then(|d| serde_json::from_str(d).ok())
            .unwrap_or(Value::Null),
    });
    let history: Vec<Value> = audit
        .iter()
        .map(|a| {
            json!({
                "seq": a.seq, "svix_id": a.svix_id, "operation": a.operation,
                "version": a.version, "at": a.at,
                "changes": serde_json::from_str::<Value>(&a.changes).unwrap_or(Value::Null),
            })
        })
        .collect();
    Ok(Json(json!({
        "id": id,
        "kind": kind.as_str(),
        "deleted": row.as_ref().is_some_and(|r| r.deleted),
        "version": row.as_ref().map(|r| r.version),
        "synced_at": row.as_ref().map(|r| r.synced_at),
        "record": record,
        "audit": history,
        "next_cursor": next,
    })))
}
