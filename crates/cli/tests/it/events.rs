//! Live events over a WebSocket (WEB-8) with a real WebSocket client against a real server:
//! authentication before any event (header, cookie with an allowed Origin, first message,
//! timeout), the Origin check, the message size and rate limits, the subscription cap, channel
//! names, who sees what, and revocation closing the socket.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use portcullis_client::Client;
use portcullis_core::Role;
use portcullis_proto::api::{CreateRequest, CreateToken};
use portcullis_proto::people::{CreateUser, EnrolRequest, LoginRequest};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

use crate::harness::TestApp;

mod stopping;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a test waits for the server to answer or close before it fails: a bound on a
/// hang, not a measure of speed.
const PATIENCE: Duration = Duration::from_secs(15);
const POLICY: u16 = 1008;
const PASSWORD: &str = "amber tugboat violin 2261 quarry";

/// What the server sent next.
#[derive(Debug)]
enum Frame {
    Json(Value),
    /// The socket ended: with the close code when the server sent a close frame.
    Closed(Option<u16>),
}

fn events_url(base: &str) -> String {
    format!("{}/api/v1/events", base.replacen("http://", "ws://", 1))
}

/// Opens a socket with extra upgrade headers; `Err` carries the HTTP status of a refusal.
async fn open(base: &str, headers: &[(&str, &str)]) -> Result<Socket, u16> {
    let mut request = events_url(base).into_client_request().expect("request");
    for (name, value) in headers {
        request.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes())
                .expect("name"),
            HeaderValue::from_str(value).expect("value"),
        );
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(WsError::Http(response)) => Err(response.status().as_u16()),
        Err(e) => panic!("the upgrade failed without an HTTP answer: {e}"),
    }
}

async fn send(socket: &mut Socket, message: Value) {
    socket
        .send(Message::text(message.to_string()))
        .await
        .expect("send");
}

async fn next(socket: &mut Socket) -> Frame {
    loop {
        let read = tokio::time::timeout(PATIENCE, socket.next())
            .await
            .expect("the server neither answered nor closed the socket");
        match read {
            Some(Ok(Message::Text(text))) => {
                return Frame::Json(serde_json::from_str(&text).expect("JSON message"));
            }
            Some(Ok(Message::Close(frame))) => {
                return Frame::Closed(frame.map(|f| u16::from(f.code)));
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(other)) => panic!("unexpected frame {other:?}"),
            None | Some(Err(_)) => return Frame::Closed(None),
        }
    }
}

/// The next JSON message of type `kind`, which must come before anything else but events
/// (which may interleave with answers once the socket is subscribed).
async fn expect(socket: &mut Socket, kind: &str) -> Value {
    loop {
        match next(socket).await {
            Frame::Json(v) if v["type"] == kind => return v,
            Frame::Json(v) if v["type"] == "event" => {}
            other => panic!("expected a {kind} message, got {other:?}"),
        }
    }
}

async fn expect_error(socket: &mut Socket, code: &str) -> Value {
    let error = expect(socket, "error").await;
    assert_eq!(error["code"], code, "{error}");
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    error
}

/// Reads to the end of the socket: every message it still sent, and the close code.
async fn drain(socket: &mut Socket) -> (Vec<Value>, Option<u16>) {
    let mut messages = Vec::new();
    loop {
        match next(socket).await {
            Frame::Json(v) => messages.push(v),
            Frame::Closed(code) => return (messages, code),
        }
    }
}

/// A socket authenticated by its `Authorization` header, after the `ready` greeting.
pub(crate) async fn authed(base: &str, token: &str) -> (Socket, Value) {
    let bearer = format!("Bearer {token}");
    let mut socket = open(base, &[("authorization", &bearer)])
        .await
        .expect("upgrade");
    let ready = expect(&mut socket, "ready").await;
    (socket, ready)
}

/// The answer to a subscription: `subscribed` or an error.
async fn subscribe(socket: &mut Socket, channel: &str) -> Value {
    send(socket, json!({ "type": "subscribe", "channel": channel })).await;
    loop {
        match next(socket).await {
            Frame::Json(v) if v["type"] == "event" => {}
            Frame::Json(v) => return v,
            other => panic!("no answer to the subscription: {other:?}"),
        }
    }
}

pub(crate) async fn subscribed(socket: &mut Socket, channel: &str) {
    let answer = subscribe(socket, channel).await;
    assert_eq!(answer, json!({ "type": "subscribed", "channel": channel }));
}

/// Event messages, in order, until one satisfies `last` (included).
async fn events_until(socket: &mut Socket, last: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let message = expect(socket, "event").await;
        let done = last(&message);
        seen.push(message);
        if done {
            return seen;
        }
    }
}

fn finished(id: Uuid) -> impl Fn(&Value) -> bool {
    move |m| {
        m["event"]["action"] == "request.finished" && m["event"]["request_id"] == id.to_string()
    }
}

fn token_id(secret: &str) -> &str {
    secret.split('_').nth(1).expect("token id")
}

fn read(statement: &str) -> CreateRequest {
    CreateRequest {
        connection: "demo".parse().expect("name"),
        statement: statement.into(),
        reason: "live events test".into(),
        stream: false,
    }
}

/// A person added by the admin, enrolled without MFA and signed in: their session secret.
async fn person(app: &TestApp, name: &str, role: Role) -> String {
    let added = app
        .admin
        .add_user(&CreateUser {
            name: name.into(),
            role,
        })
        .await
        .expect("add user");
    let anonymous = Client::new(app.url(), None).expect("client");
    anonymous
        .enrol(&EnrolRequest {
            enrol_token: added.invite.enrol_token,
            password: PASSWORD.into(),
            mfa: Some(false),
        })
        .await
        .expect("enrol");
    anonymous
        .login(&LoginRequest {
            name: name.into(),
            password: PASSWORD.into(),
            ..LoginRequest::default()
        })
        .await
        .expect("login")
        .token
}

/// SEC-2 for the one public route that streams: anonymous sockets — one silent, one that
/// subscribes before authenticating, one with a forged token — are closed with 1008 and never
/// receive an event, although audited events happen while they are open. The server must
/// have a short `events.auth_timeout_secs`.
pub(crate) async fn anonymous_sockets_get_no_event(base: &str) {
    let mut silent = open(base, &[]).await.expect("upgrade");
    let mut eager = open(base, &[]).await.expect("upgrade");
    let mut forged = open(base, &[]).await.expect("upgrade");
    for channel in ["audit", "requests", "approvals"] {
        send(
            &mut eager,
            json!({ "type": "subscribe", "channel": channel }),
        )
        .await;
    }
    let fake = format!("pct_0123456789abcdef_{}", "A".repeat(43));
    send(&mut forged, json!({ "type": "auth", "token": fake })).await;
    // Audited events while the sockets are open: refused credentials on an API route.
    let http = reqwest::Client::new();
    for _ in 0..3 {
        let status = http
            .get(format!("{base}/api/v1/me"))
            .bearer_auth(&fake)
            .send()
            .await
            .expect("call")
            .status();
        assert_eq!(status, 401);
    }
    for (socket, code) in [
        (&mut silent, "auth_timeout"),
        (&mut eager, "unauthenticated"),
        (&mut forged, "unauthenticated"),
    ] {
        let (messages, close) = drain(socket).await;
        assert!(
            messages.iter().all(|m| m["type"] == "error"),
            "an anonymous socket got {messages:?}"
        );
        assert_eq!(messages.first().map(|m| &m["code"]), Some(&json!(code)));
        assert_eq!(close, Some(POLICY));
    }
}

#[tokio::test]
async fn an_unauthenticated_socket_is_closed_at_the_auth_timeout_and_gets_no_event() {
    let app = TestApp::spawn_with(|o| o.server.events.auth_timeout_secs = 1).await;
    let mut socket = open(app.url(), &[]).await.expect("upgrade");
    // Events happen while the socket waits.
    app.exec(&app.admin, "SELECT 1").await.expect("exec");
    let (messages, close) = drain(&mut socket).await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0]["code"], "auth_timeout");
    assert_eq!(close, Some(POLICY));
    anonymous_sockets_get_no_event(app.url()).await;
    app.stop().await;
}

#[tokio::test]
async fn a_bearer_header_and_a_first_auth_message_both_authenticate() {
    let app = TestApp::spawn().await;
    let (developer, secret) = app.token(Role::Developer).await;
    let (mut by_header, ready) = authed(app.url(), &secret).await;
    assert_eq!(ready["role"], "developer");
    assert_eq!(ready["max_subscriptions"], 100);
    assert_eq!(ready["channels"], json!(["requests", "request:<id>"]));
    let mut by_message = open(app.url(), &[]).await.expect("upgrade");
    send(&mut by_message, json!({ "type": "auth", "token": secret })).await;
    let ready = expect(&mut by_message, "ready").await;
    assert_eq!(ready["role"], "developer");
    for socket in [&mut by_header, &mut by_message] {
        subscribed(socket, "requests").await;
        send(socket, json!({ "type": "ping" })).await;
        expect(socket, "pong").await;
    }
    let id = app
        .exec(&developer, "SELECT 1")
        .await
        .expect("exec")
        .request
        .id;
    for socket in [&mut by_header, &mut by_message] {
        let seen = events_until(socket, finished(id)).await;
        assert_eq!(seen[0]["event"]["action"], "request.created");
        assert!(seen.iter().all(|m| m["channel"] == "requests"));
    }
    // A second auth message is refused; the socket stays usable.
    send(&mut by_message, json!({ "type": "auth", "token": secret })).await;
    expect_error(&mut by_message, "already_authenticated").await;
    app.stop().await;
}

#[tokio::test]
async fn a_wrong_token_is_refused_in_the_header_and_in_the_first_message() {
    let app = TestApp::spawn().await;
    let fake = format!("pct_0123456789abcdef_{}", "B".repeat(43));
    let refused = open(app.url(), &[("authorization", &format!("Bearer {fake}"))]).await;
    assert_eq!(refused.err(), Some(401));
    let mut socket = open(app.url(), &[]).await.expect("upgrade");
    send(&mut socket, json!({ "type": "auth", "token": fake })).await;
    let (messages, close) = drain(&mut socket).await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0]["code"], "unauthenticated");
    assert_eq!(close, Some(POLICY));
    // An agent's credential is no person's.
    let agent = app.admin.create_agent("events-agent").await.expect("agent");
    let mut socket = open(app.url(), &[]).await.expect("upgrade");
    send(&mut socket, json!({ "type": "auth", "token": agent.token })).await;
    let (messages, close) = drain(&mut socket).await;
    assert_eq!(messages[0]["code"], "forbidden");
    assert_eq!(close, Some(POLICY));
    let failures = app
        .audit_events()
        .await
        .into_iter()
        .filter(|e| e["action"] == "auth.failed" && e["target"] == "GET /api/v1/events")
        .count();
    assert_eq!(failures, 2, "both refusals are audited");
    app.stop().await;
}

#[tokio::test]
async fn a_foreign_origin_is_refused_before_the_upgrade_and_allowed_ones_are_accepted() {
    let app = TestApp::spawn_with(|o| {
        o.server.web.cors_origins = vec!["https://console.example".into()];
    })
    .await;
    let bearer = format!("Bearer {}", app.stack.admin_token);
    let own = app.url().to_owned();
    for foreign in ["https://evil.example", "null", "http://127.0.0.1:1"] {
        let refused = open(
            app.url(),
            &[("authorization", &bearer), ("origin", foreign)],
        )
        .await;
        assert_eq!(refused.err(), Some(403), "{foreign}");
    }
    for allowed in ["https://console.example", own.as_str()] {
        let mut socket = open(
            app.url(),
            &[("authorization", &bearer), ("origin", allowed)],
        )
        .await
        .unwrap_or_else(|s| panic!("{allowed} refused with {s}"));
        expect(&mut socket, "ready").await;
    }
    let refusals = app
        .audit_events()
        .await
        .into_iter()
        .filter(|e| e["action"] == "origin.refused" && e["target"] == "GET /api/v1/events")
        .count();
    assert_eq!(refusals, 3);
    app.stop().await;
}

/// AUTH-3: the session cookie is a browser's credential, so it authenticates a socket only
/// together with an allowed `Origin` — which is what stops another site's page from opening
/// one in a visitor's name.
#[tokio::test]
async fn a_session_cookie_authenticates_only_with_an_allowed_origin() {
    let app = TestApp::spawn().await;
    let session = person(&app, "carol", Role::Viewer).await;
    let cookie = format!(
        "{}={session}",
        portcullis_identity::session::session_cookie_name(false)
    );
    let refused = open(app.url(), &[("cookie", &cookie)]).await;
    assert_eq!(refused.err(), Some(403), "a cookie without an Origin");
    let refused = open(
        app.url(),
        &[("cookie", &cookie), ("origin", "https://evil.example")],
    )
    .await;
    assert_eq!(refused.err(), Some(403));
    let mut socket = open(app.url(), &[("cookie", &cookie), ("origin", app.url())])
        .await
        .expect("upgrade");
    let ready = expect(&mut socket, "ready").await;
    assert_eq!(ready["user"], "carol");
    assert_eq!(ready["role"], "viewer");
    app.stop().await;
}

#[tokio::test]
async fn a_message_over_64_kib_closes_the_socket() {
    let app = TestApp::spawn().await;
    let (mut socket, _) = authed(app.url(), &app.stack.admin_token).await;
    // Exactly the limit is read (and refused as a message, not for its size).
    let frame = json!({ "type": "ping", "pad": "" }).to_string().len();
    let at_limit = json!({ "type": "ping", "pad": "x".repeat(64 * 1024 - frame) }).to_string();
    assert_eq!(at_limit.len(), 64 * 1024);
    socket.send(Message::text(at_limit)).await.expect("send");
    expect_error(&mut socket, "invalid_message").await;
    let over = json!({ "type": "ping", "pad": "x".repeat(64 * 1024 + 1 - frame) }).to_string();
    socket.send(Message::text(over)).await.expect("send");
    let (messages, close) = drain(&mut socket).await;
    assert!(messages.is_empty(), "{messages:?}");
    assert!(
        matches!(close, None | Some(POLICY | 1009)),
        "closed with {close:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn more_than_20_messages_in_a_second_close_the_socket() {
    let app = TestApp::spawn().await;
    let (mut socket, _) = authed(app.url(), &app.stack.admin_token).await;
    // One burst, written at once: 25 within far less than a second.
    for _ in 0..25 {
        socket
            .feed(Message::text(json!({ "type": "ping" }).to_string()))
            .await
            .expect("feed");
    }
    socket.flush().await.expect("flush");
    let (messages, close) = drain(&mut socket).await;
    let pongs = messages.iter().filter(|m| m["type"] == "pong").count();
    assert_eq!(pongs, 20, "{messages:?}");
    assert_eq!(
        messages.last().map(|m| &m["code"]),
        Some(&json!("rate_limited"))
    );
    assert_eq!(close, Some(POLICY));
    app.stop().await;
}

#[tokio::test]
async fn the_101st_subscription_is_refused() {
    // Only the subscription cap is under test: the message rate may not slow the setup.
    let app = TestApp::spawn_with(|o| {
        o.start_agent = false;
        o.server.events.max_messages_per_sec = 10_000;
    })
    .await;
    let mut channels: Vec<String> = ["requests", "approvals", "audit"]
        .map(String::from)
        .to_vec();
    for i in 0..98 {
        let created = app
            .admin
            .create_request(&read(&format!("SELECT {i}")), Duration::ZERO)
            .await
            .expect("request");
        channels.push(format!("request:{}", created.request.id));
    }
    let (mut socket, _) = authed(app.url(), &app.stack.admin_token).await;
    for channel in &channels[..100] {
        subscribed(&mut socket, channel).await;
    }
    // Subscribing again to a channel held already is no new subscription.
    subscribed(&mut socket, "audit").await;
    let refused = subscribe(&mut socket, &channels[100]).await;
    assert_eq!(refused["code"], "too_many_subscriptions", "{refused}");
    assert_eq!(refused["channel"], channels[100].as_str());
    send(
        &mut socket,
        json!({ "type": "unsubscribe", "channel": "audit" }),
    )
    .await;
    assert_eq!(
        expect(&mut socket, "unsubscribed").await["channel"],
        "audit"
    );
    subscribed(&mut socket, &channels[100]).await;
    app.stop().await;
}

#[tokio::test]
async fn invalid_and_unknown_channel_names_are_refused() {
    let app = TestApp::spawn().await;
    let (mut socket, _) = authed(app.url(), &app.stack.admin_token).await;
    let long = "a".repeat(201);
    let invalid = [
        "",
        long.as_str(),
        "has space",
        "request/1",
        "caf\u{e9}",
        "\u{ff41}udit",
        "audit\n",
    ];
    for name in invalid {
        let refused = subscribe(&mut socket, name).await;
        assert_eq!(refused["code"], "invalid_channel", "{name:?}: {refused}");
        // A bad name is not echoed back.
        assert!(refused.get("channel").is_none(), "{refused}");
    }
    // 200 characters is a valid name: refused for being unknown, not for its length.
    let longest = "a".repeat(200);
    let not_a_request = format!("request:{}", Uuid::new_v4().simple());
    for name in [
        longest.as_str(),
        "nope",
        "Audit",
        "request:not-a-uuid",
        &not_a_request,
    ] {
        let refused = subscribe(&mut socket, name).await;
        assert_eq!(refused["code"], "unknown_channel", "{name:?}: {refused}");
        assert_eq!(refused["channel"], name);
    }
    send(
        &mut socket,
        json!({ "type": "unsubscribe", "channel": "requests" }),
    )
    .await;
    expect_error(&mut socket, "not_subscribed").await;
    // Refusals leave the socket open.
    send(&mut socket, json!({ "type": "ping" })).await;
    expect(&mut socket, "pong").await;
    app.stop().await;
}

#[tokio::test]
async fn a_developer_sees_only_their_own_requests_and_is_refused_audit_and_approvals() {
    let app = TestApp::spawn().await;
    let session = person(&app, "bob", Role::Developer).await;
    let bob = Client::new(app.url(), Some(&session)).expect("client");
    let someone_elses = app
        .exec(&app.admin, "SELECT 'before'")
        .await
        .expect("exec")
        .request
        .id;
    let (mut socket, ready) = authed(app.url(), &session).await;
    assert_eq!(ready["role"], "developer");
    for channel in ["audit", "approvals", &format!("request:{someone_elses}")] {
        let refused = subscribe(&mut socket, channel).await;
        assert_eq!(refused["code"], "forbidden_channel", "{channel}: {refused}");
    }
    subscribed(&mut socket, "requests").await;
    // Someone else's request runs first, then bob's: in commit order, an event of the first
    // would arrive before the end of the second.
    let other = app
        .exec(&app.admin, "SELECT 'other'")
        .await
        .expect("exec")
        .request
        .id;
    let own = app
        .exec(&bob, "SELECT 'own'")
        .await
        .expect("exec")
        .request
        .id;
    let seen = events_until(&mut socket, finished(own)).await;
    assert!(
        seen.iter()
            .all(|m| m["event"]["request_id"] == own.to_string()),
        "bob saw {other}'s events: {seen:?}"
    );
    assert_eq!(seen[0]["event"]["action"], "request.created");
    assert_eq!(
        seen.last().expect("finished")["event"]["details"]["state"],
        "succeeded"
    );
    // Each refusal of a forbidden channel is an audited denial.
    let denials: Vec<Value> = app
        .audit_events()
        .await
        .into_iter()
        .filter(|e| e["action"] == "access.denied" && e["target"] == "GET /api/v1/events")
        .collect();
    let channels: Vec<&str> = denials
        .iter()
        .filter_map(|e| e["details"]["channel"].as_str())
        .collect();
    assert_eq!(
        channels,
        ["audit", "approvals", &format!("request:{someone_elses}")]
    );
    assert!(denials.iter().all(|e| e["actor"] == "bob (session)"));
    app.stop().await;
}

#[tokio::test]
async fn an_admin_on_audit_sees_the_event_of_an_action_and_no_secret() {
    let app = TestApp::spawn().await;
    let (mut socket, ready) = authed(app.url(), &app.stack.admin_token).await;
    assert_eq!(
        ready["channels"],
        json!(["requests", "request:<id>", "approvals", "audit"])
    );
    subscribed(&mut socket, "audit").await;
    let created = app
        .admin
        .create_token(&CreateToken {
            name: "watched".into(),
            role: Role::Viewer,
            ttl_seconds: 600,
            environments: None,
        })
        .await
        .expect("token");
    let seen = events_until(&mut socket, |m| m["event"]["action"] == "token.created").await;
    let event = &seen.last().expect("event")["event"];
    assert_eq!(seen.last().expect("event")["channel"], "audit");
    assert_eq!(event["outcome"], "success");
    assert_eq!(event["details"]["name"], "watched");
    assert!(event["seq"].as_i64().is_some_and(|s| s > 0));
    assert!(
        event["correlation_id"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
    );
    assert!(event.get("client_addr").is_none());
    // SEC-4: the new secret is nowhere in what the socket delivered.
    let delivered = serde_json::to_string(&seen).expect("json");
    assert!(!delivered.contains(&created.token));
    assert!(!delivered.contains(&app.stack.admin_token));
    app.stop().await;
}

#[tokio::test]
async fn a_request_channel_delivers_that_requests_lifecycle_and_nothing_else() {
    let app = TestApp::spawn_with(|o| o.start_agent = false).await;
    let (mut socket, _) = authed(app.url(), &app.stack.admin_token).await;
    subscribed(&mut socket, "requests").await;
    // The other request is older, so an agent takes it first: its events come before the
    // end of the watched one's.
    let other = app
        .admin
        .create_request(&read("SELECT 'other'"), Duration::ZERO)
        .await
        .expect("request")
        .request
        .id;
    let watched = app
        .admin
        .create_request(&read("SELECT 'watched'"), Duration::ZERO)
        .await
        .expect("request")
        .request
        .id;
    let created = events_until(&mut socket, |m| {
        m["event"]["action"] == "request.created" && m["event"]["request_id"] == watched.to_string()
    })
    .await;
    assert_eq!(created[0]["event"]["action"], "request.created");
    assert_eq!(created[0]["event"]["request_id"], other.to_string());
    subscribed(&mut socket, &format!("request:{watched}")).await;
    send(
        &mut socket,
        json!({ "type": "unsubscribe", "channel": "requests" }),
    )
    .await;
    expect(&mut socket, "unsubscribed").await;
    // An agent now runs both.
    let registered = app.admin.create_agent("lifecycle").await.expect("agent");
    let config = portcullis::devstack::demo_agent_config(
        "lifecycle",
        app.url(),
        &app.stack.server,
        &app.stack.demo_db,
    );
    let agent = portcullis_agent::Agent::new(config, &registered.token)
        .await
        .expect("agent");
    let (stop, running) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(agent.run(running));
    let seen = events_until(&mut socket, finished(watched)).await;
    let channel = format!("request:{watched}");
    assert!(
        seen.iter().all(|m| m["channel"] == channel.as_str()),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .all(|m| m["event"]["request_id"] == watched.to_string()),
        "{seen:?}"
    );
    let actions: Vec<&str> = seen
        .iter()
        .filter_map(|m| m["event"]["action"].as_str())
        .collect();
    assert_eq!(actions.first(), Some(&"request.dispatched"), "{actions:?}");
    let last = &seen.last().expect("finished")["event"];
    assert_eq!(last["details"]["state"], "succeeded");
    assert_eq!(last["outcome"], "success");
    stop.send_replace(true);
    let _ = task.await;
    app.stop().await;
}

#[tokio::test]
async fn approvals_carry_requests_awaiting_a_decision_and_not_auto_approved_ones() {
    let app = TestApp::spawn_with(|o| {
        // No agent: nothing runs, so the events are exactly those of the calls below.
        o.start_agent = false;
        o.policy = portcullis_core::Policy::new(vec![
            portcullis_core::PolicyRule {
                class: Some(portcullis_core::OperationClass::Write),
                ..portcullis_core::PolicyRule::any(portcullis_core::Decision::RequireApproval)
            },
            portcullis_core::PolicyRule::any(portcullis_core::Decision::AutoApprove),
        ])
        .expect("policy");
    })
    .await;
    let (mut socket, _) = authed(app.url(), &app.stack.admin_token).await;
    subscribed(&mut socket, "approvals").await;
    app.admin
        .create_request(&read("SELECT 'auto'"), Duration::ZERO)
        .await
        .expect("read");
    let pending = app
        .admin
        .create_request(
            &read("UPDATE customers SET name = name WHERE id = 1"),
            Duration::ZERO,
        )
        .await
        .expect("write")
        .request
        .id;
    app.admin.cancel_request(pending).await.expect("cancel");
    let seen = events_until(&mut socket, |m| m["event"]["action"] == "request.cancelled").await;
    let actions: Vec<(&str, &str)> = seen
        .iter()
        .map(|m| {
            (
                m["event"]["action"].as_str().unwrap_or_default(),
                m["event"]["request_id"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    let pending = pending.to_string();
    assert_eq!(
        actions,
        [
            ("request.created", pending.as_str()),
            ("request.cancelled", pending.as_str())
        ]
    );
    assert_eq!(seen[0]["event"]["details"]["decision"], "require_approval");
    assert!(seen.iter().all(|m| m["channel"] == "approvals"));
    app.stop().await;
}

#[tokio::test]
async fn revoking_the_token_closes_its_socket() {
    let app = TestApp::spawn().await;
    let (developer, secret) = app.token(Role::Developer).await;
    let (mut socket, _) = authed(app.url(), &secret).await;
    subscribed(&mut socket, "requests").await;
    let id = app
        .exec(&developer, "SELECT 1")
        .await
        .expect("exec")
        .request
        .id;
    events_until(&mut socket, finished(id)).await;
    app.admin
        .revoke_token(token_id(&secret))
        .await
        .expect("revoke");
    let (messages, close) = drain(&mut socket).await;
    assert_eq!(messages.len(), 1, "after revocation: {messages:?}");
    assert_eq!(messages[0]["code"], "unauthenticated");
    assert_eq!(close, Some(POLICY));
    // And a new socket with it is refused.
    let refused = open(app.url(), &[("authorization", &format!("Bearer {secret}"))]).await;
    assert_eq!(refused.err(), Some(401));
    app.stop().await;
}

#[tokio::test]
async fn binary_messages_are_refused() {
    let app = TestApp::spawn().await;
    let (mut socket, _) = authed(app.url(), &app.stack.admin_token).await;
    socket
        .send(Message::binary(b"{\"type\":\"ping\"}".to_vec()))
        .await
        .expect("send");
    let (messages, close) = drain(&mut socket).await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0]["code"], "binary_not_supported");
    assert_eq!(close, Some(u16::from(CloseCode::Unsupported)));
    app.stop().await;
}
