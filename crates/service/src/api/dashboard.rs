//! The operator dashboard at `GET /admin`: one HTML page, its script and its
//! stylesheet, compiled into the binary (`include_str!`, no build step, no CDN).
//!
//! Owns: serving those three static files and their security headers. The page
//! is served without the admin token (a browser navigation cannot send a bearer
//! header) but it carries no data: its script asks for the token (or reads it
//! from the URL fragment, which browsers never send) and sends it as a bearer
//! header on every `/admin/*` call, so the data stays behind `api::admin`.
//!
//! Must never: put data or a token into these responses, or serve anything while
//! no admin token is configured (then `/admin` is 404 like the rest of `/admin`).

use crate::api::error::ApiError;
use crate::app::AppState;
use axum::extract::{Request, State};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const HTML: &str = include_str!("assets/dashboard.html");
const JS: &str = include_str!("assets/dashboard.js");
const CSS: &str = include_str!("assets/dashboard.css");

/// Where the page loads its script and stylesheet from (the HTML names them).
pub const SCRIPT_PATH: &str = "/admin/dashboard.js";
pub const STYLE_PATH: &str = "/admin/dashboard.css";

/// Same-origin scripts, styles and fetches only: no inline script, so even a
/// value that slipped into the DOM unescaped could not run; `connect-src 'self'`
/// keeps the token from being sent anywhere else.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self'; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

pub fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/admin", get(page))
        .route("/admin/", get(page))
        .route(SCRIPT_PATH, get(script))
        .route(STYLE_PATH, get(style))
        .layer(axum::middleware::from_fn_with_state(state, require_enabled))
}

/// 404 while no admin token is configured, exactly as `/admin/*` answers; the
/// token itself is checked by the API calls the page makes, not here.
async fn require_enabled(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if state.config.admin_token.is_none() {
        return Err(ApiError::NotFound);
    }
    Ok(next.run(req).await)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, content_type),
            // The assets change with the binary; a stale cached script after an
            // upgrade would talk to endpoints that moved.
            (CACHE_CONTROL, "no-store"),
            (CONTENT_SECURITY_POLICY, CSP),
            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (X_FRAME_OPTIONS, "DENY"),
            (REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

async fn page() -> Response {
    asset("text/html; charset=utf-8", HTML)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_names_its_assets_and_script_never_uses_inner_html() {
        assert!(HTML.contains(&format!("src=\"{SCRIPT_PATH}\"")));
        assert!(HTML.contains(&format!("href=\"{STYLE_PATH}\"")));
        // Data goes into the DOM through textContent only.
        assert!(!JS.contains("innerHTML"));
        assert!(!JS.contains("outerHTML"));
        assert!(!JS.contains("insertAdjacentHTML"));
        assert!(!JS.contains("document.write"));
    }
}
