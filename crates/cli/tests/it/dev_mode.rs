//! `portcullis dev` (deployment shape 1, NET-1, SEC-2): loopback only, and the two-minute demo
//! works end to end through the real binary.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use portcullis_client::Client;

use crate::harness::{bin, metrics_text};

/// Kills and reaps the child however the test ends.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn run_bin(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::from(bin());
    cmd.args(args).envs(envs.iter().copied()).kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the binary finished within 60 s")
        .expect("run the binary")
}

/// Deployment shape 1 / NET-1: `dev` refuses any non-loopback listen address at once, with
/// exit code 2, before touching its data directory.
#[tokio::test]
async fn dev_refuses_non_loopback_addresses() {
    let dir = tempfile::tempdir().expect("temp dir");
    for listen in ["0.0.0.0:0", "192.0.2.1:7070", "[::]:0"] {
        let data = dir.path().join("data");
        let started = Instant::now();
        let out = run_bin(
            &[
                "dev",
                "--listen",
                listen,
                "--data",
                data.to_str().expect("utf-8"),
            ],
            &[],
        )
        .await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{listen}: stderr: {stderr}");
        assert!(stderr.contains("loopback"), "{listen}: stderr: {stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{listen}: refused quickly"
        );
        assert!(!data.exists(), "{listen}: no state was created");
    }
}

/// Runs `cmd` with no input and its output, both streams, in `log`.
fn spawn_logged(mut cmd: std::process::Command, log: &Path) -> ChildGuard {
    let out = std::fs::File::create(log).expect("log file");
    let err = out.try_clone().expect("log file");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .expect("spawn");
    ChildGuard(child)
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("addr").port()
}

async fn wait_healthy(url: &str, child: &mut ChildGuard, log: &Path) {
    let client = Client::new(url, None).expect("client");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(true) = client.health().await {
            return;
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!(
                "portcullis dev exited with {status}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "portcullis dev did not answer /health within 20 s: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_for_token(path: &Path, child: &mut ChildGuard, log: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && text.ends_with('\n')
        {
            return text.trim().to_owned();
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!(
                "portcullis dev exited with {status}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{} was not written within 20 s: {}",
            path.display(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Deployment shape 1 / SEC-2: the real `portcullis dev` serves /health without a credential,
/// writes its admin token owner-only, runs a statement through the real `exec` command with
/// JSON output, and leaves an audit chain that verifies.
#[tokio::test]
async fn dev_mode_runs_the_demo_end_to_end() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let log = dir.path().join("dev.log");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut cmd = bin();
    cmd.args([
        "dev",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data",
        data.to_str().expect("utf-8"),
    ]);
    let mut child = spawn_logged(cmd, &log);
    wait_healthy(&url, &mut child, &log).await;

    // /health answers as soon as the server listens; the admin token is provisioned right
    // after, so wait for the complete file (it is written whole, then newline-terminated).
    let token_file = data.join("dev-admin.token");
    let token = wait_for_token(&token_file, &mut child, &log).await;
    let mode = std::fs::metadata(&token_file)
        .expect("dev-admin.token exists")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the admin token file is owner-only");
    assert!(token.starts_with("pct_"));

    let out = run_bin(
        &[
            "exec",
            "--connection",
            "demo",
            "--reason",
            "smoke",
            "--json",
            "SELECT id, name FROM customers ORDER BY id LIMIT 2",
        ],
        &[("PORTCULLIS_SERVER", &url), ("PORTCULLIS_TOKEN", &token)],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout} stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "exactly one JSON object on stdout: {stdout}"
    );
    let v: serde_json::Value = serde_json::from_str(lines[0]).expect("stdout is JSON");
    assert!(v.is_object(), "{v}");
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(v["columns"], serde_json::json!(["id", "name"]), "{v}");
    let rows = v["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 2, "{v}");
    assert_eq!(rows[0], serde_json::json!([1, "Ada Lovelace"]), "{v}");

    let out = run_bin(
        &["audit", "verify", "--data", data.to_str().expect("utf-8")],
        &[],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout} stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("intact"), "{stdout}");
    drop(child);
}

/// The connection cap stays under the open-files limit (`server/src/listener.rs`): the server
/// raises its soft limit to the hard one, and admits no more connections than that leaves
/// after the files it keeps for itself (256), saying so when `web.max_connections` (8,192 by
/// default) is more.
#[tokio::test]
async fn the_server_raises_its_open_files_limit_and_holds_its_connection_cap_under_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let log = dir.path().join("dev.log");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut cmd = std::process::Command::new("bash");
    cmd.args([
        "-c",
        r#"ulimit -Sn 300 && ulimit -Hn 600 && exec "$0" dev --listen "$1" --data "$2""#,
        env!("CARGO_BIN_EXE_portcullis"),
        &format!("127.0.0.1:{port}"),
        data.to_str().expect("utf-8"),
    ]);
    let mut child = spawn_logged(cmd, &log);
    wait_healthy(&url, &mut child, &log).await;

    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.0.id())).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("no open-files line in {limits}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&fields[3..5], ["600", "600"], "soft raised to hard: {line}");

    let token = wait_for_token(&data.join("dev-admin.token"), &mut child, &log).await;
    let metrics = metrics_text(&url, &token).await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "portcullis_max_connections 344"),
        "600 open files less 256 kept: {metrics}"
    );
    let logged = std::fs::read_to_string(&log).expect("log");
    assert!(
        logged.contains("web.max_connections is more than the open-files limit leaves"),
        "{logged}"
    );
    drop(child);
}
