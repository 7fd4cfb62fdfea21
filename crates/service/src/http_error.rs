//! The one HTTP error type: every library error becomes a status code here.
//!
//! Shared by ingress (webhook/) and the API (api/), so neither imports the
//! other. Owns: the status code and JSON body of every refusal. Bodies are JSON
//! `{"error": "..."}`. Must never: let internal text reach a client (unexpected
//! failures are logged with their cause and answered with an opaque 500).
//! See ARCHITECTURE.md.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("not found")]
    NotFound,
    #[error("deleted")]
    Gone(String),
    #[error("{0}")]
    Conflict(String),
    /// A request for a host name this server does not answer for (421).
    #[error("{0}")]
    MisdirectedHost(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("request body is larger than the limit of {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    Unavailable(String),
    /// The request (its body) did not arrive in time.
    #[error("{0}")]
    RequestTimeout(String),
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    pub fn internal(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        ApiError::Internal(Box::new(e))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::MisdirectedHost(_) => StatusCode::MISDIRECTED_REQUEST,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let body = match &self {
            ApiError::Gone(id) => json!({"id": id, "deleted": true}),
            ApiError::Internal(e) => {
                tracing::error!(error = %e, source = ?e.source(), "request failed");
                json!({"error": "internal error"})
            }
            other => json!({"error": other.to_string()}),
        };
        let mut resp = (status, Json(body)).into_response();
        if matches!(self, ApiError::Unauthorized(_)) {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        // Svix retries any 5xx; the header tells other clients when.
        if matches!(self, ApiError::Unavailable(_)) {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("5"),
            );
        }
        resp
    }
}

/// `{"error": "..."}`: every error answer but 410.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: String,
}
