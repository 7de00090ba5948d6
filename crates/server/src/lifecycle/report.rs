//! An agent's report of a job: the execution's outcome recorded with its request, or an
//! explain or preview job's result; only from the agent holding the job's lease, once (EX-3).

use std::sync::Arc;

use portcullis_core::RequestState;
use portcullis_proto::agent::JobReport;
use portcullis_proto::api::ExecError;
use serde_json::json;
use sqlx::Row;
use uuid::Uuid;

use super::parse_uuid;
use crate::AppState;
use crate::audit::{Action, AuditTx, Context, Event, Member, Outcome};
use crate::auth::AgentPrincipal;
use crate::clock;
use crate::dispatch::Finished;
use crate::error::ApiError;
use crate::to_the_end::to_the_end;
use crate::views::{ViewValues, view_columns, view_of};
use rusqlite::OptionalExtension;

/// Ends the request of an execution job leased to the reporting agent (7 parameters); no
/// row changes when the job is not such a job.
const FINISH_REQUEST: &str = concat!(
    "UPDATE requests SET state = ?, finished_at_ms = ?, updated_at_ms = ?, error_code = ?, error_message = ? ",
    "WHERE id = (SELECT request_id FROM jobs WHERE id = ? AND agent = ? AND state = 'leased' AND purpose = 'execute') ",
    "AND state IN ('dispatched', 'running')",
);
/// Marks that job done and returns its request's id; no row when it is not such a job.
const FINISH_JOB: &str = "UPDATE jobs SET state = 'done' WHERE id = ? AND agent = ? AND state = 'leased' AND purpose = 'execute' RETURNING request_id";
/// The finished request as its view, for the waiters.
const READ_VIEW: &str = concat!("SELECT ", view_columns!(), " FROM requests WHERE id = ?");

/// Records an agent's report. Only the agent holding the lease can report, once. When
/// `streamed`, the result's rows already went to the requester and only its counts are kept.
pub async fn report_job(
    state: &AppState,
    agent: &AgentPrincipal,
    ctx: &Context,
    job_id: Uuid,
    report: JobReport,
    streamed: bool,
) -> Result<(), ApiError> {
    // Whatever this report finds, the store decides about this agent's job from now on.
    state.dispatch.forget_handed(job_id, &agent.name);
    let now = clock::now_ms();
    let (next, error) = match &report {
        JobReport::Succeeded { .. } => (RequestState::Succeeded, None),
        JobReport::Failed { error } => (failed_state(error), Some(sanitize(error.clone()))),
        JobReport::Refused { error } => (RequestState::Failed, Some(sanitize(error.clone()))),
    };
    let details = match (&report, &error) {
        (JobReport::Succeeded { result: r }, _) => {
            json!({ "state": next.as_str(), "rows": r.row_count, "truncated": r.truncated, "affected_rows": r.affected_rows })
        }
        (_, Some(e)) => json!({ "state": next.as_str(), "error": e.code }),
        _ => json!({ "state": next.as_str() }),
    };
    let outcome = if next == RequestState::Succeeded {
        Outcome::Success
    } else {
        Outcome::Failure
    };
    let job = job_id.to_string();
    let holder = agent.name.clone();
    let (code, message) = match &error {
        Some(e) => (Some(e.code.clone()), Some(e.message.clone())),
        None => (None, None),
    };
    let event_ctx = ctx.clone();
    // The common case in one transaction on the writer thread: an execution job leased to
    // this agent ends its request and is marked done, and the request is read back as its
    // view for the waiters. Anything else changes nothing and is sorted out below.
    let finish = move |m: &mut Member<'_>| -> Result<Option<(Uuid, Option<ViewValues>)>, ApiError> {
        let conn = m.conn();
        conn.prepare_cached(FINISH_REQUEST)?
            .execute(rusqlite::params![
                next.as_str(),
                now,
                now,
                code,
                message,
                job,
                holder,
            ])?;
        let finished: Option<String> = conn
            .prepare_cached(FINISH_JOB)?
            .query_row(rusqlite::params![job, holder], |row| row.get(0))
            .optional()?;
        let Some(request_id) = finished else {
            return Ok(None);
        };
        let view = conn
            .prepare_cached(READ_VIEW)?
            .query_row([&request_id], ViewValues::read)
            .optional()?;
        let request_id = parse_uuid(request_id)?;
        let event = Event {
            actor: format!("agent:{holder}"),
            action: Action::RequestFinished,
            target: format!("request:{request_id}"),
            outcome,
            details,
        };
        m.append_at(&event_ctx, event, now)?;
        Ok(Some((request_id, view)))
    };
    // The commit and the publication of the outcome run to their end even if this upload
    // is dropped meanwhile (its agent went away): the requester still gets what was recorded.
    let publishing = state.clone();
    let unsettled = to_the_end(async move {
        let Some((request_id, view)) = publishing.audit.transact(finish).await? else {
            return Ok(Some(report));
        };
        let result = match report {
            JobReport::Succeeded { result } => Some(Arc::new(result)),
            JobReport::Failed { .. } | JobReport::Refused { .. } => None,
        };
        // Parsed after the commit, off the writer. Handed to the waiters, who then need not
        // read it again; only a view without approval steps is whole as read here (load_view
        // adds the decisions), and one that does not parse is left to them to read and
        // report.
        let view = view
            .and_then(|v| view_of(&v).ok())
            .filter(|v| v.id == request_id && v.steps.is_empty())
            .map(Box::new);
        publishing.dispatch.complete(
            request_id,
            Finished {
                state: next,
                result: result.filter(|_| !streamed),
                error,
                view,
            },
            now,
        );
        Ok::<_, ApiError>(None)
    })
    .await?;
    if let Some(report) = unsettled {
        let tx = AuditTx::begin(&state.store, &state.audit).await?;
        return report_other(tx, agent, ctx, job_id, report, now).await;
    }
    Ok(())
}

/// A report that is not for an execution job leased to its agent: an explain or preview
/// job's result, or a refusal (unknown job, another agent's job, a lease that ended).
async fn report_other(
    mut tx: AuditTx,
    agent: &AgentPrincipal,
    ctx: &Context,
    job_id: Uuid,
    report: JobReport,
    now: i64,
) -> Result<(), ApiError> {
    let job = sqlx::query("SELECT request_id, agent, state, purpose FROM jobs WHERE id = ?")
        .bind(job_id.to_string())
        .fetch_optional(tx.conn().await?)
        .await?
        .ok_or(ApiError::NotFound)?;
    let request_id = parse_uuid(job.try_get(0)?)?;
    let holder: Option<String> = job.try_get(1)?;
    let job_state: String = job.try_get(2)?;
    if holder.as_deref() != Some(agent.name.as_str()) {
        return Err(ApiError::Forbidden {
            reason: "job_not_leased_to_agent",
        });
    }
    if job_state != "leased" {
        return Err(ApiError::InvalidState {
            detail: "the job is no longer leased (its lease expired or it was already reported)"
                .into(),
        });
    }
    let purpose: String = job.try_get(3)?;
    match purpose.as_str() {
        "explain" => {
            crate::explain::record_explain(tx, agent, ctx, job_id, request_id, report, now).await
        }
        "preview" => {
            crate::explain::record_preview(tx, agent, ctx, job_id, request_id, report, now).await
        }
        other => Err(ApiError::Internal(anyhow::anyhow!(
            "job {job_id} of purpose {other} is leased to {} but was not finished",
            agent.name
        ))),
    }
}

/// The state a failure reported by an agent ends in. An agent that lost its store in the
/// middle of a write reports `outcome_unknown`: the change may or may not have been applied,
/// and the request must say so rather than `failed` (EX-3).
pub(crate) fn failed_state(error: &ExecError) -> RequestState {
    if error.code == RequestState::OutcomeUnknown.as_str() {
        RequestState::OutcomeUnknown
    } else {
        RequestState::Failed
    }
}

/// Errors from agents are shown to requesters: bound their size and strip control characters.
pub(crate) fn sanitize(e: ExecError) -> ExecError {
    let clean = |s: String, n: usize| {
        s.chars()
            .filter(|c| !c.is_control() || *c == '\n')
            .take(n)
            .collect::<String>()
    };
    ExecError {
        code: clean(e.code, 64),
        message: clean(e.message, 2_000),
    }
}
