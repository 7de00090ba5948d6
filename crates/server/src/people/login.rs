//! Password + TOTP logins and sessions (AUTH-1, AUTH-2, AUTH-3, SEC-5).
//!
//! Every failure looks the same to the caller — unknown name, wrong password, wrong code,
//! suspended or locked account — and the same Argon2id work happens for unknown names (a
//! dummy verification), so neither the answer nor its timing reveals an account. Failures
//! count towards a lockout with exponential backoff, audited, and alerted when it starts.
//! Argon2 work is bounded by a permit pool so logins cannot exhaust the CPU.

use std::time::Duration;

use portcullis_identity::{TotpSecret, find_match};
use portcullis_proto::people::{LoginRequest, LoginResponse};
use serde_json::json;
use sqlx::Row;
use zeroize::Zeroizing;

use crate::AppState;
use crate::audit::{Action, AuditTx, Context, Event, Outcome};
use crate::auth::{self, SESSION_PREFIX};
use crate::clock;
use crate::error::ApiError;

/// How long a login waits for an Argon2 permit before answering "busy".
const PERMIT_WAIT: Duration = Duration::from_secs(5);

/// Runs Argon2 work on the blocking pool, holding one of the bounded permits.
async fn argon2<T: Send + 'static>(
    state: &AppState,
    work: impl FnOnce(&AppState) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = state
            .people
            .permits()
            .try_acquire_for(PERMIT_WAIT)
            .ok_or_else(busy)?;
        work(&state)
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))?
}

/// Hashes a new password on the blocking pool under a permit.
pub(crate) async fn hash_password(
    state: &AppState,
    password: Zeroizing<String>,
) -> Result<String, ApiError> {
    argon2(state, move |state| {
        state
            .people
            .hasher
            .hash(&password)
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("password hashing failed: {e}")))
    })
    .await
}

fn busy() -> ApiError {
    ApiError::Unavailable(anyhow::anyhow!(
        "too many password checks at once; try again shortly"
    ))
}

/// The one answer to every failed login.
fn refused() -> ApiError {
    ApiError::LoginFailed
}

struct Account {
    id: String,
    role: String,
    password_hash: Option<String>,
    totp_sealed: Option<Vec<u8>>,
    totp_last_step: Option<i64>,
    failed: u32,
    last_failed_ms: Option<i64>,
    suspended: bool,
}

async fn account(state: &AppState, name: &str) -> Result<Option<Account>, ApiError> {
    let row = sqlx::query(
        "SELECT id, role, password_hash, totp_sealed, totp_last_step, failed_logins, last_failed_at_ms, suspended_at_ms FROM users WHERE name = ?",
    )
    .bind(name)
    .fetch_optional(state.store.reader())
    .await?;
    let Some(r) = row else { return Ok(None) };
    Ok(Some(Account {
        id: r.try_get(0)?,
        role: r.try_get(1)?,
        password_hash: r.try_get(2)?,
        totp_sealed: r.try_get(3)?,
        totp_last_step: r.try_get(4)?,
        failed: u32::try_from(r.try_get::<i64, _>(5)?).unwrap_or(u32::MAX),
        last_failed_ms: r.try_get(6)?,
        suspended: r.try_get::<Option<i64>, _>(7)?.is_some(),
    }))
}

/// What was wrong, for the audit log only.
#[derive(Debug, Clone, Copy)]
enum Why {
    UnknownUser,
    Locked,
    Suspended,
    Password,
    MfaMissing,
    MfaWrong,
    MfaReplayed,
}

impl Why {
    fn as_str(self) -> &'static str {
        match self {
            Why::UnknownUser => "unknown_user",
            Why::Locked => "locked",
            Why::Suspended => "suspended",
            Why::Password => "wrong_password",
            Why::MfaMissing => "mfa_missing",
            Why::MfaWrong => "mfa_wrong",
            Why::MfaReplayed => "mfa_replayed",
        }
    }
}

/// `POST /api/v1/login`.
pub async fn login(
    state: &AppState,
    ctx: &Context,
    body: LoginRequest,
) -> Result<LoginResponse, ApiError> {
    let now = clock::now_ms();
    let account = account(state, &body.name).await?;
    let password = Zeroizing::new(body.password);
    // The same Argon2 work for every outcome: unknown users verify against a dummy hash.
    let stored = account.as_ref().and_then(|a| a.password_hash.clone());
    let verified = argon2(state, move |state| {
        Ok(state.people.hasher.verify(stored.as_deref(), &password))
    })
    .await?;
    let Some(account) = account else {
        fail(state, ctx, &body.name, None, Why::UnknownUser, now).await?;
        return Err(refused());
    };
    if state
        .people
        .lockout
        .is_locked(account.failed, account.last_failed_ms.unwrap_or(0), now)
    {
        // A locked account refuses even the right password, and does not count it.
        audit_failure(state, ctx, &body.name, Why::Locked, account.failed, now).await?;
        return Err(refused());
    }
    let why = if account.suspended {
        Some(Why::Suspended)
    } else if !verified {
        Some(Why::Password)
    } else {
        None
    };
    if let Some(why) = why {
        fail(state, ctx, &body.name, Some(&account), why, now).await?;
        return Err(refused());
    }
    let mut step = None;
    let mut recovery_used = None;
    if let Some(sealed) = &account.totp_sealed {
        let secret = state
            .people
            .open_totp(&account.id, sealed)
            .map_err(ApiError::Internal)?;
        let secret = TotpSecret::from_bytes(&secret).map_err(|e| ApiError::Internal(e.into()))?;
        match (&body.code, &body.recovery_code) {
            (Some(code), _) => {
                let last = account.totp_last_step.and_then(|s| u64::try_from(s).ok());
                match secret.verify(code.trim(), (now / 1000) as u64, last) {
                    Ok(s) => step = Some(s),
                    Err(portcullis_identity::TotpError::Replayed) => {
                        fail(
                            state,
                            ctx,
                            &body.name,
                            Some(&account),
                            Why::MfaReplayed,
                            now,
                        )
                        .await?;
                        return Err(refused());
                    }
                    Err(_) => {
                        fail(state, ctx, &body.name, Some(&account), Why::MfaWrong, now).await?;
                        return Err(refused());
                    }
                }
            }
            (None, Some(code)) => {
                let hashes = unused_recovery_hashes(state, &account.id).await?;
                match find_match(code, &hashes) {
                    Some(i) => recovery_used = Some(hashes[i]),
                    None => {
                        fail(state, ctx, &body.name, Some(&account), Why::MfaWrong, now).await?;
                        return Err(refused());
                    }
                }
            }
            (None, None) => {
                // The password was right; say that a second factor is needed, without
                // counting a failure.
                audit_failure(state, ctx, &body.name, Why::MfaMissing, account.failed, now).await?;
                return Err(ApiError::MfaRequired);
            }
        }
    }
    let minted = auth::mint(SESSION_PREFIX);
    let mut tx = AuditTx::begin(&state.store, &state.audit).await?;
    // The step is stored only if it still moves forward: two logins racing with one code
    // cannot both win (AUTH-2).
    if let Some(step) = step {
        let moved = sqlx::query(
            "UPDATE users SET totp_last_step = ? WHERE id = ? AND (totp_last_step IS NULL OR totp_last_step < ?)",
        )
        .bind(step as i64)
        .bind(&account.id)
        .bind(step as i64)
        .execute(tx.conn())
        .await?
        .rows_affected();
        if moved != 1 {
            return Err(refused());
        }
    }
    if let Some(hash) = recovery_used {
        let used = sqlx::query(
            "UPDATE recovery_codes SET used_at_ms = ? WHERE user_id = ? AND code_hash = ? AND used_at_ms IS NULL",
        )
        .bind(now)
        .bind(&account.id)
        .bind(hash.to_vec())
        .execute(tx.conn())
        .await?
        .rows_affected();
        if used != 1 {
            return Err(refused());
        }
    }
    sqlx::query("UPDATE users SET failed_logins = 0, last_failed_at_ms = NULL WHERE id = ?")
        .bind(&account.id)
        .execute(tx.conn())
        .await?;
    sqlx::query(
        "INSERT INTO sessions (id, user_id, secret_hash, created_at_ms, last_seen_at_ms, mfa_at_ms, client_addr) VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&minted.id)
    .bind(&account.id)
    .bind(minted.secret_hash.to_vec())
    .bind(now)
    .bind(now)
    .bind(account.totp_sealed.as_ref().map(|_| now))
    .bind(&ctx.client_addr)
    .execute(tx.conn())
    .await?;
    let event = Event {
        actor: body.name.clone(),
        action: Action::LoginSucceeded,
        target: format!("user:{}", body.name),
        outcome: Outcome::Success,
        details: json!({
            "session": minted.id,
            "mfa": if recovery_used.is_some() { "recovery_code" } else if step.is_some() { "totp" } else { "none" },
        }),
    };
    tx.append_at(ctx, event, now).await?;
    tx.commit().await?;
    let lifetime = state.config.sessions.absolute_lifetime_secs;
    Ok(LoginResponse {
        token: minted.secret,
        name: body.name,
        role: account
            .role
            .parse()
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("{e}")))?,
        expires_at: crate::clock::format_ms(now + (lifetime as i64) * 1000),
        idle_timeout_secs: state.config.sessions.idle_timeout_secs,
    })
}

async fn unused_recovery_hashes(
    state: &AppState,
    user_id: &str,
) -> Result<Vec<[u8; 32]>, ApiError> {
    let rows: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT code_hash FROM recovery_codes WHERE user_id = ? AND used_at_ms IS NULL",
    )
    .bind(user_id)
    .fetch_all(state.store.reader())
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|h| <[u8; 32]>::try_from(h.as_slice()).ok())
        .collect())
}

/// Counts a failure against a known account (the lockout) and audits it; an alert when the
/// failure starts a lock.
async fn fail(
    state: &AppState,
    ctx: &Context,
    name: &str,
    account: Option<&Account>,
    why: Why,
    now: i64,
) -> Result<(), ApiError> {
    let Some(account) = account else {
        return audit_failure(state, ctx, name, why, 0, now).await;
    };
    let failures = account.failed.saturating_add(1);
    let mut tx = AuditTx::begin(&state.store, &state.audit).await?;
    sqlx::query("UPDATE users SET failed_logins = ?, last_failed_at_ms = ? WHERE id = ?")
        .bind(i64::from(failures))
        .bind(now)
        .bind(&account.id)
        .execute(tx.conn())
        .await?;
    tx.append_at(ctx, failure_event(name, why, failures), now)
        .await?;
    let locked_until = state.people.lockout.locked_until(failures, now);
    if let Some(until) = locked_until {
        let event = Event {
            actor: "system".into(),
            action: Action::LoginLocked,
            target: format!("user:{name}"),
            outcome: Outcome::Denied,
            details: json!({ "failures": failures, "locked_until": crate::clock::format_ms(until) }),
        };
        tx.append_at(ctx, event, now).await?;
    }
    tx.commit().await?;
    if locked_until.is_some() {
        tracing::warn!(alert = true, user = %name, failures, client = %ctx.client_addr, "ALERT: account locked after repeated failed logins");
    }
    Ok(())
}

async fn audit_failure(
    state: &AppState,
    ctx: &Context,
    name: &str,
    why: Why,
    failures: u32,
    now: i64,
) -> Result<(), ApiError> {
    let mut tx = AuditTx::begin(&state.store, &state.audit).await?;
    tx.append_at(ctx, failure_event(name, why, failures), now)
        .await?;
    tx.commit().await?;
    Ok(())
}

fn failure_event(name: &str, why: Why, failures: u32) -> Event {
    // A name that matches no account is not recorded: people type passwords into the name
    // field. Known names are bounded and stripped of control characters.
    let target = match why {
        Why::UnknownUser => "user:(unknown)".to_owned(),
        _ => format!(
            "user:{}",
            name.chars()
                .filter(|c| !c.is_control())
                .take(64)
                .collect::<String>()
        ),
    };
    Event {
        actor: "anonymous".into(),
        action: Action::LoginFailed,
        target,
        outcome: Outcome::Denied,
        details: json!({ "reason": why.as_str(), "failures": failures }),
    }
}

/// `POST /api/v1/logout`: ends the calling session.
pub async fn logout(
    state: &AppState,
    ctx: &Context,
    session_id: &str,
    who: &str,
) -> Result<(), ApiError> {
    let now = clock::now_ms();
    let mut tx = AuditTx::begin(&state.store, &state.audit).await?;
    sqlx::query("UPDATE sessions SET revoked_at_ms = ? WHERE id = ? AND revoked_at_ms IS NULL")
        .bind(now)
        .bind(session_id)
        .execute(tx.conn())
        .await?;
    let event = Event {
        actor: who.to_owned(),
        action: Action::Logout,
        target: format!("session:{session_id}"),
        outcome: Outcome::Success,
        details: json!({}),
    };
    tx.append_at(ctx, event, now).await?;
    tx.commit().await?;
    state.auth.forget(session_id);
    Ok(())
}
