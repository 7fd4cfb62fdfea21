//! `/healthz`, `/readyz`, `/metrics`.

use crate::app::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    match state.db.ping().await {
        Ok(()) => (StatusCode::OK, Json(json!({"status": "ready"}))),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "unavailable", "error": "database unreachable"})),
            )
        }
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    // Queue depths are read at scrape time, not tracked incrementally.
    if let Ok(c) = crate::store::inbox_counts(&state.db).await {
        state.metrics.pending.set(c.pending);
        state.metrics.failed.set(c.failed);
        state.metrics.dead.set(c.dead);
    }
    let (size, idle) = crate::store::db::on_pool!(&state.db, |p| (p.size(), p.num_idle()));
    // `size` and `idle` are read separately: a checkout between them must not go negative.
    let idle = idle as i64;
    state.metrics.db_pool_idle.set(idle);
    state
        .metrics
        .db_pool_in_use
        .set((i64::from(size) - idle).max(0));
    state
        .metrics
        .search_index_documents
        .set(state.search.num_docs() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
