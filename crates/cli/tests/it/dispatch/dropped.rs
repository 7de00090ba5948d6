//! What follows a commit is not lost with a caller that went away: an HTTP handler's future
//! is dropped when its client disconnects, and the outcome it had committed must still reach
//! whoever waits for it.

use std::future::Future;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use portcullis_core::RequestState;
use portcullis_proto::agent::{ClaimRequest, JobReport};
use portcullis_proto::api::{Column, ExecResult};
use portcullis_server::auth::AgentPrincipal;

use super::held::HeldWriter;
use super::{
    claim_and_vanish, create_and_claim, demo_read, finishes, queued_for, queued_read, served,
};
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

/// EX-3: a claim whose caller is dropped once its lease is on the writer thread (the agent's
/// connection went away while it waited) loses no job and runs none twice: the lease
/// commits, finds no claim to give the job to, and the job goes back to the queue, recorded
/// `request.requeued`, its token never sent; the next claim gets it. The claim is polled
/// until its lease is queued behind a transaction the test holds on the writer thread, then
/// dropped, and only then is the writer let go, with no timing involved.
#[tokio::test(flavor = "multi_thread")]
async fn ex3_a_claim_dropped_after_its_lease_reached_the_writer_loses_no_job() {
    let app = TestApp::spawn_with(|o| o.start_agent = false).await;
    let holder = claim_and_vanish(&app, "holder").await;
    let id = queued_read(&app, "SELECT 4 AS n", "claim dropped").await;

    let state = app.stack.server.state.clone();
    let writer = HeldWriter::hold(&state, |_| {}).await;
    let agent = AgentPrincipal {
        id: String::new(),
        name: "holder".into(),
    };
    let ctx = portcullis_server::audit::Context::system("test");
    let claim = ClaimRequest {
        connections: served(),
        wait_ms: 5_000,
    };
    let mut claiming = Box::pin(portcullis_server::lifecycle::claim_job(
        &state, &agent, &ctx, claim,
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while state.audit.transactions_in_flight() < 2 {
        let polled = claiming
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()));
        assert!(
            matches!(polled, Poll::Pending),
            "the claim ended before its lease could commit"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "the claim's lease never reached the writer thread"
        );
        tokio::task::yield_now().await;
    }
    drop(claiming);
    writer.release().await;

    // The lease commits, finds its claim gone, and returns the job to the queue, recorded.
    let target = format!("request:{id}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let requeued: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM audit_events WHERE action = 'request.requeued' AND target = ?",
        )
        .bind(&target)
        .fetch_one(state.store.reader())
        .await
        .expect("count");
        if requeued == 1 {
            break;
        }
        assert_eq!(requeued, 0);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the undelivered lease was never returned to the queue"
        );
        tokio::task::yield_now().await;
    }
    queued_for(&app, &holder, id).await;
    app.stop().await;
}
