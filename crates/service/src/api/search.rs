//! `GET /v1/search` and the admin reindex endpoints (`/admin/reindex`).
//!
//! Owns: checking search parameters and shaping results. The index only names
//! matching entities; each one is read from the store here, so a result is
//! never older than the store and a deleted entity never shows, however far
//! the index lags. Must never: pass the query text anywhere but
//! [`crate::search::parse_query`], or answer 500 for anything a client
//! typed (bad input is a 400 naming the problem).

use crate::api::extract::Query;
use crate::api::read::require_api_token;
use crate::app::AppState;
use crate::clerk::model::Kind;
use crate::http_error::ApiError;
use crate::search::{parse_query, BadQuery, SearchError};
use crate::store::read;
use crate::views::entity_json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

const DEFAULT_LIMIT: i64 = 20;
const MAX_LIMIT: i64 = 100;
/// Extra hits asked of the index: some may be entities the store has deleted
/// and the index has not heard of yet; they are skipped, not returned.
const SLACK: usize = 10;

pub fn routes(state: AppState) -> Router<AppState> {
    let v1 = Router::new()
        .route("/v1/search", get(search))
        .layer(from_fn_with_state(state.clone(), require_api_token));
    let admin = Router::new()
        .route("/admin/reindex", get(reindex_status).post(start_reindex))
        .layer(from_fn_with_state(state, crate::api::admin::require_admin));
    v1.merge(admin)
}

impl From<BadQuery> for ApiError {
    fn from(e: BadQuery) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}

impl From<SearchError> for ApiError {
    fn from(e: SearchError) -> Self {
        match e {
            SearchError::RebuildRunning => ApiError::Conflict(e.to_string()),
            e => ApiError::internal(e),
        }
    }
}

#[derive(Deserialize)]
pub struct SearchParams {
    q: Option<String>,
    kind: Option<String>,
    limit: Option<i64>,
}

async fn search(
    State(s): State<AppState>,
    Query(p): Query<SearchParams>,
) -> Result<Json<Value>, ApiError> {
    let kind = match p.kind.as_deref().map(str::trim) {
        None | Some("") => None,
        Some("users" | "user") => Some(Kind::User),
        Some("organizations" | "organization") => Some(Kind::Organization),
        Some(_) => {
            return Err(ApiError::BadRequest(
                "kind must be users or organizations".into(),
            ))
        }
    };
    let limit = match p.limit {
        None => DEFAULT_LIMIT,
        Some(n) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(_) => {
            return Err(ApiError::BadRequest(format!(
                "limit must be between 1 and {MAX_LIMIT}"
            )))
        }
    } as usize;
    let q = parse_query(p.q.as_deref().unwrap_or(""))?;
    let hits = s.search.search(&q, kind, limit + SLACK).await?;
    let mut data = Vec::with_capacity(limit);
    for hit in hits {
        if data.len() == limit {
            break;
        }
        let row = read::get(&s.db, hit.kind, &hit.id)
            .await
            .map_err(ApiError::internal)?;
        match row {
            Some(r) if !r.deleted => data.push(entity_json(hit.kind, &r)),
            // Deleted or gone since it was indexed: the index catches up soon.
            _ => {}
        }
    }
    Ok(Json(json!({ "data": data })))
}

async fn reindex_status(State(s): State<AppState>) -> Json<Value> {
    Json(json!({
        "status": s.search.rebuild_status(),
        "documents": s.search.num_docs(),
        "index": s.search.location(),
    }))
}

/// Starts a rebuild in the background (202); progress at `GET /admin/reindex`.
async fn start_reindex(State(s): State<AppState>) -> Result<(StatusCode, Json<Value>), ApiError> {
    let ticket = s.search.claim_rebuild()?;
    let run = ticket.run;
    let index = s.search.clone();
    let db = s.db.clone();
    tokio::spawn(async move {
        match index.rebuild(ticket, &db, |_| {}).await {
            Ok(r) => tracing::info!(
                users = r.users,
                organizations = r.organizations,
                seconds = r.seconds,
                "search index rebuilt"
            ),
            Err(e) => tracing::warn!(error = %e, "search index rebuild failed"),
        }
    });
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "run": run, "status": "started" })),
    ))
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteReindexError {
    #[error("cannot reach the server: {0}")]
    Http(#[from] reqwest::Error),
    #[error("the server has no admin API (set CLERKSYNC_ADMIN_TOKEN on the server)")]
    AdminDisabled,
    #[error("the server refused the admin token (check CLERKSYNC_ADMIN_TOKEN)")]
    Unauthorized,
    #[error("a rebuild is already running on the server (GET /admin/reindex shows its progress)")]
    Busy,
    #[error("the server answered {status}: {body}")]
    Unexpected { status: u16, body: String },
    #[error("the rebuild failed on the server: {0}")]
    Failed(String),
}

/// `clerksync reindex --url`: asks a running server to rebuild its index and
/// follows the progress, printing through `say`, until the rebuild ends.
pub async fn reindex_remote(
    base_url: &str,
    admin_token: &str,
    mut say: impl FnMut(String),
) -> Result<(), RemoteReindexError> {
    let url = format!("{}/admin/reindex", base_url.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()?;
    let resp = client.post(&url).bearer_auth(admin_token).send().await?;
    let run = match resp.status().as_u16() {
        202 => resp.json::<Value>().await?["run"].as_u64().unwrap_or(0),
        404 => return Err(RemoteReindexError::AdminDisabled),
        401 => return Err(RemoteReindexError::Unauthorized),
        409 => return Err(RemoteReindexError::Busy),
        status => {
            return Err(RemoteReindexError::Unexpected {
                status,
                body: resp.text().await.unwrap_or_default(),
            })
        }
    };
    say(format!("rebuild #{run} started on {base_url}"));
    let mut last_indexed = None;
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let resp = client.get(&url).bearer_auth(admin_token).send().await?;
        if !resp.status().is_success() {
            return Err(RemoteReindexError::Unexpected {
                status: resp.status().as_u16(),
                body: resp.text().await.unwrap_or_default(),
            });
        }
        let v: Value = resp.json().await?;
        let st = &v["status"];
        let indexed = st["indexed"].as_u64().unwrap_or(0);
        if st["run"].as_u64() != Some(run) || !st["running"].as_bool().unwrap_or(false) {
            if let Some(e) = st["error"].as_str() {
                return Err(RemoteReindexError::Failed(e.to_string()));
            }
            let f = &st["finished"];
            say(format!(
                "reindexed {} users and {} organizations in {:.1}s; the index holds {} documents",
                f["users"],
                f["organizations"],
                f["seconds"].as_f64().unwrap_or(0.0),
                v["documents"]
            ));
            return Ok(());
        }
        if last_indexed != Some(indexed) {
            last_indexed = Some(indexed);
            say(format!("  indexed {indexed} documents"));
        }
    }
}
