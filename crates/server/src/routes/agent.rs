//! `/api/v1/agent/*`: the agent protocol. Agents claim by long-poll, heartbeat, and report.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use portcullis_proto::agent::{ClaimRequest, JobAssignment, JobReport};
use portcullis_proto::token::KeyAnnouncement;

use super::{Agent, Ctx, Segment, path_uuid};
use crate::AppState;
use crate::error::{ApiError, ApiJson};
use crate::lifecycle;

/// Waits up to `wait_ms` (at most 30 000) for a job on one of the agent's connections, and
/// leases it with a signed execution token.
#[utoipa::path(
    post,
    path = "/api/v1/agent/claim",
    tag = "agent protocol",
    request_body(
        content = ClaimRequest,
        example = json!({
            "connections": [{"name": "demo", "kind": "sqlite", "environment": "development"}],
            "wait_ms": 1000,
        }),
    ),
    responses(
        (
            status = 200,
            description = "A leased job",
            body = JobAssignment,
            links(
                ("heartbeat" = (operation_id = "heartbeat", parameters(("id" = "$response.body#/job_id")))),
                ("report" = (operation_id = "report", parameters(("id" = "$response.body#/job_id")))),
                ("result" = (operation_id = "upload_result", parameters(("id" = "$response.body#/job_id"))))
            ),
        ),
        (status = 204, description = "No job arrived within the wait"),
        (status = 400, description = "The body is malformed, or none of the connections is declared on the server with the same kind and environment"),
        (status = 413, description = "The body exceeds the size limit"),
    ),
)]
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

/// Extends the lease of a job the agent is executing.
#[utoipa::path(
    post,
    path = "/api/v1/agent/jobs/{id}/heartbeat",
    tag = "agent protocol",
    params(("id" = String, Path, description = "The job's id")),
    responses(
        (status = 204, description = "The lease is extended"),
        (status = 404, description = "The id is not a job id"),
        (status = 409, description = "The agent holds no lease on this job"),
    ),
)]
pub(super) async fn heartbeat(
    State(state): State<AppState>,
    Agent(agent): Agent,
    Ctx(ctx): Ctx,
    Segment(id): Segment,
) -> Result<StatusCode, ApiError> {
    lifecycle::heartbeat(&state, &agent, &ctx, path_uuid(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The result of a job, streamed as NDJSON (see [`crate::results`]). Not under the JSON
/// body limit: the upload is checked line by line under its own limits.
#[utoipa::path(
    post,
    path = "/api/v1/agent/jobs/{id}/result",
    tag = "agent protocol",
    params(("id" = String, Path, description = "The job's id")),
    request_body(
        description = "NDJSON: an optional `StreamHeader`, rows as JSON arrays, then one `AgentTrailer`",
        content(("application/x-ndjson")),
    ),
    responses(
        (status = 204, description = "The result is checked and recorded (or relayed to its reader)"),
        (status = 400, description = "The stream breaks the result format (header, row widths, row cap, trailer)"),
        (status = 403, description = "The job is leased to another agent (`job_not_leased_to_agent`), or the guard refused"),
        (status = 404, description = "No such job"),
        (status = 409, description = "The job is no longer leased, or nobody started reading a streamed result in time"),
        (status = 413, description = "A collected result exceeds its limit"),
    ),
)]
pub(super) async fn upload_result(
    State(state): State<AppState>,
    Agent(agent): Agent,
    Ctx(ctx): Ctx,
    Segment(id): Segment,
    body: axum::body::Body,
) -> Result<StatusCode, ApiError> {
    crate::results::upload(&state, &agent, &ctx, path_uuid(&id)?, body).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The outcome of a job, when its result was not uploaded.
#[utoipa::path(
    post,
    path = "/api/v1/agent/jobs/{id}/report",
    tag = "agent protocol",
    params(("id" = String, Path, description = "The job's id")),
    request_body = JobReport,
    responses(
        (status = 204, description = "The outcome is recorded"),
        (status = 400, description = "The body is malformed"),
        (status = 403, description = "The job is leased to another agent (`job_not_leased_to_agent`), or the guard refused"),
        (status = 404, description = "No such job"),
        (status = 409, description = "The job is no longer leased"),
        (status = 413, description = "The body exceeds the size limit"),
    ),
)]
pub(super) async fn report(
    State(state): State<AppState>,
    Agent(agent): Agent,
    Ctx(ctx): Ctx,
    Segment(id): Segment,
    ApiJson(body): ApiJson<JobReport>,
) -> Result<StatusCode, ApiError> {
    lifecycle::report_job(&state, &agent, &ctx, path_uuid(&id)?, body, false).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The signing-key rotation chain (IR-4). The agent trusts a link only when a key it already
/// trusts signed it; this route offers, it does not vouch.
#[utoipa::path(
    get,
    path = "/api/v1/agent/keys",
    tag = "agent protocol",
    responses((status = 200, description = "The signed announcements of every key rotation, oldest first", body = Vec<KeyAnnouncement>)),
)]
pub(super) async fn key_chain(
    State(state): State<AppState>,
) -> Result<Json<Vec<KeyAnnouncement>>, ApiError> {
    Ok(Json(crate::key_rotation::chain(&state.store).await?))
}
