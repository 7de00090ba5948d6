//! Requests as their API views: one request with its approval decisions, or list rows.

use portcullis_proto::api::{ApprovalView, ExecError, RequestView};
use sqlx::Row;
use uuid::Uuid;

use crate::AppState;
use crate::clock;
use crate::error::ApiError;
use crate::lifecycle::{parse, parse_uuid};

/// The columns of `requests` a [`RequestView`] is read from, in the order [`row_to_view`]
/// reads them (one request; list queries select fewer).
macro_rules! view_columns {
    () => {
        "id, connection, kind, environment, class, state, decision, requester, reason, statement, created_at_ms, updated_at_ms, \
         approved_at_ms, dispatched_at_ms, started_at_ms, finished_at_ms, agent, error_code, error_message, explain, requester_user_id, \
         steps, current_step, policy_rule_name, break_glass_id, reviewed_by, reviewed_at_ms, preview"
    };
}
pub(crate) use view_columns;

/// Loads a request as its view. `None` when it does not exist.
pub async fn load_view(
    state: &AppState,
    id: Uuid,
) -> Result<Option<(RequestView, String)>, ApiError> {
    let row = sqlx::query(concat!(
        "SELECT ",
        view_columns!(),
        " FROM requests WHERE id = ?"
    ))
    .bind(id.to_string())
    .fetch_optional(state.store.reader())
    .await?;
    let Some(r) = row else { return Ok(None) };
    let mut view = row_to_view(&r)?;
    if view.steps.is_empty() {
        // Nothing to approve, so no decisions: the auto-approved path skips the query.
        return Ok(Some((view, r.try_get("requester_user_id")?)));
    }
    let approvals = sqlx::query(
        "SELECT approver, role, step, decision, comment, at_ms FROM approvals WHERE request_id = ? ORDER BY at_ms, approver",
    )
    .bind(id.to_string())
    .fetch_all(state.store.reader())
    .await?;
    view.approvals = approvals
        .iter()
        .map(|a| {
            Ok(ApprovalView {
                approver: a.try_get(0)?,
                role: parse(a.try_get::<String, _>(1)?)?,
                step: u32::try_from(a.try_get::<i64, _>(2)?).unwrap_or(0),
                decision: a.try_get(3)?,
                comment: a.try_get(4)?,
                at: clock::format_ms(a.try_get(5)?),
            })
        })
        .collect::<Result<_, ApiError>>()?;
    Ok(Some((view, r.try_get("requester_user_id")?)))
}

pub fn row_to_view(r: &sqlx::sqlite::SqliteRow) -> Result<RequestView, ApiError> {
    let ts = |i: usize| -> Result<Option<String>, ApiError> {
        Ok(r.try_get::<Option<i64>, _>(i)?.map(clock::format_ms))
    };
    let error_code: Option<String> = r.try_get(17)?;
    let error_message: Option<String> = r.try_get(18)?;
    // List queries leave the plan out; a missing column means none.
    let explain: Option<String> = r.try_get("explain").ok().flatten();
    let steps: Option<String> = r.try_get("steps").ok().flatten();
    let steps = steps
        .map(|s| serde_json::from_str(&s))
        .transpose()
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("corrupt steps in the state store: {e}")))?
        .unwrap_or_default();
    Ok(RequestView {
        id: parse_uuid(r.try_get(0)?)?,
        connection: parse(r.try_get::<String, _>(1)?)?,
        kind: parse(r.try_get::<String, _>(2)?)?,
        environment: parse(r.try_get::<String, _>(3)?)?,
        class: parse(r.try_get::<String, _>(4)?)?,
        state: parse(r.try_get::<String, _>(5)?)?,
        decision: parse(r.try_get::<String, _>(6)?)?,
        requester: r.try_get(7)?,
        reason: r.try_get(8)?,
        statement: r.try_get(9)?,
        created_at: clock::format_ms(r.try_get(10)?),
        updated_at: clock::format_ms(r.try_get(11)?),
        approved_at: ts(12)?,
        dispatched_at: ts(13)?,
        started_at: ts(14)?,
        finished_at: ts(15)?,
        agent: r.try_get(16)?,
        error: error_code.map(|code| ExecError {
            code,
            message: error_message.unwrap_or_default(),
        }),
        explain: explain.and_then(|e| serde_json::from_str(&e).ok()),
        steps,
        current_step: r
            .try_get::<i64, _>("current_step")
            .ok()
            .and_then(|s| u32::try_from(s).ok())
            .unwrap_or(0),
        approvals: Vec::new(),
        policy_rule: r.try_get("policy_rule_name").ok().flatten(),
        preview: r
            .try_get::<Option<String>, _>("preview")
            .ok()
            .flatten()
            .and_then(|p| serde_json::from_str(&p).ok()),
        break_glass: r.try_get("break_glass_id").ok().flatten(),
        reviewed_by: r.try_get("reviewed_by").ok().flatten(),
        reviewed_at: r
            .try_get::<Option<i64>, _>("reviewed_at_ms")
            .ok()
            .flatten()
            .map(clock::format_ms),
    })
}
