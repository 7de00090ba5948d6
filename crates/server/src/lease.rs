//! Leasing a job to an agent: the execution token (EX-1) and the dispatch record, written in
//! the caller's transaction and durable before the token leaves the server. Two ways in: a
//! claim that finds a queued job, and the direct hand-off of a newly approved job to an agent
//! already waiting in its claim, inside the very transaction that approved it (one commit
//! instead of two, no wake-up and no second look at the queue).
//!
//! The token's claims are checked and encoded in the transaction, so a token the signer would
//! refuse rolls the lease back; the Ed25519 signature itself is made after the commit
//! ([`UnsignedJob::sign`]), outside the state store's serial writer, and before the token
//! leaves.

use portcullis_core::{ConnectionName, Environment, OperationClass, RequestState};
use portcullis_proto::agent::JobAssignment;
use portcullis_proto::token::{EncodedClaims, TokenClaims, statement_sha256};
use serde_json::json;
use uuid::Uuid;

use crate::AppState;
use crate::audit::{Action, AuditTx, Context, Event, Member, Outcome};
use crate::clock;
use crate::dispatch::{HandedJob, IdleClaim};
use crate::error::ApiError;
use crate::lifecycle::parse;

/// The fields of a request its execution token is signed from (1 parameter: its id).
const READ_RECORDED: &str = "SELECT connection, environment, class, statement, statement_sha256, approval_sha256, state FROM requests WHERE id = ?";
/// Marks an approved request dispatched to the agent leasing its execution (4 parameters).
const DISPATCH_REQUEST: &str = "UPDATE requests SET state = 'dispatched', agent = ?, dispatched_at_ms = ?, updated_at_ms = ? WHERE id = ? AND state = 'approved'";

/// A job row just leased (`state = 'leased'`) in the current transaction.
#[derive(Debug)]
pub(crate) struct Leased {
    pub(crate) job_id: Uuid,
    pub(crate) request_id: Uuid,
    pub(crate) purpose: String,
    pub(crate) explain_text: Option<String>,
    pub(crate) nonce: [u8; 16],
}

/// The fields of a request that its execution token is signed from, as recorded in the
/// current transaction.
#[derive(Debug)]
pub(crate) struct Recorded {
    pub(crate) connection: ConnectionName,
    pub(crate) environment: Environment,
    pub(crate) class: OperationClass,
    pub(crate) statement: String,
    pub(crate) statement_sha256: [u8; 32],
    pub(crate) approval_sha256: Option<[u8; 32]>,
    pub(crate) state: RequestState,
}

impl Recorded {
    /// Reads them back from the store, in the transaction of `conn`.
    fn read(conn: &rusqlite::Connection, request_id: Uuid) -> Result<Recorded, ApiError> {
        let row =
            conn.prepare_cached(READ_RECORDED)?
                .query_row([request_id.to_string()], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                        row.get::<_, Vec<u8>>(4)?,
                        row.get::<_, Option<Vec<u8>>>(5)?,
                        row.get::<_, String>(6)?,
                    ))
                })?;
        let (connection, environment, class, statement, statement_sha256, approval, state) = row;
        Ok(Recorded {
            connection: parse(connection)?,
            environment: parse(environment)?,
            class: parse(class)?,
            statement,
            statement_sha256: to_hash(statement_sha256),
            approval_sha256: approval.map(to_hash),
            state: parse(state)?,
        })
    }
}

/// A leased job's assignment whose token claims were checked and encoded in the lease's
/// transaction, waiting for their signature. Signed only once that transaction committed
/// (never before: no token exists for a lease that is not durable), outside the writer.
pub(crate) struct UnsignedJob {
    /// The key the claims name, held since they were encoded: a rotation in between signs
    /// the next token with the new key, never this one.
    keys: std::sync::Arc<crate::keys::KeyPair>,
    claims: EncodedClaims,
    job_id: Uuid,
    request_id: Uuid,
    connection: ConnectionName,
    class: OperationClass,
    statement: String,
    lease_ms: u64,
}

impl UnsignedJob {
    /// Signs the token. Call only after the lease's transaction committed.
    pub(crate) fn sign(self) -> Result<JobAssignment, ApiError> {
        let token = self
            .keys
            .signer
            .sign_encoded(&self.claims)
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("signing failed: {e}")))?;
        Ok(JobAssignment {
            job_id: self.job_id,
            request_id: self.request_id,
            connection: self.connection,
            class: self.class,
            statement: self.statement,
            token,
            lease_ms: self.lease_ms,
        })
    }
}

/// Encodes the execution token's claims of a leased job, marks its request dispatched (for
/// an execution) and appends the dispatch event, all in the writer thread's transaction of
/// `member`; the token is signed after the commit ([`UnsignedJob::sign`]).
pub(crate) fn encode(
    state: &AppState,
    member: &mut Member<'_>,
    agent: &str,
    ctx: &Context,
    leased: Leased,
    now: i64,
) -> Result<UnsignedJob, ApiError> {
    let recorded = Recorded::read(member.conn(), leased.request_id)?;
    let request_id = leased.request_id;
    let (job, event, executes) = encode_claims(state, agent, leased, recorded, now)?;
    if executes {
        member
            .conn()
            .prepare_cached(DISPATCH_REQUEST)?
            .execute(rusqlite::params![agent, now, now, request_id.to_string()])?;
    }
    member.append_at(ctx, event, now)?;
    Ok(job)
}

/// The token's claims of a leased job, encoded (signed after the commit), with the dispatch
/// event to append in the transaction that records the lease, and whether the job is the
/// request's execution (which dispatches it). No store access: it runs before the
/// transaction or inside it alike.
fn encode_claims(
    state: &AppState,
    agent: &str,
    leased: Leased,
    recorded: Recorded,
    now: i64,
) -> Result<(UnsignedJob, Event, bool), ApiError> {
    let Leased {
        job_id,
        request_id,
        purpose,
        explain_text,
        nonce,
    } = leased;
    let ex = &state.config.execution;
    let current = recorded.state;
    let dry_run = purpose == "preview";
    let explain = match (purpose.as_str(), explain_text) {
        ("execute" | "preview", _) => None,
        ("explain", Some(text)) => Some(text),
        _ => {
            return Err(ApiError::Internal(anyhow::anyhow!(
                "job {job_id} has an unknown purpose or no statement"
            )));
        }
    };
    // Explains and previews run beside a pending request; only an execution dispatches it.
    let executes = explain.is_none() && !dry_run;
    if executes && !current.can_become(RequestState::Dispatched) {
        return Err(ApiError::Internal(anyhow::anyhow!(
            "job {job_id} queued for request {request_id} in state {current}"
        )));
    }
    // One key for the whole token: a rotation in between swaps the next token's key.
    let signing = state.keys.current();
    let claims = TokenClaims {
        key_id: signing.signer.key_id(),
        job_id,
        request_id,
        agent: agent.to_owned(),
        connection: recorded.connection,
        environment: recorded.environment,
        // An explain job runs its own text, always as a read; it is bound to the request it
        // explains instead of to an approval, which it precedes.
        class: match explain {
            Some(_) => portcullis_core::OperationClass::Read,
            None => recorded.class,
        },
        statement_sha256: match &explain {
            Some(text) => statement_sha256(text),
            None => recorded.statement_sha256,
        },
        row_cap: ex.row_cap,
        timeout_ms: ex.timeout_ms,
        approval_sha256: match (&explain, dry_run) {
            (Some(_), _) => crate::explain::explain_binding(request_id),
            (None, true) => crate::explain::preview_binding(request_id),
            (None, false) => recorded.approval_sha256.unwrap_or([0; 32]),
        },
        issued_at_ms: now,
        expires_at_ms: now + (ex.token_ttl_secs as i64) * 1000,
        nonce,
        dry_run,
    };
    let statement: String = match &explain {
        Some(text) => text.clone(),
        None => recorded.statement,
    };
    let encoded = signing
        .signer
        .encode(&claims)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("signing failed: {e}")))?;
    let event = Event {
        actor: format!("agent:{agent}"),
        action: if explain.is_some() {
            Action::ExplainDispatched
        } else if dry_run {
            Action::PreviewDispatched
        } else {
            Action::RequestDispatched
        },
        target: format!("request:{request_id}"),
        outcome: Outcome::Success,
        details: json!({ "job": job_id.to_string(), "key_id": claims.key_id.to_hex(), "expires_at": clock::format_ms(claims.expires_at_ms) }),
    };
    let job = UnsignedJob {
        keys: signing,
        claims: encoded,
        job_id,
        request_id,
        connection: claims.connection,
        class: claims.class,
        statement,
        lease_ms: ex.lease_secs.saturating_mul(1000),
    };
    Ok((job, event, executes))
}

/// An execution job leased, in the very statements that create it, to an agent already
/// waiting in its claim: the request is inserted `dispatched` and its job `leased`, with no
/// queued row updated a moment later. Dropping it frees the agent.
pub(crate) struct HandOff {
    pub(crate) idle: IdleClaim,
    pub(crate) nonce: [u8; 16],
    pub(crate) lease_until_ms: i64,
}

impl HandOff {
    pub(crate) fn new(state: &AppState, idle: IdleClaim, now: i64) -> HandOff {
        let lease_ms = state.config.execution.lease_secs.saturating_mul(1000);
        HandOff {
            idle,
            nonce: rand::random(),
            lease_until_ms: now.saturating_add(lease_ms as i64),
        }
    }

    /// Encodes the token of the job `job_id` to be recorded with this lease, with the
    /// dispatch event to append in the same transaction (as the agent's claim, in its
    /// context); the token is signed after the commit. `recorded` is the request as the
    /// caller writes it (not read back), with the state it was approved in.
    pub(crate) fn encode(
        &self,
        state: &AppState,
        job_id: Uuid,
        request_id: Uuid,
        recorded: Recorded,
        now: i64,
    ) -> Result<(UnsignedJob, Event), ApiError> {
        let leased = Leased {
            job_id,
            request_id,
            purpose: "execute".into(),
            explain_text: None,
            nonce: self.nonce,
        };
        let (job, event, _) = encode_claims(state, &self.idle.agent, leased, recorded, now)?;
        Ok((job, event))
    }
}

/// Signs the token of a committed lease (never before the commit, and outside the writer)
/// and gives the job to the claim waiting for it ([`deliver`]). A job whose result comes back
/// whole (`collected`) is first noted for its upload, which may arrive at once
/// ([`Dispatch::note_handed`](crate::dispatch::Dispatch::note_handed)).
pub(crate) async fn hand_over(
    state: &AppState,
    idle: IdleClaim,
    job: UnsignedJob,
    lease_until_ms: i64,
    collected: bool,
) -> Result<(), ApiError> {
    let job = job.sign()?;
    if collected {
        state.dispatch.note_handed(
            job.job_id,
            HandedJob {
                agent: idle.agent.clone(),
                lease_until_ms,
            },
        );
    }
    deliver(state, idle, job).await;
    Ok(())
}

/// Gives a committed hand-off to its agent. When the agent's claim ended in the meantime, or
/// the agent was revoked, the token never leaves the server: the job goes back to the queue,
/// recorded, for the next claim (nothing ran, so nothing is lost or run twice).
pub(crate) async fn deliver(state: &AppState, idle: IdleClaim, job: JobAssignment) {
    let IdleClaim {
        agent,
        ctx,
        deliver,
    } = idle;
    // IR-5: an agent revoked since its claim was taken gets nothing; closing the channel
    // ends its claim, which is then refused.
    let job = if state.dispatch.is_revoked(&agent) {
        drop(deliver);
        job
    } else {
        match deliver.send(job) {
            Ok(()) => return,
            Err(job) => job,
        }
    };
    state.dispatch.forget_handed(job.job_id, &agent);
    let connection = job.connection.clone();
    match requeue(state, &agent, &ctx, &job).await {
        Ok(()) => state.dispatch.job_queued(&connection),
        // The lease then expires and the reaper settles the request.
        Err(e) => {
            tracing::error!(job = %job.job_id, error = %e, "returning an undelivered job to the queue failed")
        }
    }
}

async fn requeue(
    state: &AppState,
    agent: &str,
    ctx: &Context,
    job: &JobAssignment,
) -> Result<(), ApiError> {
    let now = clock::now_ms();
    let mut tx = AuditTx::begin(&state.store, &state.audit).await?;
    let returned = sqlx::query("UPDATE jobs SET state = 'queued', agent = NULL, nonce = NULL, leased_at_ms = NULL, lease_until_ms = NULL WHERE id = ? AND state = 'leased' AND agent = ?")
        .bind(job.job_id.to_string())
        .bind(agent)
        .execute(tx.conn().await?)
        .await?
        .rows_affected();
    if returned == 0 {
        return Ok(());
    }
    sqlx::query("UPDATE requests SET state = 'approved', agent = NULL, dispatched_at_ms = NULL, updated_at_ms = ? WHERE id = ? AND state = 'dispatched'")
        .bind(now)
        .bind(job.request_id.to_string())
        .execute(tx.conn().await?)
        .await?;
    let event = Event {
        actor: "system".into(),
        action: Action::RequestRequeued,
        target: format!("request:{}", job.request_id),
        outcome: Outcome::Success,
        details: json!({ "job": job.job_id.to_string(), "agent": agent, "reason": "undelivered" }),
    };
    tx.append_at(ctx, event, now).await?;
    tx.commit().await?;
    Ok(())
}

fn to_hash(v: Vec<u8>) -> [u8; 32] {
    <[u8; 32]>::try_from(v.as_slice()).unwrap_or([0; 32])
}
