//! The agent's gate (EX-1, AZ-5): a job runs only with a token signed by a key pinned in the
//! agent's own config, for this agent, this job and this exact statement, unexpired and
//! never seen before, and only inside the agent's capability list. Each refusal is checked
//! against a real SQLite target whose contents must not change.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use portcullis::devstack::create_demo_db;
use portcullis_agent::Agent;
use portcullis_agent::config::{AgentConfig, PinnedKey, TargetConfig};
use portcullis_core::{ConnectionKind, Environment, OperationClass};
use portcullis_proto::agent::{JobAssignment, JobReport};
use portcullis_proto::token::{
    ExecutionToken, TokenClaims, TokenSigner, public_key_base64, statement_sha256,
};

use crate::harness::TestApp;

const AGENT: &str = "agent-a";
const INSERT: &str = "INSERT INTO products (sku, name, price_cents) VALUES ('T-1', 'test', 1)";
const COUNT: &str = "SELECT COUNT(*) FROM products";

struct Rig {
    agent: Arc<Agent>,
    signer: TokenSigner,
    db: PathBuf,
    _dir: tempfile::TempDir,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

fn new_signer() -> TokenSigner {
    TokenSigner::new(SigningKey::from_bytes(&rand::random::<[u8; 32]>()))
}

fn pin(signer: &TokenSigner) -> PinnedKey {
    PinnedKey {
        key_id: signer.key_id().to_hex(),
        public_key: public_key_base64(&signer.verifying_key()),
    }
}

impl Rig {
    /// An agent serving a fresh demo database and allowing `allow` on it.
    async fn new(allow: &[OperationClass]) -> Rig {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("demo.db");
        create_demo_db(&db).await.expect("demo db");
        let signer = new_signer();
        let config = AgentConfig {
            name: AGENT.into(),
            // Never contacted: these tests drive the gate directly.
            server_url: "http://127.0.0.1:9".into(),
            trusted_keys: vec![pin(&signer)],
            connections: vec![TargetConfig {
                path: Some(db.clone()),
                ..TargetConfig::new(
                    "demo".parse().expect("name"),
                    ConnectionKind::Sqlite,
                    Environment::Development,
                    allow.to_vec(),
                )
            }],
            ..AgentConfig::default()
        };
        let agent = Agent::new(config, "pca_0000000000000000_unused")
            .await
            .expect("agent");
        Rig {
            agent,
            signer,
            db,
            _dir: dir,
        }
    }

    fn claims(&self, statement: &str, class: OperationClass) -> TokenClaims {
        let now = now_ms();
        TokenClaims {
            key_id: self.signer.key_id(),
            job_id: uuid::Uuid::new_v4(),
            request_id: uuid::Uuid::new_v4(),
            agent: AGENT.into(),
            connection: "demo".parse().expect("name"),
            environment: Environment::Development,
            class,
            statement_sha256: statement_sha256(statement),
            row_cap: 100,
            timeout_ms: 5_000,
            approval_sha256: [7; 32],
            issued_at_ms: now,
            expires_at_ms: now + 60_000,
            nonce: rand::random(),
            dry_run: false,
        }
    }

    fn job(&self, claims: &TokenClaims, statement: &str) -> JobAssignment {
        self.job_signed_by(&self.signer, claims, statement)
    }

    fn job_signed_by(
        &self,
        signer: &TokenSigner,
        claims: &TokenClaims,
        statement: &str,
    ) -> JobAssignment {
        JobAssignment {
            job_id: claims.job_id,
            request_id: claims.request_id,
            connection: claims.connection.clone(),
            class: claims.class,
            statement: statement.to_owned(),
            token: signer.sign(claims).expect("sign"),
            lease_ms: 30_000,
        }
    }

    async fn products(&self) -> i64 {
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(&self.db)
                    .read_only(true),
            )
            .await
            .expect("open");
        let n: i64 = sqlx::query_scalar(COUNT)
            .fetch_one(&pool)
            .await
            .expect("count");
        pool.close().await;
        n
    }
}

fn refusal(report: &JobReport) -> &str {
    match report {
        JobReport::Refused { error } => &error.code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn ex1_a_valid_token_executes() {
    let rig = Rig::new(&[OperationClass::Read, OperationClass::Write]).await;
    let read = "SELECT name FROM products WHERE id = 1";
    let report = rig
        .agent
        .process(&rig.job(&rig.claims(read, OperationClass::Read), read))
        .await;
    match report {
        JobReport::Succeeded { result } => assert_eq!(
            result.rows,
            vec![vec![serde_json::json!("Mechanical keyboard")]]
        ),
        other => panic!("{other:?}"),
    }
    let report = rig
        .agent
        .process(&rig.job(&rig.claims(INSERT, OperationClass::Write), INSERT))
        .await;
    assert!(
        matches!(report, JobReport::Succeeded { ref result } if result.affected_rows == Some(1)),
        "{report:?}"
    );
    assert_eq!(rig.products().await, 9);
}

#[tokio::test]
async fn ex1_a_token_from_an_unpinned_key_is_refused() {
    let rig = Rig::new(&[OperationClass::Write]).await;
    let forger = new_signer();
    let mut claims = rig.claims(INSERT, OperationClass::Write);
    claims.key_id = forger.key_id();
    let report = rig
        .agent
        .process(&rig.job_signed_by(&forger, &claims, INSERT))
        .await;
    assert_eq!(refusal(&report), "token_unknown_key");
    assert_eq!(rig.products().await, 8);
}

/// Every byte of a valid token altered in turn (two different bit flips per byte): never
/// executed. Field-by-field re-encoded tampering is covered in the codec's own tests.
#[tokio::test]
async fn ex1_any_tampered_byte_is_refused() {
    let rig = Rig::new(&[OperationClass::Write]).await;
    let claims = rig.claims(INSERT, OperationClass::Write);
    let job = rig.job(&claims, INSERT);
    let bytes = job.token.as_bytes().to_vec();
    for i in 0..bytes.len() {
        for bit in [0x01u8, 0x80] {
            let mut tampered = bytes.clone();
            tampered[i] ^= bit;
            let Ok(token) = ExecutionToken::from_base64(&base64_url(&tampered)) else {
                continue;
            };
            let mut j = job.clone();
            j.token = token;
            let report = rig.agent.process(&j).await;
            assert!(
                matches!(report, JobReport::Refused { .. }),
                "byte {i} bit {bit:#x}: {report:?}"
            );
        }
    }
    assert_eq!(rig.products().await, 8, "no tampered token executed");
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn ex1_an_expired_token_is_refused() {
    let rig = Rig::new(&[OperationClass::Write]).await;
    let mut claims = rig.claims(INSERT, OperationClass::Write);
    claims.issued_at_ms -= 400_000;
    claims.expires_at_ms = claims.issued_at_ms + 120_000;
    assert_eq!(
        refusal(&rig.agent.process(&rig.job(&claims, INSERT)).await),
        "token_expired"
    );
    assert_eq!(rig.products().await, 8);
}

#[tokio::test]
async fn ex1_a_token_for_another_agent_is_refused() {
    let rig = Rig::new(&[OperationClass::Write]).await;
    let mut claims = rig.claims(INSERT, OperationClass::Write);
    claims.agent = "agent-b".into();
    assert_eq!(
        refusal(&rig.agent.process(&rig.job(&claims, INSERT)).await),
        "token_wrong_audience"
    );
    assert_eq!(rig.products().await, 8);
}

#[tokio::test]
async fn ex1_a_replayed_nonce_is_refused_and_the_write_runs_once() {
    let rig = Rig::new(&[OperationClass::Write]).await;
    let job = rig.job(&rig.claims(INSERT, OperationClass::Write), INSERT);
    assert!(matches!(
        rig.agent.process(&job).await,
        JobReport::Succeeded { .. }
    ));
    assert_eq!(refusal(&rig.agent.process(&job).await), "token_replayed");
    assert_eq!(rig.products().await, 9);
}

#[tokio::test]
async fn ex1_a_statement_swapped_after_signing_is_refused() {
    let rig = Rig::new(&[OperationClass::Read, OperationClass::Write]).await;
    let signed = "SELECT COUNT(*) FROM products";
    for swapped in [
        INSERT.to_owned(),
        format!("{signed} "),
        "DELETE FROM products".to_owned(),
    ] {
        let mut job = rig.job(&rig.claims(signed, OperationClass::Write), signed);
        job.statement = swapped.clone();
        assert_eq!(
            refusal(&rig.agent.process(&job).await),
            "token_statement_mismatch",
            "{swapped:?}"
        );
    }
    assert_eq!(rig.products().await, 8);
}

/// AZ-5: a validly signed token is still refused outside the agent's own capability list.
#[tokio::test]
async fn az5_capabilities_hold_despite_a_valid_signature() {
    let rig = Rig::new(&[OperationClass::Read]).await;
    let claims = rig.claims(INSERT, OperationClass::Write);
    assert_eq!(
        refusal(&rig.agent.process(&rig.job(&claims, INSERT)).await),
        "capability_class"
    );

    let mut other = rig.claims("SELECT 1", OperationClass::Read);
    other.connection = "billing".parse().expect("name");
    assert_eq!(
        refusal(&rig.agent.process(&rig.job(&other, "SELECT 1")).await),
        "capability_connection"
    );

    let mut prod = rig.claims("SELECT 1", OperationClass::Read);
    prod.environment = Environment::Production;
    assert_eq!(
        refusal(&rig.agent.process(&rig.job(&prod, "SELECT 1")).await),
        "capability_environment"
    );
    assert_eq!(rig.products().await, 8);
}

/// EX-2 on the agent: a statement classed above the signed class is refused, so a server bug
/// or compromise cannot turn a read into a write.
#[tokio::test]
async fn ex2_the_agent_refuses_a_statement_above_the_signed_class() {
    let rig = Rig::new(&[
        OperationClass::Read,
        OperationClass::Write,
        OperationClass::Ddl,
    ])
    .await;
    for (statement, code) in [
        ("DELETE FROM products", "class_escalation"),
        ("DROP TABLE products", "class_escalation"),
        ("SELECT 1; DELETE FROM products", "statement_denied"),
    ] {
        let claims = rig.claims(statement, OperationClass::Read);
        assert_eq!(
            refusal(&rig.agent.process(&rig.job(&claims, statement)).await),
            code,
            "{statement}"
        );
    }
    assert_eq!(rig.products().await, 8);
}

/// EX-1 end to end: the server signs with its own key; an agent that pinned a different key
/// (as if the server's address were hijacked) refuses every job, whatever the server offers at
/// `/api/v1/public-key`.
#[tokio::test]
async fn ex1_a_key_offered_by_the_server_but_not_pinned_is_refused() {
    let app = TestApp::spawn_with(|o| o.start_agent = false).await;
    let registered = app.admin.create_agent("lone-agent").await.expect("agent");
    let mut config = portcullis::devstack::demo_agent_config(
        "lone-agent",
        app.url(),
        &app.stack.server,
        &app.stack.demo_db,
    );
    let other = new_signer();
    config.trusted_keys = vec![pin(&other)];
    let offered = app.admin.public_key().await.expect("public key");
    assert_ne!(offered.key_id, other.key_id().to_hex());
    let agent = Agent::new(config, &registered.token).await.expect("agent");
    let (stop, rx) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(agent.run(rx));

    let before = app.demo_checksum().await;
    let outcome = app
        .exec(&app.admin, "DELETE FROM order_items")
        .await
        .expect("request");
    let outcome = if outcome.request.state.is_terminal() {
        outcome
    } else {
        app.admin
            .wait_request(outcome.request.id, Duration::from_secs(20))
            .await
            .expect("wait")
    };
    assert_eq!(outcome.request.state, portcullis_core::RequestState::Failed);
    assert_eq!(
        outcome.request.error.as_ref().map(|e| e.code.as_str()),
        Some("token_unknown_key")
    );
    assert_eq!(app.demo_checksum().await, before);
    stop.send_replace(true);
    let _ = run.await;
    app.stop().await;
}
