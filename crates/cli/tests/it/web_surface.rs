//! The web surface of every response: security headers with a per-response CSP nonce
//! (WEB-1), CORS (WEB-2), body limits (WEB-3), correlation ids (WEB-5), panics as opaque
//! problem documents (WEB-6), embedded assets that no path can escape (WEB-7), health and
//! metrics (WEB-9), and the client address believed only through trusted proxies (NET-3).

use std::io::{Read, Write};
use std::time::Duration;

use portcullis_core::Role;
use reqwest::header::HeaderMap;

use crate::harness::{TestApp, bin};
use crate::two_process::{Running, free_port, wait_for};

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// WEB-1: the exact set of the product design, on any response.
fn assert_security_headers(h: &HeaderMap, what: &str) {
    let csp = h
        .get("content-security-policy")
        .unwrap_or_else(|| panic!("{what}: no CSP"))
        .to_str()
        .expect("ascii");
    assert!(
        csp.starts_with("default-src 'self'; script-src 'nonce-")
            && csp.ends_with(
                "' 'strict-dynamic'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
            ),
        "{what}: {csp}"
    );
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "strict-origin-when-cross-origin"),
        ("cross-origin-opener-policy", "same-origin"),
    ] {
        assert_eq!(
            h.get(name).map(|v| v.to_str().expect("ascii")),
            Some(value),
            "{what}: {name}"
        );
    }
    let pp = h
        .get("permissions-policy")
        .unwrap_or_else(|| panic!("{what}: no Permissions-Policy"))
        .to_str()
        .expect("ascii");
    for feature in [
        "camera=()",
        "microphone=()",
        "geolocation=()",
        "payment=()",
        "usb=()",
        "accelerometer=()",
        "gyroscope=()",
        "magnetometer=()",
    ] {
        assert!(pp.contains(feature), "{what}: {pp}");
    }
    assert!(h.contains_key("x-request-id"), "{what}: no X-Request-Id");
    // Plain HTTP on loopback: no HSTS.
    assert!(
        !h.contains_key("strict-transport-security"),
        "{what}: HSTS over plain HTTP"
    );
}

fn nonce(h: &HeaderMap) -> String {
    let csp = h["content-security-policy"].to_str().expect("ascii");
    let start = csp.find("'nonce-").expect("nonce") + 7;
    let end = start + csp[start..].find('\'').expect("end");
    csp[start..end].to_owned()
}

#[tokio::test]
async fn every_kind_of_response_carries_the_security_headers() {
    let app = TestApp::spawn().await;
    let (_, token) = app.token(Role::Viewer).await;
    let c = http();
    let url = app.url();
    let cases = [
        (
            "success",
            c.get(format!("{url}/api/v1/me")).bearer_auth(&token),
        ),
        ("unauthenticated", c.get(format!("{url}/api/v1/me"))),
        (
            "forbidden",
            c.get(format!("{url}/api/v1/users")).bearer_auth(&token),
        ),
        ("not found", c.get(format!("{url}/no/such/path"))),
        (
            "method not allowed",
            c.put(format!("{url}/api/v1/me")).bearer_auth(&token),
        ),
        ("health", c.get(format!("{url}/health"))),
        ("static page", c.get(format!("{url}/"))),
        ("static asset", c.get(format!("{url}/ui/app.js"))),
        (
            "bad request",
            c.post(format!("{url}/api/v1/requests"))
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body("{not json"),
        ),
    ];
    for (what, req) in cases {
        let resp = req.send().await.expect(what);
        assert_security_headers(resp.headers(), what);
        if what != "static asset" {
            assert_eq!(
                resp.headers()["cache-control"],
                "no-store",
                "{what}: API answers are never cached"
            );
        }
    }
}

#[tokio::test]
async fn the_csp_nonce_is_fresh_on_every_response_and_matches_the_page_script() {
    let app = TestApp::spawn().await;
    let c = http();
    let a = c.get(format!("{}/", app.url())).send().await.expect("page");
    let b = c.get(format!("{}/", app.url())).send().await.expect("page");
    let (na, nb) = (nonce(a.headers()), nonce(b.headers()));
    assert_ne!(na, nb);
    assert!(na.len() >= 22, "128-bit nonce: {na}");
    let body = a.text().await.expect("body");
    assert!(
        body.contains(&format!("<script nonce=\"{na}\" src=\"/ui/app.js\">")),
        "{body}"
    );
    assert!(!body.contains("{{nonce}}"));
}

#[tokio::test]
async fn hsts_is_sent_when_served_over_tls_and_headers_follow_the_configuration() {
    let app = TestApp::spawn_with(|o| {
        o.server.behind_tls_proxy = true;
        o.server.web.headers.x_frame_options = String::new();
        o.server.web.headers.referrer_policy = "no-referrer".into();
    })
    .await;
    let resp = http()
        .get(format!("{}/health", app.url()))
        .send()
        .await
        .expect("health");
    let h = resp.headers();
    assert_eq!(
        h["strict-transport-security"],
        "max-age=63072000; includeSubDomains"
    );
    assert!(!h.contains_key("x-frame-options"), "removed by config");
    assert_eq!(h["referrer-policy"], "no-referrer");
}

/// Finds the audit event of the request whose response carried `request_id`.
async fn event_of(app: &TestApp, request_id: &str) -> serde_json::Value {
    let export = app.admin.audit_export().await.expect("export");
    String::from_utf8(export)
        .expect("utf8")
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json line"))
        .find(|e| e["correlation_id"] == request_id)
        .unwrap_or_else(|| panic!("no audit event with correlation id {request_id}"))
}

/// Sends a refused request (its refusal is audited) with forwarding headers and returns the
/// echoed correlation id.
async fn refused_with_headers(app: &TestApp, headers: &[(&str, &str)]) -> String {
    let mut req = http()
        .get(format!("{}/api/v1/me", app.url()))
        .bearer_auth("pct_0000000000000000_not-a-real-token");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("send");
    assert_eq!(resp.status(), 401);
    resp.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned()
}

#[tokio::test]
async fn forwarding_headers_from_an_untrusted_peer_are_ignored() {
    let app = TestApp::spawn().await;
    let id = refused_with_headers(
        &app,
        &[
            ("x-forwarded-for", "198.51.100.7"),
            ("x-real-ip", "198.51.100.8"),
            ("x-request-id", "chosen-by-the-client"),
        ],
    )
    .await;
    assert_ne!(id, "chosen-by-the-client", "WEB-5: generated, not taken");
    let event = event_of(&app, &id).await;
    assert_eq!(event["client_addr"], "127.0.0.1", "NET-3: {event}");
}

#[tokio::test]
async fn forwarding_headers_from_a_trusted_proxy_name_the_client_and_the_correlation_id() {
    let app = TestApp::spawn_with(|o| {
        o.server.trusted_proxies = vec!["127.0.0.0/8".parse().expect("cidr")];
    })
    .await;
    let id = refused_with_headers(
        &app,
        &[
            ("x-forwarded-for", "203.0.113.50, 198.51.100.7"),
            ("x-request-id", "edge-4f2a"),
        ],
    )
    .await;
    assert_eq!(id, "edge-4f2a", "echoed from the trusted proxy");
    let event = event_of(&app, &id).await;
    assert_eq!(
        event["client_addr"], "198.51.100.7",
        "the right-most untrusted hop: {event}"
    );
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_with_a_problem_document() {
    let app = TestApp::spawn().await;
    let (_, token) = app.token(Role::Developer).await;
    let big = format!(
        "{{\"connection\":\"demo\",\"reason\":\"x\",\"statement\":\"{}\"}}",
        "a".repeat(1024 * 1024 + 1)
    );
    let c = http();
    // With a length: refused before the body is read.
    let resp = c
        .post(format!("{}/api/v1/requests", app.url()))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 413);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let problem: serde_json::Value = resp.json().await.expect("problem");
    assert_eq!(problem["code"], "payload_too_large", "{problem}");
    // Chunked, with no length to look at: refused while reading.
    let stream = futures_util::stream::iter(
        big.into_bytes()
            .chunks(64 * 1024)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let resp = c
        .post(format!("{}/api/v1/requests", app.url()))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 413);
    let problem: serde_json::Value = resp.json().await.expect("problem");
    assert_eq!(problem["code"], "payload_too_large", "{problem}");
    // Just under the limit is not refused for its size.
    let resp = c
        .post(format!("{}/api/v1/requests", app.url()))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{\"connection\":\"demo\",\"reason\":\"size\",\"statement\":\"SELECT 1\"}")
        .send()
        .await
        .expect("send");
    assert!(resp.status().is_success(), "{}", resp.status());
}

/// WEB-2, table-driven: (configured origins, request origin, expected Allow-Origin).
#[tokio::test]
async fn cors_preflights_answer_only_listed_origins_and_never_a_wildcard() {
    let allowed = "https://console.example.com";
    let configured = TestApp::spawn_with(|o| {
        o.server.web.cors_origins = vec![allowed.to_owned()];
    })
    .await;
    let default = TestApp::spawn().await;
    let cases: [(&TestApp, &str, Option<&str>); 5] = [
        (&configured, allowed, Some(allowed)),
        (&configured, "https://evil.example.com", None),
        (&configured, "https://console.example.com.evil.com", None),
        (&configured, "null", None),
        (&default, allowed, None),
    ];
    for (app, origin, expect) in cases {
        let resp = http()
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/api/v1/requests", app.url()),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
            .await
            .expect("preflight");
        let h = resp.headers();
        let got = h
            .get("access-control-allow-origin")
            .map(|v| v.to_str().expect("ascii"));
        assert_eq!(got, expect, "{origin}");
        assert_ne!(got, Some("*"));
        if expect.is_some() {
            assert_eq!(h["access-control-allow-credentials"], "true");
            let methods = h["access-control-allow-methods"].to_str().expect("ascii");
            assert!(methods.contains("POST"), "{methods}");
        }
        assert_security_headers(h, origin);
    }
}

/// Sends `path` byte for byte (no client-side normalisation) and returns status and body.
fn raw_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test(flavor = "multi_thread")]
async fn no_spelling_of_a_path_escapes_the_embedded_assets() {
    let app = TestApp::spawn().await;
    let addr = app.url().trim_start_matches("http://").to_owned();
    // The real file is served; then every trick to reach something else is a 404 (or a 400
    // for paths the HTTP parser refuses outright), and never the content of a file.
    let (status, body) = raw_get(&addr, "/ui/app.css");
    assert_eq!(status, 200, "{body}");
    let attempts = [
        "/ui/../Cargo.toml",
        "/ui/../../Cargo.toml",
        "/ui/..%2f..%2fCargo.toml",
        "/ui/%2e%2e/%2e%2e/Cargo.toml",
        "/ui/%2e%2e%2f%2e%2e%2fCargo.toml",
        "/ui/%252e%252e%252fCargo.toml",
        "/ui/..%5c..%5cCargo.toml",
        "/ui/..\\..\\Cargo.toml",
        "/ui//etc/passwd",
        "/ui/%2fetc%2fpasswd",
        "/ui/file:///etc/passwd",
        "/ui/app.css/../../../../etc/passwd",
        "/ui/./app.css/..",
        "/ui/%00app.css",
        "/ui/app.css%00.txt",
        "/ui/..;/Cargo.toml",
        "/ui/....//....//etc/passwd",
        "/ui/%c0%ae%c0%ae/Cargo.toml",
        "/ui/src/routes/assets.rs",
        "/ui/index.html",
    ];
    for path in attempts {
        let (status, body) = raw_get(&addr, path);
        assert!(
            status == 404 || status == 400,
            "{path}: status {status}: {body}"
        );
        for leak in ["[workspace]", "root:", "include_bytes", "fn lookup"] {
            assert!(!body.contains(leak), "{path} leaked {leak}");
        }
    }
}

#[tokio::test]
async fn a_panicking_handler_answers_an_opaque_500_with_an_error_id() {
    use axum::routing::get;
    let config = portcullis_server::ServerConfig::default();
    let router: axum::Router = portcullis_server::routes::web::harden(
        axum::Router::new().route(
            "/boom",
            get(|| async {
                if std::hint::black_box(true) {
                    panic!("secret detail: /etc/portcullis/master.key");
                }
                "unreachable"
            }),
        ),
        &config,
        portcullis_server::metrics::Metrics::new(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await;
    });
    let resp = http()
        .get(format!("http://{addr}/boom"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 500);
    assert_security_headers(resp.headers(), "panic");
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body = resp.text().await.expect("body");
    assert!(!body.contains("secret"), "{body}");
    assert!(!body.contains("/etc"), "{body}");
    assert!(!body.contains("panicked"), "{body}");
    let problem: serde_json::Value = serde_json::from_str(&body).expect("problem");
    assert_eq!(problem["code"], "internal");
    assert!(
        problem["error_id"]
            .as_str()
            .is_some_and(|id| id.len() == 36),
        "{problem}"
    );
    // The server survives its handler's panic.
    let again = http()
        .get(format!("http://{addr}/boom"))
        .send()
        .await
        .expect("send");
    assert_eq!(again.status(), 500);
    server.abort();
}

#[tokio::test]
async fn health_is_anonymous_and_bare_and_metrics_need_metrics_view() {
    let app = TestApp::spawn().await;
    let c = http();
    let health = c
        .get(format!("{}/health", app.url()))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.expect("body"), "ok");
    let ready = c
        .get(format!("{}/ready", app.url()))
        .send()
        .await
        .expect("ready");
    assert_eq!(ready.status(), 200);

    let anonymous = c
        .get(format!("{}/metrics", app.url()))
        .send()
        .await
        .expect("metrics");
    assert_eq!(anonymous.status(), 401);
    let (_, viewer) = app.token(Role::Viewer).await;
    let refused = c
        .get(format!("{}/metrics", app.url()))
        .bearer_auth(&viewer)
        .send()
        .await
        .expect("metrics");
    assert_eq!(refused.status(), 403);

    // Some traffic, then the figures.
    app.exec(&app.admin, "SELECT 1").await.expect("read");
    let (_, admin_token) = (0, app.stack.admin_token.clone());
    let resp = c
        .get(format!("{}/metrics", app.url()))
        .bearer_auth(&admin_token)
        .send()
        .await
        .expect("metrics");
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/plain; version=0.0.4")
    );
    let text = resp.text().await.expect("body");
    for needle in [
        "portcullis_http_request_duration_seconds_bucket{method=\"POST\",route=\"/api/v1/requests\",le=",
        "portcullis_http_requests_total{method=\"POST\",route=\"/api/v1/requests\",status=\"201\"}",
        "portcullis_requests{state=\"succeeded\"} 1",
        "portcullis_requests{state=\"pending_approval\"} 0",
        "portcullis_connected_agents 1",
        "portcullis_queue_depth 0",
        "portcullis_audit_head_sequence ",
    ] {
        assert!(text.contains(needle), "missing {needle}:\n{text}");
    }
    // Unmatched paths share one label value: clients cannot grow the label set.
    c.get(format!("{}/random/{}", app.url(), uuid::Uuid::new_v4()))
        .send()
        .await
        .expect("404");
    let text = c
        .get(format!("{}/metrics", app.url()))
        .bearer_auth(&admin_token)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    assert!(text.contains("route=\"unmatched\""), "{text}");
    assert!(!text.contains("/random/"), "{text}");
}

/// WEB-5 and logs: each line logged while a request is handled carries its correlation id,
/// in JSON when asked for.
#[tokio::test(flavor = "multi_thread")]
async fn json_log_lines_carry_the_correlation_id_of_their_request() {
    let dir = tempfile::tempdir().expect("temp");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let log = dir.path().join("server.log");
    let _dev = Running(
        bin()
            .args(["dev", "--listen", &format!("127.0.0.1:{port}"), "--data"])
            .arg(dir.path().join("data"))
            .env("PORTCULLIS_LOG", "info,portcullis_server=debug,sqlx=warn")
            .env("PORTCULLIS_LOG_FORMAT", "json")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn dev"),
    );
    wait_for("dev mode", || crate::two_process::probe::health_ok(&url));
    let resp = http()
        .get(format!("{url}/api/v1/me?secret=hunter2"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 401);
    let id = resp.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let mut found = None;
    wait_for("the access log line", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        found = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| {
                l["span"]["request_id"] == id.as_str() && l["fields"]["message"] == "http request"
            });
        found.is_some()
    });
    let line = found.expect("found");
    assert_eq!(line["fields"]["path"], "/api/v1/me", "{line}");
    assert_eq!(line["fields"]["status"], 401, "{line}");
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(!text.contains("hunter2"), "query strings are never logged");
}
