//! Tokens, agents, connections, the caller's identity, and the public key for operators.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use portcullis_core::OperationClass;
use portcullis_core::rbac::permission_for;
use portcullis_proto::api::{
    AgentCreated, AgentView, ConnectionView, CreateAgent, CreateToken, PublicKeyView, TokenCreated,
    TokenView, WhoAmI,
};
use portcullis_proto::token::{KeyAnnouncement, public_key_base64};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{Ctx, Segment, User};
use crate::AppState;
use crate::error::{ApiError, ApiJson, ApiQuery};
use crate::principals::{self, NewToken};

/// The caller: its principal, role and permissions.
#[utoipa::path(
    get,
    path = "/api/v1/me",
    tag = "identity",
    responses((status = 200, description = "Who the credential belongs to", body = WhoAmI)),
)]
pub(super) async fn me(User(who): User) -> Json<WhoAmI> {
    Json(WhoAmI {
        principal: who.display(),
        role: who.role,
        permissions: who.role.permissions().to_vec(),
    })
}

/// The connections the caller may use, with the classes its role allows there. Never an
/// address or a credential: the server has neither.
#[utoipa::path(
    get,
    operation_id = "list_connections",
    path = "/api/v1/connections",
    tag = "identity",
    responses((status = 200, description = "The connections the caller may use", body = Vec<ConnectionView>)),
)]
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

/// The server's current signing key, for operators to pin in agent configurations.
#[utoipa::path(
    get,
    path = "/api/v1/public-key",
    tag = "keys",
    responses((status = 200, description = "The current Ed25519 signing key", body = PublicKeyView)),
)]
pub(super) async fn public_key(State(state): State<AppState>) -> Json<PublicKeyView> {
    Json(PublicKeyView {
        algorithm: "ed25519".into(),
        key_id: state.keys.current().signer.key_id().to_hex(),
        public_key: public_key_base64(&state.keys.current().signer.verifying_key()),
    })
}

/// Creates an API token; its secret is shown only in this answer.
#[utoipa::path(
    post,
    path = "/api/v1/tokens",
    tag = "tokens",
    request_body(
        content = CreateToken,
        example = json!({"name": "ci-deploy", "role": "ci", "ttl_seconds": 86400, "environments": ["staging"]}),
    ),
    responses(
        (
            status = 201,
            description = "The token and its secret",
            body = TokenCreated,
            links(("revoke" = (operation_id = "revoke_token", parameters(("id" = "$response.body#/info/id"))))),
        ),
        (status = 400, description = "The body is malformed, or the name, lifetime or environments are invalid"),
        (status = 403, description = "The role exceeds the creator's (`role_exceeds_creator`), or the guard refused"),
        (status = 413, description = "The body exceeds the size limit"),
    ),
)]
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

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct TokenListParams {
    /// Only tokens never used.
    #[serde(default)]
    unused: bool,
}

/// Every API token, revoked and expired ones included.
#[utoipa::path(
    get,
    path = "/api/v1/tokens",
    tag = "tokens",
    params(TokenListParams),
    responses(
        (status = 200, description = "The tokens, never their secrets", body = Vec<TokenView>),
        (status = 400, description = "An unknown or malformed query parameter"),
    ),
)]
pub(super) async fn list_tokens(
    State(state): State<AppState>,
    ApiQuery(p): ApiQuery<TokenListParams>,
) -> Result<Json<Vec<TokenView>>, ApiError> {
    state.auth.flush_last_used(&state.store).await?;
    Ok(Json(principals::list_tokens(&state, None, p.unused).await?))
}

/// Revokes an API token at once.
#[utoipa::path(
    delete,
    path = "/api/v1/tokens/{id}",
    tag = "tokens",
    params(("id" = String, Path, description = "The token's id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No live token has this id"),
    ),
)]
pub(super) async fn revoke_token(
    State(state): State<AppState>,
    User(who): User,
    Ctx(ctx): Ctx,
    Segment(id): Segment,
) -> Result<StatusCode, ApiError> {
    principals::revoke_token(&state, &ctx, &who.display(), &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Registers an agent; its token is shown only in this answer.
#[utoipa::path(
    post,
    path = "/api/v1/agents",
    tag = "agents",
    request_body(content = CreateAgent, example = json!({"name": "eu-west-agent"})),
    responses(
        (
            status = 201,
            description = "The agent and its token",
            body = AgentCreated,
            links(("revoke" = (operation_id = "revoke_agent", parameters(("name" = "$response.body#/info/name"))))),
        ),
        (status = 400, description = "The body is malformed or the name is invalid"),
        (status = 409, description = "An agent of this name exists"),
        (status = 413, description = "The body exceeds the size limit"),
    ),
)]
pub(super) async fn create_agent(
    State(state): State<AppState>,
    User(who): User,
    Ctx(ctx): Ctx,
    ApiJson(body): ApiJson<CreateAgent>,
) -> Result<(StatusCode, Json<AgentCreated>), ApiError> {
    let (token, info) = principals::create_agent(&state, &ctx, &who.display(), &body.name).await?;
    Ok((StatusCode::CREATED, Json(AgentCreated { token, info })))
}

#[utoipa::path(
    get,
    path = "/api/v1/agents",
    tag = "agents",
    responses((status = 200, description = "Every registered agent, with its presence", body = Vec<AgentView>)),
)]
pub(super) async fn list_agents(
    State(state): State<AppState>,
) -> Result<Json<Vec<AgentView>>, ApiError> {
    Ok(Json(principals::list_agents(&state).await?))
}

/// Revokes an agent: it can no longer claim jobs (IR-5).
#[utoipa::path(
    delete,
    path = "/api/v1/agents/{name}",
    tag = "agents",
    params(("name" = String, Path, description = "The agent's name")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No live agent has this name"),
    ),
)]
pub(super) async fn revoke_agent(
    State(state): State<AppState>,
    User(who): User,
    Ctx(ctx): Ctx,
    Segment(name): Segment,
) -> Result<StatusCode, ApiError> {
    principals::revoke_agent(&state, &ctx, &who.display(), &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Rotates the signing key (IR-4): the old key signs the announcement of the new one.
#[utoipa::path(
    post,
    path = "/api/v1/keys/rotate",
    tag = "keys",
    responses((status = 200, description = "The signed announcement of the new key", body = KeyAnnouncement)),
)]
pub(super) async fn rotate_key(
    State(state): State<AppState>,
    User(who): User,
    Ctx(ctx): Ctx,
) -> Result<Json<KeyAnnouncement>, ApiError> {
    Ok(Json(
        crate::key_rotation::rotate(&state, &ctx, &who.display()).await?,
    ))
}
