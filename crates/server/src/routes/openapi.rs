//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 description of every route, generated from the
//! code. Each handler's `#[utoipa::path]` names its bodies, parameters and the answers its
//! own logic gives; the wire types of `portcullis-proto` give the schemas; and the route table
//! gives what the guard adds to a route — its security requirement and the refusals every
//! guarded route can answer — so that the document and the router are built from the same
//! declaration. Every error answer is a problem document (`application/problem+json`).

use std::sync::LazyLock;

use axum::http::{HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use portcullis_proto::Problem;
use utoipa::OpenApi;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::response::{Response as DocResponse, ResponseBuilder};
use utoipa::openapi::schema::{Object, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi as Document, RefOr};

use super::{
    Guard, RouteSpec, admin, agent, assets, audit, events, health, metrics, people, requests,
};
use crate::error::ApiError;
use crate::ratelimit::{X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING, X_RATELIMIT_RESET};

/// The security scheme of people's API tokens and session tokens.
const BEARER: &str = "bearer";
/// The security scheme of agent tokens.
const AGENT: &str = "agent";

/// The media type of every error answer (RFC 9457).
const PROBLEM_JSON: &str = "application/problem+json";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Portcullis",
        description = "A privileged-access gateway: people, pipelines and agents request \
            operations on data stores; the server classifies, authorizes, applies policy and \
            signs; an agent next to the stores executes. Errors are RFC 9457 problem documents \
            whose `code` is stable.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        health::health,
        health::ready,
        metrics::metrics,
        assets::index,
        assets::asset,
        document,
        admin::public_key,
        admin::me,
        admin::connections,
        admin::create_token,
        admin::list_tokens,
        admin::revoke_token,
        admin::create_agent,
        admin::list_agents,
        admin::revoke_agent,
        admin::rotate_key,
        people::bootstrap,
        people::login,
        people::logout,
        people::enrol,
        people::step_up,
        people::change_password,
        people::list_users,
        people::add_user,
        people::invite_user,
        people::suspend_user,
        people::unsuspend_user,
        people::reset_mfa,
        people::lockdown,
        people::lift_lockdown,
        people::rotate_vault,
        requests::create,
        requests::list,
        requests::show,
        requests::wait,
        requests::result,
        requests::cancel,
        requests::approve,
        requests::reject,
        requests::review,
        requests::open_break_glass,
        requests::policy_check,
        audit::alerts,
        audit::verify,
        audit::export,
        agent::key_chain,
        agent::claim,
        agent::heartbeat,
        agent::report,
        agent::upload_result,
        events::events,
    ),
    components(schemas(
        Problem,
        portcullis_proto::stream::StreamHeader,
        portcullis_proto::stream::ResultTrailer,
        portcullis_proto::stream::AgentTrailer,
    ))
)]
struct ApiDoc;

/// The document, built once: it depends on the code only, never on configuration.
static DOCUMENT: LazyLock<Option<axum::body::Bytes>> =
    LazyLock::new(|| match serde_json::to_vec(&build(&super::specs())) {
        Ok(json) => Some(json.into()),
        Err(e) => {
            tracing::error!(error = %e, "the OpenAPI document does not serialize");
            None
        }
    });

/// The OpenAPI document of this server's API.
#[utoipa::path(
    get,
    operation_id = "openapi_document",
    path = "/api/v1/openapi.json",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object)),
)]
pub(super) async fn document() -> Response {
    let Some(json) = DOCUMENT.clone() else {
        return ApiError::Internal(anyhow::anyhow!("no OpenAPI document")).into_response();
    };
    let mut response = json.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The generated document with what the route table adds to it.
pub(super) fn build(specs: &[RouteSpec]) -> Document {
    let mut doc = ApiDoc::openapi();
    for (alias, path) in ALIASES {
        alias_path(&mut doc, alias, path);
    }
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        BEARER,
        SecurityScheme::Http(
            Http::builder()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "An API token, or the session token of a login. A browser's session \
                     cookie stands in for it; a state-changing request carried by the cookie \
                     must come from this server's own origin.",
                ))
                .build(),
        ),
    );
    components.add_security_scheme(
        AGENT,
        SecurityScheme::Http(
            Http::builder()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("An agent token (`portcullis agents create NAME`)."))
                .build(),
        ),
    );
    for spec in specs {
        let Some(op) = operation_mut(&mut doc, spec) else {
            // A route without an annotation: the route-table test names it.
            continue;
        };
        guard(op, spec.guard);
        rate_limited(op);
        // WEB-6: a panic anywhere becomes an opaque problem document.
        add(
            op,
            500,
            "Internal error; the `error_id` points at the server's log line",
        );
    }
    problem_bodies(&mut doc);
    doc
}

/// Paths the table routes to the same handler as another: (alias, annotated path).
const ALIASES: &[(&str, &str)] = &[("/ui", "/")];

/// Describes `alias` as `path` is described, under operation ids of its own.
fn alias_path(doc: &mut Document, alias: &str, path: &str) {
    let Some(mut item) = doc.paths.paths.get(path).cloned() else {
        return;
    };
    let suffix = alias.trim_matches('/').replace('/', "_");
    for op in operations(&mut item) {
        if let Some(id) = &mut op.operation_id {
            id.push('_');
            id.push_str(&suffix);
        }
    }
    doc.paths.paths.insert(alias.to_owned(), item);
}

/// The document's spelling of a route path: axum's `{*rest}` is a plain `{rest}` there.
pub(super) fn document_path(route: &str) -> String {
    route.replace("{*", "{")
}

fn operation_mut<'a>(doc: &'a mut Document, spec: &RouteSpec) -> Option<&'a mut Operation> {
    let item: &mut PathItem = doc.paths.paths.get_mut(&document_path(spec.path))?;
    match spec.method {
        Method::GET => item.get.as_mut(),
        Method::POST => item.post.as_mut(),
        Method::PUT => item.put.as_mut(),
        Method::DELETE => item.delete.as_mut(),
        Method::PATCH => item.patch.as_mut(),
        Method::HEAD => item.head.as_mut(),
        Method::OPTIONS => item.options.as_mut(),
        _ => None,
    }
}

/// What a guard adds to a route: who may call it, and the refusals it answers before the
/// handler runs.
fn guard(op: &mut Operation, guard: Guard) {
    let scheme = match guard {
        Guard::Public => return,
        Guard::Agent => AGENT,
        Guard::User | Guard::Permission(_) | Guard::StepUp(_) => BEARER,
    };
    op.security = Some(vec![SecurityRequirement::new(scheme, Vec::<String>::new())]);
    add(op, 401, "No valid credential");
    add(
        op,
        403,
        match guard {
            Guard::StepUp(_) => {
                "The caller's role lacks the permission, the credential is of another kind, a \
                 session's last TOTP check is too old (`step_up_required`), or a cookie-carried \
                 request came from another origin"
            }
            _ => {
                "The caller's role lacks the permission, the credential is of another kind, or \
                 a cookie-carried request came from another origin"
            }
        },
    );
    // Authentication reads the state store and a refusal is audited (AUD-2): either failing
    // fails closed.
    add(op, 503, "The state store or the audit chain is unavailable");
}

/// WEB-4: every route of the table is counted, by principal or by client address, before
/// anything else happens; the answer says when to try again.
fn rate_limited(op: &mut Operation) {
    let integer = |description: &str| {
        HeaderBuilder::new()
            .schema(Some(Object::with_type(Type::Integer)))
            .description(Some(description))
            .build()
    };
    let response = ResponseBuilder::new()
        .description("A rate limit is reached (`rate_limited`)")
        .header(
            header::RETRY_AFTER.as_str(),
            integer("Seconds until a request is allowed again"),
        )
        .header(
            X_RATELIMIT_LIMIT.as_str(),
            integer("Requests allowed in the window"),
        )
        .header(
            X_RATELIMIT_REMAINING.as_str(),
            integer("Requests left in the window"),
        )
        .header(
            X_RATELIMIT_RESET.as_str(),
            integer("Seconds until the window resets"),
        )
        .build();
    op.responses
        .responses
        .entry("429".to_owned())
        .or_insert(RefOr::T(response));
}

/// Adds a response unless the handler's annotation documents that status already (its
/// description is more specific).
fn add(op: &mut Operation, status: u16, description: &str) {
    op.responses
        .responses
        .entry(status.to_string())
        .or_insert_with(|| RefOr::T(ResponseBuilder::new().description(description).build()));
}

/// Every 4xx and 5xx answer is a `Problem`: annotations name the status and why, and the body
/// is added here once for all.
fn problem_bodies(doc: &mut Document) {
    let content = ContentBuilder::new()
        .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
            "Problem",
        ))))
        .build();
    for item in doc.paths.paths.values_mut() {
        for op in operations(item) {
            for (status, response) in &mut op.responses.responses {
                let RefOr::T(response) = response else {
                    continue;
                };
                if is_error(status) && response.content.is_empty() {
                    set_content(response, &content);
                }
            }
        }
    }
}

fn set_content(response: &mut DocResponse, content: &utoipa::openapi::Content) {
    response
        .content
        .insert(PROBLEM_JSON.to_owned(), RefOr::T(content.clone()));
}

fn is_error(status: &str) -> bool {
    status.starts_with('4') || status.starts_with('5')
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
        item.head.as_mut(),
        item.options.as_mut(),
    ]
    .into_iter()
    .flatten()
}

/// The body of `POST /api/v1/break-glass` (`crate::break_glass::OpenGrant`), described here
/// so that the server's own type stays free of documentation; a test holds the two together.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // A description only: never built, never read.
pub(super) struct OpenGrant {
    /// Why: 10-500 printable characters, read in the review.
    reason: String,
    /// How long, at most `break_glass.max_secs` (the default).
    duration_secs: Option<u64>,
}

/// A break-glass grant (`crate::break_glass::Grant`).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // A description only: never built, never read.
pub(super) struct Grant {
    id: String,
    expires_at: String,
}

#[cfg(test)]
mod tests {
    use utoipa::PartialSchema;

    use super::*;

    fn property_names<T: PartialSchema>() -> Vec<String> {
        let schema = serde_json::to_value(T::schema()).expect("json");
        let mut names: Vec<String> = schema["properties"]
            .as_object()
            .expect("properties")
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_break_glass_descriptions_match_the_types_on_the_wire() {
        let grant = serde_json::to_value(crate::break_glass::Grant {
            id: "g".into(),
            expires_at: "t".into(),
        })
        .expect("json");
        let mut sent: Vec<String> = grant.as_object().expect("object").keys().cloned().collect();
        sent.sort();
        assert_eq!(sent, property_names::<Grant>());
        // Every documented field of the request body is accepted (it denies unknown fields).
        let mut body = serde_json::Map::new();
        for name in property_names::<OpenGrant>() {
            let value = if name == "reason" {
                serde_json::json!("r")
            } else {
                serde_json::json!(1)
            };
            body.insert(name, value);
        }
        let parsed: crate::break_glass::OpenGrant =
            serde_json::from_value(serde_json::Value::Object(body)).expect("accepted");
        assert_eq!(parsed.duration_secs, Some(1));
    }

    #[test]
    fn axum_wildcards_become_plain_parameters() {
        assert_eq!(document_path("/ui/{*path}"), "/ui/{path}");
        assert_eq!(
            document_path("/api/v1/requests/{id}"),
            "/api/v1/requests/{id}"
        );
    }
}
