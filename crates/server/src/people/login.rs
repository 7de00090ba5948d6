//! Password + TOTP logins and sessions (AUTH-1, AUTH-2, AUTH-3, SEC-5).
//!
//! Every failure looks the same to the caller — unknown name, wrong password, wrong code,
//! suspended or locked account — and the same Argon2id work happens for unknown names (a
//! dummy verification), so neither the answer nor its timing reveals an account. Failures
//! count towards a lockout with exponential backoff, audited, and alerted when it starts.
//! Argon2 work is bounded by a permit pool so logins cannot exhaust the CPU.

use std::time::Duration;

use portcullis_core::Role;
use portcullis_identity::{TotpSecret, find_match};
use portcullis_proto::people::{LoginRequest, LoginResponse};
use serde_json::json;
use sqlx::Row;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::AppState;
use crate::audit::{Action, AuditTx, Context, Event, Outcome};
use crate::auth::{self, DEVICE_PREFIX, SESSION_PREFIX};
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

pub(crate) struct Account {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) role: String,
    pub(crate) password_hash: Option<String>,
    pub(crate) totp_sealed: Option<Vec<u8>>,
    pub(crate) totp_last_step: Option<i64>,
    pub(crate) failed: u32,
    pub(crate) last_failed_ms: Option<i64>,
    pub(crate) suspended: bool,
}

/// The account named `name`, or with id `id`.
pub(crate) async fn account(
    state: &AppState,
    by_name: Option<&str>,
    by_id: Option<&str>,
) -> Result<Option<Account>, ApiError> {
    let row = sqlx::query(
        "SELECT id, name, role, password_hash, totp_sealed, totp_last_step, failed_logins, last_failed_at_ms, suspended_at_ms FROM users WHERE name = ? OR id = ?",
    )
    .bind(by_name)
    .bind(by_id)
    .fetch_optional(state.store.reader())
    .await?;
    let Some(r) = row else { return Ok(None) };
    Ok(Some(Account {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        role: r.try_get(2)?,
        password_hash: r.try_get(3)?,
        totp_sealed: r.try_get(4)?,
        totp_last_step: r.try_get(5)?,
        failed: u32::try_from(r.try_get::<i64, _>(6)?).unwrap_or(u32::MAX),
        last_failed_ms: r.try_get(7)?,
        suspended: r.try_get::<Option<i64>, _>(8)?.is_some(),
    }))
}

impl Account {
    pub(crate) fn role(&self) -> Result<Role, ApiError> {
        self.role
            .parse()
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("{e}")))
    }

    pub(crate) fn locked(&self, state: &AppState, now: i64) -> bool {
        state
            .people
            .lockout
            .is_locked(self.failed, self.last_failed_ms.unwrap_or(0), now)
    }
}

/// What a login or step-up failed on, for the audit log only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    UnknownUser,
    Locked,
    Suspended,
    Password,
    MfaMissing,
    MfaWrong,
    MfaReplayed,
    MfaNotEnrolled,
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
            Why::MfaNotEnrolled => "mfa_not_enrolled",
        }
    }
}

/// A second factor that checked out, to be spent in the transaction that acts on it.
#[derive(Debug, Clone)]
pub(crate) enum Factor {
    /// A TOTP code of this time step.
    Totp(u64),
    /// An unused recovery code with this hash.
    Recovery([u8; 32]),
    /// A trusted device (login only).
    Device,
}

impl Factor {
    fn as_str(&self) -> &'static str {
        match self {
            Factor::Totp(_) => "totp",
            Factor::Recovery(_) => "recovery_code",
            Factor::Device => "trusted_device",
        }
    }
}

/// Checks a TOTP code or a recovery code against an account with TOTP enrolled. `Ok(None)`
/// when neither was given.
pub(crate) async fn check_code(
    state: &AppState,
    account: &Account,
    code: Option<&str>,
    recovery_code: Option<&str>,
    now: i64,
) -> Result<Result<Option<Factor>, Why>, ApiError> {
    let Some(sealed) = &account.totp_sealed else {
        return Ok(Err(Why::MfaNotEnrolled));
    };
    if let Some(code) = code {
        let secret = state
            .people
            .open_totp(&account.id, sealed)
            .map_err(ApiError::Internal)?;
        let secret = TotpSecret::from_bytes(&secret).map_err(|e| ApiError::Internal(e.into()))?;
        let last = account.totp_last_step.and_then(|s| u64::try_from(s).ok());
        return Ok(
            match secret.verify(code.trim(), (now / 1000) as u64, last) {
                Ok(step) => Ok(Some(Factor::Totp(step))),
                Err(portcullis_identity::TotpError::Replayed) => Err(Why::MfaReplayed),
                Err(_) => Err(Why::MfaWrong),
            },
        );
    }
    if let Some(code) = recovery_code {
        let hashes = unused_recovery_hashes(state, &account.id).await?;
        return Ok(match find_match(code, &hashes) {
            Some(i) => Ok(Some(Factor::Recovery(hashes[i]))),
            None => Err(Why::MfaWrong),
        });
    }
    Ok(Ok(None))
}

/// Spends a checked factor in `tx`: the TOTP step moves forward, or the recovery code is
/// marked used. `false` when a racing request spent it first (AUTH-2).
pub(crate) async fn spend(
    tx: &mut AuditTx,
    user_id: &str,
    factor: &Factor,
    now: i64,
) -> Result<bool, ApiError> {
    let done = match factor {
        Factor::Totp(step) => sqlx::query(
            "UPDATE users SET totp_last_step = ? WHERE id = ? AND (totp_last_step IS NULL OR totp_last_step < ?)",
        )
        .bind(*step as i64)
        .bind(user_id)
        .bind(*step as i64)
        .execute(tx.conn().await?)
        .await?
        .rows_affected(),
        Factor::Recovery(hash) => sqlx::query(
            "UPDATE recovery_codes SET used_at_ms = ? WHERE user_id = ? AND code_hash = ? AND used_at_ms IS NULL",
        )
        .bind(now)
        .bind(user_id)
        .bind(hash.to_vec())
        .execute(tx.conn().await?)
        .await?
        .rows_affected(),
        Factor::Device => 1,
    };
    Ok(done == 1)
}

/// Replaces a user's recovery codes inside `tx`; only their hashes are stored.
pub(crate) async fn store_recovery_codes(
    tx: &mut AuditTx,
    user_id: &str,
    codes: &[String],
) -> Result<(), ApiError> {
    sqlx::query("DELETE FROM recovery_codes WHERE user_id = ?")
        .bind(user_id)
        .execute(tx.conn().await?)
        .await?;
    for code in codes {
        sqlx::query("INSERT INTO recovery_codes (user_id, code_hash) VALUES (?, ?)")
            .bind(user_id)
            .bind(portcullis_identity::hash_code(code).to_vec())
            .execute(tx.conn().await?)
            .await?;
    }
    Ok(())
}

/// The account behind a session, for actions only a person in a session may take.
pub(crate) async fn session_account(
    state: &AppState,
    who: &crate::auth::UserPrincipal,
    not_a_session: &'static str,
) -> Result<Account, ApiError> {
    if !who.session {
        return Err(ApiError::bad_request(not_a_session));
    }
    account(state, None, Some(&who.user_id))
        .await?
        .ok_or(ApiError::Unauthenticated)
}

/// Verifies a password on the blocking pool under a permit; unknown accounts (`None`) verify
/// against the dummy hash, the same work.
pub(crate) async fn verify_password(
    state: &AppState,
    stored: Option<String>,
    password: Zeroizing<String>,
) -> Result<bool, ApiError> {
    argon2(state, move |state| {
        Ok(state.people.hasher.verify(stored.as_deref(), &password))
    })
    .await
}

/// `POST /api/v1/login`.
pub async fn login(
    state: &AppState,
    ctx: &Context,
    body: LoginRequest,
) -> Result<LoginResponse, ApiError> {
    let now = clock::now_ms();
    let account = account(state, Some(&body.name), None).await?;
    // The same Argon2 work for every outcome: unknown users verify against a dummy hash.
    let stored = account.as_ref().and_then(|a| a.password_hash.clone());
    let verified = verify_password(state, stored, Zeroizing::new(body.password)).await?;
    let Some(account) = account else {
        fail(state, ctx, LOGIN, &body.name, None, Why::UnknownUser, now).await?;
        return Err(refused());
    };
    if account.locked(state, now) {
        // A locked account refuses even the right password, and does not count it.
        audit_failure(
            state,
            ctx,
            LOGIN,
            &body.name,
            Why::Locked,
            account.failed,
            now,
        )
        .await?;
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
        fail(state, ctx, LOGIN, &body.name, Some(&account), why, now).await?;
        return Err(refused());
    }
    let role = account.role()?;
    let mut factor = None;
    if account.totp_sealed.is_some() {
        match check_code(
            state,
            &account,
            body.code.as_deref(),
            body.recovery_code.as_deref(),
            now,
        )
        .await?
        {
            Ok(Some(f)) => factor = Some(f),
            Ok(None) => {
                if let Some(device) = &body.device_token
                    && trusted_device(state, &account.id, device, now).await?
                {
                    factor = Some(Factor::Device);
                } else {
                    // The password was right; say that a second factor is needed, without
                    // counting a failure.
                    audit_failure(
                        state,
                        ctx,
                        LOGIN,
                        &body.name,
                        Why::MfaMissing,
                        account.failed,
                        now,
                    )
                    .await?;
                    return Err(ApiError::MfaRequired);
                }
            }
            Err(why) => {
                fail(state, ctx, LOGIN, &body.name, Some(&account), why, now).await?;
                return Err(refused());
            }
        }
    } else if state.config.people.mfa_required(role) {
        // A role that needs MFA cannot sign in before enrolling (AUTH-2).
        audit_failure(
            state,
            ctx,
            LOGIN,
            &body.name,
            Why::MfaNotEnrolled,
            account.failed,
            now,
        )
        .await?;
        return Err(ApiError::Forbidden {
            reason: "mfa_enrolment_required",
        });
    }
    let minted = auth::mint(SESSION_PREFIX);
    let remember_days = state.config.people.trusted_device_days;
    let device = (body.remember_device
        && remember_days > 0
        && matches!(factor, Some(Factor::Totp(_) | Factor::Recovery(_))))
    .then(|| auth::mint(DEVICE_PREFIX));
    let mut tx = AuditTx::begin(&state.store, &state.audit).await?;
    if let Some(f) = &factor
        && !spend(&mut tx, &account.id, f, now).await?
    {
        return Err(refused());
    }
    sqlx::query("UPDATE users SET failed_logins = 0, last_failed_at_ms = NULL WHERE id = ?")
        .bind(&account.id)
        .execute(tx.conn().await?)
        .await?;
    // A trusted device stands in for the code at login, never for step-up.
    let mfa_at = match factor {
        Some(Factor::Totp(_) | Factor::Recovery(_)) => Some(now),
        _ => None,
    };
    sqlx::query(
        "INSERT INTO sessions (id, user_id, secret_hash, created_at_ms, last_seen_at_ms, mfa_at_ms, client_addr) VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&minted.id)
    .bind(&account.id)
    .bind(minted.secret_hash.to_vec())
    .bind(now)
    .bind(now)
    .bind(mfa_at)
    .bind(&ctx.client_addr)
    .execute(tx.conn().await?)
    .await?;
    if let Some(d) = &device {
        sqlx::query(
            "INSERT INTO trusted_devices (id, user_id, secret_hash, created_at_ms, expires_at_ms) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&d.id)
        .bind(&account.id)
        .bind(d.secret_hash.to_vec())
        .bind(now)
        .bind(now + (remember_days as i64) * 86_400_000)
        .execute(tx.conn().await?)
        .await?;
    }
    let event = Event {
        actor: account.name.clone(),
        action: Action::LoginSucceeded,
        target: format!("user:{}", account.name),
        outcome: Outcome::Success,
        details: json!({
            "session": minted.id,
            "mfa": factor.as_ref().map_or("none", Factor::as_str),
            "device_remembered": device.as_ref().map(|d| d.id.clone()),
        }),
    };
    tx.append_at(ctx, event, now).await?;
    tx.commit().await?;
    let lifetime = state.config.sessions.absolute_lifetime_secs;
    Ok(LoginResponse {
        token: minted.secret,
        name: account.name,
        role,
        expires_at: crate::clock::format_ms(now + (lifetime as i64) * 1000),
        idle_timeout_secs: state.config.sessions.idle_timeout_secs,
        device_token: device.map(|d| d.secret),
    })
}

/// Whether `token` is a live trusted device of this user.
async fn trusted_device(
    state: &AppState,
    user_id: &str,
    token: &str,
    now: i64,
) -> Result<bool, ApiError> {
    let Some((DEVICE_PREFIX, id)) = auth::parse_bearer(token.trim()) else {
        return Ok(false);
    };
    let stored: Option<Vec<u8>> = sqlx::query_scalar(
        "SELECT secret_hash FROM trusted_devices WHERE id = ? AND user_id = ? AND revoked_at_ms IS NULL AND expires_at_ms > ?",
    )
    .bind(id)
    .bind(user_id)
    .bind(now)
    .fetch_optional(state.store.reader())
    .await?;
    Ok(stored.is_some_and(|s| {
        bool::from(
            s.as_slice()
                .ct_eq(auth::hash_secret(token.trim()).as_slice()),
        )
    }))
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

/// Who failed and at what: a login (anonymous until it succeeds), or a signed-in user's
/// step-up or password check.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attempt<'a> {
    pub(crate) action: Action,
    pub(crate) actor: &'a str,
}

pub(crate) const LOGIN: Attempt<'static> = Attempt {
    action: Action::LoginFailed,
    actor: "anonymous",
};

/// Counts a failure against a known account (the lockout) and audits it; an alert when the
/// failure starts a lock. Wrong codes count too, so a stolen session cannot guess its way
/// through step-up.
pub(crate) async fn fail(
    state: &AppState,
    ctx: &Context,
    attempt: Attempt<'_>,
    name: &str,
    account: Option<&Account>,
    why: Why,
    now: i64,
) -> Result<(), ApiError> {
    let Some(account) = account else {
        return audit_failure(state, ctx, attempt, name, why, 0, now).await;
    };
    let failures = account.failed.saturating_add(1);
    let mut tx = AuditTx::begin(&state.store, &state.audit).await?;
    sqlx::query("UPDATE users SET failed_logins = ?, last_failed_at_ms = ? WHERE id = ?")
        .bind(i64::from(failures))
        .bind(now)
        .bind(&account.id)
        .execute(tx.conn().await?)
        .await?;
    tx.append_at(ctx, failure_event(attempt, name, why, failures), now)
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
    // The lock raises an alert with its event (AUD-5).
    tx.commit().await?;
    Ok(())
}

pub(crate) async fn audit_failure(
    state: &AppState,
    ctx: &Context,
    attempt: Attempt<'_>,
    name: &str,
    why: Why,
    failures: u32,
    now: i64,
) -> Result<(), ApiError> {
    let mut tx = AuditTx::begin(&state.store, &state.audit).await?;
    tx.append_at(ctx, failure_event(attempt, name, why, failures), now)
        .await?;
    tx.commit().await?;
    Ok(())
}

fn failure_event(attempt: Attempt<'_>, name: &str, why: Why, failures: u32) -> Event {
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
        actor: attempt.actor.to_owned(),
        action: attempt.action,
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
        .execute(tx.conn().await?)
        .await?;
    let event = Event {
        actor: who.to_owned(),
        action: Action::Logout,
        target: format!("session:{session_id}"),
        outcome: Outcome::Success,
        details: json!({}),
    };
    tx.append_at(ctx, event, now).await?;
    let auth = state.clone();
    let session = session_id.to_owned();
    tx.commit_then(move || auth.auth.forget(&session)).await?;
    Ok(())
}
