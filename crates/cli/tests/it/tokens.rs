//! API tokens (AUTH-5, SEC-5, AZ-1): mandatory capped expiry, role at most the creator's,
//! environment scoping, last-used time and address, the unused list, immediate revocation,
//! and refused bearers answered 401 and audited.

use std::time::{Duration, Instant};

use portcullis_client::{Client, ClientError};
use portcullis_core::{Environment, RequestState, Role};
use portcullis_proto::api::{CreateToken, TokenCreated, TokenView};
use portcullis_proto::{ErrorCode, Problem};
use portcullis_server::audit::Context;
use portcullis_server::error::ApiError;
use portcullis_server::principals::{self, NewToken};

use crate::harness::TestApp;

fn problem(e: &ClientError) -> &Problem {
    match e {
        ClientError::Api { problem, .. } => problem,
        other => panic!("expected a problem document, got {other}"),
    }
}

/// Asserts `e` is a problem document with `status` and `code`, and an error id.
fn assert_problem(e: &ClientError, status: u16, code: ErrorCode) {
    let p = problem(e);
    assert_eq!(
        (e.status(), p.code, p.status),
        (Some(status), code, status),
        "{p:?}"
    );
    assert!(
        uuid::Uuid::parse_str(&p.error_id).is_ok(),
        "error_id is an opaque id: {p:?}"
    );
}

fn new_token(
    name: &str,
    role: Role,
    ttl_seconds: u64,
    environments: Option<Vec<Environment>>,
) -> CreateToken {
    CreateToken {
        name: name.to_owned(),
        role,
        ttl_seconds,
        environments,
    }
}

async fn create(app: &TestApp, body: &CreateToken) -> (Client, TokenCreated) {
    let created = app.admin.create_token(body).await.expect("token created");
    (
        Client::new(app.url(), Some(&created.token)).expect("client"),
        created,
    )
}

async fn listed(app: &TestApp, unused: bool, id: &str) -> Option<TokenView> {
    app.admin
        .list_tokens(unused)
        .await
        .expect("list tokens")
        .into_iter()
        .find(|t| t.id == id)
}

async fn auth_failures(app: &TestApp) -> Vec<serde_json::Value> {
    app.audit_events()
        .await
        .into_iter()
        .filter(|e| e["action"] == "auth.failed")
        .collect()
}

/// AUTH-5: a lifetime is mandatory and capped by `tokens.max_ttl_days` (90 by default):
/// zero and one second above the maximum are refused with 400; the maximum itself is allowed.
#[tokio::test]
async fn auth_5_ttl_is_mandatory_and_capped() {
    let app = TestApp::spawn().await;
    let max = 90 * 86_400;
    for ttl in [0, max + 1, u64::MAX / 1000] {
        let e = app
            .admin
            .create_token(&new_token("ttl", Role::Viewer, ttl, None))
            .await
            .expect_err("ttl refused");
        assert_problem(&e, 400, ErrorCode::BadRequest);
    }
    let (_, ok) = create(&app, &new_token("ttl-max", Role::Viewer, max, None)).await;
    assert!(ok.info.expires_at > ok.info.created_at);
    let body = serde_json::json!({ "name": "no-ttl", "role": "viewer" });
    let (status, _) = app
        .admin
        .raw(
            portcullis_client::HttpMethod::POST,
            "/api/v1/tokens",
            Some(body),
        )
        .await
        .expect("raw");
    assert_eq!(status, 400, "ttl_seconds is mandatory");
    app.stop().await;
}

/// AUTH-5: the maximum is configurable.
#[tokio::test]
async fn auth_5_ttl_maximum_follows_configuration() {
    let app = TestApp::spawn_with(|o| o.server.tokens.max_ttl_days = 1).await;
    let e = app
        .admin
        .create_token(&new_token("ttl", Role::Viewer, 86_401, None))
        .await
        .expect_err("above one day");
    assert_problem(&e, 400, ErrorCode::BadRequest);
    create(&app, &new_token("ttl", Role::Viewer, 86_400, None)).await;
    app.stop().await;
}

/// AZ-1 / AUTH-5: a token's role is at most its creator's. `Role::covers` is the rule; the
/// server's token creation enforces it for every creator × role pair; an admin can mint every
/// role over the API, and a role without `tokens:manage` cannot mint at all.
#[tokio::test]
async fn az_1_token_role_is_at_most_the_creators() {
    // The rule itself.
    for role in Role::ALL {
        assert!(Role::Admin.covers(*role), "admin covers {role}");
        assert!(role.covers(*role), "{role} covers itself");
        assert_eq!(
            Role::Viewer.covers(*role),
            *role == Role::Viewer,
            "viewer covers only itself, not {role}"
        );
    }
    assert!(!Role::Developer.covers(Role::Admin));
    assert!(
        !Role::Developer.covers(Role::Ci),
        "ci can run DDL, developer cannot"
    );
    assert!(!Role::Ci.covers(Role::Developer));
    assert!(!Role::Ops.covers(Role::Admin));

    let app = TestApp::spawn().await;
    // Enforced by the server for every pair, through the same function the route calls.
    let state = app.stack.server.state.clone();
    let owner = principals::user_id(&state, "admin")
        .await
        .expect("lookup")
        .expect("the admin user exists");
    let ctx = Context::system("test");
    for creator in Role::ALL {
        for role in Role::ALL {
            let name = format!("{creator}-mints-{role}");
            let new = NewToken {
                name: &name,
                role: *role,
                ttl_seconds: 600,
                environments: None,
            };
            let got = principals::create_token(&state, &ctx, "test", &owner, *creator, new).await;
            match got {
                Ok((_, view)) => {
                    assert!(creator.covers(*role), "{creator} minted a {role} token");
                    assert_eq!(view.role, *role);
                }
                Err(ApiError::Forbidden { reason }) => {
                    assert!(
                        !creator.covers(*role),
                        "{creator} should be able to mint {role}"
                    );
                    assert_eq!(reason, "role_exceeds_creator");
                }
                Err(other) => panic!("{creator} minting {role}: unexpected {other}"),
            }
        }
    }

    // Over the API: admin mints every role, and the token acts with exactly that role.
    for role in Role::ALL {
        let (client, created) =
            create(&app, &new_token(&format!("api-{role}"), *role, 600, None)).await;
        assert_eq!(created.info.role, *role);
        assert_eq!(client.whoami().await.expect("whoami").role, *role);
    }
    // Roles without tokens:manage cannot mint anything, not even their own role.
    for role in [Role::Viewer, Role::Developer, Role::Ops, Role::Ci] {
        let (client, _) = app.token(role).await;
        let e = client
            .create_token(&new_token("escalate", Role::Admin, 600, None))
            .await
            .expect_err("no tokens:manage");
        assert_problem(&e, 403, ErrorCode::Forbidden);
        let e = client
            .create_token(&new_token("same", role, 600, None))
            .await
            .expect_err("no tokens:manage");
        assert_problem(&e, 403, ErrorCode::Forbidden);
    }
    app.stop().await;
}

/// AUTH-5: revocation takes effect on the very next request, even for a token the server has
/// just authenticated (and so cached); the refusal is audited as `revoked`.
#[tokio::test]
async fn auth_5_revocation_is_immediate() {
    let app = TestApp::spawn().await;
    let (client, created) = create(&app, &new_token("doomed", Role::Developer, 3_600, None)).await;
    client.whoami().await.expect("works before revocation");
    app.admin
        .revoke_token(&created.info.id)
        .await
        .expect("revoked");
    let e = client.whoami().await.expect_err("refused after revocation");
    assert_problem(&e, 401, ErrorCode::Unauthenticated);
    let e = app
        .exec(&client, "SELECT 1")
        .await
        .expect_err("cannot create requests either");
    assert_problem(&e, 401, ErrorCode::Unauthenticated);
    assert!(
        listed(&app, false, &created.info.id)
            .await
            .expect("still listed")
            .revoked_at
            .is_some()
    );
    let failures = auth_failures(&app).await;
    assert!(
        failures.iter().any(|e| e["details"]["reason"] == "revoked"
            && e["details"]["token_id"] == created.info.id.as_str()),
        "auth.failed with reason revoked: {failures:?}"
    );
    let e = app
        .admin
        .revoke_token(&created.info.id)
        .await
        .expect_err("already revoked");
    assert_problem(&e, 404, ErrorCode::NotFound);
    app.stop().await;
}

/// AUTH-5, AUTH-7: a revocation whose caller is dropped once its commit has landed (an
/// admin's client gone mid-request, so its handler future is dropped) still takes the token
/// out of the authentication cache: it is refused from then on, instead of being served from
/// the cache for as long as the server runs. The revocation is polled by hand and dropped
/// the moment the store shows it committed, before it is polled again.
#[tokio::test(flavor = "multi_thread")]
async fn auth_5_a_revocation_dropped_after_its_commit_still_takes_effect() {
    use std::future::Future;
    use std::task::{Poll, Waker};

    let app = TestApp::spawn().await;
    let state = app.stack.server.state.clone();
    let ctx = Context::system("test");
    // A revocation can finish between the look at the store and the next poll; that try
    // proves nothing, and the next one, with a new token, is made.
    for attempt in 0..5 {
        let (client, created) = create(
            &app,
            &new_token(&format!("dropped-{attempt}"), Role::Developer, 3_600, None),
        )
        .await;
        client.whoami().await.expect("works, and is now cached");
        let id = created.info.id.clone();
        let mut revoking = Box::pin(principals::revoke_token(&state, &ctx, "test", &id));
        let dropped_after_commit = loop {
            tokio::time::sleep(Duration::from_micros(200)).await;
            let committed: bool =
                sqlx::query_scalar("SELECT revoked_at_ms IS NOT NULL FROM api_tokens WHERE id = ?")
                    .bind(&id)
                    .fetch_one(state.store.reader())
                    .await
                    .expect("the token's row");
            if committed {
                break true;
            }
            let poll = revoking
                .as_mut()
                .poll(&mut std::task::Context::from_waker(Waker::noop()));
            if let Poll::Ready(done) = poll {
                done.expect("revoked");
                break false;
            }
        };
        drop(revoking);
        if !dropped_after_commit {
            continue;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match client.whoami().await {
                Err(e) => {
                    assert_problem(&e, 401, ErrorCode::Unauthenticated);
                    break;
                }
                Ok(_) => assert!(
                    Instant::now() < deadline,
                    "a committed revocation left its token usable from the cache"
                ),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        app.stop().await;
        return;
    }
    panic!("no try dropped the revocation between its commit and its end");
}

/// AUTH-5: expiry is enforced: a token past its lifetime is refused and audited as `expired`.
#[tokio::test]
async fn auth_5_expired_token_is_refused() {
    let app = TestApp::spawn().await;
    let (client, created) = create(&app, &new_token("short", Role::Viewer, 1, None)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let e = loop {
        match client.whoami().await {
            Ok(_) => {
                assert!(
                    Instant::now() < deadline,
                    "a 1-second token still works after 10 s"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => break e,
        }
    };
    assert_problem(&e, 401, ErrorCode::Unauthenticated);
    let failures = auth_failures(&app).await;
    assert!(
        failures.iter().any(|e| e["details"]["reason"] == "expired"
            && e["details"]["token_id"] == created.info.id.as_str()),
        "auth.failed with reason expired: {failures:?}"
    );
    app.stop().await;
}

/// AUTH-5: a token scoped to `production` is denied (403) on `demo`, a development
/// connection, and does not even see it; an unscoped token of the same role runs there.
#[tokio::test]
async fn auth_5_environment_scoped_token_is_denied_elsewhere() {
    let app = TestApp::spawn().await;
    let checksum = app.demo_checksum().await;
    let (scoped, created) = create(
        &app,
        &new_token(
            "prod-only",
            Role::Developer,
            3_600,
            Some(vec![Environment::Production]),
        ),
    )
    .await;
    assert_eq!(
        created.info.environments,
        Some(vec![Environment::Production])
    );
    let e = app
        .exec(&scoped, "SELECT id FROM customers")
        .await
        .expect_err("out of scope");
    assert_problem(&e, 403, ErrorCode::Forbidden);
    let e = app
        .exec(&scoped, "UPDATE customers SET name = 'x' WHERE id = 1")
        .await
        .expect_err("out of scope");
    assert_problem(&e, 403, ErrorCode::Forbidden);
    assert!(
        scoped.connections().await.expect("connections").is_empty(),
        "demo is not listed for a production-only token"
    );
    assert_eq!(app.demo_checksum().await, checksum);

    let (unscoped, _) = create(&app, &new_token("anywhere", Role::Developer, 3_600, None)).await;
    let ok = app
        .exec(&unscoped, "SELECT id FROM customers ORDER BY id LIMIT 1")
        .await
        .expect("unscoped runs");
    assert_eq!(ok.request.state, RequestState::Succeeded);
    let (dev_scoped, _) = create(
        &app,
        &new_token(
            "dev-only",
            Role::Developer,
            3_600,
            Some(vec![Environment::Development]),
        ),
    )
    .await;
    let ok = app
        .exec(&dev_scoped, "SELECT id FROM customers ORDER BY id LIMIT 1")
        .await
        .expect("in scope runs");
    assert_eq!(ok.request.state, RequestState::Succeeded);

    let denied = app
        .audit_events()
        .await
        .into_iter()
        .filter(|e| e["action"] == "access.denied" && e["target"] == "demo")
        .count();
    assert!(denied >= 2, "both out-of-scope attempts are audited");
    let e = app
        .admin
        .create_token(&new_token("nowhere", Role::Viewer, 600, Some(vec![])))
        .await
        .expect_err("empty scope");
    assert_problem(&e, 400, ErrorCode::BadRequest);
    app.stop().await;
}

/// AUTH-5: the list shows when and from where a token was last used (flushed before listing),
/// and the unused list holds exactly the tokens never used.
#[tokio::test]
async fn auth_5_last_used_and_unused_tokens() {
    let app = TestApp::spawn().await;
    let (used, used_created) = create(&app, &new_token("used", Role::Viewer, 3_600, None)).await;
    let (_idle, idle_created) = create(&app, &new_token("idle", Role::Viewer, 3_600, None)).await;
    let (used_id, idle_id) = (used_created.info.id.clone(), idle_created.info.id.clone());

    let before = listed(&app, false, &used_id).await.expect("listed");
    assert_eq!((before.last_used_at, before.last_used_addr), (None, None));
    assert!(
        listed(&app, true, &used_id).await.is_some(),
        "unused until first use"
    );

    used.whoami().await.expect("use it once");
    let after = listed(&app, false, &used_id).await.expect("listed");
    assert!(
        after.last_used_at.is_some(),
        "last_used_at recorded: {after:?}"
    );
    assert_eq!(after.last_used_addr.as_deref(), Some("127.0.0.1"));

    let unused = app.admin.list_tokens(true).await.expect("unused list");
    assert!(
        unused.iter().any(|t| t.id == idle_id),
        "the idle token is listed as unused"
    );
    assert!(
        !unused.iter().any(|t| t.id == used_id),
        "the used token is not"
    );
    assert!(
        unused.iter().all(|t| t.last_used_at.is_none()),
        "every unused token has no last use: {unused:?}"
    );
    let all = app.admin.list_tokens(false).await.expect("full list");
    assert!(all.iter().any(|t| t.id == used_id) && all.iter().any(|t| t.id == idle_id));
    assert!(
        all.len() > unused.len(),
        "the admin token and the used one are not unused"
    );
    app.stop().await;
}

/// Flips one character of the secret part to another valid base64url character.
fn flip_one(token: &str) -> String {
    let mut chars: Vec<char> = token.chars().collect();
    let i = token.len() - 10;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}

/// AUTH-5 / SEC-5: garbage, a well-formed token with a valid id and the wrong secret, and a
/// real token with one character changed are all refused with 401 problem documents, and
/// each refusal is an `auth.failed` audit event with its reason.
#[tokio::test]
async fn auth_5_bad_bearers_are_refused_and_audited() {
    let app = TestApp::spawn().await;
    let (_, created) = create(&app, &new_token("victim", Role::Admin, 3_600, None)).await;
    let id = created.info.id.clone();
    let wrong_secret = format!("pct_{id}_{}", "A".repeat(43));
    let flipped = flip_one(&created.token);
    assert_ne!(flipped, created.token);
    let agent_prefixed = created.token.replacen("pct_", "pca_", 1);

    let cases = [
        ("garbage", "definitely-not-a-token".to_owned(), "malformed"),
        ("wrong secret", wrong_secret, "mismatch"),
        ("flipped character", flipped, "mismatch"),
        ("agent prefix on an API token", agent_prefixed, "mismatch"),
        (
            "unknown id",
            format!("pct_{}_{}", "0".repeat(16), "A".repeat(43)),
            "unknown",
        ),
    ];
    let before = auth_failures(&app).await.len();
    for (what, bearer, _) in &cases {
        let client = Client::new(app.url(), Some(bearer)).expect("client");
        let e = client.whoami().await.expect_err(what);
        assert_problem(&e, 401, ErrorCode::Unauthenticated);
        let e = client.list_tokens(false).await.expect_err(what);
        assert_problem(&e, 401, ErrorCode::Unauthenticated);
    }
    let failures = auth_failures(&app).await;
    assert_eq!(
        failures.len() - before,
        cases.len() * 2,
        "every refusal is audited: {failures:?}"
    );
    for (what, _, reason) in &cases {
        assert!(
            failures.iter().any(|e| e["details"]["reason"] == *reason),
            "{what}: no auth.failed with reason {reason}"
        );
    }
    for e in &failures {
        assert_eq!(e["outcome"], "denied");
        assert_eq!(e["client_addr"], "127.0.0.1");
        let text = e.to_string();
        assert!(
            !text.contains(&created.token[created.token.len() - 20..]),
            "the audit event holds no secret: {text}"
        );
    }
    // The genuine token still works: failures did not lock it out or corrupt the cache.
    let genuine = Client::new(app.url(), Some(&created.token)).expect("client");
    assert_eq!(
        genuine.whoami().await.expect("genuine token").role,
        Role::Admin
    );

    let anonymous = Client::new(app.url(), None).expect("client");
    let e = anonymous.whoami().await.expect_err("no credential");
    assert_problem(&e, 401, ErrorCode::Unauthenticated);
    app.stop().await;
}
