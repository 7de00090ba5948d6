//! `/api/v1/bootstrap`, `/api/v1/login`, `/api/v1/logout`.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use portcullis_identity::session::{clear_cookie_header, session_cookie_name};
use portcullis_proto::people::{BootstrapRequest, BootstrapResponse, LoginRequest};

use super::{Ctx, User};
use crate::AppState;
use crate::error::{ApiError, ApiJson};
use crate::people;

pub(super) async fn bootstrap(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    ApiJson(body): ApiJson<BootstrapRequest>,
) -> Result<(StatusCode, Json<BootstrapResponse>), ApiError> {
    let created = people::bootstrap::bootstrap(&state, &ctx, body).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// A session: the token in the body for the CLI, and the same value as an `HttpOnly;
/// SameSite=Strict` cookie for the browser (AUTH-3).
pub(super) async fn login(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    ApiJson(body): ApiJson<LoginRequest>,
) -> Result<Response, ApiError> {
    let session = people::login::login(&state, &ctx, body).await?;
    let secure = state.config.secure_cookies();
    let cookie = portcullis_identity::cookie_header(
        session_cookie_name(secure),
        &session.token,
        std::time::Duration::from_secs(state.config.sessions.absolute_lifetime_secs),
        secure,
    )
    .map_err(|e| ApiError::Internal(anyhow::anyhow!("{e}")))?;
    let mut response = Json(session).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(response)
}

pub(super) async fn logout(
    State(state): State<AppState>,
    User(who): User,
    Ctx(ctx): Ctx,
) -> Result<Response, ApiError> {
    if !who.session {
        return Err(ApiError::bad_request(
            "logout ends a session; revoke an API token with `portcullis token revoke`",
        ));
    }
    people::login::logout(&state, &ctx, &who.token_id, &who.display()).await?;
    let secure = state.config.secure_cookies();
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(cookie) = clear_cookie_header(session_cookie_name(secure), secure)
        && let Ok(v) = HeaderValue::from_str(&cookie)
    {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(response)
}
