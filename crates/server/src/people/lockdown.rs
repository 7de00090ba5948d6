//! Lockdown (IR-3): one audited command locks every non-admin account, revokes every session
//! and API token but the caller's session, and cancels every request that has not reached an
//! agent — in one transaction. Lifting it unlocks exactly the accounts it locked.

use portcullis_core::RequestState;
use portcullis_proto::people::{LockdownLifted, LockdownOutcome};
use serde_json::json;
use uuid::Uuid;

use super::users::{after_suspend, announce_cancelled, suspend_in};
use crate::AppState;
use crate::audit::{Action, AuditTx, Context, Event, Outcome};
use crate::auth::UserPrincipal;
use crate::clock;
use crate::error::ApiError;

const LOCKDOWN: &str = "lockdown_since_ms";

pub async fn lockdown(
    state: &AppState,
    ctx: &Context,
    who: &UserPrincipal,
) -> Result<LockdownOutcome, ApiError> {
    let now = clock::now_ms();
    let actor = who.display();
    let keep = who.session.then_some(who.token_id.as_str());
    let mut tx = AuditTx::begin(&state.store, &state.audit).await?;
    let targets: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, name FROM users WHERE role <> 'admin' AND suspended_at_ms IS NULL ORDER BY name",
    )
    .fetch_all(tx.conn().await?)
    .await?;
    let mut outcome = LockdownOutcome {
        users_locked: 0,
        sessions_revoked: 0,
        tokens_revoked: 0,
        requests_cancelled: 0,
    };
    let mut suspended = Vec::new();
    for (id, name) in &targets {
        let (done, cancelled) =
            suspend_in(&mut tx, ctx, &actor, id, name, Some("lockdown"), now).await?;
        sqlx::query("UPDATE users SET lockdown_suspended = 1 WHERE id = ?")
            .bind(id)
            .execute(tx.conn().await?)
            .await?;
        outcome.users_locked += 1;
        outcome.sessions_revoked += done.sessions_revoked;
        outcome.tokens_revoked += done.tokens_revoked;
        outcome.requests_cancelled += done.requests_cancelled;
        suspended.push((id.clone(), cancelled));
    }
    // Admins keep their accounts, not their credentials: every other session and token ends.
    outcome.sessions_revoked += sqlx::query(
        "UPDATE sessions SET revoked_at_ms = ? WHERE revoked_at_ms IS NULL AND (? IS NULL OR id <> ?)",
    )
    .bind(now)
    .bind(keep)
    .bind(keep)
    .execute(tx.conn().await?)
    .await?
    .rows_affected();
    outcome.tokens_revoked += sqlx::query(
        "UPDATE api_tokens SET revoked_at_ms = ? WHERE revoked_at_ms IS NULL AND expires_at_ms > ?",
    )
    .bind(now)
    .bind(now)
    .execute(tx.conn().await?)
    .await?
    .rows_affected();
    sqlx::query("UPDATE trusted_devices SET revoked_at_ms = ? WHERE revoked_at_ms IS NULL")
        .bind(now)
        .execute(tx.conn().await?)
        .await?;
    let open: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM requests WHERE state IN ('pending_approval', 'approved')",
    )
    .fetch_all(tx.conn().await?)
    .await?;
    let mut cancelled = Vec::with_capacity(open.len());
    for id in open {
        let id = Uuid::parse_str(&id).map_err(|e| ApiError::Internal(e.into()))?;
        crate::lifecycle::end_undispatched(&mut tx, id, RequestState::Cancelled, now).await?;
        let event = Event {
            actor: actor.clone(),
            action: Action::RequestCancelled,
            target: format!("request:{id}"),
            outcome: Outcome::Success,
            details: json!({ "reason": "lockdown" }),
        };
        tx.append_at(ctx, event, now).await?;
        cancelled.push(id);
    }
    outcome.requests_cancelled += cancelled.len() as u64;
    sqlx::query("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
        .bind(LOCKDOWN)
        .bind(now.to_string().into_bytes())
        .execute(tx.conn().await?)
        .await?;
    let event = Event {
        actor,
        action: Action::Lockdown,
        target: "server".into(),
        outcome: Outcome::Success,
        details: json!({
            "users_locked": outcome.users_locked,
            "sessions_revoked": outcome.sessions_revoked,
            "tokens_revoked": outcome.tokens_revoked,
            "requests_cancelled": outcome.requests_cancelled,
        }),
    };
    tx.append_at(ctx, event, now).await?;
    // AUTH-7: every credential leaves the cache once committed, even if the caller is gone.
    let after = state.clone();
    tx.commit_then(move || {
        after.auth.forget_all();
        for (id, cancelled) in suspended {
            after_suspend(&after, &id, cancelled, now);
        }
        announce_cancelled(&after, cancelled, now);
    })
    .await?;
    Ok(outcome)
}

/// Unlocks the accounts the lockdown locked (not those suspended otherwise, nor those
/// `[[users]]` marks suspended). Revoked credentials stay revoked: people sign in again.
pub async fn lift(
    state: &AppState,
    ctx: &Context,
    who: &UserPrincipal,
) -> Result<LockdownLifted, ApiError> {
    let now = clock::now_ms();
    let mut tx = AuditTx::begin(&state.store, &state.audit).await?;
    let since: Option<Vec<u8>> = sqlx::query_scalar("SELECT value FROM settings WHERE key = ?")
        .bind(LOCKDOWN)
        .fetch_optional(tx.conn().await?)
        .await?;
    if since.is_none() {
        return Err(ApiError::InvalidState {
            detail: "there is no lockdown to lift".into(),
        });
    }
    let locked: Vec<(String, String)> =
        sqlx::query_as("SELECT id, name FROM users WHERE lockdown_suspended = 1")
            .fetch_all(tx.conn().await?)
            .await?;
    let mut unlocked = 0u64;
    for (id, name) in &locked {
        let pinned = state
            .config
            .users
            .iter()
            .any(|u| &u.name == name && u.suspended);
        let lift = if pinned {
            "UPDATE users SET lockdown_suspended = 0, suspended_reason = 'suspended in the configuration file' WHERE id = ?"
        } else {
            "UPDATE users SET lockdown_suspended = 0, suspended_at_ms = NULL, suspended_reason = NULL, failed_logins = 0, last_failed_at_ms = NULL WHERE id = ?"
        };
        sqlx::query(lift).bind(id).execute(tx.conn().await?).await?;
        if !pinned {
            unlocked += 1;
        }
    }
    sqlx::query("DELETE FROM settings WHERE key = ?")
        .bind(LOCKDOWN)
        .execute(tx.conn().await?)
        .await?;
    let event = Event {
        actor: who.display(),
        action: Action::LockdownLifted,
        target: "server".into(),
        outcome: Outcome::Success,
        details: json!({ "users_unlocked": unlocked }),
    };
    tx.append_at(ctx, event, now).await?;
    tx.commit().await?;
    state.auth.forget_all();
    Ok(LockdownLifted {
        users_unlocked: unlocked,
    })
}
