//! `TestApp::spawn()`: a fresh temp state directory, a server on 127.0.0.1:0 with the demo
//! target, and an admin client. Logs are hidden unless `TEST_LOG` is set.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::Duration;

use portcullis::devstack::{DevOptions, DevStack};
use portcullis_client::Client;
use portcullis_core::Role;
use portcullis_proto::api::{CreateRequest, CreateToken, RequestOutcome};

pub struct TestApp {
    pub stack: DevStack,
    pub admin: Client,
    _dir: tempfile::TempDir,
}

fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter("info,sqlx=warn")
                .with_test_writer()
                .try_init();
        }
    });
}

impl TestApp {
    /// Server + in-process dev agent serving `demo` (read, write, ddl; everything but admin
    /// auto-approved).
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(configure: impl FnOnce(&mut DevOptions)) -> TestApp {
        init_logs();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut opts = DevOptions::new(
            "127.0.0.1:0".parse().expect("addr"),
            dir.path().join("data"),
        );
        // Tests mint many tokens from the one admin: the token-creation limit (WEB-4, 5 an
        // hour by default) is raised here and proven at its default in `rate_limits`.
        opts.server.rate_limit.token_create_per_hour = 1_000;
        // Many tests end with a job an agent claimed and never reported: their stop does not
        // drain (EX-3). The drain is proven in `dispatch::stopping` and, on the real
        // processes, in `faults::drain`.
        opts.server.execution.drain_secs = 0;
        configure(&mut opts);
        let stack = DevStack::start(opts).await.expect("dev stack starts");
        let admin = Client::new(&stack.url, Some(&stack.admin_token)).expect("client");
        TestApp {
            stack,
            admin,
            _dir: dir,
        }
    }

    pub fn url(&self) -> &str {
        &self.stack.url
    }

    pub fn data_dir(&self) -> &Path {
        &self.stack.data_dir
    }

    pub fn state_file(&self) -> PathBuf {
        self.stack.data_dir.join("portcullis.db")
    }

    /// A client with a fresh token of `role`, and the token's secret.
    pub async fn token(&self, role: Role) -> (Client, String) {
        let created = self
            .admin
            .create_token(&CreateToken {
                name: format!("test-{role}"),
                role,
                ttl_seconds: 3_600,
                environments: None,
            })
            .await
            .expect("token created");
        (
            Client::new(self.url(), Some(&created.token)).expect("client"),
            created.token,
        )
    }

    /// Runs `statement` on `demo` and waits for it to finish.
    pub async fn exec(
        &self,
        client: &Client,
        statement: &str,
    ) -> Result<RequestOutcome, portcullis_client::ClientError> {
        let body = CreateRequest {
            connection: "demo".parse().expect("name"),
            statement: statement.to_owned(),
            reason: "integration test".into(),
            stream: false,
        };
        client.create_request(&body, Duration::from_secs(20)).await
    }

    /// Reads a single integer from the demo database directly (the test's own oracle).
    pub async fn demo_scalar(&self, sql: &'static str) -> i64 {
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(&self.stack.demo_db)
                    .read_only(true),
            )
            .await
            .expect("open demo db");
        let v: i64 = sqlx::query_scalar(sql)
            .fetch_one(&pool)
            .await
            .expect("query demo db");
        pool.close().await;
        v
    }

    /// A SHA-256 over the schema and every row of every demo table: the "nothing changed"
    /// oracle for attack tests.
    pub async fn demo_checksum(&self) -> String {
        use sha2::Digest;
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(&self.stack.demo_db)
                    .read_only(true),
            )
            .await
            .expect("open demo db");
        let mut h = sha2::Sha256::new();
        let schema: Vec<(String, String)> =
            sqlx::query_as("SELECT name, COALESCE(sql, '') FROM sqlite_master ORDER BY name")
                .fetch_all(&pool)
                .await
                .expect("schema");
        for (name, sql) in &schema {
            h.update(name.as_bytes());
            h.update(sql.as_bytes());
            let columns: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT name FROM pragma_table_info('{name}')"
            )))
            .fetch_all(&pool)
            .await
            .unwrap_or_default();
            if columns.is_empty() {
                continue;
            }
            let expr = columns
                .iter()
                .map(|c| format!("quote(\"{c}\")"))
                .collect::<Vec<_>>()
                .join(" || ',' || ");
            let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT {expr} FROM \"{name}\" ORDER BY rowid"
            )))
            .fetch_all(&pool)
            .await
            .expect("dump table");
            for r in rows {
                h.update(r.as_bytes());
                h.update(b"\n");
            }
        }
        pool.close().await;
        hex::encode(h.finalize())
    }

    /// Every audit event, as exported by the API.
    pub async fn audit_events(&self) -> Vec<serde_json::Value> {
        let bytes = self.admin.audit_export().await.expect("export");
        String::from_utf8(bytes)
            .expect("utf8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect()
    }

    pub async fn stop(self) {
        self.stack.stop().await;
    }
}

/// The built `portcullis` binary.
/// The Prometheus text of the server at `url`, read with `token` (`metrics:view`).
pub async fn metrics_text(url: &str, token: &str) -> String {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .get(format!("{url}/metrics"))
        .bearer_auth(token)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body")
}

pub fn bin() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
}

/// The built `portcullis-agent` binary (the agent alone).
pub fn agent_bin() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_portcullis-agent"))
}
