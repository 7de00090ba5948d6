//! The core-path benchmark: what Portcullis adds on top of talking to the data store
//! directly, measured end to end over real HTTP on 127.0.0.1 with the in-process dev stack
//! (server + agent + demo SQLite target), exactly as `portcullis dev` runs it.
//!
//! Figures (all printed, then summarised against the project's goals):
//! 1. direct: an sqlx read-only SQLite pool running the statement sequentially;
//! 2. through Portcullis: the same statement as an auto-approved request with a waiting
//!    create (one HTTP round trip: authn, classify, policy, queue, dispatch to the agent,
//!    Ed25519 token, verify, execute, report, relay) -> added latency at p50 and p99;
//! 3. throughput: 32 concurrent clients for a fixed window;
//! 4. dispatch latency: an idle agent already waiting in its long-poll, time until a newly
//!    auto-approved request's job reaches it.
//!
//! Speed goals live here and only here: tests never assert timings. Run with `bench/run`
//! (`cargo bench -p portcullis --bench core_path`); arguments cargo passes are ignored.
//! Everything is written under temporary directories and removed at the end.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use portcullis::devstack::{DevOptions, DevStack, create_demo_db, demo_agent_config};
use portcullis_agent::Agent;
use portcullis_client::Client;
use portcullis_core::{ConnectionKind, Environment, RequestState};
use portcullis_proto::agent::{ClaimRequest, JobAssignment, JobReport, ServedConnection};
use portcullis_proto::api::{CreateRequest, RequestOutcome};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

mod measure;
mod report;

use measure::*;
use report::*;

const STATEMENT: &str = "SELECT id, name, country FROM customers WHERE id = 3";

/// Options for every dev stack the benchmark starts. The throughput run sends tens of
/// thousands of requests a minute from one token, far past the per-principal limit (WEB-4)
/// meant for a real deployment; the limiter stays on, so its cost is part of the path
/// measured, with room for the whole run.
pub(crate) fn stack_options(dir: &Path) -> anyhow::Result<DevOptions> {
    let mut opts = DevOptions::new("127.0.0.1:0".parse()?, dir.join("data"));
    opts.server.rate_limit.authenticated = 1_000_000;
    Ok(opts)
}

/// Sequential latency runs: warm-up, then up to `ITERATIONS` or `BUDGET`, whichever first.
const DIRECT_WARMUP: usize = 500;
const DIRECT_ITERATIONS: usize = 3_000;
const THROUGH_WARMUP: usize = 200;
const THROUGH_ITERATIONS: usize = 2_000;
const THROUGH_BUDGET: Duration = Duration::from_secs(25);
const HTTP_FLOOR_ITERATIONS: usize = 2_000;
const FSYNC_ITERATIONS: usize = 300;

const LOAD_CLIENTS: usize = 32;
const LOAD_WARMUP: Duration = Duration::from_secs(1);
const LOAD_WINDOW: Duration = Duration::from_secs(10);

const DISPATCH_WARMUP: usize = 20;
const DISPATCH_ITERATIONS: usize = 500;
const DISPATCH_BUDGET: Duration = Duration::from_secs(25);

/// Goals from the project's performance issue.
const GOAL_ADDED_P50_US: f64 = 800.0;
const GOAL_ADDED_P99_US: f64 = 3_000.0;
const GOAL_THROUGHPUT: f64 = 3_000.0;
const GOAL_DISPATCH_P50_US: f64 = 1_000.0;
const GOAL_DISPATCH_P99_US: f64 = 5_000.0;

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench` (and any filter); this binary takes no arguments.
    // PORTCULLIS_LOG=error (or any filter) shows the server's and agent's log on stderr.
    if let Ok(filter) = std::env::var("PORTCULLIS_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    clock_ticks();
    let scratch = tempfile::tempdir().context("temp dir")?;
    print_machine(scratch.path());
    let mut summary = Vec::new();

    // 0. Context: what one durable SQLite commit costs on this disk (the state store commits
    //    with WAL + synchronous=FULL), measured the same way the server commits.
    section("0. context: one durable commit (WAL, synchronous=FULL) on the temp dir's disk");
    let fsync = commit_probe(&scratch.path().join("commit-probe.db")).await?;
    println!(
        "   single-row INSERT transaction, {} commits: {}",
        fsync.n,
        fsync.line()
    );
    let ceiling = 1e6 / (3.0 * fsync.p50);
    println!(
        "   the state store makes 3 such commits per auto-approved request (create+queue, claim, report), all on one writer connection:"
    );
    println!(
        "   a serial-commit ceiling of about {ceiling:.0} requests/s at the p50 commit time, before any other work"
    );
    summary.push(Row::info(
        "durable SQLite commit p50 / p99",
        format!("{} / {}", us(fsync.p50), us(fsync.p99)),
    ));
    summary.push(Row::info(
        "3-commit ceiling, 1 / (3 x commit p50)",
        format!("{ceiling:.0} req/s"),
    ));

    // 1. Direct.
    section("1. direct: sqlx read-only SQLite pool, sequential");
    let demo = scratch.path().join("direct-demo.db");
    create_demo_db(&demo).await?;
    let direct = direct(&demo).await?;
    println!("   {STATEMENT}");
    println!(
        "   {} iterations after {DIRECT_WARMUP} warm-up: {}",
        direct.n,
        direct.line()
    );
    summary.push(Row::info(
        "direct read p50 / p99",
        format!("{} / {}", us(direct.p50), us(direct.p99)),
    ));

    // 2. Through Portcullis, sequential.
    section(
        "2. through Portcullis: auto-approved read, create with wait (one round trip), sequential",
    );
    let stack_dir = tempfile::tempdir().context("temp dir")?;
    let stack = DevStack::start(stack_options(stack_dir.path())?).await?;
    let admin = Client::new(&stack.url, Some(&stack.admin_token))?;
    println!(
        "   dev stack at {} (server + in-process agent, demo SQLite target)",
        stack.url
    );

    let floor = http_floor(&admin).await?;
    println!(
        "   context: GET /health (HTTP round trip floor, no auth), {} iterations: {}",
        floor.n,
        floor.line()
    );
    summary.push(Row::info(
        "HTTP round trip floor (GET /health) p50",
        us(floor.p50),
    ));

    let first = admin
        .create_request(&read_body(), Duration::from_secs(10))
        .await?;
    check_outcome(&first)
        .map_err(|e| anyhow::anyhow!("the first request through the stack failed: {e}"))?;
    if let Some(result) = &first.result {
        println!(
            "   sample result: columns {:?}, rows {}",
            result
                .columns
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>(),
            serde_json::to_string(&result.rows)?
        );
    }
    let (through, through_cpu) = through(&admin, THROUGH_ITERATIONS).await?;
    println!(
        "   {} iterations after {THROUGH_WARMUP} warm-up: {}",
        through.n,
        through.line()
    );
    print_cpu(through_cpu, through.n);
    let added_p50 = through.p50 - direct.p50;
    let added_p99 = through.p99 - direct.p99;
    println!(
        "   added latency (through - direct): p50 {}  p99 {}",
        us(added_p50),
        us(added_p99)
    );
    summary.push(Row::info(
        "through-Portcullis read p50 / p99",
        format!("{} / {}", us(through.p50), us(through.p99)),
    ));
    summary.push(Row::at_most(
        "added latency p50 (through - direct)",
        added_p50,
        GOAL_ADDED_P50_US,
    ));
    summary.push(Row::at_most(
        "added latency p99 (through - direct)",
        added_p99,
        GOAL_ADDED_P99_US,
    ));

    // 2b. Diagnostic: the same sequential run against an agent with a single worker. The dev
    //     agent runs 16 workers, each parked in its own long-poll; a new job wakes all of them.
    section(
        "2b. diagnostic: same sequential run, agent with 1 worker instead of the dev agent's 16",
    );
    let single = through_single_worker().await?;
    println!(
        "   {} iterations after {THROUGH_WARMUP} warm-up: {}",
        single.0.n,
        single.0.line()
    );
    print_cpu(single.1, single.0.n);
    summary.push(Row::info(
        "diagnostic: through p50 / p99, agent with 1 worker",
        format!("{} / {}", us(single.0.p50), us(single.0.p99)),
    ));

    // 3. Throughput with 32 concurrent clients.
    section(&format!(
        "3. throughput: {LOAD_CLIENTS} concurrent clients (one Client each), {} s window after {} s warm-up",
        LOAD_WINDOW.as_secs(),
        LOAD_WARMUP.as_secs()
    ));
    let load = throughput(&stack.url, &stack.admin_token).await?;
    println!(
        "   completed in window: {} ok, {} errors  ->  {:.0} requests/s",
        load.ok, load.errors, load.rate
    );
    println!("   latency under load: {}", load.latency.line());
    if let Some(cpu) = load.cpu_cores {
        println!(
            "   process CPU during the window: {cpu:.2} cores busy of {} ({:.0} µs CPU per request; server, agent and the 32 clients share the process)",
            cores(),
            load.cpu_us_per_request.unwrap_or(f64::NAN)
        );
    }
    for e in &load.error_samples {
        println!("   error: {e}");
    }
    summary.push(Row::at_least(
        "auto-approved reads/s, 32 clients",
        load.rate,
        GOAL_THROUGHPUT,
        "req/s",
    ));
    summary.push(Row::exact_zero("errors under load", load.errors));
    summary.push(Row::info(
        "latency under load p50 / p99",
        format!("{} / {}", us(load.latency.p50), us(load.latency.p99)),
    ));
    stack.stop().await;
    drop(stack_dir);

    // 4. Dispatch latency.
    section(
        "4. dispatch latency: idle agent waiting in claim, request auto-approved -> job in the agent's hands",
    );
    let dispatch = dispatch().await?;
    println!(
        "   {} iterations after {DISPATCH_WARMUP} warm-up",
        dispatch.from_response.n
    );
    println!(
        "   (a) create response -> job arrived (clamped at 0; {} of {} arrived before the response): {}",
        dispatch.job_first,
        dispatch.from_response.n,
        dispatch.from_response.line()
    );
    println!(
        "   (b) before sending create -> job arrived (upper bound, includes the create call): {}",
        dispatch.from_send.line()
    );
    println!(
        "   context: create with wait=0 round trip (auth, classify, policy, 1 commit): {}",
        dispatch.create.line()
    );
    summary.push(Row::at_most(
        "dispatch p50 (a: create response -> job)",
        dispatch.from_response.p50,
        GOAL_DISPATCH_P50_US,
    ));
    summary.push(Row::at_most(
        "dispatch p99 (a: create response -> job)",
        dispatch.from_response.p99,
        GOAL_DISPATCH_P99_US,
    ));
    summary.push(Row::at_most(
        "dispatch p50 (b: before create -> job)",
        dispatch.from_send.p50,
        GOAL_DISPATCH_P50_US,
    ));
    summary.push(Row::at_most(
        "dispatch p99 (b: before create -> job)",
        dispatch.from_send.p99,
        GOAL_DISPATCH_P99_US,
    ));

    // 5. Diagnostic: the same sequential read and load with the state store at
    // `synchronous = normal` (commits survive a process crash, not power loss), to show how
    // much of the cost is the per-commit fsync.
    section("5. diagnostic: state store with synchronous = normal (not the default)");
    let normal_dir = tempfile::tempdir()?;
    let mut normal_opts = stack_options(normal_dir.path())?;
    normal_opts.server.state.synchronous = portcullis_server::store::Durability::Normal;
    let normal = DevStack::start(normal_opts).await?;
    let normal_admin = Client::new(&normal.url, Some(&normal.admin_token))?;
    let (normal_seq, _) = measure::through(&normal_admin, THROUGH_ITERATIONS / 2).await?;
    println!("   sequential: {}", normal_seq.line());
    let normal_load = throughput(&normal.url, &normal.admin_token).await?;
    println!(
        "   32 clients: {:.0} requests/s, {} errors",
        normal_load.rate, normal_load.errors
    );
    for sample in &normal_load.error_samples {
        println!("   error: {sample}");
    }
    summary.push(Row::info(
        "diagnostic, synchronous=normal: through p50 / reads/s",
        format!("{} / {:.0} req/s", us(normal_seq.p50), normal_load.rate),
    ));
    normal.stop().await;
    drop(normal_dir);

    section(&format!(
        "summary (whole run {:.1} s)",
        started.elapsed().as_secs_f64()
    ));
    print_summary(&summary);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Phases
