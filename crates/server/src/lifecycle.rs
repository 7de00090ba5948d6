//! The request lifecycle: create → decide → queue → claim (sign) → report, plus the reaper
//! that expires and reclaims. Every state change and its audit events commit together.

use std::collections::HashMap;
use std::net::SocketAddr;

use portcullis_core::policy::{Decision, Facts, Source};
use portcullis_core::{ConnectionName, RequestState, authorize};
use portcullis_proto::api::CreateRequest;
use portcullis_proto::token::statement_sha256;
use serde_json::json;
use sqlx::Row;
use uuid::Uuid;

use crate::AppState;
use crate::audit::{Action, AuditTx, Context, Event, Member, Outcome};
use crate::auth::{AgentPrincipal, UserPrincipal};
use crate::clock;
use crate::dispatch::Finished;
use crate::error::ApiError;
use crate::to_the_end::to_the_end;

mod claim;
mod report;
pub use crate::views::{load_view, row_to_view};
pub use claim::claim_job;
pub use report::report_job;
pub(crate) use report::{failed_state, sanitize};

const MAX_REASON: usize = 1_000;
const MAX_STATEMENT: usize = 64 * 1024;
pub const CLAIM_WAIT_MAX_MS: u64 = 30_000;

/// Which agents are connected and what they serve, as last seen by a claim.
#[derive(Debug, Default)]
pub struct Presence {
    pub agents: HashMap<String, (i64, Vec<ConnectionName>)>,
}

/// Appends one event in its own transaction: for denials and other events with no state change.
pub async fn audit_only(state: &AppState, ctx: &Context, event: Event) -> Result<(), ApiError> {
    let mut tx = AuditTx::begin(&state.store, &state.audit).await?;
    tx.append(ctx, event).await?;
    tx.commit().await?;
    Ok(())
}

pub async fn record_start(state: &AppState, addr: SocketAddr) -> anyhow::Result<()> {
    let event = Event {
        actor: "system".into(),
        action: Action::ServerStarted,
        target: addr.to_string(),
        outcome: Outcome::Success,
        details: json!({ "version": env!("CARGO_PKG_VERSION"), "key_id": state.keys.current().signer.key_id().to_hex() }),
    };
    audit_only(state, &Context::system("start"), event)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

async fn deny(
    state: &AppState,
    ctx: &Context,
    who: &UserPrincipal,
    action: Action,
    target: &str,
    details: serde_json::Value,
    err: ApiError,
) -> ApiError {
    let event = Event {
        actor: who.display(),
        action,
        target: target.to_owned(),
        outcome: Outcome::Denied,
        details,
    };
    match audit_only(state, ctx, event).await {
        Ok(()) => err,
        Err(audit_err) => audit_err,
    }
}

/// The INSERT of a new request (24 parameters).
const INSERT_REQUEST: &str = "INSERT INTO requests (id, requester, requester_user_id, token_id, connection, kind, environment, class, statement, statement_sha256, reason, state, decision, policy_rule, approval_sha256, created_at_ms, updated_at_ms, approved_at_ms, result_mode, steps, policy_rule_name, break_glass_id, agent, dispatched_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

/// The INSERT of an auto-approved request's execution job, queued or already leased
/// (9 parameters).
const INSERT_EXECUTION_JOB: &str = "INSERT INTO jobs (id, request_id, connection, state, agent, nonce, leased_at_ms, lease_until_ms, created_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)";

/// The INSERT of a job that explains or previews a request awaiting approval (6 parameters).
const INSERT_CONTEXT_JOB: &str = "INSERT INTO jobs (id, request_id, purpose, statement, connection, state, created_at_ms) VALUES (?, ?, ?, ?, ?, 'queued', ?)";

/// Queues the one execution job of an approved request.
pub(crate) async fn queue_execution(
    tx: &mut AuditTx,
    id: Uuid,
    connection: &ConnectionName,
    now: i64,
) -> Result<Uuid, ApiError> {
    let job_id = new_id();
    sqlx::query("INSERT INTO jobs (id, request_id, connection, state, created_at_ms) VALUES (?, ?, ?, 'queued', ?)")
        .bind(job_id.to_string())
        .bind(id.to_string())
        .bind(connection.as_str())
        .bind(now)
        .execute(tx.conn().await?)
        .await?;
    Ok(job_id)
}

/// A new request's or job's id: time-ordered (see [`create_request`]).
pub(crate) fn new_id() -> Uuid {
    Uuid::now_v7()
}

/// A request just recorded.
#[derive(Debug, Clone, Copy)]
pub struct Created {
    pub id: Uuid,
    /// Approved at creation, its execution job leased or queued: it ends by a path that
    /// publishes its outcome (`Dispatch::complete`), unless it outlives the outcome's
    /// retention.
    pub executing: bool,
}

/// Validates, classifies, authorizes and decides a new request, then records it in one
/// transaction; when auto-approved, with its job, leased to an agent already waiting for it
/// (signed and pushed to its claim after the commit) or else queued.
pub async fn create_request(
    state: &AppState,
    who: &UserPrincipal,
    ctx: &Context,
    body: CreateRequest,
) -> Result<Created, ApiError> {
    // EX-3: a draining server records and queues nothing new; the caller may try again.
    state.refuse_when_draining()?;
    let reason = body.reason.trim();
    if reason.is_empty()
        || reason.chars().count() > MAX_REASON
        || reason.chars().any(|c| c.is_control())
    {
        return Err(ApiError::bad_request(format!(
            "reason must be 1-{MAX_REASON} printable characters"
        )));
    }
    let target = body.connection.to_string();
    if body.statement.len() > MAX_STATEMENT {
        // Audited like every other refusal; the statement itself is too large to record,
        // its hash identifies it.
        let details = json!({
            "reason": "statement_too_long",
            "bytes": body.statement.len(),
            "statement_sha256": hex::encode(statement_sha256(&body.statement)),
        });
        let err = ApiError::StatementDenied {
            reason: "statement_too_long",
            detail: format!("statements are limited to {MAX_STATEMENT} bytes"),
        };
        return Err(deny(
            state,
            ctx,
            who,
            Action::RequestDenied,
            &target,
            details,
            err,
        )
        .await);
    }
    let Some(decl) = state.config.connection(&body.connection).cloned() else {
        let details = json!({ "reason": "unknown_connection" });
        return Err(deny(
            state,
            ctx,
            who,
            Action::RequestDenied,
            &target,
            details,
            ApiError::UnknownConnection,
        )
        .await);
    };
    let statement_hash = statement_sha256(&body.statement);
    let operation = match portcullis_core::analyse(decl.kind, &body.statement) {
        Ok(op) => op,
        Err(e) => {
            let (reason, detail) = (e.code(), e.to_string());
            let details =
                json!({ "reason": reason, "statement_sha256": hex::encode(statement_hash) });
            return Err(deny(
                state,
                ctx,
                who,
                Action::RequestDenied,
                &target,
                details,
                ApiError::StatementDenied { reason, detail },
            )
            .await);
        }
    };
    let class = operation.class;
    // AZ-4: a live break-glass grant of this session's person.
    let glass = crate::break_glass::active(state, who, clock::now_ms()).await?;
    if let Err(denied) = authorize(
        who.role,
        who.environments.as_deref(),
        decl.kind,
        decl.environment,
        class,
    ) && !(glass.is_some() && class == portcullis_core::OperationClass::Admin)
    {
        let details = json!({ "reason": denied.to_string(), "class": class.as_str() });
        let err = ApiError::OperationDenied {
            detail: denied.to_string(),
        };
        return Err(deny(state, ctx, who, Action::AccessDenied, &target, details, err).await);
    }
    let facts = Facts {
        connection: &decl.name,
        environment: decl.environment,
        class,
        role: who.role,
        tables: &operation.tables,
    };
    let mut evaluation = state.policy.evaluate(&facts);
    if glass.is_some() {
        crate::break_glass::bypass(&mut evaluation);
    }
    let (decision, source) = (evaluation.decision, evaluation.source);
    let rule = match source {
        Source::Rule(i) => Some(i as i64),
        Source::Default => None,
    };
    let rule_name = crate::approvals::rule_label(&state.policy, source);
    let steps = (!evaluation.steps.is_empty())
        .then(|| serde_json::to_string(&evaluation.steps))
        .transpose()
        .map_err(|e| ApiError::Internal(e.into()))?;
    if decision == Decision::Deny {
        let details = json!({ "reason": "policy", "class": class.as_str(), "rule": rule_name, "tables": operation.tables });
        return Err(deny(
            state,
            ctx,
            who,
            Action::RequestDenied,
            &target,
            details,
            ApiError::PolicyDenied,
        )
        .await);
    }

    // Requests and jobs take time-ordered ids (UUIDv7: a millisecond timestamp, then 74
    // random bits): each new id lands at the newest end of its table's indexes instead of
    // at a random page, so the transactions of one commit group share their index pages and
    // a large table's inserts stay in the pages already cached. An id is a name, never a
    // credential: who may see or act on a request is checked on every call.
    let id = new_id();
    let now = clock::now_ms();
    let auto = decision == Decision::AutoApprove;
    let approval = match &glass {
        Some(grant) => Some(crate::break_glass::approval_hash(
            id,
            grant,
            &statement_hash,
        )),
        None => auto.then(|| crate::approvals::auto_approval_hash(id, source, &statement_hash)),
    };
    let initial = if auto {
        RequestState::Approved
    } else {
        RequestState::PendingApproval
    };
    // An auto-approved execution goes straight to an agent already waiting in its claim for
    // this connection, in this same commit: the request is inserted dispatched and its job
    // leased. A failure below drops the hand-off, which frees the agent, and the request
    // fails as a whole.
    let handed = auto
        .then(|| state.dispatch.take_idle(&decl.name))
        .flatten()
        .map(|idle| crate::lease::HandOff::new(state, idle, now));
    let job_id = auto.then(new_id);
    let recorded_state = match &handed {
        Some(_) => RequestState::Dispatched,
        None => initial,
    };
    let request_target = format!("request:{id}");
    // The audit events, in chain order, each with the context it happened in.
    let mut events = vec![(
        ctx.clone(),
        Event {
            actor: who.display(),
            action: Action::RequestCreated,
            target: request_target.clone(),
            outcome: Outcome::Success,
            details: json!({
                "connection": decl.name.as_str(),
                "environment": decl.environment.as_str(),
                "class": class.as_str(),
                "statement_sha256": hex::encode(statement_hash),
                "decision": decision.as_str(),
                "rule": rule_name,
                "tables": operation.tables,
                "steps": evaluation.steps,
            }),
        },
    )];
    if let Some(grant) = &glass {
        events.push((
            ctx.clone(),
            Event {
                actor: who.display(),
                action: Action::BreakGlassUsed,
                target: request_target.clone(),
                outcome: Outcome::Success,
                details: json!({ "grant": grant, "class": class.as_str(), "connection": decl.name.as_str() }),
            },
        ));
    }
    let explain = (!auto)
        .then(|| crate::explain::explain_statement(decl.kind, class, &body.statement))
        .flatten();
    let preview = !auto && crate::explain::preview_eligible(decl.kind, class, &body.statement);
    let explains = explain.is_some();
    let context_jobs: Vec<(&'static str, Option<String>)> = [
        explain.map(|text| ("explain", Some(text))),
        preview.then_some(("preview", None)),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut handed_job = None;
    if job_id.is_some() {
        events.push((
            ctx.clone(),
            Event {
                actor: if glass.is_some() {
                    "break-glass"
                } else {
                    "policy"
                }
                .into(),
                action: Action::RequestApproved,
                target: request_target,
                outcome: Outcome::Success,
                details: json!({ "auto": true, "rule": rule, "break_glass": glass }),
            },
        ));
    }
    if let (Some(job_id), Some(handed)) = (job_id, &handed) {
        let recorded = crate::lease::Recorded {
            connection: decl.name.clone(),
            environment: decl.environment,
            class,
            statement: body.statement.clone(),
            statement_sha256: statement_hash,
            approval_sha256: approval,
            state: initial,
        };
        let (job, dispatched) = handed.encode(state, job_id, id, recorded, now)?;
        // The dispatch is the agent's claim's doing, in its context.
        events.push((handed.idle.ctx.clone(), dispatched));
        handed_job = Some(job);
    }
    let row = NewRequest {
        id: id.to_string(),
        requester: who.display(),
        requester_user_id: who.user_id.clone(),
        token_id: who.token_id.clone(),
        connection: decl.name.to_string(),
        kind: decl.kind.as_str(),
        environment: decl.environment.as_str(),
        class: class.as_str(),
        statement: body.statement,
        statement_sha256: statement_hash,
        reason: reason.to_owned(),
        state: recorded_state.as_str(),
        decision: decision.as_str(),
        rule,
        approval_sha256: approval,
        now,
        approved_at_ms: auto.then_some(now),
        result_mode: if body.stream { "stream" } else { "buffered" },
        steps,
        rule_name,
        break_glass_id: glass,
        job: job_id.map(|job_id| NewJob {
            id: job_id.to_string(),
            lease: handed.as_ref().map(|h| JobLease {
                agent: h.idle.agent.clone(),
                nonce: h.nonce,
                until_ms: h.lease_until_ms,
            }),
        }),
        context_jobs,
    };
    // The request, its jobs and its events in one transaction on the writer thread.
    let draining = state.clone();
    let record = move |m: &mut Member<'_>| -> Result<(), ApiError> {
        // EX-3: checked again where it cannot race the drain. A drain that began since the
        // check above (while this request was decided, or queued for the writer) records
        // nothing of it and frees the agent it was to be handed to; one that begins after
        // this transaction counts its job, since the stop waits for the writer before it
        // counts ([`crate::Server::stop`]).
        draining.refuse_when_draining()?;
        row.insert(m.conn())?;
        for (ctx, event) in events {
            m.append_at(&ctx, event, now)?;
        }
        Ok(())
    };
    // The commit and what follows it run to their end even if this request is dropped
    // meanwhile (its client went away): a committed hand-off must reach its agent or go back
    // to the queue, and a queued job must be announced to the claims waiting for one.
    let state = state.clone();
    let collected = !body.stream;
    let announce = (auto || explains || preview).then(|| decl.name.clone());
    to_the_end(async move {
        state.audit.transact(record).await?;
        if let (Some(handed), Some(job)) = (handed, handed_job) {
            crate::lease::hand_over(&state, handed.idle, job, handed.lease_until_ms, collected)
                .await?;
        } else if let Some(connection) = announce {
            state.dispatch.job_queued(&connection);
        }
        Ok::<_, ApiError>(())
    })
    .await?;
    Ok(Created {
        id,
        executing: auto,
    })
}

/// A new request's row, with its execution job (auto-approved) or the jobs that explain or
/// preview it (awaiting approval), as the writer thread inserts them.
struct NewRequest {
    id: String,
    requester: String,
    requester_user_id: String,
    token_id: String,
    connection: String,
    kind: &'static str,
    environment: &'static str,
    class: &'static str,
    statement: String,
    statement_sha256: [u8; 32],
    reason: String,
    state: &'static str,
    decision: &'static str,
    rule: Option<i64>,
    approval_sha256: Option<[u8; 32]>,
    now: i64,
    approved_at_ms: Option<i64>,
    result_mode: &'static str,
    steps: Option<String>,
    rule_name: Option<String>,
    break_glass_id: Option<String>,
    job: Option<NewJob>,
    /// `explain` (with the plan statement) or `preview` jobs.
    context_jobs: Vec<(&'static str, Option<String>)>,
}

/// An auto-approved request's execution job: queued, or leased to an agent already waiting
/// (which dispatches the request).
struct NewJob {
    id: String,
    lease: Option<JobLease>,
}

/// The lease of a job handed to an agent as it is created.
struct JobLease {
    agent: String,
    nonce: [u8; 16],
    until_ms: i64,
}

impl NewRequest {
    fn insert(&self, conn: &rusqlite::Connection) -> rusqlite::Result<()> {
        let lease = self.job.as_ref().and_then(|j| j.lease.as_ref());
        let agent = lease.map(|l| l.agent.as_str());
        let leased_at_ms = lease.map(|_| self.now);
        conn.prepare_cached(INSERT_REQUEST)?
            .execute(rusqlite::params![
                self.id,
                self.requester,
                self.requester_user_id,
                self.token_id,
                self.connection,
                self.kind,
                self.environment,
                self.class,
                self.statement,
                &self.statement_sha256[..],
                self.reason,
                self.state,
                self.decision,
                self.rule,
                self.approval_sha256.as_ref().map(|a| &a[..]),
                self.now,
                self.now,
                self.approved_at_ms,
                self.result_mode,
                self.steps,
                self.rule_name,
                self.break_glass_id,
                agent,
                leased_at_ms,
            ])?;
        if let Some(job) = &self.job {
            conn.prepare_cached(INSERT_EXECUTION_JOB)?
                .execute(rusqlite::params![
                    job.id,
                    self.id,
                    self.connection,
                    if lease.is_some() { "leased" } else { "queued" },
                    agent,
                    lease.map(|l| &l.nonce[..]),
                    leased_at_ms,
                    lease.map(|l| l.until_ms),
                    self.now,
                ])?;
        }
        for (purpose, text) in &self.context_jobs {
            conn.prepare_cached(INSERT_CONTEXT_JOB)?
                .execute(rusqlite::params![
                    new_id().to_string(),
                    self.id,
                    purpose,
                    text,
                    self.connection,
                    self.now,
                ])?;
        }
        Ok(())
    }
}

/// Extends the lease of a running job; the first heartbeat marks the request running.
pub async fn heartbeat(
    state: &AppState,
    agent: &AgentPrincipal,
    ctx: &Context,
    job_id: Uuid,
) -> Result<(), ApiError> {
    let now = clock::now_ms();
    let lease = (state.config.execution.lease_secs as i64) * 1000;
    let mut tx = AuditTx::begin(&state.store, &state.audit).await?;
    let row = sqlx::query("UPDATE jobs SET lease_until_ms = ? WHERE id = ? AND agent = ? AND state = 'leased' RETURNING request_id")
        .bind(now + lease)
        .bind(job_id.to_string())
        .bind(&agent.name)
        .fetch_optional(tx.conn().await?)
        .await?
        .ok_or(ApiError::InvalidState { detail: "no lease on this job for this agent".into() })?;
    let request_id: String = row.try_get(0)?;
    let moved = sqlx::query("UPDATE requests SET state = 'running', started_at_ms = ?, updated_at_ms = ? WHERE id = ? AND state = 'dispatched'")
        .bind(now)
        .bind(now)
        .bind(&request_id)
        .execute(tx.conn().await?)
        .await?;
    if moved.rows_affected() == 1 {
        let event = Event {
            actor: format!("agent:{}", agent.name),
            action: Action::RequestRunning,
            target: format!("request:{request_id}"),
            outcome: Outcome::Success,
            details: json!({}),
        };
        tx.append_at(ctx, event, now).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Cancels a request that has not been dispatched. Only its requester may.
pub async fn cancel(
    state: &AppState,
    who: &UserPrincipal,
    ctx: &Context,
    id: Uuid,
) -> Result<(), ApiError> {
    let now = clock::now_ms();
    let mut tx = AuditTx::begin(&state.store, &state.audit).await?;
    let row = sqlx::query("SELECT state, requester_user_id FROM requests WHERE id = ?")
        .bind(id.to_string())
        .fetch_optional(tx.conn().await?)
        .await?
        .ok_or(ApiError::NotFound)?;
    let owner: String = row.try_get(1)?;
    if owner != who.user_id {
        return Err(ApiError::NotFound);
    }
    let current: RequestState = parse(row.try_get::<String, _>(0)?)?;
    if !current.can_become(RequestState::Cancelled) {
        return Err(ApiError::InvalidState {
            detail: format!("a request in state {current} cannot be cancelled"),
        });
    }
    end_undispatched(&mut tx, id, RequestState::Cancelled, now).await?;
    let event = Event {
        actor: who.display(),
        action: Action::RequestCancelled,
        target: format!("request:{id}"),
        outcome: Outcome::Success,
        details: json!({ "from": current.as_str() }),
    };
    tx.append_at(ctx, event, now).await?;
    // Published once committed, even if the requester is gone by then.
    let publish = state.clone();
    tx.commit_then(move || {
        let cancelled = Finished {
            state: RequestState::Cancelled,
            result: None,
            error: None,
            view: None,
        };
        publish.dispatch.complete(id, cancelled, now);
    })
    .await?;
    Ok(())
}

pub(crate) async fn end_undispatched(
    tx: &mut AuditTx,
    id: Uuid,
    to: RequestState,
    now: i64,
) -> Result<(), ApiError> {
    sqlx::query(
        "UPDATE requests SET state = ?, finished_at_ms = ?, updated_at_ms = ? WHERE id = ?",
    )
    .bind(to.as_str())
    .bind(now)
    .bind(now)
    .bind(id.to_string())
    .execute(tx.conn().await?)
    .await?;
    sqlx::query("UPDATE jobs SET state = 'done' WHERE request_id = ? AND state = 'queued'")
        .bind(id.to_string())
        .execute(tx.conn().await?)
        .await?;
    Ok(())
}

pub(crate) fn parse<T: std::str::FromStr>(s: String) -> Result<T, ApiError>
where
    T::Err: std::fmt::Display,
{
    s.parse::<T>()
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("corrupt value in the state store: {e}")))
}

pub(crate) fn parse_uuid(s: String) -> Result<Uuid, ApiError> {
    Uuid::parse_str(&s)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("corrupt id in the state store: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Requests' and jobs' ids sort as text (as their indexes compare them) in the order they
    /// were made, so each insert lands at the newest end of its indexes.
    #[test]
    fn new_ids_sort_in_the_order_they_were_made() {
        let ids: Vec<String> = (0..2_000).map(|_| new_id().to_string()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids out of order");
    }
}
