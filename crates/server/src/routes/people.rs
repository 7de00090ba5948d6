//! People: bootstrap, login, logout, enrolment, step-up, password change, users and the vault.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use portcullis_identity::session::{clear_cookie_header, session_cookie_name};
use portcullis_proto::people::{
    BootstrapRequest, BootstrapResponse, CreateUser, EnrolRequest, EnrolResponse, Invite,
    LockdownLifted, LockdownOutcome, LoginRequest, PasswordChange, PasswordChanged, StepUpRequest,
    StepUpResponse, SuspendUser, Suspended, UserCreated, UserView, VaultRotated,
};

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

pub(super) async fn enrol(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    ApiJson(body): ApiJson<EnrolRequest>,
) -> Result<Json<EnrolResponse>, ApiError> {
    Ok(Json(people::account::enrol(&state, &ctx, body).await?))
}

pub(super) async fn step_up(
    State(state): State<AppState>,
    User(who): User,
    Ctx(ctx): Ctx,
    ApiJson(body): ApiJson<StepUpRequest>,
) -> Result<Json<StepUpResponse>, ApiError> {
    Ok(Json(
        people::account::step_up(&state, &ctx, &who, body).await?,
    ))
}

pub(super) async fn change_password(
    State(state): State<AppState>,
    User(who): User,
    Ctx(ctx): Ctx,
    ApiJson(body): ApiJson<PasswordChange>,
) -> Result<Json<PasswordChanged>, ApiError> {
    Ok(Json(
        people::account::change_password(&state, &ctx, &who, body).await?,
    ))
}

pub(super) async fn list_users(
    State(state): State<AppState>,
) -> Result<Json<Vec<UserView>>, ApiError> {
    state.auth.flush_last_used(&state.store).await?;
    Ok(Json(people::users::list(&state).await?))
}

pub(super) async fn add_user(
    State(state): State<AppState>,
    User(who): User,
    Ctx(ctx): Ctx,
    ApiJson(body): ApiJson<CreateUser>,
) -> Result<(StatusCode, Json<UserCreated>), ApiError> {
    let created = people::users::add(&state, &ctx, &who.display(), &body.name, body.role).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

pub(super) async fn invite_user(
    State(state): State<AppState>,
    User(who): User,
    Ctx(ctx): Ctx,
    Path(name): Path<String>,
) -> Result<Json<Invite>, ApiError> {
    Ok(Json(
        people::users::invite(&state, &ctx, &who.display(), &name).await?,
    ))
}

pub(super) async fn suspend_user(
    State(state): State<AppState>,
    User(who): User,
    Ctx(ctx): Ctx,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<SuspendUser>,
) -> Result<Json<Suspended>, ApiError> {
    Ok(Json(
        people::users::suspend(&state, &ctx, &who.display(), &name, body.reason.as_deref()).await?,
    ))
}

pub(super) async fn unsuspend_user(
    State(state): State<AppState>,
    User(who): User,
    Ctx(ctx): Ctx,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    people::users::unsuspend(&state, &ctx, &who.display(), &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn reset_mfa(
    State(state): State<AppState>,
    User(who): User,
    Ctx(ctx): Ctx,
    Path(name): Path<String>,
) -> Result<Json<Invite>, ApiError> {
    Ok(Json(
        people::users::reset_mfa(&state, &ctx, &who.display(), &name).await?,
    ))
}

pub(super) async fn rotate_vault(
    State(state): State<AppState>,
    User(who): User,
    Ctx(ctx): Ctx,
) -> Result<Json<VaultRotated>, ApiError> {
    Ok(Json(
        people::vault::rotate(&state, &ctx, &who.display()).await?,
    ))
}

pub(super) async fn lockdown(
    State(state): State<AppState>,
    User(who): User,
    Ctx(ctx): Ctx,
) -> Result<Json<LockdownOutcome>, ApiError> {
    Ok(Json(people::lockdown::lockdown(&state, &ctx, &who).await?))
}

pub(super) async fn lift_lockdown(
    State(state): State<AppState>,
    User(who): User,
    Ctx(ctx): Ctx,
) -> Result<Json<LockdownLifted>, ApiError> {
    Ok(Json(people::lockdown::lift(&state, &ctx, &who).await?))
}
