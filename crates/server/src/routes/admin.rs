//! Tokens, agents, connections, the caller's identity, and the public key for operators.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use portcullis_core::OperationClass;
use portcullis_core::rbac::permission_for;
use portcullis_proto::api::{
    AgentCreated, AgentView, ConnectionView, CreateAgent, CreateToken, PublicKeyView, TokenCreated,
    TokenView, WhoAmI,
};
use portcullis_proto::token::public_key_base64;
use serde::Deserialize;

use super::{Ctx, User};
use crate::AppState;
use crate::error::{ApiError, ApiJson, ApiQuery};
use crate::principals::{self, NewToken};

pub(super) async fn me(User(who): User) -> Json<WhoAmI> {
    Json(WhoAmI {
        principal: who.display(),
        role: who.role,
        permissions: who.role.permissions().to_vec(),
    })
}

/// The connections the caller may use, with the classes its role allows there. Never an
/// address or a credential: the server has neither.
pub(super) async fn connections(
    State(state): State<AppState>,
    User(who): User,
) -> Json<Vec<ConnectionView>> {
    let views = state
        .config
        .connections
        .iter()
        .filter(|c| {
            who.environments
                .as_ref()
                .is_none_or(|envs| envs.contains(&c.environment))
        })
        .filter_map(|c| {
            let classes: Vec<OperationClass> = OperationClass::ALL
                .iter()
                .copied()
                .filter(|class| permission_for(c.kind, *class).is_some_and(|p| who.role.has(p)))
                .collect();
            (!classes.is_empty()).then(|| ConnectionView {
                name: c.name.clone(),
                kind: c.kind,
                environment: c.environment,
                classes,
            })
        })
        .collect();
    Json(views)
}

pub(super) async fn public_key(State(state): State<AppState>) -> Json<PublicKeyView> {
    Json(PublicKeyView {
        algorithm: "ed25519".into(),
        key_id: state.keys.current().signer.key_id().to_hex(),
        public_key: public_key_base64(&state.keys.current().signer.verifying_key()),
    })
}

pub(super) async fn create_token(
    State(state): State<AppState>,
    User(who): User,
    Ctx(ctx): Ctx,
    ApiJson(body): ApiJson<CreateToken>,
) -> Result<(StatusCode, Json<TokenCreated>), ApiError> {
    let new = NewToken {
        name: &body.name,
        role: body.role,
        ttl_seconds: body.ttl_seconds,
        environments: body.environments,
    };
    let (token, info) =
        principals::create_token(&state, &ctx, &who.display(), &who.user_id, who.role, new).await?;
    Ok((StatusCode::CREATED, Json(TokenCreated { token, info })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TokenListParams {
    /// Only tokens never used.
    #[serde(default)]
    unused: bool,
}

pub(super) async fn list_tokens(
    State(state): State<AppState>,
    ApiQuery(p): ApiQuery<TokenListParams>,
) -> Result<Json<Vec<TokenView>>, ApiError> {
    state.auth.flush_last_used(&state.store).await?;
    Ok(Json(principals::list_tokens(&state, None, p.unused).await?))
}

pub(super) async fn revoke_token(
    State(state): State<AppState>,
    User(who): User,
    Ctx(ctx): Ctx,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    principals::revoke_token(&state, &ctx, &who.display(), &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn create_agent(
    State(state): State<AppState>,
    User(who): User,
    Ctx(ctx): Ctx,
    ApiJson(body): ApiJson<CreateAgent>,
) -> Result<(StatusCode, Json<AgentCreated>), ApiError> {
    let (token, info) = principals::create_agent(&state, &ctx, &who.display(), &body.name).await?;
    Ok((StatusCode::CREATED, Json(AgentCreated { token, info })))
}

pub(super) async fn list_agents(
    State(state): State<AppState>,
) -> Result<Json<Vec<AgentView>>, ApiError> {
    Ok(Json(principals::list_agents(&state).await?))
}

pub(super) async fn revoke_agent(
    State(state): State<AppState>,
    User(who): User,
    Ctx(ctx): Ctx,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    principals::revoke_agent(&state, &ctx, &who.display(), &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn rotate_key(
    State(state): State<AppState>,
    User(who): User,
    Ctx(ctx): Ctx,
) -> Result<Json<portcullis_proto::token::KeyAnnouncement>, ApiError> {
    Ok(Json(
        crate::key_rotation::rotate(&state, &ctx, &who.display()).await?,
    ))
}
