//! The route table. Every route is declared once here with the guard it requires (AZ-2): the
//! same table builds the router and drives the route × role test, so a route cannot exist
//! without a declared permission.

mod admin;
mod agent;
mod assets;
mod audit;
pub(crate) mod deadline;
mod events;
mod health;
mod metrics;
mod openapi;
mod people;
mod requests;
pub mod web;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{Method, header};
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
use crate::ratelimit::{self, Bucket};

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
            "/api/v1/openapi.json",
            Public,
            get(openapi::document),
        ),
        r(
            Method::GET,
            "/metrics",
            Permission(portcullis_core::Permission::MetricsView),
            get(metrics::metrics),
        ),
        // The embedded web UI (WEB-7): static files only; every call it makes is an
        // authenticated API call.
        r(Method::GET, "/", Public, get(assets::index)),
        r(Method::GET, "/ui", Public, get(assets::index)),
        r(Method::GET, "/ui/{*path}", Public, get(assets::asset)),
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
        // Live events (WEB-8). Public here only because a browser cannot set a header on a
        // WebSocket: the socket authenticates itself (header, cookie with an allowed Origin,
        // or a first auth message within a timeout) before any event flows (SEC-2).
        r(Method::GET, "/api/v1/events", Public, get(events::events)),
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
    let router = router
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(state.config.web.body_limit_bytes));
    web::harden(router, &state.config, state.metrics.clone()).with_state(state)
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
    let ctx = context(&req);
    // WEB-4: unauthenticated requests are counted by client address; sign-in attempts (the
    // public ones and step-up) also against the stricter hourly bucket of that address.
    let limiter = state.limiter.as_ref();
    let now = clock::now_ms();
    let address = ratelimit::address_key(&ctx.client_addr);
    let post = req.method() == Method::POST;
    let sign_in = post
        && matches!(
            req.uri().path(),
            "/api/v1/login" | "/api/v1/bootstrap" | "/api/v1/enrol" | "/api/v1/step-up"
        );
    let anonymous = [(Bucket::Anonymous, address.as_str())];
    if guard == Guard::Public {
        let login = [(Bucket::Login, address.as_str())];
        let checks = if sign_in {
            [anonymous, login].concat()
        } else {
            anonymous.to_vec()
        };
        return match ratelimit::enforce(limiter, &ctx.client_addr, &checks, now).await {
            Ok(shown) => ratelimit::with_headers(next.run(req).await, shown),
            Err(refused) => refused,
        };
    }
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
            None => {
                return match ratelimit::enforce(limiter, &ctx.client_addr, &anonymous, now).await {
                    Ok(shown) => {
                        ratelimit::with_headers(ApiError::Unauthenticated.into_response(), shown)
                    }
                    Err(refused) => refused,
                };
            }
        },
    };
    // AUTH-3: a browser sends cookies with cross-site requests; a state-changing request
    // carried by the session cookie must come from this server's own origin.
    if via_cookie && !is_safe(req.method()) && !same_origin(&req) {
        // WEB-4: counted before its audit event, so refusals cannot flood the audit chain.
        let shown = match ratelimit::enforce(limiter, &ctx.client_addr, &anonymous, now).await {
            Ok(shown) => shown,
            Err(refused) => return refused,
        };
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
        let refused = ApiError::Forbidden {
            reason: "origin_mismatch",
        };
        return ratelimit::with_headers(refused.into_response(), shown);
    }
    let principal = match state
        .auth
        .authenticate(&state.store, &bearer, clock::now_ms(), &ctx.client_addr)
        .await
    {
        Ok(p) => p,
        Err(failure) => {
            // WEB-4: a refused credential counts against its address, before the audit
            // event, so that guessing is slowed and refusals cannot flood the audit chain.
            let shown = match ratelimit::enforce(limiter, &ctx.client_addr, &anonymous, now).await {
                Ok(shown) => shown,
                Err(refused) => return refused,
            };
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
            return ratelimit::with_headers(ApiError::Unauthenticated.into_response(), shown);
        }
    };
    // WEB-4: an authenticated request counts against its principal (agents against their
    // own, larger limit), before any refusal below is audited.
    let who = ratelimit::principal_key(&principal);
    let mut checks = vec![match principal {
        Principal::Agent(_) => (Bucket::Agent, who.as_str()),
        Principal::User(_) => (Bucket::Authenticated, who.as_str()),
    }];
    if sign_in {
        checks.push((Bucket::Login, address.as_str()));
    }
    let shown = match ratelimit::enforce(limiter, &ctx.client_addr, &checks, now).await {
        Ok(shown) => shown,
        Err(refused) => return refused,
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
        let refused = ApiError::Forbidden {
            reason: "missing_permission",
        };
        return ratelimit::with_headers(refused.into_response(), shown);
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
        return ratelimit::with_headers(ApiError::StepUpRequired.into_response(), shown);
    }
    // WEB-4: creating an API token also counts against the person's hourly bucket, once the
    // caller may create tokens: refused attempts by a person's weaker tokens cannot use up
    // the budget of the person who owns them.
    let shown = if post && req.uri().path() == "/api/v1/tokens" {
        let owner = ratelimit::owner_key(&principal);
        let checks = [(Bucket::TokenCreation, owner.as_str())];
        match ratelimit::enforce(limiter, &ctx.client_addr, &checks, now).await {
            Ok(creation) => ratelimit::tighter(shown, creation),
            Err(refused) => return refused,
        }
    } else {
        shown
    };
    req.extensions_mut().insert(principal);
    ratelimit::with_headers(next.run(req).await, shown)
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

/// The one parameter of a route path, percent-decoded. A segment that does not decode to
/// UTF-8 names nothing this server has: 404 as a problem document, like every other error,
/// where axum's own rejection would answer 400 in plain text with its internal wording.
pub struct Segment(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Segment {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        match axum::extract::Path::<String>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(segment)) => Ok(Segment(segment)),
            Err(_) => Err(ApiError::NotFound),
        }
    }
}

/// Parses a path id, answering 404 (not 400) so that ids cannot be probed by shape.
pub fn path_uuid(raw: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(raw).map_err(|_| ApiError::NotFound)
}
