//! Times the agent's MariaDB/MySQL executor, run by `bench/mysql-read`: sequential jobs on
//! one target (the default pool of 4 connections per credential) against the real server on
//! 127.0.0.1:3306 (override with `PORTCULLIS_BENCH_MYSQL_URL`, a URL whose user may create and
//! drop a database), each job as the agent runs it — session setup, transaction, the
//! statement, the result collected — without the gate and the server. Four sequences:
//! reads of one statement, reads of a new statement each time (as ad-hoc SQL with literals
//! is), writes back to back, and writes [`WRITE_GAP`] apart (as separate requests come, each
//! after its approval). Prints p50, p90, p99 and the slowest of each, and the direct driver's
//! read for reference. Then reads of one statement [`AT_ONCE`] at a time, more than the pool
//! has connections, so a connection's whole turn (its setup, the read, its way back to the
//! pool) sets the rate: jobs/s with the same percentiles. `MYSQL_BENCH_JOBS` (default 2,000)
//! jobs each after 200 warm-up jobs, four times as many for the concurrent reads.
//! Makes its own database and drops it at the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use portcullis_agent::config::{Credential, SecretUrl, TargetConfig};
use portcullis_agent::exec::{Limits, MySqlTarget};
use portcullis_core::{ConnectionKind, Environment, OperationClass};
use sqlx::{Connection, MySqlConnection};

const DEFAULT_URL: &str = "mysql://root@127.0.0.1:3306";
const WARM_UP: usize = 200;
/// How many reads run at once in the concurrent sequence: twice the pool's 4 connections.
const AT_ONCE: usize = 8;
/// The pause before each job of the spaced writes (not timed).
const WRITE_GAP: Duration = Duration::from_millis(5);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        // `cargo test --benches` runs benches without `--bench`: nothing to prove there.
        return Ok(());
    }
    let server = std::env::var("PORTCULLIS_BENCH_MYSQL_URL").unwrap_or(DEFAULT_URL.to_owned());
    let n: usize = match std::env::var("MYSQL_BENCH_JOBS") {
        Ok(v) => v.parse()?,
        Err(_) => 2_000,
    };
    let database = format!("portcullis_bench_{}", std::process::id());
    let mut admin = MySqlConnection::connect(&server).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE {database}; \
         CREATE TABLE {database}.items (id int PRIMARY KEY, name text, n int) ENGINE=InnoDB; \
         INSERT INTO {database}.items VALUES (1, 'one', 0), (2, 'two', 0)"
    )))
    .execute(&mut admin)
    .await?;
    let url = format!("{server}/{database}");
    let outcome = run(&url, &database, n).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE {database}")))
        .execute(&mut admin)
        .await?;
    outcome
}

async fn run(url: &str, database: &str, n: usize) -> anyhow::Result<()> {
    let target = Arc::new(MySqlTarget::open(&target(url))?);
    let limits = Limits {
        row_cap: 1_000,
        max_bytes: 1 << 20,
        timeout: Duration::from_secs(5),
        dry_run: false,
    };
    let read = format!("SELECT id, name FROM {database}.items WHERE id = 1");
    println!(
        "MariaDB/MySQL executor, sequential jobs, {n} each after {WARM_UP} warm-up jobs; p50 / p90 / p99 / max"
    );
    let mut direct = MySqlConnection::connect(url).await?;
    let mut taken = Vec::with_capacity(n);
    for i in 0..WARM_UP + n {
        let started = Instant::now();
        sqlx::query(sqlx::AssertSqlSafe(read.clone()))
            .fetch_all(&mut direct)
            .await?;
        if i >= WARM_UP {
            taken.push(started.elapsed());
        }
    }
    taken.sort();
    report("direct sqlx connection, the read (prepared, kept)", taken);
    report(
        "read, one statement",
        jobs(&target, OperationClass::Read, limits, n, None, &|_| {
            read.clone()
        })
        .await?,
    );
    report(
        "read, a new statement each job",
        jobs(&target, OperationClass::Read, limits, n, None, &|i| {
            format!("{read} AND {i} = {i}")
        })
        .await?,
    );
    let write = format!("UPDATE {database}.items SET n = n + 1 WHERE id = 2");
    report(
        "write, one statement, back to back (its connection closed after each job)",
        jobs(&target, OperationClass::Write, limits, n, None, &|_| {
            write.clone()
        })
        .await?,
    );
    report(
        &format!("write, one statement, {} ms apart", WRITE_GAP.as_millis()),
        jobs(
            &target,
            OperationClass::Write,
            limits,
            n,
            Some(WRITE_GAP),
            &|_| write.clone(),
        )
        .await?,
    );
    let total = 4 * n;
    let started = Instant::now();
    let taken = at_once(&target, limits, total, &read).await?;
    let rate = (WARM_UP + total) as f64 / started.elapsed().as_secs_f64();
    report(
        &format!("read, one statement, {AT_ONCE} jobs at a time ({total} jobs, {rate:.0} jobs/s)"),
        taken,
    );
    target.close().await;
    direct.close().await?;
    Ok(())
}

fn target(url: &str) -> TargetConfig {
    let classes = [OperationClass::Read, OperationClass::Write];
    TargetConfig {
        credentials: classes
            .iter()
            .map(|class| {
                (
                    *class,
                    Credential {
                        url: Some(SecretUrl::new(url)),
                        url_env: None,
                    },
                )
            })
            .collect(),
        ..TargetConfig::new(
            "bench".parse().expect("a connection name"),
            ConnectionKind::Mysql,
            Environment::Development,
            classes.into_iter().collect(),
        )
    }
}

/// Runs `WARM_UP + n` jobs of `class` in sequence, the `i`th with `statement(i)`, each after
/// a pause of `gap` when given; the latencies of the last `n`, sorted.
async fn jobs(
    target: &MySqlTarget,
    class: OperationClass,
    limits: Limits,
    n: usize,
    gap: Option<Duration>,
    statement: &dyn Fn(usize) -> String,
) -> anyhow::Result<Vec<Duration>> {
    let mut taken = Vec::with_capacity(n);
    for i in 0..WARM_UP + n {
        if let Some(gap) = gap {
            tokio::time::sleep(gap).await;
        }
        let sql = statement(i);
        let started = Instant::now();
        target
            .run_unchecked(class, &sql, limits)
            .await
            .map_err(|e| anyhow::anyhow!("job {i} failed: {e:?}"))?;
        if i >= WARM_UP {
            taken.push(started.elapsed());
        }
    }
    taken.sort();
    Ok(taken)
}

/// Runs `WARM_UP + total` reads of `statement`, [`AT_ONCE`] at a time on the runtime's
/// workers; the latencies of the last `total`, sorted.
async fn at_once(
    target: &Arc<MySqlTarget>,
    limits: Limits,
    total: usize,
    statement: &str,
) -> anyhow::Result<Vec<Duration>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(AT_ONCE);
    for _ in 0..AT_ONCE {
        let (target, next, sql) = (Arc::clone(target), Arc::clone(&next), statement.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut taken = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= WARM_UP + total {
                    return Ok::<_, anyhow::Error>(taken);
                }
                let started = Instant::now();
                target
                    .run_unchecked(OperationClass::Read, &sql, limits)
                    .await
                    .map_err(|e| anyhow::anyhow!("job {i} failed: {e:?}"))?;
                if i >= WARM_UP {
                    taken.push(started.elapsed());
                }
            }
        }));
    }
    let mut taken = Vec::with_capacity(total);
    for task in tasks {
        taken.extend(task.await??);
    }
    taken.sort();
    Ok(taken)
}

fn report(what: &str, sorted: Vec<Duration>) {
    let at = |q: f64| sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)];
    let us = |d: Duration| d.as_micros();
    println!(
        "  {what}: p50 {} µs  p90 {} µs  p99 {} µs  max {} µs",
        us(at(0.50)),
        us(at(0.90)),
        us(at(0.99)),
        us(*sorted.last().expect("at least one job"))
    );
}
