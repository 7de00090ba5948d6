//! Context for approvers: a SQL statement waiting for approval is explained (plain `EXPLAIN`,
//! never `ANALYZE`) by an agent, through the same signed-token path, and nothing executes.

use std::time::Duration;

use portcullis_core::{Policy, RequestState};
use portcullis_proto::api::CreateRequest;

use crate::harness::TestApp;

#[tokio::test]
async fn a_write_awaiting_approval_is_explained_without_running() {
    // The safe default policy: writes wait for approval.
    let app = TestApp::spawn_with(|o| o.policy = Policy::default()).await;
    let before = app.demo_checksum().await;
    let body = CreateRequest {
        connection: "demo".parse().expect("name"),
        statement: "UPDATE customers SET country = 'FR' WHERE id = 1".into(),
        reason: "needs an approver".into(),
        stream: false,
    };
    let created = app
        .admin
        .create_request(&body, Duration::ZERO)
        .await
        .expect("request");
    assert_eq!(created.request.state, RequestState::PendingApproval);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let view = loop {
        let view = app
            .admin
            .request_view(created.request.id)
            .await
            .expect("view");
        if view.explain.is_some() {
            break view;
        }
        assert!(tokio::time::Instant::now() < deadline, "no plan arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let plan = view.explain.expect("plan");
    assert!(plan.get("error").is_none(), "{plan}");
    let text = plan["rows"].to_string();
    assert!(
        text.contains("customers"),
        "the plan names the table: {text}"
    );
    assert_eq!(
        view.state,
        RequestState::PendingApproval,
        "explaining is not executing"
    );
    assert_eq!(app.demo_checksum().await, before);
    let actions: Vec<String> = app
        .audit_events()
        .await
        .into_iter()
        .filter(|e| e["target"] == format!("request:{}", created.request.id))
        .map(|e| e["action"].as_str().expect("action").to_owned())
        .collect();
    assert_eq!(
        actions,
        [
            "request.created",
            "request.explain_dispatched",
            "request.explained"
        ]
    );
    app.stop().await;
}

#[tokio::test]
async fn auto_approved_requests_are_not_explained() {
    let app = TestApp::spawn().await;
    let outcome = app
        .exec(&app.admin, "SELECT COUNT(*) FROM customers")
        .await
        .expect("request");
    assert_eq!(outcome.request.state, RequestState::Succeeded);
    assert!(outcome.request.explain.is_none());
    let explained = app
        .audit_events()
        .await
        .iter()
        .filter(|e| e["action"] == "request.explain_dispatched")
        .count();
    assert_eq!(explained, 0);
    app.stop().await;
}
