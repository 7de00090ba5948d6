//! The server killed (SIGKILL) while clients keep it busy: what it answered before it died is
//! what the store holds after the restart, and every job it had taken runs at most once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use portcullis_core::RequestState;
use portcullis_proto::api::CreateRequest;
use serde_json::Value;
use uuid::Uuid;

use super::rig::{DEADLINE, PG, Schema, Stack, eventually, insert, markers};

/// Clients submitting at once; half of them reads, half writes.
const CLIENTS: usize = 6;
/// Each client's bound on its requests (the server dies long before).
const PER_CLIENT: usize = 200;
/// Answers received, in all, before the server is killed in each round.
const ANSWERS_BEFORE_THE_KILL: usize = 120;
/// Times the server is killed under the load and started again.
const ROUNDS: usize = 3;

/// A request the server answered (`succeeded`, the client checked): its marker and id.
struct Answered {
    marker: String,
    id: Uuid,
}

/// AUD-1, AUD-2, AUD-3, EX-3: SIGKILL of the server while six clients keep submitting
/// auto-approved reads and writes (their audit records committed in shared groups), sent by
/// the client task that has just been answered, then a restart on the same data directory;
/// three times.
/// - The chain verifies after each crash.
/// - Every request the server answered before it died is in the store after the restart in
///   the state the client was told, `succeeded` (a read's answer carried its own marker):
///   no answer leaves before its records' commit.
/// - Every request the store holds settles, with one `created` record, one outcome, and one
///   dispatch plus one per recorded requeue.
/// - At the target each succeeded write left exactly one row, a write lost with the server
///   at most one, a failed one none, and nothing else is there: no job ran twice.
///
/// An answer sent before its records' commit (a write-behind of the audit) fails it: with
/// the writer thread acknowledging each group 5 ms before its `COMMIT` it failed 5 runs in
/// 5, and 3 in 3 with 1 ms.
#[tokio::test(flavor = "multi_thread")]
async fn aud2_a_server_killed_under_load_keeps_what_it_answered_and_runs_each_job_once() {
    let schema = Schema::create("CREATE TABLE {s}.marks (marker text NOT NULL)").await;
    let marks = schema.t("marks");
    let mut stack = Stack::start(&["pg"], "lease_secs = 2").await;
    let _agent = stack.agent("steady", 4, &[("pg", PG)]).await;

    let mut answered = Vec::new();
    for round in 0..ROUNDS {
        answered.extend(load_then_kill(&mut stack, &marks, round).await);
        stack.verify_audit();
        stack.spawn_server(None);
        // The agent comes back by itself, after its backoff; the next round's answers
        // must not wait on that.
        eventually("the agent to claim from the restarted server", || async {
            let agents = stack.admin.list_agents().await.expect("agents");
            agents.iter().any(|a| a.name == "steady" && a.connected)
        })
        .await;
    }

    let held = stack
        .admin
        .list_requests(true, None, 1000)
        .await
        .expect("request list");
    assert!(held.len() < 1000, "the list holds every request");
    let mut settled = HashMap::new();
    for view in &held {
        settled.insert(view.id, stack.settled(view.id).await);
    }
    for a in &answered {
        let view = settled
            .get(&a.id)
            .unwrap_or_else(|| panic!("{}: answered, then lost with the server", a.marker));
        assert_eq!(view.state, RequestState::Succeeded, "{}", a.marker);
    }

    let present = markers(&marks).await;
    for view in settled.values() {
        let Some(marker) = view.statement.split('\'').nth(1) else {
            panic!("no marker in {}", view.statement);
        };
        let rows = present.iter().filter(|m| *m == marker).count();
        if !view.statement.starts_with("INSERT") {
            assert!(
                matches!(view.state, RequestState::Succeeded | RequestState::Failed),
                "read {marker} ended {}",
                view.state
            );
            continue;
        }
        match view.state {
            RequestState::Succeeded => assert_eq!(rows, 1, "{marker}"),
            RequestState::OutcomeUnknown => assert!(rows <= 1, "{marker} ran {rows} times"),
            RequestState::Failed => assert_eq!(rows, 0, "{marker} failed yet ran"),
            other => panic!("{marker} ended {other}: {:?}", view.error),
        }
    }
    assert!(
        present
            .iter()
            .all(|m| settled.values().any(|v| v.statement.contains(m.as_str()))),
        "rows nobody asked for: {present:?}"
    );

    let events = stack.audit_counts().await;
    for view in settled.values() {
        let count = |action: &str| {
            events
                .get(&(view.id, action.to_owned()))
                .copied()
                .unwrap_or(0)
        };
        assert_eq!(count("request.created"), 1, "{}", view.statement);
        assert_eq!(
            count("request.finished") + count("request.lost") + count("request.expired"),
            1,
            "one outcome for {}",
            view.statement
        );
        assert_eq!(
            count("request.dispatched"),
            1 + count("request.requeued"),
            "{}",
            view.statement
        );
    }
    stack.kill_server();
    stack.verify_audit();
}

/// One round: the clients submit until the server, killed right after the
/// [`ANSWERS_BEFORE_THE_KILL`]th answer, stops answering; what each was answered.
async fn load_then_kill(stack: &mut Stack, marks: &str, round: usize) -> Vec<Answered> {
    let answers = Arc::new(AtomicUsize::new(0));
    // Killed by the client whose answer makes the count, as soon as it has it: the records
    // of the answers just sent are then the newest the server has.
    let server = Arc::new(Mutex::new(stack.server.take().expect("a running server")));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (admin, marks) = (stack.admin.clone(), marks.to_owned());
        let (answers, server) = (Arc::clone(&answers), Arc::clone(&server));
        clients.push(tokio::spawn(async move {
            let write = c % 2 == 0;
            let mut answered = Vec::new();
            for n in 0..PER_CLIENT {
                let marker = format!("r{round}c{c}n{n:03}");
                let statement = if write {
                    insert(&marks, &marker)
                } else {
                    format!("SELECT '{marker}'::text AS marker")
                };
                let body = CreateRequest {
                    connection: "pg".parse().expect("name"),
                    statement,
                    reason: "fault test".into(),
                    stream: false,
                };
                // An error is the server dying under this request: its fate is checked
                // with every other request the store holds.
                let Ok(outcome) = admin
                    .create_request(&body, std::time::Duration::from_secs(10))
                    .await
                else {
                    break;
                };
                assert_eq!(
                    outcome.request.state,
                    RequestState::Succeeded,
                    "{marker}: {:?}",
                    outcome.request.error
                );
                if !write {
                    let rows = outcome.result.expect("a read's result").rows;
                    assert_eq!(rows, vec![vec![Value::from(marker.as_str())]], "{marker}");
                }
                answered.push(Answered {
                    marker,
                    id: outcome.request.id,
                });
                if answers.fetch_add(1, Ordering::Relaxed) + 1 == ANSWERS_BEFORE_THE_KILL {
                    let mut server = server.lock().expect("server lock");
                    server.0.kill().expect("SIGKILL the server");
                }
            }
            answered
        }));
    }
    let mut answered = Vec::new();
    for client in clients {
        let client = tokio::time::timeout(DEADLINE, client).await;
        answered.extend(client.expect("the clients to stop").expect("client"));
    }
    assert!(
        answered.len() >= ANSWERS_BEFORE_THE_KILL,
        "{} answers",
        answered.len()
    );
    // Killed, so reaped at once.
    let mut server = server.lock().expect("server lock");
    server.0.wait().expect("reap the server");
    answered
}
