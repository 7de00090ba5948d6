//! Server, agent and a demo SQLite target in one process, all on loopback. The agent talks to
//! the server over real HTTP with a real agent token and verifies real signed tokens; only
//! the key pinning is automatic, because the operator of this process owns both halves.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use portcullis_agent::config::{PinnedKey, TargetConfig};
use portcullis_agent::{Agent, AgentConfig};
use portcullis_core::{ConnectionKind, ConnectionName, Environment, OperationClass, Policy};
use portcullis_identity::MasterKey;
use portcullis_proto::token::public_key_base64;
use portcullis_server::audit::Context;
use portcullis_server::config::ConnectionDecl;
use portcullis_server::{Server, ServerConfig, ServerSecrets, principals};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub const ADMIN_TOKEN_FILE: &str = "dev-admin.token";
pub const DEMO_DB_FILE: &str = "demo.db";
/// Dev mode's own master key, generated on first start (mode 0600). Only `dev` does this:
/// `portcullis server` refuses to start without a key from the operator (SEC-1).
pub const DEV_MASTER_KEY_FILE: &str = "dev-master.key";

#[derive(Debug, thiserror::Error)]
#[error(
    "portcullis dev binds loopback addresses only, and {0} is not one; run `portcullis server` for anything reachable from elsewhere"
)]
pub struct NotLoopback(pub SocketAddr);

#[derive(Debug, Clone)]
pub struct DevOptions {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub policy: Policy,
    /// Classes the dev agent executes on `demo`.
    pub allow: Vec<OperationClass>,
    pub server: ServerConfig,
    /// Start the in-process agent (tests that bring their own agents turn it off).
    pub start_agent: bool,
    /// More connections for the dev agent to serve beside `demo` (agent format).
    pub extra: Vec<TargetConfig>,
}

/// A file of extra connections for `portcullis dev --connections FILE`: `[[connections]]`
/// entries in the agent's format (name, kind, environment, allow, and how to reach it).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionsFile {
    pub connections: Vec<TargetConfig>,
}

impl ConnectionsFile {
    pub fn load(path: &Path) -> anyhow::Result<Vec<TargetConfig>> {
        use figment::providers::Format;
        if !path.exists() {
            anyhow::bail!("connections file {} does not exist", path.display());
        }
        let file: ConnectionsFile =
            figment::Figment::from(figment::providers::Toml::file_exact(path))
                .extract()
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if file.connections.iter().any(|c| c.name.as_str() == "demo") {
            anyhow::bail!(
                "{}: the name `demo` is taken by the built-in demo database",
                path.display()
            );
        }
        Ok(file.connections)
    }
}

impl DevOptions {
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> DevOptions {
        DevOptions {
            listen,
            data_dir,
            policy: Policy::permissive_dev(),
            allow: vec![
                OperationClass::Read,
                OperationClass::Write,
                OperationClass::Ddl,
            ],
            server: ServerConfig::default(),
            start_agent: true,
            extra: Vec::new(),
        }
    }
}

pub struct DevStack {
    pub server: Server,
    pub url: String,
    pub admin_token: String,
    pub data_dir: PathBuf,
    pub demo_db: PathBuf,
    agent: Option<(watch::Sender<bool>, JoinHandle<anyhow::Result<()>>)>,
}

impl DevStack {
    pub async fn start(opts: DevOptions) -> anyhow::Result<DevStack> {
        if !opts.listen.ip().is_loopback() {
            return Err(NotLoopback(opts.listen).into());
        }
        portcullis_server::create_private_dir(&opts.data_dir)?;
        let demo_db = opts.data_dir.join(DEMO_DB_FILE);
        create_demo_db(&demo_db).await?;
        let demo: ConnectionName = "demo".parse()?;
        let mut config = opts.server.clone();
        config.listen = opts.listen;
        config.data_dir = opts.data_dir.clone();
        if config.connection(&demo).is_none() {
            config.connections.push(ConnectionDecl {
                name: demo.clone(),
                kind: ConnectionKind::Sqlite,
                environment: Environment::Development,
            });
        }
        // The server learns names, kinds and environments only; addresses and credentials stay
        // with the agent.
        for t in &opts.extra {
            config.connections.push(ConnectionDecl {
                name: t.name.clone(),
                kind: t.kind,
                environment: t.environment,
            });
        }
        config.admin_token_file = Some(opts.data_dir.join(ADMIN_TOKEN_FILE));
        config.validate()?;
        let scheme = match portcullis_server::tls::files(&config) {
            Some(_) => "https",
            None => "http",
        };
        let listener = TcpListener::bind(opts.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", opts.listen))?;
        let secrets = ServerSecrets {
            master_key: dev_master_key(&opts.data_dir)?,
        };
        let server = Server::start(config, opts.policy.clone(), secrets, listener).await?;
        let state = server.state.clone();
        let token_file = opts.data_dir.join(ADMIN_TOKEN_FILE);
        let admin_token = std::fs::read_to_string(&token_file)
            .map_err(|e| {
                anyhow::anyhow!(
                    "this data directory was set up before, but {} is unreadable: {e}",
                    token_file.display()
                )
            })?
            .trim()
            .to_owned();
        let url = format!("{scheme}://{}", server.addr);
        if !opts.start_agent {
            return Ok(DevStack {
                server,
                url,
                admin_token,
                data_dir: opts.data_dir,
                demo_db,
                agent: None,
            });
        }
        let ctx = Context::system("dev");
        let agent_name = format!(
            "dev-agent-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let (agent_token, _) = principals::create_agent(&state, &ctx, "system", &agent_name)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut agent_config = demo_agent_config(&agent_name, &url, &server, &demo_db);
        agent_config.connections[0].allow = opts.allow.clone();
        agent_config.connections.extend(opts.extra.iter().cloned());
        let agent = Agent::new(agent_config, &agent_token).await?;
        let (agent_stop, stop) = watch::channel(false);
        let agent_task = tokio::spawn(agent_run(agent, stop));
        Ok(DevStack {
            server,
            url,
            admin_token,
            data_dir: opts.data_dir,
            demo_db,
            agent: Some((agent_stop, agent_task)),
        })
    }

    pub async fn stop(self) {
        if let Some((stop, task)) = self.agent {
            stop.send_replace(true);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
        }
        self.server.stop().await;
    }
}

/// Loads dev mode's master key, creating it (0600) on first start.
fn dev_master_key(data_dir: &Path) -> anyhow::Result<MasterKey> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join(DEV_MASTER_KEY_FILE);
    if !path.exists() {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
        file.write_all(format!("{}\n", MasterKey::generate()).as_bytes())?;
        file.sync_all()?;
    }
    Ok(MasterKey::load(None, Some(&path))?)
}

/// An agent configuration serving the demo database, pinning `server`'s key.
pub fn demo_agent_config(name: &str, url: &str, server: &Server, demo_db: &Path) -> AgentConfig {
    let keys = server.state.keys.current();
    let signer = &keys.signer;
    AgentConfig {
        name: name.to_owned(),
        server_url: url.to_owned(),
        trusted_keys: vec![PinnedKey {
            key_id: signer.key_id().to_hex(),
            public_key: public_key_base64(&signer.verifying_key()),
        }],
        connections: vec![TargetConfig {
            path: Some(demo_db.to_owned()),
            ..TargetConfig::new(
                // Invariant: "demo" is a valid connection name.
                ConnectionName::try_from("demo".to_owned())
                    .unwrap_or_else(|_| unreachable!("a valid literal")),
                ConnectionKind::Sqlite,
                Environment::Development,
                vec![
                    OperationClass::Read,
                    OperationClass::Write,
                    OperationClass::Ddl,
                ],
            )
        }],
        // Enough workers that the benchmark's 32 concurrent clients always find one waiting
        // (a direct hand-off) rather than queue their jobs (`AgentConfig::max_concurrent_jobs`).
        max_concurrent_jobs: 64,
        ..AgentConfig::default()
    }
}

async fn agent_run(agent: Arc<Agent>, stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let result = agent.run(stop).await;
    if let Err(e) = &result {
        tracing::error!(error = %e, "the dev agent stopped");
    }
    result
}

/// Creates the demo database with a small shop schema, unless it exists.
pub async fn create_demo_db(path: &Path) -> anyhow::Result<()> {
    use sqlx::Connection;
    use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
    if path.exists() {
        return Ok(());
    }
    let mut conn = SqliteConnection::connect_with(
        &SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true),
    )
    .await?;
    sqlx::raw_sql(DEMO_SCHEMA).execute(&mut conn).await?;
    conn.close().await?;
    Ok(())
}

const DEMO_SCHEMA: &str = include_str!("demo.sql");
