//! AZ-2: every route × every principal, against a table written here by hand. The table must
//! name exactly the routes the server declares, so a new route cannot ship untested.

use std::collections::BTreeSet;

use portcullis_client::{Client, HttpMethod};
use portcullis_core::Role;
use portcullis_server::routes::{Guard, specs};

use crate::harness::TestApp;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Who {
    Anonymous,
    Role(Role),
    Agent,
}

const ALL_ROLES: &[Role] = &[
    Role::Viewer,
    Role::Developer,
    Role::Ops,
    Role::Ci,
    Role::Admin,
];

/// Who may call each route. Written independently of the server's table on purpose.
fn expected() -> Vec<(&'static str, &'static str, Vec<Who>)> {
    let public = || {
        let mut v: Vec<Who> = ALL_ROLES.iter().map(|r| Who::Role(*r)).collect();
        v.push(Who::Anonymous);
        v.push(Who::Agent);
        v
    };
    let users = || ALL_ROLES.iter().map(|r| Who::Role(*r)).collect::<Vec<_>>();
    let admin = || vec![Who::Role(Role::Admin)];
    let auditors = || vec![Who::Role(Role::Ops), Who::Role(Role::Admin)];
    let nobody = Vec::new;
    let agent = || vec![Who::Agent];
    vec![
        ("GET", "/health", public()),
        ("GET", "/ready", public()),
        ("GET", "/api/v1/openapi.json", public()),
        ("GET", "/metrics", auditors()),
        // Public in the table: the socket authenticates inside before any event (WEB-8).
        ("GET", "/api/v1/events", public()),
        ("GET", "/", public()),
        ("GET", "/ui", public()),
        ("GET", "/ui/{*path}", public()),
        ("GET", "/api/v1/public-key", users()),
        ("POST", "/api/v1/bootstrap", public()),
        ("POST", "/api/v1/login", public()),
        ("POST", "/api/v1/logout", users()),
        ("POST", "/api/v1/enrol", public()),
        ("POST", "/api/v1/step-up", users()),
        ("POST", "/api/v1/password", users()),
        ("GET", "/api/v1/users", admin()),
        ("POST", "/api/v1/users", admin()),
        ("POST", "/api/v1/users/{name}/invite", admin()),
        ("POST", "/api/v1/users/{name}/suspend", admin()),
        ("POST", "/api/v1/users/{name}/unsuspend", admin()),
        ("POST", "/api/v1/users/{name}/reset-mfa", admin()),
        ("POST", "/api/v1/vault/rotate", admin()),
        ("GET", "/api/v1/me", users()),
        ("GET", "/api/v1/connections", users()),
        ("POST", "/api/v1/requests", users()),
        ("GET", "/api/v1/requests", users()),
        ("GET", "/api/v1/requests/{id}", users()),
        ("GET", "/api/v1/requests/{id}/wait", users()),
        ("GET", "/api/v1/requests/{id}/result", users()),
        ("POST", "/api/v1/requests/{id}/cancel", users()),
        // AZ-3: approvals need a person in a session with a fresh step-up; every API token,
        // even an admin's, is refused (the session path is tested in approvals.rs).
        ("POST", "/api/v1/requests/{id}/approve", nobody()),
        ("POST", "/api/v1/requests/{id}/reject", nobody()),
        // AZ-4: break-glass and its review need a person in a session (tested in approvals.rs).
        ("POST", "/api/v1/break-glass", nobody()),
        ("POST", "/api/v1/requests/{id}/review", nobody()),
        ("POST", "/api/v1/policy/check", users()),
        ("POST", "/api/v1/keys/rotate", admin()),
        ("GET", "/api/v1/alerts", auditors()),
        ("POST", "/api/v1/tokens", admin()),
        ("GET", "/api/v1/tokens", admin()),
        ("DELETE", "/api/v1/tokens/{id}", admin()),
        ("POST", "/api/v1/agents", admin()),
        ("GET", "/api/v1/agents", admin()),
        ("DELETE", "/api/v1/agents/{name}", admin()),
        ("GET", "/api/v1/audit/verify", auditors()),
        ("GET", "/api/v1/audit/export", auditors()),
        ("GET", "/api/v1/agent/keys", agent()),
        ("POST", "/api/v1/agent/claim", agent()),
        ("POST", "/api/v1/agent/jobs/{id}/heartbeat", agent()),
        ("POST", "/api/v1/agent/jobs/{id}/report", agent()),
        ("POST", "/api/v1/agent/jobs/{id}/result", agent()),
        // Last, and lift before lockdown: a lockdown revokes every caller's token, and only
        // the agent (not affected) comes after the admin.
        ("POST", "/api/v1/lockdown/lift", admin()),
        ("POST", "/api/v1/lockdown", admin()),
    ]
}

#[test]
fn az2_the_table_names_exactly_the_declared_routes() {
    let declared: BTreeSet<(String, String)> = specs()
        .iter()
        .map(|s| (s.method.to_string(), s.path.to_owned()))
        .collect();
    let tested: BTreeSet<(String, String)> = expected()
        .iter()
        .map(|(m, p, _)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(
        declared, tested,
        "every route needs a row in the authorization matrix"
    );
    for s in specs() {
        if s.path.starts_with("/api/v1/agent/") {
            assert_eq!(s.guard, Guard::Agent, "{}", s.path);
        }
    }
}

fn concrete(path: &str) -> String {
    path.replace("{id}", &uuid::Uuid::new_v4().to_string())
        .replace("{name}", "nobody")
}

#[tokio::test]
async fn az2_every_route_for_every_principal() {
    let app = TestApp::spawn_with(|o| o.start_agent = false).await;
    let mut callers: Vec<(Who, Client)> = vec![(
        Who::Anonymous,
        Client::new(app.url(), None).expect("client"),
    )];
    for role in ALL_ROLES {
        callers.push((Who::Role(*role), app.token(*role).await.0));
    }
    let agent = app.admin.create_agent("matrix-agent").await.expect("agent");
    callers.push((
        Who::Agent,
        Client::new(app.url(), Some(&agent.token)).expect("client"),
    ));

    let mut checked = 0;
    for (method, path, allowed) in expected() {
        let method: HttpMethod = method.parse().expect("method");
        for (who, client) in &callers {
            let body = (method != HttpMethod::GET && method != HttpMethod::DELETE)
                .then(|| serde_json::json!({}));
            let (status, _) = client
                .raw(method.clone(), &concrete(path), body)
                .await
                .expect("call");
            let may = allowed.contains(who);
            if may {
                assert!(
                    status != 401 && status != 403,
                    "{who:?} {method} {path}: got {status}, expected access"
                );
            } else if *who == Who::Anonymous {
                assert_eq!(status, 401, "{who:?} {method} {path}");
            } else {
                assert_eq!(status, 403, "{who:?} {method} {path}");
            }
            checked += 1;
        }
    }
    assert_eq!(checked, expected().len() * callers.len());
    // AUD-5 groundwork: RBAC denials are audited.
    // Read the store directly: the final lockdown revoked the admin's token.
    let denials: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM audit_events WHERE action = 'access.denied'")
            .fetch_one(app.stack.server.state.store.reader())
            .await
            .expect("count");
    assert!(denials > 0);
    app.stop().await;
}
