//! Deployment shape 2 with the real binaries: `portcullis server` and `portcullis-agent` (the
//! agent alone, as a data-store host runs it) as separate processes, set up the way an
//! operator would (a master key, the one-time setup token of the first start, `bootstrap` and
//! `login` with TOTP, `key show` for the pin, `agents create` for the agent token), then a
//! request end to end, and the agent's revocation ending its process with exit code 7.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{agent_bin, bin};

/// Kills and reaps the child even when an assertion fails.
pub(crate) struct Running(pub(crate) Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

pub(crate) fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let out = bin()
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .expect("run portcullis");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn run_with_stdin(args: &[&str], envs: &[(&str, &str)], stdin: &str) -> (i32, String, String) {
    use std::io::Write;
    let mut child = bin()
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run portcullis");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write file");
}

#[tokio::test(flavor = "multi_thread")]
async fn separate_server_and_agent_processes_execute_a_pinned_signed_request() {
    let dir = tempfile::tempdir().expect("temp");
    let data = dir.path().join("server-data");
    let demo = dir.path().join("target.db");
    portcullis::devstack::create_demo_db(&demo)
        .await
        .expect("demo db");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let server_toml = dir.path().join("server.toml");
    write(
        &server_toml,
        &format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n\n[[connections]]\nname = \"shop\"\nkind = \"sqlite\"\nenvironment = \"staging\"\n",
            data.display()
        ),
    );
    let server = Running(
        bin()
            .args(["server", "--config"])
            .arg(&server_toml)
            // An environment override of a nested setting; the agent applies the signed cap.
            .env("PORTCULLIS_EXECUTION__ROW_CAP", "5")
            .env(
                "PORTCULLIS_MASTER_KEY",
                portcullis_identity::MasterKey::generate(),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn server"),
    );
    let setup_file = data.join("setup.token");
    wait_for("the server's one-time setup token", || {
        setup_file.exists() && probe::health_ok(&url)
    });
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&setup_file).expect("meta").permissions(),
    ) & 0o777;
    assert_eq!(mode, 0o600);
    let config_dir = dir.path().join("cli-config");
    let env = [
        ("PORTCULLIS_SERVER", url.as_str()),
        ("PORTCULLIS_CONFIG_DIR", config_dir.to_str().expect("utf8")),
    ];
    // Nothing works before someone signs in (SEC-2).
    let (code, _, err) = run(&["request", "list"], &env);
    assert_eq!(code, 7, "{err}");
    let password = "correct horse battery staple 42";
    let (code, out, err) = run_with_stdin(
        &[
            "bootstrap",
            "--setup-token-file",
            setup_file.to_str().expect("utf8"),
            "--name",
            "alice",
            "--password-stdin",
            "--json",
        ],
        &env,
        &format!("{password}\n"),
    );
    assert_eq!(code, 0, "{err}");
    let created: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(created["recovery_codes"].as_array().map(Vec::len), Some(10));
    assert!(!setup_file.exists(), "the setup token is spent");
    let totp = portcullis_identity::TotpSecret::from_base32(
        created["totp_secret"].as_str().expect("secret"),
    )
    .expect("base32");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let (code, _, err) = run_with_stdin(
        &[
            "login",
            "--name",
            "alice",
            "--code",
            &totp.current_code(now),
            "--password-stdin",
        ],
        &env,
        &format!("{password}\n"),
    );
    assert_eq!(code, 0, "{err}");
    let sessions = config_dir.join("sessions.json");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&sessions).expect("meta").permissions(),
    ) & 0o777;
    assert_eq!(mode, 0o600, "the stored session is private");

    let (code, pin, err) = run(
        &["key", "show", "--data", data.to_str().expect("utf8")],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(pin.contains("[[trusted_keys]]"));
    let (code, agent_token, err) = run(&["agents", "create", "shop-agent"], &env);
    assert_eq!(code, 0, "{err}");
    let token_file = dir.path().join("agent.token");
    write(&token_file, agent_token.trim());

    let agent_toml = dir.path().join("agent.toml");
    write(
        &agent_toml,
        &format!(
            "name = \"shop-agent\"\nserver_url = \"{url}\"\ntoken_file = \"{}\"\nready_file = \"{}\"\n\n{pin}\n[[connections]]\nname = \"shop\"\nkind = \"sqlite\"\nenvironment = \"staging\"\nallow = [\"read\"]\npath = \"{}\"\n",
            token_file.display(),
            dir.path().join("agent.ready").display(),
            demo.display()
        ),
    );
    let mut agent = Running(
        agent_bin()
            .arg("--config")
            .arg(&agent_toml)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn agent"),
    );
    let ready = dir.path().join("agent.ready");
    wait_for("the agent's ready file", || ready.exists());

    let (code, out, err) = run(
        &[
            "exec",
            "--connection",
            "shop",
            "--reason",
            "two processes",
            "--json",
            "SELECT COUNT(*) AS n FROM orders",
        ],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(v["columns"], serde_json::json!(["n"]));
    assert_eq!(v["rows"], serde_json::json!([[10]]));

    let (code, out, err) = run(
        &[
            "exec",
            "--connection",
            "shop",
            "--reason",
            "cap",
            "--json",
            "SELECT id FROM customers ORDER BY id",
        ],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(
        v["rows"].as_array().map(Vec::len),
        Some(5),
        "PORTCULLIS_EXECUTION__ROW_CAP=5 reaches the agent through the token"
    );
    assert_eq!(v["truncated"], true);

    // Without a policy rule, writes wait for approval: the CLI gives up waiting with exit 4
    // and the request stays pending.
    let (code, _, err) = run(
        &[
            "exec",
            "--connection",
            "shop",
            "--reason",
            "write",
            "--wait",
            "1",
            "UPDATE orders SET note = 'x'",
        ],
        &env,
    );
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("pending_approval"), "{err}");

    let (code, out, _) = run(&["agents", "--json"], &env);
    assert_eq!(code, 0);
    let agents: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(agents[0]["name"], "shop-agent");
    assert_eq!(agents[0]["connected"], true);

    let (code, out, err) = run(
        &[
            "policy",
            "check",
            "--connection",
            "shop",
            "--as",
            "developer",
            "UPDATE orders SET note = 'x'",
        ],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("held for approval") && out.contains("orders"),
        "{out}"
    );
    let (code, out, err) = run(&["alerts", "--json"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("agent.created"),
        "creating an agent is alerted: {out}"
    );

    people_commands(dir.path(), &url, &env, password);

    // IR-5 through the binary's named command. The running agent's waiting claims end at
    // once; its next claim is refused and the process stops with exit code 7 (the server
    // refused the credential).
    assert!(
        agent.0.try_wait().expect("agent status").is_none(),
        "the agent runs until revoked"
    );
    let (code, _, err) = run(&["agent", "revoke", "shop-agent"], &env);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = run(&["agents", "--json"], &env);
    assert_eq!(code, 0);
    let agents: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert!(agents[0]["revoked_at"].is_string(), "{agents}");
    let mut status = None;
    wait_for("the revoked agent to exit", || {
        status = agent.0.try_wait().expect("agent status");
        status.is_some()
    });
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(7),
        "a revoked agent exits with 7"
    );

    drop(server);
    let (code, out, err) = run(
        &["audit", "verify", "--data", data.to_str().expect("utf8")],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
}

/// `portcullis user add|list|suspend|unsuspend|reset-mfa`, `enrol`, `password` and `vault
/// rotate` through the binary, as an admin signed in with `login` (AUTH-4, AUTH-7, SEC-3).
fn people_commands(dir: &Path, url: &str, admin_env: &[(&str, &str)], admin_password: &str) {
    let (code, out, err) = run(
        &["user", "add", "bob", "--role", "developer", "--json"],
        admin_env,
    );
    assert_eq!(code, 0, "{err}");
    let added: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(added["info"]["role"], "developer");
    let invite = dir.join("bob.invite");
    write(
        &invite,
        added["invite"]["enrol_token"].as_str().expect("token"),
    );
    let bob_dir = dir.join("bob-config");
    let bob_env = [
        ("PORTCULLIS_SERVER", url),
        ("PORTCULLIS_CONFIG_DIR", bob_dir.to_str().expect("utf8")),
    ];
    let bob_password = "amber tugboat violin 2261 quarry";
    let (code, _, err) = run_with_stdin(
        &[
            "enrol",
            "--token-file",
            invite.to_str().expect("utf8"),
            "--no-mfa",
            "--password-stdin",
        ],
        &bob_env,
        &format!("{bob_password}\n"),
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run_with_stdin(
        &["login", "--name", "bob", "--password-stdin"],
        &bob_env,
        &format!("{bob_password}\n"),
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(&["whoami", "--json"], &bob_env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("bob"), "{out}");

    let (code, out, err) = run(&["user", "list", "--json"], admin_env);
    assert_eq!(code, 0, "{err}");
    let users: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    let bob = users
        .as_array()
        .and_then(|u| u.iter().find(|u| u["name"] == "bob"))
        .expect("bob listed");
    assert_eq!(bob["active_sessions"], 1);
    let (code, out, err) = run(&["user", "list"], admin_env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("NAME") && out.contains("bob"), "{out}");

    let (code, out, err) = run(
        &[
            "user",
            "suspend",
            "bob",
            "--reason",
            "offboarding",
            "--json",
        ],
        admin_env,
    );
    assert_eq!(code, 0, "{err}");
    let suspended: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(suspended["sessions_revoked"], 1);
    let (code, _, err) = run(&["whoami"], &bob_env);
    assert_eq!(code, 7, "a suspended user's session ends at once: {err}");
    let (code, _, err) = run(&["user", "suspend", "nobody"], admin_env);
    assert_ne!(code, 0, "{err}");
    let (code, _, err) = run(&["user", "unsuspend", "bob"], admin_env);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run_with_stdin(
        &["login", "--name", "bob", "--password-stdin"],
        &bob_env,
        &format!("{bob_password}\n"),
    );
    assert_eq!(code, 0, "signs in again after unsuspend: {err}");
    let (code, out, err) = run(&["user", "reset-mfa", "bob", "--json"], admin_env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("enrol_token"), "{out}");

    let (code, out, err) = run(&["vault", "rotate", "--json"], admin_env);
    assert_eq!(code, 0, "{err}");
    let rotated: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(rotated["version"], 2);

    let (code, out, err) = run_with_stdin(
        &["password", "--password-stdin", "--json"],
        admin_env,
        &format!("{admin_password}\nnew lantern mosaic 5512 quarry\n"),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("sessions_revoked"), "{out}");
    let (code, _, err) = run(&["whoami"], admin_env);
    assert_eq!(code, 0, "the admin's own session goes on: {err}");
}

pub(crate) mod probe {
    /// A blocking health probe with std only (keeps this test free of a second HTTP stack).
    pub(crate) fn health_ok(url: &str) -> bool {
        use std::io::{Read, Write};
        let addr = url.trim_start_matches("http://");
        let Ok(mut s) = std::net::TcpStream::connect(addr) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
        if s.write_all(
            format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .is_err()
        {
            return false;
        }
        let mut buf = String::new();
        let _ = s.read_to_string(&mut buf);
        buf.starts_with("HTTP/1.1 200")
    }
}
