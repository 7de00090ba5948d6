//! The bounded load and soak run (`bench/soak`).
//!
//! Starts the release `portcullis server` and `portcullis agent` as separate processes on
//! 127.0.0.1, set up as an operator would (`stack.rs`), against the real PostgreSQL (a schema
//! of the run's own, dropped at the end), and drives mixed traffic at once for a fixed
//! duration (`SOAK_SECONDS`, default 180; `traffic.rs`): auto-approved reads, writes that
//! wait for a second person's approval and then execute, wrong passwords against one account
//! (lockout), and a client over its rate limit. Then it checks, each as PASS or FAIL:
//!
//! 1. no answer outside what each kind of traffic may get (429, 403, login failures where
//!    they are the point), counted per status and kind;
//! 2. the client over its limit was refused with the WEB-4 answer, the wrong passwords got
//!    the one login-failure answer and locked the account;
//! 3. resident memory of server and agent, sampled every second, ends within a stated
//!    allowance of its level after the warm-up (which lasts one result-retention window);
//! 4. `portcullis audit verify --data` passes while the server runs and after it stopped;
//! 5. the audit log holds exactly the events the counted actions must have caused, per
//!    action and per request;
//! 6. the writes changed PostgreSQL exactly as often as they were reported executed, every
//!    job was settled, and the logs hold no ERROR line.
//!
//! Exits non-zero when any check fails. All state lives in a temporary directory that is
//! removed at the end.

mod report;
#[path = "../shared/mod.rs"]
mod shared;
mod stack;
mod tally;
mod traffic;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use uuid::Uuid;

use report::{Check, Memory, check, percentile, table, us, verdict};
use stack::{Pg, Stack};
use tally::Tally;

const DEFAULT_SECONDS: u64 = 180;
/// The server's default result retention and one pruning pass more: memory is judged after it.
const RETENTION_WINDOW: Duration = Duration::from_secs(65);
/// How long the agent gets to finish the context jobs of the last writes.
const SETTLE_DEADLINE: Duration = Duration::from_secs(60);

/// The release `portcullis` binary cargo built beside this benchmark (target/release).
fn release_binary() -> anyhow::Result<&'static Path> {
    let bin = Path::new(env!("CARGO_BIN_EXE_portcullis"));
    if !bin.is_file() {
        bail!(
            "{} is missing: run the soak with bench/soak, which builds it",
            bin.display()
        );
    }
    Ok(bin)
}

/// `SOAK_SECONDS`: seconds, or a number with `s`, `m` or `h`.
fn duration() -> anyhow::Result<Duration> {
    let Ok(text) = std::env::var("SOAK_SECONDS") else {
        return Ok(Duration::from_secs(DEFAULT_SECONDS));
    };
    let text = text.trim();
    let (number, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .with_context(|| format!("SOAK_SECONDS={text:?} is not a duration"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3_600,
        _ => bail!("SOAK_SECONDS={text:?}: use seconds, or a number with s, m or h"),
    };
    if secs < 10 {
        bail!("SOAK_SECONDS={text:?}: at least 10 seconds");
    }
    Ok(Duration::from_secs(secs))
}

fn main() -> ExitCode {
    // `cargo bench` passes `--bench` (and any filter); this binary takes no arguments.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("soak: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("soak: the run could not complete: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> anyhow::Result<bool> {
    let started = Instant::now();
    let duration = duration()?;
    // The server keeps each finished outcome in memory for `result_retention_secs` (60 s by
    // default), so its memory grows until one such window has passed and is flat after;
    // the baseline is taken once the window is full (when the run is long enough).
    let warmup = (duration / 6)
        .clamp(Duration::from_secs(5), Duration::from_secs(30))
        .max(RETENTION_WINDOW.min(duration / 2));
    let bin = release_binary()?;
    println!(
        "== portcullis soak: mixed traffic for {} s",
        duration.as_secs()
    );
    print_machine();
    println!("   release binary: {}", bin.display());
    let pg = Pg::create().await?;
    println!(
        "   PostgreSQL: {} (schema {}, dropped at the end)",
        shared::redact(&pg.url),
        pg.schema
    );
    let outcome = soak(bin, &pg, duration, warmup).await;
    let dropped = pg.drop_schema().await;
    let passed = outcome?;
    dropped.context("dropping the soak schema")?;
    println!(
        "\n== whole run {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        if passed {
            "every check passed"
        } else {
            "SOME CHECKS FAILED"
        }
    );
    Ok(passed)
}

fn print_machine() {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_owned())
        .unwrap_or_default();
    println!("   machine: {cpus} logical CPUs, {model}, Linux {kernel}");
    println!(
        "   load generator, server, agent and PostgreSQL share these CPUs; everything on 127.0.0.1"
    );
}

async fn soak(bin: &Path, pg: &Pg, duration: Duration, warmup: Duration) -> anyhow::Result<bool> {
    let mut stack = Stack::start(bin, pg).await?;
    println!(
        "   server {} (pid {}), agent pid {}, state in {} (removed at the end)",
        stack.url,
        stack.server.pid(),
        stack.agent.pid(),
        stack.dir.path().display()
    );
    println!(
        "   set up through the CLI in {:.1} s: keygen, bootstrap, login with TOTP, 3 users, agent, key pin, {} API tokens; 3 enrolments",
        stack.setup_time.as_secs_f64(),
        stack::READER_TOKENS + 1
    );
    let idle = (
        shared::status_mib(stack.server.pid(), "VmRSS:").unwrap_or(f64::NAN),
        shared::status_mib(stack.agent.pid(), "VmRSS:").unwrap_or(f64::NAN),
    );
    println!(
        "   idle RSS before the traffic: server {:.1} MiB, agent {:.1} MiB",
        idle.0, idle.1
    );
    println!(
        "   config: rate limit {} requests per {} s per principal (default 6000 per 60 s: the same rate), everything else default",
        stack::RATE_LIMIT,
        stack::RATE_WINDOW_SECS
    );
    println!(
        "\n== traffic: {} s (warm-up {} s) ...",
        duration.as_secs(),
        warmup.as_secs()
    );
    let outcome = match traffic::run(&stack, &pg.schema, duration).await {
        Ok(o) => o,
        Err(e) => {
            print_logs(&stack);
            return Err(e);
        }
    };
    let server_alive = stack.server.check_alive();
    let agent_alive = stack.agent.check_alive();
    let hwm = (
        shared::status_mib(stack.server.pid(), "VmHWM:").unwrap_or(f64::NAN),
        shared::status_mib(stack.agent.pid(), "VmHWM:").unwrap_or(f64::NAN),
    );
    let settle_started = Instant::now();
    let open_jobs = traffic::settle_jobs(&stack.data, SETTLE_DEADLINE).await?;
    let settled_in = settle_started.elapsed();

    // The chain checked while the server runs, then after a graceful stop.
    let live_verify = stack.audit_verify().await;
    let agent_stop = stack.agent.stop(Duration::from_secs(20)).await;
    let server_stop = stack.server.stop(Duration::from_secs(30)).await;
    let stopped_verify = stack.audit_verify().await;
    let events = stack.audit_export().await?;
    let written = pg.written().await?;
    let logs = [
        ("server", log_levels(stack.server.log())),
        ("agent", log_levels(stack.agent.log())),
    ];

    let mut checks: Vec<Check> = Vec::new();
    let tally = &outcome.tally;
    let secs = outcome.elapsed.as_secs_f64();

    // 1. Statuses.
    println!("\n== calls per kind ({secs:.1} s of traffic)");
    let mut rows = Vec::new();
    let mut unexpected_total = 0;
    let mut notes = Vec::new();
    let mut kinds: Vec<(&&str, &tally::Calls)> = tally.calls.iter().collect();
    kinds.sort_by_key(|(k, _)| kind_order(k));
    for (kind, calls) in &kinds {
        let mut lat = calls.latencies_us.clone();
        let statuses = calls
            .statuses
            .iter()
            .map(|(s, n)| {
                if *s == 0 {
                    format!("no answer: {n}")
                } else {
                    format!("{s}: {n}")
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        let allowed = traffic::allowed(kind)
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join("/");
        rows.push(vec![
            (**kind).to_owned(),
            calls.total().to_string(),
            format!("{:.1}", calls.total() as f64 / secs),
            us(percentile(&mut lat, 50.0)),
            us(percentile(&mut lat, 99.0)),
            statuses,
            allowed,
            calls.unexpected.to_string(),
        ]);
        unexpected_total += calls.unexpected;
        for n in &calls.notes {
            notes.push(format!("{kind}: {n}"));
        }
    }
    table(
        &[
            "kind",
            "calls",
            "per s",
            "p50",
            "p99",
            "statuses",
            "allowed",
            "unexpected",
        ],
        &rows,
    );
    println!(
        "   ({} writes created; \"{}\" is the whole path of a write, approval included; readers paused {} times on a low X-RateLimit-Remaining)",
        tally.writes.len(),
        traffic::WRITE_E2E,
        tally.reader_pauses
    );
    for n in notes.iter().take(12) {
        println!("   ! {n}");
    }
    let total_calls: u64 = tally.calls.values().map(tally::Calls::total).sum();
    checks.push(check(
        unexpected_total == 0,
        "no answer other than the expected 429 / 403 / login failures",
        format!("{total_calls} calls, {unexpected_total} unexpected"),
    ));
    checks.push(check(
        server_alive.is_ok() && agent_alive.is_ok(),
        "server and agent ran throughout",
        match (&server_alive, &agent_alive) {
            (Ok(()), Ok(())) => "both alive at the end of the traffic".to_owned(),
            (Err(e), _) | (_, Err(e)) => format!("{e:#}"),
        },
    ));

    // 2. The refusals that are the point.
    let over = tally.calls.get(traffic::OVER_LIMIT);
    let refused = over
        .and_then(|c| c.statuses.get(&429))
        .copied()
        .unwrap_or(0);
    let admitted = over
        .and_then(|c| c.statuses.get(&200))
        .copied()
        .unwrap_or(0);
    checks.push(check(
        refused > 0 && over.is_some_and(|c| c.unexpected == 0),
        "the client over its rate limit got 429 with Retry-After and X-RateLimit-*",
        format!(
            "{refused} refused, {admitted} admitted ({:.1}/s admitted, limit {:.1}/s)",
            admitted as f64 / secs,
            f64::from(stack::RATE_LIMIT) / stack::RATE_WINDOW_SECS as f64
        ),
    ));
    let l = tally.lockout;
    let threshold =
        u64::from(portcullis_server::config::LoginSettings::default().lockout_threshold);
    let bad = tally.calls.get(traffic::BAD_LOGIN);
    checks.push(check(
        bad.is_some_and(|c| c.unexpected == 0)
            && l.ambiguous == 0
            && (l.attempts < threshold || l.locks > 0),
        "wrong passwords: one login-failure answer (401), the account locks with backoff",
        format!(
            "{} attempts from {} addresses: {} counted failures, {} locks, {} answered while locked, {} rate limited, {} unplaced",
            l.attempts, l.addresses, l.counted, l.locks, l.while_locked, l.rate_limited, l.ambiguous
        ),
    ));

    // 3. Memory.
    println!("\n== resident memory (VmRSS, sampled every second)");
    let warmup_s = warmup.as_secs_f64();
    let half_s = secs / 2.0;
    let memories = [
        (
            "server",
            Memory::of(&outcome.samples, warmup_s, half_s, |s| s.server_mib),
            idle.0,
            hwm.0,
        ),
        (
            "agent",
            Memory::of(&outcome.samples, warmup_s, half_s, |s| s.agent_mib),
            idle.1,
            hwm.1,
        ),
    ];
    let mut rows = Vec::new();
    for (name, m, idle, hwm) in &memories {
        match m {
            Some(m) => {
                rows.push(vec![
                    (*name).to_owned(),
                    format!("{idle:.1}"),
                    format!("{:.1}", m.start),
                    format!("{:.1}", m.peak),
                    format!("{:.1}", m.end),
                    format!("{:+.1}", m.end - m.start),
                    m.slope_per_min.map_or("-".into(), |s| format!("{s:+.2}")),
                    format!("{hwm:.1}"),
                ]);
                checks.push(check(
                    m.flat(),
                    format!("{name} memory flat"),
                    format!(
                        "start {:.1} → end {:.1} MiB ({:+.1} MiB; allowed +{:.1} MiB = max({:.0} MiB, {:.0} % of start)); peak {:.1} MiB; slope over the second half {} MiB/min",
                        m.start,
                        m.end,
                        m.end - m.start,
                        m.allowance,
                        report::RSS_ALLOWANCE_MIB,
                        report::RSS_ALLOWANCE_SHARE * 100.0,
                        m.peak,
                        m.slope_per_min.map_or("-".into(), |s| format!("{s:+.2}"))
                    ),
                ));
            }
            None => checks.push(check(
                false,
                format!("{name} memory flat"),
                "too few samples after the warm-up",
            )),
        }
    }
    table(
        &[
            "process",
            "idle MiB",
            "start MiB (after warm-up)",
            "peak MiB",
            "end MiB",
            "end - start",
            "slope, 2nd half (MiB/min)",
            "VmHWM MiB",
        ],
        &rows,
    );
    println!(
        "   start = mean of the 5 samples after the {} s warm-up; end = mean of the last 5; {} samples",
        warmup.as_secs(),
        outcome.samples.len()
    );

    // 4. The chain.
    println!("\n== audit");
    for (when, v) in [
        ("while the server runs", &live_verify),
        ("after the server stopped", &stopped_verify),
    ] {
        checks.push(match v {
            Ok((view, took)) => check(
                view.ok,
                format!("portcullis audit verify --data, {when}"),
                format!(
                    "{} events, head at {}, {} ({:.2} s){}",
                    view.events,
                    view.head_seq,
                    if view.ok { "intact" } else { "BROKEN" },
                    took.as_secs_f64(),
                    view.problem
                        .as_ref()
                        .map(|p| format!(": {p}"))
                        .unwrap_or_default()
                ),
            ),
            Err(e) => check(
                false,
                format!("portcullis audit verify --data, {when}"),
                format!("{e:#}"),
            ),
        });
    }
    checks.push(check(
        agent_stop.is_ok() && server_stop.is_ok(),
        "agent and server stop on SIGTERM",
        format!(
            "agent {}, server {}",
            agent_stop
                .as_ref()
                .map_or_else(|e| format!("{e:#}"), Clone::clone),
            server_stop
                .as_ref()
                .map_or_else(|e| format!("{e:#}"), Clone::clone)
        ),
    ));

    // 5. Counts.
    let compared = compare(&events, tally, &stack.setup_events);
    let mut rows = Vec::new();
    for (action, (expected, actual)) in &compared.totals {
        rows.push(vec![
            (*action).to_owned(),
            expected.to_string(),
            actual.to_string(),
            if expected == actual { "=" } else { "MISMATCH" }.to_owned(),
        ]);
    }
    table(
        &["action", "expected (client counts)", "audit log", ""],
        &rows,
    );
    let mismatched_actions = compared.totals.values().filter(|(e, a)| e != a).count();
    println!(
        "   {} events exported; {} requests checked one by one, {} differ; {} requeued hand-offs",
        events.len(),
        compared.requests_checked,
        compared.request_mismatches.len(),
        compared.requeued
    );
    for m in compared.request_mismatches.iter().take(8) {
        println!("   ! {m}");
    }
    checks.push(check(
        mismatched_actions == 0,
        "audit events match the counted actions, per action",
        format!(
            "{} actions, {} differ; {} events",
            compared.totals.len(),
            mismatched_actions,
            events.len()
        ),
    ));
    checks.push(check(
        compared.request_mismatches.is_empty(),
        "audit events match, request by request",
        format!(
            "{} requests, {} differ",
            compared.requests_checked,
            compared.request_mismatches.len()
        ),
    ));

    // 6. The data and the leftovers.
    let (added, notes) = written;
    checks.push(check(
        added == tally.updates_done && notes == tally.inserts_done,
        "each executed write changed PostgreSQL once",
        format!(
            "UPDATEs reported {} / balance added {added}; INSERTs reported {} / rows {notes}",
            tally.updates_done, tally.inserts_done
        ),
    ));
    checks.push(check(
        open_jobs == 0,
        "every job settled after the traffic",
        format!(
            "{open_jobs} queued or leased after {:.1} s",
            settled_in.as_secs_f64()
        ),
    ));
    let errors: usize = logs.iter().map(|(_, l)| l.errors.len()).sum();
    checks.push(check(
        errors == 0,
        "no ERROR line in the server and agent logs (alerts apart)",
        logs.iter()
            .map(|(name, l)| {
                format!(
                    "{name}: {} ERROR, {} WARN, {} alerts",
                    l.errors.len(),
                    l.warnings,
                    l.alerts.values().sum::<u64>()
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
    ));
    let alerts = logs[0]
        .1
        .alerts
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    println!("   alerts in the server log (AUD-5): {alerts}");
    for (name, l) in &logs {
        for e in l.errors.iter().take(3) {
            println!("   ! {name} log: {e}");
        }
    }

    println!("\n== checks");
    for c in &checks {
        println!("{}  {}: {}", verdict(c.pass), c.what, c.figures);
    }
    let passed = checks.iter().all(|c| c.pass);
    if !passed {
        print_logs(&stack);
    }
    Ok(passed)
}

fn kind_order(kind: &str) -> usize {
    [
        traffic::READ,
        traffic::WRITE_CREATE,
        traffic::WRITE_SELF_APPROVE,
        traffic::APPROVAL_VIEW,
        traffic::APPROVAL,
        traffic::WRITE_WAIT,
        traffic::WRITE_E2E,
        traffic::LOGIN,
        traffic::STEP_UP,
        traffic::BAD_LOGIN,
        traffic::OVER_LIMIT,
    ]
    .iter()
    .position(|k| *k == kind)
    .unwrap_or(usize::MAX)
}

struct Compared {
    /// By action: (expected, in the audit log).
    totals: BTreeMap<String, (u64, u64)>,
    requests_checked: usize,
    request_mismatches: Vec<String>,
    requeued: u64,
}

/// Compares the exported events with the client's counts: totals per action, and the
/// actions of each request. A hand-off returned to the queue (`request.requeued`) is
/// dispatched again, so each requeue adds one `request.dispatched` to its request.
fn compare(events: &[serde_json::Value], tally: &Tally, setup: &[(&str, u64)]) -> Compared {
    let mut actual: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_request: BTreeMap<Uuid, Vec<String>> = BTreeMap::new();
    for e in events {
        let action = e["action"].as_str().unwrap_or("(none)").to_owned();
        *actual.entry(action.clone()).or_default() += 1;
        if let Some(id) = e["target"]
            .as_str()
            .and_then(|t| t.strip_prefix("request:"))
            .and_then(|t| Uuid::parse_str(t).ok())
        {
            by_request.entry(id).or_default().push(action);
        }
    }
    let requeued = actual.get("request.requeued").copied().unwrap_or(0);
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for (a, n) in setup {
        *expected.entry((*a).to_owned()).or_default() += n;
    }
    for (a, n) in tally.expected() {
        *expected.entry(a.to_owned()).or_default() += n;
    }
    if requeued > 0 {
        *expected.entry("request.requeued".into()).or_default() += requeued;
        *expected.entry("request.dispatched".into()).or_default() += requeued;
    }
    let mut totals: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (a, n) in &expected {
        totals.entry(a.clone()).or_default().0 = *n;
    }
    for (a, n) in &actual {
        totals.entry(a.clone()).or_default().1 = *n;
    }

    let mut mismatches = Vec::new();
    for (id, want) in &tally.requests {
        let mut got = by_request.remove(id).unwrap_or_default();
        let again = got.iter().filter(|a| *a == "request.requeued").count();
        let mut want: Vec<String> = want.iter().map(|a| (*a).to_owned()).collect();
        for _ in 0..again {
            want.push("request.requeued".into());
            want.push("request.dispatched".into());
        }
        got.sort();
        want.sort();
        if got != want {
            mismatches.push(format!(
                "request {id}: expected {want:?}, the log has {got:?}"
            ));
        }
    }
    for (id, got) in by_request {
        mismatches.push(format!(
            "request {id} in the log was not counted by the client: {got:?}"
        ));
    }
    Compared {
        totals,
        requests_checked: tally.requests.len(),
        request_mismatches: mismatches,
        requeued,
    }
}

struct LogLevels {
    errors: Vec<String>,
    warnings: usize,
    /// AUD-5 alert lines (logged at WARN or ERROR by severity), by kind.
    alerts: BTreeMap<String, u64>,
}

/// ERROR lines, the number of WARN lines, and the alerts of a JSON log. An alert is logged
/// at its severity's level (a lockout is critical: ERROR); those are counted apart.
fn log_levels(path: &Path) -> LogLevels {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut levels = LogLevels {
        errors: Vec::new(),
        warnings: 0,
        alerts: BTreeMap::new(),
    };
    for line in text.lines() {
        if line.contains("\"alert\":true") {
            let kind = serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v["fields"]["kind"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "(unknown)".into());
            *levels.alerts.entry(kind).or_default() += 1;
        } else if line.contains("\"level\":\"ERROR\"") || line.contains(" ERROR ") {
            levels.errors.push(line.chars().take(300).collect());
        } else if line.contains("\"level\":\"WARN\"") || line.contains(" WARN ") {
            levels.warnings += 1;
        }
    }
    levels
}

fn print_logs(stack: &Stack) {
    for (name, log) in [("server", stack.server.log()), ("agent", stack.agent.log())] {
        eprintln!(
            "--- the end of the {name} log:\n{}",
            shared::log_tail(log, 15)
        );
    }
}
