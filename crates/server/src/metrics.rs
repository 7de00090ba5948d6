//! Prometheus metrics (WEB-9), one registry per server so that two servers in one process
//! (tests, `dev`) never mix their figures. HTTP latency and outcomes are recorded as requests
//! finish; the state figures (agents, queue depth, requests by state, audit head) are read
//! when `/metrics` is scraped, so nothing polls in the background.
//!
//! The recorder keeps each histogram sample until it is folded into the buckets, which only a
//! scrape or an upkeep does; a server nobody scrapes would keep one sample per HTTP request
//! forever. So every [`UPKEEP_EVERY`] requests fold the pending samples in: memory stays
//! bounded whether `/metrics` is scraped or not.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::http::Method;
use metrics::{Counter, Histogram, Key, Label, Level, Metadata, Recorder};
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
    /// The HTTP series registered so far, by route: a request finds its handles here
    /// without building a key or allocating.
    http: RwLock<HashMap<Box<str>, RouteSeries>>,
}

/// One route's HTTP series: latency by method, count by method and status.
#[derive(Default)]
struct RouteSeries {
    duration: Vec<(&'static str, Histogram)>,
    total: Vec<(&'static str, u16, Counter)>,
}

impl RouteSeries {
    /// Records one request; false when a series it needs is not registered yet.
    fn record(&self, method: &str, status: u16, seconds: f64) -> bool {
        let duration = self.duration.iter().find(|(m, _)| *m == method);
        let total = self
            .total
            .iter()
            .find(|(m, s, _)| *m == method && *s == status);
        match (duration, total) {
            (Some((_, duration)), Some((_, _, total))) => {
                duration.record(seconds);
                total.increment(1);
                true
            }
            _ => false,
        }
    }
}

/// The method's label: the standard methods by name, any other as `other`, so a client
/// sending made-up methods cannot add series without bound (WEB-9).
fn method_label(method: &Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "CONNECT" => "CONNECT",
        _ => "other",
    }
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
            http: RwLock::default(),
        }))
    }

    /// One finished HTTP request: `route` is the matched route pattern (never the raw path,
    /// which would let clients create unbounded label values).
    pub fn observe_http(&self, method: &Method, route: &str, status: u16, elapsed: Duration) {
        let method = method_label(method);
        let seconds = elapsed.as_secs_f64();
        let recorded = self
            .0
            .http
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(route)
            .is_some_and(|series| series.record(method, status, seconds));
        if !recorded && let Some(series) = self.register_http(method, route, status).get(route) {
            series.record(method, status, seconds);
        }
        // Exactly one request in every UPKEEP_EVERY folds the pending samples in.
        if self.0.observed.fetch_add(1, Ordering::Relaxed) % UPKEEP_EVERY == UPKEEP_EVERY - 1 {
            self.0.handle.run_upkeep();
            self.0.upkeeps.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Registers the series of `method`, `route` and `status` that are missing; returns the
    /// map still locked, so the caller records before anyone else reads it.
    fn register_http(
        &self,
        method: &'static str,
        route: &str,
        status: u16,
    ) -> std::sync::RwLockWriteGuard<'_, HashMap<Box<str>, RouteSeries>> {
        let mut http = self.0.http.write().unwrap_or_else(|e| e.into_inner());
        let series = http.entry(route.into()).or_default();
        let labels = vec![
            Label::new("method", method),
            Label::new("route", route.to_owned()),
        ];
        if !series.duration.iter().any(|(m, _)| *m == method) {
            let key = Key::from_parts("portcullis_http_request_duration_seconds", labels.clone());
            let duration = self.0.recorder.register_histogram(&key, &METADATA);
            series.duration.push((method, duration));
        }
        if !series
            .total
            .iter()
            .any(|(m, s, _)| *m == method && *s == status)
        {
            let mut labels = labels;
            labels.push(Label::new("status", status.to_string()));
            let key = Key::from_parts("portcullis_http_requests_total", labels);
            let total = self.0.recorder.register_counter(&key, &METADATA);
            series.total.push((method, status, total));
        }
        http
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

    /// WEB-9: a made-up method is counted as `other`, so clients cannot add series without
    /// bound; the standard ones keep their names, and each request is counted once.
    #[test]
    fn made_up_methods_share_one_series() {
        let metrics = Metrics::new();
        for i in 0..50 {
            let method = Method::from_bytes(format!("MADEUP{i}").as_bytes()).expect("method");
            metrics.observe_http(&method, "unmatched", 405, Duration::from_micros(100));
        }
        metrics.observe_http(&Method::GET, "unmatched", 404, Duration::from_micros(100));
        metrics.observe_http(&Method::GET, "unmatched", 404, Duration::from_micros(100));
        let text = metrics.0.handle.render();
        let totals: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("portcullis_http_requests_total{"))
            .collect();
        assert_eq!(totals.len(), 2, "{text}");
        assert!(
            totals.iter().any(|l| l.contains("method=\"other\"")
                && l.contains("status=\"405\"")
                && l.ends_with(" 50")),
            "{text}"
        );
        assert!(
            totals.iter().any(|l| l.contains("method=\"GET\"")
                && l.contains("status=\"404\"")
                && l.ends_with(" 2")),
            "{text}"
        );
        assert!(!text.contains("MADEUP"), "{text}");
    }
}
