//! Liveness and readiness (WEB-9): no details, no authentication.

use axum::extract::State;
use axum::http::StatusCode;

use crate::AppState;

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/health",
    tag = "health",
    responses((status = 200, description = "Alive", body = String, content_type = "text/plain", example = "ok")),
)]
pub(super) async fn health() -> &'static str {
    "ok"
}

/// Readiness: 200 only when the state store answers, every migration is applied and the
/// server is not stopping (a draining server takes no new request, EX-3).
#[utoipa::path(
    get,
    path = "/ready",
    tag = "health",
    responses(
        (status = 200, description = "Ready", body = String, content_type = "text/plain", example = "ready"),
        (status = 503, description = "Not ready", body = String, content_type = "text/plain", example = "not ready"),
    ),
)]
pub(super) async fn ready(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "stopping")
    } else if state.store.ready().await {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}
