//! A stopping server first drains: it takes no new request and leases no job, while the jobs
//! its agents are running still report, so their waiting clients get their results. Then it
//! answers everyone who is only waiting on it before it goes: a client waiting for a
//! request's outcome gets the request as it stands, one waiting for its result is told none
//! has begun, an agent worker idle in its claim gets "no job". Neither holds the stop open nor
//! loses its connection unanswered.

use std::time::Duration;

use portcullis_core::{ConnectionKind, Environment, Policy, RequestState};
use portcullis_proto::ErrorCode;
use portcullis_proto::agent::{ClaimRequest, ServedConnection};
use portcullis_proto::api::CreateRequest;
use portcullis_server::config::ConnectionDecl;

use super::held::HeldWriter;
use super::{
    claim_and_vanish, create_and_claim, demo_read, queued_read, served, until, until_idle, upload,
};
use crate::harness::TestApp;

/// Far sooner than any of the waits below would end by itself (60 s for the clients, 30 s for
/// the claim): an answer within it came from the stop, not from a wait running out.
const ANSWERED_WITHIN: Duration = Duration::from_secs(15);

/// A client waiting (`GET /requests/{id}/wait`, 60 s) on a write that awaits approval, another
/// waiting for its result (`GET /requests/{id}/result`, 60 s), a third for the streamed result
/// of a queued read, and an agent worker idle in a 30 s claim on a connection with nothing
/// queued: the server's stop answers all four at once — the request still
/// `pending_approval`, `result_not_ready` twice, the claim with no job —
/// and the stop itself does not wait for them. Before waits ended at the stop, they held their
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
    let reader = reading(&app, id);
    // A streamed read, approved but queued (no agent serves `demo`): its reader waits for an
    // upload to take it.
    let mut streamed_read = demo_read("SELECT 1 AS n", "streamed, never run");
    streamed_read.stream = true;
    let streamed = app
        .admin
        .create_request(&streamed_read, Duration::ZERO)
        .await
        .expect("streamed request");
    assert_eq!(streamed.request.state, RequestState::Approved);
    let streamed = streamed.request.id;
    let stream_reader = reading(&app, streamed);
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
    until("the client never waited for the streamed result", || {
        state.dispatch.waiting_for(streamed) >= 1
    })
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
    not_ready_at_the_stop(reader, "the result").await;
    not_ready_at_the_stop(stream_reader, "the streamed result").await;
    answered_without_a_job(claim).await;
}

/// EX-3: the drain. An agent holds a job it claimed and a client waits for that request's
/// outcome when the server is told to stop. While it drains, a new request is refused — 503,
/// `server_stopping`, `Retry-After` — and nothing of it is recorded; `/ready` answers 503
/// (load balancers send nothing more); a second worker's claim
/// is held without a job; the running job's report is taken, and the waiting client gets the request `succeeded` with its
/// result. Only then does the stop end, and the idle claim is answered with no job. Without
/// the drain the stop ended the client's wait at once (the request still `dispatched`) and
/// closed the listener the report needed.
#[tokio::test(flavor = "multi_thread")]
async fn ex3_a_draining_server_takes_the_report_of_a_running_job_and_refuses_new_requests() {
    let app = TestApp::spawn_with(|o| {
        o.start_agent = false;
        o.server.execution.drain_secs = 60;
    })
    .await;
    let holder = claim_and_vanish(&app, "holder").await;
    let (id, job) = create_and_claim(&app, &holder, &demo_read("SELECT 7 AS n", "drained")).await;
    let state = app.stack.server.state.clone();
    let waiter = {
        let client = app.admin.clone();
        tokio::spawn(async move { client.wait_request(id, Duration::from_secs(60)).await })
    };
    until("the client never waited for its request", || {
        state.dispatch.waiting_for(id) >= 1
    })
    .await;
    let idle = claiming(&holder);
    until_idle(&app).await;
    let (url, token) = (app.url().to_owned(), app.stack.admin_token.clone());
    let stop = tokio::spawn(app.stop());
    until("the server never began to drain", || state.is_draining()).await;

    let refused = reqwest::Client::new()
        .post(format!("{url}/api/v1/requests"))
        .bearer_auth(&token)
        .json(&demo_read("SELECT 8 AS n", "too late"))
        .send()
        .await
        .expect("an answer, not a closed listener");
    assert_eq!(refused.status(), 503);
    let retry: u64 = refused
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!(retry > 0);
    let problem: serde_json::Value = refused.json().await.expect("problem document");
    assert_eq!(problem["code"], "unavailable", "{problem}");
    assert_eq!(problem["reason"], "server_stopping", "{problem}");
    let ready = reqwest::get(format!("{url}/ready"))
        .await
        .expect("readiness");
    assert_eq!(ready.status(), 503, "a draining server is not ready");
    assert_eq!(ready.text().await.expect("body"), "stopping");
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM requests")
        .fetch_one(state.store.reader())
        .await
        .expect("count");
    assert_eq!(recorded, 1, "a refused request was recorded");
    assert!(
        !idle.is_finished(),
        "a draining server's claim is held, not answered at once"
    );

    assert!(
        upload(&holder, job.job_id, SEVEN)
            .await
            .expect("the report of a running job is taken while the server drains")
    );
    let waited = tokio::time::timeout(ANSWERED_WITHIN, waiter)
        .await
        .expect("the waiting client was answered")
        .expect("join")
        .expect("an answer, not a lost connection");
    assert_eq!(waited.request.state, RequestState::Succeeded, "{waited:?}");
    let result = waited
        .result
        .expect("the result, delivered during the drain");
    assert_eq!(result.rows, vec![vec![serde_json::json!(7)]]);
    stopped_without_a_job(stop, idle).await;
}

/// EX-3: a request decided an instant before the server began to stop, with the drain not yet
/// seen, and given to the writer thread then, is refused there if the thread runs it only
/// after the drain began, like any other new request: 503 `server_stopping`, nothing of it
/// recorded, and the agent worker it had taken for a hand-off is freed and gets no job. The
/// test holds the writer thread in a transaction of its own until the drain has begun, with
/// the request's transaction queued behind it. Without the check in that transaction the
/// request was recorded and its job leased to the idle worker during the drain.
#[tokio::test(flavor = "multi_thread")]
async fn ex3_a_request_that_reaches_the_writer_after_the_drain_began_is_refused_and_not_recorded() {
    let app = TestApp::spawn_with(|o| {
        o.start_agent = false;
        o.server.execution.drain_secs = 60;
    })
    .await;
    let holder = claim_and_vanish(&app, "holder").await;
    // A running job keeps the drain open while the rest is checked.
    let (_, job) = create_and_claim(&app, &holder, &demo_read("SELECT 7 AS n", "drained")).await;
    let state = app.stack.server.state.clone();
    let idle = claiming(&holder);
    until_idle(&app).await;
    let writer = HeldWriter::hold(&state, |_| {}).await;
    let late = {
        let client = app.admin.clone();
        tokio::spawn(async move {
            client
                .create_request(
                    &demo_read("SELECT 8 AS n", "decided before the drain"),
                    Duration::from_secs(30),
                )
                .await
        })
    };
    let demo = "demo".parse().expect("name");
    // The request took the worker after its first check of the drain, which has not begun.
    until("the request never took the idle worker", || {
        state.dispatch.idle_workers(&demo) == 0
    })
    .await;
    until("the request never reached the writer thread", || {
        state.audit.transactions_in_flight() >= 2
    })
    .await;
    let stop = tokio::spawn(app.stop());
    until("the server never began to drain", || state.is_draining()).await;
    writer.release().await;

    let refused = tokio::time::timeout(ANSWERED_WITHIN, late)
        .await
        .expect("the request was answered")
        .expect("join")
        .expect_err("a request that reaches the writer during the drain is refused");
    match &refused {
        portcullis_client::ClientError::Api { status, problem } => {
            assert_eq!(*status, 503, "{refused}");
            assert_eq!(problem.code, ErrorCode::Unavailable, "{refused}");
            assert_eq!(
                problem.reason.as_deref(),
                Some("server_stopping"),
                "{refused}"
            );
        }
        other => panic!("not the server's refusal: {other}"),
    }
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM requests")
        .fetch_one(state.store.reader())
        .await
        .expect("count");
    assert_eq!(recorded, 1, "the refused request was recorded");
    let leased: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'leased'")
        .fetch_one(state.store.reader())
        .await
        .expect("count");
    assert_eq!(leased, 1, "a job was leased during the drain");

    assert!(
        upload(&holder, job.job_id, SEVEN)
            .await
            .expect("the running job's report")
    );
    stopped_without_a_job(stop, idle).await;
}

/// EX-3: the drain counts the jobs agents are running only once the writer thread has
/// committed what it was given before the drain began. Here a transaction that leases a
/// queued job is in flight on the writer thread, its lease written but not yet committed,
/// when the server is told to stop: the drain waits for it, and then waits for that job as
/// for any running one. Without that wait the drain counted no running job, since the lease
/// was not yet committed, and the stop went on at once; the job would then have run on an
/// agent with no server to take its report.
#[tokio::test(flavor = "multi_thread")]
async fn ex3_the_drain_counts_a_lease_committed_an_instant_after_it_began() {
    let app = TestApp::spawn_with(|o| {
        o.start_agent = false;
        o.server.execution.drain_secs = 5;
    })
    .await;
    claim_and_vanish(&app, "holder").await;
    let queued = queued_read(&app, "SELECT 9 AS n", "leased as the drain begins").await;
    let request = queued.to_string();
    let state = app.stack.server.state.clone();
    // The lease as a claim makes it, held uncommitted on the writer thread.
    let writer = HeldWriter::hold(&state, move |m| {
        let until = i64::MAX / 2;
        let leased = m
            .conn()
            .execute(
                "UPDATE jobs SET state = 'leased', agent = 'holder', nonce = randomblob(16), \
                 leased_at_ms = 0, lease_until_ms = ?1 WHERE request_id = ?2 AND state = 'queued'",
                (until, request.as_str()),
            )
            .expect("lease");
        assert_eq!(leased, 1, "the queued job");
    })
    .await;
    let stop = tokio::spawn(app.stop());
    until("the server never began to drain", || state.is_draining()).await;
    assert!(
        tokio::time::timeout(NOT_WITHIN, state.stopping())
            .await
            .is_err(),
        "the drain ended while a lease was in flight on the writer thread"
    );
    writer.release().await;
    assert!(
        tokio::time::timeout(NOT_WITHIN, state.stopping())
            .await
            .is_err(),
        "the drain did not wait for the job leased as it began"
    );
    tokio::time::timeout(ANSWERED_WITHIN, stop)
        .await
        .expect("the stop ended with its drain")
        .expect("join");
}

/// EX-3: a claim that found a job queued an instant before the server began to stop, and
/// whose lease the writer thread runs only after the drain began, leases nothing: the worker
/// is held, then told there is no job, and the drain, with no job running, ends at once. The
/// test holds the writer thread until the drain has begun, with the claim's lease queued
/// behind it. Without the check in the lease's transaction the job was leased during the
/// drain, and handed to the worker of a server that was stopping.
#[tokio::test(flavor = "multi_thread")]
async fn ex3_a_claim_whose_lease_reaches_the_writer_after_the_drain_began_leases_nothing() {
    let app = TestApp::spawn_with(|o| {
        o.start_agent = false;
        o.server.execution.drain_secs = 60;
    })
    .await;
    let holder = claim_and_vanish(&app, "holder").await;
    queued_read(&app, "SELECT 6 AS n", "claimed as the drain begins").await;
    let state = app.stack.server.state.clone();
    let writer = HeldWriter::hold(&state, |_| {}).await;
    let claim = claiming(&holder);
    until("the claim's lease never reached the writer thread", || {
        state.audit.transactions_in_flight() >= 2
    })
    .await;
    let stop = tokio::spawn(app.stop());
    until("the server never began to drain", || state.is_draining()).await;
    writer.release().await;
    answered_without_a_job(claim).await;
    tokio::time::timeout(ANSWERED_WITHIN, stop)
        .await
        .expect("the stop ended at once, no job running")
        .expect("join");
}

/// The report of the running job in these tests: one row, 7.
const SEVEN: &str = "{\"columns\":[{\"name\":\"n\",\"type\":\"INTEGER\"}]}\n[7]\n{\"outcome\":\"succeeded\",\"row_count\":1,\"truncated\":false}\n";

/// The stop ended, no job running any more, and the claim held during the drain got no job.
async fn stopped_without_a_job(
    stop: tokio::task::JoinHandle<()>,
    idle: tokio::task::JoinHandle<
        Result<Option<portcullis_proto::agent::JobAssignment>, portcullis_client::ClientError>,
    >,
) {
    tokio::time::timeout(ANSWERED_WITHIN, stop)
        .await
        .expect("the stop ended once no job was running")
        .expect("join");
    answered_without_a_job(idle).await;
}

/// How long a drain that must still be running is watched for not ending: far less than the
/// 5 s it may run for, far more than it takes when it counts no running job.
const NOT_WITHIN: Duration = Duration::from_millis(500);

/// `agent`'s worker claiming a job of `demo` for up to 30 s, in a task of its own.
fn claiming(
    agent: &portcullis_client::Client,
) -> tokio::task::JoinHandle<
    Result<Option<portcullis_proto::agent::JobAssignment>, portcullis_client::ClientError>,
> {
    let agent = agent.clone();
    tokio::spawn(async move {
        agent
            .claim(&ClaimRequest {
                connections: served(),
                wait_ms: 30_000,
            })
            .await
    })
}

/// A client waiting up to 60 s for the result of request `id` to begin, in a task of its own.
fn reading(
    app: &TestApp,
    id: uuid::Uuid,
) -> tokio::task::JoinHandle<Result<(), portcullis_client::ClientError>> {
    let client = app.admin.clone();
    tokio::spawn(async move {
        client
            .result_stream(id, Duration::from_secs(60))
            .await
            .map(|_| ())
    })
}

/// The client waiting for `what` was answered at the stop: `result_not_ready`, none has begun.
async fn not_ready_at_the_stop(
    reader: tokio::task::JoinHandle<Result<(), portcullis_client::ClientError>>,
    what: &str,
) {
    let read = tokio::time::timeout(ANSWERED_WITHIN, reader)
        .await
        .unwrap_or_else(|_| panic!("the client waiting for {what} was answered at the stop"))
        .expect("join")
        .expect_err("no result has begun");
    assert_eq!(
        read.code(),
        Some(ErrorCode::ResultNotReady),
        "{what}: {read}"
    );
}

/// The claim was answered at the stop, with no job: a stopping server leases nothing.
async fn answered_without_a_job(
    claim: tokio::task::JoinHandle<
        Result<Option<portcullis_proto::agent::JobAssignment>, portcullis_client::ClientError>,
    >,
) {
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
