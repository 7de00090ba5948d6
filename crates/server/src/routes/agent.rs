//! `/api/v1/agent/*`: the agent protocol. Agents claim by long-poll, heartbeat, and report.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use portcullis_proto::agent::{ClaimRequest, JobReport};

use super::{Agent, Ctx, path_uuid};
use crate::AppState;
use crate::error::{ApiError, ApiJson};
use crate::lifecycle;

/// 200 with a job, or 204 when none arrived within the wait.
pub(super) async fn claim(
    State(state): State<AppState>,
    Agent(agent): Agent,
    Ctx(ctx): Ctx,
    ApiJson(body): ApiJson<ClaimRequest>,
) -> Result<Response, ApiError> {
    match lifecycle::claim_job(&state, &agent, &ctx, body).await? {
        Some(job) => Ok(Json(job).into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

pub(super) async fn heartbeat(
    State(state): State<AppState>,
    Agent(agent): Agent,
    Ctx(ctx): Ctx,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    lifecycle::heartbeat(&state, &agent, &ctx, path_uuid(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The result of a job, streamed as NDJSON (see [`crate::results`]). Not under the JSON
/// body limit: the upload is checked line by line under its own limits.
pub(super) async fn upload_result(
    State(state): State<AppState>,
    Agent(agent): Agent,
    Ctx(ctx): Ctx,
    Path(id): Path<String>,
    body: axum::body::Body,
) -> Result<StatusCode, ApiError> {
    crate::results::upload(&state, &agent, &ctx, path_uuid(&id)?, body).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn report(
    State(state): State<AppState>,
    Agent(agent): Agent,
    Ctx(ctx): Ctx,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<JobReport>,
) -> Result<StatusCode, ApiError> {
    lifecycle::report_job(&state, &agent, &ctx, path_uuid(&id)?, body, false).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The signing-key rotation chain (IR-4). The agent trusts a link only when a key it already
/// trusts signed it; this route offers, it does not vouch.
pub(super) async fn key_chain(
    State(state): State<AppState>,
) -> Result<Json<Vec<portcullis_proto::token::KeyAnnouncement>>, ApiError> {
    Ok(Json(crate::key_rotation::chain(&state.store).await?))
}
