//! The real release binaries as an operator runs them: `portcullis server` and
//! `portcullis-agent` as separate processes on 127.0.0.1, timed from spawn to ready, and their
//! resident memory (VmRSS / VmHWM from /proc) idle and under the 32-client load; then, as
//! context, the same agent run as `portcullis agent` under the same load, and the server's
//! memory after one password login.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use portcullis_identity::MasterKey;
use portcullis_proto::people::LoginRequest;
use portcullis_proto::token::public_key_base64;
use portcullis_server::audit::Context as AuditContext;
use portcullis_server::config::ConnectionDecl;
use portcullis_server::{Server, ServerConfig, ServerSecrets, principals};

use super::pg::{PG_CONNECTION, PgTarget};
use super::*;

use crate::shared::{free_port, log_tail, status_mib, toml_path, toml_str, write_private};

/// How long a process may take to become ready before the run gives up on it.
const READY_DEADLINE: Duration = Duration::from_secs(15);
/// Between two readiness probes.
const POLL: Duration = Duration::from_millis(1);
/// Quiet time before an idle reading.
const SETTLE: Duration = Duration::from_secs(1);
/// Between two memory samples under load.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
const AGENT_NAME: &str = "bench-agent";

/// A child process, killed (by its own handle) and reaped when dropped.
struct Proc {
    child: Child,
    what: &'static str,
    log: PathBuf,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails when the process has exited, with the end of its log.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}) before it was ready; its log ends:\n{}",
                self.what,
                log_tail(&self.log, 15)
            );
        }
        Ok(())
    }
}

impl Proc {
    /// Stops the process with SIGTERM, as an operator would, and waits for it to exit.
    async fn terminate(&mut self) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill -TERM {} failed: {status}", self.pid());
        }
        let deadline = Instant::now() + READY_DEADLINE;
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                bail!(
                    "{} did not stop within {} s of SIGTERM",
                    self.what,
                    READY_DEADLINE.as_secs()
                );
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(
    bin: &Path,
    what: &'static str,
    args: &[&str],
    dir: &Path,
    env: &[(&str, &str)],
) -> anyhow::Result<Proc> {
    let log = dir.join(format!("{}.log", what.replace(' ', "-")));
    let out = std::fs::File::create(&log)?;
    let mut command = Command::new(bin);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    // Only what this run sets: no PORTCULLIS_* setting from the calling shell leaks in
    // (the log filter excepted).
    for (name, _) in std::env::vars_os() {
        let name_text = name.to_string_lossy();
        if name_text.starts_with("PORTCULLIS_") && name_text != "PORTCULLIS_LOG" {
            command.env_remove(&name);
        }
    }
    for (k, v) in env {
        command.env(k, v);
    }
    Ok(Proc {
        child: command
            .spawn()
            .with_context(|| format!("spawning {what}"))?,
        what,
        log,
    })
}

fn spawn_server(
    bin: &Path,
    what: &'static str,
    config: &Path,
    master_key: &str,
    dir: &Path,
) -> anyhow::Result<Proc> {
    let config = config.to_str().context("a UTF-8 temp path")?;
    spawn(
        bin,
        what,
        &["server", "--config", config],
        dir,
        &[("PORTCULLIS_MASTER_KEY", master_key)],
    )
}

/// Polls `GET /ready` until it answers 200; the time since `spawned`.
async fn wait_ready(proc: &mut Proc, url: &str, spawned: Instant) -> anyhow::Result<Duration> {
    let probe = Client::new(url, None)?;
    loop {
        if matches!(probe.ready().await, Ok(true)) {
            return Ok(spawned.elapsed());
        }
        proc.check_alive()?;
        if spawned.elapsed() > READY_DEADLINE {
            bail!(
                "{} did not answer /ready within {} s",
                proc.what,
                READY_DEADLINE.as_secs()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

fn server_toml(port: u16, data: &Path) -> anyhow::Result<String> {
    Ok(format!(
        r#"listen = "127.0.0.1:{port}"
data_dir = {data}

# The load sends far more requests a minute from one token than a deployment allows (WEB-4);
# the limiter stays on, so its cost is measured.
[rate_limit]
authenticated = 1000000
anonymous = 1000000

[[connections]]
name = "{PG_CONNECTION}"
kind = "postgres"
environment = "development"

[[policy]]
environment = "development"
decision = "auto_approve"
"#,
        data = toml_path(data)?
    ))
}

fn rss(pid: u32) -> anyhow::Result<f64> {
    status_mib(pid, "VmRSS:").context("reading VmRSS")
}

fn hwm(pid: u32) -> anyhow::Result<f64> {
    status_mib(pid, "VmHWM:").context("reading VmHWM")
}

pub(crate) struct Processes {
    /// spawn → /ready on an empty data directory (key generation, migrations, setup token).
    pub(crate) server_first_start: Duration,
    /// spawn → /ready on a data directory set up before (the usual start).
    pub(crate) server_start: Duration,
    /// spawn → the server lists the agent as connected (its first claim has arrived).
    pub(crate) agent_connected: Duration,
    /// spawn → the agent's own ready file (written once its first claim was answered).
    pub(crate) agent_ready_file: Option<Duration>,
    pub(crate) server_idle: f64,
    pub(crate) agent_idle: f64,
    pub(crate) load: Load,
    pub(crate) server_load_sampled: f64,
    pub(crate) agent_load_sampled: f64,
    pub(crate) server_peak: f64,
    pub(crate) agent_peak: f64,
    pub(crate) server_after: f64,
    pub(crate) agent_after: f64,
    /// `portcullis agent` (the all-in-one binary) in the same place, as context: idle, peak
    /// under the same load, and that load's rate.
    pub(crate) all_in_one_idle: f64,
    pub(crate) all_in_one_peak: f64,
    pub(crate) all_in_one_rate: f64,
    /// The server idle, before any load, after one password login (its Argon2 buffer then
    /// pooled).
    pub(crate) server_after_login: f64,
    /// Sequential auto-approved reads through the two processes (section 2's loop), and
    /// what they cost this process (the client's) and the machine.
    pub(crate) sequential: Stats,
    pub(crate) sequential_cost: Cost,
}

pub(crate) async fn processes(
    bin: &Path,
    agent_bin: &Path,
    pg: &PgTarget,
) -> anyhow::Result<Processes> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let root = dir.path();
    let master_key = MasterKey::generate();

    // A first start: nothing in the data directory yet.
    let first_port = free_port()?;
    let first_config = root.join("first-server.toml");
    std::fs::write(
        &first_config,
        server_toml(first_port, &root.join("first-data"))?,
    )?;
    let spawned = Instant::now();
    let mut first = spawn_server(bin, "first server", &first_config, &master_key, root)?;
    let server_first_start = wait_ready(
        &mut first,
        &format!("http://127.0.0.1:{first_port}"),
        spawned,
    )
    .await?;
    drop(first);

    // The data directory of the measured server, set up in this process: the admin API
    // token and the agent's token, so that no password hashing runs in the server measured.
    let data = root.join("data");
    let setup = provision(&data, &master_key).await?;
    let port = free_port()?;
    let url = format!("http://127.0.0.1:{port}");
    let server_config = root.join("server.toml");
    std::fs::write(&server_config, server_toml(port, &data)?)?;
    let token_file = root.join("agent.token");
    write_private(&token_file, &setup.agent_token)?;
    let ready_file = root.join("agent.ready");
    let agent_config = root.join("agent.toml");
    std::fs::write(
        &agent_config,
        format!(
            r#"name = "{AGENT_NAME}"
server_url = {url}
token_file = {token_file}
ready_file = {ready_file}

[[trusted_keys]]
key_id = {key_id}
public_key = {public_key}

[[connections]]
name = "{PG_CONNECTION}"
kind = "postgres"
environment = "development"
allow = ["read"]
credentials.read.url = {pg_url}
"#,
            url = toml_str(&url),
            token_file = toml_path(&token_file)?,
            ready_file = toml_path(&ready_file)?,
            key_id = toml_str(&setup.key_id),
            public_key = toml_str(&setup.public_key),
            pg_url = toml_str(&pg.url),
        ),
    )?;

    let spawned = Instant::now();
    let mut server = spawn_server(bin, "server", &server_config, &master_key, root)?;
    let server_start = wait_ready(&mut server, &url, spawned).await?;

    let admin = Client::new(&url, Some(&setup.admin_token))?;
    let agent_config_text = agent_config.to_str().context("a UTF-8 temp path")?;
    let spawned = Instant::now();
    let mut agent = spawn(
        agent_bin,
        "agent",
        &["--config", agent_config_text],
        root,
        &[],
    )?;
    let mut agent_ready_file = None;
    let agent_connected = loop {
        if agent_ready_file.is_none() && ready_file.exists() {
            agent_ready_file = Some(spawned.elapsed());
        }
        let agents = admin.list_agents().await?;
        if agents.iter().any(|a| a.name == AGENT_NAME && a.connected) {
            break spawned.elapsed();
        }
        agent.check_alive()?;
        server.check_alive()?;
        if spawned.elapsed() > READY_DEADLINE {
            bail!(
                "the agent was not connected within {} s",
                READY_DEADLINE.as_secs()
            );
        }
        tokio::time::sleep(POLL).await;
    };
    if agent_ready_file.is_none() {
        let deadline = Instant::now() + Duration::from_secs(2);
        while !ready_file.exists() && Instant::now() < deadline {
            tokio::time::sleep(POLL).await;
        }
        agent_ready_file = ready_file.exists().then(|| spawned.elapsed());
    }

    // Idle: the agent connected and parked in its long-polls, no request made yet.
    tokio::time::sleep(SETTLE).await;
    let server_idle = rss(server.pid())?;
    let agent_idle = rss(agent.pid())?;

    // Still idle, after one password login (an unknown name, so the dummy verification
    // runs): from then on the server keeps its Argon2 working buffer pooled, under the loads
    // below too.
    let refused = Client::new(&url, None)?
        .login(&LoginRequest {
            name: "nobody".into(),
            password: "not a password of anyone here".into(),
            code: None,
            recovery_code: None,
            remember_device: false,
            device_token: None,
        })
        .await;
    if refused.is_ok() {
        bail!("a login for an unknown name was accepted");
    }
    tokio::time::sleep(SETTLE).await;
    let server_after_login = rss(server.pid())?;

    // Sequential reads before the load, as section 2 makes them in one process.
    let (sequential, sequential_cost) =
        through(&admin, &pg.body(), PROC_SEQUENTIAL_ITERATIONS).await?;
    server.check_alive()?;
    agent.check_alive()?;

    let measured = under_load(&url, &setup.admin_token, pg, &mut server, &mut agent).await?;
    tokio::time::sleep(SETTLE).await;
    let server_after = rss(server.pid())?;
    let agent_after = rss(agent.pid())?;

    // The same agent run by the all-in-one binary (`portcullis agent`), as context: stopped
    // and started again on the same configuration, ready once its ready file is written anew.
    agent.terminate().await?;
    // A stopped agent removes its ready file; the new one writes it anew.
    match std::fs::remove_file(&ready_file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    let spawned = Instant::now();
    let mut all_in_one = spawn(
        bin,
        "agent (portcullis agent)",
        &["agent", "--config", agent_config_text],
        root,
        &[],
    )?;
    while !ready_file.exists() {
        all_in_one.check_alive()?;
        if spawned.elapsed() > READY_DEADLINE {
            bail!(
                "`portcullis agent` was not ready within {} s",
                READY_DEADLINE.as_secs()
            );
        }
        tokio::time::sleep(POLL).await;
    }
    tokio::time::sleep(SETTLE).await;
    let all_in_one_idle = rss(all_in_one.pid())?;
    let context = under_load(&url, &setup.admin_token, pg, &mut server, &mut all_in_one).await?;

    drop(all_in_one);
    drop(server);
    Ok(Processes {
        server_first_start,
        server_start,
        agent_connected,
        agent_ready_file,
        server_idle,
        agent_idle,
        load: measured.load,
        server_load_sampled: measured.server_sampled,
        agent_load_sampled: measured.agent_sampled,
        server_peak: measured.server_peak,
        agent_peak: measured.agent_peak,
        server_after,
        agent_after,
        all_in_one_idle,
        all_in_one_peak: context.agent_peak,
        all_in_one_rate: context.load.rate,
        server_after_login,
        sequential,
        sequential_cost,
    })
}

/// Memory of the server and one agent around a 32-client load of auto-approved reads.
struct UnderLoad {
    load: Load,
    server_sampled: f64,
    agent_sampled: f64,
    server_peak: f64,
    agent_peak: f64,
}

async fn under_load(
    url: &str,
    admin_token: &str,
    pg: &PgTarget,
    server: &mut Proc,
    agent: &mut Proc,
) -> anyhow::Result<UnderLoad> {
    let admin = Client::new(url, Some(admin_token))?;
    let first_read = admin
        .create_request(&pg.body(), Duration::from_secs(10))
        .await?;
    check_outcome(&first_read).map_err(|e| {
        anyhow::anyhow!(
            "the first read through {} and {} failed: {e}",
            server.what,
            agent.what
        )
    })?;
    let (stop_sampling, stopped) = tokio::sync::watch::channel(false);
    let pids = (server.pid(), agent.pid());
    let sampler = tokio::spawn(async move {
        let (mut server_max, mut agent_max) = (0f64, 0f64);
        while !*stopped.borrow() {
            server_max = server_max.max(status_mib(pids.0, "VmRSS:").unwrap_or(0.0));
            agent_max = agent_max.max(status_mib(pids.1, "VmRSS:").unwrap_or(0.0));
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
        (server_max, agent_max)
    });
    // The server runs in its own process here: its commits are not counted.
    let load = throughput(url, admin_token, &pg.body(), PROC_LOAD_WINDOW, || 0).await?;
    stop_sampling.send_replace(true);
    let (server_sampled, agent_sampled) = sampler.await?;
    server.check_alive()?;
    agent.check_alive()?;
    Ok(UnderLoad {
        load,
        server_sampled,
        agent_sampled,
        server_peak: hwm(server.pid())?,
        agent_peak: hwm(agent.pid())?,
    })
}

struct Setup {
    admin_token: String,
    agent_token: String,
    key_id: String,
    public_key: String,
}

/// Starts a server in this process on `data` once, to create an admin API token (written the
/// way `portcullis dev` writes its own) and the agent, then stops it.
async fn provision(data: &Path, master_key: &str) -> anyhow::Result<Setup> {
    let token_file = data.join("bench-admin.token");
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse()?,
        data_dir: data.to_owned(),
        admin_token_file: Some(token_file.clone()),
        connections: vec![ConnectionDecl {
            name: PG_CONNECTION.parse()?,
            kind: ConnectionKind::Postgres,
            environment: Environment::Development,
        }],
        ..ServerConfig::default()
    };
    config.validate()?;
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let secrets = ServerSecrets {
        master_key: MasterKey::parse(master_key)?,
    };
    let server = Server::start(
        config,
        portcullis_core::Policy::permissive_dev(),
        secrets,
        listener,
    )
    .await?;
    let result = async {
        let admin_token = std::fs::read_to_string(&token_file)?.trim().to_owned();
        let (agent_token, _) = principals::create_agent(
            &server.state,
            &AuditContext::system("bench"),
            "system",
            AGENT_NAME,
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let keys = server.state.keys.current();
        Ok::<_, anyhow::Error>(Setup {
            admin_token,
            agent_token,
            key_id: keys.signer.key_id().to_hex(),
            public_key: public_key_base64(&keys.signer.verifying_key()),
        })
    }
    .await;
    server.stop().await;
    let setup = result?;
    std::fs::remove_file(&token_file)?;
    Ok(setup)
}
