//! People: bootstrap, login, logout, enrolment, step-up, password change, users and the vault.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use portcullis_identity::session::{clear_cookie_header, session_cookie_name};
use portcullis_proto::people::{
    BootstrapRequest, BootstrapResponse, CreateUser, EnrolRequest, EnrolResponse, Invite,
    LockdownLifted, LockdownOutcome, LoginRequest, LoginResponse, PasswordChange, PasswordChanged,
    StepUpRequest, StepUpResponse, SuspendUser, Suspended, UserCreated, UserView, VaultRotated,
};

use super::{Ctx, Segment, User};
use crate::AppState;
use crate::error::{ApiError, ApiJson};
use crate::people;

/// Creates the first admin with the one-time setup token of a fresh server.
#[utoipa::path(
    post,
    path = "/api/v1/bootstrap",
    tag = "people",
    request_body = BootstrapRequest,
    responses(
        (status = 201, description = "The admin, with the TOTP secret and recovery codes (shown once)", body = BootstrapResponse),
        (status = 400, description = "The body is malformed, or the name or password is refused"),
        (status = 401, description = "The setup token is wrong"),
        (status = 409, description = "The server is set up already"),
        (status = 413, description = "The body exceeds the size limit"),
        (status = 503, description = "The state store or the audit chain is unavailable, or too many password checks run at once"),
    ),
)]
pub(super) async fn bootstrap(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    ApiJson(body): ApiJson<BootstrapRequest>,
) -> Result<(StatusCode, Json<BootstrapResponse>), ApiError> {
    let created = people::bootstrap::bootstrap(&state, &ctx, body).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Signs in with a password and, for accounts with MFA, a TOTP code, a recovery code or a
/// trusted device's token. The session token comes in the body and as an `HttpOnly;
/// SameSite=Strict` cookie (AUTH-3).
#[utoipa::path(
    post,
    path = "/api/v1/login",
    tag = "people",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "A new session", body = LoginResponse, headers(("set-cookie" = String, description = "The session cookie"))),
        (status = 400, description = "The body is malformed"),
        (status = 401, description = "Login failed (one answer for every cause: `login_failed`), or the password was right and a second factor is needed (`mfa_required`)"),
        (status = 403, description = "The role requires an authenticator that is not enrolled yet (`mfa_enrolment_required`)"),
        (status = 413, description = "The body exceeds the size limit"),
        (status = 503, description = "The state store or the audit chain is unavailable, or too many password checks run at once"),
    ),
)]
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

/// Ends the caller's session.
#[utoipa::path(
    post,
    path = "/api/v1/logout",
    tag = "people",
    responses(
        (status = 204, description = "The session ended; the cookie is cleared", headers(("set-cookie" = String, description = "Clears the session cookie"))),
        (status = 400, description = "The credential is an API token, not a session"),
    ),
)]
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

/// Accepts an invitation: sets the password of a new user (or, after `reset-mfa`, checks the
/// current one) and enrols TOTP.
#[utoipa::path(
    post,
    path = "/api/v1/enrol",
    tag = "people",
    request_body = EnrolRequest,
    responses(
        (status = 200, description = "Enrolled; the TOTP secret and recovery codes are shown once", body = EnrolResponse),
        (status = 400, description = "The body is malformed, the password is too weak, or the role requires MFA"),
        (status = 401, description = "The enrolment token or the current password is wrong, expired or spent"),
        (status = 413, description = "The body exceeds the size limit"),
        (status = 503, description = "The state store or the audit chain is unavailable, or too many password checks run at once"),
    ),
)]
pub(super) async fn enrol(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    ApiJson(body): ApiJson<EnrolRequest>,
) -> Result<Json<EnrolResponse>, ApiError> {
    Ok(Json(people::account::enrol(&state, &ctx, body).await?))
}

/// Confirms a fresh TOTP (or recovery) code for this session, before sensitive actions
/// (AUTH-2).
#[utoipa::path(
    post,
    path = "/api/v1/step-up",
    tag = "people",
    request_body = StepUpRequest,
    responses(
        (status = 200, description = "Sensitive actions are allowed in this session until `valid_until`", body = StepUpResponse),
        (status = 400, description = "The body is malformed or names no code, or the credential is an API token, not a session"),
        (status = 403, description = "The code is wrong or spent, the account is locked (`step_up_failed`), or no authenticator is enrolled (`mfa_not_enrolled`)"),
        (status = 413, description = "The body exceeds the size limit"),
    ),
)]
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

/// Changes the caller's password (AUTH-4); every other session, API token and trusted device
/// of the user ends.
#[utoipa::path(
    post,
    path = "/api/v1/password",
    tag = "people",
    request_body = PasswordChange,
    responses(
        (status = 200, description = "Changed; what it ended", body = PasswordChanged),
        (status = 400, description = "The body is malformed, the new password is refused, or the credential is an API token, not a session"),
        (status = 403, description = "The current password is wrong or the account is locked (`password_incorrect`)"),
        (status = 413, description = "The body exceeds the size limit"),
    ),
)]
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

#[utoipa::path(
    get,
    path = "/api/v1/users",
    tag = "users",
    responses((status = 200, description = "Every user", body = Vec<UserView>)),
)]
pub(super) async fn list_users(
    State(state): State<AppState>,
) -> Result<Json<Vec<UserView>>, ApiError> {
    state.auth.flush_last_used(&state.store).await?;
    Ok(Json(people::users::list(&state).await?))
}

/// Adds a user with an invitation to enrol.
#[utoipa::path(
    post,
    path = "/api/v1/users",
    tag = "users",
    request_body(content = CreateUser, example = json!({"name": "alice", "role": "developer"})),
    responses(
        (
            status = 201,
            description = "The user and the invitation (its token is shown once)",
            body = UserCreated,
            links(
                ("invite" = (operation_id = "invite_user", parameters(("name" = "$response.body#/info/name")))),
                ("suspend" = (operation_id = "suspend_user", parameters(("name" = "$response.body#/info/name")))),
                ("unsuspend" = (operation_id = "unsuspend_user", parameters(("name" = "$response.body#/info/name")))),
                ("reset_mfa" = (operation_id = "reset_mfa", parameters(("name" = "$response.body#/info/name"))))
            ),
        ),
        (status = 400, description = "The body is malformed or the name is invalid"),
        (status = 409, description = "A user of this name exists, or another admin would exceed `people.max_admins`"),
        (status = 413, description = "The body exceeds the size limit"),
    ),
)]
pub(super) async fn add_user(
    State(state): State<AppState>,
    User(who): User,
    Ctx(ctx): Ctx,
    ApiJson(body): ApiJson<CreateUser>,
) -> Result<(StatusCode, Json<UserCreated>), ApiError> {
    let created = people::users::add(&state, &ctx, &who.display(), &body.name, body.role).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// A new invitation; an older one stops working.
#[utoipa::path(
    post,
    path = "/api/v1/users/{name}/invite",
    tag = "users",
    params(("name" = String, Path, description = "The user's name")),
    responses(
        (status = 200, description = "The invitation (its token is shown once)", body = Invite),
        (status = 404, description = "No such user"),
        (status = 409, description = "The user is suspended"),
    ),
)]
pub(super) async fn invite_user(
    State(state): State<AppState>,
    User(who): User,
    Ctx(ctx): Ctx,
    Segment(name): Segment,
) -> Result<Json<Invite>, ApiError> {
    Ok(Json(
        people::users::invite(&state, &ctx, &who.display(), &name).await?,
    ))
}

/// Suspends a user: sessions and tokens end and requests are cancelled, in one transaction
/// (AUTH-7).
#[utoipa::path(
    post,
    path = "/api/v1/users/{name}/suspend",
    tag = "users",
    params(("name" = String, Path, description = "The user's name")),
    request_body = SuspendUser,
    responses(
        (status = 200, description = "Suspended; what it ended", body = Suspended),
        (status = 400, description = "The body is malformed or the reason is refused"),
        (status = 404, description = "No such user"),
        (status = 409, description = "The user is suspended already, or is the last active admin"),
        (status = 413, description = "The body exceeds the size limit"),
    ),
)]
pub(super) async fn suspend_user(
    State(state): State<AppState>,
    User(who): User,
    Ctx(ctx): Ctx,
    Segment(name): Segment,
    ApiJson(body): ApiJson<SuspendUser>,
) -> Result<Json<Suspended>, ApiError> {
    Ok(Json(
        people::users::suspend(&state, &ctx, &who.display(), &name, body.reason.as_deref()).await?,
    ))
}

/// Lifts a suspension; revoked credentials stay revoked.
#[utoipa::path(
    post,
    path = "/api/v1/users/{name}/unsuspend",
    tag = "users",
    params(("name" = String, Path, description = "The user's name")),
    responses(
        (status = 204, description = "Unsuspended"),
        (status = 404, description = "No such user"),
        (status = 409, description = "The user is not suspended, is suspended by the configuration file, or another admin would exceed `people.max_admins`"),
    ),
)]
pub(super) async fn unsuspend_user(
    State(state): State<AppState>,
    User(who): User,
    Ctx(ctx): Ctx,
    Segment(name): Segment,
) -> Result<StatusCode, ApiError> {
    people::users::unsuspend(&state, &ctx, &who.display(), &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Resets a lost authenticator: TOTP, recovery codes, trusted devices and sessions go; an
/// invitation lets the user enrol again.
#[utoipa::path(
    post,
    path = "/api/v1/users/{name}/reset-mfa",
    tag = "users",
    params(("name" = String, Path, description = "The user's name")),
    responses(
        (status = 200, description = "The invitation to enrol again (its token is shown once)", body = Invite),
        (status = 404, description = "No such user"),
        (status = 409, description = "The user is suspended"),
    ),
)]
pub(super) async fn reset_mfa(
    State(state): State<AppState>,
    User(who): User,
    Ctx(ctx): Ctx,
    Segment(name): Segment,
) -> Result<Json<Invite>, ApiError> {
    Ok(Json(
        people::users::reset_mfa(&state, &ctx, &who.display(), &name).await?,
    ))
}

/// Rotates the vault key and reseals every sealed column (SEC-3).
#[utoipa::path(
    post,
    path = "/api/v1/vault/rotate",
    tag = "users",
    responses((status = 200, description = "The new key version and how many values were resealed", body = VaultRotated)),
)]
pub(super) async fn rotate_vault(
    State(state): State<AppState>,
    User(who): User,
    Ctx(ctx): Ctx,
) -> Result<Json<VaultRotated>, ApiError> {
    Ok(Json(
        people::vault::rotate(&state, &ctx, &who.display()).await?,
    ))
}

/// Locks every person out but the caller, in one transaction (IR-3).
#[utoipa::path(
    post,
    path = "/api/v1/lockdown",
    tag = "users",
    responses((status = 200, description = "What the lockdown ended", body = LockdownOutcome)),
)]
pub(super) async fn lockdown(
    State(state): State<AppState>,
    User(who): User,
    Ctx(ctx): Ctx,
) -> Result<Json<LockdownOutcome>, ApiError> {
    Ok(Json(people::lockdown::lockdown(&state, &ctx, &who).await?))
}

/// Lifts the lockdown.
#[utoipa::path(
    post,
    path = "/api/v1/lockdown/lift",
    tag = "users",
    responses(
        (status = 200, description = "How many users were unlocked", body = LockdownLifted),
        (status = 409, description = "There is no lockdown to lift"),
    ),
)]
pub(super) async fn lift_lockdown(
    State(state): State<AppState>,
    User(who): User,
    Ctx(ctx): Ctx,
) -> Result<Json<LockdownLifted>, ApiError> {
    Ok(Json(people::lockdown::lift(&state, &ctx, &who).await?))
}
