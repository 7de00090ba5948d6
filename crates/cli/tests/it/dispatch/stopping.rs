//! A stopping server answers everyone who is only waiting on it before it goes: a client
//! waiting for a request's outcome gets the request as it stands, one waiting for its result
//! is told none has begun, an agent worker idle in its claim gets "no job". Neither holds the stop open nor loses its connection unanswered.

use std::time::Duration;

use portcullis_core::{ConnectionKind, Environment, Policy, RequestState};
use portcullis_proto::ErrorCode;
use portcullis_proto::agent::{ClaimRequest, ServedConnection};
use portcullis_proto::api::CreateRequest;
use portcullis_server::config::ConnectionDecl;

use super::{claim_and_vanish, until};
use crate::harness::TestApp;

/// Far sooner than any of the waits below would end by itself (60 s for the clients, 30 s for
/// the claim): an answer within it came from the stop, not from a wait running out.
const ANSWERED_WITHIN: Duration = Duration::from_secs(15);

/// A client waiting (`GET /requests/{id}/wait`, 60 s) on a write that awaits approval, another
/// waiting for its result (`GET /requests/{id}/result`, 60 s), and an agent worker idle in a
/// 30 s claim on a connection with nothing queued: the server's stop answers all three at
/// once — the request still `pending_approval`, `result_not_ready`, the claim with no job —
/// and the stop itself does not wait for them. Before waits ended at the stop, both held their
/// connections until their own time ran out, the stop gave up on them after its grace, and the
/// client's answer, if any, came from a server whose state store was closed.
#[tokio::test(flavor = "multi_thread")]
async fn ex3_a_stopping_server_answers_waiting_clients_and_idle_claims_at_once() {
    let app = TestApp::spawn_with(|o| {
        o.start_agent = false;
        // The safe default: writes wait for an approver.
        o.policy = Policy::default();
        // A connection no request goes to: a claim on it stays idle.
        o.server.connections.push(ConnectionDecl {
            name: "spare".parse().expect("name"),
            kind: ConnectionKind::Sqlite,
            environment: Environment::Development,
        });
    })
    .await;
    let created = app
        .admin
        .create_request(
            &CreateRequest {
                connection: "demo".parse().expect("name"),
                statement: "UPDATE customers SET country = 'FR' WHERE id = 1".into(),
                reason: "waits for an approver".into(),
                stream: false,
            },
            Duration::ZERO,
        )
        .await
        .expect("request");
    assert_eq!(created.request.state, RequestState::PendingApproval);
    let id = created.request.id;

    let waiter = {
        let client = app.admin.clone();
        tokio::spawn(async move { client.wait_request(id, Duration::from_secs(60)).await })
    };
    let reader = {
        let client = app.admin.clone();
        tokio::spawn(async move {
            client
                .result_stream(id, Duration::from_secs(60))
                .await
                .map(|_| ())
        })
    };
    let agent = claim_and_vanish(&app, "idle").await;
    let claim = tokio::spawn(async move {
        agent
            .claim(&ClaimRequest {
                connections: vec![ServedConnection {
                    name: "spare".parse().expect("name"),
                    kind: ConnectionKind::Sqlite,
                    environment: Environment::Development,
                }],
                wait_ms: 30_000,
            })
            .await
    });
    let state = app.stack.server.state.clone();
    until(
        "the client never waited for its request and its result",
        || state.dispatch.waiting_for(id) >= 2,
    )
    .await;
    let spare = "spare".parse().expect("name");
    until("the claim never became idle", || {
        state.dispatch.idle_workers(&spare) > 0
    })
    .await;

    tokio::time::timeout(ANSWERED_WITHIN, app.stop())
        .await
        .expect("the stop did not wait for the waits");
    let waited = tokio::time::timeout(ANSWERED_WITHIN, waiter)
        .await
        .expect("the waiting client was answered at the stop")
        .expect("join")
        .expect("an answer, not a lost connection");
    assert_eq!(waited.request.id, id);
    assert_eq!(waited.request.state, RequestState::PendingApproval);
    assert!(waited.result.is_none());
    let read = tokio::time::timeout(ANSWERED_WITHIN, reader)
        .await
        .expect("the client waiting for the result was answered at the stop")
        .expect("join")
        .expect_err("no result has begun");
    assert_eq!(read.code(), Some(ErrorCode::ResultNotReady), "{read}");
    let claimed = tokio::time::timeout(ANSWERED_WITHIN, claim)
        .await
        .expect("the idle claim was answered at the stop")
        .expect("join")
        .expect("an answer, not a lost connection");
    assert!(
        claimed.is_none(),
        "a stopping server leases nothing: {claimed:?}"
    );
}
