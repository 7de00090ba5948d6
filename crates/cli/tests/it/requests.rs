//! Creating requests (EX-2, WEB-3, WEB-5, WEB-6, AZ-2): statements are classified by a real
//! parser and refused before anything runs, bodies are capped, errors are opaque problem
//! documents, and every response carries a correlation id and `Cache-Control: no-store`.

use std::collections::HashMap;
use std::time::Duration;

use portcullis_client::{Client, ClientError, HttpMethod};
use portcullis_core::policy::Decision;
use portcullis_core::{OperationClass, Policy, PolicyRule, RequestState, Role};
use portcullis_proto::api::{CreateRequest, RequestOutcome};
use portcullis_proto::{ErrorCode, Problem};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::TestApp;

fn problem(e: &ClientError) -> &Problem {
    match e {
        ClientError::Api { problem, .. } => problem,
        other => panic!("expected a problem document, got {other}"),
    }
}

fn assert_problem(e: &ClientError, status: u16, code: ErrorCode) -> &Problem {
    let p = problem(e);
    assert_eq!((e.status(), p.code), (Some(status), code), "{p:?}");
    assert!(
        uuid::Uuid::parse_str(&p.error_id).is_ok(),
        "error_id: {p:?}"
    );
    p
}

async fn request_on(
    client: &Client,
    connection: &str,
    statement: &str,
    reason: &str,
) -> Result<RequestOutcome, ClientError> {
    let body = CreateRequest {
        connection: connection.parse().expect("connection name"),
        statement: statement.to_owned(),
        reason: reason.to_owned(),
        stream: false,
    };
    client.create_request(&body, Duration::from_secs(20)).await
}

async fn events(app: &TestApp, action: &str) -> Vec<serde_json::Value> {
    app.audit_events()
        .await
        .into_iter()
        .filter(|e| e["action"] == action)
        .collect()
}

/// EX-2: `SELECT 1; DROP TABLE customers` is refused with 422 `sql_multiple_statements`
/// before anything runs, the demo data is untouched, and the refusal is audited.
#[tokio::test]
async fn ex_2_multiple_statements_are_refused() {
    let app = TestApp::spawn().await;
    let checksum = app.demo_checksum().await;
    for statement in [
        "SELECT 1; DROP TABLE customers",
        "SELECT 1;DROP TABLE customers;",
        "UPDATE customers SET name = 'x'; SELECT 1",
    ] {
        let e = app.exec(&app.admin, statement).await.expect_err("refused");
        let p = assert_problem(&e, 422, ErrorCode::StatementDenied);
        assert_eq!(
            p.reason.as_deref(),
            Some("sql_multiple_statements"),
            "{statement}: {p:?}"
        );
    }
    assert_eq!(app.demo_checksum().await, checksum, "nothing ran");
    assert_eq!(
        app.demo_scalar("SELECT COUNT(*) FROM sqlite_master WHERE name = 'customers'")
            .await,
        1
    );
    let denied = events(&app, "request.denied").await;
    assert!(
        denied
            .iter()
            .filter(
                |e| e["details"]["reason"] == "sql_multiple_statements" && e["outcome"] == "denied"
            )
            .count()
            >= 3,
        "each refusal is audited: {denied:?}"
    );
    assert!(
        events(&app, "request.created").await.is_empty(),
        "no request was created"
    );
    app.stop().await;
}

/// EX-2: unparsable SQL is refused with 422, never passed on to the database.
#[tokio::test]
async fn ex_2_unparsable_sql_is_refused() {
    let app = TestApp::spawn().await;
    for statement in [
        "SELEC id FROM customers",
        "SELECT FROM WHERE",
        "SELECT 'unterminated",
    ] {
        let e = app.exec(&app.admin, statement).await.expect_err("refused");
        let p = assert_problem(&e, 422, ErrorCode::StatementDenied);
        assert_eq!(
            p.reason.as_deref(),
            Some("sql_unparsable"),
            "{statement}: {p:?}"
        );
    }
    let e = app
        .exec(&app.admin, "   ")
        .await
        .expect_err("empty statement");
    assert_problem(&e, 422, ErrorCode::StatementDenied);
    app.stop().await;
}

/// AZ-2 / AUD-1: a connection the server does not declare is 404 `unknown_connection`, and
/// the refusal is audited.
#[tokio::test]
async fn unknown_connection_is_404() {
    let app = TestApp::spawn().await;
    let e = request_on(&app.admin, "nosuch", "SELECT 1", "test")
        .await
        .expect_err("unknown");
    assert_problem(&e, 404, ErrorCode::UnknownConnection);
    let denied = events(&app, "request.denied").await;
    assert!(
        denied
            .iter()
            .any(|e| e["target"] == "nosuch" && e["details"]["reason"] == "unknown_connection"),
        "{denied:?}"
    );
    app.stop().await;
}

/// AUD-1: every request carries a reason for the audit record: empty, blank and
/// control-character reasons are 400.
#[tokio::test]
async fn empty_reason_is_400() {
    let app = TestApp::spawn().await;
    for reason in ["", "   ", "line\u{7}bell"] {
        let e = request_on(&app.admin, "demo", "SELECT 1", reason)
            .await
            .expect_err("refused");
        assert_problem(&e, 400, ErrorCode::BadRequest);
    }
    let body = json!({ "connection": "demo", "statement": "SELECT 1" });
    let (status, bytes) = app
        .admin
        .raw(HttpMethod::POST, "/api/v1/requests", Some(body))
        .await
        .expect("raw");
    assert_eq!(
        status,
        400,
        "a missing reason is refused: {}",
        String::from_utf8_lossy(&bytes)
    );
    app.stop().await;
}

/// WEB-3: a body over 1 MiB is refused with 413 `payload_too_large`; a body under the limit
/// gets past it (and is then refused for its statement length instead).
#[tokio::test]
async fn web_3_body_over_one_mib_is_413() {
    let app = TestApp::spawn().await;
    let big = json!({ "connection": "demo", "statement": format!("SELECT '{}'", "x".repeat(1_100_000)), "reason": "big" });
    let (status, bytes) = app
        .admin
        .raw(HttpMethod::POST, "/api/v1/requests", Some(big))
        .await
        .expect("raw");
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&bytes));
    let p: Problem = serde_json::from_slice(&bytes).expect("a problem document");
    assert_eq!(p.code, ErrorCode::PayloadTooLarge);

    let under = json!({ "connection": "demo", "statement": format!("SELECT '{}'", "x".repeat(900_000)), "reason": "under" });
    let (status, bytes) = app
        .admin
        .raw(HttpMethod::POST, "/api/v1/requests", Some(under))
        .await
        .expect("raw");
    let p: Problem = serde_json::from_slice(&bytes).expect("a problem document");
    assert_eq!((status, p.code), (422, ErrorCode::StatementDenied), "{p:?}");
    app.stop().await;
}

/// AZ-2: a viewer may read but not write; the refused write changes nothing and is audited.
#[tokio::test]
async fn az_2_viewer_reads_but_cannot_write() {
    let app = TestApp::spawn().await;
    let (viewer, _) = app.token(Role::Viewer).await;
    let checksum = app.demo_checksum().await;
    for statement in [
        "UPDATE customers SET name = 'pwned' WHERE id = 1",
        "DELETE FROM customers",
        "DROP TABLE customers",
    ] {
        let e = app
            .exec(&viewer, statement)
            .await
            .expect_err("viewer cannot write");
        assert_problem(&e, 403, ErrorCode::Forbidden);
    }
    assert_eq!(app.demo_checksum().await, checksum, "data unchanged");
    assert!(events(&app, "access.denied").await.len() >= 3);

    let out = app
        .exec(
            &viewer,
            "SELECT id, name FROM customers ORDER BY id LIMIT 3",
        )
        .await
        .expect("viewer reads");
    assert_eq!(out.request.state, RequestState::Succeeded);
    assert_eq!(out.request.class, OperationClass::Read);
    let result = out.result.expect("result");
    assert_eq!(
        result
            .columns
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["id", "name"]
    );
    assert_eq!(
        result.rows,
        vec![
            vec![json!(1), json!("Ada Lovelace")],
            vec![json!(2), json!("Grace Hopper")],
            vec![json!(3), json!("Alan Turing")]
        ]
    );
    app.stop().await;
}

/// AZ-2 (object level): unknown and malformed request ids are 404 on every request route,
/// and a request is visible to its requester.
#[tokio::test]
async fn az_2_unknown_and_malformed_request_ids_are_404() {
    let app = TestApp::spawn().await;
    let random = uuid::Uuid::new_v4();
    let e = app
        .admin
        .request_view(random)
        .await
        .expect_err("unknown id");
    assert_problem(&e, 404, ErrorCode::NotFound);
    let e = app
        .admin
        .wait_request(random, Duration::from_secs(0))
        .await
        .expect_err("unknown id");
    assert_problem(&e, 404, ErrorCode::NotFound);
    let e = app
        .admin
        .cancel_request(random)
        .await
        .expect_err("unknown id");
    assert_problem(&e, 404, ErrorCode::NotFound);
    for path in [
        "/api/v1/requests/not-a-uuid",
        "/api/v1/requests/1%20OR%201=1",
        "/api/v1/requests/..%2f..%2fetc/wait",
    ] {
        let (status, bytes) = app
            .admin
            .raw(HttpMethod::GET, path, None)
            .await
            .expect("raw");
        let p: Problem = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{path}: not a problem document ({e})"));
        assert_eq!((status, p.code), (404, ErrorCode::NotFound), "{path}");
    }
    let (status, _) = app
        .admin
        .raw(
            HttpMethod::POST,
            "/api/v1/requests/not-a-uuid/cancel",
            Some(json!({})),
        )
        .await
        .expect("raw");
    assert_eq!(status, 404);

    let out = app.exec(&app.admin, "SELECT 1").await.expect("runs");
    assert_eq!(
        app.admin
            .request_view(out.request.id)
            .await
            .expect("own request")
            .id,
        out.request.id
    );
    app.stop().await;
}

/// EX-3: results come back faithfully as JSON: INTEGER → number, REAL → float, TEXT → string, NULL → null,
/// BLOB → base64 string.
#[tokio::test]
async fn result_types_round_trip() {
    let app = TestApp::spawn().await;
    let out = app
        .exec(
            &app.admin,
            "SELECT 42 AS i, 1.5 AS r, 'text' AS t, NULL AS n, x'0102' AS b, -7 AS neg",
        )
        .await
        .expect("runs");
    assert_eq!(out.request.state, RequestState::Succeeded);
    let result = out.result.expect("result");
    assert_eq!(
        result
            .columns
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["i", "r", "t", "n", "b", "neg"]
    );
    assert_eq!(
        result.rows,
        vec![vec![
            json!(42),
            json!(1.5),
            json!("text"),
            json!(null),
            json!("AQI="),
            json!(-7)
        ]]
    );
    assert!(result.rows[0][0].is_i64() && result.rows[0][1].is_f64());
    assert_eq!((result.row_count, result.truncated), (1, false));

    let out = app
        .exec(
            &app.admin,
            "SELECT price_cents, weight_kg FROM products ORDER BY id LIMIT 1",
        )
        .await
        .expect("runs");
    let row = &out.result.expect("result").rows[0];
    assert!(row[0].is_i64(), "INTEGER column: {row:?}");
    assert!(row[1].is_f64() || row[1].is_null(), "REAL column: {row:?}");
    app.stop().await;
}

/// The request a create-and-wait answers with, succeeded or failed, is the request as stored:
/// the same document a later `GET /requests/{id}` returns, field for field.
#[tokio::test]
async fn a_finished_answer_is_the_stored_request() {
    let app = TestApp::spawn().await;
    for (statement, state) in [
        (
            "SELECT id FROM customers ORDER BY id LIMIT 2",
            RequestState::Succeeded,
        ),
        ("SELECT nothing FROM no_such_table", RequestState::Failed),
    ] {
        let out = app.exec(&app.admin, statement).await.expect("answered");
        assert_eq!(out.request.state, state, "{statement}: {:?}", out.request);
        assert!(out.request.finished_at.is_some(), "{:?}", out.request);
        assert_eq!(out.request.error.is_some(), state == RequestState::Failed);
        let stored = app
            .admin
            .request_view(out.request.id)
            .await
            .expect("own request");
        assert_eq!(
            serde_json::to_value(&out.request).expect("json"),
            serde_json::to_value(&stored).expect("json"),
            "{statement}"
        );
    }
    app.stop().await;
}

/// AZ-4 / EX-2: an admin-class statement is never granted by a role, not even admin's, so it is refused
/// (403) before policy and before any agent sees it.
#[tokio::test]
async fn admin_class_statements_are_refused() {
    let app = TestApp::spawn().await;
    let checksum = app.demo_checksum().await;
    for statement in [
        "ATTACH DATABASE 'other.db' AS other",
        "PRAGMA writable_schema = 1",
        "VACUUM",
    ] {
        let e = app
            .exec(&app.admin, statement)
            .await
            .expect_err("admin class refused");
        // Authorization runs before policy: no role is granted the admin class (AZ-4: only
        // break-glass could), so this is `forbidden`, not `policy_denied`.
        let p = assert_problem(&e, 403, ErrorCode::Forbidden);
        assert_eq!(
            p.reason.as_deref(),
            Some("operation_not_permitted"),
            "{statement}: {p:?}"
        );
    }
    assert_eq!(app.demo_checksum().await, checksum);
    let denied = events(&app, "access.denied").await;
    assert!(
        denied
            .iter()
            .filter(|e| e["details"]["class"] == "admin")
            .count()
            >= 3,
        "{denied:?}"
    );
    assert!(
        !app.stack.data_dir.join("other.db").exists() && !std::path::Path::new("other.db").exists()
    );
    app.stop().await;
}

/// AZ-3 (policy): with a policy that denies writes, an admin's UPDATE is 403 `policy_denied`,
/// audited with the rule, and nothing runs; reads are still auto-approved.
#[tokio::test]
async fn policy_denied_write_is_403() {
    let rules = vec![
        PolicyRule {
            class: Some(OperationClass::Write),
            ..PolicyRule::any(Decision::Deny)
        },
        PolicyRule::any(Decision::AutoApprove),
    ];
    let app = TestApp::spawn_with(|o| o.policy = Policy::new(rules).expect("policy")).await;
    let checksum = app.demo_checksum().await;
    let e = app
        .exec(&app.admin, "UPDATE customers SET name = 'x' WHERE id = 1")
        .await
        .expect_err("denied by policy");
    assert_problem(&e, 403, ErrorCode::PolicyDenied);
    assert_eq!(app.demo_checksum().await, checksum);
    let denied = events(&app, "request.denied").await;
    assert!(
        denied
            .iter()
            .any(|e| e["details"]["reason"] == "policy" && e["details"]["rule"] == "#1"),
        "{denied:?}"
    );
    let ok = app.exec(&app.admin, "SELECT 1").await.expect("reads run");
    assert_eq!(ok.request.state, RequestState::Succeeded);
    app.stop().await;
}

type Probe<'a> = (
    &'static str,
    &'a Client,
    HttpMethod,
    &'static str,
    Option<serde_json::Value>,
);

/// Sends each probe and lists every WEB-6 violation: a non-error status, a body that is not
/// a problem document with a consistent status and an error id, or a body carrying SQL,
/// driver names, file paths, panics or stack traces.
async fn web_6_violations(cases: Vec<Probe<'_>>) -> Vec<String> {
    let forbidden = [
        "SELECT",
        "sqlx",
        "/tmp",
        "panicked",
        "stack backtrace",
        "at src/",
        ".rs:",
    ];
    let mut failures = Vec::new();
    for (what, client, method, path, body) in cases {
        let (status, bytes) = client.raw(method.clone(), path, body).await.expect("raw");
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if status < 400 {
            failures.push(format!("{what}: status {status}"));
            continue;
        }
        match serde_json::from_slice::<Problem>(&bytes) {
            Ok(p) => {
                if p.status != status || uuid::Uuid::parse_str(&p.error_id).is_err() {
                    failures.push(format!("{what}: inconsistent problem document {text}"));
                }
            }
            Err(_) => failures.push(format!(
                "{what}: {method} {path} answered {status} without a problem document: {text:?}"
            )),
        }
        for word in forbidden {
            if text.contains(word) {
                failures.push(format!("{what}: response contains {word:?}: {text}"));
            }
        }
    }
    failures
}

/// WEB-6: error responses are problem documents (code and error id) and never carry SQL,
/// driver names, file paths, panics or stack traces, whatever provoked them.
#[tokio::test]
async fn web_6_errors_are_opaque_problem_documents() {
    let app = TestApp::spawn().await;
    let anonymous = Client::new(app.url(), None).expect("client");
    let bad_bearer = Client::new(
        app.url(),
        Some("pct_0123456789abcdef_/tmp/../etc/passwd-SELECT-sqlx-xxxxxxxx"),
    )
    .expect("client");
    let (viewer, _) = app.token(Role::Viewer).await;
    let request = |statement: &str| {
        Some(json!({ "connection": "demo", "statement": statement, "reason": "probe" }))
    };
    let cases: Vec<Probe<'_>> = vec![
        (
            "multi-statement",
            &app.admin,
            HttpMethod::POST,
            "/api/v1/requests",
            request("SELECT 1; DROP TABLE customers"),
        ),
        (
            "unparsable",
            &app.admin,
            HttpMethod::POST,
            "/api/v1/requests",
            request("SELECT FROM WHERE /tmp/x"),
        ),
        (
            "denied function",
            &app.admin,
            HttpMethod::POST,
            "/api/v1/requests",
            request("SELECT load_extension('/tmp/evil.so')"),
        ),
        (
            "viewer write",
            &viewer,
            HttpMethod::POST,
            "/api/v1/requests",
            request("UPDATE customers SET name = 'x'"),
        ),
        (
            "admin class",
            &app.admin,
            HttpMethod::POST,
            "/api/v1/requests",
            request("ATTACH DATABASE '/tmp/x.db' AS x"),
        ),
        (
            "unknown connection",
            &app.admin,
            HttpMethod::POST,
            "/api/v1/requests",
            Some(json!({ "connection": "nosuch", "statement": "SELECT 1", "reason": "r" })),
        ),
        (
            "wrong type",
            &app.admin,
            HttpMethod::POST,
            "/api/v1/requests",
            Some(json!({ "connection": "demo", "statement": 5, "reason": "r" })),
        ),
        (
            "bad connection name",
            &app.admin,
            HttpMethod::POST,
            "/api/v1/requests",
            Some(json!({ "connection": "Bad Name!", "statement": "SELECT 1", "reason": "r" })),
        ),
        (
            "missing field",
            &app.admin,
            HttpMethod::POST,
            "/api/v1/requests",
            Some(json!({ "connection": "demo" })),
        ),
        (
            "unknown request",
            &app.admin,
            HttpMethod::GET,
            "/api/v1/requests/00000000-0000-0000-0000-000000000000",
            None,
        ),
        (
            "malformed id",
            &app.admin,
            HttpMethod::GET,
            "/api/v1/requests/SELECT",
            None,
        ),
        (
            "unknown route",
            &app.admin,
            HttpMethod::GET,
            "/api/v1/does-not-exist",
            None,
        ),
        (
            "no credential",
            &anonymous,
            HttpMethod::GET,
            "/api/v1/me",
            None,
        ),
        (
            "bad credential",
            &bad_bearer,
            HttpMethod::GET,
            "/api/v1/me",
            None,
        ),
        (
            "missing permission",
            &viewer,
            HttpMethod::GET,
            "/api/v1/audit/export",
            None,
        ),
        (
            "bad token body",
            &app.admin,
            HttpMethod::POST,
            "/api/v1/tokens",
            Some(json!({ "name": "x", "role": "root", "ttl_seconds": 1 })),
        ),
    ];
    let failures = web_6_violations(cases).await;
    assert!(
        failures.is_empty(),
        "WEB-6 violations:\n{}",
        failures.join("\n")
    );
    app.stop().await;
}

/// WEB-6: malformed query strings and unsupported methods are errors too, and get the same
/// problem documents (not the framework's plain-text rejection, which also exposes its
/// internal deserializer message).
#[tokio::test]
async fn web_6_query_and_method_errors_are_problem_documents() {
    let app = TestApp::spawn().await;
    let cases: Vec<Probe<'_>> = vec![
        (
            "bad wait parameter",
            &app.admin,
            HttpMethod::GET,
            "/api/v1/requests/00000000-0000-0000-0000-000000000000/wait?wait=soon",
            None,
        ),
        (
            "bad list parameter",
            &app.admin,
            HttpMethod::GET,
            "/api/v1/tokens?unused=maybe",
            None,
        ),
        (
            "unknown list parameter",
            &app.admin,
            HttpMethod::GET,
            "/api/v1/requests?sort=name",
            None,
        ),
        (
            "wrong method",
            &app.admin,
            HttpMethod::PUT,
            "/api/v1/requests",
            None,
        ),
    ];
    let failures = web_6_violations(cases).await;
    assert!(
        failures.is_empty(),
        "WEB-6 violations:\n{}",
        failures.join("\n")
    );
    app.stop().await;
}

/// A minimal HTTP/1.1 exchange over a fresh socket, to read response headers (the typed
/// client does not expose them). Returns the status and the lower-cased headers.
async fn http_head(
    app: &TestApp,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> (u16, HashMap<String, String>) {
    let addr = app.url().trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(b) = bearer {
        req.push_str(&format!("Authorization: Bearer {b}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&response);
    let head = text.split("\r\n\r\n").next().expect("head");
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line: {head}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers)
}

/// Method, path, bearer, body and the expected status.
type HeaderProbe<'a> = (
    &'static str,
    &'static str,
    Option<&'a str>,
    Option<&'static str>,
    u16,
);

/// WEB-5 / WEB-1: every response, success or error, authenticated or not, carries an
/// `X-Request-Id` (a fresh one each time) and `Cache-Control: no-store`.
#[tokio::test]
async fn web_5_every_response_has_a_request_id_and_no_store() {
    let app = TestApp::spawn().await;
    let admin = app.stack.admin_token.clone();
    let create = r#"{"connection":"demo","statement":"SELECT 1","reason":"headers"}"#;
    let multi = r#"{"connection":"demo","statement":"SELECT 1; SELECT 2","reason":"headers"}"#;
    let cases: Vec<HeaderProbe<'_>> = vec![
        ("GET", "/health", None, None, 200),
        ("GET", "/api/v1/public-key", Some(&admin), None, 200),
        ("GET", "/api/v1/me", Some(&admin), None, 200),
        (
            "POST",
            "/api/v1/requests?wait=20",
            Some(&admin),
            Some(create),
            201,
        ),
        ("POST", "/api/v1/requests", Some(&admin), Some(multi), 422),
        ("GET", "/api/v1/me", None, None, 401),
        (
            "GET",
            "/api/v1/me",
            Some("pct_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            None,
            401,
        ),
        (
            "GET",
            "/api/v1/requests/not-a-uuid",
            Some(&admin),
            None,
            404,
        ),
        ("GET", "/nowhere", None, None, 404),
        (
            "POST",
            "/api/v1/requests",
            Some(&admin),
            Some("{not json"),
            400,
        ),
        ("PUT", "/api/v1/requests", Some(&admin), None, 405),
    ];
    let mut ids = Vec::new();
    for (method, path, bearer, body, want) in cases {
        let (status, headers) = http_head(&app, method, path, bearer, body).await;
        assert_eq!(status, want, "{method} {path}");
        let id = headers
            .get("x-request-id")
            .unwrap_or_else(|| panic!("{method} {path}: no x-request-id in {headers:?}"));
        assert!(!id.is_empty());
        ids.push(id.clone());
        assert_eq!(
            headers.get("cache-control").map(String::as_str),
            Some("no-store"),
            "{method} {path}: {headers:?}"
        );
    }
    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(
        unique.len(),
        ids.len(),
        "request ids are fresh per response: {ids:?}"
    );
    app.stop().await;
}
