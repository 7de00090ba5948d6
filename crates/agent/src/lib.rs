//! The Portcullis agent: the only component that holds data-store credentials.
//!
//! It connects out to the server (it never listens), long-polls for jobs, and for each one
//! verifies the execution token against keys pinned in its own configuration, checks its own
//! capability list, classifies the statement again, and only then executes (see [`permit`]).
//! It never decides policy and never trusts a key because the server offers it.

pub mod config;
pub mod exec;
pub mod permit;
pub mod process;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis_client::{Client, ClientError};
use portcullis_core::OperationClass;
use portcullis_proto::agent::{ClaimRequest, JobAssignment, JobReport, ServedConnection};
use portcullis_proto::api::{ExecError, ExecResult};
use portcullis_proto::token::{ReplayCache, TrustedKeys};
use tokio::sync::{Semaphore, watch};

pub use config::AgentConfig;
use exec::{RowSink, Summary, Targets};

const CLAIM_WAIT_MS: u64 = 25_000;
const REPLAY_CAPACITY: usize = 100_000;

/// A configured agent, ready to run.
pub struct Agent {
    config: AgentConfig,
    /// Pinned keys, plus keys accepted through a rotation chain rooted in them (IR-4).
    keys: std::sync::RwLock<TrustedKeys>,
    replay: Mutex<ReplayCache>,
    targets: Targets,
    client: Client,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

/// Reads the agent token from `PORTCULLIS_AGENT_TOKEN` or the configured file.
pub fn load_token(config: &AgentConfig) -> anyhow::Result<zeroize::Zeroizing<String>> {
    if let Ok(t) = std::env::var("PORTCULLIS_AGENT_TOKEN")
        && !t.trim().is_empty()
    {
        return Ok(zeroize::Zeroizing::new(t.trim().to_owned()));
    }
    let Some(path) = &config.token_file else {
        anyhow::bail!("no agent token: set PORTCULLIS_AGENT_TOKEN or token_file");
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read the agent token file {}: {e}", path.display()))?;
    Ok(zeroize::Zeroizing::new(text.trim().to_owned()))
}

impl Agent {
    /// Validates the config, parses the pinned keys once, and opens every target.
    pub async fn new(config: AgentConfig, token: &str) -> anyhow::Result<Arc<Agent>> {
        config.validate()?;
        let keys = config.trusted_keys()?;
        let targets = Targets::open(&config).await?;
        let client = Client::new(&config.server_url, Some(token))?;
        Ok(Arc::new(Agent {
            config,
            keys: std::sync::RwLock::new(keys),
            replay: Mutex::new(ReplayCache::new(REPLAY_CAPACITY)),
            targets,
            client,
        }))
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    fn served(&self) -> Vec<ServedConnection> {
        self.config
            .connections
            .iter()
            .map(|c| ServedConnection {
                name: c.name.clone(),
                kind: c.kind,
                environment: c.environment,
            })
            .collect()
    }

    /// Runs the gate and, when it passes, the executor, collecting the whole result. Never
    /// panics on hostile input.
    pub async fn process(&self, job: &JobAssignment) -> JobReport {
        let mut sink = RowSink::collect();
        match self.gate_and_run(job, &mut sink).await {
            Processed::Refused(error) => JobReport::Refused { error },
            Processed::Ran(Ok(summary)) => JobReport::Succeeded {
                result: sink.into_result(summary),
            },
            Processed::Ran(Err(error)) => JobReport::Failed { error },
        }
    }

    /// Runs the gate and, when it passes, the executor into `sink`.
    async fn gate_and_run(&self, job: &JobAssignment, sink: &mut RowSink) -> Processed {
        let now = now_ms();
        let mut permit = self.check(job, now);
        if matches!(&permit, Err(r) if r.code == "token_unknown_key")
            && self.follow_key_chain().await
        {
            permit = self.check(job, now);
        }
        let permit = match permit {
            Ok(p) => p,
            Err(refusal) => {
                tracing::warn!(job = %job.job_id, code = refusal.code, "refused a job: {}", refusal.message);
                return Processed::Refused(ExecError {
                    code: refusal.code.to_owned(),
                    message: refusal.message,
                });
            }
        };
        Processed::Ran(self.targets.execute(&permit, sink).await)
    }

    fn check<'a>(
        &'a self,
        job: &'a JobAssignment,
        now: i64,
    ) -> Result<permit::Permit<'a>, permit::Refusal> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let mut replay = self.replay.lock().unwrap_or_else(|e| e.into_inner());
        permit::check(&self.config, &keys, &mut replay, job, now)
    }

    /// A token names a key this agent does not know: the server may have rotated its signing
    /// key. Fetches the announcements and accepts only those signed by a key already trusted
    /// here (IR-4). Returns whether a new key was accepted.
    async fn follow_key_chain(&self) -> bool {
        let chain = match self.client.key_chain().await {
            Ok(chain) => chain,
            Err(e) => {
                tracing::warn!(error = %e, "fetching the signing-key chain failed");
                return false;
            }
        };
        let accepted = self
            .keys
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .accept_chain(&chain);
        for id in &accepted {
            tracing::info!(key_id = %id, "accepted a rotated signing key: its announcement is signed by a key this agent trusts");
        }
        !accepted.is_empty()
    }

    /// Runs `max_concurrent_jobs` workers until `stop` turns true. Returns an error when the
    /// server refuses the agent's credential (revoked or unknown): retrying cannot help.
    /// Before returning it waits for every result still on its way to the server.
    pub async fn run(self: Arc<Self>, stop: watch::Receiver<bool>) -> anyhow::Result<()> {
        let workers_n = self.config.max_concurrent_jobs;
        let settling = Arc::new(Semaphore::new(workers_n));
        let mut workers = tokio::task::JoinSet::new();
        for worker in 0..workers_n {
            let agent = self.clone();
            let stop = stop.clone();
            let settling = settling.clone();
            workers.spawn(async move { agent.work(worker, stop, settling).await });
        }
        let mut outcome = Ok(());
        while let Some(done) = workers.join_next().await {
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    outcome = Err(e);
                    workers.abort_all();
                }
                Err(e) if e.is_cancelled() => {}
                Err(e) => outcome = Err(e.into()),
            }
        }
        // A job whose executor finished is not done until the server has its result: wait
        // for those settlements (each holds one permit) before reporting the agent stopped.
        let _all = settling.acquire_many(workers_n as u32).await;
        if let Some(ready) = &self.config.ready_file {
            let _ = std::fs::remove_file(ready);
        }
        outcome
    }

    async fn work(
        self: Arc<Self>,
        worker: usize,
        mut stop: watch::Receiver<bool>,
        settling: Arc<Semaphore>,
    ) -> anyhow::Result<()> {
        // The first claim returns at once, so readiness reflects "connected and accepted"
        // without waiting out a long-poll; later claims wait for work.
        let mut claim = ClaimRequest {
            connections: self.served(),
            wait_ms: 0,
        };
        let mut backoff = Backoff::default();
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            let next = tokio::select! {
                r = self.client.claim(&claim) => r,
                _ = stop.wait_for(|s| *s) => return Ok(()),
            };
            match next {
                Ok(job) => {
                    backoff.reset();
                    claim.wait_ms = CLAIM_WAIT_MS;
                    self.mark_alive(worker == 0);
                    if let Some(job) = job {
                        self.run_job(job, &settling).await;
                    }
                }
                Err(e) if matches!(e.status(), Some(401 | 403)) => {
                    anyhow::bail!(
                        "the server refused this agent's credential ({e}); was the agent revoked?"
                    );
                }
                Err(e) => {
                    let delay = backoff.next();
                    tracing::warn!(worker, error = %e, retry_in_ms = delay.as_millis() as u64, "claim failed");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.wait_for(|s| *s) => return Ok(()),
                    }
                }
            }
        }
    }

    /// Runs one job: the gate, the executor streaming into the upload, then the settlement
    /// (the server's answer to the upload, or the fallback report). Returns as soon as the
    /// executor has finished: when the upload is still waiting for the server to record
    /// the result, that wait moves to a task of its own holding a permit of `settling`, so
    /// the worker takes its next job meanwhile. A worker waits for a permit first, so at
    /// most `max_concurrent_jobs` settlements run at once.
    async fn run_job(self: &Arc<Self>, job: JobAssignment, settling: &Arc<Semaphore>) {
        // Heartbeats extend the lease while a long statement runs, and until the server
        // has the result. They are polled beside the job's own futures, not spawned: a job
        // costs no task of its own for them.
        let beat_every = Duration::from_millis((job.lease_ms / 3).max(1_000));
        let mut heartbeat = Box::pin(heartbeats(self.client.clone(), job.job_id, beat_every));
        // The result streams to the server while the executor runs; the upload's backpressure
        // paces the executor, so a large result is never held whole.
        let (mut sink, chunks) = RowSink::stream();
        let client = self.client.clone();
        let job_id = job.job_id;
        let mut upload = Box::pin(async move { client.upload_result(job_id, chunks).await });
        let work = async move {
            let processed = self.gate_and_run(&job, &mut sink).await;
            if let Processed::Ran(outcome) = &processed {
                sink.finish(outcome).await;
            }
            drop(sink);
            (job, processed)
        };
        tokio::pin!(work);
        let ((job, processed), uploaded) = beating(&mut heartbeat, async {
            tokio::select! {
                done = &mut work => (done, None),
                uploaded = &mut upload => ((&mut work).await, Some(uploaded)),
            }
        })
        .await;
        if let Some(uploaded) = uploaded {
            drop(heartbeat);
            self.settle(job, processed, uploaded).await;
            return;
        }
        let agent = self.clone();
        let settle = async move {
            let uploaded = beating(&mut heartbeat, upload).await;
            drop(heartbeat);
            agent.settle(job, processed, uploaded).await;
        };
        match settling.clone().acquire_owned().await {
            Ok(permit) => {
                tokio::spawn(async move {
                    settle.await;
                    drop(permit);
                });
            }
            // The semaphore is never closed; settle here should it ever be.
            Err(_) => settle.await,
        }
    }

    /// Settles a job once its upload has ended: nothing more when the server took the
    /// result, otherwise the outcome through the report route.
    async fn settle(
        &self,
        job: JobAssignment,
        processed: Processed,
        uploaded: Result<bool, ClientError>,
    ) {
        let job_id = job.job_id;
        let report = match (processed, uploaded) {
            (Processed::Ran(_), Ok(true)) => return,
            (Processed::Refused(error), _) => JobReport::Refused { error },
            (Processed::Ran(outcome), uploaded) => {
                if let Err(e) = &uploaded {
                    tracing::warn!(job = %job_id, error = %e, "the result upload failed; reporting the outcome without rows");
                }
                undelivered(job.class, outcome)
            }
        };
        self.report(job_id, &report).await;
    }

    /// Reports an outcome through the plain report route, retrying what the server could not
    /// record.
    async fn report(&self, job_id: uuid::Uuid, report: &JobReport) {
        let mut backoff = Backoff::default();
        for attempt in 0..5 {
            match self.client.report(job_id, report).await {
                Ok(()) => return,
                // A 4xx is final (refused, already reported, lease gone); a 5xx means the
                // server could not record it now (its store, its audit chain): try again.
                Err(e @ (ClientError::Api { .. } | ClientError::Status { .. }))
                    if e.status().is_some_and(|s| s < 500) =>
                {
                    tracing::error!(job = %job_id, error = %e, "the server rejected the job report");
                    return;
                }
                Err(e) => {
                    tracing::warn!(job = %job_id, attempt, error = %e, "reporting failed; retrying");
                    tokio::time::sleep(backoff.next()).await;
                }
            }
        }
        tracing::error!(job = %job_id, "could not report the outcome; the server will settle the job when its lease expires");
    }

    fn mark_alive(&self, first_worker: bool) {
        if !first_worker {
            return;
        }
        if let Some(ready) = &self.config.ready_file
            && !ready.exists()
            && let Err(e) = std::fs::write(ready, b"ready\n")
        {
            tracing::warn!(error = %e, "cannot write the ready file");
        }
        if let Some(alive) = &self.config.liveness_file
            && let Err(e) = std::fs::write(alive, now_ms().to_string())
        {
            tracing::warn!(error = %e, "cannot write the liveness file");
        }
    }
}

/// The gate's verdict and, when it let the job through, the execution's outcome.
enum Processed {
    Refused(ExecError),
    Ran(Result<Summary, ExecError>),
}

/// Sends a heartbeat for `job_id` every `every`, for as long as it is polled.
async fn heartbeats(
    client: Client,
    job_id: uuid::Uuid,
    every: Duration,
) -> std::convert::Infallible {
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = client.heartbeat(job_id).await {
            tracing::warn!(job = %job_id, error = %e, "heartbeat failed");
        }
    }
}

/// Runs `work` to its end while polling `heartbeat` beside it.
async fn beating<T>(
    heartbeat: &mut std::pin::Pin<Box<impl std::future::Future<Output = std::convert::Infallible>>>,
    work: impl std::future::Future<Output = T>,
) -> T {
    tokio::select! {
        biased;
        out = work => out,
        never = heartbeat.as_mut() => match never {},
    }
}

/// The report for an outcome whose rows could not be delivered. A read that the requester
/// did not receive failed; a write happened and is reported as such, without its rows.
fn undelivered(class: OperationClass, outcome: Result<Summary, ExecError>) -> JobReport {
    match outcome {
        Ok(summary) if class == OperationClass::Read => JobReport::Failed {
            error: ExecError {
                code: "result_not_delivered".into(),
                message: format!(
                    "the read ran but its {} row(s) could not be delivered",
                    summary.row_count
                ),
            },
        },
        Ok(summary) => JobReport::Succeeded {
            result: ExecResult {
                columns: summary.columns,
                rows: Vec::new(),
                row_count: 0,
                truncated: summary.row_count > 0 || summary.truncated,
                affected_rows: summary.affected_rows,
            },
        },
        Err(error) => JobReport::Failed { error },
    }
}

/// Exponential backoff with jitter for reconnecting; not part of the dispatch path.
#[derive(Debug, Default)]
struct Backoff {
    attempt: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let base = 100u64.saturating_mul(1 << self.attempt.min(6));
        self.attempt += 1;
        Duration::from_millis(base.min(5_000) + rand::random::<u64>() % 100)
    }
    fn reset(&mut self) {
        self.attempt = 0;
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
