//! The core-path benchmark: every figure of the project's performance goals, measured in one
//! run on 127.0.0.1 against the real PostgreSQL (`PORTCULLIS_BENCH_PG_URL`, by default
//! `postgres://postgres@127.0.0.1:5432/test`), and summarised against the goals at the end.
//!
//! The PostgreSQL figures read one row by primary key from a small table in a schema of the
//! run's own (a unique name, dropped at the end). Sections 1-5 use the in-process dev stack
//! (server + agent over real HTTP on loopback, exactly as `portcullis dev` runs them, with the
//! PostgreSQL connection added to its agent); sections 6-7 use the state store's public API
//! and the release binary; section 8 runs the release `portcullis server` and
//! `portcullis-agent` as separate processes.
//!
//! 0. context: one durable SQLite commit on the temp dir's disk (what each state-store commit
//!    pays);
//! 1. direct: one kept-alive sqlx PostgreSQL connection running the statement (prepared once)
//!    sequentially;
//! 2. through Portcullis: the same statement as an auto-approved request with a waiting
//!    create (one HTTP round trip: authn, classify, policy, queue, dispatch to the agent,
//!    Ed25519 token, verify, execute on PostgreSQL, report, relay) -> added latency at p50
//!    and p99, with the CPU, thread sleeps, context switches and wake-up interrupts per
//!    request; the same pair on the demo SQLite target as context;
//! 3. throughput: 32 concurrent clients of auto-approved reads for a fixed window;
//! 4. dispatch latency: an idle agent already waiting in its long-poll, time from the commit
//!    that approves a new request (its `request.approved` event as published to the server's
//!    live subscribers) until the job reaches the agent; bounded below by the create
//!    response and above by the moment the create was sent;
//! 5. diagnostic: 2 and 3 with the state store at `synchronous = normal`;
//! 6. durable audit appends: 1, 8 and 64 concurrent writers, each looping
//!    `AuditTx::begin` -> `append` one event -> `commit` on a fresh state store at the default
//!    durability; committed events/s, the best concurrent figure against the goal;
//! 7. `portcullis audit verify --data` (the release binary, a separate process) over a state
//!    store of 1,000,000 valid chained events with a signed checkpoint, built for the run;
//! 8. separate processes: spawn -> `/ready` of `portcullis server` (first start on an empty
//!    data directory, and the usual start on a prepared one), spawn -> the server lists the
//!    agent as connected for `portcullis-agent`; resident memory (VmRSS, VmHWM from /proc) of
//!    the server idle and under a 32-client load of auto-approved reads, and of the agent;
//!    as context, the sequential reads of 2 through the two processes (before the load), the
//!    same agent run as `portcullis agent` (the all-in-one binary) under the same load, and
//!    the server idle after one password login (before the loads, which then run with its
//!    Argon2 buffer pooled).
//!
//! `BENCH_SECTIONS=6,7 bench/run` runs only the sections listed.
//!
//! Speed goals live here and only here: tests never assert timings. Run with `bench/run`
//! (which builds the release binary, then `cargo bench -p portcullis --bench core_path`);
//! arguments cargo passes are ignored. Everything is written under temporary directories and
//! removed at the end.

/// The binary's allocator (`src/main.rs`), so that the in-process figures match it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use portcullis::devstack::{DevOptions, DevStack, create_demo_db};
use portcullis_client::Client;
use portcullis_core::{ConnectionKind, Environment, RequestState};
use portcullis_proto::agent::{ClaimRequest, JobAssignment, JobReport, ServedConnection};
use portcullis_proto::api::{CreateRequest, RequestOutcome};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

mod audit;
mod measure;
mod pg;
mod procs;
mod report;
#[path = "../shared/mod.rs"]
mod shared;

use measure::*;
use pg::PgTarget;
use report::*;

/// The demo SQLite read (context figures only).
const SQLITE_STATEMENT: &str = "SELECT id, name, country FROM customers WHERE id = 3";

/// Options for every dev stack the benchmark starts: the PostgreSQL connection is added to
/// the dev agent beside the demo database. The throughput run sends tens of thousands of
/// requests a minute from one token (and the HTTP floor thousands of unauthenticated
/// `/health` calls from one address), far past the limits (WEB-4) meant for a real
/// deployment; the limiter stays on, so its cost is part of the path measured, with room for
/// the whole run.
pub(crate) fn stack_options(dir: &Path, pg: &PgTarget) -> anyhow::Result<DevOptions> {
    let mut opts = DevOptions::new("127.0.0.1:0".parse()?, dir.join("data"));
    opts.server.rate_limit.authenticated = 1_000_000;
    opts.server.rate_limit.anonymous = 1_000_000;
    opts.extra.push(pg.agent_target());
    Ok(opts)
}

/// Sequential latency runs: warm-up, then up to `ITERATIONS` or `BUDGET`, whichever first.
const DIRECT_WARMUP: usize = 500;
const DIRECT_ITERATIONS: usize = 3_000;
const THROUGH_WARMUP: usize = 200;
const THROUGH_ITERATIONS: usize = 2_000;
const SQLITE_THROUGH_ITERATIONS: usize = 1_000;
const THROUGH_BUDGET: Duration = Duration::from_secs(25);
const HTTP_FLOOR_ITERATIONS: usize = 2_000;
const FSYNC_ITERATIONS: usize = 300;
/// Commits that grow the writer probe's WAL before it is restarted and overwritten in place.
const WRITER_PROBE_WARMUP: usize = 400;

const LOAD_CLIENTS: usize = 32;
const LOAD_WARMUP: Duration = Duration::from_secs(1);
const LOAD_WINDOW: Duration = Duration::from_secs(10);
/// The shorter windows of the diagnostic (5) and of the separate processes (8).
const NORMAL_LOAD_WINDOW: Duration = Duration::from_secs(5);
const PROC_LOAD_WINDOW: Duration = Duration::from_secs(5);
/// Sequential reads through the separate processes (section 8), after the same warm-up as
/// section 2's.
const PROC_SEQUENTIAL_ITERATIONS: usize = 1_000;

const DISPATCH_WARMUP: usize = 20;
const DISPATCH_ITERATIONS: usize = 500;
const DISPATCH_BUDGET: Duration = Duration::from_secs(25);

const APPEND_WRITERS: [usize; 3] = [1, 8, 64];
const APPEND_WARMUP: Duration = Duration::from_millis(500);
const APPEND_WINDOW: Duration = Duration::from_secs(3);
const AUDIT_VERIFY_EVENTS: u64 = 1_000_000;

/// Goals from the project's performance issue.
const GOAL_ADDED_P50_US: f64 = 800.0;
const GOAL_ADDED_P99_US: f64 = 3_000.0;
const GOAL_THROUGHPUT: f64 = 3_000.0;
const GOAL_DISPATCH_P50_US: f64 = 1_000.0;
const GOAL_DISPATCH_P99_US: f64 = 5_000.0;
const GOAL_AUDIT_APPENDS: f64 = 10_000.0;
const GOAL_AUDIT_VERIFY_S: f64 = 5.0;
const GOAL_SERVER_IDLE_MIB: f64 = 40.0;
const GOAL_SERVER_LOAD_MIB: f64 = 120.0;
const GOAL_AGENT_MIB: f64 = 20.0;
const GOAL_START_MS: f64 = 200.0;

/// The release `portcullis` binary cargo built beside this benchmark (target/release).
fn release_binary() -> anyhow::Result<&'static Path> {
    built(env!("CARGO_BIN_EXE_portcullis"))
}

/// The release `portcullis-agent` binary (the agent alone), built with `portcullis`.
fn release_agent_binary() -> anyhow::Result<&'static Path> {
    built(env!("CARGO_BIN_EXE_portcullis-agent"))
}

fn built(path: &'static str) -> anyhow::Result<&'static Path> {
    let bin = Path::new(path);
    if !bin.is_file() {
        bail!(
            "{} is missing: run the benchmark with bench/run, which builds it",
            bin.display()
        );
    }
    Ok(bin)
}

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
    let bin = release_binary()?;
    let scratch = tempfile::tempdir().context("temp dir")?;
    print_machine(scratch.path());
    println!("   release binary: {}", bin.display());
    let pg = PgTarget::create().await?;
    println!(
        "   PostgreSQL: {} (schema {}, dropped at the end)",
        shared::redact(&pg.url),
        pg.schema
    );
    let mut summary = Vec::new();
    let outcome = sections(&pg, bin, scratch.path(), &mut summary).await;
    let dropped = pg.drop_schema().await;
    outcome?;
    dropped.context("dropping the benchmark schema")?;

    section(&format!(
        "summary (whole run {:.1} s)",
        started.elapsed().as_secs_f64()
    ));
    print_summary(&summary);
    Ok(())
}

async fn sections(
    pg: &PgTarget,
    bin: &Path,
    scratch: &Path,
    summary: &mut Vec<Row>,
) -> anyhow::Result<()> {
    if wanted(0) {
        commit_context(scratch, summary).await?;
    }
    let mut direct = None;
    if wanted(1) || wanted(2) || wanted(3) {
        let measured = direct_pg(pg, summary).await?;
        if wanted(2) || wanted(3) {
            sequential_and_load(pg, scratch, &measured, summary).await?;
        }
        direct = Some(measured);
    }
    if wanted(4) {
        dispatch_section(pg, summary).await?;
    }
    if wanted(5) {
        normal_durability(pg, summary).await?;
    }
    if wanted(6) {
        audit_appends(summary).await?;
    }
    if wanted(7) {
        audit_verify(bin, summary).await?;
    }
    if wanted(8) {
        separate_processes(bin, release_agent_binary()?, pg, direct.as_ref(), summary).await?;
    }
    Ok(())
}

/// Whether section `n` runs: all of them, unless `BENCH_SECTIONS` lists some (`7` or
/// `0,6,7`; sections 2 and 3 share a stack and both need the direct figure of 1).
fn wanted(n: u32) -> bool {
    match std::env::var("BENCH_SECTIONS") {
        Ok(list) if !list.trim().is_empty() => list
            .split(',')
            .any(|part| part.trim().parse::<u32>().ok() == Some(n)),
        _ => true,
    }
}

/// 0. What one durable SQLite commit costs on this disk (the state store commits with WAL +
///    synchronous=FULL): through sqlx, as this figure has always been measured, and the way
///    the server's audit writer thread commits.
async fn commit_context(scratch: &Path, summary: &mut Vec<Row>) -> anyhow::Result<()> {
    section("0. context: one durable commit (WAL, synchronous=FULL) on the temp dir's disk");
    let probes = [
        (
            "single-row INSERT transaction (sqlx, the WAL growing)",
            "durable SQLite commit p50 / p99",
            commit_probe(&scratch.join("commit-probe.db")).await?,
        ),
        (
            "as the server's writer thread commits (rusqlite on one thread, two tables, the WAL overwritten in place)",
            "durable commit as the server's writer makes it p50 / p99",
            writer_commit_probe(&scratch.join("writer-probe.db")).await?,
        ),
    ];
    for (what, figure, stats) in probes {
        println!("   {what}, {} commits: {}", stats.n, stats.line());
        summary.push(Row::info(
            figure,
            format!("{} / {}", us(stats.p50), us(stats.p99)),
        ));
    }
    Ok(())
}

/// 1. Direct: the statement over one kept-alive sqlx PostgreSQL connection.
async fn direct_pg(pg: &PgTarget, summary: &mut Vec<Row>) -> anyhow::Result<Stats> {
    section(
        "1. direct: one sqlx PostgreSQL connection (kept alive, statement prepared), sequential",
    );
    let direct = pg.direct().await?;
    println!("   {}", pg.statement);
    println!(
        "   {} iterations after {DIRECT_WARMUP} warm-up: {}",
        direct.n,
        direct.line()
    );
    summary.push(Row::info(
        "direct PostgreSQL read p50 / p99",
        format!("{} / {}", us(direct.p50), us(direct.p99)),
    ));
    Ok(direct)
}

/// 2. Through Portcullis, sequential (PostgreSQL, then the demo SQLite as context), and
/// 3. throughput with 32 concurrent clients, on one dev stack.
async fn sequential_and_load(
    pg: &PgTarget,
    scratch: &Path,
    direct: &Stats,
    summary: &mut Vec<Row>,
) -> anyhow::Result<()> {
    section(
        "2. through Portcullis: auto-approved PostgreSQL read, create with wait (one round trip), sequential",
    );
    let stack_dir = tempfile::tempdir().context("temp dir")?;
    let stack = DevStack::start(stack_options(stack_dir.path(), pg)?).await?;
    let admin = Client::new(&stack.url, Some(&stack.admin_token))?;
    println!(
        "   dev stack at {} (server + in-process agent with the PostgreSQL connection `{}`)",
        stack.url,
        pg::PG_CONNECTION
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

    let body = pg.body();
    let first = admin.create_request(&body, Duration::from_secs(10)).await?;
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
    let (through, through_cost) = through(&admin, &body, THROUGH_ITERATIONS).await?;
    println!(
        "   {} iterations after {THROUGH_WARMUP} warm-up: {}",
        through.n,
        through.line()
    );
    print_cost(&through_cost, through.n);
    let added_p50 = through.p50 - direct.p50;
    let added_p99 = through.p99 - direct.p99;
    println!(
        "   added latency (through - direct): p50 {}  p99 {}",
        us(added_p50),
        us(added_p99)
    );
    summary.push(Row::info(
        "through-Portcullis PostgreSQL read p50 / p99",
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
    if let Some((before, after)) = &through_cost.sched {
        summary.push(Row::info(
            "per sequential request: sleeps / switches / wake IPIs",
            before.short(after, through.n),
        ));
    }

    section("2s. context: the same sequential pair on the demo SQLite target");
    let demo = scratch.join("direct-demo.db");
    create_demo_db(&demo).await?;
    let sqlite_direct = direct_sqlite(&demo).await?;
    println!(
        "   direct (sqlx read-only SQLite pool), {SQLITE_STATEMENT}: {}",
        sqlite_direct.line()
    );
    let (sqlite_through, sqlite_cost) =
        measure::through(&admin, &sqlite_body(), SQLITE_THROUGH_ITERATIONS).await?;
    println!(
        "   through Portcullis, {} iterations after {THROUGH_WARMUP} warm-up: {}",
        sqlite_through.n,
        sqlite_through.line()
    );
    print_cost(&sqlite_cost, sqlite_through.n);
    summary.push(Row::info(
        "context, SQLite target: direct / through p50",
        format!("{} / {}", us(sqlite_direct.p50), us(sqlite_through.p50)),
    ));

    section(&format!(
        "3. throughput: {LOAD_CLIENTS} concurrent clients (one Client each), auto-approved PostgreSQL reads, {} s window after {} s warm-up",
        LOAD_WINDOW.as_secs(),
        LOAD_WARMUP.as_secs()
    ));
    let audit = stack.server.state.audit.clone();
    let load = throughput(&stack.url, &stack.admin_token, &body, LOAD_WINDOW, || {
        audit.commits()
    })
    .await?;
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
    if let Some(machine) = load.machine {
        println!(
            "   whole machine during the window: {:.0} % of its CPUs busy, the PostgreSQL processes {:.2} cores; {:.0} µs CPU per request in all (every process, the kernel's interrupt work)",
            machine.busy_share * 100.0,
            machine.postgres_cores,
            machine.cpu_us_per_request
        );
        summary.push(Row::info(
            "CPU per request under load: this process / whole machine",
            format!(
                "{:.0} µs / {:.0} µs ({:.0} % busy)",
                load.cpu_us_per_request.unwrap_or(f64::NAN),
                machine.cpu_us_per_request,
                machine.busy_share * 100.0
            ),
        ));
    }
    println!(
        "   state-store commits in the window: {} ({:.2} per request; each request's create and result are two transactions, grouped)",
        load.commits, load.commits_per_request
    );
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
    Ok(())
}

/// 4. Dispatch latency.
async fn dispatch_section(pg: &PgTarget, summary: &mut Vec<Row>) -> anyhow::Result<()> {
    section(
        "4. dispatch latency: idle agent waiting in claim, request auto-approved -> job in the agent's hands",
    );
    let dispatch = dispatch(pg).await?;
    println!(
        "   {} iterations after {DISPATCH_WARMUP} warm-up",
        dispatch.from_response.n
    );
    println!(
        "   (c) approval committed (request.approved published to live subscribers) -> job arrived (clamped at 0; {} of {} arrived before the event was seen): {}",
        dispatch.commit_late,
        dispatch.from_commit.n,
        dispatch.from_commit.line()
    );
    println!(
        "   (a) lower bound: create response -> job arrived (clamped at 0; {} of {} arrived before the response): {}",
        dispatch.job_first,
        dispatch.from_response.n,
        dispatch.from_response.line()
    );
    println!(
        "   (b) upper bound: before sending create -> job arrived (includes the create call): {}",
        dispatch.from_send.line()
    );
    println!(
        "   context: create with wait=0 round trip (auth, classify, policy, 1 commit): {}",
        dispatch.create.line()
    );
    summary.push(Row::at_most(
        "dispatch p50 (c: approval committed -> job)",
        dispatch.from_commit.p50,
        GOAL_DISPATCH_P50_US,
    ));
    summary.push(Row::at_most(
        "dispatch p99 (c: approval committed -> job)",
        dispatch.from_commit.p99,
        GOAL_DISPATCH_P99_US,
    ));
    summary.push(Row::info(
        "dispatch bounds p50 / p99, a: response -> job",
        format!(
            "{} / {}",
            us(dispatch.from_response.p50),
            us(dispatch.from_response.p99)
        ),
    ));
    summary.push(Row::info(
        "dispatch bounds p50 / p99, b: before create -> job",
        format!(
            "{} / {}",
            us(dispatch.from_send.p50),
            us(dispatch.from_send.p99)
        ),
    ));
    Ok(())
}

/// 5. Diagnostic: the same sequential read and load with the state store at
///    `synchronous = normal` (commits survive a process crash, not power loss), to show how
///    much of the cost is the per-commit fsync.
async fn normal_durability(pg: &PgTarget, summary: &mut Vec<Row>) -> anyhow::Result<()> {
    section("5. diagnostic: state store with synchronous = normal (not the default)");
    let normal_dir = tempfile::tempdir()?;
    let mut normal_opts = stack_options(normal_dir.path(), pg)?;
    normal_opts.server.state.synchronous = portcullis_server::store::Durability::Normal;
    let normal = DevStack::start(normal_opts).await?;
    let normal_admin = Client::new(&normal.url, Some(&normal.admin_token))?;
    let body = pg.body();
    let (normal_seq, _) = through(&normal_admin, &body, THROUGH_ITERATIONS / 2).await?;
    println!("   sequential: {}", normal_seq.line());
    let normal_load = throughput(
        &normal.url,
        &normal.admin_token,
        &body,
        NORMAL_LOAD_WINDOW,
        || normal.server.state.audit.commits(),
    )
    .await?;
    println!(
        "   32 clients, {} s window: {:.0} requests/s, {} errors",
        NORMAL_LOAD_WINDOW.as_secs(),
        normal_load.rate,
        normal_load.errors
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
    Ok(())
}

/// 6. Durable audit appends through `AuditTx`, 1, 8 and 64 concurrent writers.
async fn audit_appends(summary: &mut Vec<Row>) -> anyhow::Result<()> {
    section(&format!(
        "6. durable audit appends: N writers looping AuditTx::begin -> append 1 event -> commit, fresh state store, default durability, {} s window after {} ms warm-up",
        APPEND_WINDOW.as_secs(),
        APPEND_WARMUP.as_millis()
    ));
    let mut best: Option<(usize, f64)> = None;
    let mut errors = 0;
    for writers in APPEND_WRITERS {
        let run = audit::appends(writers).await?;
        println!(
            "   {:>2} writer{}: {} committed in window -> {:.0} events/s; per transaction {}",
            run.writers,
            if run.writers == 1 { " " } else { "s" },
            run.committed,
            run.rate,
            run.latency.line()
        );
        println!(
            "      chain afterwards: {} events ({} committed in the whole run), {}; {} errors",
            run.chain_events,
            run.total_committed,
            run.chain_bad
                .as_deref()
                .unwrap_or("dense, linked and unaltered"),
            run.errors
        );
        for e in &run.error_samples {
            println!("      error: {e}");
        }
        let lost = run.chain_events != run.total_committed || run.chain_bad.is_some();
        if lost {
            println!("      the chain does not hold exactly the committed events");
        }
        errors += run.errors + u64::from(lost);
        summary.push(Row::info(
            &format!(
                "durable audit appends/s, {writers} writer{}",
                if writers == 1 { "" } else { "s" }
            ),
            format!("{:.0} events/s", run.rate),
        ));
        if writers > 1 && best.is_none_or(|(_, rate)| run.rate > rate) {
            best = Some((writers, run.rate));
        }
    }
    if let Some((writers, rate)) = best {
        summary.push(Row::at_least(
            &format!("durable audit appends/s, best concurrent ({writers} writers)"),
            rate,
            GOAL_AUDIT_APPENDS,
            "events/s",
        ));
    }
    summary.push(Row::exact_zero(
        "audit append errors or chain mismatches",
        errors,
    ));
    Ok(())
}

/// 7. The release binary's `portcullis audit verify --data` over 1,000,000 events.
async fn audit_verify(bin: &Path, summary: &mut Vec<Row>) -> anyhow::Result<()> {
    section(&format!(
        "7. portcullis audit verify over {AUDIT_VERIFY_EVENTS} events (release binary, separate process)"
    ));
    let run = audit::verify_million(bin).await?;
    println!(
        "   state store built in {:.1} s: {} events with a signed checkpoint, {:.0} MiB",
        run.build.as_secs_f64(),
        run.events,
        run.state_bytes as f64 / 1_048_576.0
    );
    println!(
        "   portcullis audit verify --data DIR --json: chain intact, {} events, wall time {:.2} s",
        run.events,
        run.wall.as_secs_f64()
    );
    summary.push(Row::at_most_in(
        "audit verify, 1,000,000 events (wall)",
        run.wall.as_secs_f64(),
        GOAL_AUDIT_VERIFY_S,
        "s",
    ));
    Ok(())
}

/// Section 8: `portcullis server` and `portcullis-agent` as separate processes; `direct` is
/// the read of section 1, when it ran.
async fn separate_processes(
    bin: &Path,
    agent_bin: &Path,
    pg: &PgTarget,
    direct: Option<&Stats>,
    summary: &mut Vec<Row>,
) -> anyhow::Result<()> {
    section(&format!(
        "8. separate processes: release `portcullis server` and `portcullis-agent`, start to ready, sequential reads and resident memory; {LOAD_CLIENTS} clients in this process, {} s window",
        PROC_LOAD_WINDOW.as_secs()
    ));
    let p = procs::processes(bin, agent_bin, pg).await?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "   server spawn -> /ready 200: {:.1} ms (first start, empty data dir); {:.1} ms (prepared data dir)",
        ms(p.server_first_start),
        ms(p.server_start)
    );
    println!(
        "   agent spawn -> listed as connected by the server: {:.1} ms (its ready file: {})",
        ms(p.agent_connected),
        p.agent_ready_file
            .map_or("not seen".into(), |d| format!("{:.1} ms", ms(d)))
    );
    println!(
        "   idle (agent connected, no request yet): server VmRSS {:.1} MiB, agent VmRSS {:.1} MiB",
        p.server_idle, p.agent_idle
    );
    println!(
        "   sequential reads (as in 2), {} iterations after {THROUGH_WARMUP} warm-up: {}",
        p.sequential.n,
        p.sequential.line()
    );
    if let Some((before, after)) = &p.sequential_cost.sched {
        println!(
            "   per request: {} (the process: this one, the client's)",
            before.line(after, p.sequential.n)
        );
    }
    let added = direct.map(|d| p.sequential.p50 - d.p50);
    if let Some(added) = added {
        println!(
            "   added latency over the direct read of 1: p50 {}",
            us(added)
        );
    }
    println!(
        "   load: {} ok, {} errors -> {:.0} requests/s; latency {}",
        p.load.ok,
        p.load.errors,
        p.load.rate,
        p.load.latency.line()
    );
    for e in &p.load.error_samples {
        println!("   error: {e}");
    }
    println!(
        "   under load: server VmRSS max sampled {:.1} MiB, VmHWM {:.1} MiB; agent VmRSS max sampled {:.1} MiB, VmHWM {:.1} MiB",
        p.server_load_sampled, p.server_peak, p.agent_load_sampled, p.agent_peak
    );
    println!(
        "   1 s after the load: server VmRSS {:.1} MiB, agent VmRSS {:.1} MiB",
        p.server_after, p.agent_after
    );
    println!(
        "   context, the same agent as `portcullis agent` (the all-in-one binary): idle VmRSS {:.1} MiB, under the same load VmHWM {:.1} MiB ({:.0} requests/s)",
        p.all_in_one_idle, p.all_in_one_peak, p.all_in_one_rate
    );
    println!(
        "   server idle after one password login, before any load (its Argon2 buffer pooled from then on): VmRSS {:.1} MiB",
        p.server_after_login
    );
    summary.push(Row::at_most_in(
        "server start -> ready (prepared data dir)",
        ms(p.server_start),
        GOAL_START_MS,
        "ms",
    ));
    summary.push(Row::at_most_in(
        "server first start -> ready (empty data dir)",
        ms(p.server_first_start),
        GOAL_START_MS,
        "ms",
    ));
    summary.push(Row::at_most_in(
        "agent start -> connected (server's agents list)",
        ms(p.agent_connected),
        GOAL_START_MS,
        "ms",
    ));
    summary.push(Row::at_most_in(
        "server RSS idle (VmRSS)",
        p.server_idle,
        GOAL_SERVER_IDLE_MIB,
        "MiB",
    ));
    summary.push(Row::at_most_in(
        "server RSS, 32-client load (VmHWM)",
        p.server_peak,
        GOAL_SERVER_LOAD_MIB,
        "MiB",
    ));
    summary.push(Row::at_most_in(
        "agent RSS idle (VmRSS)",
        p.agent_idle,
        GOAL_AGENT_MIB,
        "MiB",
    ));
    summary.push(Row::at_most_in(
        "agent RSS, 32-client load (VmHWM)",
        p.agent_peak,
        GOAL_AGENT_MIB,
        "MiB",
    ));
    summary.push(Row::info(
        "agent RSS as `portcullis agent`: idle / load",
        format!("{:.1} / {:.1} MiB", p.all_in_one_idle, p.all_in_one_peak),
    ));
    summary.push(Row::at_most_in(
        "server RSS idle after one password login (VmRSS)",
        p.server_after_login,
        GOAL_SERVER_IDLE_MIB,
        "MiB",
    ));
    summary.push(Row::info(
        "separate processes: sequential through p50 / added p50",
        format!(
            "{} / {}",
            us(p.sequential.p50),
            added.map_or_else(|| "-".to_owned(), us)
        ),
    ));
    summary.push(Row::info(
        "separate processes: reads/s, 32 clients / errors",
        format!("{:.0} req/s / {}", p.load.rate, p.load.errors),
    ));
    Ok(())
}
