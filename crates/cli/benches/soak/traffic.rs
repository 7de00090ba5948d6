//! The mixed traffic, all at once for the run's duration, each kind with exact client-side
//! counts: every HTTP status it got, the latency of every call, and the audit events each
//! answered call must have caused (from `crates/server/src/audit.rs` and the handlers):
//!
//! - auto-approved read (`POST /requests?wait=30`, 201): `request.created`,
//!   `request.approved` (by policy), `request.dispatched`, `request.finished`;
//! - write awaiting approval (201, pending): `request.created`, then the approvers' context
//!   jobs run by the agent: `request.explain_dispatched` + `request.explained` (every SQL
//!   write), `request.preview_dispatched` + `request.previewed` (an `UPDATE`, not an
//!   `INSERT`); the approval (200): `request.approval_recorded` + `request.approved`; the
//!   execution: `request.dispatched` + `request.finished`;
//! - the requester trying to approve their own request (403, the guard): `access.denied`;
//! - people signing in (200): `login.succeeded`; a step-up (200): `step_up.succeeded`;
//! - a wrong password (401): `login.failed`, and `login.locked` with each counted failure
//!   from the lockout threshold on (a failure while locked is answered the same, audited as
//!   `login.failed`, and not counted);
//! - the client over its rate limit: 429s are logged, not audited (`ratelimit::enforce`);
//!   its admitted `GET /me` calls audit nothing.
//!
//! A job that runs longer than a heartbeat interval (10 s) would add `request.running`; a
//! hand-off whose agent claim ended just before it added `request.requeued` and a second
//! `request.dispatched`. Neither is expected; the comparison reports both.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_core::RequestState;
use portcullis_identity::{Lockout, TotpSecret};
use portcullis_proto::api::{RequestOutcome, RequestView};
use reqwest::StatusCode;
use serde_json::json;
use tokio::sync::{Mutex, mpsc, watch};
use uuid::Uuid;

use crate::stack::{
    ACCOUNTS, APPROVER, CONNECTION, DEVELOPER, RATE_LIMIT, RATE_WINDOW_SECS, Stack, VICTIM,
    unix_secs,
};

use crate::shared::status_mib;
use crate::tally::{Pacer, Tally, http, now_ms, record, send};

pub(crate) const READ: &str = "read";
pub(crate) const WRITE_CREATE: &str = "write: create";
pub(crate) const WRITE_SELF_APPROVE: &str = "write: requester approves (403)";
pub(crate) const WRITE_WAIT: &str = "write: wait for result";
pub(crate) const WRITE_E2E: &str = "write: create -> executed";
pub(crate) const APPROVAL_VIEW: &str = "approval: view request";
pub(crate) const APPROVAL: &str = "approval: approve";
pub(crate) const STEP_UP: &str = "approver step-up";
pub(crate) const LOGIN: &str = "login (people)";
pub(crate) const BAD_LOGIN: &str = "login, wrong password";
pub(crate) const OVER_LIMIT: &str = "client over its rate limit";

/// Which statuses each kind may get; anything else fails the run.
pub(crate) fn allowed(kind: &str) -> &'static [u16] {
    match kind {
        READ | WRITE_CREATE => &[201],
        WRITE_SELF_APPROVE => &[403],
        BAD_LOGIN => &[401, 429],
        OVER_LIMIT => &[200, 429],
        _ => &[200],
    }
}

const READ_EVENTS: &[&str] = &[
    "request.created",
    "request.approved",
    "request.dispatched",
    "request.finished",
];
const UPDATE_EVENTS: &[&str] = &[
    "request.created",
    "request.explain_dispatched",
    "request.explained",
    "request.preview_dispatched",
    "request.previewed",
    "request.approval_recorded",
    "request.approved",
    "request.dispatched",
    "request.finished",
];
const INSERT_EVENTS: &[&str] = &[
    "request.created",
    "request.explain_dispatched",
    "request.explained",
    "request.approval_recorded",
    "request.approved",
    "request.dispatched",
    "request.finished",
];

/// Readers per API token, and the share of the token's limit they stay under.
const READERS_PER_TOKEN: usize = 2;
const READER_SHARE: f64 = 0.8;
/// Writers (one developer session) and how often each creates a write at most.
const WRITERS: usize = 2;
const WRITE_EVERY: Duration = Duration::from_millis(100);
/// Every tenth write, the requester first tries to approve it.
const SELF_APPROVE_EVERY: u64 = 10;
const APPROVERS: usize = 2;
/// The client over its limit: loops and the pace of each (together twice the limit).
const ABUSER_LOOPS: u32 = 4;
/// One wrong password a second, from a rotating loopback source address.
const BAD_LOGIN_EVERY: Duration = Duration::from_secs(1);
/// The approver's step-ups: the first one after this (or half the run), then this often.
const STEP_UP_FIRST: Duration = Duration::from_secs(60);
const STEP_UP_EVERY: Duration = Duration::from_secs(300);
/// No wrong password is sent this close to the end of a lock, so that each attempt is
/// known to land inside a lock or after it.
const LOCK_GUARD_BEFORE_MS: i64 = 2_000;
const LOCK_GUARD_AFTER_MS: i64 = 500;

/// One resident-memory sample, seconds since the traffic started.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) at_s: f64,
    pub(crate) server_mib: f64,
    pub(crate) agent_mib: f64,
}

pub(crate) struct Outcome {
    pub(crate) tally: Tally,
    /// From the start of the traffic to the end of its last call.
    pub(crate) elapsed: Duration,
    pub(crate) samples: Vec<Sample>,
}

/// Runs every kind of traffic at once for `duration`, sampling memory once a second.
pub(crate) async fn run(
    stack: &Stack,
    schema: &str,
    duration: Duration,
) -> anyhow::Result<Outcome> {
    let base = stack.url.clone();
    let client = http()?;
    let mut tally = Tally::default();

    // The people sign in first: the developer with a password, the approver with a password
    // and a TOTP code (which also counts as their step-up for the next 10 minutes).
    let developer_token = login(
        &client,
        &base,
        &mut tally,
        DEVELOPER,
        &stack.creds.developer_password,
        None,
    )
    .await?;
    let approver_step = unix_secs() / 30;
    let approver_token = login(
        &client,
        &base,
        &mut tally,
        APPROVER,
        &stack.creds.approver_password,
        Some(&stack.creds.approver_totp),
    )
    .await?;

    let (stop_tx, stop) = watch::channel(false);
    let started = Instant::now();
    let mut tasks: Vec<tokio::task::JoinHandle<Tally>> = Vec::new();

    let pids = (stack.server.pid(), stack.agent.pid());
    let sampler = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                samples.push(Sample {
                    at_s: started.elapsed().as_secs_f64(),
                    server_mib: status_mib(pids.0, "VmRSS:").unwrap_or(f64::NAN),
                    agent_mib: status_mib(pids.1, "VmRSS:").unwrap_or(f64::NAN),
                });
                if *stop.borrow() {
                    return samples;
                }
            }
        })
    };

    let reader_every =
        Duration::from_secs_f64(RATE_WINDOW_SECS as f64 / (f64::from(RATE_LIMIT) * READER_SHARE));
    for (t, token) in stack.creds.reader_tokens.iter().enumerate() {
        let pacer = Pacer::new(reader_every);
        for r in 0..READERS_PER_TOKEN {
            let (client, base, token, pacer, stop) = (
                client.clone(),
                base.clone(),
                token.clone(),
                pacer.clone(),
                stop.clone(),
            );
            let schema = schema.to_owned();
            let seed = (t * READERS_PER_TOKEN + r) as u64;
            tasks.push(tokio::spawn(async move {
                reader(client, base, token, pacer, schema, seed, stop).await
            }));
        }
    }

    let (approvals_tx, approvals_rx) = mpsc::unbounded_channel::<Uuid>();
    let approvals_rx = Arc::new(Mutex::new(approvals_rx));
    for w in 0..WRITERS {
        let (client, base, token, stop, tx) = (
            client.clone(),
            base.clone(),
            developer_token.clone(),
            stop.clone(),
            approvals_tx.clone(),
        );
        let schema = schema.to_owned();
        tasks.push(tokio::spawn(async move {
            writer(client, base, token, tx, schema, w as u64, stop).await
        }));
    }
    drop(approvals_tx);
    for _ in 0..APPROVERS {
        let (client, base, token, rx) = (
            client.clone(),
            base.clone(),
            approver_token.clone(),
            approvals_rx.clone(),
        );
        tasks.push(tokio::spawn(async move {
            approver(client, base, token, rx).await
        }));
    }
    {
        let (client, base, token, stop) = (
            client.clone(),
            base.clone(),
            approver_token.clone(),
            stop.clone(),
        );
        let totp = stack.creds.approver_totp.clone();
        let first = STEP_UP_FIRST.min(duration / 2);
        tasks.push(tokio::spawn(async move {
            step_ups(client, base, token, totp, approver_step, first, stop).await
        }));
    }
    {
        let (base, stop) = (base.clone(), stop.clone());
        tasks.push(tokio::spawn(async move { bad_logins(base, stop).await }));
    }
    let abuser_every = Duration::from_secs_f64(
        RATE_WINDOW_SECS as f64 * f64::from(ABUSER_LOOPS) / (2.0 * f64::from(RATE_LIMIT)),
    );
    for _ in 0..ABUSER_LOOPS {
        let (client, base, token, stop) = (
            client.clone(),
            base.clone(),
            stack.creds.abuser_token.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            over_limit(client, base, token, abuser_every, stop).await
        }));
    }

    tokio::time::sleep(duration).await;
    stop_tx.send_replace(true);
    for task in tasks {
        tally.merge(task.await?);
    }
    let elapsed = started.elapsed();
    let samples = sampler.await?;
    Ok(Outcome {
        tally,
        elapsed,
        samples,
    })
}

/// `POST /login`; the session token.
async fn login(
    client: &reqwest::Client,
    base: &str,
    tally: &mut Tally,
    name: &str,
    password: &str,
    totp: Option<&TotpSecret>,
) -> anyhow::Result<String> {
    let mut body = json!({ "name": name, "password": password });
    if let Some(t) = totp {
        body["code"] = json!(t.current_code(unix_secs()));
    }
    let sent = send(client.post(format!("{base}/api/v1/login")).json(&body)).await;
    let answer =
        record(tally, LOGIN, sent).ok_or_else(|| anyhow::anyhow!("{name} could not sign in"))?;
    if answer.status != StatusCode::OK {
        anyhow::bail!("{name} could not sign in: {}", answer.snippet());
    }
    tally.event("login.succeeded");
    let v: serde_json::Value = answer.json()?;
    Ok(v["token"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no session token"))?
        .to_owned())
}

async fn reader(
    client: reqwest::Client,
    base: String,
    token: String,
    pacer: Arc<Pacer>,
    schema: String,
    seed: u64,
    stop: watch::Receiver<bool>,
) -> Tally {
    let mut tally = Tally::default();
    let mut n = seed * 7_919;
    while !*stop.borrow() {
        pacer.wait().await;
        n += 1;
        let id = 1 + n % ACCOUNTS;
        let body = json!({
            "connection": CONNECTION,
            "statement": format!("SELECT id, owner, balance FROM {schema}.accounts WHERE id = {id}"),
            "reason": "soak: account lookup",
        });
        let sent = send(
            client
                .post(format!("{base}/api/v1/requests?wait=30"))
                .bearer_auth(&token)
                .json(&body),
        )
        .await;
        let Some(answer) = record(&mut tally, READ, sent) else {
            continue;
        };
        if answer.status == StatusCode::CREATED {
            match answer.json::<RequestOutcome>() {
                Ok(o) => {
                    if o.request.state == RequestState::Succeeded
                        && o.result.as_ref().is_some_and(|r| r.row_count == 1)
                    {
                        tally.requests.push((o.request.id, READ_EVENTS));
                    } else {
                        let note = format!(
                            "request {} ended {} (error {:?})",
                            o.request.id, o.request.state, o.request.error
                        );
                        tally.kind(READ).unexpected(note);
                    }
                }
                Err(e) => tally
                    .kind(READ)
                    .unexpected(format!("unreadable answer: {e}")),
            }
        }
        // A well-behaved client: when few calls are left in the window, wait for it to slide.
        if let (Some(left), Some(reset)) = (
            answer.header("x-ratelimit-remaining"),
            answer.header("x-ratelimit-reset"),
        ) && left < u64::from(RATE_LIMIT / 10)
        {
            tally.reader_pauses += 1;
            tokio::time::sleep(Duration::from_secs(reset.max(1))).await;
        }
    }
    tally
}

#[allow(clippy::too_many_arguments)]
async fn writer(
    client: reqwest::Client,
    base: String,
    token: String,
    approvals: mpsc::UnboundedSender<Uuid>,
    schema: String,
    seed: u64,
    stop: watch::Receiver<bool>,
) -> Tally {
    let mut tally = Tally::default();
    let pacer = Pacer::new(WRITE_EVERY);
    let mut n = seed;
    while !*stop.borrow() {
        pacer.wait().await;
        n += 1;
        let update = n.is_multiple_of(2);
        let statement = if update {
            format!(
                "UPDATE {schema}.accounts SET balance = balance + 1 WHERE id = {}",
                1 + (n * 31) % ACCOUNTS
            )
        } else {
            format!("INSERT INTO {schema}.notes (body) VALUES ('soak note {n}')")
        };
        let body = json!({
            "connection": CONNECTION,
            "statement": statement,
            "reason": "soak: data fix",
        });
        let started = Instant::now();
        let sent = send(
            client
                .post(format!("{base}/api/v1/requests"))
                .bearer_auth(&token)
                .json(&body),
        )
        .await;
        let Some(answer) = record(&mut tally, WRITE_CREATE, sent) else {
            continue;
        };
        if answer.status != StatusCode::CREATED {
            continue;
        }
        let view = match answer.json::<RequestOutcome>() {
            Ok(o) if o.request.state == RequestState::PendingApproval => o.request,
            Ok(o) => {
                let note = format!(
                    "request {} is {}, not pending",
                    o.request.id, o.request.state
                );
                tally.kind(WRITE_CREATE).unexpected(note);
                continue;
            }
            Err(e) => {
                tally
                    .kind(WRITE_CREATE)
                    .unexpected(format!("unreadable answer: {e}"));
                continue;
            }
        };
        let id = view.id;
        tally.writes.push((id, update));
        if n % SELF_APPROVE_EVERY == 1 {
            let sent = send(
                client
                    .post(format!("{base}/api/v1/requests/{id}/approve"))
                    .bearer_auth(&token)
                    .json(&json!({})),
            )
            .await;
            if let Some(a) = record(&mut tally, WRITE_SELF_APPROVE, sent)
                && a.status == StatusCode::FORBIDDEN
            {
                if a.problem().1 == "missing_permission" {
                    tally.event("access.denied");
                } else {
                    let note = format!("refused for another reason: {}", a.snippet());
                    tally.kind(WRITE_SELF_APPROVE).unexpected(note);
                }
            }
        }
        if approvals.send(id).is_err() {
            tally
                .kind(WRITE_CREATE)
                .unexpected("no approver left".into());
            continue;
        }
        // The requester waits for the outcome (two long waits at most).
        let mut last = None;
        for _ in 0..2 {
            let sent = send(
                client
                    .get(format!("{base}/api/v1/requests/{id}/wait?wait=60"))
                    .bearer_auth(&token),
            )
            .await;
            let Some(a) = record(&mut tally, WRITE_WAIT, sent) else {
                break;
            };
            match a.json::<RequestOutcome>() {
                Ok(o) if o.request.state.is_terminal() => {
                    last = Some(o);
                    break;
                }
                Ok(o) => last = Some(o),
                Err(e) => {
                    tally
                        .kind(WRITE_WAIT)
                        .unexpected(format!("unreadable answer: {e}"));
                    break;
                }
            }
        }
        match last {
            Some(o)
                if o.request.state == RequestState::Succeeded
                    && o.result.as_ref().and_then(|r| r.affected_rows) == Some(1) =>
            {
                tally.kind(WRITE_E2E).answered(200, started.elapsed());
                tally
                    .requests
                    .push((id, if update { UPDATE_EVENTS } else { INSERT_EVENTS }));
                if update {
                    tally.updates_done += 1;
                } else {
                    tally.inserts_done += 1;
                }
            }
            Some(o) => {
                tally.kind(WRITE_E2E).answered(0, started.elapsed());
                let note = format!(
                    "request {id} ended {} (error {:?}, affected {:?})",
                    o.request.state,
                    o.request.error,
                    o.result.and_then(|r| r.affected_rows)
                );
                tally.kind(WRITE_E2E).unexpected(note);
            }
            None => {
                tally.kind(WRITE_E2E).answered(0, started.elapsed());
                tally
                    .kind(WRITE_E2E)
                    .unexpected(format!("request {id}: no outcome"));
            }
        }
    }
    tally
}

/// Takes writes as they arrive: looks at each (as an approver does), then approves it.
async fn approver(
    client: reqwest::Client,
    base: String,
    token: String,
    queue: Arc<Mutex<mpsc::UnboundedReceiver<Uuid>>>,
) -> Tally {
    let mut tally = Tally::default();
    loop {
        let next = queue.lock().await.recv().await;
        let Some(id) = next else {
            return tally;
        };
        let sent = send(
            client
                .get(format!("{base}/api/v1/requests/{id}"))
                .bearer_auth(&token),
        )
        .await;
        if let Some(a) = record(&mut tally, APPROVAL_VIEW, sent)
            && a.status == StatusCode::OK
            && let Err(e) = a.json::<RequestView>()
        {
            tally
                .kind(APPROVAL_VIEW)
                .unexpected(format!("unreadable view: {e}"));
        }
        let sent = send(
            client
                .post(format!("{base}/api/v1/requests/{id}/approve"))
                .bearer_auth(&token)
                .json(&json!({ "comment": "soak: checked the plan" })),
        )
        .await;
        if let Some(a) = record(&mut tally, APPROVAL, sent)
            && a.status == StatusCode::OK
        {
            match a.json::<RequestView>() {
                Ok(v) if v.state != RequestState::PendingApproval => {}
                Ok(v) => {
                    let note = format!("request {id} still {} after approval", v.state);
                    tally.kind(APPROVAL).unexpected(note);
                }
                Err(e) => tally
                    .kind(APPROVAL)
                    .unexpected(format!("unreadable view: {e}")),
            }
        }
    }
}

/// Keeps the approver's step-up fresh with a TOTP code of a later time step than any used.
async fn step_ups(
    client: reqwest::Client,
    base: String,
    token: String,
    totp: TotpSecret,
    mut last_step: u64,
    first: Duration,
    mut stop: watch::Receiver<bool>,
) -> Tally {
    let mut tally = Tally::default();
    let mut wait = first;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return tally,
        }
        while unix_secs() / 30 <= last_step {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let now = unix_secs();
        let sent = send(
            client
                .post(format!("{base}/api/v1/step-up"))
                .bearer_auth(&token)
                .json(&json!({ "code": totp.current_code(now) })),
        )
        .await;
        if let Some(a) = record(&mut tally, STEP_UP, sent)
            && a.status == StatusCode::OK
        {
            tally.event("step_up.succeeded");
        }
        last_step = now / 30;
        wait = STEP_UP_EVERY;
    }
}

/// Wrong passwords for one account, once a second, each from the next loopback address
/// (127.0.0.2–127.0.0.255): an attacker spread over many addresses, so that the account's
/// lockout, not the per-address sign-in limit, is what answers. The lockout is modelled
/// from the server's defaults to know which failures count.
async fn bad_logins(base: String, mut stop: watch::Receiver<bool>) -> Tally {
    let mut tally = Tally::default();
    let settings = portcullis_server::config::LoginSettings::default();
    let policy = Lockout {
        threshold: settings.lockout_threshold,
        base: Duration::from_secs(settings.lockout_base_secs),
        max: Duration::from_secs(settings.lockout_max_secs),
    };
    let lock_ms = |failures: u64| {
        policy
            .lock_duration(u32::try_from(failures).unwrap_or(u32::MAX))
            .map(|d| d.as_millis() as i64)
    };
    let mut clients: BTreeMap<u8, reqwest::Client> = BTreeMap::new();
    // The last counted failure: sent at, answered at (the server's clock lies in between).
    let mut last: Option<(i64, i64)> = None;
    let mut tick = tokio::time::interval(BAD_LOGIN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        // Stay clear of the moment a lock ends.
        if let (Some(lock), Some((s, r))) = (lock_ms(tally.lockout.counted), last) {
            let now = now_ms();
            let (from, to) = (
                s + lock - LOCK_GUARD_BEFORE_MS,
                r + lock + LOCK_GUARD_AFTER_MS,
            );
            if now >= from && now <= to {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis((to - now) as u64)) => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
        }
        let octet = 2 + (n % 254) as u8;
        n += 1;
        let client = match clients.get(&octet) {
            Some(c) => c.clone(),
            None => {
                let built = reqwest::Client::builder()
                    .no_proxy()
                    .timeout(Duration::from_secs(30))
                    .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, octet)))
                    .build();
                match built {
                    Ok(c) => {
                        clients.insert(octet, c.clone());
                        c
                    }
                    Err(e) => {
                        tally.kind(BAD_LOGIN).unexpected(format!("client: {e}"));
                        continue;
                    }
                }
            }
        };
        let wrong = crate::stack::passphrase();
        let sent_at = now_ms();
        let sent = send(
            client
                .post(format!("{base}/api/v1/login"))
                .json(&json!({ "name": VICTIM, "password": wrong })),
        )
        .await;
        let answered_at = now_ms();
        tally.lockout.attempts += 1;
        let Some(a) = record(&mut tally, BAD_LOGIN, sent) else {
            continue;
        };
        match a.status {
            StatusCode::UNAUTHORIZED => {
                if a.problem().1 != "login_failed" {
                    let note = format!("not the login failure answer: {}", a.snippet());
                    tally.kind(BAD_LOGIN).unexpected(note);
                    continue;
                }
                tally.event("login.failed");
                let counted = match (lock_ms(tally.lockout.counted), last) {
                    (None, _) | (_, None) => true,
                    (Some(lock), Some((s, r))) => {
                        if answered_at < s + lock {
                            false
                        } else if sent_at > r + lock {
                            true
                        } else {
                            tally.lockout.ambiguous += 1;
                            continue;
                        }
                    }
                };
                if counted {
                    tally.lockout.counted += 1;
                    last = Some((sent_at, answered_at));
                    if lock_ms(tally.lockout.counted).is_some() {
                        tally.lockout.locks += 1;
                        tally.event("login.locked");
                    }
                } else {
                    tally.lockout.while_locked += 1;
                }
            }
            StatusCode::TOO_MANY_REQUESTS => tally.lockout.rate_limited += 1,
            _ => {}
        }
    }
    tally.lockout.addresses = clients.len() as u64;
    tally
}

/// A client that ignores the limit: `GET /me` at twice the rate its token may make.
async fn over_limit(
    client: reqwest::Client,
    base: String,
    token: String,
    every: Duration,
    stop: watch::Receiver<bool>,
) -> Tally {
    let mut tally = Tally::default();
    let pacer = Pacer::new(every);
    while !*stop.borrow() {
        pacer.wait().await;
        let sent = send(client.get(format!("{base}/api/v1/me")).bearer_auth(&token)).await;
        let Some(a) = record(&mut tally, OVER_LIMIT, sent) else {
            continue;
        };
        if a.status == StatusCode::TOO_MANY_REQUESTS {
            let (code, reason) = a.problem();
            let headers_ok = a.header("retry-after").is_some_and(|s| s >= 1)
                && a.header("x-ratelimit-limit") == Some(u64::from(RATE_LIMIT))
                && a.header("x-ratelimit-remaining") == Some(0)
                && a.header("x-ratelimit-reset").is_some();
            if code != "rate_limited" || reason != "authenticated" || !headers_ok {
                let note = format!("a 429 without the WEB-4 headers or code: {}", a.snippet());
                tally.kind(OVER_LIMIT).unexpected(note);
            }
        }
    }
    tally
}

/// After the traffic: waits until the agent has run every job (the approvers' plans and
/// previews are asynchronous), so that all their audit events are in. Reads the server's
/// state file read-only, as `portcullis audit verify --data` does. Returns the jobs still
/// queued or leased at the deadline.
pub(crate) async fn settle_jobs(data: &std::path::Path, deadline: Duration) -> anyhow::Result<i64> {
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
    let options = SqliteConnectOptions::new()
        .filename(portcullis_server::store::Store::state_file(data))
        .read_only(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    let started = Instant::now();
    let open = loop {
        let open: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'leased')")
                .fetch_one(&pool)
                .await?;
        if open == 0 || started.elapsed() >= deadline {
            break open;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    pool.close().await;
    Ok(open)
}
