//! Shared helpers: scratch schemas, databases and key prefixes, the signing rig.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use portcullis_agent::Agent;
use portcullis_agent::config::{AgentConfig, Credential, PinnedKey, SecretUrl, TargetConfig};
use portcullis_agent::exec::Limits;
use portcullis_core::{ConnectionKind, ConnectionName, Environment, OperationClass};
use portcullis_proto::agent::{JobAssignment, JobReport};
use portcullis_proto::api::{ExecError, ExecResult};
use portcullis_proto::token::{TokenClaims, TokenSigner, public_key_base64, statement_sha256};
use serde_json::Value;
use sqlx::Connection;

pub(crate) const AGENT: &str = "agent-stores";
pub(crate) const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/test";
pub(crate) const MYSQL_ADMIN: &str = "mysql://root@127.0.0.1:3306/test";
pub(crate) const REDIS_ADMIN: &str = "redis://127.0.0.1:6379/0";
pub(crate) const SECRET: &str = "SuperSecret123";

pub(crate) fn suffix() -> String {
    format!("{:016x}", rand::random::<u64>())
}

pub(crate) fn limits(row_cap: u64, max_bytes: u64, timeout_ms: u64) -> Limits {
    Limits {
        row_cap,
        max_bytes,
        timeout: Duration::from_millis(timeout_ms),
        dry_run: false,
    }
}

pub(crate) fn target(
    name: &str,
    kind: ConnectionKind,
    urls: &[(OperationClass, &str)],
) -> TargetConfig {
    TargetConfig {
        credentials: urls
            .iter()
            .map(|(class, url)| {
                (
                    *class,
                    Credential {
                        url: Some(SecretUrl::new(*url)),
                        url_env: None,
                    },
                )
            })
            .collect(),
        ..TargetConfig::new(
            name.parse().expect("name"),
            kind,
            Environment::Development,
            urls.iter().map(|(class, _)| *class).collect(),
        )
    }
}

pub(crate) fn failed(result: Result<ExecResult, ExecError>) -> ExecError {
    match result {
        Err(e) => e,
        Ok(r) => panic!("expected a failure, got {r:?}"),
    }
}

/// Runs `cleanup` when dropped, on its own runtime, so a failing test still drops its schema,
/// database or keys. The test's runtime waits for it, so nothing of that runtime runs
/// meanwhile: a connection on its way back to its pool (which is when a read's transaction
/// ends) stays where it is, and a cleanup ends the sessions that would block it.
pub(crate) struct Scratch {
    pub(crate) cleanup: Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl Scratch {
    /// `cleanup` is an `async` block: it does nothing until the drop polls it.
    pub(crate) fn new(cleanup: impl Future<Output = ()> + Send + 'static) -> Scratch {
        Scratch {
            cleanup: Some(Box::pin(cleanup)),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(cleanup) = self.cleanup.take() {
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                runtime.block_on(cleanup);
            })
            .join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Signed jobs through the agent's gate.

pub(crate) struct Rig {
    pub(crate) agent: Arc<Agent>,
    pub(crate) signer: TokenSigner,
    pub(crate) connection: ConnectionName,
    /// The signed statement timeout of every job.
    pub(crate) timeout_ms: u64,
}

impl Rig {
    pub(crate) async fn new(target: TargetConfig) -> Rig {
        let signer = TokenSigner::new(SigningKey::from_bytes(&rand::random::<[u8; 32]>()));
        let connection = target.name.clone();
        let config = AgentConfig {
            name: AGENT.into(),
            // Never contacted: these tests drive the gate directly.
            server_url: "http://127.0.0.1:9".into(),
            trusted_keys: vec![PinnedKey {
                key_id: signer.key_id().to_hex(),
                public_key: public_key_base64(&signer.verifying_key()),
            }],
            connections: vec![target],
            ..AgentConfig::default()
        };
        let agent = Agent::new(config, "pca_0000000000000000_unused")
            .await
            .expect("agent");
        Rig {
            agent,
            signer,
            connection,
            timeout_ms: 5_000,
        }
    }

    pub(crate) fn job(
        &self,
        statement: &str,
        class: OperationClass,
        row_cap: u64,
    ) -> JobAssignment {
        self.job_with(statement, class, row_cap, false)
    }

    /// A signed preview (dry run) of a write.
    pub(crate) async fn preview(&self, statement: &str) -> JobReport {
        self.agent
            .process(&self.job_with(statement, OperationClass::Write, 1_000, true))
            .await
    }

    pub(crate) fn job_with(
        &self,
        statement: &str,
        class: OperationClass,
        row_cap: u64,
        dry_run: bool,
    ) -> JobAssignment {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as i64;
        let claims = TokenClaims {
            key_id: self.signer.key_id(),
            job_id: uuid::Uuid::new_v4(),
            request_id: uuid::Uuid::new_v4(),
            agent: AGENT.into(),
            connection: self.connection.clone(),
            environment: Environment::Development,
            class,
            statement_sha256: statement_sha256(statement),
            row_cap,
            timeout_ms: self.timeout_ms,
            approval_sha256: [7; 32],
            issued_at_ms: now,
            expires_at_ms: now + 60_000,
            nonce: rand::random(),
            dry_run,
        };
        JobAssignment {
            job_id: claims.job_id,
            request_id: claims.request_id,
            connection: claims.connection.clone(),
            class,
            statement: statement.to_owned(),
            token: self.signer.sign(&claims).expect("sign"),
            lease_ms: 30_000,
        }
    }

    pub(crate) async fn report(
        &self,
        statement: &str,
        class: OperationClass,
        row_cap: u64,
    ) -> JobReport {
        self.agent
            .process(&self.job(statement, class, row_cap))
            .await
    }

    pub(crate) async fn ok(&self, statement: &str, class: OperationClass) -> ExecResult {
        self.ok_capped(statement, class, 1_000).await
    }

    pub(crate) async fn ok_capped(
        &self,
        statement: &str,
        class: OperationClass,
        row_cap: u64,
    ) -> ExecResult {
        match self.report(statement, class, row_cap).await {
            JobReport::Succeeded { result } => result,
            other => panic!("{statement}: {other:?}"),
        }
    }
}

pub(crate) fn column_types(result: &ExecResult) -> Vec<(String, String)> {
    result
        .columns
        .iter()
        .map(|c| (c.name.clone(), c.type_name.clone()))
        .collect()
}

/// Compares a one-row result to `expect` (column → (type, value)), naming the first mismatch.
pub(crate) fn check_row(result: &ExecResult, expect: &[(&str, &str, Value)]) {
    assert_eq!(result.row_count, 1, "{result:?}");
    let row = &result.rows[0];
    assert_eq!(
        result.columns.len(),
        expect.len(),
        "{:?}",
        column_types(result)
    );
    for ((column, value), (name, type_name, want)) in result.columns.iter().zip(row).zip(expect) {
        assert_eq!(column.name, *name);
        assert_eq!(
            (column.type_name.as_str(), value),
            (*type_name, want),
            "column {name}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

pub(crate) struct Pg {
    pub(crate) schema: String,
    pub(crate) admin: sqlx::PgPool,
    pub(crate) _scratch: Scratch,
}

impl Pg {
    pub(crate) async fn new() -> Pg {
        let schema = format!("t_{}", suffix());
        let admin = sqlx::PgPool::connect(PG_ADMIN).await.expect("postgres");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&admin)
            .await
            .expect("schema");
        let drop_schema = schema.clone();
        Pg {
            schema,
            admin,
            _scratch: Scratch::new(async move {
                if let Ok(mut c) = sqlx::PgConnection::connect(PG_ADMIN).await {
                    // A read's transaction ends when its connection goes back to its pool, in
                    // a task of the test's runtime, which is blocked while this runs: end the
                    // sessions still holding locks in the schema first, or the DROP waits.
                    let _ = sqlx::query(
                        "SELECT pg_terminate_backend(l.pid, 5000) FROM pg_locks l \
                         JOIN pg_class c ON c.oid = l.relation \
                         JOIN pg_namespace n ON n.oid = c.relnamespace \
                         WHERE n.nspname = $1 AND l.pid <> pg_backend_pid()",
                    )
                    .bind(&drop_schema)
                    .execute(&mut c)
                    .await;
                    let sql = format!("DROP SCHEMA {drop_schema} CASCADE");
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                        .execute(&mut c)
                        .await;
                }
            }),
        }
    }

    pub(crate) async fn exec(&self, sql: &str) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.replace("$s", &self.schema)))
            .execute(&self.admin)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    pub(crate) async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {}.{table}",
            self.schema
        )))
        .fetch_one(&self.admin)
        .await
        .expect("count")
    }

    pub(crate) fn sql(&self, sql: &str) -> String {
        sql.replace("$s", &self.schema)
    }

    pub(crate) fn target(&self, classes: &[OperationClass]) -> TargetConfig {
        let urls: Vec<_> = classes.iter().map(|c| (*c, PG_ADMIN)).collect();
        target("pg", ConnectionKind::Postgres, &urls)
    }
}

/// Waits (bounded) until exactly one connection sits idle in a target's pool (`idle` reads
/// its count): the last job's connection is back, and sqlx's test on release is done.
pub(crate) async fn back_in_pool(idle: impl Fn() -> usize) {
    pool_count(idle, 1, "the connection never went back to its pool").await;
}

/// Waits (bounded) until no connection of a pool is out serving a job or on its way back or
/// to being closed (`busy` reads their count).
pub(crate) async fn settled(busy: impl Fn() -> usize) {
    pool_count(busy, 0, "a connection is still out of its pool").await;
}

async fn pool_count(count: impl Fn() -> usize, want: usize, failure: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while count() != want {
        assert!(
            std::time::Instant::now() < deadline,
            "{failure} ({} against {want})",
            count()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
