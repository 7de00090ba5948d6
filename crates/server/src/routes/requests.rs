//! `/api/v1/requests`: create, list, show, wait for and cancel requests.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use portcullis_core::{Permission, RequestState};
use portcullis_proto::api::{
    CreateRequest, DecideRequest, PolicyCheck, PolicyVerdict, RequestOutcome, RequestView,
};
use serde::Deserialize;
use uuid::Uuid;

use super::{Ctx, User, path_uuid};
use crate::AppState;
use crate::approvals::{self, Verdict};
use crate::auth::UserPrincipal;
use crate::error::{ApiError, ApiJson, ApiQuery};
use crate::lifecycle;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WaitParams {
    /// Seconds to wait for the request to finish before answering with its current state.
    #[serde(default)]
    wait: Option<u64>,
    /// Answer early when an approval decision lands (for live progress).
    #[serde(default)]
    progress: bool,
}

pub(super) async fn create(
    State(state): State<AppState>,
    User(who): User,
    Ctx(ctx): Ctx,
    ApiQuery(params): ApiQuery<WaitParams>,
    ApiJson(body): ApiJson<CreateRequest>,
) -> Result<(StatusCode, Json<RequestOutcome>), ApiError> {
    let id = lifecycle::create_request(&state, &who, &ctx, body).await?;
    let outcome = wait_outcome(&state, &who, id, params.wait.unwrap_or(0), params.progress).await?;
    Ok((StatusCode::CREATED, Json(outcome)))
}

pub(super) async fn wait(
    State(state): State<AppState>,
    User(who): User,
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<WaitParams>,
) -> Result<Json<RequestOutcome>, ApiError> {
    let id = path_uuid(&id)?;
    Ok(Json(
        wait_outcome(&state, &who, id, params.wait.unwrap_or(30), params.progress).await?,
    ))
}

/// The result as NDJSON: header, rows, trailer (see [`crate::results`]).
pub(super) async fn result(
    State(state): State<AppState>,
    User(who): User,
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<WaitParams>,
) -> Result<axum::response::Response, ApiError> {
    let id = path_uuid(&id)?;
    let wait = params
        .wait
        .unwrap_or(30)
        .min(state.config.execution.max_wait_secs);
    crate::results::download(&state, &who, id, Duration::from_secs(wait)).await
}

/// Waits (pushed, never polled) up to `wait_secs` for `id` to finish. Results go only to the
/// requester who asked for them.
async fn wait_outcome(
    state: &AppState,
    who: &UserPrincipal,
    id: Uuid,
    wait_secs: u64,
    progress: bool,
) -> Result<RequestOutcome, ApiError> {
    let mut outcome = state.dispatch.subscribe(id);
    let mut steps = state.dispatch.subscribe_progress(id);
    steps.mark_unchanged();
    let (mut view, owner) = lifecycle::load_view(state, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    if owner != who.user_id {
        return Err(ApiError::NotFound);
    }
    let wait = Duration::from_secs(wait_secs.min(state.config.execution.max_wait_secs));
    if !view.state.is_terminal() && !wait.is_zero() {
        let progressed = async {
            if progress {
                let _ = steps.changed().await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let _ = tokio::time::timeout(wait, async {
            tokio::select! {
                _ = outcome.wait_for(Option::is_some) => {}
                () = progressed => {}
            }
        })
        .await;
        if progress {
            view = lifecycle::load_view(state, id)
                .await?
                .ok_or(ApiError::NotFound)?
                .0;
        }
    }
    let finished = outcome.borrow().clone();
    if let Some(f) = &finished
        && f.state != view.state
    {
        view = lifecycle::load_view(state, id)
            .await?
            .ok_or(ApiError::NotFound)?
            .0;
    }
    let result = finished.and_then(|f| f.result.as_deref().cloned());
    Ok(RequestOutcome {
        request: view,
        result,
    })
}

pub(super) async fn show(
    State(state): State<AppState>,
    User(who): User,
    Path(id): Path<String>,
) -> Result<Json<RequestView>, ApiError> {
    let id = path_uuid(&id)?;
    let (view, owner) = lifecycle::load_view(&state, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    if owner != who.user_id && !who.role.has(Permission::RequestsViewAll) {
        return Err(ApiError::NotFound);
    }
    Ok(Json(view))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListParams {
    #[serde(default)]
    state: Option<RequestState>,
    #[serde(default)]
    limit: Option<u32>,
    /// Everyone's requests (needs `requests:view_all`); otherwise only the caller's.
    #[serde(default)]
    all: bool,
    /// Only requests that ran under break-glass and await their review.
    #[serde(default)]
    unreviewed: bool,
}

pub(super) async fn list(
    State(state): State<AppState>,
    User(who): User,
    ApiQuery(p): ApiQuery<ListParams>,
) -> Result<Json<Vec<RequestView>>, ApiError> {
    if p.all && !who.role.has(Permission::RequestsViewAll) {
        return Err(ApiError::Forbidden {
            reason: "missing_permission",
        });
    }
    let limit = i64::from(p.limit.unwrap_or(50).clamp(1, 500));
    let rows = sqlx::query(
        "SELECT id, connection, kind, environment, class, state, decision, requester, reason, statement, created_at_ms, updated_at_ms,
                approved_at_ms, dispatched_at_ms, started_at_ms, finished_at_ms, agent, error_code, error_message,
                steps, current_step, policy_rule_name, break_glass_id, reviewed_by, reviewed_at_ms
         FROM requests WHERE (? OR requester_user_id = ?) AND (? IS NULL OR state = ?)
           AND (NOT ? OR (break_glass_id IS NOT NULL AND reviewed_at_ms IS NULL))
         ORDER BY created_at_ms DESC LIMIT ?",
    )
    .bind(p.all)
    .bind(&who.user_id)
    .bind(p.state.map(|s| s.as_str()))
    .bind(p.state.map(|s| s.as_str()))
    .bind(p.unreviewed)
    .bind(limit)
    .fetch_all(state.store.reader())
    .await?;
    let views = rows
        .iter()
        .map(lifecycle::row_to_view)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(views))
}

pub(super) async fn cancel(
    State(state): State<AppState>,
    User(who): User,
    Ctx(ctx): Ctx,
    Path(id): Path<String>,
) -> Result<Json<RequestView>, ApiError> {
    let id = path_uuid(&id)?;
    lifecycle::cancel(&state, &who, &ctx, id).await?;
    view_json(&state, id).await
}

pub(super) async fn approve(
    State(state): State<AppState>,
    User(who): User,
    Ctx(ctx): Ctx,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<DecideRequest>,
) -> Result<Json<RequestView>, ApiError> {
    decide(state, who, ctx, id, Verdict::Approve, body).await
}

pub(super) async fn reject(
    State(state): State<AppState>,
    User(who): User,
    Ctx(ctx): Ctx,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<DecideRequest>,
) -> Result<Json<RequestView>, ApiError> {
    decide(state, who, ctx, id, Verdict::Reject, body).await
}

async fn decide(
    state: AppState,
    who: UserPrincipal,
    ctx: crate::audit::Context,
    id: String,
    verdict: Verdict,
    body: DecideRequest,
) -> Result<Json<RequestView>, ApiError> {
    let id = path_uuid(&id)?;
    approvals::decide(&state, &who, &ctx, id, verdict, body.comment).await?;
    view_json(&state, id).await
}

pub(super) async fn policy_check(
    State(state): State<AppState>,
    User(who): User,
    ApiJson(body): ApiJson<PolicyCheck>,
) -> Result<Json<PolicyVerdict>, ApiError> {
    Ok(Json(approvals::check(&state, &who, &body)?))
}

pub(super) async fn open_break_glass(
    State(state): State<AppState>,
    User(who): User,
    Ctx(ctx): Ctx,
    ApiJson(body): ApiJson<crate::break_glass::OpenGrant>,
) -> Result<(StatusCode, Json<crate::break_glass::Grant>), ApiError> {
    let grant = crate::break_glass::open(&state, &ctx, &who, body).await?;
    Ok((StatusCode::CREATED, Json(grant)))
}

pub(super) async fn review(
    State(state): State<AppState>,
    User(who): User,
    Ctx(ctx): Ctx,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<DecideRequest>,
) -> Result<Json<RequestView>, ApiError> {
    let id = path_uuid(&id)?;
    crate::break_glass::review(&state, &ctx, &who, id, body.comment).await?;
    view_json(&state, id).await
}

/// The request's view after an action on it.
async fn view_json(state: &AppState, id: Uuid) -> Result<Json<RequestView>, ApiError> {
    Ok(Json(
        lifecycle::load_view(state, id)
            .await?
            .ok_or(ApiError::NotFound)?
            .0,
    ))
}
