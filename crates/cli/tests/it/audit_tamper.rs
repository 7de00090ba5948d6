//! Tampering with the audit chain at rest and while the server runs (AUD-1, AUD-2, AUD-3,
//! AUD-4, AUD-6). Each case runs a real server, stops it (which writes the final signed
//! checkpoint), edits the state file directly with SQL, and runs the real binary's
//! `audit verify --data DIR`, which must exit 8 and name the first bad sequence number.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use portcullis::devstack::{DevOptions, DevStack};
use portcullis_core::RequestState;
use portcullis_proto::ErrorCode;
use portcullis_server::audit::{RowFields, hash_row};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqlitePoolOptions};
use sqlx::{AssertSqlSafe, Connection, Row};

use crate::harness::{TestApp, bin};

const AUDIT_BROKEN: i32 = 8;

/// A data directory whose server ran a few requests and was stopped cleanly.
struct Stopped {
    _dir: tempfile::TempDir,
    data: PathBuf,
    /// The last sequence number in the chain (and in the signed checkpoint).
    head: i64,
}

/// Starts a server on a data directory the test owns, runs three SELECTs and one statement
/// that fails in the database, and stops it so that the final checkpoint is written.
async fn stopped_app() -> Stopped {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let app = spawn_on(&data).await;
    run_some_requests(&app).await;
    app.stop().await;
    let head = scalar(&data, "SELECT COALESCE(MAX(seq), 0) FROM audit_events").await;
    assert!(
        head >= 10,
        "the chain should hold at least 10 events, has {head}"
    );
    assert_eq!(
        scalar(&data, "SELECT COUNT(*) FROM audit_events").await,
        head,
        "the chain is dense before tampering"
    );
    Stopped {
        _dir: dir,
        data,
        head,
    }
}

async fn spawn_on(data: &Path) -> TestApp {
    let data = data.to_owned();
    TestApp::spawn_with(move |o: &mut DevOptions| o.data_dir = data).await
}

async fn run_some_requests(app: &TestApp) {
    for _ in 0..3 {
        let out = app
            .exec(&app.admin, "SELECT id, name FROM customers ORDER BY id")
            .await
            .expect("select accepted");
        assert_eq!(out.request.state, RequestState::Succeeded);
    }
    let failed = app
        .exec(&app.admin, "SELECT * FROM no_such_table")
        .await
        .expect("request accepted");
    assert_eq!(failed.request.state, RequestState::Failed);
}

fn state_file(data: &Path) -> PathBuf {
    data.join("portcullis.db")
}

async fn open_rw(data: &Path) -> SqliteConnection {
    let options = SqliteConnectOptions::new()
        .filename(state_file(data))
        .busy_timeout(Duration::from_secs(10));
    SqliteConnection::connect_with(&options)
        .await
        .expect("open the state file read-write")
}

async fn scalar(data: &Path, sql: &str) -> i64 {
    let mut conn = open_rw(data).await;
    let v: i64 = sqlx::query_scalar(AssertSqlSafe(sql.to_owned()))
        .fetch_one(&mut conn)
        .await
        .expect("scalar query");
    conn.close().await.expect("close");
    v
}

/// Runs `statements` on the state file, outside the server, as an attacker with file access.
async fn tamper(data: &Path, statements: &[String]) {
    let mut conn = open_rw(data).await;
    for s in statements {
        sqlx::query(AssertSqlSafe(s.clone()))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{s}: {e}"));
    }
    conn.close().await.expect("close");
}

/// Runs the real binary with `args`, with a deadline; the child dies with the future.
async fn run_bin(args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::from(bin());
    cmd.args(args)
        .kill_on_drop(true)
        .env_remove("PORTCULLIS_TOKEN")
        .env_remove("PORTCULLIS_SERVER");
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the binary finished within 60 s")
        .expect("run the binary")
}

async fn verify(data: &Path) -> Output {
    run_bin(&[
        "audit",
        "verify",
        "--data",
        data.to_str().expect("utf-8 path"),
    ])
    .await
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The number after "first bad sequence number: " in `stderr`.
fn first_bad(stderr: &str) -> Option<i64> {
    let rest = stderr.split("first bad sequence number: ").nth(1)?;
    rest.chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

/// Asserts `audit verify` exits 8 and names `expected` as the first bad sequence number.
async fn assert_broken_at(data: &Path, expected: i64) {
    let out = verify(data).await;
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(AUDIT_BROKEN),
        "stdout: {} stderr: {stderr}",
        text(&out.stdout)
    );
    assert_eq!(first_bad(&stderr), Some(expected), "stderr: {stderr}");
}

/// AUD-1/AUD-3: changing one column of one event breaks that event's hash.
#[tokio::test]
async fn aud_3_modified_column_is_named_by_verify() {
    let s = stopped_app().await;
    let before = scalar(
        &s.data,
        "SELECT COUNT(*) FROM audit_events WHERE seq = 3 AND details <> '{}'",
    )
    .await;
    assert_eq!(before, 1, "seq 3 carries details to tamper with");
    tamper(
        &s.data,
        &["UPDATE audit_events SET details = '{}' WHERE seq = 3".to_owned()],
    )
    .await;
    assert_broken_at(&s.data, 3).await;
}

/// AUD-1/AUD-3: a deleted event in the middle leaves a gap that verify names.
#[tokio::test]
async fn aud_3_deleted_middle_row_is_named_by_verify() {
    let s = stopped_app().await;
    tamper(
        &s.data,
        &["DELETE FROM audit_events WHERE seq = 4".to_owned()],
    )
    .await;
    assert_broken_at(&s.data, 4).await;
}

/// AUD-1/AUD-3: two events swapped (renumbered so the sequence stays dense) no longer link.
#[tokio::test]
async fn aud_3_reordered_rows_are_named_by_verify() {
    let s = stopped_app().await;
    tamper(
        &s.data,
        &[
            "UPDATE audit_events SET seq = -1 WHERE seq = 5".to_owned(),
            "UPDATE audit_events SET seq = 5 WHERE seq = 6".to_owned(),
            "UPDATE audit_events SET seq = 6 WHERE seq = -1".to_owned(),
        ],
    )
    .await;
    assert_eq!(
        scalar(&s.data, "SELECT COUNT(*) FROM audit_events").await,
        s.head,
        "still dense"
    );
    assert_broken_at(&s.data, 5).await;
}

/// AUD-3/AUD-4: deleting the newest event leaves a valid-looking chain; only the signed
/// checkpoint proves the event existed, and verify names it.
#[tokio::test]
async fn aud_4_deleted_last_row_is_caught_by_the_checkpoint() {
    let s = stopped_app().await;
    tamper(
        &s.data,
        &[format!("DELETE FROM audit_events WHERE seq = {}", s.head)],
    )
    .await;
    assert_broken_at(&s.data, s.head).await;
}

/// AUD-3/AUD-4: truncating the last three events and appending a forged one that chains
/// correctly (the hash algorithm is public) still fails, because the signed checkpoint
/// covers a sequence number whose hash the forger cannot reproduce.
#[tokio::test]
async fn aud_4_truncate_then_append_is_caught_by_the_checkpoint() {
    let s = stopped_app().await;
    tamper(
        &s.data,
        &[format!(
            "DELETE FROM audit_events WHERE seq > {}",
            s.head - 3
        )],
    )
    .await;

    let mut conn = open_rw(&s.data).await;
    let head = sqlx::query("SELECT seq, hash, at FROM audit_events ORDER BY seq DESC LIMIT 1")
        .fetch_one(&mut conn)
        .await
        .expect("new head");
    let (head_seq, head_hash, head_at): (i64, Vec<u8>, String) =
        (head.get(0), head.get(1), head.get(2));
    assert_eq!(head_seq, s.head - 3);
    let seq = head_seq + 1;
    let details = r#"{"key_id":"0000000000000000","version":"0.1.0"}"#;
    let fields = RowFields {
        seq,
        prev_hash: &head_hash,
        at: &head_at,
        actor: "system",
        action: "server.started",
        target: "127.0.0.1:7070",
        outcome: "success",
        correlation_id: "system:start",
        client_addr: "-",
        details,
    };
    let hash = hash_row(&fields);
    sqlx::query(
        "INSERT INTO audit_events (seq, at, actor, action, target, outcome, correlation_id, client_addr, details, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(seq)
    .bind(fields.at)
    .bind(fields.actor)
    .bind(fields.action)
    .bind(fields.target)
    .bind(fields.outcome)
    .bind(fields.correlation_id)
    .bind(fields.client_addr)
    .bind(fields.details)
    .bind(&head_hash[..])
    .bind(&hash[..])
    .execute(&mut conn)
    .await
    .expect("append the forged event");
    conn.close().await.expect("close");

    // The forged chain is internally consistent: without the checkpoint nothing is wrong.
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(state_file(&s.data))
                .read_only(true),
        )
        .await
        .expect("open read-only");
    let unanchored = portcullis_server::audit::verify(&pool, None)
        .await
        .expect("verify without checkpoint");
    pool.close().await;
    assert_eq!(
        unanchored.first_bad_seq, None,
        "the forged row chains correctly: {unanchored:?}"
    );
    assert_eq!(unanchored.head_seq, seq);

    let out = verify(&s.data).await;
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(AUDIT_BROKEN),
        "stdout: {} stderr: {stderr}",
        text(&out.stdout)
    );
    let bad =
        first_bad(&stderr).unwrap_or_else(|| panic!("no first bad sequence number in: {stderr}"));
    assert!(
        bad > head_seq && bad <= s.head,
        "first bad seq {bad} should lie after the last genuine event {head_seq}: {stderr}"
    );
    assert!(
        stderr.contains("checkpoint"),
        "the checkpoint is what failed: {stderr}"
    );
}

/// AUD-3/AUD-6: an untouched chain verifies (exit 0, the event count on stdout), and the
/// offline export is JSON Lines with every sequence number from 1 to the head, linked.
#[tokio::test]
async fn aud_3_intact_chain_verifies_and_aud_6_exports_every_event() {
    let s = stopped_app().await;
    let out = verify(&s.data).await;
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout} stderr: {}",
        text(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("{} events", s.head)),
        "stdout names the event count {}: {stdout}",
        s.head
    );

    let out = run_bin(&[
        "audit",
        "export",
        "--data",
        s.data.to_str().expect("utf-8 path"),
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let events: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let seqs: Vec<i64> = events
        .iter()
        .map(|e| e["seq"].as_i64().expect("seq is an integer"))
        .collect();
    assert_eq!(seqs, (1..=s.head).collect::<Vec<_>>());
    assert_eq!(
        events[0]["prev_hash"],
        "0".repeat(64),
        "the chain starts at the genesis hash"
    );
    for pair in events.windows(2) {
        assert_eq!(
            pair[1]["prev_hash"], pair[0]["hash"],
            "event {} links to its predecessor",
            pair[1]["seq"]
        );
    }
    for e in &events {
        for field in [
            "at",
            "actor",
            "action",
            "target",
            "outcome",
            "correlation_id",
            "client_addr",
        ] {
            assert!(e[field].is_string(), "{field} in {e}");
        }
    }
}

/// AUD-2/AUD-4: a server refuses to start on a state file that no longer contains its
/// signed checkpoint (fail closed), naming the checkpoint and the truncation.
#[tokio::test]
async fn aud_2_server_refuses_to_start_after_truncation() {
    let s = stopped_app().await;
    tamper(
        &s.data,
        &[format!("DELETE FROM audit_events WHERE seq = {}", s.head)],
    )
    .await;
    let started = DevStack::start(DevOptions::new(
        "127.0.0.1:0".parse().expect("addr"),
        s.data.clone(),
    ))
    .await;
    match started {
        Ok(stack) => {
            stack.stop().await;
            panic!("the server started on a truncated audit log");
        }
        Err(e) => {
            let message = format!("{e:#}");
            assert!(
                message.contains("checkpoint") && message.contains("truncated"),
                "{message}"
            );
        }
    }
}

/// AUD-2: when the chain head in the store is not the one the server committed (an event
/// was deleted behind its back), the next action fails with 503 and nothing executes.
#[tokio::test]
async fn aud_2_tampering_while_running_fails_closed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let app = spawn_on(&data).await;
    run_some_requests(&app).await;
    let checksum = app.demo_checksum().await;
    let requests_before = scalar(&data, "SELECT COUNT(*) FROM requests").await;

    tamper(
        &data,
        &["DELETE FROM audit_events WHERE seq = (SELECT MAX(seq) FROM audit_events)".to_owned()],
    )
    .await;

    let err = app
        .exec(
            &app.admin,
            "UPDATE customers SET name = 'tampered' WHERE id = 1",
        )
        .await
        .expect_err("the request must fail while the chain is inconsistent");
    assert_eq!(err.status(), Some(503), "{err}");
    assert_eq!(err.code(), Some(ErrorCode::Unavailable), "{err}");
    assert_eq!(app.demo_checksum().await, checksum, "nothing executed");
    assert_eq!(
        scalar(&data, "SELECT COUNT(*) FROM requests").await,
        requests_before,
        "no request was recorded"
    );
    assert_eq!(
        app.demo_scalar("SELECT COUNT(*) FROM customers WHERE name = 'tampered'")
            .await,
        0
    );
    app.stop().await;
}
