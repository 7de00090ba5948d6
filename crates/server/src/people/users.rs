//! Users as API and config: add, list, invite, suspend, unsuspend, reset MFA (AUTH-7, AZ-1),
//! and `[[users]]` from the configuration file, applied at start.
//!
//! Every change and its audit events commit in one transaction. A suspension revokes every
//! session, token, trusted device and invitation of the user and cancels their requests that
//! have not reached an agent, all at once; the authentication cache forgets the user in the
//! same call, so the very next request is refused.

use portcullis_core::{RequestState, Role};
use portcullis_proto::people::{Invite, Suspended, UserCreated, UserSource, UserView};
use serde_json::json;
use sqlx::Row;
use uuid::Uuid;

use crate::AppState;
use crate::audit::{Action, AuditTx, Context, Event, Outcome};
use crate::auth::{self, ENROL_PREFIX};
use crate::clock;
use crate::config::{AdminCapMode, UserDecl};
use crate::dispatch::Finished;
use crate::error::ApiError;
use crate::principals::valid_name;

/// What [`revoke_credentials`] ended.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Revoked {
    pub(crate) sessions: u64,
    pub(crate) tokens: u64,
    pub(crate) devices: u64,
}

/// Which credentials of a user to revoke.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Revoke<'a> {
    pub(crate) sessions: bool,
    /// The caller's own session, kept.
    pub(crate) keep_session: Option<&'a str>,
    pub(crate) tokens: bool,
    pub(crate) devices: bool,
}

/// Revokes a user's credentials inside `tx`. The caller must call
/// `state.auth.forget_user` after the commit.
pub(crate) async fn revoke_credentials(
    tx: &mut AuditTx,
    user_id: &str,
    what: Revoke<'_>,
    now: i64,
) -> Result<Revoked, ApiError> {
    let mut done = Revoked::default();
    if what.sessions {
        done.sessions = sqlx::query(
            "UPDATE sessions SET revoked_at_ms = ? WHERE user_id = ? AND revoked_at_ms IS NULL AND (? IS NULL OR id <> ?)",
        )
        .bind(now)
        .bind(user_id)
        .bind(what.keep_session)
        .bind(what.keep_session)
        .execute(tx.conn().await?)
        .await?
        .rows_affected();
    }
    if what.tokens {
        done.tokens = sqlx::query(
            "UPDATE api_tokens SET revoked_at_ms = ? WHERE owner_id = ? AND revoked_at_ms IS NULL AND expires_at_ms > ?",
        )
        .bind(now)
        .bind(user_id)
        .bind(now)
        .execute(tx.conn().await?)
        .await?
        .rows_affected();
    }
    if what.devices {
        done.devices = sqlx::query(
            "UPDATE trusted_devices SET revoked_at_ms = ? WHERE user_id = ? AND revoked_at_ms IS NULL",
        )
        .bind(now)
        .bind(user_id)
        .execute(tx.conn().await?)
        .await?
        .rows_affected();
    }
    Ok(done)
}

struct Target {
    id: String,
    role: Role,
    suspended: bool,
    source: String,
}

async fn target(state: &AppState, name: &str) -> Result<Target, ApiError> {
    let row = sqlx::query("SELECT id, role, suspended_at_ms, source FROM users WHERE name = ?")
        .bind(name)
        .fetch_optional(state.store.reader())
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Target {
        id: row.try_get(0)?,
        role: parse_role(row.try_get(1)?)?,
        suspended: row.try_get::<Option<i64>, _>(2)?.is_some(),
        source: row.try_get(3)?,
    })
}

fn parse_role(text: String) -> Result<Role, ApiError> {
    text.parse()
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("stored role: {e}")))
}

async fn active_admins(tx: &mut AuditTx) -> Result<u32, ApiError> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM users WHERE role = 'admin' AND suspended_at_ms IS NULL",
    )
    .fetch_one(tx.conn().await?)
    .await?;
    Ok(u32::try_from(n).unwrap_or(u32::MAX))
}

/// AZ-1: one more active admin. Refused over the cap, or allowed with an audited warning.
async fn check_admin_cap(
    state: &AppState,
    tx: &mut AuditTx,
    ctx: &Context,
    actor: &str,
    name: &str,
    now: i64,
) -> Result<(), ApiError> {
    let max = state.config.people.max_admins;
    if max == 0 {
        return Ok(());
    }
    let after = active_admins(tx).await?.saturating_add(1);
    if after <= max {
        return Ok(());
    }
    match state.config.people.admin_cap {
        AdminCapMode::Refuse => Err(ApiError::Conflict {
            detail: format!(
                "{after} active admins would exceed people.max_admins = {max}; suspend an admin first or raise the cap"
            ),
        }),
        AdminCapMode::Warn => {
            let event = Event {
                actor: actor.to_owned(),
                action: Action::AdminCapExceeded,
                target: format!("user:{name}"),
                outcome: Outcome::Success,
                details: json!({ "active_admins": after, "max_admins": max }),
            };
            // Raises an alert with the event (AUD-5).
            tx.append_at(ctx, event, now).await?;
            Ok(())
        }
    }
}

/// Opens (or replaces) the invitation of a user inside `tx`; returns the token, shown once.
async fn invite_in(
    state: &AppState,
    tx: &mut AuditTx,
    ctx: &Context,
    actor: &str,
    user_id: &str,
    name: &str,
    now: i64,
) -> Result<Invite, ApiError> {
    let minted = auth::mint(ENROL_PREFIX);
    let expires = now + (state.config.people.invite_ttl_hours as i64) * 3_600_000;
    sqlx::query("DELETE FROM enrolments WHERE user_id = ?")
        .bind(user_id)
        .execute(tx.conn().await?)
        .await?;
    sqlx::query(
        "INSERT INTO enrolments (id, user_id, secret_hash, created_by, created_at_ms, expires_at_ms) VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(&minted.id)
    .bind(user_id)
    .bind(minted.secret_hash.to_vec())
    .bind(actor)
    .bind(now)
    .bind(expires)
    .execute(tx.conn().await?)
    .await?;
    let event = Event {
        actor: actor.to_owned(),
        action: Action::UserInvited,
        target: format!("user:{name}"),
        outcome: Outcome::Success,
        details: json!({ "invitation": minted.id, "expires_at": clock::format_ms(expires) }),
    };
    tx.append_at(ctx, event, now).await?;
    Ok(Invite {
        name: name.to_owned(),
        enrol_token: minted.secret,
        expires_at: clock::format_ms(expires),
    })
}

/// `POST /api/v1/users`: a new user without a password, and the invitation that sets one.
pub async fn add(
    state: &AppState,
    ctx: &Context,
    actor: &str,
    name: &str,
    role: Role,
) -> Result<UserCreated, ApiError> {
    if !valid_name(name) {
        return Err(ApiError::bad_request(
            "user name must be 1-64 characters of letters, digits, '-', '_', '.', '@'",
        ));
    }
    let now = clock::now_ms();
    let id = Uuid::new_v4().to_string();
    let mut tx = AuditTx::begin(&state.store, &state.audit).await?;
    if role == Role::Admin {
        check_admin_cap(state, &mut tx, ctx, actor, name, now).await?;
    }
    let inserted = sqlx::query(
        "INSERT INTO users (id, name, role, created_at_ms, source) VALUES (?, ?, ?, ?, 'api') ON CONFLICT(name) DO NOTHING",
    )
    .bind(&id)
    .bind(name)
    .bind(role.as_str())
    .bind(now)
    .execute(tx.conn().await?)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Err(ApiError::Conflict {
            detail: format!("a user named {name} already exists"),
        });
    }
    let event = Event {
        actor: actor.to_owned(),
        action: Action::UserCreated,
        target: format!("user:{name}"),
        outcome: Outcome::Success,
        details: json!({ "role": role.as_str(), "source": "api" }),
    };
    tx.append_at(ctx, event, now).await?;
    let invite = invite_in(state, &mut tx, ctx, actor, &id, name, now).await?;
    tx.commit().await?;
    let info = view(state, name).await?;
    Ok(UserCreated { info, invite })
}

/// `POST /api/v1/users/{name}/invite`: a new invitation (the old one, if any, stops working).
/// For users from `[[users]]`, and for anyone whose invitation expired.
pub async fn invite(
    state: &AppState,
    ctx: &Context,
    actor: &str,
    name: &str,
) -> Result<Invite, ApiError> {
    let t = target(state, name).await?;
    if t.suspended {
        return Err(ApiError::InvalidState {
            detail: format!("{name} is suspended; unsuspend first"),
        });
    }
    let now = clock::now_ms();
    let mut tx = AuditTx::begin(&state.store, &state.audit).await?;
    let invite = invite_in(state, &mut tx, ctx, actor, &t.id, name, now).await?;
    tx.commit().await?;
    Ok(invite)
}

/// Suspends inside `tx`: the flag, every credential, the invitation, and the requests that
/// have not reached an agent (AUTH-7). Returns the counts and the cancelled request ids, to
/// be announced to waiters after the commit.
pub(crate) async fn suspend_in(
    tx: &mut AuditTx,
    ctx: &Context,
    actor: &str,
    user_id: &str,
    name: &str,
    reason: Option<&str>,
    now: i64,
) -> Result<(Suspended, Vec<Uuid>), ApiError> {
    sqlx::query("UPDATE users SET suspended_at_ms = ?, suspended_reason = ? WHERE id = ?")
        .bind(now)
        .bind(reason)
        .bind(user_id)
        .execute(tx.conn().await?)
        .await?;
    let revoked = revoke_credentials(
        tx,
        user_id,
        Revoke {
            sessions: true,
            keep_session: None,
            tokens: true,
            devices: true,
        },
        now,
    )
    .await?;
    sqlx::query("DELETE FROM enrolments WHERE user_id = ?")
        .bind(user_id)
        .execute(tx.conn().await?)
        .await?;
    let open: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, state FROM requests WHERE requester_user_id = ? AND state IN ('pending_approval', 'approved')",
    )
    .bind(user_id)
    .fetch_all(tx.conn().await?)
    .await?;
    let mut cancelled = Vec::with_capacity(open.len());
    for (id, from) in open {
        let id = Uuid::parse_str(&id).map_err(|e| ApiError::Internal(e.into()))?;
        crate::lifecycle::end_undispatched(tx, id, RequestState::Cancelled, now).await?;
        let event = Event {
            actor: actor.to_owned(),
            action: Action::RequestCancelled,
            target: format!("request:{id}"),
            outcome: Outcome::Success,
            details: json!({ "from": from, "reason": "requester_suspended" }),
        };
        tx.append_at(ctx, event, now).await?;
        cancelled.push(id);
    }
    let outcome = Suspended {
        sessions_revoked: revoked.sessions,
        tokens_revoked: revoked.tokens,
        requests_cancelled: cancelled.len() as u64,
    };
    let event = Event {
        actor: actor.to_owned(),
        action: Action::UserSuspended,
        target: format!("user:{name}"),
        outcome: Outcome::Success,
        details: json!({
            "reason": reason,
            "sessions_revoked": outcome.sessions_revoked,
            "tokens_revoked": outcome.tokens_revoked,
            "devices_revoked": revoked.devices,
            "requests_cancelled": outcome.requests_cancelled,
        }),
    };
    tx.append_at(ctx, event, now).await?;
    Ok((outcome, cancelled))
}

/// After a suspension commits: the cache forgets the user, waiters learn of cancellations.
pub(crate) fn after_suspend(state: &AppState, user_id: &str, cancelled: Vec<Uuid>, now: i64) {
    state.auth.forget_user(user_id, None);
    announce_cancelled(state, cancelled, now);
}

/// Tells the clients waiting on these requests that they were cancelled.
pub(crate) fn announce_cancelled(state: &AppState, cancelled: Vec<Uuid>, now: i64) {
    for id in cancelled {
        state.dispatch.complete(
            id,
            Finished {
                state: RequestState::Cancelled,
                result: None,
                error: None,
                view: None,
            },
            now,
        );
    }
}

/// `POST /api/v1/users/{name}/suspend`.
pub async fn suspend(
    state: &AppState,
    ctx: &Context,
    actor: &str,
    name: &str,
    reason: Option<&str>,
) -> Result<Suspended, ApiError> {
    if reason.is_some_and(|r| r.chars().count() > 500 || r.chars().any(char::is_control)) {
        return Err(ApiError::bad_request(
            "reason must be at most 500 characters without control characters",
        ));
    }
    let t = target(state, name).await?;
    if t.suspended {
        return Err(ApiError::InvalidState {
            detail: format!("{name} is suspended already"),
        });
    }
    let now = clock::now_ms();
    let mut tx = AuditTx::begin(&state.store, &state.audit).await?;
    if t.role == Role::Admin && active_admins(&mut tx).await? <= 1 {
        return Err(ApiError::Conflict {
            detail: format!("{name} is the last active admin; add another admin first"),
        });
    }
    let (outcome, cancelled) = suspend_in(&mut tx, ctx, actor, &t.id, name, reason, now).await?;
    // AUTH-7: forgotten by the cache once committed, even if the caller is gone by then.
    let after = state.clone();
    let user_id = t.id.clone();
    tx.commit_then(move || after_suspend(&after, &user_id, cancelled, now))
        .await?;
    tracing::info!(user = %name, by = %actor, "user suspended");
    Ok(outcome)
}

/// `POST /api/v1/users/{name}/unsuspend`. Credentials revoked by the suspension stay revoked:
/// the user signs in again.
pub async fn unsuspend(
    state: &AppState,
    ctx: &Context,
    actor: &str,
    name: &str,
) -> Result<(), ApiError> {
    let t = target(state, name).await?;
    if !t.suspended {
        return Err(ApiError::InvalidState {
            detail: format!("{name} is not suspended"),
        });
    }
    if state
        .config
        .users
        .iter()
        .any(|u| u.name == name && u.suspended)
    {
        return Err(ApiError::Conflict {
            detail: format!(
                "{name} is suspended in the configuration file; change [[users]] there"
            ),
        });
    }
    let now = clock::now_ms();
    let mut tx = AuditTx::begin(&state.store, &state.audit).await?;
    if t.role == Role::Admin {
        check_admin_cap(state, &mut tx, ctx, actor, name, now).await?;
    }
    sqlx::query(
        "UPDATE users SET suspended_at_ms = NULL, suspended_reason = NULL, failed_logins = 0, last_failed_at_ms = NULL WHERE id = ?",
    )
    .bind(&t.id)
    .execute(tx.conn().await?)
    .await?;
    let event = Event {
        actor: actor.to_owned(),
        action: Action::UserUnsuspended,
        target: format!("user:{name}"),
        outcome: Outcome::Success,
        details: json!({ "source": t.source }),
    };
    tx.append_at(ctx, event, now).await?;
    let auth = state.clone();
    let user_id = t.id.clone();
    tx.commit_then(move || auth.auth.forget_user(&user_id, None))
        .await?;
    Ok(())
}

/// `POST /api/v1/users/{name}/reset-mfa`: for a lost authenticator. The TOTP secret,
/// recovery codes, trusted devices and sessions go; an invitation lets the user enrol again
/// with their current password.
pub async fn reset_mfa(
    state: &AppState,
    ctx: &Context,
    actor: &str,
    name: &str,
) -> Result<Invite, ApiError> {
    let t = target(state, name).await?;
    if t.suspended {
        return Err(ApiError::InvalidState {
            detail: format!("{name} is suspended; unsuspend first"),
        });
    }
    let now = clock::now_ms();
    let mut tx = AuditTx::begin(&state.store, &state.audit).await?;
    sqlx::query("UPDATE users SET totp_sealed = NULL, totp_last_step = NULL WHERE id = ?")
        .bind(&t.id)
        .execute(tx.conn().await?)
        .await?;
    sqlx::query("DELETE FROM recovery_codes WHERE user_id = ?")
        .bind(&t.id)
        .execute(tx.conn().await?)
        .await?;
    let revoked = revoke_credentials(
        &mut tx,
        &t.id,
        Revoke {
            sessions: true,
            keep_session: None,
            tokens: false,
            devices: true,
        },
        now,
    )
    .await?;
    let event = Event {
        actor: actor.to_owned(),
        action: Action::UserMfaReset,
        target: format!("user:{name}"),
        outcome: Outcome::Success,
        details: json!({ "sessions_revoked": revoked.sessions, "devices_revoked": revoked.devices }),
    };
    tx.append_at(ctx, event, now).await?;
    let invite = invite_in(state, &mut tx, ctx, actor, &t.id, name, now).await?;
    let auth = state.clone();
    let user_id = t.id.clone();
    tx.commit_then(move || auth.auth.forget_user(&user_id, None))
        .await?;
    Ok(invite)
}

/// `GET /api/v1/users`.
pub async fn list(state: &AppState) -> Result<Vec<UserView>, ApiError> {
    views(state, None).await
}

pub async fn view(state: &AppState, name: &str) -> Result<UserView, ApiError> {
    views(state, Some(name))
        .await?
        .into_iter()
        .next()
        .ok_or(ApiError::NotFound)
}

async fn views(state: &AppState, only: Option<&str>) -> Result<Vec<UserView>, ApiError> {
    let now = clock::now_ms();
    let idle = (state.config.sessions.idle_timeout_secs as i64) * 1000;
    let absolute = (state.config.sessions.absolute_lifetime_secs as i64) * 1000;
    let rows = sqlx::query(
        "SELECT u.name, u.role, u.source, u.created_at_ms, u.password_hash IS NOT NULL, u.totp_sealed IS NOT NULL, u.suspended_at_ms, u.suspended_reason,
            (SELECT COUNT(*) FROM sessions s WHERE s.user_id = u.id AND s.revoked_at_ms IS NULL AND s.last_seen_at_ms > ? AND s.created_at_ms > ?),
            (SELECT COUNT(*) FROM api_tokens t WHERE t.owner_id = u.id AND t.revoked_at_ms IS NULL AND t.expires_at_ms > ?),
            (SELECT e.expires_at_ms FROM enrolments e WHERE e.user_id = u.id AND e.expires_at_ms > ?)
         FROM users u WHERE (? IS NULL OR u.name = ?) ORDER BY u.name",
    )
    .bind(now - idle)
    .bind(now - absolute)
    .bind(now)
    .bind(now)
    .bind(only)
    .bind(only)
    .fetch_all(state.store.reader())
    .await?;
    rows.iter()
        .map(|r| {
            let role = parse_role(r.try_get(1)?)?;
            let source = match r.try_get::<String, _>(2)?.as_str() {
                "bootstrap" => UserSource::Bootstrap,
                "config" => UserSource::Config,
                _ => UserSource::Api,
            };
            Ok(UserView {
                name: r.try_get(0)?,
                role,
                source,
                created_at: clock::format_ms(r.try_get(3)?),
                password_set: r.try_get(4)?,
                mfa_enrolled: r.try_get(5)?,
                mfa_required: state.config.people.mfa_required(role),
                suspended_at: r.try_get::<Option<i64>, _>(6)?.map(clock::format_ms),
                suspended_reason: r.try_get(7)?,
                active_sessions: u64::try_from(r.try_get::<i64, _>(8)?).unwrap_or(0),
                active_tokens: u64::try_from(r.try_get::<i64, _>(9)?).unwrap_or(0),
                invite_expires_at: r.try_get::<Option<i64>, _>(10)?.map(clock::format_ms),
            })
        })
        .collect()
}

/// Applies `[[users]]` at start, in one transaction: missing users are created, roles follow
/// the file (a demotion revokes the API tokens the new role does not cover), and users marked
/// `suspended` are suspended. Nothing here ever lifts a suspension, so a user suspended
/// through the API stays suspended across restarts (AUTH-7). Exceeding the admin cap in
/// `refuse` mode stops the start (AZ-1).
pub async fn apply_config(state: &AppState) -> anyhow::Result<()> {
    if state.config.users.is_empty() {
        return Ok(());
    }
    let ctx = Context::system("config");
    let actor = "config";
    let now = clock::now_ms();
    let mut tx = AuditTx::begin(&state.store, &state.audit).await?;
    let mut suspended = Vec::new();
    let mut touched = Vec::new();
    for decl in &state.config.users {
        apply_one(
            state,
            &mut tx,
            &ctx,
            actor,
            decl,
            now,
            &mut suspended,
            &mut touched,
        )
        .await
        .map_err(|e| anyhow::anyhow!("[[users]] {}: {}", decl.name, api_message(&e)))?;
    }
    let after = state.clone();
    tx.commit_then(move || {
        for id in touched {
            after.auth.forget_user(&id, None);
        }
        for (id, cancelled) in suspended {
            after_suspend(&after, &id, cancelled, now);
        }
    })
    .await?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn apply_one(
    state: &AppState,
    tx: &mut AuditTx,
    ctx: &Context,
    actor: &str,
    decl: &UserDecl,
    now: i64,
    suspended: &mut Vec<(String, Vec<Uuid>)>,
    touched: &mut Vec<String>,
) -> Result<(), ApiError> {
    let row = sqlx::query("SELECT id, role, suspended_at_ms, source FROM users WHERE name = ?")
        .bind(&decl.name)
        .fetch_optional(tx.conn().await?)
        .await?;
    let (id, was_suspended) = match row {
        None => {
            if decl.role == Role::Admin && !decl.suspended {
                check_admin_cap(state, tx, ctx, actor, &decl.name, now).await?;
            }
            let id = Uuid::new_v4().to_string();
            sqlx::query(
                "INSERT INTO users (id, name, role, created_at_ms, source) VALUES (?, ?, ?, ?, 'config')",
            )
            .bind(&id)
            .bind(&decl.name)
            .bind(decl.role.as_str())
            .bind(now)
            .execute(tx.conn().await?)
            .await?;
            let event = Event {
                actor: actor.to_owned(),
                action: Action::UserCreated,
                target: format!("user:{}", decl.name),
                outcome: Outcome::Success,
                details: json!({ "role": decl.role.as_str(), "source": "config" }),
            };
            tx.append_at(ctx, event, now).await?;
            (id, false)
        }
        Some(r) => {
            let id: String = r.try_get(0)?;
            let role = parse_role(r.try_get(1)?)?;
            let was_suspended = r.try_get::<Option<i64>, _>(2)?.is_some();
            let source: String = r.try_get(3)?;
            if role != decl.role {
                if decl.role == Role::Admin && !was_suspended && !decl.suspended {
                    check_admin_cap(state, tx, ctx, actor, &decl.name, now).await?;
                }
                sqlx::query("UPDATE users SET role = ?, source = 'config' WHERE id = ?")
                    .bind(decl.role.as_str())
                    .bind(&id)
                    .execute(tx.conn().await?)
                    .await?;
                // Tokens never outrank their owner (AUTH-5).
                let tokens: Vec<(String, String)> = sqlx::query_as(
                    "SELECT id, role FROM api_tokens WHERE owner_id = ? AND revoked_at_ms IS NULL",
                )
                .bind(&id)
                .fetch_all(tx.conn().await?)
                .await?;
                let mut revoked = 0u64;
                for (token, token_role) in tokens {
                    if !decl.role.covers(parse_role(token_role)?) {
                        sqlx::query("UPDATE api_tokens SET revoked_at_ms = ? WHERE id = ?")
                            .bind(now)
                            .bind(&token)
                            .execute(tx.conn().await?)
                            .await?;
                        revoked += 1;
                    }
                }
                let event = Event {
                    actor: actor.to_owned(),
                    action: Action::UserUpdated,
                    target: format!("user:{}", decl.name),
                    outcome: Outcome::Success,
                    details: json!({ "role": { "from": role.as_str(), "to": decl.role.as_str() }, "tokens_revoked": revoked }),
                };
                tx.append_at(ctx, event, now).await?;
                touched.push(id.clone());
            } else if source != "config" {
                sqlx::query("UPDATE users SET source = 'config' WHERE id = ?")
                    .bind(&id)
                    .execute(tx.conn().await?)
                    .await?;
            }
            (id, was_suspended)
        }
    };
    if decl.suspended && !was_suspended {
        let (_, cancelled) = suspend_in(
            tx,
            ctx,
            actor,
            &id,
            &decl.name,
            Some("suspended in the configuration file"),
            now,
        )
        .await?;
        suspended.push((id, cancelled));
    }
    Ok(())
}

/// The safe text of an error for a start-up message.
fn api_message(e: &ApiError) -> String {
    match e {
        ApiError::Conflict { detail }
        | ApiError::BadRequest { detail }
        | ApiError::InvalidState { detail } => detail.clone(),
        ApiError::Unavailable(e) | ApiError::Internal(e) => format!("{e:#}"),
        other => other.to_string(),
    }
}
