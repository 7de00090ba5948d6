//! The outer layer of every response: who the client is (NET-3), the correlation id (WEB-5),
//! the security headers with a fresh CSP nonce (WEB-1), CORS (WEB-2), the early body-size
//! refusal (WEB-3), panics turned into opaque problem documents (WEB-6) and the HTTP metrics
//! (WEB-9). Everything that can be computed once is computed when the router is built: a
//! request costs a few header inserts and one random nonce, never a parse of the config.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, MatchedPath, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ipnet::IpNet;
use rand::RngExt;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::Instrument;

use crate::ServerConfig;
use crate::audit::Context;
use crate::config::HeaderSettings;
use crate::error::ApiError;
use crate::metrics::Metrics;

pub(crate) static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static HSTS: HeaderName = HeaderName::from_static("strict-transport-security");
static PERMISSIONS_POLICY: HeaderName = HeaderName::from_static("permissions-policy");
static COOP: HeaderName = HeaderName::from_static("cross-origin-opener-policy");

/// The CSP nonce of this response, for pages that carry inline or loaded scripts.
#[derive(Debug, Clone)]
pub struct CspNonce(pub String);

/// The security headers, parsed once from `web.headers` (WEB-1). `None` means the operator
/// removed the header with an empty string.
#[derive(Debug, Clone)]
struct SecurityHeaders {
    /// The CSP before and after its `{nonce}` placeholder (no suffix: no placeholder).
    csp: Option<(String, Option<String>)>,
    hsts: Option<HeaderValue>,
    fixed: Vec<(HeaderName, HeaderValue)>,
    cache_control: Option<HeaderValue>,
}

fn value(raw: &str) -> Option<HeaderValue> {
    if raw.is_empty() {
        return None;
    }
    // `ServerConfig::validate` refused values that are not valid header values.
    HeaderValue::from_str(raw).ok()
}

impl SecurityHeaders {
    fn new(h: &HeaderSettings, tls: bool) -> SecurityHeaders {
        let csp = (!h.content_security_policy.is_empty()).then(|| {
            match h.content_security_policy.split_once("{nonce}") {
                Some((a, b)) => (a.to_owned(), Some(b.to_owned())),
                None => (h.content_security_policy.clone(), None),
            }
        });
        let fixed = [
            (
                header::X_CONTENT_TYPE_OPTIONS,
                value(&h.x_content_type_options),
            ),
            (header::X_FRAME_OPTIONS, value(&h.x_frame_options)),
            (header::REFERRER_POLICY, value(&h.referrer_policy)),
            (PERMISSIONS_POLICY.clone(), value(&h.permissions_policy)),
            (COOP.clone(), value(&h.cross_origin_opener_policy)),
        ]
        .into_iter()
        .filter_map(|(n, v)| v.map(|v| (n, v)))
        .collect();
        SecurityHeaders {
            csp,
            // HSTS over plain HTTP is ignored by browsers at best and pins a mistake at worst.
            hsts: if tls {
                value(&h.strict_transport_security)
            } else {
                None
            },
            fixed,
            cache_control: value(&h.cache_control),
        }
    }

    fn apply(&self, headers: &mut HeaderMap, nonce: &str) {
        if let Some((a, b)) = &self.csp {
            let csp = match b {
                Some(b) => format!("{a}{nonce}{b}"),
                None => a.clone(),
            };
            if let Ok(v) = HeaderValue::from_str(&csp) {
                headers.insert(header::CONTENT_SECURITY_POLICY, v);
            }
        }
        if let Some(v) = &self.hsts {
            headers.insert(HSTS.clone(), v.clone());
        }
        for (n, v) in &self.fixed {
            headers.insert(n.clone(), v.clone());
        }
        // Static assets set their own caching; everything else is an API answer and is
        // never stored by a browser or a shared cache.
        if let Some(v) = &self.cache_control
            && !headers.contains_key(header::CACHE_CONTROL)
        {
            headers.insert(header::CACHE_CONTROL, v.clone());
        }
    }
}

/// Who may speak for the client: the peers in `trusted_proxies` (NET-3).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(nets: &[IpNet]) -> TrustedProxies {
        TrustedProxies(nets.to_vec())
    }

    /// Whether `ip` (already canonical: an IPv4 peer as IPv4) is a trusted proxy.
    pub(crate) fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The client address: the peer itself unless the peer is a trusted proxy; then the
    /// right-most address in `X-Forwarded-For` that is not a trusted proxy (each proxy appends
    /// the address it saw, so entries left of an untrusted hop are the client's own claims),
    /// or `X-Real-IP` when there is no `X-Forwarded-For`. An entry that does not parse ends
    /// the walk at the last address that did: a garbled header can never name an address.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        let hops: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        if hops.is_empty() {
            return headers
                .get(&X_REAL_IP)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_hop)
                .unwrap_or(peer);
        }
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Some(ip) = parse_hop(hop) else {
                return client;
            };
            client = ip;
            if !self.trusts(ip) {
                return ip;
            }
        }
        client
    }

    /// A correlation id is taken from the request only when a trusted proxy sent it, and only
    /// when it is short and plain (it is copied into logs and the audit chain).
    fn request_id(&self, peer: IpAddr, headers: &HeaderMap) -> Option<String> {
        if !self.trusts(peer.to_canonical()) {
            return None;
        }
        let v = headers.get(&REQUEST_ID)?.to_str().ok()?;
        valid_request_id(v).then(|| v.to_owned())
    }
}

/// `[A-Za-z0-9._:-]{1,128}`.
pub fn valid_request_id(v: &str) -> bool {
    (1..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// One `X-Forwarded-For` entry: an address, optionally with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    hop.parse::<SocketAddr>()
        .ok()
        .map(|s| s.ip().to_canonical())
}

/// What the outer middleware needs, built once.
#[derive(Clone)]
struct Surface {
    headers: Arc<SecurityHeaders>,
    proxies: Arc<TrustedProxies>,
    body_limit: usize,
    body_timeout: std::time::Duration,
    metrics: Metrics,
}

/// Routes whose bodies stream under their own limit (agent result uploads and reports).
fn own_body_limit(path: &str) -> bool {
    path.starts_with("/api/v1/agent/jobs/")
}

/// Wraps the routed application in the web-surface layers. Also used by tests that need a
/// handler the production table does not have (a panicking one).
pub fn harden<S>(router: Router<S>, config: &ServerConfig, metrics: Metrics) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let tls = config.tls_cert_file.is_some() || config.behind_tls_proxy;
    let surface = Surface {
        headers: Arc::new(SecurityHeaders::new(&config.web.headers, tls)),
        proxies: Arc::new(TrustedProxies::new(&config.trusted_proxies)),
        body_limit: config.web.body_limit_bytes,
        body_timeout: std::time::Duration::from_secs(config.web.body_read_timeout_secs),
        metrics,
    };
    let mut router = router.layer(CatchPanicLayer::custom(panic_response));
    if let Some(cors) = cors_layer(&config.web.cors_origins) {
        router = router.layer(cors);
    }
    router.layer(middleware::from_fn(move |req: Request, next: Next| {
        let surface = surface.clone();
        async move { surface.handle(req, next).await }
    }))
}

/// WEB-2: only the listed origins, and credentials never with a wildcard (which the config
/// refuses). No list, no CORS headers at all: browsers then keep other sites out.
fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    if origins.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                REQUEST_ID.clone(),
            ])
            .expose_headers([
                REQUEST_ID.clone(),
                header::RETRY_AFTER,
                HeaderName::from_static("x-ratelimit-limit"),
                HeaderName::from_static("x-ratelimit-remaining"),
                HeaderName::from_static("x-ratelimit-reset"),
            ])
            .allow_credentials(true)
            .max_age(std::time::Duration::from_secs(600)),
    )
}

/// WEB-6: the panic's message goes to the log under an error id, never to the client.
fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned());
    ApiError::Internal(anyhow::anyhow!("handler panicked: {message}")).into_response()
}

impl Surface {
    async fn handle(&self, mut req: Request, next: Next) -> Response {
        let started = Instant::now();
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(a)| a.ip());
        let (client_addr, correlation_id) = match peer {
            Some(peer) => (
                self.proxies.client_ip(peer, req.headers()).to_string(),
                self.proxies.request_id(peer, req.headers()),
            ),
            None => ("-".to_owned(), None),
        };
        let correlation_id = correlation_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let nonce = {
            let bytes: [u8; 16] = rand::rng().random();
            STANDARD.encode(bytes)
        };
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map_or("unmatched", |m| m.as_str())
            .to_owned();
        let method = req.method().clone();
        let span = tracing::info_span!("http", request_id = %correlation_id, client = %client_addr);
        // The access log (DEBUG): method, path (never a query string), status, time. Nothing is
        // copied when it is off.
        let path = tracing::enabled!(tracing::Level::DEBUG)
            .then(|| req.uri().path().chars().take(200).collect::<String>());
        req.extensions_mut().insert(Context {
            correlation_id: correlation_id.clone(),
            client_addr,
        });
        req.extensions_mut().insert(CspNonce(nonce.clone()));

        let own_limit = own_body_limit(req.uri().path());
        let too_large = !own_limit
            && req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .is_some_and(|n| n > self.body_limit as u64);
        let mut response = if too_large {
            // WEB-3: refused before a byte of the body is read.
            ApiError::PayloadTooLarge.into_response()
        } else {
            let req = if own_limit {
                req
            } else {
                req.map(|body| super::deadline::within(body, self.body_timeout))
            };
            next.run(req).instrument(span.clone()).await
        };
        let status = response.status().as_u16();
        let elapsed = started.elapsed();
        self.metrics.observe_http(&method, &route, status, elapsed);
        if let Some(path) = path {
            span.in_scope(|| {
                tracing::debug!(%method, %path, status, elapsed_us = elapsed.as_micros() as u64, "http request");
            });
        }
        let headers = response.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&correlation_id) {
            headers.insert(REQUEST_ID.clone(), v);
        }
        self.headers.apply(headers, &nonce);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    /// NET-3, table-driven: (trusted CIDRs, peer, headers, expected client address).
    #[test]
    #[allow(clippy::type_complexity)]
    fn the_client_address_comes_from_forwarding_headers_only_through_trusted_proxies() {
        let cases: &[(&[&str], &str, &[(&str, &str)], &str)] = &[
            // An untrusted peer's headers are ignored, whatever they claim.
            (
                &[],
                "203.0.113.9",
                &[("x-forwarded-for", "1.2.3.4")],
                "203.0.113.9",
            ),
            (
                &["10.0.0.0/8"],
                "203.0.113.9",
                &[("x-forwarded-for", "1.2.3.4")],
                "203.0.113.9",
            ),
            (
                &["10.0.0.0/8"],
                "203.0.113.9",
                &[("x-real-ip", "1.2.3.4")],
                "203.0.113.9",
            ),
            // A trusted proxy: the right-most untrusted hop.
            (
                &["10.0.0.0/8"],
                "10.0.0.1",
                &[("x-forwarded-for", "1.2.3.4")],
                "1.2.3.4",
            ),
            (
                &["10.0.0.0/8"],
                "10.0.0.1",
                &[("x-forwarded-for", "6.6.6.6, 1.2.3.4, 10.0.0.7")],
                "1.2.3.4",
            ),
            // Several header lines are one list, in order.
            (
                &["10.0.0.0/8"],
                "10.0.0.1",
                &[
                    ("x-forwarded-for", "6.6.6.6"),
                    ("x-forwarded-for", "1.2.3.4"),
                ],
                "1.2.3.4",
            ),
            // Every hop trusted: the left-most.
            (
                &["10.0.0.0/8"],
                "10.0.0.1",
                &[("x-forwarded-for", "10.1.1.1, 10.2.2.2")],
                "10.1.1.1",
            ),
            // Garbage stops the walk at the last address that parsed.
            (
                &["10.0.0.0/8"],
                "10.0.0.1",
                &[("x-forwarded-for", "1.2.3.4, nonsense")],
                "10.0.0.1",
            ),
            (
                &["10.0.0.0/8"],
                "10.0.0.1",
                &[("x-forwarded-for", "1.2.3.4, nonsense, 10.0.0.9")],
                "10.0.0.9",
            ),
            // Ports and IPv6.
            (
                &["10.0.0.0/8"],
                "10.0.0.1",
                &[("x-forwarded-for", "1.2.3.4:5678")],
                "1.2.3.4",
            ),
            (
                &["::1/128"],
                "::1",
                &[("x-forwarded-for", "[2001:db8::1]:443")],
                "2001:db8::1",
            ),
            // X-Real-IP only without X-Forwarded-For, and only from a trusted proxy.
            (
                &["10.0.0.0/8"],
                "10.0.0.1",
                &[("x-real-ip", "1.2.3.4")],
                "1.2.3.4",
            ),
            (
                &["10.0.0.0/8"],
                "10.0.0.1",
                &[("x-real-ip", "bogus")],
                "10.0.0.1",
            ),
            // IPv4-mapped IPv6 peers are the IPv4 address.
            (
                &["10.0.0.0/8"],
                "::ffff:10.0.0.1",
                &[("x-forwarded-for", "1.2.3.4")],
                "1.2.3.4",
            ),
        ];
        for (nets, peer, hdrs, expect) in cases {
            let nets: Vec<IpNet> = nets.iter().map(|n| n.parse().expect("net")).collect();
            let got = TrustedProxies::new(&nets).client_ip(ip(peer), &headers(hdrs));
            assert_eq!(got, ip(expect), "{nets:?} {peer} {hdrs:?}");
        }
    }

    #[test]
    fn a_request_id_is_believed_only_from_a_trusted_proxy_and_only_when_plain() {
        let proxies = TrustedProxies::new(&["10.0.0.0/8".parse().expect("net")]);
        let h = headers(&[("x-request-id", "abc-123")]);
        assert_eq!(
            proxies.request_id(ip("10.0.0.1"), &h).as_deref(),
            Some("abc-123")
        );
        assert_eq!(proxies.request_id(ip("192.0.2.1"), &h), None);
        for bad in ["", "has space", "semi;colon", &"x".repeat(129)] {
            let h = headers(&[("x-request-id", bad)]);
            assert_eq!(proxies.request_id(ip("10.0.0.1"), &h), None, "{bad:?}");
        }
    }

    #[test]
    fn hsts_is_sent_only_over_tls_and_an_empty_setting_removes_a_header() {
        let mut settings = HeaderSettings::default();
        let mut h = HeaderMap::new();
        SecurityHeaders::new(&settings, false).apply(&mut h, "n0nce");
        assert!(!h.contains_key(&HSTS));
        assert!(
            h[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .expect("ascii")
                .contains("'nonce-n0nce'")
        );
        let mut h = HeaderMap::new();
        SecurityHeaders::new(&settings, true).apply(&mut h, "n0nce");
        assert_eq!(h[&HSTS], "max-age=63072000; includeSubDomains");
        settings.x_frame_options = String::new();
        settings.referrer_policy = "no-referrer".into();
        let mut h = HeaderMap::new();
        SecurityHeaders::new(&settings, true).apply(&mut h, "n");
        assert!(!h.contains_key(header::X_FRAME_OPTIONS));
        assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
    }
}
