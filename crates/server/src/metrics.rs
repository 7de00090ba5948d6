//! Prometheus metrics (WEB-9), one registry per server so that two servers in one process
//! (tests, `dev`) never mix their figures. HTTP latency and outcomes are recorded as requests
//! finish; the state figures (agents, queue depth, requests by state, audit head) are read
//! when `/metrics` is scraped, so nothing polls in the background.
//!
//! The recorder keeps each histogram sample until it is folded into the buckets, which only a
//! scrape or an upkeep does; a server nobody scrapes would keep one sample per HTTP request
//! forever. So every [`UPKEEP_EVERY`] requests fold the pending samples in: memory stays
//! bounded whether `/metrics` is scraped or not.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::Method;
use metrics::{Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::AppState;

static METADATA: Metadata<'static> = Metadata::new("portcullis", Level::INFO, None);

/// Latency buckets in seconds: 100 µs to 60 s (long polls and waits sit at the top).
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

/// HTTP requests between two upkeeps: at most this many latency samples wait unfolded.
pub const UPKEEP_EVERY: u64 = 1024;

struct Inner {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// HTTP requests observed so far.
    observed: AtomicU64,
    /// Upkeeps run so far.
    upkeeps: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let builder = PrometheusBuilder::new();
        // Invariant: the bucket list is a non-empty constant, the only thing `set_buckets`
        // rejects is an empty one.
        #[allow(clippy::expect_used)]
        let builder = builder
            .set_buckets(LATENCY_BUCKETS)
            .expect("constant, non-empty buckets");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        Metrics(Arc::new(Inner {
            recorder,
            handle,
            observed: AtomicU64::new(0),
            upkeeps: AtomicU64::new(0),
        }))
    }

    /// One finished HTTP request: `route` is the matched route pattern (never the raw path,
    /// which would let clients create unbounded label values).
    pub fn observe_http(&self, method: &Method, route: &str, status: u16, elapsed: Duration) {
        let labels = vec![
            Label::new("method", method.as_str().to_owned()),
            Label::new("route", route.to_owned()),
        ];
        let key = Key::from_parts("portcullis_http_request_duration_seconds", labels.clone());
        self.0
            .recorder
            .register_histogram(&key, &METADATA)
            .record(elapsed.as_secs_f64());
        let mut labels = labels;
        labels.push(Label::new("status", status.to_string()));
        let key = Key::from_parts("portcullis_http_requests_total", labels);
        self.0
            .recorder
            .register_counter(&key, &METADATA)
            .increment(1);
        // Exactly one request in every UPKEEP_EVERY folds the pending samples in.
        if self.0.observed.fetch_add(1, Ordering::Relaxed) % UPKEEP_EVERY == UPKEEP_EVERY - 1 {
            self.0.handle.run_upkeep();
            self.0.upkeeps.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How many upkeeps have folded pending histogram samples into their buckets.
    pub fn upkeeps(&self) -> u64 {
        self.0.upkeeps.load(Ordering::Relaxed)
    }

    fn gauge(&self, name: &'static str, labels: Vec<Label>, value: f64) {
        let key = Key::from_parts(name, labels);
        self.0.recorder.register_gauge(&key, &METADATA).set(value);
    }

    /// The text exposition, with the state figures read now.
    pub async fn render(&self, state: &AppState) -> Result<String, sqlx::Error> {
        let agents = state
            .presence
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .agents
            .len();
        self.gauge("portcullis_connected_agents", Vec::new(), agents as f64);
        let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'queued'")
            .fetch_one(state.store.reader())
            .await?;
        self.gauge("portcullis_queue_depth", Vec::new(), queued as f64);
        let by_state: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, count(*) FROM requests GROUP BY state")
                .fetch_all(state.store.reader())
                .await?;
        // Every state is written, so a state that emptied shows 0 rather than its last count.
        for s in portcullis_core::RequestState::ALL {
            let n = by_state
                .iter()
                .find(|(name, _)| name == s.as_str())
                .map_or(0, |(_, n)| *n);
            self.gauge(
                "portcullis_requests",
                vec![Label::new("state", s.as_str())],
                n as f64,
            );
        }
        self.gauge(
            "portcullis_open_connections",
            Vec::new(),
            state.connections.open() as f64,
        );
        self.gauge(
            "portcullis_max_connections",
            Vec::new(),
            state.connections.max() as f64,
        );
        let key = Key::from_name("portcullis_connections_refused_total");
        self.0
            .recorder
            .register_counter(&key, &METADATA)
            .absolute(state.connections.refused());
        self.gauge(
            "portcullis_audit_head_sequence",
            Vec::new(),
            state.audit.head().seq as f64,
        );
        Ok(self.0.handle.render())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An unscraped server folds its latency samples in every `UPKEEP_EVERY` requests (one
    /// sample kept per request forever would grow memory without bound), and folding loses
    /// none of them.
    #[test]
    fn latency_samples_are_folded_in_without_a_scrape_and_none_is_lost() {
        let metrics = Metrics::new();
        let n = 3 * UPKEEP_EVERY + 7;
        for _ in 0..n {
            metrics.observe_http(&Method::GET, "/health", 200, Duration::from_micros(300));
        }
        assert_eq!(
            metrics.upkeeps(),
            3,
            "one upkeep per {UPKEEP_EVERY} requests"
        );
        let text = metrics.0.handle.render();
        let count = text
            .lines()
            .find(|l| l.starts_with("portcullis_http_request_duration_seconds_count"))
            .unwrap_or_else(|| panic!("no histogram count in:\n{text}"));
        assert!(count.ends_with(&format!(" {n}")), "{count}");
        let total = text
            .lines()
            .find(|l| l.starts_with("portcullis_http_requests_total"))
            .unwrap_or_else(|| panic!("no request counter in:\n{text}"));
        assert!(total.ends_with(&format!(" {n}")), "{total}");
    }
}
