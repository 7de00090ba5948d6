//! The served OpenAPI document describes exactly the routes the server declares, each with
//! the security its guard demands, and is a well-formed OpenAPI 3.1 document. Generated from
//! the route table, so a new route cannot ship undocumented.

use std::collections::{BTreeMap, BTreeSet};

use portcullis_server::routes::{Guard, specs};
use serde_json::Value;

use crate::harness::TestApp;

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

/// The document's spelling of a route path: axum's `{*rest}` is a plain `{rest}` there.
fn document_path(route: &str) -> String {
    route.replace("{*", "{")
}

async fn served_document(app: &TestApp) -> Value {
    let response = reqwest::get(format!("{}/api/v1/openapi.json", app.url()))
        .await
        .expect("GET the document");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    response.json().await.expect("the document is JSON")
}

/// Every operation of the document as (METHOD, path) → operation.
fn operations(doc: &Value) -> BTreeMap<(String, String), &Value> {
    let mut ops = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            if METHODS.contains(&method.as_str()) {
                ops.insert((method.to_uppercase(), path.clone()), op);
            }
        }
    }
    ops
}

#[tokio::test]
async fn the_document_describes_exactly_the_declared_routes_with_their_guards() {
    let app = TestApp::spawn_with(|o| o.start_agent = false).await;
    let doc = served_document(&app).await;
    let ops = operations(&doc);

    let declared: BTreeSet<(String, String)> = specs()
        .iter()
        .map(|s| (s.method.to_string(), document_path(s.path)))
        .collect();
    let documented: BTreeSet<(String, String)> = ops.keys().cloned().collect();
    let missing: Vec<_> = declared.difference(&documented).collect();
    let invented: Vec<_> = documented.difference(&declared).collect();
    assert!(
        missing.is_empty(),
        "routes missing from the document: {missing:?}"
    );
    assert!(
        invented.is_empty(),
        "documented but not routed: {invented:?}"
    );

    for spec in specs() {
        let op = ops[&(spec.method.to_string(), document_path(spec.path))];
        let what = format!("{} {}", spec.method, spec.path);
        let expected = match spec.guard {
            Guard::Public => None,
            Guard::Agent => Some(serde_json::json!([{ "agent": [] }])),
            Guard::User | Guard::Permission(_) | Guard::StepUp(_) => {
                Some(serde_json::json!([{ "bearer": [] }]))
            }
        };
        match expected {
            None => assert!(
                op.get("security")
                    .is_none_or(|s| s == &serde_json::json!([])),
                "{what} is public and must require nothing"
            ),
            Some(security) => {
                assert_eq!(op["security"], security, "{what}");
                for status in ["401", "403"] {
                    assert!(
                        op["responses"].get(status).is_some(),
                        "{what} is guarded and can answer {status}"
                    );
                }
            }
        }
    }
    // Public routes require nothing because nothing is required by default either.
    assert!(
        doc.get("security")
            .is_none_or(|s| s == &serde_json::json!([]))
    );
    app.stop().await;
}

#[tokio::test]
async fn the_document_is_well_formed_openapi_3_1() {
    let app = TestApp::spawn_with(|o| o.start_agent = false).await;
    let doc = served_document(&app).await;
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());

    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(!refs.is_empty());
    for r in &refs {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{r} is not a local reference"));
        assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
    }

    let schemes = doc["components"]["securitySchemes"]
        .as_object()
        .expect("security schemes");
    let mut operation_ids = BTreeSet::new();
    for ((method, path), op) in operations(&doc) {
        let what = format!("{method} {path}");
        let id = op["operationId"].as_str().expect("an operationId");
        assert!(
            operation_ids.insert(id.to_owned()),
            "{what}: operationId {id} is not unique"
        );

        // Each `{name}` of the template is a required path parameter, and nothing else is.
        let template: BTreeSet<String> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(str::to_owned)
            .collect();
        let params = op.get("parameters").and_then(Value::as_array);
        let in_path: BTreeSet<String> = params
            .into_iter()
            .flatten()
            .filter(|p| p["in"] == "path")
            .map(|p| {
                assert_eq!(p["required"], true, "{what}: path parameters are required");
                p["name"].as_str().expect("name").to_owned()
            })
            .collect();
        assert_eq!(template, in_path, "{what}: path parameters");
        for p in params.into_iter().flatten() {
            let place = p["in"].as_str().expect("in");
            assert!(
                ["query", "header", "path", "cookie"].contains(&place),
                "{what}"
            );
        }

        let responses = op["responses"].as_object().expect("responses");
        assert!(!responses.is_empty(), "{what} has no responses");
        for (status, response) in responses {
            let valid = status == "default"
                || (status.len() == 3
                    && status.bytes().all(|b| b.is_ascii_digit() || b == b'X')
                    && (b'1'..=b'5').contains(&status.as_bytes()[0]));
            assert!(valid, "{what}: status {status}");
            assert!(response["description"].is_string(), "{what} {status}");
        }
        for requirement in op
            .get("security")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            for scheme in requirement.as_object().expect("requirement").keys() {
                assert!(
                    schemes.contains_key(scheme),
                    "{what}: unknown scheme {scheme}"
                );
            }
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn every_error_answer_of_the_document_is_a_problem_document() {
    let app = TestApp::spawn_with(|o| o.start_agent = false).await;
    let doc = served_document(&app).await;
    // The readiness probe answers in plain text for load balancers.
    let plain = [("GET", "/ready", "503")];
    for ((method, path), op) in operations(&doc) {
        for (status, response) in op["responses"].as_object().expect("responses") {
            if !(status.starts_with('4') || status.starts_with('5')) {
                continue;
            }
            if plain.contains(&(method.as_str(), path.as_str(), status.as_str())) {
                continue;
            }
            assert_eq!(
                response["content"]["application/problem+json"]["schema"]["$ref"],
                "#/components/schemas/Problem",
                "{method} {path} {status}"
            );
        }
    }
    // And the server answers that way, also where the framework would answer in plain text:
    // a path segment that does not decode to UTF-8.
    let http = reqwest::Client::new();
    for path in [
        format!("/api/v1/requests/{}", uuid::Uuid::new_v4()),
        "/api/v1/requests/%FF".to_owned(),
        "/api/v1/users/%C0/invite".to_owned(),
        "/api/v1/agents/%FF%FE".to_owned(),
    ] {
        let method = if path.ends_with("/invite") {
            reqwest::Method::POST
        } else if path.starts_with("/api/v1/agents/") {
            reqwest::Method::DELETE
        } else {
            reqwest::Method::GET
        };
        let response = http
            .request(method, format!("{}{path}", app.url()))
            .bearer_auth(&app.stack.admin_token)
            .send()
            .await
            .expect("call");
        assert_eq!(response.status(), 404, "{path}");
        assert_eq!(
            response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("application/problem+json"),
            "{path}"
        );
        let problem: portcullis_proto::Problem = response.json().await.expect("a problem");
        assert_eq!(
            problem.code,
            portcullis_proto::ErrorCode::NotFound,
            "{path}"
        );
    }
    app.stop().await;
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "$ref" {
                    if let Some(r) = v.as_str() {
                        out.push(r.to_owned());
                    }
                } else {
                    collect_refs(v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}
