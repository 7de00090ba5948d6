//! Streamed results: agent → server → client row by row, against the real PostgreSQL on
//! 127.0.0.1, with the row cap lifted. Each test only reads `generate_series`, so none
//! touches shared state.

use std::time::Duration;

use portcullis_agent::config::TargetConfig;
use portcullis_client::{Client, HttpMethod};
use portcullis_core::RequestState;
use portcullis_proto::ErrorCode;
use portcullis_proto::api::CreateRequest;
use portcullis_proto::stream::ResultTrailer;
use serde_json::{Value, json};

use portcullis::devstack::DevOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use crate::connections::{BOUND, addr};
use crate::harness::TestApp;

fn pg_url() -> String {
    std::env::var("PORTCULLIS_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A read-only PostgreSQL connection `big` with no practical byte cap.
fn big_target() -> TargetConfig {
    serde_json::from_value(json!({
        "name": "big",
        "kind": "postgres",
        "environment": "development",
        "allow": ["read"],
        "credentials": { "read": { "url": pg_url() } },
        "max_result_bytes": 1u64 << 40,
    }))
    .expect("target")
}

async fn spawn(reader_wait_secs: u64) -> TestApp {
    spawn_with(reader_wait_secs, |_| {}).await
}

async fn spawn_with(reader_wait_secs: u64, more: impl FnOnce(&mut DevOptions)) -> TestApp {
    TestApp::spawn_with(|o| {
        o.extra.push(big_target());
        o.server.execution.row_cap = 10_000_000;
        o.server.execution.timeout_ms = 120_000;
        o.server.execution.stream_reader_wait_secs = reader_wait_secs;
        more(o);
    })
    .await
}

fn series(n: u64, stream: bool) -> CreateRequest {
    CreateRequest {
        connection: "big".parse().expect("name"),
        statement: format!(
            "SELECT g AS n, 'row ' || g AS label, g::numeric / 4 AS quarter FROM generate_series(1, {n}) AS g"
        ),
        reason: "streaming test".into(),
        stream,
    }
}

/// Creates a streamed read of `rows` rows, without waiting: its id.
async fn streamed(app: &TestApp, rows: u64) -> uuid::Uuid {
    let created = app
        .admin
        .create_request(&series(rows, true), Duration::ZERO)
        .await
        .expect("request");
    created.request.id
}

/// Reads a whole result stream: its lines, parsed.
async fn read_all(client: &Client, id: uuid::Uuid) -> Vec<Value> {
    let mut stream = client
        .result_stream(id, Duration::from_secs(30))
        .await
        .expect("result stream");
    let mut lines = Vec::new();
    while let Some(line) = stream.next_line().await.expect("line") {
        lines.push(serde_json::from_slice(&line).expect("json line"));
    }
    lines
}

/// Waits for `id` to end and checks it failed because its rows had nowhere to go.
async fn ends_not_delivered(app: &TestApp, id: uuid::Uuid) {
    ends_not_delivered_within(app, id, Duration::from_secs(60)).await;
}

async fn ends_not_delivered_within(app: &TestApp, id: uuid::Uuid, wait: Duration) {
    let outcome = app.admin.wait_request(id, wait).await.expect("wait");
    assert_eq!(
        outcome.request.state,
        RequestState::Failed,
        "not ended {wait:?} later"
    );
    assert_eq!(
        outcome.request.error.as_ref().map(|e| e.code.as_str()),
        Some("result_not_delivered")
    );
}

/// EX-3 with streaming: 200,000 rows — far beyond the 64 KiB chunks and every channel in
/// between — arrive in order, typed, with a trailer whose count matches; the audit records
/// the count; the stream is delivered once.
#[tokio::test]
async fn a_large_read_streams_through_in_order_and_only_once() {
    let app = spawn(30).await;
    let n = 200_000;
    let created = app
        .admin
        .create_request(&series(n, true), Duration::ZERO)
        .await
        .expect("request");
    let id = created.request.id;
    let lines = read_all(&app.admin, id).await;
    assert_eq!(lines.len() as u64, n + 2, "header, rows, trailer");
    assert_eq!(
        lines[0]["columns"]
            .as_array()
            .expect("columns")
            .iter()
            .map(|c| c["name"].as_str().expect("name"))
            .collect::<Vec<_>>(),
        ["n", "label", "quarter"]
    );
    for (i, row) in lines[1..=n as usize].iter().enumerate() {
        let g = i as u64 + 1;
        assert_eq!(row[0], json!(g), "row {g}");
        assert_eq!(row[1], json!(format!("row {g}")));
        assert!(row[2].is_string(), "numeric stays an exact string");
    }
    let trailer: ResultTrailer =
        serde_json::from_value(lines[n as usize + 1].clone()).expect("trailer");
    assert_eq!(trailer.state, RequestState::Succeeded);
    assert_eq!(trailer.row_count, n);
    assert!(!trailer.truncated);

    let view = app.admin.request_view(id).await.expect("view");
    assert_eq!(view.state, RequestState::Succeeded);
    let events = app.audit_events().await;
    let finished = events
        .iter()
        .find(|e| e["action"] == "request.finished" && e["target"] == format!("request:{id}"))
        .expect("finish audited");
    assert_eq!(finished["details"]["rows"], json!(n));

    let again = app
        .admin
        .result_stream(id, Duration::from_secs(1))
        .await
        .expect_err("delivered once");
    assert_eq!(again.code(), Some(ErrorCode::ResultGone));
    app.stop().await;
}

/// A buffered request's result can be read as the same NDJSON, within its retention.
#[tokio::test]
async fn a_buffered_result_reads_as_the_same_lines() {
    let app = spawn(30).await;
    let outcome = app
        .admin
        .create_request(&series(3, false), Duration::from_secs(30))
        .await
        .expect("request");
    assert_eq!(outcome.request.state, RequestState::Succeeded);
    assert_eq!(outcome.result.as_ref().map(|r| r.row_count), Some(3));
    let lines = read_all(&app.admin, outcome.request.id).await;
    assert_eq!(lines.len(), 5);
    assert_eq!(lines[1], json!([1, "row 1", "0.25000000000000000000"]));
    assert_eq!(lines[4]["state"], "succeeded");
    assert_eq!(lines[4]["row_count"], 3);
    app.stop().await;
}

/// Nobody reads a streamed result: the agent gives up after the reader wait, the read ends
/// `failed` with `result_not_delivered`, and a late reader is told so instead of hanging.
#[tokio::test]
async fn an_unread_stream_fails_cleanly() {
    let app = spawn(1).await;
    let id = streamed(&app, 10).await;
    ends_not_delivered(&app, id).await;
    let lines = read_all(&app.admin, id).await;
    assert_eq!(lines.len(), 1, "only the trailer: {lines:?}");
    assert_eq!(lines[0]["state"], "failed");
    assert_eq!(lines[0]["error"]["code"], "result_not_delivered");
    app.stop().await;
}

/// A reader that goes away mid-stream stops the read on the store (the agent is not left
/// pushing rows nobody takes) and the request ends `failed`, never re-run.
#[tokio::test]
async fn a_reader_leaving_midway_stops_the_read() {
    let app = spawn(30).await;
    let id = streamed(&app, 3_000_000).await;
    {
        let mut stream = app
            .admin
            .result_stream(id, Duration::from_secs(30))
            .await
            .expect("stream");
        for _ in 0..1_000 {
            stream.next_line().await.expect("line").expect("more lines");
        }
    }
    ends_not_delivered(&app, id).await;
    app.stop().await;
}

/// A reader that stops reading without going away (its connection open, its receive window
/// shut) is cut off after `web.send_timeout_secs` (`server/src/listener.rs`): its connection
/// is closed, the read on the store stops and the request ends `failed` within seconds.
/// Without the timeout the server's write to that reader waited for ever, and the stream, the
/// agent's worker and its target connection with it for half a minute and more.
#[tokio::test]
async fn a_reader_that_stops_reading_is_cut_off_and_the_read_stops() {
    let app = spawn_with(30, |o| o.server.web.send_timeout_secs = 1).await;
    let id = streamed(&app, 3_000_000).await;
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(4096)
        .expect("a small receive buffer");
    socket
        .bind("127.0.0.2:0".parse().expect("source"))
        .expect("bind");
    let mut reader = socket.connect(addr(&app)).await.expect("connect");
    let head = format!(
        "GET /api/v1/requests/{id}/result HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\r\n",
        app.stack.admin_token
    );
    reader.write_all(head.as_bytes()).await.expect("request");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(BOUND, reader.read(&mut buf))
            .await
            .expect("the head of the result")
            .expect("read");
        assert!(n > 0, "closed before the head");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // From here on the reader takes nothing, and keeps its connection open: within a few
    // seconds (the send timeout is 1 s) the read has stopped and the request has ended.
    ends_not_delivered_within(&app, id, BOUND).await;
    drop(reader);
    app.stop().await;
}

/// The route speaks NDJSON to any HTTP client, and an unknown request is 404.
#[tokio::test]
async fn the_result_route_is_plain_ndjson() {
    let app = spawn(30).await;
    let outcome = app
        .admin
        .create_request(&series(2, false), Duration::from_secs(30))
        .await
        .expect("request");
    let (status, body) = app
        .admin
        .raw(
            HttpMethod::GET,
            &format!("/api/v1/requests/{}/result", outcome.request.id),
            None,
        )
        .await
        .expect("raw");
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(text.lines().count(), 4, "{text}");
    assert!(text.ends_with('\n'));
    let missing = app
        .admin
        .result_stream(uuid::Uuid::new_v4(), Duration::from_secs(1))
        .await
        .expect_err("unknown");
    assert_eq!(missing.status(), Some(404));
    app.stop().await;
}
