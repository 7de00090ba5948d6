//! The listener's connection limits (`server/src/listener.rs`, `routes/deadline.rs`): a client
//! that sends no whole request head, or no whole body, in time is cut off, and no client
//! address (nor all of them together) can open more connections than the configured caps. Each test speaks raw TCP to the real
//! server of a dev stack, from source addresses of its own on the loopback network
//! (127.0.0.2 and up) so that the stack's own clients do not count against the test's.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use portcullis_core::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::harness::{TestApp, metrics_text};

/// Longer than anything the server is configured to wait here: a connection still open after
/// it was not closed by the server.
pub(crate) const BOUND: Duration = Duration::from_secs(15);

pub(crate) fn addr(app: &TestApp) -> SocketAddr {
    app.url()
        .trim_start_matches("http://")
        .parse()
        .expect("the dev stack listens on an IP address")
}

pub(crate) async fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{source}:0").parse().expect("source"))
        .expect("bind a loopback source address");
    socket.connect(to).await.expect("connect")
}

/// Whether the server closes `stream` (end of stream or reset) within [`BOUND`], reading and
/// dropping whatever it sends first.
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Sends `GET /health` on `stream` and whether it is answered 200; `false` when the server
/// closes the connection instead.
async fn health(stream: &mut TcpStream) -> bool {
    let sent = stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await;
    if sent.is_err() {
        return false;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(BOUND, stream.read(&mut buf)).await {
            Err(_) => panic!("no answer and no close within {BOUND:?}"),
            Ok(Ok(0) | Err(_)) => return false,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // The two bytes of "ok" may come in a later read; take them so the next request starts clean.
    while !got.ends_with(b"ok") {
        let n = stream.read(&mut buf).await.expect("body");
        assert!(n > 0, "the body of /health");
        got.extend_from_slice(&buf[..n]);
    }
    true
}

/// A connection from `source`, admitted: retried while the server has yet to see the close of
/// a connection the test dropped (it gives the place back as it does), for at most [`BOUND`].
async fn admitted_from(source: &str, to: SocketAddr) -> TcpStream {
    let started = Instant::now();
    loop {
        let mut stream = connect_from(source, to).await;
        if health(&mut stream).await {
            return stream;
        }
        assert!(
            started.elapsed() < BOUND,
            "{source} was not admitted again within {BOUND:?}"
        );
        tokio::task::yield_now().await;
    }
}

async fn refused_so_far(app: &TestApp) -> u64 {
    let (_, token) = app.token(Role::Admin).await;
    let text = metrics_text(app.url(), &token).await;
    text.lines()
        .find_map(|l| l.strip_prefix("portcullis_connections_refused_total "))
        .unwrap_or_else(|| panic!("no refusal counter in:\n{text}"))
        .parse()
        .expect("a count")
}

#[tokio::test]
async fn a_client_that_sends_no_whole_request_head_in_time_is_disconnected() {
    let app = TestApp::spawn_with(|o| o.server.web.header_read_timeout_secs = 1).await;
    let to = addr(&app);

    // Silent from the start.
    let mut silent = connect_from("127.0.0.2", to).await;
    let opened = Instant::now();
    assert!(
        closed_by_server(&mut silent).await,
        "a silent connection stayed open"
    );
    assert!(
        opened.elapsed() >= Duration::from_millis(900),
        "closed by the timeout, not on arrival: {:?}",
        opened.elapsed()
    );

    // A head trickled in a byte at a time, each byte well inside the timeout: the whole head
    // is what must arrive in time, not each byte.
    let mut slow = connect_from("127.0.0.2", to).await;
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .expect("the start of a head");
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let cut = loop {
        assert!(
            started.elapsed() < BOUND,
            "a trickled head kept its connection for {BOUND:?}"
        );
        if slow.write_all(b"X").await.is_err() {
            break true;
        }
        match tokio::time::timeout(Duration::from_millis(200), slow.read(&mut buf)).await {
            Err(_) => {}
            Ok(Ok(0) | Err(_)) => break true,
            Ok(Ok(_)) => break false,
        }
    };
    assert!(cut, "the server answered a head that never ended");

    // Idle after an answer: kept alive for the timeout, then closed.
    let mut idle = connect_from("127.0.0.2", to).await;
    assert!(health(&mut idle).await);
    assert!(health(&mut idle).await, "kept alive for a second request");
    assert!(
        closed_by_server(&mut idle).await,
        "an idle connection stayed open"
    );

    // Clients that send their requests are not disturbed.
    let (client, _) = app.token(Role::Developer).await;
    client.whoami().await.expect("a normal client is served");
    app.stop().await;
}

#[tokio::test]
async fn no_client_address_holds_more_connections_than_its_share() {
    let app = TestApp::spawn_with(|o| {
        o.server.web.max_connections_per_address = 8;
        // The stack's own clients and agent connect from 127.0.0.1 and hold more than 8.
        o.server.trusted_proxies = vec!["127.0.0.1/32".parse().expect("net")];
    })
    .await;
    let to = addr(&app);
    let before = refused_so_far(&app).await;

    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(admitted_from("127.0.0.2", to).await);
    }
    // The ninth from that address is closed as it arrives, request unanswered.
    let mut ninth = connect_from("127.0.0.2", to).await;
    assert!(!health(&mut ninth).await, "a ninth connection was served");
    // Another address is not held back by it.
    let mut other = admitted_from("127.0.0.3", to).await;
    assert!(health(&mut other).await);
    // The held ones still work, and a place given back can be taken again.
    assert!(health(&mut held[0]).await);
    drop(held.pop());
    held.push(admitted_from("127.0.0.2", to).await);

    assert!(
        refused_so_far(&app).await > before,
        "the refusal is counted in portcullis_connections_refused_total"
    );
    app.stop().await;
}

#[tokio::test]
async fn no_one_passes_the_total_and_trusted_proxies_count_only_towards_it() {
    let app = TestApp::spawn_with(|o| {
        o.server.web.max_connections = 48;
        o.server.web.max_connections_per_address = 4;
        o.server.trusted_proxies = vec!["127.0.0.2/32".parse().expect("net")];
    })
    .await;
    let to = addr(&app);

    // The proxy's address is not held to 4; it fills what the stack itself leaves free.
    let mut held = Vec::new();
    let mut refused = false;
    for _ in 0..=48 {
        let mut stream = connect_from("127.0.0.2", to).await;
        if health(&mut stream).await {
            held.push(stream);
        } else {
            refused = true;
            break;
        }
    }
    assert!(refused, "49 connections were served under a total of 48");
    assert!(
        held.len() > 4,
        "the trusted proxy was held to the per-address cap: {} admitted",
        held.len()
    );
    // While the total is reached, nobody gets in.
    let mut other = connect_from("127.0.0.3", to).await;
    assert!(!health(&mut other).await, "a connection past the total");
    // Once places are given back, others do.
    held.clear();
    let mut other = admitted_from("127.0.0.3", to).await;
    assert!(health(&mut other).await);
    app.stop().await;
}

#[tokio::test]
async fn a_request_body_trickled_past_its_deadline_is_refused_with_408() {
    let app = TestApp::spawn_with(|o| o.server.web.body_read_timeout_secs = 1).await;
    let (_, token) = app.token(Role::Developer).await;
    let mut slow = connect_from("127.0.0.2", addr(&app)).await;
    let head = format!(
        "POST /api/v1/requests HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n{{"
    );
    slow.write_all(head.as_bytes()).await.expect("head");
    // A byte every 200 ms: never idle for long, but the whole body is what has a deadline.
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        assert!(
            started.elapsed() < BOUND,
            "a trickled body kept its request open for {BOUND:?}"
        );
        if slow.write_all(b" ").await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(200), slow.read(&mut buf)).await {
            Err(_) => {}
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    let answer = String::from_utf8_lossy(&got);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");
    // A body that comes with its head is not affected.
    let (client, _) = app.token(Role::Developer).await;
    client.whoami().await.expect("served");
    app.stop().await;
}
