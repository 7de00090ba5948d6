//! A person's own account: enrolment from an invitation, step-up, password change
//! (AUTH-1, AUTH-2, AUTH-4).

use portcullis_identity::{TotpSecret, check_strength, generate_codes};
use portcullis_proto::people::{
    EnrolRequest, EnrolResponse, PasswordChange, PasswordChanged, StepUpRequest, StepUpResponse,
};
use serde_json::json;
use sqlx::Row;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::login::{self, Attempt, Why};
use super::users::{Revoke, revoke_credentials};
use crate::AppState;
use crate::audit::{Action, AuditTx, Context, Event, Outcome};
use crate::auth::{self, ENROL_PREFIX, UserPrincipal};
use crate::clock;
use crate::error::ApiError;

/// `POST /api/v1/enrol`: the invitation's token sets the password of a user who has none (or
/// is presented with the current password after `reset-mfa`) and enrols TOTP with fresh
/// recovery codes. The token works once.
pub async fn enrol(
    state: &AppState,
    ctx: &Context,
    body: EnrolRequest,
) -> Result<EnrolResponse, ApiError> {
    let now = clock::now_ms();
    let token = body.enrol_token.trim();
    let refused = |reason: &'static str| async move {
        let event = Event {
            actor: "anonymous".into(),
            action: Action::EnrolFailed,
            target: "enrol".into(),
            outcome: Outcome::Denied,
            details: json!({ "reason": reason }),
        };
        crate::lifecycle::audit_only(state, ctx, event).await?;
        Err::<EnrolResponse, ApiError>(ApiError::Unauthenticated)
    };
    let Some((ENROL_PREFIX, invitation)) = auth::parse_bearer(token) else {
        return refused("malformed_token").await;
    };
    let row = sqlx::query(
        "SELECT e.secret_hash, e.expires_at_ms, u.id, u.name FROM enrolments e JOIN users u ON u.id = e.user_id WHERE e.id = ?",
    )
    .bind(invitation)
    .fetch_optional(state.store.reader())
    .await?;
    let Some(row) = row else {
        return refused("unknown_token").await;
    };
    let stored: Vec<u8> = row.try_get(0)?;
    let presented = auth::hash_secret(token);
    if !bool::from(stored.as_slice().ct_eq(presented.as_slice())) {
        return refused("wrong_token").await;
    }
    if row.try_get::<i64, _>(1)? <= now {
        return refused("expired_token").await;
    }
    let user_id: String = row.try_get(2)?;
    let account = login::account(state, None, Some(&user_id))
        .await?
        .ok_or(ApiError::NotFound)?;
    if account.suspended {
        return refused("suspended").await;
    }
    let role = account.role()?;
    let required = state.config.people.mfa_required(role);
    if required && body.mfa == Some(false) {
        return Err(ApiError::bad_request(format!(
            "the {role} role requires MFA (people.mfa_required_roles)"
        )));
    }
    let password = Zeroizing::new(body.password);
    let new_hash = match &account.password_hash {
        None => {
            check_strength(&password, &[&account.name])
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            Some(login::hash_password(state, password).await?)
        }
        Some(current) => {
            if account.locked(state, now) {
                return refused("locked").await;
            }
            let attempt = Attempt {
                action: Action::EnrolFailed,
                actor: "anonymous",
            };
            if !login::verify_password(state, Some(current.clone()), password).await? {
                login::fail(
                    state,
                    ctx,
                    attempt,
                    &account.name,
                    Some(&account),
                    Why::Password,
                    now,
                )
                .await?;
                return Err(ApiError::Unauthenticated);
            }
            None
        }
    };
    let totp = (required || body.mfa.unwrap_or(true)).then(TotpSecret::generate);
    let sealed = totp
        .as_ref()
        .map(|t| state.people.seal_totp(&account.id, t.as_bytes()))
        .transpose()
        .map_err(ApiError::Internal)?;
    let codes = if totp.is_some() {
        generate_codes(portcullis_identity::RECOVERY_CODE_COUNT)
    } else {
        Vec::new()
    };
    let mut tx = AuditTx::begin(&state.store, &state.audit).await?;
    let spent = sqlx::query("DELETE FROM enrolments WHERE id = ? AND secret_hash = ?")
        .bind(invitation)
        .bind(presented.to_vec())
        .execute(tx.conn().await?)
        .await?
        .rows_affected();
    if spent != 1 {
        return Err(ApiError::Unauthenticated);
    }
    if let Some(hash) = &new_hash {
        sqlx::query("UPDATE users SET password_hash = ?, password_changed_at_ms = ? WHERE id = ?")
            .bind(hash.as_str())
            .bind(now)
            .bind(&account.id)
            .execute(tx.conn().await?)
            .await?;
    }
    sqlx::query(
        "UPDATE users SET totp_sealed = ?, totp_last_step = NULL, failed_logins = 0, last_failed_at_ms = NULL WHERE id = ?",
    )
    .bind(&sealed)
    .bind(&account.id)
    .execute(tx.conn().await?)
    .await?;
    login::store_recovery_codes(&mut tx, &account.id, &codes).await?;
    let event = Event {
        actor: account.name.clone(),
        action: Action::UserEnrolled,
        target: format!("user:{}", account.name),
        outcome: Outcome::Success,
        details: json!({
            "password_set": new_hash.is_some(),
            "mfa": if totp.is_some() { "totp" } else { "none" },
            "recovery_codes": codes.len(),
        }),
    };
    tx.append_at(ctx, event, now).await?;
    tx.commit().await?;
    let otpauth_uri = totp
        .as_ref()
        .map(|t| t.otpauth_uri(portcullis_identity::totp::TOTP_ISSUER, &account.name))
        .transpose()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(EnrolResponse {
        name: account.name,
        role,
        otpauth_uri,
        totp_secret: totp.map(|t| t.to_base32()),
        recovery_codes: codes,
    })
}

/// `POST /api/v1/step-up`: a fresh TOTP or recovery code marks the session as recently
/// verified, for `people.step_up_secs` (AUTH-2). Wrong codes count towards the lockout.
pub async fn step_up(
    state: &AppState,
    ctx: &Context,
    who: &UserPrincipal,
    body: StepUpRequest,
) -> Result<StepUpResponse, ApiError> {
    let account = login::session_account(
        state,
        who,
        "step-up applies to sessions; sign in with `portcullis login`",
    )
    .await?;
    let now = clock::now_ms();
    let actor = who.display();
    let attempt = Attempt {
        action: Action::StepUpFailed,
        actor: &actor,
    };
    if account.totp_sealed.is_none() {
        login::audit_failure(
            state,
            ctx,
            attempt,
            &account.name,
            Why::MfaNotEnrolled,
            account.failed,
            now,
        )
        .await?;
        return Err(ApiError::Forbidden {
            reason: "mfa_not_enrolled",
        });
    }
    if account.locked(state, now) {
        login::audit_failure(
            state,
            ctx,
            attempt,
            &account.name,
            Why::Locked,
            account.failed,
            now,
        )
        .await?;
        return Err(ApiError::Forbidden {
            reason: "step_up_failed",
        });
    }
    let factor = match login::check_code(
        state,
        &account,
        body.code.as_deref(),
        body.recovery_code.as_deref(),
        now,
    )
    .await?
    {
        Ok(Some(f)) => f,
        Ok(None) => {
            return Err(ApiError::bad_request(
                "give the code from your authenticator app, or a recovery code",
            ));
        }
        Err(why) => {
            login::fail(state, ctx, attempt, &account.name, Some(&account), why, now).await?;
            return Err(ApiError::Forbidden {
                reason: "step_up_failed",
            });
        }
    };
    let mut tx = AuditTx::begin(&state.store, &state.audit).await?;
    if !login::spend(&mut tx, &account.id, &factor, now).await? {
        return Err(ApiError::Forbidden {
            reason: "step_up_failed",
        });
    }
    sqlx::query("UPDATE users SET failed_logins = 0, last_failed_at_ms = NULL WHERE id = ?")
        .bind(&account.id)
        .execute(tx.conn().await?)
        .await?;
    sqlx::query("UPDATE sessions SET mfa_at_ms = ? WHERE id = ? AND revoked_at_ms IS NULL")
        .bind(now)
        .bind(&who.token_id)
        .execute(tx.conn().await?)
        .await?;
    let event = Event {
        actor,
        action: Action::StepUpSucceeded,
        target: format!("session:{}", who.token_id),
        outcome: Outcome::Success,
        details: json!({ "mfa": match factor { login::Factor::Recovery(_) => "recovery_code", _ => "totp" } }),
    };
    tx.append_at(ctx, event, now).await?;
    let auth = state.clone();
    let token_id = who.token_id.clone();
    tx.commit_then(move || auth.auth.forget(&token_id)).await?;
    let window = (state.config.people.step_up_secs as i64) * 1000;
    Ok(StepUpResponse {
        valid_until: clock::format_ms(now + window),
    })
}

/// `POST /api/v1/password` (AUTH-4): the current password, a new one that passes the strength
/// check; every other session, every API token and every trusted device of the user ends in
/// the same transaction.
pub async fn change_password(
    state: &AppState,
    ctx: &Context,
    who: &UserPrincipal,
    body: PasswordChange,
) -> Result<PasswordChanged, ApiError> {
    let account = login::session_account(
        state,
        who,
        "sign in with `portcullis login` to change your password",
    )
    .await?;
    let now = clock::now_ms();
    let actor = who.display();
    let attempt = Attempt {
        action: Action::PasswordChangeFailed,
        actor: &actor,
    };
    let current = Zeroizing::new(body.current_password);
    let new = Zeroizing::new(body.new_password);
    if account.locked(state, now) {
        return Err(ApiError::Forbidden {
            reason: "password_incorrect",
        });
    }
    if !login::verify_password(state, account.password_hash.clone(), current.clone()).await? {
        login::fail(
            state,
            ctx,
            attempt,
            &account.name,
            Some(&account),
            Why::Password,
            now,
        )
        .await?;
        return Err(ApiError::Forbidden {
            reason: "password_incorrect",
        });
    }
    if *new == *current {
        return Err(ApiError::bad_request(
            "the new password must differ from the current one",
        ));
    }
    check_strength(&new, &[&account.name]).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let hash = login::hash_password(state, new).await?;
    let mut tx = AuditTx::begin(&state.store, &state.audit).await?;
    sqlx::query(
        "UPDATE users SET password_hash = ?, password_changed_at_ms = ?, failed_logins = 0, last_failed_at_ms = NULL WHERE id = ?",
    )
    .bind(hash.as_str())
    .bind(now)
    .bind(&account.id)
    .execute(tx.conn().await?)
    .await?;
    let revoked = revoke_credentials(
        &mut tx,
        &account.id,
        Revoke {
            sessions: true,
            keep_session: Some(&who.token_id),
            tokens: true,
            devices: true,
        },
        now,
    )
    .await?;
    let event = Event {
        actor,
        action: Action::PasswordChanged,
        target: format!("user:{}", account.name),
        outcome: Outcome::Success,
        details: json!({
            "sessions_revoked": revoked.sessions,
            "tokens_revoked": revoked.tokens,
            "devices_revoked": revoked.devices,
        }),
    };
    tx.append_at(ctx, event, now).await?;
    // AUTH-7: the other sessions and tokens leave the cache once committed, even if the
    // caller is gone by then.
    let auth = state.clone();
    let (user_id, keep) = (account.id.clone(), who.token_id.clone());
    tx.commit_then(move || auth.auth.forget_user(&user_id, Some(&keep)))
        .await?;
    Ok(PasswordChanged {
        sessions_revoked: revoked.sessions,
        tokens_revoked: revoked.tokens,
        devices_revoked: revoked.devices,
    })
}
