//! The admin API (`/admin`): queue statistics, recent throughput and event operations.
//!
//! Disabled (404) unless `CLERKSYNC_ADMIN_TOKEN` is set; then every request needs
//! it as a bearer token. Must never: return a secret, or change an event that
//! is already applied.

use crate::api::cursor;
use crate::api::error::ApiError;
use crate::api::extract::{Path, Query};
use crate::api::read::bearer;
use crate::app::AppState;
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

async fn stats(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    let c = crate::store::inbox_counts(&s.db)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!(c)))
}

/// The last five minutes of per-second received/processed counts, kept by the
/// server, so a page opened now draws the whole chart at once.
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

async fn list(
    State(s): State<AppState>,
    Query(p): Query<ListParams>,
) -> Result<Json<Value>, ApiError> {
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
    let rows = events::list(&s.db, &p.filter, before, limit + 1)
        .await
        .map_err(ApiError::internal)?;
    let more = rows.len() as i64 > limit;
    let rows = &rows[..rows.len().min(limit as usize)];
    let next = if more {
        rows.last().map(|r| cursor::encode(r.seq))
    } else {
        None
    };
    Ok(Json(json!({ "data": rows, "next_cursor": next })))
}

async fn show(State(s): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let (rec, body) = events::show(&s.db, &id)
        .await
        .map_err(ApiError::internal)?
        .ok_or(ApiError::NotFound)?;
    let mut v = json!(rec);
    v["body"] = serde_json::from_str(&body).unwrap_or(Value::String(body));
    Ok(Json(v))
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

async fn retry(State(s): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let t = events::retry(&s.db, &id)
        .await
        .map_err(ApiError::internal)?;
    s.inbox_committed.notify_one();
    answer(t, "queued")
}

async fn discard(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let t = events::discard(&s.db, &id)
        .await
        .map_err(ApiError::internal)?;
    answer(t, "discarded")
}

async fn retry_dead(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    let n = events::retry_all_dead(&s.db)
        .await
        .map_err(ApiError::internal)?;
    s.inbox_committed.notify_one();
    Ok(Json(json!({ "queued": n })))
}

#[derive(Deserialize)]
struct EntityParams {
    limit: Option<i64>,
    cursor: Option<String>,
}

/// One user or organization for the dashboard's entity page: the stored record
/// (tombstones included, which `/v1` answers with 410) and its audit history,
/// oldest first. Behind the admin token, so the dashboard never needs the read
/// API's token as well.
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
        Kind::User => crate::api::read::user_json(r),
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
