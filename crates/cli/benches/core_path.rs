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

const STATEMENT: &str = "SELECT id, name, country FROM customers WHERE id = 3";

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
    let stack = DevStack::start(DevOptions::new(
        "127.0.0.1:0".parse()?,
        stack_dir.path().join("data"),
    ))
    .await?;
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

    section(&format!(
        "summary (whole run {:.1} s)",
        started.elapsed().as_secs_f64()
    ));
    print_summary(&summary);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Phases

async fn commit_probe(path: &Path) -> anyhow::Result<Stats> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    sqlx::query("CREATE TABLE probe (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        .execute(&pool)
        .await?;
    let mut lat = Vec::with_capacity(FSYNC_ITERATIONS);
    for i in 0..FSYNC_ITERATIONS + 20 {
        let t = Instant::now();
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("INSERT INTO probe (v) VALUES (?)")
            .bind(format!("row {i}"))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        if i >= 20 {
            lat.push(t.elapsed());
        }
    }
    pool.close().await;
    Ok(Stats::of(lat))
}

async fn direct(db: &Path) -> anyhow::Result<Stats> {
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(SqliteConnectOptions::new().filename(db).read_only(true))
        .await?;
    async fn once(pool: &SqlitePool) -> anyhow::Result<()> {
        let rows: Vec<(i64, String, String)> = sqlx::query_as(STATEMENT).fetch_all(pool).await?;
        if rows.len() != 1 {
            bail!("expected one row, got {}", rows.len());
        }
        Ok(())
    }
    for _ in 0..DIRECT_WARMUP {
        once(&pool).await?;
    }
    let mut lat = Vec::with_capacity(DIRECT_ITERATIONS);
    for _ in 0..DIRECT_ITERATIONS {
        let t = Instant::now();
        once(&pool).await?;
        lat.push(t.elapsed());
    }
    pool.close().await;
    Ok(Stats::of(lat))
}

async fn http_floor(client: &Client) -> anyhow::Result<Stats> {
    for _ in 0..200 {
        client.health().await?;
    }
    let mut lat = Vec::with_capacity(HTTP_FLOOR_ITERATIONS);
    for _ in 0..HTTP_FLOOR_ITERATIONS {
        let t = Instant::now();
        if !client.health().await? {
            bail!("/health is not OK");
        }
        lat.push(t.elapsed());
    }
    Ok(Stats::of(lat))
}

fn read_body() -> CreateRequest {
    CreateRequest {
        connection: "demo".parse().expect("a valid connection name"),
        statement: STATEMENT.into(),
        reason: "benchmark".into(),
    }
}

fn check_outcome(outcome: &RequestOutcome) -> Result<(), String> {
    if outcome.request.state != RequestState::Succeeded {
        return Err(format!(
            "request {} ended {} ({:?})",
            outcome.request.id, outcome.request.state, outcome.request.error
        ));
    }
    match outcome.result.as_ref().map(|r| r.row_count) {
        Some(1) => Ok(()),
        other => Err(format!(
            "request {} succeeded with row count {other:?}, expected 1",
            outcome.request.id
        )),
    }
}

/// Sequential auto-approved reads with a waiting create: the latencies, and the process CPU
/// seconds spent during the measured iterations.
async fn through(admin: &Client, iterations: usize) -> anyhow::Result<(Stats, Option<f64>)> {
    let body = read_body();
    for _ in 0..THROUGH_WARMUP {
        check_outcome(&admin.create_request(&body, Duration::from_secs(10)).await?)
            .map_err(anyhow::Error::msg)?;
    }
    let deadline = Instant::now() + THROUGH_BUDGET;
    let mut lat = Vec::with_capacity(iterations);
    let cpu_before = process_cpu_seconds();
    while lat.len() < iterations && Instant::now() < deadline {
        let t = Instant::now();
        let outcome = admin.create_request(&body, Duration::from_secs(10)).await?;
        lat.push(t.elapsed());
        check_outcome(&outcome).map_err(anyhow::Error::msg)?;
    }
    let cpu = cpu_before.zip(process_cpu_seconds()).map(|(a, b)| b - a);
    if lat.len() < iterations {
        println!(
            "   (time budget of {} s reached after {} iterations)",
            THROUGH_BUDGET.as_secs(),
            lat.len()
        );
    }
    Ok((Stats::of(lat), cpu))
}

/// The same sequential run on a fresh stack whose only agent runs a single worker.
async fn through_single_worker() -> anyhow::Result<(Stats, Option<f64>)> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let mut opts = DevOptions::new("127.0.0.1:0".parse()?, dir.path().join("data"));
    opts.start_agent = false;
    let stack = DevStack::start(opts).await?;
    let admin = Client::new(&stack.url, Some(&stack.admin_token))?;
    let created = admin.create_agent("single-worker").await?;
    let mut config = demo_agent_config("single-worker", &stack.url, &stack.server, &stack.demo_db);
    config.max_concurrent_jobs = 1;
    let agent = Agent::new(config, &created.token).await?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(agent.run(stopped));
    let result = through(&admin, THROUGH_ITERATIONS / 2).await;
    stop.send_replace(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    stack.stop().await;
    result
}

fn print_cpu(cpu_seconds: Option<f64>, requests: usize) {
    if let Some(cpu) = cpu_seconds.filter(|_| requests > 0) {
        println!(
            "   process CPU: {:.0} µs per request (server + agent + client, user + system)",
            cpu * 1e6 / requests as f64
        );
    }
}

struct Load {
    ok: u64,
    errors: u64,
    rate: f64,
    latency: Stats,
    error_samples: Vec<String>,
    cpu_cores: Option<f64>,
    cpu_us_per_request: Option<f64>,
}

async fn throughput(url: &str, token: &str) -> anyhow::Result<Load> {
    let start = Instant::now();
    let window_start = start + LOAD_WARMUP;
    let window_end = window_start + LOAD_WINDOW;
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let samples: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut tasks = Vec::with_capacity(LOAD_CLIENTS);
    for _ in 0..LOAD_CLIENTS {
        let client = Client::new(url, Some(token))?;
        let (ok, errors, samples) = (ok.clone(), errors.clone(), samples.clone());
        tasks.push(tokio::spawn(async move {
            let body = read_body();
            let mut lat = Vec::new();
            while Instant::now() < window_end {
                let t = Instant::now();
                let result = client.create_request(&body, Duration::from_secs(10)).await;
                let done = Instant::now();
                let verdict = match &result {
                    Ok(outcome) => check_outcome(outcome),
                    Err(e) => Err(e.to_string()),
                };
                // Count only requests that completed inside the measurement window.
                if done < window_start || done > window_end {
                    if let Err(e) = verdict {
                        errors.fetch_add(1, Ordering::Relaxed);
                        push_sample(&samples, e);
                    }
                    continue;
                }
                match verdict {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        lat.push(done - t);
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        push_sample(&samples, e);
                    }
                }
            }
            lat
        }));
    }
    tokio::time::sleep_until(window_start.into()).await;
    let cpu_before = process_cpu_seconds();
    tokio::time::sleep_until(window_end.into()).await;
    let cpu_after = process_cpu_seconds();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await?);
    }
    let ok = ok.load(Ordering::Relaxed);
    let rate = ok as f64 / LOAD_WINDOW.as_secs_f64();
    let (cpu_cores, cpu_us_per_request) = match (cpu_before, cpu_after) {
        (Some(a), Some(b)) => (
            Some((b - a) / LOAD_WINDOW.as_secs_f64()),
            (ok > 0).then(|| (b - a) * 1e6 / ok as f64),
        ),
        _ => (None, None),
    };
    let error_samples = samples.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(Load {
        ok,
        errors: errors.load(Ordering::Relaxed),
        rate,
        latency: Stats::of(lat),
        error_samples,
        cpu_cores,
        cpu_us_per_request,
    })
}

fn push_sample(samples: &Mutex<Vec<String>>, e: String) {
    let mut s = samples.lock().unwrap_or_else(|e| e.into_inner());
    if s.len() < 10 {
        s.push(e);
    }
}

struct Dispatch {
    from_response: Stats,
    from_send: Stats,
    create: Stats,
    job_first: usize,
}

fn served() -> Vec<ServedConnection> {
    vec![ServedConnection {
        name: "demo".parse().expect("a valid connection name"),
        kind: ConnectionKind::Sqlite,
        environment: Environment::Development,
    }]
}

/// Starts a long-poll claim now; resolves to the job and the instant it arrived.
fn start_claim(
    agent: &Client,
) -> tokio::task::JoinHandle<anyhow::Result<(JobAssignment, Instant)>> {
    let agent = agent.clone();
    tokio::spawn(async move {
        let job = agent
            .claim(&ClaimRequest {
                connections: served(),
                wait_ms: 30_000,
            })
            .await?;
        let arrived = Instant::now();
        let job = job.ok_or_else(|| anyhow::anyhow!("the claim ended without a job"))?;
        Ok((job, arrived))
    })
}

async fn dispatch() -> anyhow::Result<Dispatch> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let mut opts = DevOptions::new("127.0.0.1:0".parse()?, dir.path().join("data"));
    opts.start_agent = false;
    let stack = DevStack::start(opts).await?;
    let admin = Client::new(&stack.url, Some(&stack.admin_token))?;
    let created = admin.create_agent("bench-agent").await?;
    let agent = Client::new(&stack.url, Some(&created.token))?;
    println!(
        "   dev stack at {} without its agent; agent `bench-agent` claims by raw long-poll",
        stack.url
    );

    let mut pending = start_claim(&agent);
    // Once, at the start: wait (bounded) until the server has seen the first long-poll.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !admin
        .list_agents()
        .await?
        .iter()
        .any(|a| a.name == "bench-agent" && a.connected)
    {
        if Instant::now() > deadline {
            bail!("the bench agent never showed as connected");
        }
        tokio::task::yield_now().await;
    }

    let body = read_body();
    let report = JobReport::Succeeded {
        result: Default::default(),
    };
    let budget = Instant::now() + DISPATCH_BUDGET;
    let (mut from_response, mut from_send, mut create) = (Vec::new(), Vec::new(), Vec::new());
    let mut job_first = 0;
    let mut i = 0;
    while i < DISPATCH_WARMUP + DISPATCH_ITERATIONS && Instant::now() < budget {
        let t_send = Instant::now();
        let outcome = admin.create_request(&body, Duration::ZERO).await?;
        let t_response = Instant::now();
        let (job, arrived) = pending.await??;
        if job.request_id != outcome.request.id {
            bail!(
                "claimed job for request {}, expected {}",
                job.request_id,
                outcome.request.id
            );
        }
        // The next long-poll goes out before the report, so it is parked at the server by
        // the time the report (a durable commit) has come back and the next create is sent.
        pending = start_claim(&agent);
        agent.report(job.job_id, &report).await?;
        if i >= DISPATCH_WARMUP {
            if arrived < t_response {
                job_first += 1;
            }
            from_response.push(arrived.saturating_duration_since(t_response));
            from_send.push(arrived - t_send);
            create.push(t_response - t_send);
        }
        i += 1;
    }
    if i < DISPATCH_WARMUP + DISPATCH_ITERATIONS {
        println!(
            "   (time budget of {} s reached after {} iterations)",
            DISPATCH_BUDGET.as_secs(),
            i.saturating_sub(DISPATCH_WARMUP)
        );
    }
    pending.abort();
    stack.stop().await;
    Ok(Dispatch {
        from_response: Stats::of(from_response),
        from_send: Stats::of(from_send),
        create: Stats::of(create),
        job_first,
    })
}

// ---------------------------------------------------------------------------------------
// Statistics and output

/// Latency statistics in microseconds (nearest-rank percentiles).
struct Stats {
    n: usize,
    p50: f64,
    p90: f64,
    p99: f64,
    mean: f64,
    max: f64,
}

impl Stats {
    fn of(mut v: Vec<Duration>) -> Stats {
        v.sort_unstable();
        let n = v.len();
        let at = |p: f64| -> f64 {
            if n == 0 {
                return f64::NAN;
            }
            let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
            v[rank - 1].as_secs_f64() * 1e6
        };
        let mean = if n == 0 {
            f64::NAN
        } else {
            v.iter().map(Duration::as_secs_f64).sum::<f64>() * 1e6 / n as f64
        };
        Stats {
            n,
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            mean,
            max: v.last().map_or(f64::NAN, |d| d.as_secs_f64() * 1e6),
        }
    }

    fn line(&self) -> String {
        format!(
            "p50 {}  p90 {}  p99 {}  mean {}  max {}",
            us(self.p50),
            us(self.p90),
            us(self.p99),
            us(self.mean),
            us(self.max)
        )
    }
}

fn us(v: f64) -> String {
    if v.is_nan() {
        "n/a".into()
    } else if v.abs() >= 10_000.0 {
        format!("{:.1} ms", v / 1_000.0)
    } else {
        format!("{v:.0} µs")
    }
}

enum Goal {
    None,
    AtMost(f64),
    AtLeast(f64),
    Zero,
}

struct Row {
    figure: String,
    measured: String,
    value: f64,
    goal: Goal,
    unit: &'static str,
}

impl Row {
    fn info(figure: &str, measured: String) -> Row {
        Row {
            figure: figure.into(),
            measured,
            value: f64::NAN,
            goal: Goal::None,
            unit: "",
        }
    }
    fn at_most(figure: &str, value_us: f64, goal_us: f64) -> Row {
        Row {
            figure: figure.into(),
            measured: us(value_us),
            value: value_us,
            goal: Goal::AtMost(goal_us),
            unit: "µs",
        }
    }
    fn at_least(figure: &str, value: f64, goal: f64, unit: &'static str) -> Row {
        Row {
            figure: figure.into(),
            measured: format!("{value:.0} {unit}"),
            value,
            goal: Goal::AtLeast(goal),
            unit,
        }
    }
    fn exact_zero(figure: &str, count: u64) -> Row {
        Row {
            figure: figure.into(),
            measured: count.to_string(),
            value: count as f64,
            goal: Goal::Zero,
            unit: "",
        }
    }

    fn goal_text(&self) -> String {
        let v = |g: f64| {
            if self.unit == "µs" {
                us(g)
            } else {
                format!("{g:.0} {}", self.unit)
            }
        };
        match self.goal {
            Goal::None => "-".into(),
            Goal::AtMost(g) => format!("≤ {}", v(g)),
            Goal::AtLeast(g) => format!("≥ {}", v(g)),
            Goal::Zero => "0".into(),
        }
    }

    fn verdict(&self) -> String {
        match self.goal {
            Goal::None => "-".into(),
            Goal::AtMost(g) => format!(
                "{:.2} {}",
                self.value / g,
                if self.value <= g { "PASS" } else { "MISS" }
            ),
            Goal::AtLeast(g) => format!(
                "{:.2} {}",
                self.value / g,
                if self.value >= g { "PASS" } else { "MISS" }
            ),
            Goal::Zero => (if self.value == 0.0 { "PASS" } else { "MISS" }).into(),
        }
    }
}

fn print_summary(rows: &[Row]) {
    let cells: Vec<[String; 4]> = rows
        .iter()
        .map(|r| {
            [
                r.figure.clone(),
                r.measured.clone(),
                r.goal_text(),
                r.verdict(),
            ]
        })
        .collect();
    let header = ["figure", "measured", "goal", "ratio (measured/goal)"].map(String::from);
    let width = |i: usize| {
        cells
            .iter()
            .chain(std::iter::once(&header))
            .map(|c| c[i].chars().count())
            .max()
            .unwrap_or(0)
    };
    let widths = [width(0), width(1), width(2), width(3)];
    let line = |c: &[String; 4]| {
        let pad = |s: &str, w: usize| format!("{s}{}", " ".repeat(w - s.chars().count()));
        format!(
            "| {} | {} | {} | {} |",
            pad(&c[0], widths[0]),
            pad(&c[1], widths[1]),
            pad(&c[2], widths[2]),
            pad(&c[3], widths[3])
        )
    };
    println!("{}", line(&header));
    println!(
        "|{}|{}|{}|{}|",
        "-".repeat(widths[0] + 2),
        "-".repeat(widths[1] + 2),
        "-".repeat(widths[2] + 2),
        "-".repeat(widths[3] + 2)
    );
    for c in &cells {
        println!("{}", line(c));
    }
}

fn section(title: &str) {
    println!();
    println!("== {title}");
}

// ---------------------------------------------------------------------------------------
// Machine

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn print_machine(scratch: &Path) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    println!("== portcullis core-path benchmark");
    println!(
        "   machine: {} logical CPUs (nproc), {cpu}, Linux {kernel}",
        cores()
    );
    println!(
        "   commit:  {commit}{}",
        if dirty {
            " (working tree has uncommitted changes)"
        } else {
            ""
        }
    );
    println!(
        "   temp dir: {} on {}",
        scratch.display(),
        filesystem_of(scratch)
    );
    println!(
        "   everything runs in this one process on a {}-worker tokio runtime: load generator, server and agent share the CPUs",
        cores()
    );
}

/// The mount (device and type) holding `path`, from /proc/mounts: the longest matching prefix.
fn filesystem_of(path: &Path) -> String {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return "unknown".into();
    };
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?, f.next()?, f.next()?))
        })
        .filter(|(_, mount, _)| path.starts_with(mount))
        .max_by_key(|(_, mount, _)| mount.len())
        .map_or_else(
            || "unknown".into(),
            |(dev, mount, fs)| format!("{fs} ({dev} at {mount})"),
        )
}

/// User + system CPU seconds of this process so far.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// Clock ticks per second for /proc times (asked once, before any measurement).
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}
