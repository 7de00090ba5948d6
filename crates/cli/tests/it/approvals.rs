//! Approvals, alerts and incident response against a real server started as `portcullis
//! server` starts it, with people signed in through sessions: AZ-3, AUD-5, IR-1, IR-3.

use std::time::Duration;

use portcullis_client::Client;
use portcullis_core::policy::Step;
use portcullis_core::{ConnectionKind, Decision, Environment, PolicyRule, RequestState, Role};
use portcullis_identity::TotpSecret;
use portcullis_proto::api::{CreateRequest, CreateToken, PolicyCheck};
use portcullis_proto::people::{CreateUser, EnrolRequest, LoginRequest, StepUpRequest};
use portcullis_server::ServerConfig;
use portcullis_server::config::ConnectionDecl;
use uuid::Uuid;

use crate::people::{Fresh, fresh_with, login, now_secs, reason};

const PASSWORD: &str = "amber tugboat violin 2261 quarry";

/// `shop` (staging SQLite); writes to `customers` need one ops approval, then two admins;
/// viewers' writes to `orders` are denied; everything else follows the defaults.
fn configure(config: &mut ServerConfig) {
    config.connections = vec![ConnectionDecl {
        name: "shop".parse().expect("name"),
        kind: ConnectionKind::Sqlite,
        environment: Environment::Staging,
    }];
    config.policy = vec![
        PolicyRule {
            name: Some("customers two steps".into()),
            class: Some(portcullis_core::OperationClass::Write),
            tables: Some(vec!["customers".to_owned().try_into().expect("table")]),
            steps: vec![
                Step {
                    approvals: 1,
                    roles: vec![Role::Ops],
                },
                Step {
                    approvals: 2,
                    roles: vec![Role::Admin],
                },
            ],
            ..PolicyRule::any(Decision::RequireApproval)
        },
        PolicyRule {
            name: Some("no drops of orders".into()),
            tables: Some(vec!["orders".to_owned().try_into().expect("table")]),
            class: Some(portcullis_core::OperationClass::Write),
            roles: Some(vec![Role::Viewer]),
            ..PolicyRule::any(Decision::Deny)
        },
    ];
    config.people.max_admins = 3;
}

/// A signed-in person: their client, TOTP and unused recovery codes.
struct Person {
    client: Client,
    totp: TotpSecret,
    recovery: std::sync::Mutex<Vec<String>>,
}

impl Person {
    /// A fresh second-factor check. Recovery codes, because a TOTP step works once and a
    /// test steps up more often than every 30 seconds.
    async fn step_up(&self) {
        let code = self.recovery.lock().expect("lock").pop();
        self.client
            .step_up(&StepUpRequest {
                code: None,
                recovery_code: code,
            })
            .await
            .expect("step-up");
    }
}

async fn people(app: &Fresh) -> (Person, Vec<Person>) {
    let created = app.bootstrap().await;
    let mut recovery = created.recovery_codes.clone().into_iter();
    let totp = TotpSecret::from_base32(&created.totp_secret).expect("secret");
    let session = app
        .anonymous()
        .login(&login(Some(totp.current_code(now_secs()))))
        .await
        .expect("alice");
    let alice = Person {
        client: Client::new(&app.url, Some(&session.token)).expect("client"),
        totp,
        recovery: std::sync::Mutex::new(created.recovery_codes[3..].to_vec()),
    };
    let mut others = Vec::new();
    for (name, role) in [
        ("dev", Role::Developer),
        ("ops1", Role::Ops),
        ("boss", Role::Admin),
    ] {
        // Each addition is a sensitive action: a fresh check (a recovery code, so that the
        // authenticator's next steps stay free for the test).
        alice
            .client
            .step_up(&StepUpRequest {
                code: None,
                recovery_code: recovery.next(),
            })
            .await
            .expect("step-up");
        let added = alice
            .client
            .add_user(&CreateUser {
                name: name.into(),
                role,
            })
            .await
            .expect("add");
        let enrolled = app
            .anonymous()
            .enrol(&EnrolRequest {
                enrol_token: added.invite.enrol_token,
                password: PASSWORD.into(),
                mfa: Some(true),
            })
            .await
            .expect("enrol");
        let totp =
            TotpSecret::from_base32(enrolled.totp_secret.as_deref().expect("secret")).expect("b32");
        let session = app
            .anonymous()
            .login(&LoginRequest {
                name: name.into(),
                password: PASSWORD.into(),
                code: Some(totp.current_code(now_secs())),
                ..LoginRequest::default()
            })
            .await
            .expect("login");
        others.push(Person {
            client: Client::new(&app.url, Some(&session.token)).expect("client"),
            totp,
            recovery: std::sync::Mutex::new(enrolled.recovery_codes.clone()),
        });
    }
    (alice, others)
}

async fn create(client: &Client, statement: &str) -> Uuid {
    client
        .create_request(
            &CreateRequest {
                connection: "shop".parse().expect("name"),
                statement: statement.into(),
                reason: "approval test".into(),
                stream: false,
            },
            Duration::ZERO,
        )
        .await
        .expect("create")
        .request
        .id
}

/// AZ-3: multi-step approvals by role and count; the requester never approves their own
/// request; nobody counts twice; API tokens cannot approve; the approval is bound to the
/// statement; rejection needs a reason and ends the request; progress reaches a waiter.
#[tokio::test(flavor = "multi_thread")]
async fn az3_steps_roles_counts_and_no_self_approval() {
    let app = fresh_with(configure).await;
    let (alice, others) = people(&app).await;
    let [dev, ops1, boss] = &others[..] else {
        unreachable!()
    };
    let id = create(&dev.client, "UPDATE customers SET name = 'x' WHERE id = 1").await;
    let view = dev.client.request_view(id).await.expect("view");
    assert_eq!(view.state, RequestState::PendingApproval);
    assert_eq!(view.steps.len(), 2);
    assert_eq!(view.policy_rule.as_deref(), Some("customers two steps"));

    // A developer cannot approve at all; an admin is not in step 1.
    let e = dev.client.approve_request(id, None).await.expect_err("dev");
    assert_eq!(e.status(), Some(403));
    let e = alice
        .client
        .approve_request(id, None)
        .await
        .expect_err("admin in the ops step");
    assert_eq!(reason(&e).as_deref(), Some("role_not_in_step"));

    // The waiting requester hears of each decision at once (push, not poll).
    let waiter = {
        let dev = dev.client.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let outcome = dev
                .wait_request_progress(id, Duration::from_secs(30))
                .await
                .expect("wait");
            (outcome, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after_ops = ops1
        .client
        .approve_request(id, Some("schema looks fine".into()))
        .await
        .expect("ops approves step 1");
    assert_eq!(after_ops.current_step, 1);
    let (outcome, waited) = waiter.await.expect("join");
    assert_eq!(outcome.request.current_step, 1);
    assert!(waited < Duration::from_secs(10), "woken by the decision");
    let twice = ops1
        .client
        .approve_request(id, None)
        .await
        .expect_err("twice");
    assert_eq!(
        reason(&twice).as_deref(),
        Some("role_not_in_step"),
        "step 2 is for admins"
    );

    alice.client.approve_request(id, None).await.expect("alice");
    let again = alice
        .client
        .approve_request(id, None)
        .await
        .expect_err("alice again");
    assert_eq!(again.status(), Some(409), "nobody counts twice");
    let still = alice.client.request_view(id).await.expect("view");
    assert_eq!(still.state, RequestState::PendingApproval);
    let done = boss.client.approve_request(id, None).await.expect("boss");
    assert_eq!(done.state, RequestState::Approved);
    assert_eq!(done.approvals.len(), 3);
    let jobs: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM jobs WHERE request_id = ? AND purpose = 'execute' AND state = 'queued'",
    )
    .bind(id.to_string())
    .fetch_one(app.server.state.store.reader())
    .await
    .expect("jobs");
    assert_eq!(jobs, 1, "the approval queued exactly one execution");

    // The requester, even with the approve permission, cannot approve their own request.
    let own = create(&ops1.client, "UPDATE orders SET note = 'x'").await;
    let e = ops1
        .client
        .approve_request(own, None)
        .await
        .expect_err("self");
    assert_eq!(reason(&e).as_deref(), Some("self_approval"));
    // API tokens never approve, even an admin's.
    let token = alice
        .client
        .create_token(&CreateToken {
            name: "robot".into(),
            role: Role::Admin,
            ttl_seconds: 600,
            environments: None,
        })
        .await
        .expect("token");
    let robot = Client::new(&app.url, Some(&token.token)).expect("client");
    let e = robot
        .approve_request(own, None)
        .await
        .expect_err("token approval");
    assert_eq!(reason(&e).as_deref(), Some("approval_needs_session"));
    // Rejection needs a reason and ends the request.
    let e = alice
        .client
        .reject_request(own, "  ".into())
        .await
        .expect_err("no reason");
    assert_eq!(e.status(), Some(400));
    let rejected = alice
        .client
        .reject_request(own, "not during the freeze".into())
        .await
        .expect("reject");
    assert_eq!(rejected.state, RequestState::Rejected);
    let actions = app.audit_actions().await;
    for a in [
        "request.approval_recorded",
        "request.approval_refused",
        "request.approved",
        "request.rejected",
    ] {
        assert!(actions.iter().any(|x| x == a), "{a}");
    }
    app.server.stop().await;
}

/// AZ-3: an approver's step-up must be fresh; pending requests expire after the approval
/// timeout and approved ones that no agent took after the dispatch timeout (time injected).
#[tokio::test(flavor = "multi_thread")]
async fn az3_stale_step_up_is_refused_and_requests_expire() {
    let app = fresh_with(|c| {
        configure(c);
        c.people.step_up_secs = 1;
    })
    .await;
    let (alice, others) = people(&app).await;
    let [dev, ops1, _] = &others[..] else {
        unreachable!()
    };
    let pending = create(&dev.client, "UPDATE orders SET note = 'a'").await;
    let approved = create(&dev.client, "UPDATE orders SET note = 'b'").await;
    ops1.step_up().await;
    ops1.client
        .approve_request(approved, None)
        .await
        .expect("fresh");
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let e = alice
        .client
        .approve_request(pending, None)
        .await
        .expect_err("stale");
    assert_eq!(reason(&e).as_deref(), Some("step_up_required"));
    alice.step_up().await;
    let state = &app.server.state;
    let now = portcullis_server::clock::now_ms();
    let ex = &state.config.execution;
    portcullis_server::reaper::reap(state, now + (ex.dispatch_timeout_secs as i64) * 1000 + 1000)
        .await
        .expect("reap");
    let view = dev.client.request_view(approved).await.expect("view");
    assert_eq!(
        view.state,
        RequestState::Expired,
        "approved but never taken"
    );
    let view = dev.client.request_view(pending).await.expect("view");
    assert_eq!(view.state, RequestState::PendingApproval, "not yet");
    portcullis_server::reaper::reap(state, now + (ex.approval_timeout_secs as i64) * 1000 + 1000)
        .await
        .expect("reap");
    let view = dev.client.request_view(pending).await.expect("view");
    assert_eq!(view.state, RequestState::Expired);
    let e = alice
        .client
        .approve_request(pending, None)
        .await
        .expect_err("expired");
    assert_eq!(e.status(), Some(409));
    app.server.stop().await;
}

/// Policy check explains the decision without running anything; the same facts as a real
/// request (class and tables from the parser, the requester's role).
#[tokio::test]
async fn policy_check_explains_which_rule_matched_and_why() {
    let app = fresh_with(configure).await;
    let (alice, _) = people(&app).await;
    let check = |statement: &str, role: Option<Role>| PolicyCheck {
        connection: "shop".parse().expect("name"),
        statement: statement.into(),
        role,
    };
    let v = alice
        .client
        .policy_check(&check("UPDATE orders SET note = 'x'", Some(Role::Viewer)))
        .await
        .expect("check");
    assert_eq!(v.decision, Decision::Deny, "{v:?}");
    assert_eq!(v.rule.as_deref(), Some("no drops of orders"));
    assert_eq!(v.tables, vec!["orders".to_owned()]);
    assert_eq!(v.skipped.len(), 1);
    assert_eq!(v.skipped[0].failed_on, "tables");
    assert!(v.because.contains("may not run it"), "{}", v.because);
    let v = alice
        .client
        .policy_check(&check("UPDATE orders SET note = 'x'", None))
        .await
        .expect("check");
    assert_eq!(
        v.decision,
        Decision::RequireApproval,
        "admins are not viewers"
    );
    assert_eq!(v.rule, None);
    assert!(v.because.contains("built-in default"), "{}", v.because);
    let v = alice
        .client
        .policy_check(&check("UPDATE customers SET name = 'x'", None))
        .await
        .expect("check");
    assert_eq!(v.steps.len(), 2);
    let requests: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM requests")
        .fetch_one(app.server.state.store.reader())
        .await
        .expect("count");
    assert_eq!(requests, 0, "a check creates nothing");
    app.server.stop().await;
}

/// AUD-5 and IR-1/IR-3: lockouts, RBAC denials and admin actions raise alerts (table and
/// log); a lockdown locks every non-admin, ends every other session and token and cancels
/// everything pending, effective on the very next request; lifting it unlocks exactly
/// those accounts.
#[tokio::test(flavor = "multi_thread")]
async fn aud5_alerts_and_ir3_lockdown() {
    let app = fresh_with(configure).await;
    let (alice, others) = people(&app).await;
    let [dev, ops1, boss] = &others[..] else {
        unreachable!()
    };
    for _ in 0..5 {
        let _ = app
            .anonymous()
            .login(&LoginRequest {
                name: "dev".into(),
                password: "not the password of dev".into(),
                ..LoginRequest::default()
            })
            .await;
    }
    let _ = dev.client.list_users().await.expect_err("RBAC denial");
    let pending = create(&dev.client, "UPDATE orders SET note = 'z'").await;
    let token = alice
        .client
        .create_token(&CreateToken {
            name: "ci".into(),
            role: Role::Ci,
            ttl_seconds: 600,
            environments: None,
        })
        .await
        .expect("token");
    let robot = Client::new(&app.url, Some(&token.token)).expect("client");
    robot.whoami().await.expect("token works");

    let alerts = alice.client.alerts(0, 100).await.expect("alerts");
    let kinds: Vec<&str> = alerts.iter().map(|a| a.kind.as_str()).collect();
    for k in [
        "login.locked",
        "access.denied",
        "token.created",
        "user.created",
    ] {
        assert!(kinds.contains(&k), "{k}: {kinds:?}");
    }
    assert!(
        alerts
            .iter()
            .any(|a| a.kind == "login.locked" && a.severity == "critical")
    );
    let e = dev.client.alerts(0, 10).await.expect_err("developers");
    assert_eq!(e.status(), Some(403));

    let done = alice.client.lockdown().await.expect("lockdown");
    assert_eq!(
        done.users_locked, 2,
        "dev and ops1; admins keep their accounts"
    );
    assert!(done.requests_cancelled >= 1);
    for (who, client) in [
        ("dev", &dev.client),
        ("ops1", &ops1.client),
        ("boss", &boss.client),
        ("robot", &robot),
    ] {
        let e = client.whoami().await.expect_err(who);
        assert_eq!(e.status(), Some(401), "{who} on the very next request");
    }
    alice
        .client
        .whoami()
        .await
        .expect("the caller's session goes on");
    let view = alice.client.request_view(pending).await.expect("view");
    assert_eq!(view.state, RequestState::Cancelled);
    let e = app
        .anonymous()
        .login(&LoginRequest {
            name: "ops1".into(),
            password: PASSWORD.into(),
            code: Some(others[1].totp.current_code(now_secs() + 30)),
            ..LoginRequest::default()
        })
        .await
        .expect_err("locked");
    assert_eq!(reason(&e).as_deref(), Some("login_failed"));
    let alerts = alice.client.alerts(0, 200).await.expect("alerts");
    assert!(
        alerts
            .iter()
            .any(|a| a.kind == "lockdown" && a.severity == "critical")
    );

    let lifted = alice.client.lift_lockdown().await.expect("lift");
    assert_eq!(lifted.users_unlocked, 2);
    app.anonymous()
        .login(&LoginRequest {
            name: "ops1".into(),
            password: PASSWORD.into(),
            code: Some(others[1].totp.current_code(now_secs() + 30)),
            ..LoginRequest::default()
        })
        .await
        .expect("ops1 signs in again");
    let e = alice.client.lift_lockdown().await.expect_err("twice");
    assert_eq!(e.status(), Some(409));
    app.server.stop().await;
}

/// AZ-4: break-glass needs a person in a session with a fresh step-up and the permission
/// (never an API token, so never `ci`); a grant is time-boxed; requests under it skip the
/// approval steps, raise critical alerts, and wait for a review by another admin.
#[tokio::test(flavor = "multi_thread")]
async fn az4_break_glass_is_time_boxed_alerted_reviewed_and_never_for_tokens() {
    let app = fresh_with(|c| {
        configure(c);
        c.people.step_up_secs = 1;
    })
    .await;
    let (alice, others) = people(&app).await;
    let [_, ops1, boss] = &others[..] else {
        unreachable!()
    };
    alice.step_up().await;
    let mut tokens = Vec::new();
    for (name, role) in [("pipeline", Role::Ci), ("root", Role::Admin)] {
        let t = alice
            .client
            .create_token(&CreateToken {
                name: name.into(),
                role,
                ttl_seconds: 600,
                environments: None,
            })
            .await
            .expect("token");
        tokens.push(Client::new(&app.url, Some(&t.token)).expect("client"));
    }
    for token in &tokens {
        let e = token
            .break_glass("the database is on fire", None)
            .await
            .expect_err("API tokens never break glass");
        assert_eq!(e.status(), Some(403));
    }
    ops1.step_up().await;
    let e = ops1
        .client
        .break_glass("the database is on fire", None)
        .await
        .expect_err("ops may not");
    assert_eq!(reason(&e).as_deref(), Some("missing_permission"));
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let e = alice
        .client
        .break_glass("the database is on fire", None)
        .await
        .expect_err("stale step-up");
    assert_eq!(reason(&e).as_deref(), Some("step_up_required"));
    alice
        .client
        .step_up(&StepUpRequest {
            code: None,
            recovery_code: None,
        })
        .await
        .expect_err("a code is needed");
    alice.step_up().await;
    let e = alice
        .client
        .break_glass("fire", Some(2))
        .await
        .expect_err("a real reason");
    assert_eq!(e.status(), Some(400));
    alice
        .client
        .break_glass("incident 42: orders table locked", Some(2))
        .await
        .expect("grant");
    let id = create(
        &alice.client,
        "UPDATE customers SET name = 'y' WHERE id = 2",
    )
    .await;
    let view = alice.client.request_view(id).await.expect("view");
    assert_eq!(view.state, RequestState::Approved, "two steps skipped");
    assert!(view.break_glass.is_some());
    let alerts = alice.client.alerts(0, 200).await.expect("alerts");
    for kind in ["break_glass", "break_glass.used"] {
        assert!(
            alerts
                .iter()
                .any(|a| a.kind == kind && a.severity == "critical"),
            "{kind}"
        );
    }
    // The review: another admin, never the one who broke the glass.
    let unreviewed = alice.client.list_unreviewed(50).await.expect("list");
    assert_eq!(
        unreviewed.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![id]
    );
    let e = alice
        .client
        .review_request(id, "looked fine to me".into())
        .await
        .expect_err("self review");
    assert_eq!(reason(&e).as_deref(), Some("self_review"));
    boss.step_up().await;
    let reviewed = boss
        .client
        .review_request(id, "matches incident 42".into())
        .await
        .expect("review");
    assert!(reviewed.reviewed_by.is_some());
    assert!(
        boss.client
            .list_unreviewed(50)
            .await
            .expect("list")
            .is_empty()
    );
    // Time-boxed: after the grant ends, approval steps apply again.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let later = create(
        &alice.client,
        "UPDATE customers SET name = 'z' WHERE id = 3",
    )
    .await;
    let view = alice.client.request_view(later).await.expect("view");
    assert_eq!(view.state, RequestState::PendingApproval);
    assert!(view.break_glass.is_none());
    app.server.stop().await;
}
