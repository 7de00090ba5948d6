//! The measured scenarios: direct driver, through Portcullis, throughput, dispatch.

use super::*;

pub(crate) async fn commit_probe(path: &Path) -> anyhow::Result<Stats> {
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

/// One durable commit the way the server's audit writer thread makes it: rusqlite on a thread
/// of its own (no hand-off per statement), WAL with `synchronous = FULL`, a transaction of two
/// rows in two tables (one of them with two indexes), and a WAL that is overwritten in place,
/// as the server's is once its checkpoints have let it restart. [`commit_probe`] pays sqlx's
/// hand-offs and grows its WAL, so it overstates what the server's commit costs; both are
/// printed.
pub(crate) async fn writer_commit_probe(path: &Path) -> anyhow::Result<Stats> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || -> anyhow::Result<Stats> {
        let conn = rusqlite::Connection::open(&path)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
             PRAGMA wal_autocheckpoint = 0; \
             CREATE TABLE probe (id TEXT PRIMARY KEY, state TEXT NOT NULL, at INTEGER NOT NULL); \
             CREATE INDEX probe_by_state ON probe(state, at); \
             CREATE TABLE probe_events (seq INTEGER PRIMARY KEY, details TEXT NOT NULL);",
        )?;
        let commit = |i: usize| -> rusqlite::Result<()> {
            conn.execute_batch("BEGIN IMMEDIATE")?;
            conn.prepare_cached("INSERT INTO probe (id, state, at) VALUES (?1, 'queued', ?2)")?
                .execute((format!("{i:016}"), i as i64))?;
            conn.prepare_cached("INSERT INTO probe_events (details) VALUES (?1)")?
                .execute([format!(
                    "{{\"event\":{i},\"padding\":\"{}\"}}",
                    "x".repeat(300)
                )])?;
            conn.execute_batch("COMMIT")
        };
        // Grow the WAL, copy it into the database, and let the next commit restart it from
        // its start: the measured commits overwrite it in place.
        for i in 0..WRITER_PROBE_WARMUP {
            commit(i)?;
        }
        conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()))?;
        let mut lat = Vec::with_capacity(FSYNC_ITERATIONS);
        for i in 0..FSYNC_ITERATIONS {
            let t = Instant::now();
            commit(WRITER_PROBE_WARMUP + i)?;
            lat.push(t.elapsed());
        }
        Ok(Stats::of(lat))
    })
    .await?
}

pub(crate) async fn direct_sqlite(db: &Path) -> anyhow::Result<Stats> {
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(SqliteConnectOptions::new().filename(db).read_only(true))
        .await?;
    pub(crate) async fn once(pool: &SqlitePool) -> anyhow::Result<()> {
        let rows: Vec<(i64, String, String)> =
            sqlx::query_as(SQLITE_STATEMENT).fetch_all(pool).await?;
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

pub(crate) async fn http_floor(client: &Client) -> anyhow::Result<Stats> {
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

/// The demo SQLite read (context figures).
pub(crate) fn sqlite_body() -> CreateRequest {
    CreateRequest {
        connection: "demo".parse().expect("a valid connection name"),
        statement: SQLITE_STATEMENT.into(),
        reason: "benchmark".into(),
        stream: false,
    }
}

pub(crate) fn check_outcome(outcome: &RequestOutcome) -> Result<(), String> {
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

/// What the measured iterations of [`through`] cost besides their time: the process's CPU
/// seconds, and the scheduler's counts before and after.
pub(crate) struct Cost {
    pub(crate) cpu: Option<f64>,
    pub(crate) sched: Option<(SchedCounts, SchedCounts)>,
}

/// Sequential auto-approved reads with a waiting create: the latencies, and what the measured
/// iterations cost.
pub(crate) async fn through(
    admin: &Client,
    body: &CreateRequest,
    iterations: usize,
) -> anyhow::Result<(Stats, Cost)> {
    for _ in 0..THROUGH_WARMUP {
        check_outcome(&admin.create_request(body, Duration::from_secs(10)).await?)
            .map_err(anyhow::Error::msg)?;
    }
    let deadline = Instant::now() + THROUGH_BUDGET;
    let mut lat = Vec::with_capacity(iterations);
    let sched_before = SchedCounts::now();
    let cpu_before = process_cpu_seconds();
    while lat.len() < iterations && Instant::now() < deadline {
        let t = Instant::now();
        let outcome = admin.create_request(body, Duration::from_secs(10)).await?;
        lat.push(t.elapsed());
        check_outcome(&outcome).map_err(anyhow::Error::msg)?;
    }
    let cpu = cpu_before.zip(process_cpu_seconds()).map(|(a, b)| b - a);
    let sched = sched_before.zip(SchedCounts::now());
    if lat.len() < iterations {
        println!(
            "   (time budget of {} s reached after {} iterations)",
            THROUGH_BUDGET.as_secs(),
            lat.len()
        );
    }
    Ok((Stats::of(lat), Cost { cpu, sched }))
}

pub(crate) fn print_cost(cost: &Cost, requests: usize) {
    if requests == 0 {
        return;
    }
    if let Some(cpu) = cost.cpu {
        println!(
            "   process CPU: {:.0} µs per request (server + agent + client, user + system)",
            cpu * 1e6 / requests as f64
        );
    }
    if let Some((before, after)) = &cost.sched {
        println!("   per request: {}", before.line(after, requests));
    }
}

pub(crate) struct Load {
    pub(crate) ok: u64,
    pub(crate) errors: u64,
    pub(crate) rate: f64,
    pub(crate) latency: Stats,
    pub(crate) error_samples: Vec<String>,
    pub(crate) cpu_cores: Option<f64>,
    pub(crate) cpu_us_per_request: Option<f64>,
    /// The whole machine in the window: the share of its CPUs busy, the cores the PostgreSQL
    /// processes kept busy, and the CPU per request of everything together.
    pub(crate) machine: Option<MachineLoad>,
    /// State-store commits in the window, and per completed request.
    pub(crate) commits: u64,
    pub(crate) commits_per_request: f64,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct MachineLoad {
    pub(crate) busy_share: f64,
    pub(crate) postgres_cores: f64,
    pub(crate) cpu_us_per_request: f64,
}

/// `LOAD_CLIENTS` tasks, each with its own `Client`, looping the waiting create of `body`;
/// requests completing inside `window` (after `LOAD_WARMUP`) are counted.
pub(crate) async fn throughput(
    url: &str,
    token: &str,
    body: &CreateRequest,
    window: Duration,
    commits: impl Fn() -> u64,
) -> anyhow::Result<Load> {
    let start = Instant::now();
    let window_start = start + LOAD_WARMUP;
    let window_end = window_start + window;
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let samples: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut tasks = Vec::with_capacity(LOAD_CLIENTS);
    for _ in 0..LOAD_CLIENTS {
        let client = Client::new(url, Some(token))?;
        let (ok, errors, samples) = (ok.clone(), errors.clone(), samples.clone());
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
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
    let machine_before = machine_cpu_seconds();
    let commits_before = commits();
    tokio::time::sleep_until(window_end.into()).await;
    let cpu_after = process_cpu_seconds();
    let machine_after = machine_cpu_seconds();
    let commits = commits().saturating_sub(commits_before);
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await?);
    }
    let ok = ok.load(Ordering::Relaxed);
    let rate = ok as f64 / window.as_secs_f64();
    let (cpu_cores, cpu_us_per_request) = match (cpu_before, cpu_after) {
        (Some(a), Some(b)) => (
            Some((b - a) / window.as_secs_f64()),
            (ok > 0).then(|| (b - a) * 1e6 / ok as f64),
        ),
        _ => (None, None),
    };
    let machine = match (machine_before, machine_after) {
        (Some(a), Some(b)) if b.total > a.total && ok > 0 => Some(MachineLoad {
            busy_share: (b.busy - a.busy) / (b.total - a.total),
            postgres_cores: (b.postgres - a.postgres) / window.as_secs_f64(),
            cpu_us_per_request: (b.busy - a.busy) * 1e6 / ok as f64,
        }),
        _ => None,
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
        machine,
        commits,
        commits_per_request: commits as f64 / ok.max(1) as f64,
    })
}

pub(crate) fn push_sample(samples: &Mutex<Vec<String>>, e: String) {
    let mut s = samples.lock().unwrap_or_else(|e| e.into_inner());
    if s.len() < 10 {
        s.push(e);
    }
}

pub(crate) struct Dispatch {
    /// The approval's commit (its `request.approved` event published) → job arrived.
    pub(crate) from_commit: Stats,
    /// Jobs that arrived before the approval's event was seen (counted as 0 in `from_commit`).
    pub(crate) commit_late: usize,
    pub(crate) from_response: Stats,
    pub(crate) from_send: Stats,
    pub(crate) create: Stats,
    pub(crate) job_first: usize,
}

/// What the raw claims of the dispatch figure say they serve: the PostgreSQL connection.
pub(crate) fn served() -> Vec<ServedConnection> {
    vec![ServedConnection {
        name: pg::PG_CONNECTION.parse().expect("a valid connection name"),
        kind: ConnectionKind::Postgres,
        environment: Environment::Development,
    }]
}

/// Starts a long-poll claim now; resolves to the job and the instant it arrived.
pub(crate) fn start_claim(
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

/// The dispatch figure: a stack without an agent of its own (the PostgreSQL connection is
/// declared to the server only), `bench-agent` claiming by raw long-poll.
pub(crate) async fn dispatch(pg: &PgTarget) -> anyhow::Result<Dispatch> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let mut opts = stack_options(dir.path(), pg)?;
    opts.start_agent = false;
    let stack = DevStack::start(opts).await?;
    let admin = Client::new(&stack.url, Some(&stack.admin_token))?;
    let created = admin.create_agent("bench-agent").await?;
    let agent = Client::new(&stack.url, Some(&created.token))?;
    println!(
        "   dev stack at {} without its agent; agent `bench-agent` claims by raw long-poll",
        stack.url
    );

    // The approval's commit, as seen in process: the server publishes each committed event to
    // its live subscribers right after the COMMIT (before the committing request goes on), so
    // the instant this task receives `request.approved` is the commit plus one task wake-up.
    let approved: Arc<Mutex<std::collections::HashMap<String, Instant>>> = Arc::default();
    let mut live = stack.server.state.audit.live();
    let watcher = {
        let approved = approved.clone();
        tokio::spawn(async move {
            loop {
                match live.recv().await {
                    Ok(event) if event.action == "request.approved" => {
                        let at = Instant::now();
                        approved
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(event.target.clone(), at);
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        })
    };

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

    let body = pg.body();
    let report = JobReport::Succeeded {
        result: Default::default(),
    };
    let budget = Instant::now() + DISPATCH_BUDGET;
    let (mut from_response, mut from_send, mut create) = (Vec::new(), Vec::new(), Vec::new());
    let (mut from_commit, mut commit_late) = (Vec::new(), 0);
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
        let target = format!("request:{}", outcome.request.id);
        let seen = Instant::now() + Duration::from_secs(5);
        let committed = loop {
            let at = approved
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&target);
            match at {
                Some(at) => break at,
                None if Instant::now() > seen => {
                    bail!(
                        "no request.approved event for request {}",
                        outcome.request.id
                    )
                }
                None => tokio::task::yield_now().await,
            }
        };
        if i >= DISPATCH_WARMUP {
            if arrived < committed {
                commit_late += 1;
            }
            from_commit.push(arrived.saturating_duration_since(committed));
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
    watcher.abort();
    stack.stop().await;
    Ok(Dispatch {
        from_commit: Stats::of(from_commit),
        commit_late,
        from_response: Stats::of(from_response),
        from_send: Stats::of(from_send),
        create: Stats::of(create),
        job_first,
    })
}
