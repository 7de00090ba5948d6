//! An agent worker's claim: a long poll that takes a job queued on the connections it serves
//! and leases it (EX-1), or waits idle for a job handed to it directly or announced queued.

use std::time::Duration;

use portcullis_core::ConnectionName;
use portcullis_proto::agent::{ClaimRequest, JobAssignment};
use rusqlite::OptionalExtension;

use super::{CLAIM_WAIT_MAX_MS, parse_uuid};
use crate::AppState;
use crate::audit::{Context, Member};
use crate::auth::AgentPrincipal;
use crate::clock;
use crate::dispatch::IdleClaim;
use crate::error::ApiError;
use crate::lease::UnsignedJob;
use crate::to_the_end::to_the_end;

/// Long-polls for a job on the connections the agent serves, and leases it atomically.
pub async fn claim_job(
    state: &AppState,
    agent: &AgentPrincipal,
    ctx: &Context,
    claim: ClaimRequest,
) -> Result<Option<JobAssignment>, ApiError> {
    let mut served = Vec::new();
    for c in &claim.connections {
        match state.config.connection(&c.name) {
            Some(decl) if decl.kind == c.kind && decl.environment == c.environment => {
                served.push(c.name.clone())
            }
            Some(_) => {
                tracing::warn!(agent = %agent.name, connection = %c.name, "agent declares a connection whose kind or environment differs from the server's; ignoring it")
            }
            None => {
                tracing::warn!(agent = %agent.name, connection = %c.name, "agent declares a connection the server does not know; ignoring it")
            }
        }
    }
    if served.is_empty() {
        return Err(ApiError::bad_request(
            "none of the agent's connections is declared on the server with the same kind and environment",
        ));
    }
    let now = clock::now_ms();
    state
        .presence
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .agents
        .insert(agent.name.clone(), (now, served.clone()));
    let served_json = serde_json::to_string(&served).map_err(|e| ApiError::Internal(e.into()))?;
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(claim.wait_ms.min(CLAIM_WAIT_MAX_MS));
    loop {
        let ready = state.dispatch.waiters(&served);
        if state.dispatch.is_revoked(&agent.name) {
            return Err(ApiError::Unauthenticated);
        }
        // EX-3: a draining server leases nothing more. The claim is held until the server
        // stops (or its own wait runs out), so the worker does not claim again at once, and
        // is then told there is no job: it claims again after the restart.
        if state.is_draining() {
            let _ = tokio::time::timeout_at(deadline, state.stopping()).await;
            return Ok(None);
        }
        if let Some(job) = try_claim(state, agent, ctx, &served, &served_json).await? {
            return Ok(Some(job));
        }
        // Idle: a newly approved job may be handed straight to this worker (`lease.rs`);
        // one queued any other way wakes it to look at the queue.
        let mut idle = state.dispatch.register_idle(&served, &agent.name, ctx);
        // IR-5: a claim authenticated before its agent was revoked ends here, refused. The
        // revocation is marked before it withdraws idle workers, so a worker registered
        // after that withdrawal sees the mark now.
        if state.dispatch.is_revoked(&agent.name) {
            return Err(ApiError::Unauthenticated);
        }
        let (woken, handed) = tokio::select! {
            handed = &mut idle.receiver => match handed {
                Ok(job) => return Ok(Some(job)),
                // A hand-off that failed before its commit: free again.
                Err(_) => (false, None),
            },
            _ = futures_util::future::select_all(ready) => (true, idle.finish().await),
            _ = tokio::time::sleep_until(deadline) => (false, idle.finish().await),
            () = state.draining() => (false, idle.finish().await),
        };
        if let Some(job) = handed {
            if woken {
                // The wake-up was for another job: pass it on.
                for c in &served {
                    state.dispatch.job_queued(c);
                }
            }
            return Ok(Some(job));
        }
        // A draining server is seen at the top of the loop.
        if !woken && tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
    }
}

async fn try_claim(
    state: &AppState,
    agent: &AgentPrincipal,
    ctx: &Context,
    served: &[ConnectionName],
    served_json: &str,
) -> Result<Option<JobAssignment>, ApiError> {
    // Nothing queued since a look that found the queue empty: no store read at all (the
    // usual case for a worker back from a job that was handed to it).
    if state.dispatch.queue_known_empty(served) {
        return Ok(None);
    }
    // Look with a reader first, so idle agents woken together do not queue on the writer.
    let mark = state.dispatch.queue_mark(served);
    let queued: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM jobs WHERE state = 'queued' AND connection IN (SELECT value FROM json_each(?)) LIMIT 1",
    )
    .bind(served_json)
    .fetch_optional(state.store.reader())
    .await?;
    if queued.is_none() {
        state.dispatch.queue_found_empty(mark);
        return Ok(None);
    }
    // The lease, its token's claims and the dispatch record in one transaction on the writer
    // thread: while it waits for its turn nothing holds the state store's writer.
    let now = clock::now_ms();
    let lease_ms = state.config.execution.lease_secs.saturating_mul(1000);
    let nonce: [u8; 16] = rand::random();
    let (claimer, agent_name, lease_ctx) = (state.clone(), agent.name.clone(), ctx.clone());
    let served_json = served_json.to_owned();
    let lease_until = now.saturating_add(lease_ms as i64);
    let lease = move |m: &mut Member<'_>| -> Result<Option<(UnsignedJob, bool)>, ApiError> {
        // EX-3: the drain may have begun since this claim looked. Seen here, on the writer
        // thread, a drain that began before this transaction leases nothing in it; one that
        // begins after it finds its lease committed when it counts the running jobs
        // ([`crate::Server::stop`] waits for the writer first).
        if claimer.is_draining() {
            return Ok(None);
        }
        let claimed = m
            .conn()
            .prepare_cached(CLAIM_QUEUED)?
            .query_row(
                rusqlite::params![
                    agent_name,
                    &nonce[..],
                    now,
                    lease_until,
                    served_json,
                    // IR-5: the store has the last word; a revocation committed since this
                    // claim was authenticated leases nothing.
                    agent_name,
                ],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, Option<String>>(3)?,
                    ))
                },
            )
            .optional()?;
        let Some((job_id, request_id, purpose, explain_text)) = claimed else {
            return Ok(None);
        };
        // A result that comes back whole (anything but a streamed execution) is then found
        // by its upload without a store read, as for a job handed over at its creation.
        let collected = purpose != "execute"
            || m.conn()
                .prepare_cached(RESULT_MODE)?
                .query_row([&request_id], |row| row.get::<_, String>(0))?
                != "stream";
        let leased = crate::lease::Leased {
            job_id: parse_uuid(job_id)?,
            request_id: parse_uuid(request_id)?,
            purpose,
            explain_text,
            nonce,
        };
        let job = crate::lease::encode(&claimer, m, &agent_name, &lease_ctx, leased, now)?;
        Ok(Some((job, collected)))
    };
    // The commit and the delivery run to their end even if this claim is dropped meanwhile
    // (its agent went away): a committed lease reaches its agent or goes back to the queue,
    // recorded, as a hand-off at creation does (`lease::deliver`, `to_the_end`).
    let (deliver, delivered) = tokio::sync::oneshot::channel();
    let idle = IdleClaim {
        agent: agent.name.clone(),
        ctx: ctx.clone(),
        deliver,
    };
    let committing = state.clone();
    to_the_end(async move {
        let Some((job, collected)) = committing.audit.transact(lease).await? else {
            return Ok(());
        };
        crate::lease::hand_over(&committing, idle, job, lease_until, collected).await
    })
    .await?;
    // Nothing leased, or not given to this claim (its agent revoked meanwhile, IR-5): none.
    Ok(delivered.await.ok())
}

/// How a request's result comes back (1 parameter: its id).
const RESULT_MODE: &str = "SELECT result_mode FROM requests WHERE id = ?";

/// Leases the oldest job queued on the claim's connections to the claiming agent, unless
/// the agent was revoked (6 parameters), and returns what its token is made from.
const CLAIM_QUEUED: &str = concat!(
    "UPDATE jobs SET state = 'leased', agent = ?, nonce = ?, leased_at_ms = ?, lease_until_ms = ? ",
    "WHERE id = (SELECT id FROM jobs WHERE state = 'queued' AND connection IN (SELECT value FROM json_each(?)) ORDER BY created_at_ms LIMIT 1) ",
    "AND NOT EXISTS (SELECT 1 FROM agents WHERE name = ? AND revoked_at_ms IS NOT NULL) ",
    "RETURNING id, request_id, purpose, statement",
);
