//! WEB-4 over real HTTP: sliding-window limits keyed by client address when unauthenticated
//! and by principal when authenticated, the stricter hourly sign-in and token-creation
//! buckets, `429` with `Retry-After` and the `X-RateLimit-*` headers, agents never starved by
//! the per-user limit, and the Redis backend shared by two servers and failing closed.

use std::sync::{Arc, Mutex};

use portcullis_core::{RequestState, Role};
use portcullis_proto::api::CreateToken;
use portcullis_proto::{ErrorCode, Problem};
use portcullis_server::config::{RateLimitBackend, RateLimitSettings};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::TestApp;

const REDIS: &str = "127.0.0.1:6379";

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

fn header(h: &HeaderMap, name: &str) -> u64 {
    h.get(name)
        .unwrap_or_else(|| panic!("no {name}"))
        .to_str()
        .expect("ascii")
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not a number"))
}

/// `GET path` with an optional bearer and extra header: status, headers and body.
async fn get(
    url: &str,
    bearer: Option<&str>,
    extra: Option<(&str, &str)>,
) -> (StatusCode, HeaderMap, Vec<u8>) {
    let mut rb = http().get(url);
    if let Some(b) = bearer {
        rb = rb.bearer_auth(b);
    }
    if let Some((name, value)) = extra {
        rb = rb.header(name, value);
    }
    let r = rb.send().await.expect("send");
    let (status, headers) = (r.status(), r.headers().clone());
    (status, headers, r.bytes().await.expect("body").to_vec())
}

/// Asserts a WEB-4 refusal: 429, `Retry-After`, the headers, and the stable code with the
/// bucket as reason.
/// The window of the tests that count calls against a limit: one the test does not cross the
/// end of. Just past a window's end the sliding window weighs the last window's full count a
/// hair under the limit, which admits one more call (as designed); a 60 s window put that end
/// between a test's calls about once in a thousand runs.
const LONG_WINDOW_SECS: u64 = 86_400;

fn assert_refused(status: StatusCode, h: &HeaderMap, body: &[u8], limit: u64, bucket: &str) {
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let retry = header(h, "retry-after");
    assert!(retry >= 1, "Retry-After {retry}");
    assert_eq!(header(h, "x-ratelimit-limit"), limit);
    assert_eq!(header(h, "x-ratelimit-remaining"), 0);
    assert!(header(h, "x-ratelimit-reset") >= 1);
    let problem: Problem = serde_json::from_slice(body).expect("problem document");
    assert_eq!(problem.code, ErrorCode::RateLimited);
    assert_eq!(problem.status, 429);
    assert_eq!(problem.reason.as_deref(), Some(bucket));
}

/// WEB-4: a client address without a credential gets `anonymous` requests per window on the
/// public routes, each answer saying how many are left; the next is refused.
#[tokio::test]
async fn anonymous_requests_beyond_the_address_limit_are_refused_with_retry_after_and_headers() {
    let app = TestApp::spawn_with(|o| o.server.rate_limit.anonymous = 3).await;
    let url = format!("{}/health", app.url());
    for left in [2, 1, 0] {
        let (status, h, _) = get(&url, None, None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(header(&h, "x-ratelimit-limit"), 3);
        assert_eq!(header(&h, "x-ratelimit-remaining"), left);
        let reset = header(&h, "x-ratelimit-reset");
        assert!((1..=60).contains(&reset), "reset {reset}");
    }
    let (status, h, body) = get(&url, None, None).await;
    assert_refused(status, &h, &body, 3, "anonymous");
    let retry = header(&h, "retry-after");
    assert!(retry <= 61, "within a window and a millisecond: {retry}");
    // The address's refusal says nothing about an authenticated principal from it.
    assert!(app.admin.whoami().await.is_ok());
    app.stop().await;
}

/// WEB-4: the address is the client's as NET-3 resolves it, so clients behind one trusted
/// proxy do not share a budget.
#[tokio::test]
async fn clients_behind_a_trusted_proxy_are_limited_each_by_their_own_address() {
    let app = TestApp::spawn_with(|o| {
        o.server.rate_limit.anonymous = 2;
        o.server.rate_limit.window_secs = LONG_WINDOW_SECS;
        o.server.trusted_proxies = vec!["127.0.0.1/32".parse().expect("cidr")];
    })
    .await;
    let url = format!("{}/health", app.url());
    let first = Some(("x-forwarded-for", "192.0.2.10"));
    for _ in 0..2 {
        assert_eq!(get(&url, None, first).await.0, StatusCode::OK);
    }
    let (status, h, body) = get(&url, None, first).await;
    assert_refused(status, &h, &body, 2, "anonymous");
    let (status, h, _) = get(&url, None, Some(("x-forwarded-for", "192.0.2.11"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&h, "x-ratelimit-remaining"), 1);
    app.stop().await;
}

/// WEB-4: a refused credential counts against its address, and once the address is limited
/// the refusals stop reaching the audit chain (no audit flood).
#[tokio::test]
async fn refused_credentials_count_against_the_address_and_stop_being_audited_once_limited() {
    let app = TestApp::spawn_with(|o| {
        o.server.rate_limit.anonymous = 3;
        o.server.rate_limit.window_secs = LONG_WINDOW_SECS;
    })
    .await;
    let url = format!("{}/api/v1/me", app.url());
    let bogus = "pct_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let (status, h, body) = get(&url, Some(bogus), None).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert_refused(status, &h, &body, 3, "anonymous");
        }
        statuses.push(status.as_u16());
    }
    assert_eq!(statuses, [401, 401, 401, 429, 429, 429]);
    // No credential at all is the same address's budget.
    let (status, h, body) = get(&url, None, None).await;
    assert_refused(status, &h, &body, 3, "anonymous");
    let failures = app
        .audit_events()
        .await
        .into_iter()
        .filter(|e| e["action"] == "auth.failed")
        .count();
    assert_eq!(failures, 3, "only the admitted attempts are audited");
    app.stop().await;
}

/// WEB-4: sign-in attempts have their own hourly bucket per address, stricter than the
/// general one: it refuses while the address may still call everything else.
#[tokio::test]
async fn sign_in_attempts_are_refused_by_the_stricter_login_bucket_first() {
    let app = TestApp::spawn_with(|o| {
        o.server.rate_limit.anonymous = 100;
        o.server.rate_limit.login_per_hour = 2;
    })
    .await;
    let login = format!("{}/api/v1/login", app.url());
    let body = serde_json::json!({ "name": "nobody", "password": "not the password" });
    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..3 {
        let r = http().post(&login).json(&body).send().await.expect("send");
        statuses.push(r.status().as_u16());
        last = Some((
            r.status(),
            r.headers().clone(),
            r.bytes().await.expect("body"),
        ));
    }
    assert_eq!(statuses, [401, 401, 429]);
    let (status, h, body) = last.expect("three answers");
    assert_refused(status, &h, &body, 2, "login");
    let retry = header(&h, "retry-after");
    // An hourly bucket: its windows are clock hours, and with both attempts spent the next
    // one is admitted as the current hour ends (sliding window), however near that is.
    let hour_left = 3600
        - std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs()
            % 3600;
    assert!(
        retry.abs_diff(hour_left) <= 2,
        "an hourly bucket: retry after {retry} s, {hour_left} s left in the hour"
    );
    let (status, h, _) = get(&format!("{}/health", app.url()), None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(header(&h, "x-ratelimit-remaining") > 90);
    app.stop().await;
}

/// WEB-4: API token creation is limited per person, 5 an hour by default; the sixth is
/// refused while everything else the person does still works.
#[tokio::test]
async fn the_sixth_token_created_within_an_hour_is_refused() {
    let default = RateLimitSettings::default().token_create_per_hour;
    assert_eq!(default, 5);
    let app = TestApp::spawn_with(|o| o.server.rate_limit.token_create_per_hour = default).await;
    let new = |i: usize| CreateToken {
        name: format!("ci-{i}"),
        role: Role::Ci,
        ttl_seconds: 3_600,
        environments: None,
    };
    for i in 0..5 {
        app.admin
            .create_token(&new(i))
            .await
            .expect("within the limit");
    }
    let refused = app.admin.create_token(&new(5)).await.expect_err("sixth");
    assert_eq!(refused.code(), Some(ErrorCode::RateLimited));
    assert_eq!(refused.status(), Some(429));
    // Raw, for the headers: the token-creation bucket is the one reported.
    let r = http()
        .post(format!("{}/api/v1/tokens", app.url()))
        .bearer_auth(&app.stack.admin_token)
        .json(&new(6))
        .send()
        .await
        .expect("send");
    let (status, h) = (r.status(), r.headers().clone());
    assert_refused(
        status,
        &h,
        &r.bytes().await.expect("body"),
        5,
        "token_creation",
    );
    assert!(app.admin.whoami().await.is_ok());
    assert_eq!(
        app.admin.list_tokens(false).await.expect("list").len(),
        5 + 1,
        "five created and the admin's own"
    );
    app.stop().await;
}

/// WEB-4: the token-creation budget is the owner's, and only attempts the caller may make
/// use it: a weaker token of the same person, refused with 403, leaves it whole.
#[tokio::test]
async fn refused_creations_by_a_weaker_token_leave_the_owner_s_budget_whole() {
    let default = RateLimitSettings::default().token_create_per_hour;
    let app = TestApp::spawn_with(|o| o.server.rate_limit.token_create_per_hour = default).await;
    let (viewer, _) = app.token(Role::Viewer).await;
    let new = |i: usize| CreateToken {
        name: format!("ci-{i}"),
        role: Role::Ci,
        ttl_seconds: 3_600,
        environments: None,
    };
    for i in 0..8 {
        let e = viewer.create_token(&new(i)).await.expect_err("viewer");
        assert_eq!(e.code(), Some(ErrorCode::Forbidden), "attempt {i}");
    }
    // The viewer token itself was the first creation; four more fit.
    for i in 0..4 {
        app.admin
            .create_token(&new(i))
            .await
            .expect("within the limit");
    }
    let refused = app.admin.create_token(&new(4)).await.expect_err("sixth");
    assert_eq!(refused.code(), Some(ErrorCode::RateLimited));
    app.stop().await;
}

/// WEB-4: an authenticated limit belongs to the principal: one token reaching it leaves
/// another token's budget whole, whatever address they share.
#[tokio::test]
async fn each_token_has_its_own_authenticated_limit() {
    let app = TestApp::spawn_with(|o| {
        o.server.rate_limit.authenticated = 3;
        o.server.rate_limit.window_secs = LONG_WINDOW_SECS;
    })
    .await;
    let (_, first) = app.token(Role::Developer).await;
    let (_, second) = app.token(Role::Viewer).await;
    let me = format!("{}/api/v1/me", app.url());
    for left in [2, 1, 0] {
        let (status, h, _) = get(&me, Some(&first), None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(header(&h, "x-ratelimit-remaining"), left);
    }
    let (status, h, body) = get(&me, Some(&first), None).await;
    assert_refused(status, &h, &body, 3, "authenticated");
    let (status, h, _) = get(&me, Some(&second), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&h, "x-ratelimit-remaining"), 2);
    app.stop().await;
}

/// WEB-4: an agent works for every user at once, so it is not held to the per-user limit:
/// with room for 3 calls per user per window, jobs needing far more agent calls all run,
/// while each user is still held to 3.
#[tokio::test]
async fn agents_are_not_starved_by_the_per_user_limit() {
    let app = TestApp::spawn_with(|o| {
        o.server.rate_limit.authenticated = 3;
        o.server.rate_limit.window_secs = LONG_WINDOW_SECS;
    })
    .await;
    let (a, _) = app.token(Role::Developer).await;
    let (b, _) = app.token(Role::Viewer).await;
    for client in [&a, &b] {
        for _ in 0..3 {
            let outcome = app.exec(client, "SELECT 1").await.expect("admitted");
            assert_eq!(outcome.request.state, RequestState::Succeeded);
        }
        let refused = app.exec(client, "SELECT 1").await.expect_err("fourth");
        assert_eq!(refused.code(), Some(ErrorCode::RateLimited));
    }
    app.stop().await;
}

/// Sends one command to the real Redis (RESP, by hand: this crate has no Redis client) and
/// returns its integer reply.
async fn redis_integer(args: &[&str]) -> i64 {
    let mut c = tokio::net::TcpStream::connect(REDIS)
        .await
        .expect("redis at 127.0.0.1:6379");
    let mut cmd = format!("*{}\r\n", args.len());
    for a in args {
        cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    c.write_all(cmd.as_bytes()).await.expect("write");
    let mut reply = Vec::new();
    while !reply.ends_with(b"\r\n") {
        let mut byte = [0u8; 1];
        c.read_exact(&mut byte).await.expect("read");
        reply.push(byte[0]);
    }
    let text = String::from_utf8(reply).expect("utf8");
    text.trim()
        .strip_prefix(':')
        .unwrap_or_else(|| panic!("not an integer reply: {text}"))
        .parse()
        .expect("integer")
}

/// Deletes every key under `prefix`; returns how many there were.
async fn delete_prefix(prefix: &str) -> i64 {
    const DELETE: &str = "local n = 0 for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) n = n + 1 end return n";
    redis_integer(&["EVAL", DELETE, "0", &format!("{prefix}*")]).await
}

fn redis_options(prefix: &str, url: &str) -> impl FnOnce(&mut portcullis::devstack::DevOptions) {
    let (prefix, url) = (prefix.to_owned(), url.to_owned());
    move |o| {
        let r = &mut o.server.rate_limit;
        r.backend = RateLimitBackend::Redis;
        r.redis_url = Some(url);
        r.redis_prefix = prefix;
        r.anonymous = 3;
        // The counts are asserted call by call: a 60 s window's end between two calls
        // admits one more (see LONG_WINDOW_SECS).
        r.window_secs = LONG_WINDOW_SECS;
    }
}

/// WEB-4: with the Redis backend two servers (replicas) share one count: an address that
/// used its budget on one is refused by the other.
#[tokio::test]
async fn with_the_redis_backend_two_servers_share_one_count() {
    let prefix = format!("portcullis-test:rl:{}:", uuid::Uuid::new_v4().simple());
    let redis_url = format!("redis://{REDIS}");
    let one = TestApp::spawn_with(redis_options(&prefix, &redis_url)).await;
    let two = TestApp::spawn_with(redis_options(&prefix, &redis_url)).await;
    for left in [2, 1, 0] {
        let (status, h, _) = get(&format!("{}/health", one.url()), None, None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(header(&h, "x-ratelimit-remaining"), left);
    }
    let (status, h, body) = get(&format!("{}/health", two.url()), None, None).await;
    assert_refused(status, &h, &body, 3, "anonymous");
    one.stop().await;
    two.stop().await;
    assert!(
        delete_prefix(&prefix).await > 0,
        "the counts were kept in Redis under the prefix"
    );
}

/// WEB-4: a server whose Redis goes away refuses requests (503) rather than admitting them
/// unlimited.
#[tokio::test]
async fn with_the_redis_backend_a_server_fails_closed_when_redis_goes_away() {
    let prefix = format!("portcullis-test:rl:{}:", uuid::Uuid::new_v4().simple());
    let relay = Relay::start().await;
    let app = TestApp::spawn_with(redis_options(&prefix, &relay.url())).await;
    let url = format!("{}/health", app.url());
    assert_eq!(get(&url, None, None).await.0, StatusCode::OK);
    relay.stop().await;
    let (status, _, body) = get(&url, None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let problem: Problem = serde_json::from_slice(&body).expect("problem document");
    assert_eq!(problem.code, ErrorCode::Unavailable);
    let refused = app
        .admin
        .whoami()
        .await
        .expect_err("no limiter, no service");
    assert_eq!(refused.status(), Some(503));
    app.stop().await;
    delete_prefix(&prefix).await;
}

/// WEB-4: a server told to keep its limits in Redis does not start without reaching it.
#[tokio::test]
async fn with_the_redis_backend_a_server_does_not_start_without_redis() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let dir = tempfile::tempdir().expect("dir");
    let mut opts = portcullis::devstack::DevOptions::new(
        "127.0.0.1:0".parse().expect("addr"),
        dir.path().join("data"),
    );
    redis_options("unused:", &format!("redis://127.0.0.1:{port}"))(&mut opts);
    let err = match portcullis::devstack::DevStack::start(opts).await {
        Ok(_) => panic!("started without its Redis"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("rate limiting (WEB-4)"), "{err}");
    assert!(err.contains("rate_limit.redis_url"), "{err}");
}

/// A TCP relay to the real Redis that can be stopped, closing every connection through it:
/// Redis going away for one server, without touching the Redis other tests use.
struct Relay {
    port: u16,
    task: tokio::task::JoinHandle<()>,
    connections: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start() -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let connections: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let held = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let pipe = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(REDIS).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                held.lock().expect("lock").push(pipe);
            }
        });
        Relay {
            port,
            task,
            connections,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
        let pipes: Vec<_> = self.connections.lock().expect("lock").drain(..).collect();
        // Awaited, so that every relayed socket is closed when this returns.
        for pipe in pipes {
            pipe.abort();
            let _ = pipe.await;
        }
    }
}
