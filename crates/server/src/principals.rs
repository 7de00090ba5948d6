//! Users, API tokens and agents: creation and revocation, each audited in the same
//! transaction. Used by the API routes and by first-start provisioning.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use portcullis_core::{Environment, Role};
use portcullis_proto::api::{AgentView, TokenView};
use serde_json::json;
use sqlx::Row;

use crate::AppState;
use crate::audit::{Action, AuditTx, Context, Event, Outcome};
use crate::auth::{self, AGENT_TOKEN_PREFIX, API_TOKEN_PREFIX};
use crate::clock;
use crate::error::ApiError;
use crate::to_the_end::to_the_end;

pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
}

pub struct NewToken<'a> {
    pub name: &'a str,
    pub role: Role,
    pub ttl_seconds: u64,
    pub environments: Option<Vec<Environment>>,
}

/// Creates an API token owned by `owner_id`. The role must be covered by `creator_role` and
/// the lifetime at most the configured maximum (AUTH-5).
pub async fn create_token(
    state: &AppState,
    ctx: &Context,
    actor: &str,
    owner_id: &str,
    creator_role: Role,
    new: NewToken<'_>,
) -> Result<(String, TokenView), ApiError> {
    if !valid_name(new.name) {
        return Err(ApiError::bad_request(
            "token name must be 1-64 characters of letters, digits, '-', '_', '.', '@'",
        ));
    }
    if !creator_role.covers(new.role) {
        return Err(ApiError::Forbidden {
            reason: "role_exceeds_creator",
        });
    }
    let max_secs = state.config.tokens.max_ttl_days * 86_400;
    if new.ttl_seconds == 0 || new.ttl_seconds > max_secs {
        return Err(ApiError::bad_request(format!(
            "ttl_seconds must be between 1 and {max_secs} (tokens.max_ttl_days)"
        )));
    }
    if new.environments.as_ref().is_some_and(Vec::is_empty) {
        return Err(ApiError::bad_request(
            "environments, when given, must name at least one environment",
        ));
    }
    let minted = auth::mint(API_TOKEN_PREFIX);
    let now = clock::now_ms();
    let expires = now + (new.ttl_seconds as i64) * 1000;
    let envs = new
        .environments
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| ApiError::Internal(e.into()))?;
    let mut tx = AuditTx::begin(&state.store, &state.audit).await?;
    sqlx::query(
        "INSERT INTO api_tokens (id, name, owner_id, role, secret_hash, environments, created_by, created_at_ms, expires_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&minted.id)
    .bind(new.name)
    .bind(owner_id)
    .bind(new.role.as_str())
    .bind(&minted.secret_hash[..])
    .bind(&envs)
    .bind(actor)
    .bind(now)
    .bind(expires)
    .execute(tx.conn().await?)
    .await?;
    let event = Event {
        actor: actor.to_owned(),
        action: Action::TokenCreated,
        target: format!("token:{}", minted.id),
        outcome: Outcome::Success,
        details: json!({ "name": new.name, "role": new.role.as_str(), "expires_at": clock::format_ms(expires), "environments": new.environments }),
    };
    tx.append_at(ctx, event, now).await?;
    tx.commit().await?;
    let view = token_view(state, &minted.id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok((minted.secret, view))
}

pub async fn token_view(state: &AppState, id: &str) -> Result<Option<TokenView>, ApiError> {
    let rows = list_tokens(state, Some(id), false).await?;
    Ok(rows.into_iter().next())
}

pub async fn list_tokens(
    state: &AppState,
    only: Option<&str>,
    unused: bool,
) -> Result<Vec<TokenView>, ApiError> {
    let rows = sqlx::query(
        "SELECT t.id, t.name, t.role, u.name, t.created_at_ms, t.expires_at_ms, t.environments, t.last_used_at_ms, t.last_used_addr, t.revoked_at_ms
         FROM api_tokens t JOIN users u ON u.id = t.owner_id
         WHERE (? IS NULL OR t.id = ?) AND (NOT ? OR t.last_used_at_ms IS NULL)
         ORDER BY t.created_at_ms",
    )
    .bind(only)
    .bind(only)
    .bind(unused)
    .fetch_all(state.store.reader())
    .await?;
    rows.iter()
        .map(|r| {
            let envs: Option<String> = r.try_get(6)?;
            Ok(TokenView {
                id: r.try_get(0)?,
                name: r.try_get(1)?,
                role: r
                    .try_get::<String, _>(2)?
                    .parse()
                    .map_err(|e| ApiError::Internal(anyhow::anyhow!("{e}")))?,
                owner: r.try_get(3)?,
                created_at: clock::format_ms(r.try_get(4)?),
                expires_at: clock::format_ms(r.try_get(5)?),
                environments: envs
                    .map(|e| serde_json::from_str(&e))
                    .transpose()
                    .map_err(|e| ApiError::Internal(e.into()))?,
                last_used_at: r.try_get::<Option<i64>, _>(7)?.map(clock::format_ms),
                last_used_addr: r.try_get(8)?,
                revoked_at: r.try_get::<Option<i64>, _>(9)?.map(clock::format_ms),
            })
        })
        .collect()
}

/// Revokes a token at once: the store row and the authentication cache, together.
pub async fn revoke_token(
    state: &AppState,
    ctx: &Context,
    actor: &str,
    id: &str,
) -> Result<(), ApiError> {
    let now = clock::now_ms();
    let mut tx = AuditTx::begin(&state.store, &state.audit).await?;
    let done = sqlx::query(
        "UPDATE api_tokens SET revoked_at_ms = ? WHERE id = ? AND revoked_at_ms IS NULL",
    )
    .bind(now)
    .bind(id)
    .execute(tx.conn().await?)
    .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::NotFound);
    }
    let event = Event {
        actor: actor.to_owned(),
        action: Action::TokenRevoked,
        target: format!("token:{id}"),
        outcome: Outcome::Success,
        details: json!({}),
    };
    tx.append_at(ctx, event, now).await?;
    // AUTH-7: forgotten by the cache once committed, even if the caller is gone by then.
    let auth = state.clone();
    let id = id.to_owned();
    tx.commit_then(move || auth.auth.forget(&id)).await?;
    Ok(())
}

pub async fn create_agent(
    state: &AppState,
    ctx: &Context,
    actor: &str,
    name: &str,
) -> Result<(String, AgentView), ApiError> {
    if !valid_name(name) {
        return Err(ApiError::bad_request(
            "agent name must be 1-64 characters of letters, digits, '-', '_', '.', '@'",
        ));
    }
    let minted = auth::mint(AGENT_TOKEN_PREFIX);
    let now = clock::now_ms();
    let mut tx = AuditTx::begin(&state.store, &state.audit).await?;
    let inserted = sqlx::query("INSERT INTO agents (id, name, secret_hash, created_at_ms) VALUES (?, ?, ?, ?) ON CONFLICT(name) DO NOTHING")
        .bind(&minted.id)
        .bind(name)
        .bind(&minted.secret_hash[..])
        .bind(now)
        .execute(tx.conn().await?)
        .await?;
    if inserted.rows_affected() == 0 {
        return Err(ApiError::Conflict {
            detail: format!("an agent named {name} already exists"),
        });
    }
    let event = Event {
        actor: actor.to_owned(),
        action: Action::AgentCreated,
        target: format!("agent:{name}"),
        outcome: Outcome::Success,
        details: json!({ "credential_id": minted.id }),
    };
    tx.append_at(ctx, event, now).await?;
    tx.commit().await?;
    let view = list_agents(state)
        .await?
        .into_iter()
        .find(|a| a.name == name)
        .ok_or(ApiError::NotFound)?;
    Ok((minted.secret, view))
}

pub async fn list_agents(state: &AppState) -> Result<Vec<AgentView>, ApiError> {
    let rows = sqlx::query("SELECT name, created_at_ms, revoked_at_ms FROM agents ORDER BY name")
        .fetch_all(state.store.reader())
        .await?;
    let presence = state
        .presence
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .agents
        .clone();
    let now = clock::now_ms();
    let connected_within = (crate::lifecycle::CLAIM_WAIT_MAX_MS as i64) + 5_000;
    rows.iter()
        .map(|r| {
            let name: String = r.try_get(0)?;
            let seen = presence.get(&name);
            Ok(AgentView {
                created_at: clock::format_ms(r.try_get(1)?),
                revoked_at: r.try_get::<Option<i64>, _>(2)?.map(clock::format_ms),
                last_seen_at: seen.map(|(at, _)| clock::format_ms(*at)),
                connected: seen.is_some_and(|(at, _)| now - at < connected_within),
                connections: seen.map(|(_, c)| c.clone()).unwrap_or_default(),
                name,
            })
        })
        .collect()
}

/// Revokes an agent: its credential dies at once, so it can no longer claim (IR-5). Runs to
/// its end even if the caller is dropped meanwhile: a committed revocation is always
/// followed by its credential leaving the cache.
pub async fn revoke_agent(
    state: &AppState,
    ctx: &Context,
    actor: &str,
    name: &str,
) -> Result<(), ApiError> {
    let (state, ctx, actor, name) = (
        state.clone(),
        ctx.clone(),
        actor.to_owned(),
        name.to_owned(),
    );
    to_the_end(async move { revoke_agent_in_full(&state, &ctx, &actor, &name).await }).await
}

async fn revoke_agent_in_full(
    state: &AppState,
    ctx: &Context,
    actor: &str,
    name: &str,
) -> Result<(), ApiError> {
    // IR-5: the mark comes first, so that no job is handed to the agent's waiting claims
    // from the moment the revocation starts; it is undone if the revocation does not commit.
    state.dispatch.revoke(name);
    let revoked = revoke_agent_row(state, ctx, actor, name).await;
    let id = match revoked {
        Ok(id) => id,
        Err(e) => {
            // Unmarked only when the store shows the agent is not revoked (an unknown name,
            // a failed commit); when unsure, the mark stays.
            let revoked: Result<Option<bool>, sqlx::Error> =
                sqlx::query_scalar("SELECT revoked_at_ms IS NOT NULL FROM agents WHERE name = ?")
                    .bind(name)
                    .fetch_optional(state.store.reader())
                    .await;
            if let Ok(None | Some(false)) = revoked {
                state.dispatch.revocation_failed(name);
            }
            return Err(e);
        }
    };
    state.auth.forget(&id);
    state
        .presence
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .agents
        .remove(name);
    Ok(())
}

/// The revocation's row and audit event, committed together; the agent's id.
async fn revoke_agent_row(
    state: &AppState,
    ctx: &Context,
    actor: &str,
    name: &str,
) -> Result<String, ApiError> {
    let now = clock::now_ms();
    let mut tx = AuditTx::begin(&state.store, &state.audit).await?;
    let id: Option<String> = sqlx::query_scalar(
        "UPDATE agents SET revoked_at_ms = ? WHERE name = ? AND revoked_at_ms IS NULL RETURNING id",
    )
    .bind(now)
    .bind(name)
    .fetch_optional(tx.conn().await?)
    .await?;
    let Some(id) = id else {
        return Err(ApiError::NotFound);
    };
    let event = Event {
        actor: actor.to_owned(),
        action: Action::AgentRevoked,
        target: format!("agent:{name}"),
        outcome: Outcome::Success,
        details: json!({}),
    };
    tx.append_at(ctx, event, now).await?;
    tx.commit().await?;
    Ok(id)
}

/// First start: when no user exists, creates the `admin` user and an admin API token, and
/// writes the token to `token_file` (mode 0600, never overwritten). Returns the token when
/// one was created.
pub async fn provision_admin(
    state: &AppState,
    token_file: &Path,
) -> anyhow::Result<Option<String>> {
    let users: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
        .fetch_one(state.store.reader())
        .await?;
    if users > 0 {
        return Ok(None);
    }
    let ctx = Context::system("provision");
    let now = clock::now_ms();
    let user_id = uuid::Uuid::new_v4().to_string();
    let mut tx = AuditTx::begin(&state.store, &state.audit).await?;
    sqlx::query(
        "INSERT INTO users (id, name, role, created_at_ms) VALUES (?, 'admin', 'admin', ?)",
    )
    .bind(&user_id)
    .bind(now)
    .execute(tx.conn().await?)
    .await?;
    let event = Event {
        actor: "system".into(),
        action: Action::UserCreated,
        target: "user:admin".into(),
        outcome: Outcome::Success,
        details: json!({ "role": "admin" }),
    };
    tx.append_at(&ctx, event, now).await?;
    tx.commit().await?;
    let ttl = state.config.tokens.max_ttl_days * 86_400;
    let new = NewToken {
        name: "admin",
        role: Role::Admin,
        ttl_seconds: ttl,
        environments: None,
    };
    let (secret, _) = create_token(state, &ctx, "system", &user_id, Role::Admin, new)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(token_file)
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot write the admin token to {}: {e}",
                token_file.display()
            )
        })?;
    file.write_all(format!("{secret}\n").as_bytes())?;
    file.sync_all()?;
    Ok(Some(secret))
}

/// The id of the user named `name`.
pub async fn user_id(state: &AppState, name: &str) -> Result<Option<String>, ApiError> {
    Ok(sqlx::query_scalar("SELECT id FROM users WHERE name = ?")
        .bind(name)
        .fetch_optional(state.store.reader())
        .await?)
}
