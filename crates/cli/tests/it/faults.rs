//! Faults on the real processes: `portcullis server` and `portcullis agent` started as an
//! operator starts them, a real PostgreSQL target, and real failures — SIGKILL of an agent or
//! of the server, a state store that cannot grow or is made immutable, a target that is slow
//! or gone, agents that come and go. Each test has its own schema, directories and ports, and
//! every wait polls a real condition (the target's own `pg_stat_activity`, a request's state,
//! a file) under a deadline.

mod drain;
mod rig;
mod under_load;

use std::time::{Duration, Instant};

use portcullis_client::ClientError;
use portcullis_core::RequestState;
use portcullis_proto::ErrorCode;
use portcullis_proto::api::CreateRequest;
use sqlx::{Connection, Executor};

use crate::two_process::free_port;
use rig::{
    Immutable, Lock, PG, Relay, Schema, Stack, eventually, finished, held, held_write, insert,
    markers, request_id, scalar, set_mode,
};
use uuid::Uuid;

/// EX-3: SIGKILL of the agent while its write waits at the target (on a row lock the test
/// holds, seen in `pg_stat_activity`). The waiting CLI is told `outcome_unknown` (exit 6);
/// the write is never dispatched again, not even to a new agent that takes queued jobs
/// oldest first, and the killed transaction never commits.
#[tokio::test(flavor = "multi_thread")]
async fn ex3_agent_killed_mid_write_is_outcome_unknown_and_never_rerun() {
    let held = held_write().await;
    let (schema, ledger, stack, lock) = (held.schema, held.table, held.stack, held.lock);
    let mut first = held.agent;
    let waiting = held.cli;
    first.kill();

    let (code, out, err) = finished(waiting).await;
    assert_eq!(code, 6, "exit code for outcome_unknown: {out} {err}");
    assert_eq!(out["state"], "outcome_unknown", "{out}");
    assert_eq!(out["error"]["code"], "outcome_unknown", "{out}");
    let id = request_id(&out);

    // The killed agent's session ends without COMMIT once the lock is gone.
    lock.release().await;
    eventually("the killed agent's session to end", || async {
        schema.agent_sessions("true").await == 0
    })
    .await;
    // A new agent with one worker takes queued jobs oldest first: a re-queued write would
    // run before this read.
    let _second = stack.agent("second", 1, &[("pg", PG)]).await;
    let read = stack
        .submit("pg", &format!("SELECT v FROM {ledger} WHERE id = 1"), 30)
        .await
        .expect("read");
    assert_eq!(read.request.state, RequestState::Succeeded);
    assert_eq!(read.request.agent.as_deref(), Some("second"));
    assert_eq!(
        read.result.expect("rows").rows,
        vec![vec![serde_json::json!(0)]],
        "the write never ran to completion and never ran again"
    );
    assert_eq!(stack.view(id).await.state, RequestState::OutcomeUnknown);
    assert_eq!(stack.audited(id, "request.dispatched").await, 1);
    assert_eq!(stack.audited(id, "request.lost").await, 1);
    assert_eq!(stack.audited(id, "request.finished").await, 0);
}

/// EX-3: SIGKILL of the agent while its read waits at the target (on an ACCESS EXCLUSIVE
/// lock the test holds). The read fails cleanly with `agent_lost` (exit 5), is dispatched
/// once (the policy for a lost read is to fail, not to retry), and the next read succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn ex3_agent_killed_mid_read_fails_cleanly() {
    let held = held(
        "CREATE TABLE {s}.items (id int); INSERT INTO {s}.items VALUES (1), (2)",
        "items",
        |t| format!("LOCK TABLE {t} IN ACCESS EXCLUSIVE MODE"),
        |t| format!("SELECT count(*) AS n FROM {t}"),
    )
    .await;
    let (_schema, items, stack, lock) = (held.schema, held.table, held.stack, held.lock);
    let mut first = held.agent;
    let waiting = held.cli;
    first.kill();
    let (code, out, err) = finished(waiting).await;
    assert_eq!(code, 5, "exit code for a failed request: {out} {err}");
    assert_eq!(out["state"], "failed", "{out}");
    assert_eq!(out["error"]["code"], "agent_lost", "{out}");
    let id = request_id(&out);
    lock.release().await;

    let _second = stack.agent("second", 1, &[("pg", PG)]).await;
    let read = format!("SELECT count(*) AS n FROM {items}");
    let again = stack.submit("pg", &read, 30).await.expect("read");
    assert_eq!(again.request.state, RequestState::Succeeded);
    assert_eq!(
        again.result.expect("rows").rows,
        vec![vec![serde_json::json!(2)]]
    );
    assert_eq!(stack.audited(id, "request.dispatched").await, 1);
    assert_eq!(stack.view(id).await.state, RequestState::Failed);
}

/// AUD-1, AUD-3, EX-3: SIGKILL of the server while a write runs at the target (held on a row
/// lock) and a second write waits in the queue, then a restart on the same data directory.
/// The chain verifies after the crash and after the restart; both requests settle (the
/// running one through its agent's report or its expired lease, the queued one by running);
/// each ran exactly once at the target and has exactly one outcome in the audit log; the
/// client learns the outcome from `request wait` after the restart.
#[tokio::test(flavor = "multi_thread")]
async fn aud3_server_killed_mid_request_restarts_with_a_sound_chain_and_settles_everything() {
    let schema = Schema::create(
        "CREATE TABLE {s}.ledger (id int PRIMARY KEY, v int NOT NULL); INSERT INTO {s}.ledger VALUES (1, 0); CREATE TABLE {s}.marks (marker text NOT NULL)",
    )
    .await;
    let (ledger, marks) = (schema.t("ledger"), schema.t("marks"));
    let mut stack = Stack::start(&["pg"], "lease_secs = 2").await;
    let _agent = stack.agent("survivor", 1, &[("pg", PG)]).await;
    let lock = Lock::take(format!("SELECT v FROM {ledger} WHERE id = 1 FOR UPDATE")).await;
    let running = stack
        .submit(
            "pg",
            &format!("UPDATE {ledger} SET v = v + 1 WHERE id = 1"),
            0,
        )
        .await
        .expect("write")
        .request
        .id;
    eventually("the write to wait on the row lock", || async {
        schema.agent_sessions("wait_event_type = 'Lock'").await > 0
    })
    .await;
    // The agent's only worker is busy: this one stays queued.
    let queued = stack
        .submit("pg", &format!("INSERT INTO {marks} VALUES ('queued')"), 0)
        .await
        .expect("queued write")
        .request
        .id;
    assert_eq!(stack.view(queued).await.state, RequestState::Approved);

    stack.kill_server();
    stack.verify_audit();
    stack.spawn_server(None);
    lock.release().await;

    let first = stack.settled(running).await;
    let second = stack.settled(queued).await;
    assert!(
        matches!(
            first.state,
            RequestState::Succeeded | RequestState::OutcomeUnknown
        ),
        "{first:?}"
    );
    assert_eq!(second.state, RequestState::Succeeded, "{second:?}");
    assert_eq!(
        scalar(format!("SELECT v::int8 FROM {ledger} WHERE id = 1")).await,
        1,
        "the interrupted write ran exactly once"
    );
    assert_eq!(
        scalar(format!("SELECT count(*) FROM {marks}")).await,
        1,
        "the queued write ran exactly once"
    );
    for id in [running, queued] {
        assert_eq!(stack.audited(id, "request.dispatched").await, 1, "{id}");
        let outcomes =
            stack.audited(id, "request.finished").await + stack.audited(id, "request.lost").await;
        assert_eq!(outcomes, 1, "one outcome for {id}");
    }
    let id = running.to_string();
    let (code, out, err) = finished(
        stack
            .cli(&["request", "wait", &id, "--wait", "5", "--json"])
            .spawn()
            .expect("wait"),
    )
    .await;
    let expected = if first.state == RequestState::Succeeded {
        0
    } else {
        6
    };
    assert_eq!(code, expected, "{out} {err}");
    assert_eq!(out["state"], first.state.as_str(), "{out}");
    stack.kill_server();
    stack.verify_audit();
}

/// The problem document of a request the server refused because its state store failed:
/// 503, the stable code `unavailable`, an error id, and nothing about the store itself.
fn assert_unavailable(e: &ClientError) {
    assert_eq!(e.status(), Some(503), "{e}");
    assert_eq!(e.code(), Some(ErrorCode::Unavailable), "{e}");
    let ClientError::Api { problem, .. } = e else {
        panic!("not a problem document: {e}");
    };
    assert!(!problem.error_id.is_empty());
    let text = format!("{problem:?}").to_lowercase();
    for leak in ["sqlite", "disk", "portcullis.db", "/tmp", "readonly", "i/o"] {
        assert!(!text.contains(leak), "the problem names {leak:?}: {text}");
    }
}

/// `portcullis exec` against a server whose store refuses writes: a clear message and exit 1.
async fn assert_cli_refused(stack: &Stack, statement: &str) {
    let (code, _, err) = finished(
        stack
            .cli(&["exec", "--connection", "pg", "--reason", "fault", statement])
            .spawn()
            .expect("exec"),
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("503"), "{err}");
}

/// AUD-2 with a full disk: the server restarted on its data directory through `ulimit -f`
/// (SIGXFSZ ignored), so the state store's write-ahead log cannot grow past 64 KiB and every
/// write past it fails with EFBIG. Writes go through until the store fills; from then on
/// every action fails closed with a 503 problem document (and the CLI says so), no refused
/// request reaches the target, and every row at the target belongs to a request whose
/// dispatch is in the audit chain. With room again (a restart without the limit) everything
/// left settles and the chain verifies.
#[tokio::test(flavor = "multi_thread")]
async fn aud2_a_full_state_store_fails_every_action_closed() {
    let schema = Schema::create("CREATE TABLE {s}.marks (marker text NOT NULL)").await;
    let marks = schema.t("marks");
    let mut stack = Stack::start(&["pg"], "lease_secs = 2").await;
    let _agent = stack.agent("filler", 4, &[("pg", PG)]).await;
    stack.stop_server();
    // Fold the write-ahead log into the state file, so the limited server starts with an
    // empty log that has 64 KiB to grow in.
    {
        use sqlx::sqlite::SqliteConnectOptions;
        let mut conn = sqlx::SqliteConnection::connect_with(
            &SqliteConnectOptions::new().filename(stack.data.join("portcullis.db")),
        )
        .await
        .expect("open the state file");
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            .await
            .expect("checkpoint");
        let _ = conn.close().await;
    }
    stack.spawn_server(Some(256));

    let mut created: Vec<(String, Uuid)> = Vec::new();
    let mut refused = Vec::new();
    for i in 0..200 {
        let marker = format!("m{i:03}");
        match stack
            .submit("pg", &format!("INSERT INTO {marks} VALUES ('{marker}')"), 5)
            .await
        {
            Ok(outcome) => {
                let done = outcome.request.state == RequestState::Succeeded;
                created.push((marker, outcome.request.id));
                if !done {
                    // Accepted, but the store filled before its dispatch or its report.
                    break;
                }
            }
            Err(e) => {
                assert_unavailable(&e);
                refused.push(marker);
                break;
            }
        }
    }
    assert!(
        created.len() < 200,
        "the store never filled: {}",
        created.len()
    );
    // Full: every further action fails closed.
    for i in 0..3 {
        let marker = format!("refused{i}");
        let e = stack
            .submit("pg", &format!("INSERT INTO {marks} VALUES ('{marker}')"), 0)
            .await
            .expect_err("no new request while the store is full");
        assert_unavailable(&e);
        refused.push(marker);
    }
    assert_unavailable(
        &stack
            .admin
            .create_agent("late")
            .await
            .expect_err("no new agent while the store is full"),
    );
    assert_cli_refused(
        &stack,
        &format!("INSERT INTO {marks} VALUES ('refused-cli')"),
    )
    .await;
    refused.push("refused-cli".into());
    let present = markers(&marks).await;
    for marker in &refused {
        assert!(
            !present.contains(marker),
            "{marker} ran without its request"
        );
    }
    // A request the full store could not dispatch has not run.
    for (marker, id) in &created {
        if stack.view(*id).await.state == RequestState::Approved {
            assert!(!present.contains(marker), "{marker} ran undispatched");
        }
    }

    // Room again: the same data directory, no limit.
    stack.kill_server();
    stack.spawn_server(None);
    for (_, id) in &created {
        stack.settled(*id).await;
    }
    let present = markers(&marks).await;
    for marker in &refused {
        assert!(!present.contains(marker), "{marker} ran after all");
    }
    for marker in &present {
        let (_, id) = created
            .iter()
            .find(|(m, _)| m == marker)
            .unwrap_or_else(|| panic!("{marker} at the target has no request"));
        assert_eq!(
            stack.audited(*id, "request.dispatched").await,
            1,
            "{marker} ran without its dispatch in the audit chain"
        );
        assert_eq!(
            present.iter().filter(|m| *m == marker).count(),
            1,
            "{marker} ran twice"
        );
    }
    stack.kill_server();
    stack.verify_audit();
}

/// AUD-2 with a state store that rejects writes: the state file and its write-ahead log
/// made immutable under the running server (where the system allows it; elsewhere the state
/// file loses its write permission before a restart). Every action fails closed with a 503
/// problem document, the CLI says so, nothing runs at the target; once the store is
/// writable again and the server restarted, writes go through and the chain verifies.
#[tokio::test(flavor = "multi_thread")]
async fn aud2_a_read_only_state_store_fails_every_action_closed() {
    let schema = Schema::create("CREATE TABLE {s}.marks (marker text NOT NULL)").await;
    let marks = schema.t("marks");
    let mut stack = Stack::start(&["pg"], "lease_secs = 2").await;
    let _agent = stack.agent("keeper", 2, &[("pg", PG)]).await;
    let before = stack
        .submit("pg", &insert(&marks, "before"), 20)
        .await
        .expect("write");
    assert_eq!(before.request.state, RequestState::Succeeded);
    let state = stack.data.join("portcullis.db");
    let wal = stack.data.join("portcullis.db-wal");
    match Immutable::set(vec![state.clone(), wal]) {
        Some(frozen) => {
            let e = stack
                .submit("pg", &insert(&marks, "frozen"), 5)
                .await
                .expect_err("no request while the store rejects writes");
            assert_unavailable(&e);
            assert_unavailable(
                &stack
                    .admin
                    .create_agent("late")
                    .await
                    .expect_err("no agent while the store rejects writes"),
            );
            assert_cli_refused(&stack, &insert(&marks, "frozen-cli")).await;
            drop(frozen);
        }
        None => {
            stack.stop_server();
            set_mode(&state, 0o400);
            match stack.try_spawn_server(None) {
                Err(log) => assert!(log.contains("readonly"), "{log}"),
                Ok(()) => {
                    let e = stack
                        .submit("pg", &insert(&marks, "frozen"), 5)
                        .await
                        .expect_err("no request while the store rejects writes");
                    assert_unavailable(&e);
                }
            }
            set_mode(&state, 0o600);
        }
    }
    assert_eq!(markers(&marks).await, vec!["before".to_owned()]);

    stack.kill_server();
    stack.spawn_server(None);
    let after = stack
        .submit("pg", &insert(&marks, "after"), 30)
        .await
        .expect("write");
    assert_eq!(after.request.state, RequestState::Succeeded);
    assert_eq!(markers(&marks).await, vec!["after", "before"]);
    stack.kill_server();
    stack.verify_audit();
}

/// EX-3 with a slow or lost target: statements past the signed timeout (1.5 s) are cancelled
/// at the target (a read waiting on a table lock, a write on a row lock), a target where nothing
/// listens and one whose connections are cut fail with `store_unavailable` naming no address,
/// a write whose connection is cut mid-flight says `outcome_unknown` and is not retried — all
/// within bounded time, while the same agent keeps serving its other connections.
#[tokio::test(flavor = "multi_thread")]
async fn ex3_a_slow_or_lost_target_fails_in_bounded_time_and_the_agent_keeps_serving() {
    let schema = Schema::create(
        "CREATE TABLE {s}.ledger (id int PRIMARY KEY, v int NOT NULL); INSERT INTO {s}.ledger VALUES (1, 0); CREATE TABLE {s}.slow (id int)",
    )
    .await;
    let (ledger, slow_table) = (schema.t("ledger"), schema.t("slow"));
    let nothing = free_port();
    let nowhere = format!("postgres://postgres@127.0.0.1:{nothing}/test");
    let relay = Relay::start().await;
    let stack = Stack::start(
        &["pg", "other", "down", "cut"],
        "lease_secs = 2\ntimeout_ms = 1500",
    )
    .await;
    let _agent = stack
        .agent(
            "steady",
            8,
            &[
                ("pg", PG),
                ("other", PG),
                ("down", &nowhere),
                ("cut", &relay.url()),
            ],
        )
        .await;
    let bounded = Duration::from_secs(10);
    let read = format!("SELECT v FROM {ledger} WHERE id = 1");
    let write = format!("UPDATE {ledger} SET v = v + 1 WHERE id = 1");

    // Slow read (it waits on the test's table lock), and meanwhile another connection served.
    let lock = Lock::take(format!("LOCK TABLE {slow_table} IN ACCESS EXCLUSIVE MODE")).await;
    let started = Instant::now();
    let slow = {
        let admin = stack.admin.clone();
        let body = CreateRequest {
            connection: "pg".parse().expect("name"),
            statement: format!("SELECT count(*) FROM {slow_table}"),
            reason: "fault test".into(),
            stream: false,
        };
        tokio::spawn(async move { admin.create_request(&body, Duration::from_secs(30)).await })
    };
    eventually("the read to wait at the target", || async {
        schema.agent_sessions("wait_event_type = 'Lock'").await > 0
    })
    .await;
    let other = stack.submit("other", &read, 20).await.expect("read");
    assert_eq!(other.request.state, RequestState::Succeeded);
    assert!(
        schema.agent_sessions("wait_event_type = 'Lock'").await > 0,
        "the other connection was served while the slow read still waited"
    );
    let slow = slow.await.expect("join").expect("slow read");
    assert_eq!(slow.request.state, RequestState::Failed);
    assert_eq!(
        slow.request.error.as_ref().map(|e| e.code.as_str()),
        Some("statement_timeout")
    );
    assert!(started.elapsed() < bounded, "{:?}", started.elapsed());
    lock.release().await;

    // Slow write: it waits on the test's row lock past the timeout and is cancelled.
    let lock = Lock::take(format!("SELECT v FROM {ledger} WHERE id = 1 FOR UPDATE")).await;
    let started = Instant::now();
    let blocked = stack.submit("pg", &write, 30).await.expect("write");
    assert!(started.elapsed() < bounded, "{:?}", started.elapsed());
    assert_eq!(blocked.request.state, RequestState::Failed);
    assert_eq!(
        blocked.request.error.as_ref().map(|e| e.code.as_str()),
        Some("statement_timeout")
    );
    lock.release().await;
    assert_eq!(
        scalar(format!("SELECT v::int8 FROM {ledger} WHERE id = 1")).await,
        0
    );

    // Nothing listens: a clear error that names the connection, not its address (SEC-4).
    for statement in [&read, &write] {
        let started = Instant::now();
        let down = stack.submit("down", statement, 30).await.expect("request");
        assert!(started.elapsed() < bounded, "{:?}", started.elapsed());
        assert_eq!(down.request.state, RequestState::Failed);
        let error = down.request.error.expect("error");
        assert_eq!(error.code, "store_unavailable", "{error:?}");
        assert!(error.message.contains("down"), "{error:?}");
        assert!(!error.message.contains(&nothing.to_string()), "{error:?}");
    }

    // Cut mid-write: the change may or may not have reached the target, so it is reported
    // as such and never retried; then the lost target refuses new connections.
    let lock = Lock::take(format!("SELECT v FROM {ledger} WHERE id = 1 FOR UPDATE")).await;
    let cut = {
        let admin = stack.admin.clone();
        let body = CreateRequest {
            connection: "cut".parse().expect("name"),
            statement: write.clone(),
            reason: "fault test".into(),
            stream: false,
        };
        tokio::spawn(async move { admin.create_request(&body, Duration::from_secs(30)).await })
    };
    eventually("the write to wait on the row lock", || async {
        schema.agent_sessions("wait_event_type = 'Lock'").await > 0
    })
    .await;
    let started = Instant::now();
    relay.cut();
    let cut = cut.await.expect("join").expect("cut write");
    assert!(started.elapsed() < bounded, "{:?}", started.elapsed());
    assert_eq!(
        cut.request.error.as_ref().map(|e| e.code.as_str()),
        Some("outcome_unknown"),
        "{:?}",
        cut.request
    );
    assert_eq!(stack.audited(cut.request.id, "request.dispatched").await, 1);
    lock.release().await;
    let gone = stack.submit("cut", &read, 30).await.expect("request");
    assert_eq!(
        gone.request.error.as_ref().map(|e| e.code.as_str()),
        Some("store_unavailable")
    );

    // Still healthy: connected, and serving.
    let fine = stack.submit("pg", &read, 20).await.expect("read");
    assert_eq!(fine.request.state, RequestState::Succeeded);
    let agents = stack.admin.list_agents().await.expect("agents");
    assert!(agents.iter().any(|a| a.name == "steady" && a.connected));
}

/// EX-3: a write whose connection to the target is cut mid-flight may or may not have been
/// applied; the request must end `outcome_unknown` (exit 6), not `failed`, so that nobody
/// takes it for a change that did not happen.
#[tokio::test(flavor = "multi_thread")]
async fn ex3_a_write_cut_off_from_its_target_ends_outcome_unknown() {
    let schema = Schema::create(
        "CREATE TABLE {s}.ledger (id int PRIMARY KEY, v int NOT NULL); INSERT INTO {s}.ledger VALUES (1, 0)",
    )
    .await;
    let ledger = schema.t("ledger");
    let relay = Relay::start().await;
    let stack = Stack::start(&["cut"], "lease_secs = 2").await;
    let _agent = stack.agent("cutter", 1, &[("cut", &relay.url())]).await;
    let lock = Lock::take(format!("SELECT v FROM {ledger} WHERE id = 1 FOR UPDATE")).await;
    let write = format!("UPDATE {ledger} SET v = v + 1 WHERE id = 1");
    let waiting = stack.exec_on_the_lock(&schema, "cut", &write).await;
    relay.cut();
    let (code, out, err) = finished(waiting).await;
    lock.release().await;
    assert_eq!(out["error"]["code"], "outcome_unknown", "{out}");
    assert_eq!(out["state"], "outcome_unknown", "{out}");
    assert_eq!(code, 6, "{out} {err}");
}

/// EX-3: two agent processes serve the same connection and race for 40 writes sent at
/// once: each is dispatched once, succeeds, and left exactly one row at the target.
#[tokio::test(flavor = "multi_thread")]
async fn ex3_two_agent_processes_run_each_job_exactly_once() {
    let schema = Schema::create("CREATE TABLE {s}.marks (marker text NOT NULL)").await;
    let marks = schema.t("marks");
    let stack = Stack::start(&["pg"], "lease_secs = 2").await;
    let _a = stack.agent("twin-a", 4, &[("pg", PG)]).await;
    let _b = stack.agent("twin-b", 4, &[("pg", PG)]).await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let admin = stack.admin.clone();
        let marker = format!("t{i:02}");
        let body = CreateRequest {
            connection: "pg".parse().expect("name"),
            statement: insert(&marks, &marker),
            reason: "fault test".into(),
            stream: false,
        };
        tasks.push(tokio::spawn(async move {
            (
                marker,
                admin.create_request(&body, Duration::from_secs(30)).await,
            )
        }));
    }
    let mut sent = Vec::new();
    for task in tasks {
        let (marker, outcome) = task.await.expect("join");
        let outcome = outcome.expect("request");
        assert_eq!(outcome.request.state, RequestState::Succeeded, "{marker}");
        sent.push((marker, outcome.request.id));
    }
    let present = markers(&marks).await;
    assert_eq!(present.len(), sent.len(), "{present:?}");
    for (marker, id) in &sent {
        assert_eq!(
            present.iter().filter(|m| *m == marker).count(),
            1,
            "{marker}"
        );
        // Once, plus once more after each lease that went back to the queue undelivered.
        assert_eq!(
            stack.audited(*id, "request.dispatched").await,
            1 + stack.audited(*id, "request.requeued").await,
            "{marker}"
        );
    }
}

/// EX-3: two agent processes serve the same connection while, round after round, one of
/// them is killed (SIGKILL) and started again as jobs keep arriving. Every request settles;
/// each is dispatched once, plus once more after each lease that went back to the queue
/// undelivered; at the target every succeeded write left exactly one row, a write lost with
/// its agent at most one, and nothing else is there.
#[tokio::test(flavor = "multi_thread")]
async fn ex3_agent_storms_and_two_agents_run_each_job_exactly_once() {
    let schema = Schema::create("CREATE TABLE {s}.marks (marker text NOT NULL)").await;
    let marks = schema.t("marks");
    let stack = Stack::start(&["pg"], "lease_secs = 2").await;
    let mut agents = [
        stack.agent("storm-a", 4, &[("pg", PG)]).await,
        stack.agent("storm-b", 4, &[("pg", PG)]).await,
    ];
    let mut sent: Vec<(String, Uuid)> = Vec::new();
    for round in 0..8 {
        for i in 0..6 {
            let marker = format!("r{round}j{i}");
            let created = stack
                .submit("pg", &insert(&marks, &marker), 0)
                .await
                .expect("request");
            sent.push((marker, created.request.id));
        }
        let victim = &mut agents[round % 2];
        victim.kill();
        victim.spawn();
    }
    let mut views = Vec::new();
    for (_, id) in &sent {
        views.push(stack.settled(*id).await);
    }
    let present = markers(&marks).await;
    let mut succeeded = 0;
    for ((marker, id), view) in sent.iter().zip(views) {
        let rows = present.iter().filter(|m| *m == marker).count();
        match view.state {
            RequestState::Succeeded => {
                succeeded += 1;
                assert_eq!(rows, 1, "{marker}");
            }
            RequestState::OutcomeUnknown => assert!(rows <= 1, "{marker} ran {rows} times"),
            other => panic!("{marker} ended {other}: {:?}", view.error),
        }
        // Dispatched once, or again after each lease whose token never left the server (its
        // claim gone with its agent) went back to the queue, recorded.
        assert_eq!(
            stack.audited(*id, "request.dispatched").await,
            1 + stack.audited(*id, "request.requeued").await,
            "{marker}"
        );
    }
    assert!(succeeded > 0);
    assert!(
        present.iter().all(|m| sent.iter().any(|(s, _)| s == m)),
        "rows nobody asked for: {present:?}"
    );
}
