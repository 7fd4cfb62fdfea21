//! The read API (`/v1`): users, organizations, memberships, audit.
//!
//! Answers from the synced store: 404 for an id never seen, 410 for a tombstone.
//! `wait_ms` holds a request until the entity is synced, woken by the apply
//! commits that change that id (feed/waiters.rs).

use crate::api::extract::{Path, Query};
use crate::api::openapi::{AuditEntry, AuditPage};
use crate::app::AppState;
use crate::clerk::model::Kind;
use crate::cursor;
use crate::feed::cache::{entity_key, org_members_key, Cached, Invalidation, Lookup};
use crate::http_error::ApiError;
use crate::store::read;
use crate::store::tx::{EntityRow, RefCol};
use crate::views::{data_map, membership_json, record_json, user_json};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

pub fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/v1/users", get(list_users))
        .route("/v1/users/{id}", get(get_user))
        .route("/v1/users/{id}/organizations", get(user_organizations))
        .route("/v1/organizations", get(list_orgs))
        .route("/v1/organizations/{id}", get(get_org))
        .route("/v1/organizations/{id}/memberships", get(org_memberships))
        .route("/v1/audit", get(audit))
        .layer(axum::middleware::from_fn_with_state(
            state,
            require_api_token,
        ))
}

/// Bearer `CLERKSYNC_API_TOKEN` when one is configured; without one, only
/// requests addressed to this machine by a loopback name (see [`local_host_only`]).
pub async fn require_api_token(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    match &state.config.api_token {
        Some(token) => {
            if !bearer(&req).is_some_and(|t| token.matches(t)) {
                return Err(ApiError::Unauthorized(
                    "missing or invalid bearer token".into(),
                ));
            }
        }
        None => local_host_only(&state.config, req.headers())?,
    }
    Ok(next.run(req).await)
}

/// On a token-less server (loopback only, see `Config::check_exposure`) the
/// Host must name the loopback interface: a web page whose DNS name was
/// rebound to 127.0.0.1 sends its own name as Host and is refused. An operator
/// who opened the API on purpose (`CLERKSYNC_INSECURE_OPEN_API`) serves any Host.
pub fn local_host_only(
    config: &crate::config::Config,
    headers: &axum::http::HeaderMap,
) -> Result<(), ApiError> {
    if config.api_token.is_some() || config.insecure_open_api {
        return Ok(());
    }
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok());
    if host.is_some_and(is_loopback_host) {
        return Ok(());
    }
    Err(ApiError::MisdirectedHost(
        "this server has no API token and answers only requests for localhost, 127.0.0.1 or [::1]: set CLERKSYNC_API_TOKEN to serve other names".into(),
    ))
}

/// `localhost`, `127.0.0.1` or `[::1]`, with or without a port.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, port)) if port.is_empty() || port.starts_with(':') && valid_port(port) => {
                return ip == "::1"
            }
            _ => return false,
        }
    } else {
        match host.split_once(':') {
            Some((name, port)) if valid_port(port) => name,
            Some(_) => return false,
            None => host,
        }
    };
    name.eq_ignore_ascii_case("localhost") || name == "127.0.0.1"
}

fn valid_port(p: &str) -> bool {
    p.strip_prefix(':').unwrap_or(p).parse::<u16>().is_ok()
}

pub fn bearer(req: &Request) -> Option<&str> {
    req.headers()
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Longest a `wait_ms` request is held.
const MAX_WAIT_MS: u64 = 30_000;
const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 500;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GetParams {
    /// Wait up to this long (ms; longer waits are cut to 30000) for the entity to be synced.
    #[param(minimum = 0, maximum = 30000)]
    wait_ms: Option<u64>,
    /// With `wait_ms`: wait until the entity's `updated_at` (unix ms) is at least this.
    min_updated_at: Option<i64>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Items per page (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// A previous page's `next_cursor`.
    cursor: Option<String>,
}

fn limit(p: &PageParams) -> Result<i64, ApiError> {
    match p.limit {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        ))),
    }
}

fn valid_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > 128 {
        return Err(ApiError::BadRequest("invalid id".into()));
    }
    Ok(())
}

/// Gets a live entity, or 404/410; with `wait_ms`, waits for it to be synced
/// (and at least `min_updated_at` fresh).
async fn get_entity(
    state: &AppState,
    kind: Kind,
    id: &str,
    p: &GetParams,
) -> Result<EntityRow, ApiError> {
    valid_id(id)?;
    if p.wait_ms.is_none() && p.min_updated_at.is_none() {
        return cached_entity(state, kind, id).await;
    }
    let deadline = tokio::time::Instant::now()
        + Duration::from_millis(p.wait_ms.unwrap_or(0).min(MAX_WAIT_MS));
    // Woken only by commits that changed this id: one read per change of it,
    // not one per commit.
    let mut waiter = state.waiters.wait_for(id);
    loop {
        // Mark what is seen before reading, so a commit that lands after the
        // read wakes us.
        waiter.seen();
        match read::get(&state.db, kind, id)
            .await
            .map_err(ApiError::internal)?
        {
            Some(r) if r.deleted => return Err(ApiError::Gone(id.to_string())),
            Some(r) if p.min_updated_at.is_none_or(|t| r.version >= t) => return Ok(r),
            // Present but not yet as fresh as asked: at the deadline the
            // stalest answer is still an answer.
            Some(r) if tokio::time::Instant::now() >= deadline => return Ok(r),
            None if tokio::time::Instant::now() >= deadline => return Err(ApiError::NotFound),
            _ => {}
        }
        if tokio::time::timeout_at(deadline, waiter.changed())
            .await
            .is_err()
        {
            return match read::get(&state.db, kind, id)
                .await
                .map_err(ApiError::internal)?
            {
                Some(r) if r.deleted => Err(ApiError::Gone(id.to_string())),
                Some(r) => Ok(r),
                None => Err(ApiError::NotFound),
            };
        }
    }
}

/// A plain read, through the cache.
async fn cached_entity(state: &AppState, kind: Kind, id: &str) -> Result<EntityRow, ApiError> {
    let key = entity_key(kind, id);
    let row = match state.cache.lookup(&key).await {
        Lookup::Hit(Cached::Row(r)) => Some(r),
        Lookup::Hit(Cached::Rows(_)) => read::get(&state.db, kind, id)
            .await
            .map_err(ApiError::internal)?
            .map(Arc::new),
        Lookup::Miss(stamp) => {
            let row = read::get(&state.db, kind, id)
                .await
                .map_err(ApiError::internal)?
                .map(Arc::new);
            // Only what exists is cached: a miss for a never-seen id stays a miss,
            // so a flood of random ids cannot fill the cache.
            if let Some(r) = &row {
                state.cache.fill(&key, Cached::Row(r.clone()), stamp).await;
            }
            row
        }
    };
    match row {
        Some(r) if r.deleted => Err(ApiError::Gone(id.to_string())),
        Some(r) => Ok((*r).clone()),
        None => Err(ApiError::NotFound),
    }
}

#[utoipa::path(
    get,
    path = "/v1/users/{id}",
    tag = "read", security(("api_token" = [])),
    params(("id" = String, Path, description = "A Clerk user id", min_length = 1, max_length = 128), GetParams),
    responses(
        (status = 200, description = "The user", body = crate::api::openapi::User),
        (status = 400, description = "Bad input: a parameter, cursor or id (the error names it)", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "Never synced", body = crate::api::openapi::ErrorBody),
        (status = 410, description = "Deleted", body = crate::api::openapi::GoneBody),
        (status = 421, description = "A token-less server answers only for localhost, 127.0.0.1 or [::1]", body = crate::api::openapi::ErrorBody)
    )
)]
async fn get_user(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(p): Query<GetParams>,
) -> Result<Json<Value>, ApiError> {
    let r = get_entity(&s, Kind::User, &id, &p).await?;
    Ok(Json(user_json(&r)))
}

#[utoipa::path(
    get,
    path = "/v1/organizations/{id}",
    tag = "read", security(("api_token" = [])),
    params(("id" = String, Path, description = "A Clerk organization id", min_length = 1, max_length = 128), GetParams),
    responses(
        (status = 200, description = "The organization", body = crate::api::openapi::Organization),
        (status = 400, description = "Bad input: a parameter, cursor or id (the error names it)", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "Never synced", body = crate::api::openapi::ErrorBody),
        (status = 410, description = "Deleted", body = crate::api::openapi::GoneBody),
        (status = 421, description = "A token-less server answers only for localhost, 127.0.0.1 or [::1]", body = crate::api::openapi::ErrorBody)
    )
)]
async fn get_org(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(p): Query<GetParams>,
) -> Result<Json<Value>, ApiError> {
    let r = get_entity(&s, Kind::Organization, &id, &p).await?;
    Ok(Json(record_json(&r)))
}

async fn page(
    s: &AppState,
    kind: Kind,
    filter: Option<(RefCol, &str)>,
    p: &PageParams,
    render: fn(&EntityRow) -> Value,
    cache_key: Option<String>,
) -> Result<Json<Value>, ApiError> {
    let limit = limit(p)?;
    let after = cursor::decode_id(p.cursor.as_deref())?;
    // With group invalidation a list's key is dropped whenever one of its
    // members changes, so its default first page can be cached like an entity.
    let cache_key = cache_key.filter(|_| {
        s.cache.invalidation == Invalidation::Group && p.cursor.is_none() && p.limit.is_none()
    });
    let cached = match &cache_key {
        Some(k) => match s.cache.lookup(k).await {
            Lookup::Hit(Cached::Rows(rows)) => Ok(rows),
            Lookup::Hit(Cached::Row(_)) => Err(None),
            Lookup::Miss(stamp) => Err(Some(stamp)),
        },
        None => Err(None),
    };
    let rows = match cached {
        Ok(rows) => rows,
        Err(stamp) => {
            let rows = Arc::new(
                read::list_live(&s.db, kind, filter, after.as_deref(), limit + 1)
                    .await
                    .map_err(ApiError::internal)?,
            );
            if let (Some(k), Some(stamp)) = (&cache_key, stamp) {
                s.cache.fill(k, Cached::Rows(rows.clone()), stamp).await;
            }
            rows
        }
    };
    let more = rows.len() as i64 > limit;
    let rows = &rows[..rows.len().min(limit as usize)];
    let next = if more {
        rows.last().map(|r| cursor::encode(&r.id))
    } else {
        None
    };
    Ok(Json(json!({
        "data": rows.iter().map(render).collect::<Vec<_>>(),
        "next_cursor": next,
    })))
}

#[utoipa::path(
    get,
    path = "/v1/users",
    tag = "read", security(("api_token" = [])),
    params(PageParams),
    responses(
        (status = 200, description = "Live users, by id", body = crate::api::openapi::UserPage),
        (status = 400, description = "Bad input: a parameter, cursor or id (the error names it)", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = crate::api::openapi::ErrorBody),
        (status = 421, description = "A token-less server answers only for localhost, 127.0.0.1 or [::1]", body = crate::api::openapi::ErrorBody)
    )
)]
async fn list_users(
    State(s): State<AppState>,
    Query(p): Query<PageParams>,
) -> Result<Json<Value>, ApiError> {
    page(&s, Kind::User, None, &p, user_json, None).await
}

#[utoipa::path(
    get,
    path = "/v1/organizations",
    tag = "read", security(("api_token" = [])),
    params(PageParams),
    responses(
        (status = 200, description = "Live organizations, by id", body = crate::api::openapi::OrganizationPage),
        (status = 400, description = "Bad input: a parameter, cursor or id (the error names it)", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = crate::api::openapi::ErrorBody),
        (status = 421, description = "A token-less server answers only for localhost, 127.0.0.1 or [::1]", body = crate::api::openapi::ErrorBody)
    )
)]
async fn list_orgs(
    State(s): State<AppState>,
    Query(p): Query<PageParams>,
) -> Result<Json<Value>, ApiError> {
    page(&s, Kind::Organization, None, &p, record_json, None).await
}

#[utoipa::path(
    get,
    path = "/v1/organizations/{id}/memberships",
    tag = "read", security(("api_token" = [])),
    params(("id" = String, Path, description = "A Clerk organization id", min_length = 1, max_length = 128), PageParams),
    responses(
        (status = 200, description = "The organization's live memberships, by id", body = crate::api::openapi::MembershipPage),
        (status = 400, description = "Bad input: a parameter, cursor or id (the error names it)", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "Organization never synced", body = crate::api::openapi::ErrorBody),
        (status = 410, description = "Deleted", body = crate::api::openapi::GoneBody),
        (status = 421, description = "A token-less server answers only for localhost, 127.0.0.1 or [::1]", body = crate::api::openapi::ErrorBody)
    )
)]
async fn org_memberships(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(p): Query<PageParams>,
) -> Result<Json<Value>, ApiError> {
    // The parent must exist (404/410 otherwise); a plain read, through the cache.
    valid_id(&id)?;
    cached_entity(&s, Kind::Organization, &id).await?;
    page(
        &s,
        Kind::Membership,
        Some((RefCol::OrganizationId, &id)),
        &p,
        membership_json,
        Some(org_members_key(&id)),
    )
    .await
}

#[utoipa::path(
    get,
    path = "/v1/users/{id}/organizations",
    tag = "read", security(("api_token" = [])),
    params(("id" = String, Path, description = "A Clerk user id", min_length = 1, max_length = 128), PageParams),
    responses(
        (status = 200, description = "The user's organizations, by membership id", body = crate::api::openapi::UserOrganizationPage),
        (status = 400, description = "Bad input: a parameter, cursor or id (the error names it)", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "User never synced", body = crate::api::openapi::ErrorBody),
        (status = 410, description = "Deleted", body = crate::api::openapi::GoneBody),
        (status = 421, description = "A token-less server answers only for localhost, 127.0.0.1 or [::1]", body = crate::api::openapi::ErrorBody)
    )
)]
async fn user_organizations(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(p): Query<PageParams>,
) -> Result<Json<Value>, ApiError> {
    // The parent must exist (404/410 otherwise); a plain read, through the cache.
    valid_id(&id)?;
    cached_entity(&s, Kind::User, &id).await?;
    let limit = limit(&p)?;
    let after = cursor::decode_id(p.cursor.as_deref())?;
    let rows = read::list_live(
        &s.db,
        Kind::Membership,
        Some((RefCol::UserId, &id)),
        after.as_deref(),
        limit + 1,
    )
    .await
    .map_err(ApiError::internal)?;
    let more = rows.len() as i64 > limit;
    let rows = &rows[..rows.len().min(limit as usize)];
    let mut out = Vec::with_capacity(rows.len());
    for m in rows {
        let mem = membership_json(m);
        // The organization as synced; the membership's embedded copy if the
        // organization's own events have not arrived yet.
        let org = match m.organization_id.as_deref() {
            Some(oid) => read::get(&s.db, Kind::Organization, oid)
                .await
                .map_err(ApiError::internal)?,
            None => None,
        };
        let mut o = match org {
            Some(r) if !r.deleted => data_map(&r),
            _ => mem
                .get("organization")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
        };
        o.insert("id".into(), json!(m.organization_id));
        o.insert("role".into(), mem["role"].clone());
        o.insert("membership_id".into(), json!(m.id));
        out.push(Value::Object(o));
    }
    let next = if more {
        rows.last().map(|r| cursor::encode(&r.id))
    } else {
        None
    };
    Ok(Json(json!({ "data": out, "next_cursor": next })))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// The user, organization or membership id.
    #[param(required = true, min_length = 1, max_length = 128)]
    entity_id: Option<String>,
    /// Entries per page (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// A previous page's `next_cursor`.
    cursor: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/audit",
    tag = "read", security(("api_token" = [])),
    params(AuditParams),
    responses(
        (status = 200, description = "The entity's applied changes, oldest first", body = crate::api::openapi::AuditPage),
        (status = 400, description = "Bad input: a parameter, cursor or id (the error names it)", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = crate::api::openapi::ErrorBody),
        (status = 421, description = "A token-less server answers only for localhost, 127.0.0.1 or [::1]", body = crate::api::openapi::ErrorBody)
    )
)]
async fn audit(
    State(s): State<AppState>,
    Query(p): Query<AuditParams>,
) -> Result<Json<AuditPage>, ApiError> {
    let Some(entity_id) = p.entity_id.as_deref().filter(|e| !e.is_empty()) else {
        return Err(ApiError::BadRequest("entity_id is required".into()));
    };
    valid_id(entity_id)?;
    let limit = limit(&PageParams {
        limit: p.limit,
        cursor: None,
    })?;
    let after = cursor::decode_seq(p.cursor.as_deref())?.unwrap_or(0);
    let rows = read::audit(&s.db, entity_id, after, limit + 1)
        .await
        .map_err(ApiError::internal)?;
    let more = rows.len() as i64 > limit;
    let rows = &rows[..rows.len().min(limit as usize)];
    let next = if more {
        rows.last().map(|r| cursor::encode(r.seq))
    } else {
        None
    };
    // Built as the documented types, so the document cannot drift from the answer.
    Ok(Json(AuditPage {
        data: rows.iter().map(AuditEntry::from).collect(),
        next_cursor: next,
    }))
}
