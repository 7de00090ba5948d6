//! People against a real server on 127.0.0.1 started as `portcullis server` starts it (no dev
//! shortcuts): SEC-1, SEC-2, SEC-3, AUTH-1, AUTH-2, AUTH-3.

use portcullis_client::Client;
use portcullis_core::Policy;
use portcullis_identity::{MasterKey, TotpSecret};
use portcullis_proto::ErrorCode;
use portcullis_proto::people::{BootstrapRequest, BootstrapResponse, LoginRequest};
use portcullis_server::{Server, ServerConfig, ServerSecrets};
use tokio::net::TcpListener;

pub(crate) const PASSWORD: &str = "violet kestrel harbour 1987 lantern";

pub(crate) struct Fresh {
    pub(crate) server: Server,
    pub(crate) url: String,
    pub(crate) _dir: tempfile::TempDir,
    pub(crate) key: String,
}

async fn start_in(dir: &std::path::Path, key: &str) -> anyhow::Result<Server> {
    start_with(dir, key, |_| {}).await
}

/// A server as `portcullis server` starts it, in `dir/data`, with `configure` applied.
pub(crate) async fn start_with(
    dir: &std::path::Path,
    key: &str,
    configure: impl FnOnce(&mut ServerConfig),
) -> anyhow::Result<Server> {
    let mut config = ServerConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: dir.join("data"),
        ..ServerConfig::default()
    };
    configure(&mut config);
    let listener = TcpListener::bind(config.listen).await.expect("bind");
    let secrets = ServerSecrets {
        master_key: MasterKey::parse(key).expect("key"),
    };
    let policy = Policy::new(config.policy.clone()).expect("policy");
    Server::start(config, policy, secrets, listener).await
}

async fn fresh() -> Fresh {
    fresh_with(|_| {}).await
}

pub(crate) async fn fresh_with(configure: impl FnOnce(&mut ServerConfig)) -> Fresh {
    let dir = tempfile::tempdir().expect("temp");
    let key = MasterKey::generate();
    let server = start_with(dir.path(), &key, configure)
        .await
        .expect("start");
    let url = format!("http://{}", server.addr);
    Fresh {
        server,
        url,
        _dir: dir,
        key,
    }
}

impl Fresh {
    pub(crate) fn anonymous(&self) -> Client {
        Client::new(&self.url, None).expect("client")
    }

    pub(crate) fn setup_token(&self) -> String {
        std::fs::read_to_string(self.server.state.config.setup_token_file())
            .expect("setup token")
            .trim()
            .to_owned()
    }

    pub(crate) async fn bootstrap(&self) -> BootstrapResponse {
        self.anonymous()
            .bootstrap(&BootstrapRequest {
                setup_token: self.setup_token(),
                name: "alice".into(),
                password: PASSWORD.into(),
            })
            .await
            .expect("bootstrap")
    }

    pub(crate) async fn audit_actions(&self) -> Vec<String> {
        sqlx::query_scalar("SELECT action FROM audit_events ORDER BY seq")
            .fetch_all(self.server.state.store.reader())
            .await
            .expect("audit")
    }
}

pub(crate) fn login(code: Option<String>) -> LoginRequest {
    LoginRequest {
        name: "alice".into(),
        password: PASSWORD.into(),
        code,
        ..LoginRequest::default()
    }
}

pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

pub(crate) fn reason(e: &portcullis_client::ClientError) -> Option<String> {
    match e {
        portcullis_client::ClientError::Api { problem, .. } => problem.reason.clone(),
        _ => None,
    }
}

/// SEC-2: the first start writes a 0600 setup token; nothing but health, readiness,
/// bootstrap, login and enrol answers without credentials; the token works once.
#[tokio::test]
async fn sec2_bootstrap_once_with_the_setup_token_and_no_anonymous_access() {
    let app = fresh().await;
    let file = app.server.state.config.setup_token_file();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&file).expect("meta").permissions(),
    ) & 0o777;
    assert_eq!(mode, 0o600);
    let anonymous = app.anonymous();
    let (status, _) = anonymous
        .raw(reqwest::Method::GET, "/api/v1/requests", None)
        .await
        .expect("call");
    assert_eq!(status, 401);

    let wrong = anonymous
        .bootstrap(&BootstrapRequest {
            setup_token: "pcsetup_0123456789abcdef_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                .into(),
            name: "mallory".into(),
            password: PASSWORD.into(),
        })
        .await
        .expect_err("wrong token");
    assert_eq!(wrong.status(), Some(401));
    let weak = anonymous
        .bootstrap(&BootstrapRequest {
            setup_token: app.setup_token(),
            name: "alice".into(),
            password: "password1234".into(),
        })
        .await
        .expect_err("weak password");
    assert_eq!(weak.status(), Some(400), "{weak}");

    let created = app.bootstrap().await;
    assert!(created.otpauth_uri.starts_with("otpauth://totp/"));
    assert_eq!(created.recovery_codes.len(), 10);
    assert!(!file.exists(), "the spent token file is removed");
    let again = anonymous
        .bootstrap(&BootstrapRequest {
            setup_token: "pcsetup_0123456789abcdef_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                .into(),
            name: "bob".into(),
            password: PASSWORD.into(),
        })
        .await
        .expect_err("second bootstrap");
    assert_eq!(again.code(), Some(ErrorCode::Conflict));
    let actions = app.audit_actions().await;
    assert!(actions.contains(&"bootstrap.completed".to_owned()));
    assert!(actions.contains(&"bootstrap.failed".to_owned()));
    app.server.stop().await;
}

/// AUTH-1 and AUTH-2: one answer for every failure, the dummy hash for unknown users, TOTP
/// required, a code works once, a recovery code works once.
#[tokio::test]
async fn auth1_auth2_logins_fail_alike_and_codes_work_once() {
    let app = fresh().await;
    let created = app.bootstrap().await;
    let totp = TotpSecret::from_base32(&created.totp_secret).expect("secret");
    let anonymous = app.anonymous();

    let dummy_before = app.server.state.people.hasher.verified_against_dummy();
    let unknown = anonymous
        .login(&LoginRequest {
            name: "nobody".into(),
            ..login(None)
        })
        .await
        .expect_err("unknown user");
    assert_eq!(
        app.server.state.people.hasher.verified_against_dummy(),
        dummy_before + 1,
        "an unknown user costs the same Argon2 verification"
    );
    let wrong = anonymous
        .login(&LoginRequest {
            password: "not the password at all".into(),
            ..login(None)
        })
        .await
        .expect_err("wrong password");
    assert_eq!(unknown.status(), Some(401));
    assert_eq!(reason(&unknown), reason(&wrong), "indistinguishable");
    assert_eq!(reason(&wrong).as_deref(), Some("login_failed"));

    let missing = anonymous.login(&login(None)).await.expect_err("no code");
    assert_eq!(reason(&missing).as_deref(), Some("mfa_required"));
    let code = totp.current_code(now_secs());
    let session = anonymous
        .login(&login(Some(code.clone())))
        .await
        .expect("login");
    let signed_in = Client::new(&app.url, Some(&session.token)).expect("client");
    let me = signed_in.whoami().await.expect("whoami");
    assert_eq!(me.role, portcullis_core::Role::Admin);
    // AUTH-3: logging out ends the session on the very next request.
    signed_in.logout().await.expect("logout");
    let after = signed_in.whoami().await.expect_err("session ended");
    assert_eq!(after.status(), Some(401));
    let replay = anonymous
        .login(&login(Some(code)))
        .await
        .expect_err("replayed code");
    assert_eq!(reason(&replay).as_deref(), Some("login_failed"));

    let recovery = LoginRequest {
        recovery_code: Some(created.recovery_codes[3].clone()),
        ..login(None)
    };
    anonymous.login(&recovery).await.expect("recovery code");
    let reused = anonymous.login(&recovery).await.expect_err("used twice");
    assert_eq!(reason(&reused).as_deref(), Some("login_failed"));
    app.server.stop().await;
}

/// AUTH-1: repeated failures lock the account with backoff; while locked even the right
/// password and code are refused; the lock is audited.
#[tokio::test]
async fn auth1_repeated_failures_lock_the_account() {
    let app = fresh().await;
    let created = app.bootstrap().await;
    let totp = TotpSecret::from_base32(&created.totp_secret).expect("secret");
    let anonymous = app.anonymous();
    for _ in 0..5 {
        anonymous
            .login(&LoginRequest {
                password: "definitely wrong password".into(),
                ..login(None)
            })
            .await
            .expect_err("wrong");
    }
    let locked = anonymous
        .login(&login(Some(totp.current_code(now_secs()))))
        .await
        .expect_err("locked");
    assert_eq!(reason(&locked).as_deref(), Some("login_failed"));
    let actions = app.audit_actions().await;
    assert!(actions.contains(&"login.locked".to_owned()), "{actions:?}");
    assert!(!actions.contains(&"login.succeeded".to_owned()));
    app.server.stop().await;
}

/// AUTH-3: the session cookie is `HttpOnly; SameSite=Strict; Path=/` (no `Secure` only on
/// loopback HTTP); a state-changing request carried by the cookie needs this server's
/// `Origin`; sessions end when idle or too old (time injected).
#[tokio::test]
async fn auth3_cookie_attributes_origin_check_and_expiry() {
    let app = fresh().await;
    let created = app.bootstrap().await;
    let totp = TotpSecret::from_base32(&created.totp_secret).expect("secret");
    let http = reqwest::Client::builder().no_proxy().build().expect("http");
    let response = http
        .post(format!("{}/api/v1/login", app.url))
        .json(&login(Some(totp.current_code(now_secs()))))
        .send()
        .await
        .expect("login");
    assert_eq!(response.status(), 200);
    let cookie = response
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("cookie")
        .to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(
        !cookie.contains("Secure"),
        "plain HTTP on loopback: {cookie}"
    );
    let pair = cookie.split(';').next().expect("pair").to_owned();
    let token = pair.split_once('=').expect("=").1.to_owned();

    let get = http
        .get(format!("{}/api/v1/me", app.url))
        .header("cookie", &pair)
        .send()
        .await
        .expect("get");
    assert_eq!(get.status(), 200, "a safe request needs no Origin");
    let body = serde_json::json!({"connection": "demo", "statement": "SELECT 1", "reason": "x"});
    for origin in [
        None,
        Some("https://evil.example"),
        Some("http://127.0.0.1:1"),
    ] {
        let mut rb = http
            .post(format!("{}/api/v1/requests", app.url))
            .header("cookie", &pair)
            .json(&body);
        if let Some(o) = origin {
            rb = rb.header("origin", o);
        }
        let r = rb.send().await.expect("post");
        assert_eq!(r.status(), 403, "origin {origin:?}");
    }
    let own = http
        .post(format!("{}/api/v1/requests", app.url))
        .header("cookie", &pair)
        .header("origin", &app.url)
        .json(&body)
        .send()
        .await
        .expect("post");
    assert!(
        own.status() != 401 && own.status() != 403,
        "same origin passes authentication: {}",
        own.status()
    );
    assert!(
        app.audit_actions()
            .await
            .contains(&"origin.refused".to_owned())
    );

    let state = &app.server.state;
    let now = portcullis_server::clock::now_ms();
    // A re-check (the live-events socket's, WEB-8) is not a use: an open tab never keeps an
    // idle session alive.
    let recheck = |at: i64| state.auth.recheck(&state.store, &token, at);
    assert!(recheck(now + 10 * 60_000).await.is_ok());
    assert!(
        recheck(now + 15 * 60_000 + 1_000).await.is_err(),
        "a re-check must not move the idle clock"
    );
    let auth = |at: i64| state.auth.authenticate(&state.store, &token, at, "test");
    assert!(auth(now + 60_000).await.is_ok());
    assert!(
        auth(now + 60_000 + 15 * 60_000 + 1).await.is_err(),
        "idle for more than 15 minutes"
    );
    // A busy session still ends 12 hours after login.
    let busy = app
        .anonymous()
        .login(&LoginRequest {
            recovery_code: Some(created.recovery_codes[0].clone()),
            ..login(None)
        })
        .await
        .expect("login")
        .token;
    let auth = |at: i64| state.auth.authenticate(&state.store, &busy, at, "test");
    let mut at = now;
    while at + 10 * 60_000 < now + 12 * 3_600_000 {
        at += 10 * 60_000;
        assert!(auth(at).await.is_ok(), "used every 10 minutes");
    }
    assert!(
        auth(now + 12 * 3_600_000 + 60_000).await.is_err(),
        "past the absolute lifetime"
    );
    app.server.stop().await;
}

/// SEC-3: the TOTP seed is sealed; a start with another master key fails fast instead of
/// failing logins later.
#[tokio::test]
async fn sec3_a_wrong_master_key_stops_the_start() {
    let app = fresh().await;
    let created = app.bootstrap().await;
    let seed = TotpSecret::from_base32(&created.totp_secret).expect("secret");
    let sealed: Vec<u8> = sqlx::query_scalar("SELECT totp_sealed FROM users WHERE name = 'alice'")
        .fetch_one(app.server.state.store.reader())
        .await
        .expect("sealed");
    assert!(
        !sealed
            .windows(seed.as_bytes().len())
            .any(|w| w == seed.as_bytes()),
        "the seed is not stored in the clear"
    );
    let dir = app._dir.path().to_owned();
    let key = app.key.clone();
    let Fresh { server, _dir, .. } = app;
    server.stop().await;
    let refused = start_in(&dir, &MasterKey::generate())
        .await
        .err()
        .expect("another key must not start");
    assert!(
        format!("{refused:#}").contains("the vault cannot open users.totp_sealed"),
        "{refused:#}"
    );
    let again = start_in(&dir, &key).await.expect("the right key starts");
    again.stop().await;
    drop(_dir);
}

/// SEC-1: `portcullis server` refuses to start without a master key, or with a weak one, and
/// names the problem.
#[test]
fn sec1_the_server_refuses_a_missing_or_weak_master_key() {
    let dir = tempfile::tempdir().expect("temp");
    for (key, expected) in [
        (None, "PORTCULLIS_MASTER_KEY"),
        (Some("c2hvcnQ"), "at least 32"),
        (
            Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            "does not look random",
        ),
    ] {
        let mut cmd = crate::harness::bin();
        cmd.args(["server", "--listen", "127.0.0.1:0", "--data"])
            .arg(dir.path().join("data"))
            .env_remove("PORTCULLIS_MASTER_KEY");
        if let Some(k) = key {
            cmd.env("PORTCULLIS_MASTER_KEY", k);
        }
        let out = cmd.output().expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.to_lowercase().contains(&expected.to_lowercase()),
            "{key:?}: {stderr}"
        );
        if let Some(k) = key {
            assert!(!stderr.contains(k), "the key is never echoed");
        }
    }
    assert!(!dir.path().join("data").join("setup.token").exists());
}
