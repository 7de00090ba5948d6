//! An agent stopped by its orchestrator (SIGTERM, as in a rolling restart) takes no new job
//! and finishes the ones in flight, their results recorded, before it exits. A server stopped
//! the same way takes no new request but still the reports of the jobs its agents are running,
//! for a while, and tells each client still waiting where its request stands before it goes.

use portcullis_core::RequestState;

use super::rig::{PG, eventually, finished, held_write, held_write_with, request_id, scalar};

/// EX-3: SIGTERM of the agent while its write waits at the target (on a row lock the test
/// holds). The agent stops claiming but lets the write finish once the lock is released, and
/// waits until the server has recorded its result: the waiting CLI gets `succeeded` (exit
/// 0), the write ran once, and the agent exits 0. A read submitted meanwhile is not taken by
/// the stopping agent; the next agent runs it. Without the drain the process exits at the
/// signal, its transaction rolls back, and the write ends `outcome_unknown`.
#[tokio::test(flavor = "multi_thread")]
async fn ex3_an_agent_stopped_by_sigterm_finishes_its_write_and_records_it_first() {
    let held = held_write().await;
    let (ledger, stack, lock) = (held.table, held.stack, held.lock);
    let (mut first, waiting) = (held.agent, held.cli);

    first.terminate();
    eventually("the agent to announce its drain", || async {
        first.log().contains("stopping: no new jobs")
    })
    .await;
    // The write is held at the target, so a draining agent cannot have exited; a read
    // submitted now waits in the queue, since the stopping agent claims nothing more.
    assert!(first.running(), "the agent exited with a write in flight");
    let read = stack
        .submit("pg", &format!("SELECT v FROM {ledger} WHERE id = 1"), 0)
        .await
        .expect("read submitted");
    let read_id = read.request.id;

    lock.release().await;
    let (code, out, err) = finished(waiting).await;
    assert_eq!(code, 0, "the write's CLI: {out} {err}");
    assert_eq!(out["state"], "succeeded", "{out}");
    assert_eq!(out["affected_rows"], 1, "{out}");
    let id = request_id(&out);
    assert_eq!(first.exit_code(), 0, "the agent's exit after its drain");
    assert!(
        !first.ready.exists(),
        "a stopped agent removes its ready file (readiness probe)"
    );
    assert!(
        first.log().contains("stopping: no new jobs"),
        "the drain is logged"
    );

    let view = stack.view(read_id).await;
    assert!(
        !view.state.is_terminal() && view.agent.is_none(),
        "the stopping agent took no new job: {view:?}"
    );
    let _second = stack.agent("second", 1, &[("pg", PG)]).await;
    let read = stack.settled(read_id).await;
    assert_eq!(read.state, RequestState::Succeeded);
    assert_eq!(read.agent.as_deref(), Some("second"));
    assert_eq!(
        scalar(format!("SELECT v::bigint FROM {ledger} WHERE id = 1")).await,
        1,
        "the write ran exactly once"
    );
    assert_eq!(stack.audited(id, "request.dispatched").await, 1);
    assert_eq!(stack.audited(id, "request.finished").await, 1);
    assert_eq!(stack.audited(id, "request.lost").await, 0);
    stack.verify_audit();
}

/// EX-3: a server stopped by SIGTERM (a rolling restart) while `portcullis exec` waits on a
/// write held at the target drains: a new request is refused (503, `server_stopping`), and
/// once the lock is released the agent's report is taken and the CLI gets `succeeded` (exit
/// 0) before the server exits 0. The write ran once and the chain verifies. Without the drain
/// the server stopped at once, and the CLI was told its wait broke off.
#[tokio::test(flavor = "multi_thread")]
async fn ex3_a_server_stopped_by_sigterm_lets_a_running_write_report_to_its_waiting_cli() {
    let held = held_write_with("lease_secs = 2\ndrain_secs = 60").await;
    let (ledger, mut stack, lock) = (held.table, held.stack, held.lock);
    let _agent = held.agent;

    stack.terminate_server();
    stack.draining().await;
    let refused = stack
        .submit("pg", &format!("SELECT v FROM {ledger} WHERE id = 1"), 0)
        .await
        .expect_err("a draining server takes no new request");
    assert_eq!(refused.status(), Some(503), "{refused}");
    assert!(refused.to_string().contains("server_stopping"), "{refused}");

    lock.release().await;
    let (code, out, err) = finished(held.cli).await;
    assert_eq!(code, 0, "the write's CLI: {out} {err}");
    assert_eq!(out["state"], "succeeded", "{out}");
    assert_eq!(out["affected_rows"], 1, "{out}");
    let id = request_id(&out);
    assert_eq!(stack.server_exit_code(), 0, "{}", stack.server_log());
    assert_eq!(
        scalar(format!("SELECT v::bigint FROM {ledger} WHERE id = 1")).await,
        1,
        "the write ran exactly once"
    );
    stack.verify_audit();
    stack.spawn_server(None);
    assert_eq!(stack.audited(id, "request.finished").await, 1);
    assert_eq!(stack.audited(id, "request.lost").await, 0);
    stack.kill_server();
}

/// A server stopped by SIGTERM (a rolling restart) while `portcullis exec` waits on a write
/// held at the target, its 60 s drain cut short by a second SIGTERM (without it the server
/// would outlast the test's 30 s wait for its exit): the server answers the wait with the
/// request as it stands before it exits, so the CLI names the request, says it was still running and how to pick it up, and
/// exits 1 — rather than report a dropped connection for a request it cannot name. After the
/// restart the write settles once, `request wait` gives its outcome, and the chain verifies.
#[tokio::test(flavor = "multi_thread")]
async fn ex3_a_server_stopped_by_sigterm_tells_a_waiting_cli_which_request_to_resume() {
    let held = held_write_with("lease_secs = 2\ndrain_secs = 60").await;
    let (ledger, mut stack, lock) = (held.table, held.stack, held.lock);
    let _agent = held.agent;

    stack.terminate_server();
    stack.draining().await;
    stack.terminate_server();
    assert_eq!(stack.server_exit_code(), 0, "{}", stack.server_log());
    assert!(
        stack.server_log().contains("draining cut short"),
        "the second signal ended the drain: {}",
        stack.server_log()
    );
    let log = stack.server_log();
    let shutdown_line = log
        .lines()
        .find(|l| l.contains("shutting down"))
        .expect("a shutdown line");
    assert!(
        shutdown_line.contains(r#""drain_secs":60"#),
        "the shutdown line names the configured drain: {shutdown_line}"
    );
    let (code, out, err) = finished(held.cli).await;
    assert_eq!(code, 1, "{out} {err}");
    // Handed to the agent, whose write waits at the target: not finished, whichever step
    // the server last recorded.
    let stood = out["state"].as_str().unwrap_or_default().to_owned();
    assert!(matches!(stood.as_str(), "dispatched" | "running"), "{out}");
    assert_eq!(out["error"]["code"], "wait_interrupted", "{out}");
    let id = request_id(&out);
    assert!(
        err.contains(&format!(
            "request {id} was {stood} when the wait for it broke off"
        )) && err.contains(&format!("resume with `portcullis request wait {id}`")),
        "{err}"
    );

    stack.spawn_server(None);
    lock.release().await;
    let view = stack.settled(id).await;
    assert!(
        matches!(
            view.state,
            RequestState::Succeeded | RequestState::OutcomeUnknown
        ),
        "{view:?}"
    );
    let v = scalar(format!("SELECT v::bigint FROM {ledger} WHERE id = 1")).await;
    match view.state {
        RequestState::Succeeded => assert_eq!(v, 1, "the write ran once"),
        _ => assert!(v <= 1, "the write ran at most once"),
    }
    let (code, out, err) = finished(
        stack
            .cli(&["request", "wait", &id.to_string(), "--wait", "5", "--json"])
            .spawn()
            .expect("wait"),
    )
    .await;
    assert_eq!(out["state"], view.state.as_str(), "{out} {err}");
    assert_eq!(
        code,
        if view.state == RequestState::Succeeded {
            0
        } else {
            6
        },
        "{out} {err}"
    );
    stack.kill_server();
    stack.verify_audit();
}
