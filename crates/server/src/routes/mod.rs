//! The route table. Every route is declared once here with the guard it requires (AZ-2): the
//! same table builds the router and drives the route × role test, so a route cannot exist
//! without a declared permission.

mod admin;
mod agent;
mod audit;
mod health;
mod people;
mod requests;

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post};
use portcullis_core::Permission;
use serde_json::json;

use crate::AppState;
use crate::audit::{Action, Context, Event, Outcome};
use crate::auth::{AgentPrincipal, Principal, UserPrincipal};
use crate::clock;
use crate::error::ApiError;

/// What a route requires of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// No credential: health, readiness and the sign-in endpoints (bootstrap, login,
    /// enrol). Nothing else (SEC-2).
    Public,
    /// Any API-token principal; the handler checks object-level rights.
    User,
    /// An API-token principal whose role grants this permission.
    Permission(Permission),
    /// A sensitive action: the permission, and for a session a TOTP check within
    /// `people.step_up_secs` (AUTH-2). API tokens were created under step-up themselves.
    StepUp(Permission),
    /// An agent token; agents can only claim, heartbeat and report.
    Agent,
}

#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub method: Method,
    pub path: &'static str,
    pub guard: Guard,
}

const BODY_LIMIT: usize = 1024 * 1024;
const AGENT_REPORT_LIMIT: usize = 64 * 1024 * 1024;

fn table() -> Vec<(RouteSpec, MethodRouter<AppState>)> {
    use Guard::*;
    use portcullis_core::Permission::{
        AgentsManage, AuditRead, RequestsApprove, RequestsBreakGlass, TokensManage, UsersManage,
    };
    let r = |method: Method, path: &'static str, guard: Guard, handler: MethodRouter<AppState>| {
        (
            RouteSpec {
                method,
                path,
                guard,
            },
            handler,
        )
    };
    vec![
        r(Method::GET, "/health", Public, get(health::health)),
        r(Method::GET, "/ready", Public, get(health::ready)),
        r(
            Method::GET,
            "/api/v1/public-key",
            User,
            get(admin::public_key),
        ),
        r(
            Method::POST,
            "/api/v1/bootstrap",
            Public,
            post(people::bootstrap),
        ),
        r(Method::POST, "/api/v1/login", Public, post(people::login)),
        r(Method::POST, "/api/v1/logout", User, post(people::logout)),
        r(Method::POST, "/api/v1/enrol", Public, post(people::enrol)),
        r(Method::POST, "/api/v1/step-up", User, post(people::step_up)),
        r(
            Method::POST,
            "/api/v1/password",
            User,
            post(people::change_password),
        ),
        r(
            Method::GET,
            "/api/v1/users",
            Permission(UsersManage),
            get(people::list_users),
        ),
        r(
            Method::POST,
            "/api/v1/users",
            StepUp(UsersManage),
            post(people::add_user),
        ),
        r(
            Method::POST,
            "/api/v1/users/{name}/invite",
            StepUp(UsersManage),
            post(people::invite_user),
        ),
        r(
            Method::POST,
            "/api/v1/users/{name}/suspend",
            StepUp(UsersManage),
            post(people::suspend_user),
        ),
        r(
            Method::POST,
            "/api/v1/users/{name}/unsuspend",
            StepUp(UsersManage),
            post(people::unsuspend_user),
        ),
        r(
            Method::POST,
            "/api/v1/users/{name}/reset-mfa",
            StepUp(UsersManage),
            post(people::reset_mfa),
        ),
        r(
            Method::POST,
            "/api/v1/lockdown",
            StepUp(UsersManage),
            post(people::lockdown),
        ),
        r(
            Method::POST,
            "/api/v1/lockdown/lift",
            StepUp(UsersManage),
            post(people::lift_lockdown),
        ),
        r(
            Method::POST,
            "/api/v1/vault/rotate",
            StepUp(UsersManage),
            post(people::rotate_vault),
        ),
        r(Method::GET, "/api/v1/me", User, get(admin::me)),
        r(
            Method::GET,
            "/api/v1/connections",
            User,
            get(admin::connections),
        ),
        r(
            Method::POST,
            "/api/v1/requests",
            User,
            post(requests::create),
        ),
        r(Method::GET, "/api/v1/requests", User, get(requests::list)),
        r(
            Method::GET,
            "/api/v1/requests/{id}",
            User,
            get(requests::show),
        ),
        r(
            Method::GET,
            "/api/v1/requests/{id}/wait",
            User,
            get(requests::wait),
        ),
        r(
            Method::GET,
            "/api/v1/requests/{id}/result",
            User,
            get(requests::result),
        ),
        r(
            Method::POST,
            "/api/v1/requests/{id}/cancel",
            User,
            post(requests::cancel),
        ),
        r(
            Method::POST,
            "/api/v1/requests/{id}/approve",
            StepUp(RequestsApprove),
            post(requests::approve),
        ),
        r(
            Method::POST,
            "/api/v1/requests/{id}/reject",
            StepUp(RequestsApprove),
            post(requests::reject),
        ),
        r(
            Method::POST,
            "/api/v1/requests/{id}/review",
            StepUp(RequestsBreakGlass),
            post(requests::review),
        ),
        r(
            Method::POST,
            "/api/v1/break-glass",
            User,
            post(requests::open_break_glass),
        ),
        r(
            Method::POST,
            "/api/v1/policy/check",
            User,
            post(requests::policy_check),
        ),
        r(
            Method::GET,
            "/api/v1/alerts",
            Permission(AuditRead),
            get(audit::alerts),
        ),
        r(
            Method::POST,
            "/api/v1/tokens",
            StepUp(TokensManage),
            post(admin::create_token),
        ),
        r(
            Method::GET,
            "/api/v1/tokens",
            Permission(TokensManage),
            get(admin::list_tokens),
        ),
        r(
            Method::DELETE,
            "/api/v1/tokens/{id}",
            Permission(TokensManage),
            delete(admin::revoke_token),
        ),
        r(
            Method::POST,
            "/api/v1/agents",
            StepUp(AgentsManage),
            post(admin::create_agent),
        ),
        r(
            Method::GET,
            "/api/v1/agents",
            Permission(AgentsManage),
            get(admin::list_agents),
        ),
        r(
            Method::DELETE,
            "/api/v1/agents/{name}",
            Permission(AgentsManage),
            delete(admin::revoke_agent),
        ),
        r(
            Method::GET,
            "/api/v1/audit/verify",
            Permission(AuditRead),
            get(audit::verify),
        ),
        r(
            Method::GET,
            "/api/v1/audit/export",
            Permission(AuditRead),
            get(audit::export),
        ),
        r(
            Method::GET,
            "/api/v1/agent/keys",
            Agent,
            get(agent::key_chain),
        ),
        r(
            Method::POST,
            "/api/v1/keys/rotate",
            StepUp(UsersManage),
            post(admin::rotate_key),
        ),
        r(
            Method::POST,
            "/api/v1/agent/claim",
            Agent,
            post(agent::claim),
        ),
        r(
            Method::POST,
            "/api/v1/agent/jobs/{id}/heartbeat",
            Agent,
            post(agent::heartbeat),
        ),
        r(
            Method::POST,
            "/api/v1/agent/jobs/{id}/report",
            Agent,
            post(agent::report).layer(DefaultBodyLimit::max(AGENT_REPORT_LIMIT)),
        ),
        r(
            Method::POST,
            "/api/v1/agent/jobs/{id}/result",
            Agent,
            post(agent::upload_result),
        ),
    ]
}

/// Every route with its guard, for documentation and the authorization matrix test.
pub fn specs() -> Vec<RouteSpec> {
    table().into_iter().map(|(spec, _)| spec).collect()
}

pub fn app(state: AppState) -> Router {
    let mut router = Router::new();
    for (spec, handler) in table() {
        let guard = spec.guard;
        let layer = middleware::from_fn_with_state(
            state.clone(),
            move |st: State<AppState>, req: Request, next: Next| guarded(guard, st, req, next),
        );
        router = router.route(spec.path, handler.route_layer(layer));
    }
    router
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(correlate))
        .with_state(state)
}

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Gives every request a correlation id and client address (WEB-5), echoes the id, and marks
/// API responses uncacheable.
async fn correlate(mut req: Request, next: Next) -> Response {
    let correlation_id = uuid::Uuid::new_v4().to_string();
    let client_addr = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "-".to_owned(), |ConnectInfo(a)| a.ip().to_string());
    // The access log (DEBUG): method, path (never a query string), status, time. Nothing is
    // copied when it is off.
    let access = tracing::enabled!(tracing::Level::DEBUG).then(|| {
        (
            req.method().clone(),
            req.uri().path().chars().take(200).collect::<String>(),
            client_addr.clone(),
            std::time::Instant::now(),
        )
    });
    req.extensions_mut().insert(Context {
        correlation_id: correlation_id.clone(),
        client_addr,
    });
    let mut response = next.run(req).await;
    if let Some((method, path, client_addr, started)) = access {
        tracing::debug!(
            request_id = %correlation_id,
            client = %client_addr,
            %method,
            %path,
            status = response.status().as_u16(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "http request"
        );
    }
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&correlation_id) {
        headers.insert(REQUEST_ID.clone(), v);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn context(req: &Request) -> Context {
    req.extensions()
        .get::<Context>()
        .cloned()
        .unwrap_or_else(|| Context::system("unknown"))
}

async fn guarded(
    guard: Guard,
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    if guard == Guard::Public {
        return next.run(req).await;
    }
    let ctx = context(&req);
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .map(str::to_owned);
    let (bearer, via_cookie) = match bearer {
        Some(b) => (b, false),
        None => match session_cookie(&req, state.config.secure_cookies()) {
            Some(c) => (c, true),
            None => return ApiError::Unauthenticated.into_response(),
        },
    };
    // AUTH-3: a browser sends cookies with cross-site requests; a state-changing request
    // carried by the session cookie must come from this server's own origin.
    if via_cookie && !is_safe(req.method()) && !same_origin(&req) {
        let event = Event {
            actor: "anonymous".into(),
            action: Action::OriginRefused,
            target: format!("{} {}", req.method(), req.uri().path()),
            outcome: Outcome::Denied,
            details: json!({
                "origin": req.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok()).map(|o| o.chars().take(200).collect::<String>()),
            }),
        };
        if let Err(e) = crate::lifecycle::audit_only(&state, &ctx, event).await {
            return e.into_response();
        }
        return ApiError::Forbidden {
            reason: "origin_mismatch",
        }
        .into_response();
    }
    let principal = match state
        .auth
        .authenticate(&state.store, &bearer, clock::now_ms(), &ctx.client_addr)
        .await
    {
        Ok(p) => p,
        Err(failure) => {
            let token_id = crate::auth::parse_bearer(&bearer).map(|(_, id)| id.to_owned());
            let event = Event {
                actor: "anonymous".into(),
                action: Action::AuthFailed,
                target: req.uri().path().to_owned(),
                outcome: Outcome::Denied,
                details: json!({ "reason": failure.as_str(), "token_id": token_id }),
            };
            if let Err(e) = crate::lifecycle::audit_only(&state, &ctx, event).await {
                return e.into_response();
            }
            return ApiError::Unauthenticated.into_response();
        }
    };
    let allowed = match (&guard, &principal) {
        (Guard::Agent, Principal::Agent(_)) | (Guard::User, Principal::User(_)) => true,
        (Guard::Permission(p) | Guard::StepUp(p), Principal::User(u)) => u.role.has(*p),
        _ => false,
    };
    if !allowed {
        let actor = match &principal {
            Principal::User(u) => u.display(),
            Principal::Agent(a) => format!("agent:{}", a.name),
        };
        let required = match guard {
            Guard::Permission(p) | Guard::StepUp(p) => p.as_str(),
            Guard::Agent => "agent",
            Guard::User => "user",
            Guard::Public => "none",
        };
        let event = Event {
            actor,
            action: Action::AccessDenied,
            target: format!("{} {}", req.method(), req.uri().path()),
            outcome: Outcome::Denied,
            details: json!({ "required": required }),
        };
        if let Err(e) = crate::lifecycle::audit_only(&state, &ctx, event).await {
            return e.into_response();
        }
        return ApiError::Forbidden {
            reason: "missing_permission",
        }
        .into_response();
    }
    // API tokens were created under step-up; a session needs a recent TOTP check.
    if let (Guard::StepUp(_), Principal::User(u)) = (&guard, &principal)
        && u.session
        && !fresh_step_up(&state, u, clock::now_ms())
    {
        let event = Event {
            actor: u.display(),
            action: Action::AccessDenied,
            target: format!("{} {}", req.method(), req.uri().path()),
            outcome: Outcome::Denied,
            details: json!({ "required": "step_up" }),
        };
        if let Err(e) = crate::lifecycle::audit_only(&state, &ctx, event).await {
            return e.into_response();
        }
        return ApiError::StepUpRequired.into_response();
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

/// Whether a TOTP check at `mfa_at_ms` still covers a sensitive action at `now_ms`.
pub fn step_up_fresh(mfa_at_ms: i64, now_ms: i64, window_ms: i64) -> bool {
    now_ms >= mfa_at_ms && now_ms - mfa_at_ms <= window_ms
}

/// A person in a session whose last TOTP check is within `people.step_up_secs` (AUTH-2).
pub(crate) fn fresh_step_up(state: &AppState, who: &UserPrincipal, now_ms: i64) -> bool {
    let window = (state.config.people.step_up_secs as i64) * 1000;
    who.session
        && who
            .mfa_at_ms
            .is_some_and(|at| step_up_fresh(at, now_ms, window))
}

/// The session id from the session cookie, if the request carries one.
fn session_cookie(req: &Request, secure: bool) -> Option<String> {
    let name = portcullis_identity::session::session_cookie_name(secure);
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_owned())
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// `Origin` names the host this request was sent to (scheme aside, which a proxy may
/// change). A missing `Origin` is refused: browsers send it on every state-changing request.
fn same_origin(req: &Request) -> bool {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok());
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok());
    match (origin, host) {
        (Some(origin), Some(host)) => {
            let rest = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            rest == Some(host)
        }
        _ => false,
    }
}

/// The authenticated API-token principal of a `User` or `Permission` route.
pub struct User(pub UserPrincipal);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for User {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, ApiError> {
        match parts.extensions.get::<Principal>() {
            Some(Principal::User(u)) => Ok(User(u.clone())),
            _ => Err(ApiError::Unauthenticated),
        }
    }
}

/// The authenticated agent of an `Agent` route.
pub struct Agent(pub AgentPrincipal);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Agent {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, ApiError> {
        match parts.extensions.get::<Principal>() {
            Some(Principal::Agent(a)) => Ok(Agent(a.clone())),
            _ => Err(ApiError::Unauthenticated),
        }
    }
}

/// The correlation id and client address of the request.
pub struct Ctx(pub Context);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Ctx {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, ApiError> {
        Ok(Ctx(parts
            .extensions
            .get::<Context>()
            .cloned()
            .unwrap_or_else(|| Context::system("unknown"))))
    }
}

/// Parses a path id, answering 404 (not 400) so that ids cannot be probed by shape.
pub fn path_uuid(raw: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(raw).map_err(|_| ApiError::NotFound)
}
