//! Dispatch and leases: a claim is atomic (two agents never run the same job), a lost write
//! becomes `outcome_unknown` and is never re-run, a lost read fails cleanly, a revoked agent
//! can no longer claim (EX-3, IR-5).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use portcullis_agent::Agent;
use portcullis_client::{Client, ClientError};
use portcullis_core::RequestState;
use portcullis_proto::agent::{ClaimRequest, ServedConnection};
use portcullis_proto::api::CreateRequest;
use tokio::sync::watch;

use crate::harness::TestApp;

mod dropped;
mod held;
mod stopping;

async fn start_agent(
    app: &TestApp,
    name: &str,
) -> (
    watch::Sender<bool>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let created = app.admin.create_agent(name).await.expect("agent");
    let config = portcullis::devstack::demo_agent_config(
        name,
        app.url(),
        &app.stack.server,
        &app.stack.demo_db,
    );
    let agent: Arc<Agent> = Agent::new(config, &created.token).await.expect("agent");
    let (stop, rx) = watch::channel(false);
    (stop, tokio::spawn(agent.run(rx)))
}

fn insert(i: usize) -> CreateRequest {
    CreateRequest {
        connection: "demo".parse().expect("name"),
        statement: format!(
            "INSERT INTO customers (name, email, country, created_at) VALUES ('race {i}', 'race{i}@example.com', 'GB', '2025-01-01')"
        ),
        reason: "race".into(),
        stream: false,
    }
}

#[tokio::test]
async fn ex3_two_agents_racing_run_each_job_exactly_once() {
    let app = TestApp::spawn_with(|o| o.start_agent = false).await;
    let a = start_agent(&app, "racer-a").await;
    let b = start_agent(&app, "racer-b").await;
    const N: usize = 40;
    let mut tasks = Vec::new();
    for i in 0..N {
        let client = app.admin.clone();
        tasks.push(tokio::spawn(async move {
            client
                .create_request(&insert(i), Duration::from_secs(30))
                .await
        }));
    }
    let mut ids = HashSet::new();
    for t in tasks {
        let outcome = t.await.expect("join").expect("request");
        assert_eq!(
            outcome.request.state,
            RequestState::Succeeded,
            "{:?}",
            outcome.request.error
        );
        assert_eq!(
            outcome.result.as_ref().and_then(|r| r.affected_rows),
            Some(1)
        );
        assert!(matches!(
            outcome.request.agent.as_deref(),
            Some("racer-a" | "racer-b")
        ));
        ids.insert(outcome.request.id);
    }
    assert_eq!(ids.len(), N);
    assert_eq!(
        app.demo_scalar("SELECT COUNT(*) FROM customers WHERE name LIKE 'race %'")
            .await,
        N as i64
    );
    let dispatched: Vec<String> = app
        .audit_events()
        .await
        .into_iter()
        .filter(|e| e["action"] == "request.dispatched")
        .map(|e| e["target"].as_str().expect("target").to_owned())
        .collect();
    assert_eq!(dispatched.len(), N, "one dispatch per request");
    assert_eq!(
        dispatched.iter().collect::<HashSet<_>>().len(),
        N,
        "no request dispatched twice"
    );
    for (stop, task) in [a, b] {
        stop.send_replace(true);
        let _ = task.await;
    }
    app.stop().await;
}

async fn claim_and_vanish(app: &TestApp, name: &str) -> Client {
    let created = app.admin.create_agent(name).await.expect("agent");
    Client::new(app.url(), Some(&created.token)).expect("client")
}

/// Creates `request` without waiting for it and has `agent` claim its job from the queue.
async fn create_and_claim(
    app: &TestApp,
    agent: &Client,
    request: &CreateRequest,
) -> (uuid::Uuid, portcullis_proto::agent::JobAssignment) {
    let created = app
        .admin
        .create_request(request, Duration::ZERO)
        .await
        .expect("request");
    let job = agent
        .claim(&ClaimRequest {
            connections: served(),
            wait_ms: 5_000,
        })
        .await
        .expect("claim")
        .expect("the queued job");
    assert_eq!(job.request_id, created.request.id);
    (created.request.id, job)
}

/// A read created without waiting, approved and queued (no agent serves `demo` here).
async fn queued_read(app: &TestApp, statement: &str, reason: &str) -> uuid::Uuid {
    let created = app
        .admin
        .create_request(&demo_read(statement, reason), Duration::ZERO)
        .await
        .expect("request");
    assert_eq!(created.request.state, RequestState::Approved);
    created.request.id
}

/// Waits until an agent worker is idle in its claim on `demo`, ready for a hand-off.
async fn until_idle(app: &TestApp) {
    let demo = "demo".parse().expect("name");
    let dispatch = &app.stack.server.state.dispatch;
    until("the claim never became idle", || {
        dispatch.idle_workers(&demo) > 0
    })
    .await;
}

/// Waits (at most 10 s, then fails with `what`) until `ready` holds.
async fn until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !ready() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::task::yield_now().await;
    }
}

/// Request `id` was dispatched to nobody: it is still approved, and its job, still queued,
/// goes to `agent`'s claim.
async fn queued_for(app: &TestApp, agent: &Client, id: uuid::Uuid) {
    assert_eq!(
        state_of(app, id).await,
        RequestState::Approved,
        "the request was dispatched to nobody"
    );
    let job = agent
        .claim(&ClaimRequest {
            connections: served(),
            wait_ms: 0,
        })
        .await
        .expect("claim")
        .expect("the job is still queued for another agent");
    assert_eq!(job.request_id, id);
}

/// The state of request `id` as stored.
async fn state_of(app: &TestApp, id: uuid::Uuid) -> RequestState {
    app.admin.request_view(id).await.expect("view").state
}

/// The `request.finished` events audited for request `id`.
async fn finishes(app: &TestApp, id: uuid::Uuid) -> usize {
    let target = format!("request:{id}");
    app.audit_events()
        .await
        .into_iter()
        .filter(|e| e["action"] == "request.finished" && e["target"] == target.as_str())
        .count()
}

/// An auto-approved read of the demo database.
fn demo_read(statement: &str, reason: &str) -> CreateRequest {
    CreateRequest {
        connection: "demo".parse().expect("name"),
        statement: statement.into(),
        reason: reason.into(),
        stream: false,
    }
}

fn served() -> Vec<ServedConnection> {
    vec![ServedConnection {
        name: "demo".parse().expect("name"),
        kind: portcullis_core::ConnectionKind::Sqlite,
        environment: portcullis_core::Environment::Development,
    }]
}

/// EX-3: a write whose agent vanished after claiming it ends `outcome_unknown` and is never
/// handed to another agent; a lost read fails with `agent_lost`.
#[tokio::test]
async fn ex3_a_lost_write_is_outcome_unknown_and_never_rerun() {
    let app = TestApp::spawn_with(|o| {
        o.start_agent = false;
        o.server.execution.lease_secs = 1;
    })
    .await;
    let vanishing = claim_and_vanish(&app, "vanishing").await;
    let (write, job) = create_and_claim(&app, &vanishing, &insert(1)).await;

    let outcome = app
        .admin
        .wait_request(write, Duration::from_secs(20))
        .await
        .expect("wait");
    assert_eq!(outcome.request.state, RequestState::OutcomeUnknown);
    assert_eq!(
        outcome.request.error.as_ref().map(|e| e.code.as_str()),
        Some("outcome_unknown")
    );
    // Another agent gets nothing: the write is never re-dispatched.
    let other = claim_and_vanish(&app, "second").await;
    let again = other
        .claim(&ClaimRequest {
            connections: served(),
            wait_ms: 1_500,
        })
        .await
        .expect("claim");
    assert!(
        again.is_none(),
        "a lost write must not be dispatched again: {again:?}"
    );
    // The late report of the vanished agent is refused and changes nothing.
    let late = vanishing
        .report(
            job.job_id,
            &portcullis_proto::agent::JobReport::Succeeded {
                result: Default::default(),
            },
        )
        .await
        .expect_err("late report refused");
    assert_eq!(late.status(), Some(409));
    assert_eq!(
        app.admin.request_view(write).await.expect("view").state,
        RequestState::OutcomeUnknown
    );

    let read = demo_read("SELECT 1", "read");
    let read = app
        .admin
        .create_request(&read, Duration::ZERO)
        .await
        .expect("request");
    other
        .claim(&ClaimRequest {
            connections: served(),
            wait_ms: 5_000,
        })
        .await
        .expect("claim")
        .expect("a job");
    let outcome = app
        .admin
        .wait_request(read.request.id, Duration::from_secs(20))
        .await
        .expect("wait");
    assert_eq!(outcome.request.state, RequestState::Failed);
    assert_eq!(
        outcome.request.error.as_ref().map(|e| e.code.as_str()),
        Some("agent_lost")
    );
    app.stop().await;
}

/// IR-5 groundwork: a revoked agent's credential dies at once.
/// EX-3: only the agent holding a job's lease reports it, once. Another agent's report of
/// the job, or a report of a job that does not exist, changes nothing and is refused.
#[tokio::test]
async fn ex3_only_the_lease_holder_reports_a_job_and_only_once() {
    let app = TestApp::spawn_with(|o| o.start_agent = false).await;
    let holder = claim_and_vanish(&app, "holder").await;
    let intruder = claim_and_vanish(&app, "intruder").await;
    let (created, job) =
        create_and_claim(&app, &holder, &demo_read("SELECT 1", "lease holder")).await;
    let done = portcullis_proto::agent::JobReport::Succeeded {
        result: Default::default(),
    };

    let foreign = intruder
        .report(job.job_id, &done)
        .await
        .expect_err("another agent's report is refused");
    assert_eq!(foreign.status(), Some(403), "{foreign}");
    let unknown = intruder
        .report(uuid::Uuid::new_v4(), &done)
        .await
        .expect_err("a report of no job is refused");
    assert_eq!(unknown.status(), Some(404), "{unknown}");
    assert_eq!(
        state_of(&app, created).await,
        RequestState::Dispatched,
        "a refused report changed the request"
    );

    holder.report(job.job_id, &done).await.expect("report");
    let finished = app.admin.request_view(created).await.expect("view");
    assert_eq!(finished.state, RequestState::Succeeded);
    assert_eq!(finished.agent.as_deref(), Some("holder"));
    let again = holder
        .report(job.job_id, &done)
        .await
        .expect_err("a second report is refused");
    assert_eq!(again.status(), Some(409), "{again}");
    assert_eq!(finishes(&app, created).await, 1, "one finish recorded");
    app.stop().await;
}

/// EX-3: what the lease holder reports is what the requester gets: a create that waits, and a
/// wait on the request, both answer with the reported result and with the request as stored.
#[tokio::test]
async fn ex3_the_waiting_requester_gets_the_reported_result_and_the_stored_request() {
    let app = TestApp::spawn_with(|o| o.start_agent = false).await;
    let holder = claim_and_vanish(&app, "holder").await;
    let admin = app.admin.clone();
    let read = demo_read("SELECT 7 AS n", "answered while waiting");
    let creating =
        tokio::spawn(async move { admin.create_request(&read, Duration::from_secs(20)).await });
    let job = holder
        .claim(&ClaimRequest {
            connections: served(),
            wait_ms: 10_000,
        })
        .await
        .expect("claim")
        .expect("a job");
    let admin = app.admin.clone();
    let request_id = job.request_id;
    let waiting = tokio::spawn(async move {
        admin
            .wait_request(request_id, Duration::from_secs(20))
            .await
    });
    let result = portcullis_proto::api::ExecResult {
        columns: vec![portcullis_proto::api::Column {
            name: "n".into(),
            type_name: "INTEGER".into(),
        }],
        rows: vec![vec![serde_json::json!(7)]],
        row_count: 1,
        truncated: false,
        affected_rows: None,
    };
    holder
        .report(
            job.job_id,
            &portcullis_proto::agent::JobReport::Succeeded {
                result: result.clone(),
            },
        )
        .await
        .expect("report");
    let stored = app.admin.request_view(request_id).await.expect("view");
    assert_eq!(stored.state, RequestState::Succeeded);
    for (what, answer) in [
        ("create", creating.await.expect("task").expect("created")),
        ("wait", waiting.await.expect("task").expect("waited")),
    ] {
        assert_eq!(answer.request, stored, "{what}: the request as stored");
        assert_eq!(
            answer.result.as_ref(),
            Some(&result),
            "{what}: the reported result"
        );
    }
    app.stop().await;
}

/// Uploads `lines` (NDJSON) as the result of `job`.
async fn upload(agent: &Client, job: uuid::Uuid, lines: &str) -> Result<bool, ClientError> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(lines.as_bytes().to_vec()).await.expect("queued");
    drop(tx);
    agent.upload_result(job, rx).await
}

/// EX-3: a job handed to a worker waiting in its claim as its request is created has its
/// result upload found without a store read; the upload is still taken only from the lease
/// holder and only once, and the requester gets what the holder sent.
#[tokio::test]
async fn ex3_a_result_upload_for_a_job_handed_at_creation_is_taken_only_from_its_holder() {
    upload_taken_only_from_its_holder(true).await;
}

/// EX-3: the same for a job that waited in the queue and was taken by a claim (leased on the
/// audit writer thread): found without a store read, taken only from its holder, once.
#[tokio::test]
async fn ex3_a_result_upload_for_a_job_claimed_from_the_queue_is_taken_only_from_its_holder() {
    upload_taken_only_from_its_holder(false).await;
}

async fn upload_taken_only_from_its_holder(handed_at_creation: bool) {
    let app = TestApp::spawn_with(|o| o.start_agent = false).await;
    let holder = claim_and_vanish(&app, "holder").await;
    let intruder = claim_and_vanish(&app, "intruder").await;
    let read = demo_read("SELECT 5 AS n", "handed or claimed");
    let claim = |holder: Client| async move {
        let job = holder
            .claim(&ClaimRequest {
                connections: served(),
                wait_ms: 20_000,
            })
            .await;
        (holder, job)
    };
    let dispatch = &app.stack.server.state.dispatch;
    let (created, (holder, job)) = if handed_at_creation {
        let claiming = tokio::spawn(claim(holder));
        // The holder's worker is idle in its claim before the request exists: a hand-off.
        until_idle(&app).await;
        let created = app.admin.create_request(&read, Duration::ZERO).await;
        (created, claiming.await.expect("task"))
    } else {
        // Nobody waits: the job is queued, and the holder's claim takes it from there.
        let created = app.admin.create_request(&read, Duration::ZERO).await;
        (created, claim(holder).await)
    };
    let created = created.expect("request");
    let job = job.expect("claim").expect("the job");
    assert_eq!(job.request_id, created.request.id);
    let now = portcullis_server::clock::now_ms();
    assert!(
        dispatch.handed_to(job.job_id, "holder", now),
        "the lease is known to the upload"
    );
    assert!(!dispatch.handed_to(job.job_id, "intruder", now));

    let lines = "{\"columns\":[{\"name\":\"n\",\"type\":\"INTEGER\"}]}\n[5]\n{\"outcome\":\"succeeded\",\"row_count\":1,\"truncated\":false}\n";
    let foreign = upload(&intruder, job.job_id, lines)
        .await
        .expect_err("another agent's upload is refused");
    assert_eq!(foreign.status(), Some(403), "{foreign}");
    assert_eq!(
        state_of(&app, created.request.id).await,
        RequestState::Dispatched,
        "a refused upload changed the request"
    );
    assert!(
        dispatch.handed_to(job.job_id, "holder", now),
        "a refused upload forgot the holder's lease"
    );

    assert!(upload(&holder, job.job_id, lines).await.expect("upload"));
    assert!(
        !dispatch.handed_to(job.job_id, "holder", now),
        "a reported job is forgotten"
    );
    let answer = app
        .admin
        .wait_request(created.request.id, Duration::from_secs(10))
        .await
        .expect("outcome");
    assert_eq!(answer.request.state, RequestState::Succeeded);
    assert_eq!(answer.request.agent.as_deref(), Some("holder"));
    let result = answer.result.expect("the uploaded result");
    assert_eq!(result.rows, vec![vec![serde_json::json!(5)]]);

    let again = upload(&holder, job.job_id, lines)
        .await
        .expect_err("a second upload is refused");
    assert_eq!(again.status(), Some(409), "{again}");
    assert_eq!(
        finishes(&app, created.request.id).await,
        1,
        "one finish recorded"
    );
    app.stop().await;
}

#[tokio::test]
async fn ir5_a_revoked_agent_cannot_claim() {
    let app = TestApp::spawn_with(|o| o.start_agent = false).await;
    let agent = claim_and_vanish(&app, "doomed").await;
    assert!(
        agent
            .claim(&ClaimRequest {
                connections: served(),
                wait_ms: 0
            })
            .await
            .expect("claim")
            .is_none()
    );
    app.admin.revoke_agent("doomed").await.expect("revoke");
    let err = agent
        .claim(&ClaimRequest {
            connections: served(),
            wait_ms: 0,
        })
        .await
        .expect_err("refused");
    assert_eq!(err.status(), Some(401));
    app.stop().await;
}

/// IR-5: a claim already waiting when its agent is revoked (authenticated before the
/// revocation) ends at once, refused, and a request approved after the revocation is not
/// handed to it: the job stays queued for another agent, which gets it.
#[tokio::test]
async fn ir5_a_claim_waiting_when_its_agent_is_revoked_ends_refused_and_gets_no_job() {
    let app = TestApp::spawn_with(|o| o.start_agent = false).await;
    let doomed = claim_and_vanish(&app, "doomed").await;
    let spare = claim_and_vanish(&app, "spare").await;
    let waiting = tokio::spawn(async move {
        doomed
            .claim(&ClaimRequest {
                connections: served(),
                wait_ms: 20_000,
            })
            .await
    });
    let demo = "demo".parse().expect("name");
    let dispatch = &app.stack.server.state.dispatch;
    until_idle(&app).await;
    app.admin.revoke_agent("doomed").await.expect("revoke");
    assert_eq!(
        dispatch.idle_workers(&demo),
        0,
        "the revoked worker is idle"
    );
    let created = app
        .admin
        .create_request(
            &demo_read("SELECT 7", "after the revocation"),
            Duration::ZERO,
        )
        .await
        .expect("request");
    let ended = waiting.await.expect("task");
    let err = ended.expect_err("the revoked agent's waiting claim is refused, not given a job");
    assert_eq!(err.status(), Some(401), "{err}");
    queued_for(&app, &spare, created.request.id).await;
    app.stop().await;
}

/// IR-5, the store's last word: a claim that passed authentication and the dispatcher's check
/// (the credential still cached, no revocation marked in this process) leases nothing from
/// the queue once the store records the agent revoked. The revocation is written to the
/// store directly here, to reach that statement without the dispatcher's mark.
#[tokio::test]
async fn ir5_the_queue_leases_nothing_to_an_agent_the_store_records_revoked() {
    let app = TestApp::spawn_with(|o| o.start_agent = false).await;
    let doomed = claim_and_vanish(&app, "doomed").await;
    let spare = claim_and_vanish(&app, "spare").await;
    let nothing = ClaimRequest {
        connections: served(),
        wait_ms: 0,
    };
    // Authenticated once, so its credential is cached.
    assert!(doomed.claim(&nothing).await.expect("claim").is_none());
    let created = app
        .admin
        .create_request(&demo_read("SELECT 8", "queued"), Duration::ZERO)
        .await
        .expect("request");
    let store = &app.stack.server.state.store;
    let mut tx = store.begin().await.expect("begin");
    sqlx::query("UPDATE agents SET revoked_at_ms = 1 WHERE name = 'doomed'")
        .execute(&mut *tx)
        .await
        .expect("revoke in the store");
    tx.commit().await.expect("commit");
    let claimed = doomed
        .claim(&nothing)
        .await
        .expect("the cached credential still authenticates");
    assert!(claimed.is_none(), "a job was leased to a revoked agent");
    queued_for(&app, &spare, created.request.id).await;
    app.stop().await;
}

/// IR-5, the last check before a token leaves: a worker that registered idle in the instant
/// between its agent's revocation mark and its own look at that mark (`claim_job` registers,
/// then checks) can be taken for a hand-off. The committed hand-off is then never delivered:
/// the worker's channel closes without a job, and the job goes back to the queue, recorded,
/// for another agent. The worker is registered here directly, after the mark, to reach that
/// instant every time.
#[tokio::test]
async fn ir5_a_hand_off_taken_for_a_revoked_agent_is_requeued_not_delivered() {
    use tokio::sync::oneshot::error::TryRecvError;
    let app = TestApp::spawn_with(|o| o.start_agent = false).await;
    let _doomed = claim_and_vanish(&app, "doomed").await;
    let spare = claim_and_vanish(&app, "spare").await;
    let demo: portcullis_core::ConnectionName = "demo".parse().expect("name");
    let dispatch = &app.stack.server.state.dispatch;
    dispatch.revoke("doomed");
    let mut worker = dispatch.register_idle(
        std::slice::from_ref(&demo),
        "doomed",
        &portcullis_server::audit::Context::system("test"),
    );
    assert_eq!(dispatch.idle_workers(&demo), 1);
    let created = app
        .admin
        .create_request(
            &demo_read("SELECT 9", "handed, then held back"),
            Duration::ZERO,
        )
        .await
        .expect("request");
    assert_eq!(
        dispatch.idle_workers(&demo),
        0,
        "the request did not take the idle worker for a hand-off"
    );
    // The create answers after its commit and the delivery (or the requeue) are done.
    assert!(
        matches!(worker.receiver.try_recv(), Err(TryRecvError::Closed)),
        "a revoked agent's worker was handed a job"
    );
    let target = format!("request:{}", created.request.id);
    let requeued: Vec<serde_json::Value> = app
        .audit_events()
        .await
        .into_iter()
        .filter(|e| e["action"] == "request.requeued" && e["target"] == target.as_str())
        .collect();
    assert_eq!(requeued.len(), 1, "the return to the queue is audited once");
    assert_eq!(requeued[0]["details"]["agent"], "doomed");
    assert_eq!(requeued[0]["details"]["reason"], "undelivered");
    drop(worker);
    queued_for(&app, &spare, created.request.id).await;
    app.stop().await;
}

/// Push dispatch: an agent already waiting in its long-poll receives a job queued afterwards
/// within the same call (no retry, no poll interval).
#[tokio::test]
async fn a_waiting_agent_is_woken_by_a_new_job() {
    let app = TestApp::spawn_with(|o| o.start_agent = false).await;
    let agent = claim_and_vanish(&app, "waiter").await;
    let waiting = tokio::spawn(async move {
        agent
            .claim(&ClaimRequest {
                connections: served(),
                wait_ms: 20_000,
            })
            .await
    });
    // Let the long-poll reach the server before queueing the job.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while app
        .admin
        .list_agents()
        .await
        .expect("agents")
        .iter()
        .all(|a| !a.connected)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent never connected"
        );
        tokio::task::yield_now().await;
    }
    let read = demo_read("SELECT 2", "push");
    let created = app
        .admin
        .create_request(&read, Duration::ZERO)
        .await
        .expect("request");
    let job = waiting
        .await
        .expect("join")
        .expect("claim")
        .expect("woken with the job");
    assert_eq!(job.request_id, created.request.id);
    app.stop().await;
}

/// Heartbeats keep a long statement's lease alive: a read that runs for several lease periods
/// (2 s lease, heartbeats every second) still succeeds instead of being settled as lost, and
/// its first heartbeat marks it running.
#[tokio::test]
async fn heartbeats_keep_a_long_job_leased() {
    let app = TestApp::spawn_with(|o| o.server.execution.lease_secs = 2).await;
    // Several seconds of work for SQLite: longer than the lease, so only heartbeats keep it.
    let statement = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 15000000) SELECT COUNT(*) FROM c";
    let outcome = app.exec(&app.admin, statement).await.expect("request");
    let outcome = if outcome.request.state.is_terminal() {
        outcome
    } else {
        app.admin
            .wait_request(outcome.request.id, Duration::from_secs(60))
            .await
            .expect("wait")
    };
    assert_eq!(
        outcome.request.state,
        RequestState::Succeeded,
        "{:?}",
        outcome.request.error
    );
    assert_eq!(
        outcome.result.expect("result").rows,
        vec![vec![serde_json::json!(15_000_000)]]
    );
    let running = app
        .audit_events()
        .await
        .iter()
        .filter(|e| e["action"] == "request.running")
        .count();
    assert_eq!(running, 1, "a heartbeat marked the request running");
    app.stop().await;
}

/// A claim skips the store's queue only while it is known empty: a look that found nothing
/// is trusted until a job is announced queued on the connection, and a job queued while no
/// worker waits (so not handed to one) is announced by the transaction that queued it, so
/// the very next claim looks and takes it.
#[tokio::test]
async fn a_claim_skips_the_queue_only_until_a_job_is_announced() {
    let app = TestApp::spawn_with(|o| o.start_agent = false).await;
    let agent = claim_and_vanish(&app, "looker").await;
    let demo: portcullis_core::ConnectionName = "demo".parse().expect("name");
    let dispatch = &app.stack.server.state.dispatch;
    let request = ClaimRequest {
        connections: served(),
        wait_ms: 0,
    };
    let claim = || agent.claim(&request);
    assert!(
        !dispatch.queue_known_empty(std::slice::from_ref(&demo)),
        "nothing is known of a queue before the first look"
    );
    assert!(
        claim().await.expect("claim").is_none(),
        "nothing queued yet"
    );
    assert!(
        dispatch.queue_known_empty(std::slice::from_ref(&demo)),
        "the look that found nothing is kept"
    );

    let created = app
        .admin
        .create_request(&demo_read("SELECT 3", "queued"), Duration::ZERO)
        .await
        .expect("request");
    assert!(
        !dispatch.queue_known_empty(std::slice::from_ref(&demo)),
        "the job queued with no idle worker was announced"
    );
    let job = claim()
        .await
        .expect("claim")
        .expect("the next claim looks at the queue and takes the job");
    assert_eq!(job.request_id, created.request.id);
    assert!(
        claim().await.expect("claim").is_none(),
        "the queue is empty again"
    );
    assert!(dispatch.queue_known_empty(std::slice::from_ref(&demo)));
    app.stop().await;
}
