//! The soak's bookkeeping: what each call got and how long it took, the audit events the
//! answered calls must have caused, and the small HTTP helpers every kind of traffic uses.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::traffic::allowed;

/// The calls of one kind.
#[derive(Debug, Default)]
pub(crate) struct Calls {
    /// By HTTP status; 0 is a call that got no answer.
    pub(crate) statuses: BTreeMap<u16, u64>,
    pub(crate) latencies_us: Vec<u32>,
    /// Answers outside the kind's allowed statuses, or whose content was wrong.
    pub(crate) unexpected: u64,
    pub(crate) notes: Vec<String>,
}

impl Calls {
    pub(crate) fn answered(&mut self, status: u16, took: Duration) {
        *self.statuses.entry(status).or_default() += 1;
        self.latencies_us
            .push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
    }

    pub(crate) fn unexpected(&mut self, note: String) {
        self.unexpected += 1;
        if self.notes.len() < 5 {
            self.notes.push(note);
        }
    }

    fn merge(&mut self, other: Calls) {
        for (s, n) in other.statuses {
            *self.statuses.entry(s).or_default() += n;
        }
        self.latencies_us.extend(other.latencies_us);
        self.unexpected += other.unexpected;
        for n in other.notes {
            if self.notes.len() < 5 {
                self.notes.push(n);
            }
        }
    }

    pub(crate) fn total(&self) -> u64 {
        self.statuses.values().sum()
    }
}

/// What the wrong-password client saw of the lockout.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct LockoutSeen {
    pub(crate) attempts: u64,
    /// Failures the server counted (outside a lock).
    pub(crate) counted: u64,
    /// Attempts answered while the account was locked.
    pub(crate) while_locked: u64,
    pub(crate) locks: u64,
    /// Attempts that could not be placed inside or after a lock (none expected).
    pub(crate) ambiguous: u64,
    pub(crate) rate_limited: u64,
    pub(crate) addresses: u64,
}

/// Everything one task of the traffic counted.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) calls: BTreeMap<&'static str, Calls>,
    /// Requests this run created, with the audit actions each must have.
    pub(crate) requests: Vec<(Uuid, &'static [&'static str])>,
    /// Audit events not tied to one request, by action.
    pub(crate) other: BTreeMap<&'static str, u64>,
    /// Writes created: id and whether it was an `UPDATE` (which gets a preview).
    pub(crate) writes: Vec<(Uuid, bool)>,
    pub(crate) updates_done: i64,
    pub(crate) inserts_done: i64,
    pub(crate) lockout: LockoutSeen,
    /// Readers that paused because `X-RateLimit-Remaining` ran low.
    pub(crate) reader_pauses: u64,
}

impl Tally {
    pub(crate) fn kind(&mut self, kind: &'static str) -> &mut Calls {
        self.calls.entry(kind).or_default()
    }

    pub(crate) fn event(&mut self, action: &'static str) {
        *self.other.entry(action).or_default() += 1;
    }

    pub(crate) fn merge(&mut self, other: Tally) {
        for (k, c) in other.calls {
            self.kind(k).merge(c);
        }
        self.requests.extend(other.requests);
        for (a, n) in other.other {
            *self.other.entry(a).or_default() += n;
        }
        self.writes.extend(other.writes);
        self.updates_done += other.updates_done;
        self.inserts_done += other.inserts_done;
        let (a, b) = (&mut self.lockout, other.lockout);
        a.attempts += b.attempts;
        a.counted += b.counted;
        a.while_locked += b.while_locked;
        a.locks += b.locks;
        a.ambiguous += b.ambiguous;
        a.rate_limited += b.rate_limited;
        a.addresses = a.addresses.max(b.addresses);
        self.reader_pauses += other.reader_pauses;
    }

    /// Every audit event the counted actions must have caused, by action.
    pub(crate) fn expected(&self) -> BTreeMap<&'static str, u64> {
        let mut all = self.other.clone();
        for (_, actions) in &self.requests {
            for a in actions.iter() {
                *all.entry(a).or_default() += 1;
            }
        }
        all
    }
}

/// One answer: status, headers, body, and how long the call took.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Vec<u8>,
    pub(crate) took: Duration,
}

impl Answer {
    pub(crate) fn json<T: serde::de::DeserializeOwned>(&self) -> anyhow::Result<T> {
        Ok(serde_json::from_slice(&self.body)?)
    }

    pub(crate) fn problem(&self) -> (String, String) {
        let v: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_default();
        (
            v["code"].as_str().unwrap_or_default().to_owned(),
            v["reason"].as_str().unwrap_or_default().to_owned(),
        )
    }

    pub(crate) fn snippet(&self) -> String {
        String::from_utf8_lossy(&self.body)
            .chars()
            .take(240)
            .collect()
    }

    pub(crate) fn header(&self, name: &str) -> Option<u64> {
        self.headers.get(name)?.to_str().ok()?.parse().ok()
    }
}

/// Sends a request; `Err` holds the transport error, timed like an answer.
pub(crate) async fn send(rb: reqwest::RequestBuilder) -> Result<Answer, (String, Duration)> {
    let started = Instant::now();
    let outcome = async {
        let r = rb.send().await?;
        let (status, headers) = (r.status(), r.headers().clone());
        let body = r.bytes().await?.to_vec();
        Ok::<_, reqwest::Error>((status, headers, body))
    }
    .await;
    let took = started.elapsed();
    match outcome {
        Ok((status, headers, body)) => Ok(Answer {
            status,
            headers,
            body,
            took,
        }),
        Err(e) => Err((e.to_string(), took)),
    }
}

/// Records a call on `kind`: the answer when there was one, or a transport failure.
pub(crate) fn record(
    tally: &mut Tally,
    kind: &'static str,
    sent: Result<Answer, (String, Duration)>,
) -> Option<Answer> {
    match sent {
        Ok(a) => {
            tally.kind(kind).answered(a.status.as_u16(), a.took);
            if !allowed(kind).contains(&a.status.as_u16()) {
                let note = format!("HTTP {}: {}", a.status.as_u16(), a.snippet());
                tally.kind(kind).unexpected(note);
            }
            Some(a)
        }
        Err((e, took)) => {
            tally.kind(kind).answered(0, took);
            tally.kind(kind).unexpected(format!("no answer: {e}"));
            None
        }
    }
}

/// Spaces the calls of one principal so that they stay under a rate.
pub(crate) struct Pacer {
    next: Mutex<Instant>,
    every: Duration,
}

impl Pacer {
    pub(crate) fn new(every: Duration) -> Arc<Pacer> {
        Arc::new(Pacer {
            next: Mutex::new(Instant::now()),
            every,
        })
    }

    pub(crate) async fn wait(&self) {
        let slot = {
            let mut next = self.next.lock().await;
            let slot = (*next).max(Instant::now());
            *next = slot + self.every;
            slot
        };
        tokio::time::sleep_until(slot.into()).await;
    }
}

pub(crate) fn http() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(150))
        .pool_max_idle_per_host(64)
        .build()?)
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
