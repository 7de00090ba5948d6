//! `POST /api/v1/bootstrap` (SEC-2): the one-time setup token creates the first admin, with
//! a password that passes the strength check (AUTH-1) and an enrolled TOTP secret with
//! recovery codes (AUTH-2). The token works once; afterwards the route only answers 409.

use portcullis_identity::{TotpSecret, check_strength, generate_codes};
use portcullis_proto::people::{BootstrapRequest, BootstrapResponse};
use serde_json::json;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::SETUP_TOKEN_HASH;
use crate::AppState;
use crate::audit::{Action, AuditTx, Context, Event, Outcome};
use crate::auth::hash_secret;
use crate::clock;
use crate::error::ApiError;

pub async fn bootstrap(
    state: &AppState,
    ctx: &Context,
    body: BootstrapRequest,
) -> Result<BootstrapResponse, ApiError> {
    let stored: Option<Vec<u8>> = sqlx::query_scalar("SELECT value FROM settings WHERE key = ?")
        .bind(SETUP_TOKEN_HASH)
        .fetch_optional(state.store.reader())
        .await?;
    let presented = hash_secret(body.setup_token.trim());
    let valid = stored
        .as_deref()
        .is_some_and(|s| bool::from(s.ct_eq(presented.as_slice())));
    if !valid {
        let event = Event {
            actor: "anonymous".into(),
            action: Action::BootstrapFailed,
            target: "bootstrap".into(),
            outcome: Outcome::Denied,
            details: json!({ "reason": if stored.is_some() { "wrong_setup_token" } else { "already_bootstrapped" } }),
        };
        crate::lifecycle::audit_only(state, ctx, event).await?;
        return Err(if stored.is_some() {
            ApiError::Unauthenticated
        } else {
            ApiError::Conflict {
                detail: "this server is already set up; sign in instead".into(),
            }
        });
    }
    if !crate::principals::valid_name(&body.name) {
        return Err(ApiError::bad_request(
            "name must be 1-64 characters of letters, digits, '-', '_', '.', '@'",
        ));
    }
    let password = Zeroizing::new(body.password);
    check_strength(&password, &[&body.name]).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let hash = super::login::hash_password(state, password).await?;
    let mut user_id = uuid::Uuid::new_v4().to_string();
    let totp = TotpSecret::generate();
    let sealed = state
        .people
        .seal_totp(&user_id, totp.as_bytes())
        .map_err(ApiError::Internal)?;
    let codes = generate_codes(portcullis_identity::RECOVERY_CODE_COUNT);
    let now = clock::now_ms();
    let mut tx = AuditTx::begin(&state.store, &state.audit).await?;
    // The token is consumed in the same transaction that creates the admin: a race between
    // two bootstraps leaves exactly one winner.
    let consumed = sqlx::query("DELETE FROM settings WHERE key = ? AND value = ?")
        .bind(SETUP_TOKEN_HASH)
        .bind(presented.to_vec())
        .execute(tx.conn().await?)
        .await?
        .rows_affected();
    if consumed != 1 {
        return Err(ApiError::Conflict {
            detail: "this server is already set up; sign in instead".into(),
        });
    }
    // An admin declared in [[users]] who has no password yet becomes the first admin;
    // any other existing name is taken.
    let declared: Option<String> = sqlx::query_scalar(
        "SELECT id FROM users WHERE name = ? AND source = 'config' AND role = 'admin' AND password_hash IS NULL AND suspended_at_ms IS NULL",
    )
    .bind(&body.name)
    .fetch_optional(tx.conn().await?)
    .await?;
    let written = match declared {
        Some(id) => {
            let sealed = state
                .people
                .seal_totp(&id, totp.as_bytes())
                .map_err(ApiError::Internal)?;
            let done = sqlx::query(
                "UPDATE users SET password_hash = ?, totp_sealed = ?, password_changed_at_ms = ? WHERE id = ?",
            )
            .bind(hash.as_str())
            .bind(&sealed)
            .bind(now)
            .bind(&id)
            .execute(tx.conn().await?)
            .await?
            .rows_affected();
            user_id = id;
            done
        }
        None => sqlx::query(
            "INSERT INTO users (id, name, role, created_at_ms, password_hash, totp_sealed, password_changed_at_ms, source) VALUES (?, ?, 'admin', ?, ?, ?, ?, 'bootstrap') ON CONFLICT(name) DO NOTHING",
        )
        .bind(&user_id)
        .bind(&body.name)
        .bind(now)
        .bind(hash.as_str())
        .bind(&sealed)
        .bind(now)
        .execute(tx.conn().await?)
        .await?
        .rows_affected(),
    };
    if written != 1 {
        return Err(ApiError::Conflict {
            detail: format!(
                "a user named {} exists already; choose another name",
                body.name
            ),
        });
    }
    super::login::store_recovery_codes(&mut tx, &user_id, &codes).await?;
    let event = Event {
        actor: format!("setup-token ({})", body.name),
        action: Action::BootstrapCompleted,
        target: format!("user:{}", body.name),
        outcome: Outcome::Success,
        details: json!({ "role": "admin", "mfa": "totp", "recovery_codes": codes.len() }),
    };
    tx.append_at(ctx, event, now).await?;
    tx.commit().await?;
    let _ = std::fs::remove_file(state.config.setup_token_file());
    tracing::info!(user = %body.name, "bootstrap complete: the first admin exists; the setup token is spent");
    let otpauth_uri = totp
        .otpauth_uri(portcullis_identity::totp::TOTP_ISSUER, &body.name)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(BootstrapResponse {
        name: body.name,
        otpauth_uri,
        totp_secret: totp.to_base32(),
        recovery_codes: codes,
    })
}
