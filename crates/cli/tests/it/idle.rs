//! Connections under the idle timeout (`server/src/listener/idle.rs`): hyper's request-head
//! timeout covers HTTP/1.1 only, so without the server's own count of open requests an
//! HTTP/2 client, once answered, kept its connection for as long as it liked. The HTTP/2
//! tests speak raw frames (prior knowledge, on the plain listener) to the real server of a
//! dev stack, from 127.0.0.2 as in `connections`; an event socket, which has rules of its
//! own (WEB-8), must outlive the timeout. A response whose client never opens its stream's
//! flow-control window keeps a request open without the socket ever filling: the send
//! timeout must still cut it, and must not cut a client that takes a response slowly.

use std::time::{Duration, Instant};

use portcullis_core::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::connections::{BOUND, addr, connect_from};
use crate::events::{authed, subscribed};
use crate::harness::TestApp;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const WINDOW_UPDATE: u8 = 0x8;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("a small frame");
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK string, not Huffman-coded, its length an HPACK integer with a 7-bit prefix.
fn hpack_string(out: &mut Vec<u8>, s: &str) {
    let mut n = s.len();
    if n < 127 {
        out.push(u8::try_from(n).expect("small"));
    } else {
        out.push(127);
        n -= 127;
        while n >= 128 {
            out.push(u8::try_from(n % 128).expect("7 bits") | 0x80);
            n /= 128;
        }
        out.push(u8::try_from(n).expect("7 bits"));
    }
    out.extend_from_slice(s.as_bytes());
}

/// A header block: `:method` (static index 2 GET, 3 POST), `:scheme http`, the path, the
/// authority and `extra` headers, each a literal not indexed.
fn header_block(post: bool, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut out = vec![if post { 0x83 } else { 0x82 }, 0x86];
    out.push(0x04); // :path, static name 4
    hpack_string(&mut out, path);
    out.push(0x01); // :authority, static name 1
    hpack_string(&mut out, "127.0.0.1");
    for (name, value) in extra {
        out.push(0x00);
        hpack_string(&mut out, name);
        hpack_string(&mut out, value);
    }
    out
}

enum Next {
    Frame {
        kind: u8,
        stream: u32,
        len: usize,
        end: bool,
    },
    Quiet,
    Closed,
}

/// One HTTP/2 connection, its bytes read into a buffer so that a wait cut short loses none.
struct H2 {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl H2 {
    async fn open(app: &TestApp) -> H2 {
        H2::open_with(app, &[]).await
    }

    /// A connection whose first SETTINGS frame carries `settings`.
    async fn open_with(app: &TestApp, settings: &[(u16, u32)]) -> H2 {
        let mut stream = connect_from("127.0.0.2", addr(app)).await;
        let mut hello = PREFACE.to_vec();
        let payload: Vec<u8> = settings
            .iter()
            .flat_map(|(id, value)| id.to_be_bytes().into_iter().chain(value.to_be_bytes()))
            .collect();
        hello.extend(frame(SETTINGS, 0, 0, &payload));
        stream.write_all(&hello).await.expect("preface");
        H2 {
            stream,
            buf: Vec::new(),
        }
    }

    /// A connection whose `GET /health` (stream 1) has been answered.
    async fn answered_health(app: &TestApp) -> H2 {
        let mut h2 = H2::open(app).await;
        let get = header_block(false, "/health", &[]);
        assert!(
            h2.send(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &get))
                .await
        );
        assert!(h2.answered(1).await, "GET /health over HTTP/2");
        h2
    }

    /// Sends `bytes`; false when the server has closed the connection.
    async fn send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).await.is_ok()
    }

    /// The next frame within `wait` (the server's SETTINGS acknowledged on the way).
    async fn next(&mut self, wait: Duration) -> Next {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if self.buf.len() >= 9 {
                let len = usize::from(self.buf[0]) << 16
                    | usize::from(self.buf[1]) << 8
                    | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let (kind, flags) = (self.buf[3], self.buf[4]);
                    let end = kind != SETTINGS && kind != PING && flags & END_STREAM != 0;
                    let stream = u32::from_be_bytes(self.buf[5..9].try_into().expect("4 bytes"))
                        & 0x7fff_ffff;
                    self.buf.drain(..9 + len);
                    if kind == SETTINGS && flags & ACK == 0 {
                        self.send(&frame(SETTINGS, ACK, 0, &[])).await;
                    }
                    return Next::Frame {
                        kind,
                        stream,
                        len,
                        end,
                    };
                }
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Next::Quiet,
                Ok(Ok(0) | Err(_)) => return Next::Closed,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads until the response head of `stream` arrives: true, or false when the
    /// connection closes first.
    async fn answered(&mut self, stream: u32) -> bool {
        loop {
            match self.next(BOUND).await {
                Next::Frame {
                    kind: HEADERS,
                    stream: s,
                    ..
                } if s == stream => return true,
                Next::Frame { .. } => {}
                Next::Closed => return false,
                Next::Quiet => panic!("no answer and no close within {BOUND:?}"),
            }
        }
    }

    /// Whether the server closes the connection within [`BOUND`], sending a PING every
    /// `ping` if given (frames that are not requests).
    async fn closed_by_server(&mut self, ping: Option<Duration>) -> bool {
        let started = Instant::now();
        while started.elapsed() < BOUND {
            if let Some(every) = ping {
                if !self.send(&frame(PING, 0, 0, b"12345678")).await {
                    return true;
                }
                if let Next::Closed = self.next(every).await {
                    return true;
                }
            } else if let Next::Closed = self.next(BOUND - started.elapsed()).await {
                return true;
            }
        }
        false
    }
}

#[tokio::test]
async fn an_http2_connection_with_no_request_open_is_closed_after_the_timeout() {
    let app = TestApp::spawn_with(|o| o.server.web.header_read_timeout_secs = 1).await;

    // Answered, then nothing: closed about a second after the answer, not before.
    let mut quiet = H2::answered_health(&app).await;
    let answered = Instant::now();
    assert!(
        quiet.closed_by_server(None).await,
        "an HTTP/2 connection with no request open stayed open"
    );
    assert!(
        answered.elapsed() >= Duration::from_millis(800),
        "closed by the timeout, not at once: {:?}",
        answered.elapsed()
    );

    // PINGs are not requests: they do not keep a connection.
    let mut pinging = H2::answered_health(&app).await;
    assert!(
        pinging
            .closed_by_server(Some(Duration::from_millis(200)))
            .await,
        "PINGs every 200 ms kept an HTTP/2 connection with no request open"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_http2_request_open_longer_than_the_timeout_is_not_cut() {
    let app = TestApp::spawn_with(|o| o.server.web.header_read_timeout_secs = 1).await;
    let (_, token) = app.token(Role::Developer).await;
    let bearer = format!("Bearer {token}");
    let mut h2 = H2::open(&app).await;
    let post = header_block(
        true,
        "/api/v1/requests",
        &[
            ("authorization", &bearer),
            ("content-type", "application/json"),
        ],
    );
    assert!(h2.send(&frame(HEADERS, END_HEADERS, 1, &post)).await);
    // Its body trickled over 2.5 s, a byte every 250 ms: the request is open all along, two
    // and a half idle timeouts, and the connection stays.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2_500) {
        assert!(
            h2.send(&frame(DATA, 0, 1, b" ")).await,
            "the connection was closed with a request open"
        );
        match h2.next(Duration::from_millis(250)).await {
            Next::Closed => panic!(
                "the connection was closed with a request open, after {:?}",
                started.elapsed()
            ),
            Next::Frame {
                kind: HEADERS,
                stream: 1,
                ..
            } => panic!("answered before the body ended: the test proves nothing"),
            Next::Frame { .. } | Next::Quiet => {}
        }
    }
    assert!(h2.send(&frame(DATA, END_STREAM, 1, b"{}")).await);
    assert!(
        h2.answered(1).await,
        "the request whose body took 2.5 s was answered on its connection"
    );
    // Once nothing is open any more, the connection goes like any other.
    assert!(h2.closed_by_server(None).await);
    app.stop().await;
}

#[tokio::test]
async fn an_event_socket_outlives_the_idle_timeout() {
    let app = TestApp::spawn_with(|o| o.server.web.header_read_timeout_secs = 1).await;
    let (mut socket, ready) = authed(app.url(), &app.stack.admin_token).await;
    assert_eq!(ready["type"], "ready");
    // Two and a half idle timeouts with no request: an upgraded connection is not cut, and
    // still answers (a closed one fails the subscription).
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    subscribed(&mut socket, "audit").await;
    app.stop().await;
}

/// `GET /api/v1/openapi.json` (stream 1, a response of well over 64 KiB) on a connection
/// whose streams start with no flow-control window: its head is answered, its body waits.
async fn asked_with_no_window(app: &TestApp) -> H2 {
    let mut h2 = H2::open_with(app, &[(SETTINGS_INITIAL_WINDOW_SIZE, 0)]).await;
    let get = header_block(false, "/api/v1/openapi.json", &[]);
    assert!(
        h2.send(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &get))
            .await
    );
    assert!(h2.answered(1).await, "the head needs no window");
    h2
}

#[tokio::test]
async fn an_http2_response_whose_client_never_opens_its_window_is_cut_off() {
    // The idle timeout stays at its 30 s: a request is open, so only the send timeout can
    // close these connections within the test's bound.
    let app = TestApp::spawn_with(|o| o.server.web.send_timeout_secs = 1).await;

    let mut shut = asked_with_no_window(&app).await;
    let answered = Instant::now();
    loop {
        match shut.next(BOUND).await {
            Next::Closed => break,
            Next::Quiet => panic!(
                "a response untaken for {BOUND:?} kept its HTTP/2 connection and request open"
            ),
            Next::Frame {
                kind: DATA, len, ..
            } if len > 0 => panic!("data sent with no window: the test proves nothing"),
            Next::Frame { .. } => {}
        }
    }
    assert!(
        answered.elapsed() >= Duration::from_millis(800),
        "cut by the send timeout, not at once: {:?}",
        answered.elapsed()
    );

    // PINGs and their answers are not the response being taken.
    let mut pinging = asked_with_no_window(&app).await;
    assert!(
        pinging
            .closed_by_server(Some(Duration::from_millis(200)))
            .await,
        "PINGs every 200 ms kept an untaken response open"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_http2_response_taken_slowly_is_not_cut() {
    // Both timeouts at 1 s: neither may cut a client that keeps taking its response, though
    // hyper would take the whole body from the server at the first byte of window if it were
    // handed on at once, ending the request long before the client has it.
    let app = TestApp::spawn_with(|o| {
        o.server.web.send_timeout_secs = 1;
        o.server.web.header_read_timeout_secs = 1;
    })
    .await;
    let mut h2 = asked_with_no_window(&app).await;
    // 8 KiB more of window, on the stream and on the connection, every 250 ms: 32 KiB/s,
    // each piece the server hands on taken well within the 1 s timeout, the whole body much
    // later than that.
    let started = Instant::now();
    let mut received = 0;
    let increment = 8 * 1024u32;
    'body: loop {
        for stream in [0, 1] {
            assert!(
                h2.send(&frame(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes()))
                    .await,
                "closed while the response was being taken, after {received} bytes"
            );
        }
        let round = tokio::time::Instant::now() + Duration::from_millis(250);
        loop {
            match h2.next(round - tokio::time::Instant::now()).await {
                Next::Closed => panic!(
                    "closed while the response was being taken, after {received} bytes in {:?}",
                    started.elapsed()
                ),
                Next::Quiet => break,
                Next::Frame {
                    kind: DATA,
                    stream: 1,
                    len,
                    end,
                } => {
                    received += len;
                    if end {
                        break 'body;
                    }
                }
                Next::Frame { .. } => {}
            }
        }
    }
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "the body ({received} bytes) took {:?}, not much longer than the timeout: the test proves nothing",
        started.elapsed()
    );
    app.stop().await;
}
