//! Agent configuration (NET-4, EX-1): the agent refuses a plain-HTTP server URL beyond
//! loopback unless `allow_insecure` is set, before it makes any connection, and refuses a
//! pinned key whose id does not match the key.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use portcullis_agent::AgentConfig;
use portcullis_agent::config::{ConfigError, PinnedKey, TargetConfig, check_server_url};
use portcullis_core::{ConnectionKind, Environment, OperationClass};
use portcullis_proto::token::{KeyId, public_key_base64};

use crate::harness::{agent_bin, bin};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Accepted,
    Insecure,
    Invalid,
}

fn check(url: &str, allow_insecure: bool, expect: Expect) {
    let got = match check_server_url(url, allow_insecure) {
        Ok(()) => Expect::Accepted,
        Err(ConfigError::InsecureServerUrl(_)) => Expect::Insecure,
        Err(ConfigError::Invalid(_)) => Expect::Invalid,
        Err(other) => panic!("{url}: unexpected error {other}"),
    };
    assert_eq!(
        got, expect,
        "check_server_url({url:?}, allow_insecure = {allow_insecure})"
    );
}

/// NET-4: plain HTTP only to loopback unless `allow_insecure`; https always; other schemes and
/// credentials in the URL never.
#[test]
fn net_4_server_url_table() {
    use Expect::*;
    check("http://10.0.0.5:7070", false, Insecure);
    check("http://10.0.0.5:7070", true, Accepted);
    check("http://192.0.2.10:7070/", false, Insecure);
    check("http://portcullis.example.com", false, Insecure);
    check("http://127.0.0.1.example.com:7070", false, Insecure);
    check("http://localhost.example.com:7070", false, Insecure);
    check("http://[::ffff:10.0.0.5]:7070", false, Insecure);
    check("http://127.0.0.1:7070", false, Accepted);
    check("http://127.0.0.1", false, Accepted);
    check("http://localhost:7070", false, Accepted);
    check("http://LOCALHOST:7070", false, Accepted);
    check("http://[::1]:7070", false, Accepted);
    check("https://portcullis.example.com", false, Accepted);
    check("https://10.0.0.5:7443/", false, Accepted);
    check("ftp://127.0.0.1/", false, Invalid);
    check("ftp://portcullis.example.com/", true, Invalid);
    check("ws://127.0.0.1:7070", true, Invalid);
    check("https://user:secret@portcullis.example.com", false, Invalid);
    check("http://user@127.0.0.1:7070", true, Invalid);
    check("not a url", true, Invalid);
}

fn pin_for(key: &SigningKey) -> PinnedKey {
    let public = key.verifying_key();
    PinnedKey {
        key_id: KeyId::of(&public).to_hex(),
        public_key: public_key_base64(&public),
    }
}

fn fresh_key() -> SigningKey {
    SigningKey::from_bytes(&rand::random::<[u8; 32]>())
}

fn config_with(pins: Vec<PinnedKey>) -> AgentConfig {
    AgentConfig {
        name: "edge-1".into(),
        server_url: "http://127.0.0.1:7070".into(),
        trusted_keys: pins,
        connections: vec![TargetConfig {
            path: Some(PathBuf::from("/nonexistent/demo.db")),
            ..TargetConfig::new(
                "demo".parse().expect("name"),
                ConnectionKind::Sqlite,
                Environment::Development,
                vec![OperationClass::Read],
            )
        }],
        ..AgentConfig::default()
    }
}

/// EX-1: a pinned key whose key_id is not the id of its public key is refused at validation;
/// the same key with its own id is accepted.
#[test]
fn ex_1_pinned_key_id_must_match_the_key() {
    let (a, b) = (fresh_key(), fresh_key());
    let good = config_with(vec![pin_for(&a)]);
    good.validate().expect("a correctly pinned key validates");
    assert_eq!(good.trusted_keys().expect("keys parse").len(), 1);

    let mismatched = PinnedKey {
        key_id: pin_for(&a).key_id,
        public_key: pin_for(&b).public_key,
    };
    let bad = config_with(vec![pin_for(&a), mismatched]);
    assert!(
        matches!(bad.trusted_keys(), Err(ConfigError::Invalid(_))),
        "trusted_keys() refuses the mismatched pin"
    );
    match bad.validate() {
        Err(ConfigError::Invalid(msg)) => assert!(msg.contains(&pin_for(&a).key_id), "{msg}"),
        other => panic!("validate() must refuse a mismatched pin, got {other:?}"),
    }

    let garbage = PinnedKey {
        key_id: "not-hex".into(),
        public_key: pin_for(&a).public_key,
    };
    assert!(matches!(
        config_with(vec![garbage]).validate(),
        Err(ConfigError::Invalid(_))
    ));
    assert!(
        matches!(config_with(vec![]).validate(), Err(ConfigError::Invalid(_))),
        "at least one key is pinned"
    );
}

fn write_config(
    dir: &Path,
    file: &str,
    server_url: &str,
    allow_insecure: bool,
    target: &Path,
) -> PathBuf {
    let pin = pin_for(&fresh_key());
    let toml = format!(
        "name = \"edge-1\"\nserver_url = \"{server_url}\"\nallow_insecure = {allow_insecure}\n\n\
         [[trusted_keys]]\nkey_id = \"{}\"\npublic_key = \"{}\"\n\n\
         [[connections]]\nname = \"demo\"\nkind = \"sqlite\"\nenvironment = \"development\"\nallow = [\"read\"]\npath = \"{}\"\n",
        pin.key_id,
        pin.public_key,
        target.display()
    );
    let path = dir.join(file);
    std::fs::write(&path, toml).expect("write agent config");
    path
}

async fn create_sqlite(path: &Path) {
    use sqlx::Connection;
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true);
    let mut conn = sqlx::sqlite::SqliteConnection::connect_with(&options)
        .await
        .expect("create target db");
    sqlx::query("CREATE TABLE t (x INTEGER)")
        .execute(&mut conn)
        .await
        .expect("create table");
    conn.close().await.expect("close");
}

/// Runs the agent on `config`: `portcullis agent` when `dedicated` is false, the
/// `portcullis-agent` binary when it is true.
async fn run_agent(config: &Path, dedicated: bool) -> Output {
    let mut cmd = if dedicated {
        tokio::process::Command::from(agent_bin())
    } else {
        let mut cmd = tokio::process::Command::from(bin());
        cmd.arg("agent");
        cmd
    };
    cmd.arg("--config")
        .arg(config)
        .env(
            "PORTCULLIS_AGENT_TOKEN",
            "pca_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        )
        .env_remove("PORTCULLIS_AGENT_SERVER_URL")
        .env_remove("PORTCULLIS_AGENT_ALLOW_INSECURE")
        .env_remove("PORTCULLIS_AGENT_CONFIG")
        .kill_on_drop(true);
    // A connection attempt to the documentation address would hang; the refusal is immediate.
    tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .expect("the agent exited at once instead of trying to connect")
        .expect("run the binary")
}

/// NET-4: the real binaries (`portcullis agent` and `portcullis-agent`) refuse
/// `http://192.0.2.10:7070` (a documentation address nothing answers on) at configuration
/// time with exit code 2 and a message naming `allow_insecure`; the same file with
/// `allow_insecure = true` is otherwise valid.
#[tokio::test]
async fn net_4_agent_binary_refuses_plain_http_to_a_remote_server() {
    let dir = tempfile::tempdir().expect("temp dir");
    let target = dir.path().join("target.db");
    create_sqlite(&target).await;

    let insecure = write_config(
        dir.path(),
        "insecure.toml",
        "http://192.0.2.10:7070",
        false,
        &target,
    );
    for dedicated in [false, true] {
        let out = run_agent(&insecure, dedicated).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "dedicated binary: {dedicated}; stderr: {stderr}"
        );
        assert!(stderr.contains("allow_insecure"), "stderr: {stderr}");
        assert!(
            stderr.contains("192.0.2.10"),
            "stderr names the URL: {stderr}"
        );
    }

    // Control: the only thing wrong with the file is the insecure URL.
    let allowed = write_config(
        dir.path(),
        "allowed.toml",
        "http://192.0.2.10:7070",
        true,
        &target,
    );
    let config =
        AgentConfig::load(&allowed).expect("the same config with allow_insecure = true is valid");
    assert!(config.allow_insecure);
    let loopback = write_config(
        dir.path(),
        "loopback.toml",
        "http://127.0.0.1:7070",
        false,
        &target,
    );
    AgentConfig::load(&loopback).expect("plain HTTP to loopback is valid");
}
