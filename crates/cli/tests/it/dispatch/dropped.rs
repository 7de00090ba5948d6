//! What follows a commit is not lost with a caller that went away: an HTTP handler's future
//! is dropped when its client disconnects, and the outcome it had committed must still reach
//! whoever waits for it.

use std::future::Future;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use portcullis_core::RequestState;
use portcullis_proto::agent::JobReport;
use portcullis_proto::api::{Column, ExecResult};
use portcullis_server::auth::AgentPrincipal;

use super::{claim_and_vanish, create_and_claim, demo_read, finishes};
use crate::harness::TestApp;

/// EX-3: an agent's report whose caller is dropped once the report is on its way to the
/// writer thread (the agent went away right after its upload) still publishes the outcome:
/// the requester gets the result the agent reported, rows and all, not "succeeded" without
/// them. The report is polled exactly once — which hands its transaction to the writer
/// thread — and dropped, with no timing involved.
#[tokio::test(flavor = "multi_thread")]
async fn ex3_a_report_dropped_after_it_reached_the_writer_still_answers_the_requester() {
    let app = TestApp::spawn_with(|o| o.start_agent = false).await;
    let holder = claim_and_vanish(&app, "holder").await;
    let (created, job) =
        create_and_claim(&app, &holder, &demo_read("SELECT 5 AS n", "dropped report")).await;

    let state = app.stack.server.state.clone();
    let agent = AgentPrincipal {
        id: String::new(),
        name: "holder".into(),
    };
    let ctx = portcullis_server::audit::Context::system("test");
    let report = JobReport::Succeeded {
        result: ExecResult {
            columns: vec![Column {
                name: "n".into(),
                type_name: "INTEGER".into(),
            }],
            rows: vec![vec![serde_json::json!(5)]],
            row_count: 1,
            truncated: false,
            affected_rows: None,
        },
    };
    let mut reporting = Box::pin(portcullis_server::lifecycle::report_job(
        &state, &agent, &ctx, job.job_id, report, false,
    ));
    let first = reporting
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()));
    assert!(
        matches!(first, Poll::Pending),
        "the report finished within one poll, before any commit could"
    );
    drop(reporting);

    let answer = app
        .admin
        .wait_request(created, Duration::from_secs(20))
        .await
        .expect("outcome");
    assert_eq!(answer.request.state, RequestState::Succeeded);
    assert_eq!(
        answer.result.expect("the reported result").rows,
        vec![vec![serde_json::json!(5)]],
        "the requester got the rows the agent reported"
    );
    assert_eq!(finishes(&app, created).await, 1);
    app.stop().await;
}
