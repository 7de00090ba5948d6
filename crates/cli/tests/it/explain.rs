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
    for expected in [
        "request.created",
        "request.explain_dispatched",
        "request.explained",
    ] {
        assert!(actions.iter().any(|a| a == expected), "{actions:?}");
    }
    // Besides the plan only a rolled-back preview may have run: nothing was dispatched.
    assert!(
        actions.iter().all(|a| [
            "request.created",
            "request.explain_dispatched",
            "request.explained",
            "request.preview_dispatched",
            "request.previewed"
        ]
        .contains(&a.as_str())),
        "{actions:?}"
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

/// Previews for approvers: an UPDATE awaiting approval is dry-run by the agent in a
/// transaction it rolls back, and the request records how many rows it would change; an
/// INSERT gets no preview (sequences would move). Nothing changes either way.
#[tokio::test]
async fn a_pending_update_is_previewed_and_rolled_back() {
    let app = TestApp::spawn_with(|o| o.policy = Policy::default()).await;
    let before = app.demo_checksum().await;
    let customers = app
        .exec(&app.admin, "SELECT COUNT(*) AS n FROM customers")
        .await
        .expect("count")
        .result
        .expect("result")
        .rows[0][0]
        .as_u64()
        .expect("n");
    let create = |statement: &str| CreateRequest {
        connection: "demo".parse().expect("name"),
        statement: statement.into(),
        reason: "preview".into(),
        stream: false,
    };
    let update = app
        .admin
        .create_request(
            &create("UPDATE customers SET country = 'FR'"),
            Duration::ZERO,
        )
        .await
        .expect("update")
        .request
        .id;
    let insert = app
        .admin
        .create_request(
            &create("INSERT INTO customers (id, name, country) VALUES (999, 'x', 'FR')"),
            Duration::ZERO,
        )
        .await
        .expect("insert")
        .request
        .id;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let view = loop {
        let view = app.admin.request_view(update).await.expect("view");
        if view.preview.is_some() {
            break view;
        }
        assert!(tokio::time::Instant::now() < deadline, "no preview arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let preview = view.preview.expect("preview");
    assert_eq!(preview["rows_affected"], customers, "{preview}");
    assert_eq!(preview["rolled_back"], true);
    assert_eq!(view.state, RequestState::PendingApproval);
    assert_eq!(
        app.demo_checksum().await,
        before,
        "the dry run changed nothing"
    );
    let insert_view = app.admin.request_view(insert).await.expect("view");
    assert!(insert_view.preview.is_none(), "INSERT is never previewed");
    assert!(
        app.audit_events()
            .await
            .iter()
            .any(|e| e["action"] == "request.previewed")
    );
    app.stop().await;
}
