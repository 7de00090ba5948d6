//! The attack suite (EX-2, EX-3, AZ-2, AUD-1): every hostile input of `attack/*-hostile.cases`
//! goes through the full path — a real server, a real agent, the real SQLite, PostgreSQL,
//! MariaDB and Redis — as a `viewer`, who may only read, and must be blocked: refused, or failed
//! by the agent or the store, with the target's checksum unchanged and the refusal in the audit
//! chain. Every benign input of `attack/*-benign.cases` must be allowed and return its stated
//! answer. The corpus format and the oracle are described in `attack/README.md`.
//!
//! The last line printed is `N/N blocked, M/M benign allowed`. `scripts/attack-suite` runs this
//! test and repeats that line last.
//!
//! Stores are found at `PORTCULLIS_ATTACK_PG_URL`, `PORTCULLIS_ATTACK_MYSQL_URL` and
//! `PORTCULLIS_ATTACK_REDIS_URL` (defaults: the local development services). Each run gets a
//! fresh PostgreSQL database, a fresh MariaDB database and a fresh Redis key prefix. A store
//! that cannot be reached, or whose kind the agent cannot execute yet, is still attacked through
//! the server (classification and authorization), and the suite says which runs were not end to
//! end. `ATTACK_SUITE_VERBOSE=1` also prints the corpus per class and the layer that stopped
//! each run.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis::devstack::{DevOptions, DevStack};
use portcullis_agent::config::TargetConfig;
use portcullis_agent::{Agent, AgentConfig};
use portcullis_client::{Client, ClientError};
use portcullis_core::{ConnectionKind, Environment, RequestState, Role};
use portcullis_proto::api::{CreateRequest, CreateToken, ExecResult, RequestOutcome};
use portcullis_server::config::ConnectionDecl;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::Row as _;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, watch};

mod corpus;
mod judge;
mod resp;
mod stores;

use corpus::*;
use judge::*;
use resp::*;
use stores::*;

/// How long one request may take end to end before it counts as hung.
const CASE_WAIT: Duration = Duration::from_secs(15);

// ------------------------------------------------------------------------------------------
// The suite

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn attack_suite() {
    let started = Instant::now();
    let verbose = std::env::var_os("ATTACK_SUITE_VERBOSE").is_some();
    let mut cases = Vec::new();
    for (file, hostile) in [
        ("sql-hostile.cases", true),
        ("sql-benign.cases", false),
        ("redis-hostile.cases", true),
        ("redis-benign.cases", false),
    ] {
        cases.extend(load_cases(file, Some(hostile)).unwrap_or_else(|e| panic!("corpus: {e}")));
    }
    let files_before = evil_files();

    // A server declaring every target; the agent is ours, so it can leave out what it cannot
    // serve yet.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut opts = DevOptions::new(
        "127.0.0.1:0".parse().expect("addr"),
        dir.path().join("data"),
    );
    opts.start_agent = false;
    // Thousands of cases from two tokens: rate limiting (WEB-4) is off, so that every case
    // reaches the classifier and a 429 can never pass for a refusal of the statement.
    opts.server.rate_limit.enabled = false;
    for store in [Store::Postgres, Store::Mysql, Store::Redis] {
        opts.server.connections.push(ConnectionDecl {
            name: store.connection().parse().expect("connection name"),
            kind: store.kind(),
            environment: Environment::Development,
        });
    }
    let stack = DevStack::start(opts).await.expect("dev stack starts");
    let admin = Client::new(&stack.url, Some(&stack.admin_token)).expect("admin client");
    let viewer_token = admin
        .create_token(&CreateToken {
            name: "attack-suite-viewer".into(),
            role: Role::Viewer,
            ttl_seconds: 3_600,
            environments: None,
        })
        .await
        .expect("viewer token");
    let viewer = Client::new(&stack.url, Some(&viewer_token.token)).expect("viewer client");

    let suffix = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let setup = Instant::now();
    let opened = futures_util::future::join_all(
        Store::ALL.map(|store| Handle::open(store, &stack.demo_db, &suffix)),
    )
    .await;
    let mut notes: Vec<String> = Vec::new();
    let mut handles: Vec<(Store, Handle)> = Vec::new();
    for (store, handle) in Store::ALL.into_iter().zip(opened) {
        match handle {
            Ok(handle) => {
                handle.scrub().await;
                handles.push((store, handle));
            }
            Err(e) => notes.push(format!(
                "{}: store not reachable, attacked through the server only ({e})",
                store.as_str()
            )),
        }
    }

    // The agent: demo plus every reachable store whose kind it accepts and can open.
    let agent_name = format!("attack-agent-{suffix}");
    let mut config = portcullis::devstack::demo_agent_config(
        &agent_name,
        &stack.url,
        &stack.server,
        &stack.demo_db,
    );
    let mut served: BTreeSet<Store> = BTreeSet::from([Store::Sqlite]);
    for (store, handle) in &handles {
        let Some(target) = handle.agent_target(*store) else {
            continue;
        };
        let target: TargetConfig = match serde_json::from_value(target) {
            Ok(target) => target,
            Err(e) => {
                notes.push(format!("{}: agent config refused ({e})", store.as_str()));
                continue;
            }
        };
        let mut candidate: AgentConfig = config.clone();
        candidate.connections.push(target);
        match candidate.validate() {
            Ok(()) => {
                config = candidate;
                served.insert(*store);
            }
            Err(e) => notes.push(format!(
                "{}: the agent does not accept this kind yet ({e})",
                store.as_str()
            )),
        }
    }
    let registered = admin
        .create_agent(&agent_name)
        .await
        .expect("agent created");
    let agent = match Agent::new(config.clone(), &registered.token).await {
        Ok(agent) => agent,
        Err(e) => {
            // Find which extra targets the agent cannot open, and serve the rest.
            let all = format!("{e:#}");
            let mut kept = config.clone();
            kept.connections.retain(|c| c.name.as_str() == "demo");
            for target in config
                .connections
                .iter()
                .filter(|c| c.name.as_str() != "demo")
            {
                let mut alone = kept.clone();
                alone.connections.push(target.clone());
                let store = Store::ALL
                    .into_iter()
                    .find(|s| s.connection() == target.name.as_str())
                    .expect("a known store");
                match Agent::new(alone, &registered.token).await {
                    Ok(_) => kept.connections.push(target.clone()),
                    Err(e) => {
                        served.remove(&store);
                        notes.push(format!(
                            "{}: the agent cannot execute it yet ({e:#})",
                            store.as_str()
                        ));
                    }
                }
            }
            Agent::new(kept, &registered.token)
                .await
                .unwrap_or_else(|e2| panic!("agent for demo: {e2:#} (first: {all})"))
        }
    };
    let (stop_agent, stop_rx) = watch::channel(false);
    let agent_task = tokio::spawn(agent.run(stop_rx));
    let setup_time = setup.elapsed();

    // Every store at once, each one case at a time.
    let running = Instant::now();
    let handles = Arc::new(handles);
    let mut tasks = Vec::new();
    for store in Store::ALL {
        let handles = handles.clone();
        let viewer = viewer.clone();
        let admin = admin.clone();
        let cases = cases.clone();
        let end_to_end = served.contains(&store);
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let runs = match handles.iter().find(|(s, _)| *s == store) {
                Some((_, handle)) => {
                    run_store(store, handle, (&viewer, &admin), &cases, end_to_end).await
                }
                None => run_server_only(store, &viewer, &cases).await,
            };
            (store, runs, t.elapsed())
        }));
    }
    let mut runs: Vec<Run> = Vec::new();
    let mut timings: BTreeMap<Store, Duration> = BTreeMap::new();
    for task in tasks {
        let (store, store_runs, took) = task.await.expect("store task");
        runs.extend(store_runs);
        timings.insert(store, took);
    }
    let run_time = running.elapsed();

    let events: Vec<Value> = String::from_utf8(admin.audit_export().await.expect("audit export"))
        .expect("utf-8 audit")
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit line"))
        .collect();
    check_audit(&mut runs, &events);
    let chain = admin.audit_verify().await.expect("audit verify");

    stop_agent.send_replace(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), agent_task).await;
    if let Ok(handles) = Arc::try_unwrap(handles) {
        for (_, handle) in handles {
            handle.teardown().await;
        }
    }
    stack.stop().await;
    let new_files: Vec<String> = evil_files().difference(&files_before).cloned().collect();

    // Report.
    let mut out = String::from("\n");
    for run in runs.iter().filter(|r| r.failure.is_some()) {
        let _ = writeln!(
            out,
            "FAIL [{}] {}: {}",
            run.store.as_str(),
            run.id,
            run.failure.as_deref().unwrap_or_default()
        );
    }
    if !new_files.is_empty() {
        let _ = writeln!(out, "FAIL files appeared in the temp dir: {new_files:?}");
    }
    if !chain.ok {
        let _ = writeln!(out, "FAIL the audit chain does not verify: {chain:?}");
    }
    let late: Vec<&Run> = runs
        .iter()
        .filter(|r| r.hostile && r.passed() && r.layer.starts_with("agent/store"))
        .collect();
    if !late.is_empty() && !verbose {
        let _ = writeln!(
            out,
            "note: {} hostile runs passed classification and were stopped by the agent or the store \
             (ATTACK_SUITE_VERBOSE=1 lists them)",
            late.len()
        );
    }
    if verbose {
        for run in &late {
            let _ = writeln!(
                out,
                "note: [{}] {} passed classification and was stopped by {}",
                run.store.as_str(),
                run.id,
                run.layer
            );
        }
        let mut per_class: BTreeMap<(bool, &str), BTreeMap<Store, usize>> = BTreeMap::new();
        for run in &runs {
            *per_class
                .entry((run.hostile, run.class.as_str()))
                .or_default()
                .entry(run.store)
                .or_default() += 1;
        }
        for ((hostile, class), counts) in &per_class {
            let counts: Vec<String> = counts
                .iter()
                .map(|(s, n)| format!("{} {n}", s.as_str()))
                .collect();
            let kind = if *hostile { "hostile" } else { "benign" };
            let _ = writeln!(out, "corpus {kind} {class}: {}", counts.join(", "));
        }
        let mut layers: BTreeMap<(Store, &str), usize> = BTreeMap::new();
        for run in runs.iter().filter(|r| r.hostile) {
            *layers.entry((run.store, run.layer.as_str())).or_default() += 1;
        }
        for ((store, layer), n) in layers {
            let _ = writeln!(out, "stopped [{}] {layer}: {n}", store.as_str());
        }
    }
    for note in &notes {
        let _ = writeln!(out, "note: {note}");
    }
    for store in Store::ALL {
        let of = |hostile: bool| {
            runs.iter()
                .filter(move |r| r.store == store && r.hostile == hostile)
        };
        let unrun = runs
            .iter()
            .filter(|r| r.store == store && r.layer == "unrun")
            .count();
        let _ = writeln!(
            out,
            "{:<8} {}: hostile {}/{} blocked, benign {}/{} allowed{}, {:.1}s",
            store.as_str(),
            if served.contains(&store) {
                "end to end"
            } else {
                "server only"
            },
            of(true).filter(|r| r.passed()).count(),
            of(true).filter(|r| r.layer != "unrun").count(),
            of(false).filter(|r| r.passed()).count(),
            of(false).filter(|r| r.layer != "unrun").count(),
            if unrun > 0 {
                format!(" ({unrun} accepted by the server but not executed: no agent serves it)")
            } else {
                String::new()
            },
            timings.get(&store).map_or(0.0, Duration::as_secs_f64),
        );
    }
    let counted = |hostile: bool| {
        runs.iter()
            .filter(move |r| r.hostile == hostile && r.layer != "unrun")
    };
    let blocked = counted(true).filter(|r| r.passed()).count();
    let hostile_total = counted(true).count();
    let allowed = counted(false).filter(|r| r.passed()).count();
    let benign_total = counted(false).count();
    let _ = writeln!(
        out,
        "corpus: {} hostile cases ({} runs), {} benign cases ({} runs); setup {:.1}s, runs {:.1}s, total {:.1}s",
        cases.iter().filter(|c| c.hostile).count(),
        runs.iter().filter(|r| r.hostile).count(),
        cases.iter().filter(|c| !c.hostile).count(),
        runs.iter().filter(|r| !r.hostile).count(),
        setup_time.as_secs_f64(),
        run_time.as_secs_f64(),
        started.elapsed().as_secs_f64(),
    );
    let _ = writeln!(
        out,
        "{blocked}/{hostile_total} blocked, {allowed}/{benign_total} benign allowed"
    );
    print!("{out}");
    let clean = blocked == hostile_total
        && allowed == benign_total
        && new_files.is_empty()
        && chain.ok
        && runs.iter().all(|r| r.failure.is_none());
    assert!(clean, "the attack suite failed (see FAIL lines above)");
}

/// A store that could not be reached: its cases still go to the server, which must refuse
/// the hostile ones before any agent could see them. Nothing can be checksummed, so only
/// refusals and the audit count.
pub(crate) async fn run_server_only(store: Store, viewer: &Client, cases: &[Case]) -> Vec<Run> {
    let mut runs = Vec::new();
    for case in cases.iter().filter(|c| c.targets.contains(&store)) {
        let statement = case
            .input
            .replace("{prefix}", "attack:unreachable:")
            .replace("{db}", "pcx_attack_unreachable");
        let statement_hash = hex::encode(portcullis_proto::token::statement_sha256(&statement));
        let outcome = submit(viewer, store, statement, false).await;
        let (layer, failure) = if case.hostile {
            judge_hostile(&outcome)
        } else {
            let failure = judge_benign(case, &outcome, None);
            (
                if matches!(outcome, Outcome::Unrun) {
                    "unrun".to_owned()
                } else {
                    "allowed".to_owned()
                },
                failure,
            )
        };
        runs.push(Run {
            store,
            id: case.id.clone(),
            class: case.class.clone(),
            hostile: case.hostile,
            statement_hash,
            outcome,
            failure,
            layer,
        });
    }
    runs
}

#[test]
fn corpus_escapes_and_repetitions() {
    // The corpus notation itself, so a case cannot silently mean something else.
    assert_eq!(
        unescape(r"a\\b\n\r\t\v\f\0\u{ff1b}").as_deref(),
        Ok("a\\b\n\r\t\x0b\x0c\0；")
    );
    assert!(unescape(r"\x41").is_err());
    assert!(unescape(r"\u{110000}").is_err());
    assert_eq!(expand("S{{3*(}}1{{3*)}}").as_deref(), Ok("S(((1)))"));
    assert!(expand("{{x*a}}").is_err());
    assert!(expand("{{3*a").is_err());
    assert_eq!(
        with_database("postgres://u:p@h:5432/test?sslmode=disable", "x"),
        "postgres://u:p@h:5432/x?sslmode=disable"
    );
    assert_eq!(
        with_database("mysql://root@h:3306", "x"),
        "mysql://root@h:3306/x"
    );
    assert!(same(&json!([["a", 1]]), &json!(["a", "1"])));
    assert!(same(
        &json!({"n": "Ada", "c": "GB"}),
        &json!(["c", "GB", "n", "Ada"])
    ));
    assert!(same(&json!(2.6), &json!("2.6000000000")));
    assert!(!same(&json!("1"), &json!("2")));
    for (file, hostile) in [
        ("sql-hostile.cases", Some(true)),
        ("sql-benign.cases", Some(false)),
        ("redis-hostile.cases", Some(true)),
        ("redis-benign.cases", Some(false)),
        ("seed-redis.cases", None),
    ] {
        let cases = load_cases(file, hostile).unwrap_or_else(|e| panic!("{e}"));
        assert!(!cases.is_empty(), "{file}");
    }
}
