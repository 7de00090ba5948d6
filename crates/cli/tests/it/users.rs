//! Users after bootstrap, against a real server started as `portcullis server` starts it:
//! invitations and enrolment, MFA per role, step-up, trusted devices (AUTH-2), password change
//! (AUTH-4), suspension (AUTH-7), `[[users]]` and the admin cap (AZ-1), vault rotation
//! (SEC-3), no anonymous route (SEC-2) and no secret in the logs.

use std::time::Duration;

use portcullis_client::Client;
use portcullis_core::{ConnectionKind, Environment, Role};
use portcullis_identity::TotpSecret;
use portcullis_proto::api::{CreateRequest, CreateToken};
use portcullis_proto::people::{
    CreateUser, EnrolRequest, EnrolResponse, LoginRequest, PasswordChange, StepUpRequest,
    SuspendUser,
};
use portcullis_server::config::{AdminCapMode, ConnectionDecl, UserDecl};
use portcullis_server::{ServerConfig, routes};

use crate::people::{Fresh, PASSWORD, fresh_with, login, now_secs, reason, start_with};

const BOB_PASSWORD: &str = "amber tugboat violin 2261 quarry";
const NEW_PASSWORD: &str = "glacier pepper mosaic 7719 orbit";

fn shop(config: &mut ServerConfig) {
    config.connections = vec![ConnectionDecl {
        name: "shop".parse().expect("name"),
        kind: ConnectionKind::Sqlite,
        environment: Environment::Staging,
    }];
}

/// An admin session, fresh from a TOTP login (so step-up is satisfied).
struct Admin {
    client: Client,
    totp: TotpSecret,
    recovery: Vec<String>,
}

async fn sign_in_admin(app: &Fresh) -> Admin {
    let created = app.bootstrap().await;
    let totp = TotpSecret::from_base32(&created.totp_secret).expect("secret");
    let session = app
        .anonymous()
        .login(&login(Some(totp.current_code(now_secs()))))
        .await
        .expect("admin login");
    Admin {
        client: Client::new(&app.url, Some(&session.token)).expect("client"),
        totp,
        recovery: created.recovery_codes,
    }
}

/// Adds `name` with `role` and enrols them (with TOTP when `mfa`).
async fn enrolled(app: &Fresh, admin: &Client, name: &str, role: Role, mfa: bool) -> EnrolResponse {
    let created = admin
        .add_user(&CreateUser {
            name: name.into(),
            role,
        })
        .await
        .expect("add user");
    assert!(!created.info.password_set);
    app.anonymous()
        .enrol(&EnrolRequest {
            enrol_token: created.invite.enrol_token,
            password: BOB_PASSWORD.into(),
            mfa: Some(mfa),
        })
        .await
        .expect("enrol")
}

fn as_user(name: &str, password: &str, code: Option<String>) -> LoginRequest {
    LoginRequest {
        name: name.into(),
        password: password.into(),
        code,
        ..LoginRequest::default()
    }
}

async fn session(app: &Fresh, request: &LoginRequest) -> Client {
    let s = app.anonymous().login(request).await.expect("login");
    Client::new(&app.url, Some(&s.token)).expect("client")
}

fn status(e: &portcullis_client::ClientError) -> Option<u16> {
    e.status()
}

/// AUTH-2: an invitation sets the password once; roles that need MFA cannot opt out or sign
/// in without it; `reset-mfa` removes the authenticator and re-enrolment needs the current
/// password.
#[tokio::test]
async fn auth2_invitations_enrol_and_mfa_is_required_per_role() {
    let app = fresh_with(|_| {}).await;
    let admin = sign_in_admin(&app).await;
    let anonymous = app.anonymous();

    // A developer may opt out of MFA; the invitation works once.
    let created = admin
        .client
        .add_user(&CreateUser {
            name: "dev".into(),
            role: Role::Developer,
        })
        .await
        .expect("add");
    let weak = anonymous
        .enrol(&EnrolRequest {
            enrol_token: created.invite.enrol_token.clone(),
            password: "password1234".into(),
            mfa: Some(false),
        })
        .await
        .expect_err("weak password");
    assert_eq!(status(&weak), Some(400));
    let done = anonymous
        .enrol(&EnrolRequest {
            enrol_token: created.invite.enrol_token.clone(),
            password: BOB_PASSWORD.into(),
            mfa: Some(false),
        })
        .await
        .expect("enrol");
    assert!(done.totp_secret.is_none() && done.recovery_codes.is_empty());
    let again = anonymous
        .enrol(&EnrolRequest {
            enrol_token: created.invite.enrol_token,
            password: BOB_PASSWORD.into(),
            mfa: Some(false),
        })
        .await
        .expect_err("the invitation is spent");
    assert_eq!(status(&again), Some(401));
    session(&app, &as_user("dev", BOB_PASSWORD, None)).await;

    // Ops can approve: MFA is required, opting out is refused.
    let ops = admin
        .client
        .add_user(&CreateUser {
            name: "ops".into(),
            role: Role::Ops,
        })
        .await
        .expect("add ops");
    let refused = anonymous
        .enrol(&EnrolRequest {
            enrol_token: ops.invite.enrol_token.clone(),
            password: BOB_PASSWORD.into(),
            mfa: Some(false),
        })
        .await
        .expect_err("ops without MFA");
    assert_eq!(status(&refused), Some(400));
    let ops_enrolled = anonymous
        .enrol(&EnrolRequest {
            enrol_token: ops.invite.enrol_token,
            password: BOB_PASSWORD.into(),
            mfa: None,
        })
        .await
        .expect("enrol ops");
    let ops_totp =
        TotpSecret::from_base32(ops_enrolled.totp_secret.as_deref().expect("secret")).expect("b32");
    let missing = anonymous
        .login(&as_user("ops", BOB_PASSWORD, None))
        .await
        .expect_err("code needed");
    assert_eq!(reason(&missing).as_deref(), Some("mfa_required"));
    let ops_session = session(
        &app,
        &as_user("ops", BOB_PASSWORD, Some(ops_totp.current_code(now_secs()))),
    )
    .await;

    // A lost authenticator: everything MFA goes, the session too; no login until re-enrolled.
    let invite = admin.client.reset_mfa("ops").await.expect("reset");
    assert_eq!(
        status(&ops_session.whoami().await.expect_err("session ended")),
        Some(401)
    );
    let blocked = anonymous
        .login(&as_user("ops", BOB_PASSWORD, None))
        .await
        .expect_err("no MFA enrolled");
    assert_eq!(reason(&blocked).as_deref(), Some("mfa_enrolment_required"));
    let wrong = anonymous
        .enrol(&EnrolRequest {
            enrol_token: invite.enrol_token.clone(),
            password: "not the current password at all".into(),
            mfa: None,
        })
        .await
        .expect_err("re-enrolment needs the current password");
    assert_eq!(status(&wrong), Some(401));
    let re = anonymous
        .enrol(&EnrolRequest {
            enrol_token: invite.enrol_token,
            password: BOB_PASSWORD.into(),
            mfa: None,
        })
        .await
        .expect("re-enrol");
    assert_ne!(re.totp_secret, ops_enrolled.totp_secret, "a new secret");
    let new_totp = TotpSecret::from_base32(re.totp_secret.as_deref().expect("s")).expect("b32");
    session(
        &app,
        &as_user("ops", BOB_PASSWORD, Some(new_totp.current_code(now_secs()))),
    )
    .await;
    let users = admin.client.list_users().await.expect("list");
    let ops_view = users.iter().find(|u| u.name == "ops").expect("ops");
    assert!(ops_view.mfa_enrolled && ops_view.mfa_required);
    let actions = app.audit_actions().await;
    for a in [
        "user.created",
        "user.invited",
        "user.enrolled",
        "user.mfa_reset",
    ] {
        assert!(actions.iter().any(|x| x == a), "{a}: {actions:?}");
    }
    app.server.stop().await;
}

/// AUTH-2: sensitive actions in a session need a TOTP check within `people.step_up_secs`;
/// the window expires; a fresh code opens it again; wrong codes count towards the lockout.
#[tokio::test]
async fn auth2_step_up_is_required_for_sensitive_actions_and_expires() {
    // Two seconds: the first call must land inside the window even on a busy machine.
    let app = fresh_with(|c| c.people.step_up_secs = 2).await;
    let admin = sign_in_admin(&app).await;
    let token = CreateToken {
        name: "ci".into(),
        role: Role::Ci,
        ttl_seconds: 3600,
        environments: None,
    };
    admin
        .client
        .create_token(&token)
        .await
        .expect("within the window of the login's code");
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    for attempt in [
        admin.client.create_token(&token).await.map(drop),
        admin.client.create_agent("later").await.map(drop),
        admin
            .client
            .add_user(&CreateUser {
                name: "x".into(),
                role: Role::Viewer,
            })
            .await
            .map(drop),
        admin.client.rotate_vault().await.map(drop),
    ] {
        let e = attempt.expect_err("step-up expired");
        assert_eq!(status(&e), Some(403));
        assert_eq!(reason(&e).as_deref(), Some("step_up_required"));
    }
    // Non-sensitive reads still work.
    admin.client.list_users().await.expect("list");
    let wrong = admin
        .client
        .step_up(&StepUpRequest {
            code: Some("000000".into()),
            recovery_code: None,
        })
        .await
        .expect_err("wrong code");
    assert_eq!(reason(&wrong).as_deref(), Some("step_up_failed"));
    let failed: i64 = sqlx::query_scalar("SELECT failed_logins FROM users WHERE name = 'alice'")
        .fetch_one(app.server.state.store.reader())
        .await
        .expect("failures");
    assert_eq!(failed, 1, "a wrong step-up code counts towards the lockout");
    // The login spent this step's code; the next step's is fresh.
    admin
        .client
        .step_up(&StepUpRequest {
            code: Some(admin.totp.current_code(now_secs() + 30)),
            recovery_code: None,
        })
        .await
        .expect("step-up");
    admin
        .client
        .create_token(&token)
        .await
        .expect("allowed again");
    // An API token created under step-up acts without one: it is not a session.
    let actions = app.audit_actions().await;
    assert!(actions.iter().any(|a| a == "step_up.succeeded"));
    assert!(actions.iter().any(|a| a == "step_up.failed"));
    app.server.stop().await;
}

/// AUTH-2: "remember this device" lets a device token stand in for the code at login, never
/// for step-up; a password change ends it.
#[tokio::test]
async fn auth2_trusted_device_stands_in_for_the_code_but_not_for_step_up() {
    let app = fresh_with(|_| {}).await;
    let admin = sign_in_admin(&app).await;
    let anonymous = app.anonymous();
    let first = anonymous
        .login(&LoginRequest {
            recovery_code: Some(admin.recovery[0].clone()),
            remember_device: true,
            ..login(None)
        })
        .await
        .expect("login with a recovery code");
    let device = first.device_token.expect("device token");
    let trusted = LoginRequest {
        device_token: Some(device.clone()),
        ..login(None)
    };
    let s = anonymous.login(&trusted).await.expect("no code needed");
    let client = Client::new(&app.url, Some(&s.token)).expect("client");
    client.whoami().await.expect("signed in");
    let e = client
        .create_agent("needs-step-up")
        .await
        .expect_err("a device is not a fresh MFA check");
    assert_eq!(reason(&e).as_deref(), Some("step_up_required"));
    // Someone else's password with this device token gets nothing.
    let forged = anonymous
        .login(&LoginRequest {
            device_token: Some(format!("{device}x")),
            ..login(None)
        })
        .await
        .expect_err("malformed device token");
    assert_eq!(reason(&forged).as_deref(), Some("mfa_required"));
    admin
        .client
        .change_password(&PasswordChange {
            current_password: PASSWORD.into(),
            new_password: NEW_PASSWORD.into(),
        })
        .await
        .expect("change");
    let after = anonymous
        .login(&LoginRequest {
            password: NEW_PASSWORD.into(),
            ..trusted
        })
        .await
        .expect_err("the device was revoked with the password change");
    assert_eq!(reason(&after).as_deref(), Some("mfa_required"));
    app.server.stop().await;
}

/// AUTH-4: a password change ends every other session and every API token of the user, in
/// one audited transaction; the caller's session goes on; the old password stops working.
#[tokio::test]
async fn auth4_password_change_ends_every_other_session_and_token() {
    let app = fresh_with(|_| {}).await;
    let admin = sign_in_admin(&app).await;
    let other = session(
        &app,
        &LoginRequest {
            recovery_code: Some(admin.recovery[1].clone()),
            ..login(None)
        },
    )
    .await;
    let token = admin
        .client
        .create_token(&CreateToken {
            name: "script".into(),
            role: Role::Viewer,
            ttl_seconds: 3600,
            environments: None,
        })
        .await
        .expect("token");
    let api = Client::new(&app.url, Some(&token.token)).expect("client");
    api.whoami().await.expect("token works");
    other.whoami().await.expect("other session works");

    let wrong = admin
        .client
        .change_password(&PasswordChange {
            current_password: "not my password at all".into(),
            new_password: NEW_PASSWORD.into(),
        })
        .await
        .expect_err("wrong current password");
    assert_eq!(reason(&wrong).as_deref(), Some("password_incorrect"));
    let weak = admin
        .client
        .change_password(&PasswordChange {
            current_password: PASSWORD.into(),
            new_password: "alicealice12".into(),
        })
        .await
        .expect_err("weak new password");
    assert_eq!(status(&weak), Some(400));
    other.whoami().await.expect("failed attempts end nothing");

    let changed = admin
        .client
        .change_password(&PasswordChange {
            current_password: PASSWORD.into(),
            new_password: NEW_PASSWORD.into(),
        })
        .await
        .expect("change");
    assert_eq!(changed.sessions_revoked, 1);
    assert_eq!(changed.tokens_revoked, 1);
    assert_eq!(status(&other.whoami().await.expect_err("ended")), Some(401));
    assert_eq!(status(&api.whoami().await.expect_err("ended")), Some(401));
    admin
        .client
        .whoami()
        .await
        .expect("the caller's session goes on");
    let old = app
        .anonymous()
        .login(&LoginRequest {
            recovery_code: Some(admin.recovery[2].clone()),
            ..login(None)
        })
        .await
        .expect_err("old password");
    assert_eq!(reason(&old).as_deref(), Some("login_failed"));
    app.anonymous()
        .login(&LoginRequest {
            password: NEW_PASSWORD.into(),
            recovery_code: Some(admin.recovery[2].clone()),
            ..login(None)
        })
        .await
        .expect("new password");
    assert!(
        app.audit_actions()
            .await
            .iter()
            .any(|a| a == "password.changed")
    );
    app.server.stop().await;
}

/// AUTH-7: a suspension is effective on the very next request (sessions and tokens, even
/// cached ones), cancels the user's requests that have not reached an agent, in one
/// transaction; the last admin cannot be suspended; a suspension survives a restart with
/// `[[users]]`, and `suspended = true` in the file suspends at start.
#[tokio::test]
async fn auth7_suspension_is_immediate_cancels_requests_and_survives_restart() {
    let bob_decl = UserDecl {
        name: "bob".into(),
        role: Role::Developer,
        suspended: false,
    };
    let decl = bob_decl.clone();
    let app = fresh_with(move |c| {
        shop(c);
        c.users = vec![decl];
    })
    .await;
    let admin = sign_in_admin(&app).await;
    let invite = admin.client.invite_user("bob").await.expect("invite bob");
    app.anonymous()
        .enrol(&EnrolRequest {
            enrol_token: invite.enrol_token,
            password: BOB_PASSWORD.into(),
            mfa: Some(false),
        })
        .await
        .expect("bob enrols");
    let bob = session(&app, &as_user("bob", BOB_PASSWORD, None)).await;
    let request = |statement: &str| CreateRequest {
        connection: "shop".parse().expect("name"),
        statement: statement.into(),
        reason: "suspension test".into(),
        stream: false,
    };
    let pending = bob
        .create_request(&request("UPDATE orders SET note = 'x'"), Duration::ZERO)
        .await
        .expect("write waits for approval");
    assert_eq!(pending.request.state.as_str(), "pending_approval");
    let queued = bob
        .create_request(&request("SELECT 1"), Duration::ZERO)
        .await
        .expect("read waits for an agent");
    assert_eq!(queued.request.state.as_str(), "approved");
    bob.whoami().await.expect("cached session");

    let done = admin
        .client
        .suspend_user(
            "bob",
            &SuspendUser {
                reason: Some("laptop stolen".into()),
            },
        )
        .await
        .expect("suspend");
    assert_eq!(done.sessions_revoked, 1);
    assert_eq!(done.requests_cancelled, 2);
    assert_eq!(
        status(&bob.whoami().await.expect_err("next request")),
        Some(401)
    );
    let login_now = app
        .anonymous()
        .login(&as_user("bob", BOB_PASSWORD, None))
        .await
        .expect_err("suspended");
    assert_eq!(reason(&login_now).as_deref(), Some("login_failed"));
    for id in [pending.request.id, queued.request.id] {
        let view = admin.client.request_view(id).await.expect("view");
        assert_eq!(view.state.as_str(), "cancelled");
    }
    let last = admin
        .client
        .suspend_user("alice", &SuspendUser::default())
        .await
        .expect_err("the last admin");
    assert_eq!(status(&last), Some(409));

    // Restart with the same [[users]]: bob stays suspended.
    let dir = app._dir.path().to_owned();
    let key = app.key.clone();
    let Fresh { server, _dir, .. } = app;
    server.stop().await;
    let decl = bob_decl.clone();
    let server = start_with(&dir, &key, move |c| {
        shop(c);
        c.users = vec![decl];
    })
    .await
    .expect("restart");
    let suspended: Option<i64> =
        sqlx::query_scalar("SELECT suspended_at_ms FROM users WHERE name = 'bob'")
            .fetch_one(server.state.store.reader())
            .await
            .expect("bob");
    assert!(suspended.is_some(), "a restart lifts no suspension");
    server.stop().await;

    // `suspended = true` in the file suspends at start, and the API cannot lift it.
    let server = start_with(&dir, &key, |c| {
        shop(c);
        c.users = vec![
            bob_decl,
            UserDecl {
                name: "carol".into(),
                role: Role::Viewer,
                suspended: true,
            },
        ];
    })
    .await
    .expect("restart");
    let carol: Option<i64> =
        sqlx::query_scalar("SELECT suspended_at_ms FROM users WHERE name = 'carol'")
            .fetch_one(server.state.store.reader())
            .await
            .expect("carol");
    assert!(carol.is_some());
    server.stop().await;
    drop(_dir);
}

/// AZ-1: the admin cap refuses an admin over `people.max_admins`, or warns and audits.
#[tokio::test]
async fn az1_the_admin_cap_refuses_or_warns() {
    let app = fresh_with(|c| c.people.max_admins = 1).await;
    let admin = sign_in_admin(&app).await;
    let e = admin
        .client
        .add_user(&CreateUser {
            name: "second".into(),
            role: Role::Admin,
        })
        .await
        .expect_err("over the cap");
    assert_eq!(status(&e), Some(409));
    admin
        .client
        .add_user(&CreateUser {
            name: "viewer".into(),
            role: Role::Viewer,
        })
        .await
        .expect("other roles are not capped");
    app.server.stop().await;

    let app = fresh_with(|c| {
        c.people.max_admins = 1;
        c.people.admin_cap = AdminCapMode::Warn;
    })
    .await;
    let admin = sign_in_admin(&app).await;
    admin
        .client
        .add_user(&CreateUser {
            name: "second".into(),
            role: Role::Admin,
        })
        .await
        .expect("warn mode allows");
    assert!(
        app.audit_actions()
            .await
            .iter()
            .any(|a| a == "admin_cap.exceeded")
    );
    app.server.stop().await;

    // Refuse mode also stops a start whose [[users]] would exceed the cap.
    let dir = tempfile::tempdir().expect("temp");
    let key = portcullis_identity::MasterKey::generate();
    let refused = start_with(dir.path(), &key, |c| {
        c.people.max_admins = 1;
        c.users = ["a1", "a2"]
            .iter()
            .map(|n| UserDecl {
                name: (*n).into(),
                role: Role::Admin,
                suspended: false,
            })
            .collect();
    })
    .await
    .err()
    .expect("over the cap");
    assert!(format!("{refused:#}").contains("max_admins"), "{refused:#}");
}

async fn sealed_of(app: &Fresh, name: &str) -> Vec<u8> {
    sqlx::query_scalar("SELECT totp_sealed FROM users WHERE name = ?")
        .bind(name)
        .fetch_one(app.server.state.store.reader())
        .await
        .expect("sealed")
}

/// SEC-3: rotation re-seals everything under a new key version and swaps keys without a
/// restart; the data directory starts again with the same master key; a ciphertext moved to
/// another row does not open (the start fails); an overdue schedule rotates at start.
#[tokio::test]
async fn sec3_vault_rotation_round_trip_hot_swap_and_tamper() {
    let app = fresh_with(|_| {}).await;
    let admin = sign_in_admin(&app).await;
    let ops = enrolled(&app, &admin.client, "ops", Role::Ops, true).await;
    let ops_totp = TotpSecret::from_base32(ops.totp_secret.as_deref().expect("s")).expect("b32");
    let before = sealed_of(&app, "ops").await;
    assert_eq!(portcullis_identity::vault::sealed_version(&before), Some(1));
    let rotated = admin.client.rotate_vault().await.expect("rotate");
    assert_eq!(rotated.version, 2);
    assert_eq!(rotated.resealed, 2);
    let after = sealed_of(&app, "ops").await;
    assert_eq!(portcullis_identity::vault::sealed_version(&after), Some(2));
    assert_ne!(before, after);
    // Hot swap: the running server opens the re-sealed secret at once.
    session(
        &app,
        &as_user("ops", BOB_PASSWORD, Some(ops_totp.current_code(now_secs()))),
    )
    .await;
    assert!(
        app.audit_actions()
            .await
            .iter()
            .any(|a| a == "vault.rotated")
    );

    let dir = app._dir.path().to_owned();
    let key = app.key.clone();
    let Fresh { server, _dir, .. } = app;
    server.stop().await;
    let server = start_with(&dir, &key, |_| {}).await.expect("same key");
    // An overdue schedule rotates on its own.
    {
        let mut conn = server.state.store.begin().await.expect("tx");
        sqlx::query(
            "UPDATE settings SET value = CAST('0' AS BLOB) WHERE key = 'vault_rotated_at_ms'",
        )
        .execute(&mut *conn)
        .await
        .expect("backdate");
        conn.commit().await.expect("commit");
    }
    server.stop().await;
    let server = start_with(&dir, &key, |_| {}).await.expect("restart");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let version: Vec<u8> =
            sqlx::query_scalar("SELECT value FROM settings WHERE key = 'vault_key_version'")
                .fetch_one(server.state.store.reader())
                .await
                .expect("version");
        if version == b"3" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the overdue rotation did not run"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Tamper: swap the two users' sealed seeds.
    {
        let mut conn = server.state.store.begin().await.expect("tx");
        sqlx::query(
            "UPDATE users SET totp_sealed = CASE name WHEN 'alice' THEN (SELECT totp_sealed FROM users WHERE name = 'ops') ELSE (SELECT totp_sealed FROM users WHERE name = 'alice') END WHERE name IN ('alice', 'ops')",
        )
        .execute(&mut *conn)
        .await
        .expect("swap");
        conn.commit().await.expect("commit");
    }
    server.stop().await;
    let refused = start_with(&dir, &key, |_| {})
        .await
        .err()
        .expect("a swapped ciphertext must stop the start");
    assert!(
        format!("{refused:#}").contains("the vault cannot open users.totp_sealed"),
        "{refused:#}"
    );
    drop(_dir);
}

/// SEC-2: after bootstrap, every route but the declared public ones answers 401 without
/// credentials (generated from the route table), and the public ones are exactly health,
/// readiness, the API description and the sign-in endpoints — and the live-events socket,
/// public only so that it can authenticate itself, which never gives an anonymous client an
/// event (WEB-8).
#[tokio::test]
async fn sec2_no_route_answers_without_credentials_after_bootstrap() {
    let app = fresh_with(|c| c.events.auth_timeout_secs = 1).await;
    app.bootstrap().await;
    let anonymous = app.anonymous();
    let mut public = Vec::new();
    for spec in routes::specs() {
        if spec.guard == routes::Guard::Public {
            public.push(format!("{} {}", spec.method, spec.path));
            continue;
        }
        let path = spec
            .path
            .replace("{id}", &uuid::Uuid::new_v4().to_string())
            .replace("{name}", "alice");
        let method: portcullis_client::HttpMethod = spec.method.as_str().parse().expect("method");
        let body = !matches!(spec.method.as_str(), "GET" | "DELETE");
        let body = body.then(|| serde_json::json!({}));
        let (status, _) = anonymous.raw(method, &path, body).await.expect("call");
        assert_eq!(status, 401, "{} {}", spec.method, spec.path);
    }
    public.sort();
    assert_eq!(
        public,
        [
            "GET /",
            "GET /api/v1/events",
            "GET /api/v1/openapi.json",
            "GET /health",
            "GET /ready",
            "GET /ui",
            "GET /ui/{*path}",
            "POST /api/v1/bootstrap",
            "POST /api/v1/enrol",
            "POST /api/v1/login",
        ]
    );
    crate::events::anonymous_sockets_get_no_event(&app.url).await;
    app.server.stop().await;
}

/// SEC-4: the whole people flow against `portcullis server` logging at TRACE — bootstrap,
/// logins (a failed one, codes, recovery codes, trusted devices), invitations, enrolment,
/// step-up, tokens, password change, suspension, vault rotation — and not one secret in its
/// output or in the audit log.
#[tokio::test(flavor = "multi_thread")]
async fn no_secret_reaches_the_logs_or_the_audit_log() {
    use crate::two_process::{Running, free_port, probe, wait_for};

    let dir = tempfile::tempdir().expect("temp");
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let key = portcullis_identity::MasterKey::generate();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut server = Running(
        crate::harness::bin()
            .args(["server", "--listen", &format!("127.0.0.1:{port}"), "--data"])
            .arg(&data)
            .env("PORTCULLIS_MASTER_KEY", &key)
            .env("PORTCULLIS_LOG", "trace")
            .stdout(std::fs::File::create(dir.path().join("server.out")).expect("out"))
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn server"),
    );
    let setup_file = data.join("setup.token");
    wait_for("the server", || {
        setup_file.exists() && probe::health_ok(&url)
    });
    let setup_token = std::fs::read_to_string(&setup_file)
        .expect("setup token")
        .trim()
        .to_owned();
    let mut secrets: Vec<String> = vec![PASSWORD.into(), key.clone(), setup_token.clone()];
    let anonymous = Client::new(&url, None).expect("client");
    let created = anonymous
        .bootstrap(&portcullis_proto::people::BootstrapRequest {
            setup_token,
            name: "alice".into(),
            password: PASSWORD.into(),
        })
        .await
        .expect("bootstrap");
    secrets.push(created.totp_secret.clone());
    secrets.extend(created.recovery_codes.iter().cloned());
    let totp = TotpSecret::from_base32(&created.totp_secret).expect("secret");
    let typo = "wrong password typed into the form";
    let _ = anonymous
        .login(&LoginRequest {
            password: typo.into(),
            ..login(None)
        })
        .await
        .expect_err("wrong password");
    secrets.push(typo.into());
    let first = anonymous
        .login(&LoginRequest {
            remember_device: true,
            ..login(Some(totp.current_code(now_secs())))
        })
        .await
        .expect("login");
    secrets.push(first.token.clone());
    let device = first.device_token.clone().expect("device");
    secrets.push(device.clone());
    anonymous
        .login(&LoginRequest {
            device_token: Some(device),
            ..login(None)
        })
        .await
        .expect("trusted device");
    let admin = Client::new(&url, Some(&first.token)).expect("client");
    let token = admin
        .create_token(&CreateToken {
            name: "t".into(),
            role: Role::Viewer,
            ttl_seconds: 60,
            environments: None,
        })
        .await
        .expect("token");
    secrets.push(token.token.clone());
    let user = admin
        .add_user(&CreateUser {
            name: "ops".into(),
            role: Role::Ops,
        })
        .await
        .expect("add");
    secrets.push(user.invite.enrol_token.clone());
    let ops = anonymous
        .enrol(&EnrolRequest {
            enrol_token: user.invite.enrol_token,
            password: BOB_PASSWORD.into(),
            mfa: None,
        })
        .await
        .expect("enrol");
    secrets.push(BOB_PASSWORD.into());
    secrets.push(ops.totp_secret.clone().expect("secret"));
    secrets.extend(ops.recovery_codes.iter().cloned());
    admin
        .step_up(&StepUpRequest {
            code: None,
            recovery_code: Some(created.recovery_codes[0].clone()),
        })
        .await
        .expect("step-up");
    admin.rotate_vault().await.expect("rotate");
    admin
        .change_password(&PasswordChange {
            current_password: PASSWORD.into(),
            new_password: NEW_PASSWORD.into(),
        })
        .await
        .expect("change");
    secrets.push(NEW_PASSWORD.into());
    admin
        .suspend_user("ops", &SuspendUser::default())
        .await
        .expect("suspend");
    let audit = String::from_utf8(admin.audit_export().await.expect("export")).expect("utf8");
    // SIGTERM: a graceful stop flushes everything it logs.
    let pid = server.0.id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    let _ = server.0.wait();

    let text = std::fs::read_to_string(&log).expect("log")
        + &std::fs::read_to_string(dir.path().join("server.out")).expect("out");
    for expected in ["/api/v1/login", "bootstrap complete", "user suspended"] {
        assert!(
            text.contains(expected),
            "the server logged at TRACE ({} bytes) without {expected:?}",
            text.len()
        );
    }
    assert!(
        audit.contains("user.suspended"),
        "the export holds the flow"
    );
    for secret in &secrets {
        // A credential's id part is public (it names the row); its secret part is not.
        let hidden = match secret.splitn(3, '_').collect::<Vec<_>>().as_slice() {
            [prefix, id, rest] if prefix.starts_with("pc") && id.len() == 16 => *rest,
            _ => secret.as_str(),
        };
        assert!(hidden.len() >= 8, "{secret:.4}…: too short to search for");
        assert!(!text.contains(hidden), "a secret reached the logs");
        assert!(!audit.contains(hidden), "a secret reached the audit log");
    }
}
