//! Liveness and readiness (WEB-9): no details, no authentication.

use axum::extract::State;
use axum::http::StatusCode;

use crate::AppState;

pub(super) async fn health() -> &'static str {
    "ok"
}

/// 200 only when the state store answers and every migration is applied.
pub(super) async fn ready(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.store.ready().await {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}
