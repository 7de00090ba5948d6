//! Credentials at rest (SEC-5, AUTH-5): API and agent tokens are high-entropy, prefixed, and
//! the state directory never holds them, only their SHA-256.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use portcullis::devstack::{ADMIN_TOKEN_FILE, DevOptions};
use portcullis_client::Client;
use portcullis_core::{ConnectionKind, Environment, Role};
use portcullis_proto::agent::{ClaimRequest, ServedConnection};
use portcullis_proto::api::CreateToken;
use sha2::Digest;

use crate::harness::TestApp;

/// The secret part of `pfx_<id>_<secret>` (which may itself contain `_`).
fn secret_part(token: &str) -> &str {
    token
        .splitn(3, '_')
        .nth(2)
        .unwrap_or_else(|| panic!("token has no secret part: {} chars", token.len()))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// The state file and its WAL and shared-memory companions, as raw bytes.
fn state_bytes(data: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    ["portcullis.db", "portcullis.db-wal", "portcullis.db-shm"]
        .iter()
        .map(|f| data.join(f))
        .filter(|p| p.exists())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
            (p, bytes)
        })
        .collect()
}

/// Every file under `dir`, except the dev-mode admin token file (which exists to hold the
/// bootstrap token in plain text, mode 0600).
fn all_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in
            std::fs::read_dir(&d).unwrap_or_else(|e| panic!("read_dir {}: {e}", d.display()))
        {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n != ADMIN_TOKEN_FILE) {
                // Files may vanish between listing and reading (WAL checkpoints).
                if let Ok(bytes) = std::fs::read(&path) {
                    out.push((path, bytes));
                }
            }
        }
    }
    out
}

fn assert_absent(files: &[(PathBuf, Vec<u8>)], tokens: &[String]) {
    for (path, bytes) in files {
        for token in tokens {
            assert!(
                !contains(bytes, token.as_bytes()),
                "{} holds a whole token in clear",
                path.display()
            );
            assert!(
                !contains(bytes, secret_part(token).as_bytes()),
                "{} holds a token's secret in clear",
                path.display()
            );
        }
    }
}

/// SEC-5 / AUTH-5: tokens of every role and an agent token, each used once, never appear in
/// the state file, its WAL or anywhere else in the data directory, whether the server is
/// running or stopped; what is stored is the token's SHA-256 (checked as a positive control,
/// so the scan is known to read the right bytes).
#[tokio::test]
async fn sec_5_tokens_are_stored_only_as_hashes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let d = data.clone();
    let app = TestApp::spawn_with(move |o: &mut DevOptions| o.data_dir = d).await;

    let mut tokens = Vec::new();
    let mut ids = Vec::new();
    for role in [
        Role::Viewer,
        Role::Developer,
        Role::Ops,
        Role::Ci,
        Role::Admin,
    ] {
        let created = app
            .admin
            .create_token(&CreateToken {
                name: format!("at-rest-{role}"),
                role,
                ttl_seconds: 3_600,
                environments: None,
            })
            .await
            .expect("token created");
        let client = Client::new(app.url(), Some(&created.token)).expect("client");
        assert_eq!(client.whoami().await.expect("token works").role, role);
        ids.push(created.info.id.clone());
        tokens.push(created.token);
    }
    let agent = app
        .admin
        .create_agent("at-rest-agent")
        .await
        .expect("agent created");
    let agent_client = Client::new(app.url(), Some(&agent.token)).expect("client");
    let claim = ClaimRequest {
        connections: vec![ServedConnection {
            name: "demo".parse().expect("name"),
            kind: ConnectionKind::Sqlite,
            environment: Environment::Development,
        }],
        wait_ms: 0,
    };
    agent_client
        .claim(&claim)
        .await
        .expect("the agent token authenticates");
    tokens.push(agent.token.clone());
    // Use every token a second time after the batched last-used times were written.
    app.admin
        .list_tokens(false)
        .await
        .expect("list (flushes last-used times)");

    for token in &tokens {
        assert!(
            token.starts_with("pct_") || token.starts_with("pca_"),
            "prefixed: {}",
            &token[..4]
        );
        let secret = secret_part(token);
        assert!(
            secret.len() >= 43,
            "secret has {} characters, want at least 43 (256 bits)",
            secret.len()
        );
        assert!(
            secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "secret is base64url"
        );
        assert!(
            URL_SAFE_NO_PAD.decode(secret).expect("base64url").len() >= 32,
            "at least 256 random bits"
        );
    }
    assert!(
        tokens[..5].iter().all(|t| t.starts_with("pct_")),
        "API tokens use the pct_ prefix"
    );
    assert!(
        agent.token.starts_with("pca_"),
        "agent tokens use the pca_ prefix"
    );

    // While running: the WAL holds the most recent pages.
    let running = all_files(&data);
    assert!(
        running.iter().any(|(p, _)| p.ends_with("portcullis.db")),
        "the scan sees the state file"
    );
    assert_absent(&running, &tokens);

    let admin_token = app.stack.admin_token.clone();
    app.stop().await;

    let stopped = state_bytes(&data);
    assert!(!stopped.is_empty(), "the state file exists");
    let mut all_tokens = tokens.clone();
    all_tokens.push(admin_token);
    assert_absent(&stopped, &all_tokens);
    assert_absent(&all_files(&data), &tokens);

    let everything: Vec<u8> = stopped
        .iter()
        .flat_map(|(_, b)| b.iter().copied())
        .collect();
    for (token, id) in tokens.iter().zip(&ids) {
        let hash: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        assert!(
            contains(&everything, &hash),
            "the SHA-256 of token {id} is what the store holds"
        );
        assert!(
            contains(&everything, id.as_bytes()),
            "the token id {id} is stored in clear to find the row"
        );
    }
}

/// AUTH-5: two tokens minted back to back share nothing but their prefix.
#[tokio::test]
async fn auth_5_tokens_are_unique_and_unpredictable() {
    let app = TestApp::spawn().await;
    let (_, a) = app.token(Role::Viewer).await;
    let (_, b) = app.token(Role::Viewer).await;
    assert_ne!(a, b);
    assert_ne!(secret_part(&a), secret_part(&b));
    assert_ne!(a.split('_').nth(1), b.split('_').nth(1), "ids differ");
    app.stop().await;
}

/// NET-5: a new state directory is owner-only (0700) and the state file and its WAL are 0600;
/// the signing key is 0600 inside a 0700 directory.
#[tokio::test]
async fn net_5_state_files_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let app = crate::harness::TestApp::spawn().await;
    app.exec(&app.admin, "SELECT 1").await.expect("request");
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    let dir = app.data_dir().to_owned();
    assert_eq!(mode(&dir), 0o700, "state directory");
    assert_eq!(mode(&dir.join("portcullis.db")), 0o600, "state file");
    assert_eq!(mode(&dir.join("keys")), 0o700, "key directory");
    assert_eq!(
        mode(&dir.join("keys").join("signing.key")),
        0o600,
        "signing key"
    );
    assert_eq!(mode(&dir.join("dev-admin.token")), 0o600, "admin token");
    app.stop().await;
}
