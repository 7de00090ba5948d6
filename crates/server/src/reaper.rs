//! The reaper: settles what nobody will settle otherwise. Approved requests no agent claimed
//! in time and pending requests nobody approved expire; jobs whose agent stopped
//! heart-beating are lost: a lost read fails, a lost write or DDL becomes `outcome_unknown`
//! and is never re-run (EX-3). Runs once a second; it is not on the dispatch path.

use std::time::Duration;

use portcullis_core::{OperationClass, RequestState};
use portcullis_proto::api::ExecError;
use serde_json::json;
use sqlx::Row;

use crate::AppState;
use crate::audit::{Action, AuditTx, Context, Event, Outcome};
use crate::clock;
use crate::dispatch::Finished;
use crate::error::ApiError;
use crate::lifecycle::{end_undispatched, parse, parse_uuid};

/// Expires what waited too long and settles jobs whose agent stopped heart-beating: a lost
/// read fails, a lost write or DDL becomes `outcome_unknown` and is never re-run (EX-3).
pub async fn reap(state: &AppState, now: i64) -> Result<(), ApiError> {
    let ex = &state.config.execution;
    let lost = sqlx::query(
        "SELECT j.id, j.request_id, r.class, j.agent FROM jobs j JOIN requests r ON r.id = j.request_id WHERE j.state = 'leased' AND j.lease_until_ms < ? AND j.purpose = 'execute'",
    )
    .bind(now)
    .fetch_all(state.store.reader())
    .await?;
    let ctx = Context::system("reaper");
    for row in lost {
        let job_id: String = row.try_get(0)?;
        let request_id = parse_uuid(row.try_get(1)?)?;
        let class: OperationClass = parse(row.try_get::<String, _>(2)?)?;
        let agent: Option<String> = row.try_get(3)?;
        let (to, code) = if class == OperationClass::Read {
            (RequestState::Failed, "agent_lost")
        } else {
            (RequestState::OutcomeUnknown, "outcome_unknown")
        };
        let mut tx = AuditTx::begin(&state.store, &state.audit).await?;
        let done = sqlx::query("UPDATE jobs SET state = 'done' WHERE id = ? AND state = 'leased' AND lease_until_ms < ?")
            .bind(&job_id)
            .bind(now)
            .execute(tx.conn().await?)
            .await?;
        if done.rows_affected() == 0 {
            continue;
        }
        let message = "the agent stopped responding before reporting an outcome";
        sqlx::query("UPDATE requests SET state = ?, error_code = ?, error_message = ?, finished_at_ms = ?, updated_at_ms = ? WHERE id = ? AND state IN ('dispatched', 'running')")
            .bind(to.as_str())
            .bind(code)
            .bind(message)
            .bind(now)
            .bind(now)
            .bind(request_id.to_string())
            .execute(tx.conn().await?)
            .await?;
        let event = Event {
            actor: "system".into(),
            action: Action::RequestLost,
            target: format!("request:{request_id}"),
            outcome: Outcome::Failure,
            details: json!({ "state": to.as_str(), "agent": agent, "job": job_id }),
        };
        tx.append_at(&ctx, event, now).await?;
        tx.commit().await?;
        let error = ExecError {
            code: code.into(),
            message: message.into(),
        };
        state.dispatch.complete(
            request_id,
            Finished {
                state: to,
                result: None,
                error: Some(error),
                view: None,
            },
            now,
        );
    }
    // A lost explain or preview only loses the plan or the count; the request waits for its
    // approvers as before.
    // Look with a reader first: the writer is not taken every second for nothing.
    let lost_explains: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM jobs WHERE state = 'leased' AND lease_until_ms < ? AND purpose IN ('explain', 'preview') LIMIT 1",
    )
    .bind(now)
    .fetch_optional(state.store.reader())
    .await?;
    if lost_explains.is_some() {
        let mut tx = AuditTx::begin(&state.store, &state.audit).await?;
        sqlx::query("UPDATE jobs SET state = 'done' WHERE state = 'leased' AND lease_until_ms < ? AND purpose IN ('explain', 'preview')")
            .bind(now)
            .execute(tx.conn().await?)
            .await?;
        tx.commit().await?;
    }
    let stale = sqlx::query(
        "SELECT id, state FROM requests WHERE (state = 'approved' AND approved_at_ms < ?) OR (state = 'pending_approval' AND created_at_ms < ?)",
    )
    .bind(now - (ex.dispatch_timeout_secs as i64) * 1000)
    .bind(now - (ex.approval_timeout_secs as i64) * 1000)
    .fetch_all(state.store.reader())
    .await?;
    for row in stale {
        let id = parse_uuid(row.try_get(0)?)?;
        let from: String = row.try_get(1)?;
        let mut tx = AuditTx::begin(&state.store, &state.audit).await?;
        let still: Option<String> = sqlx::query_scalar("SELECT state FROM requests WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(tx.conn().await?)
            .await?;
        if still.as_deref() != Some(from.as_str()) {
            continue;
        }
        end_undispatched(&mut tx, id, RequestState::Expired, now).await?;
        let event = Event {
            actor: "system".into(),
            action: Action::RequestExpired,
            target: format!("request:{id}"),
            outcome: Outcome::Failure,
            details: json!({ "from": from }),
        };
        tx.append_at(&ctx, event, now).await?;
        tx.commit().await?;
        state.dispatch.complete(
            id,
            Finished {
                state: RequestState::Expired,
                result: None,
                error: None,
                view: None,
            },
            now,
        );
    }
    state
        .dispatch
        .prune(now, (ex.result_retention_secs as i64) * 1000);
    Ok(())
}

pub async fn run_reaper(state: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(e) = reap(&state, clock::now_ms()).await {
            tracing::error!(error = %e, "reaper pass failed");
        }
        n += 1;
        if n.is_multiple_of(5)
            && let Err(e) = state.auth.flush_last_used(&state.store).await
        {
            tracing::warn!(error = %e, "flushing token last-used times failed");
        }
    }
}
