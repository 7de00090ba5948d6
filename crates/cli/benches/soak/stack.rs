//! The deployment under test, set up the way an operator sets one up: a master key from
//! `portcullis keygen`, the release `portcullis server` and `portcullis agent` as separate
//! processes on 127.0.0.1, the first admin through `portcullis bootstrap`, a session through
//! `portcullis login` with a TOTP code, then people, the agent and API tokens through the CLI.
//! Everything lives in one temporary directory; the PostgreSQL target gets a schema of its own.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use portcullis_client::Client;
use portcullis_identity::TotpSecret;
use portcullis_proto::people::{EnrolRequest, EnrolResponse};
use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Connection as _};
use tokio::process::{Child, Command};

use crate::shared::{create_pg_schema, free_port, log_tail, toml_path, toml_str, write_private};

/// The connection name the server and the agent know the target by.
pub(crate) const CONNECTION: &str = "soak";
pub(crate) const AGENT_NAME: &str = "soak-agent";
/// Rows of the table the reads and updates address.
pub(crate) const ACCOUNTS: u64 = 1_000;
/// How long a process may take to become ready.
const READY_DEADLINE: Duration = Duration::from_secs(20);

/// The general rate-limit window and the per-principal limit in it (WEB-4). The default is
/// 6,000 per 60 s; the same average rate over a 10 s window lets a client that overruns it
/// reach the limit within seconds, even in a short run.
pub(crate) const RATE_WINDOW_SECS: u64 = 10;
pub(crate) const RATE_LIMIT: u32 = 1_000;

pub(crate) const OPERATOR: &str = "operator";
pub(crate) const DEVELOPER: &str = "dev";
pub(crate) const APPROVER: &str = "approver";
/// The account the wrong passwords are tried against; nobody else is locked out.
pub(crate) const VICTIM: &str = "victim";
pub(crate) const READER_TOKENS: usize = 4;

/// The PostgreSQL schema of this run.
pub(crate) struct Pg {
    pub(crate) url: String,
    pub(crate) schema: String,
}

impl Pg {
    pub(crate) async fn create() -> anyhow::Result<Pg> {
        let (url, schema) = create_pg_schema("soak", |schema| {
            format!(
                "CREATE TABLE {schema}.accounts (id integer PRIMARY KEY, owner text NOT NULL, balance bigint NOT NULL);
                 INSERT INTO {schema}.accounts (id, owner, balance)
                     SELECT g, 'owner ' || g, 1000 FROM generate_series(1, {ACCOUNTS}) AS g;
                 CREATE TABLE {schema}.notes (id bigserial PRIMARY KEY, body text NOT NULL, at timestamptz NOT NULL DEFAULT now());
                 ANALYZE {schema}.accounts;"
            )
        })
        .await?;
        Ok(Pg { url, schema })
    }

    /// Rows the writes left: the balance added to `accounts` and the rows in `notes`.
    pub(crate) async fn written(&self) -> anyhow::Result<(i64, i64)> {
        let mut conn = PgConnection::connect(&self.url).await?;
        let added: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT (COALESCE(SUM(balance), 0) - {ACCOUNTS} * 1000)::bigint FROM {}.accounts",
            self.schema
        )))
        .fetch_one(&mut conn)
        .await?;
        let notes: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM {}.notes",
            self.schema
        )))
        .fetch_one(&mut conn)
        .await?;
        conn.close().await?;
        Ok((added, notes))
    }

    pub(crate) async fn drop_schema(&self) -> anyhow::Result<()> {
        let mut conn = PgConnection::connect(&self.url).await?;
        sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            self.schema
        )))
        .execute(&mut conn)
        .await?;
        conn.close().await?;
        Ok(())
    }
}

/// A child process of this run, stopped by its own id.
pub(crate) struct Proc {
    child: Child,
    pid: u32,
    what: &'static str,
    log: PathBuf,
}

impl Proc {
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    pub(crate) fn log(&self) -> &Path {
        &self.log
    }

    /// Fails when the process has exited, with the end of its log.
    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); its log ends:\n{}",
                self.what,
                log_tail(&self.log, 20)
            );
        }
        Ok(())
    }

    /// SIGTERM (the graceful shutdown an operator's service manager sends), then waits; a
    /// process still running after `grace` is killed. Returns its exit status text.
    pub(crate) async fn stop(&mut self, grace: Duration) -> anyhow::Result<String> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(format!("had already exited ({status})"));
        }
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await?;
        if !sent.success() {
            bail!("kill -TERM {} failed", self.pid);
        }
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => Ok(status?.to_string()),
            Err(_) => {
                self.child.kill().await?;
                bail!(
                    "{} did not stop within {} s of SIGTERM and was killed",
                    self.what,
                    grace.as_secs()
                )
            }
        }
    }
}

/// A `portcullis` command with only this run's `PORTCULLIS_*` settings (the log filter
/// excepted): nothing from the calling shell leaks in.
fn command(bin: &Path, env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(bin);
    for (name, _) in std::env::vars_os() {
        let text = name.to_string_lossy();
        if text.starts_with("PORTCULLIS_") && text != "PORTCULLIS_LOG" {
            c.env_remove(&name);
        }
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.kill_on_drop(true);
    c
}

/// The people and credentials the traffic uses.
pub(crate) struct Credentials {
    pub(crate) developer_password: String,
    pub(crate) approver_password: String,
    pub(crate) approver_totp: TotpSecret,
    pub(crate) reader_tokens: Vec<String>,
    pub(crate) abuser_token: String,
}

/// The running deployment.
pub(crate) struct Stack {
    // Dropped first (killed), before the directory they use is removed.
    pub(crate) agent: Proc,
    pub(crate) server: Proc,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) bin: PathBuf,
    pub(crate) url: String,
    pub(crate) data: PathBuf,
    pub(crate) creds: Credentials,
    /// The audit events the set-up itself caused, by action.
    pub(crate) setup_events: Vec<(&'static str, u64)>,
    pub(crate) setup_time: Duration,
}

impl Stack {
    pub(crate) async fn start(bin: &Path, pg: &Pg) -> anyhow::Result<Stack> {
        let started = Instant::now();
        let dir = tempfile::tempdir().context("temp dir")?;
        let root = dir.path().to_owned();
        let data = root.join("data");
        let port = free_port()?;
        let url = format!("http://127.0.0.1:{port}");
        let cli_dir = root.join("cli");
        let cli_env = [
            ("PORTCULLIS_SERVER", url.as_str()),
            ("PORTCULLIS_CONFIG_DIR", path_text(&cli_dir)?),
        ];
        let cli = Cli { bin, env: &cli_env };

        let master_key = cli.run(&["keygen"], None).await?.trim().to_owned();
        let server_config = root.join("server.toml");
        std::fs::write(&server_config, server_toml(port, &data)?)?;
        let mut server = spawn(
            bin,
            "server",
            &["server", "--config", path_text(&server_config)?],
            &root,
            &[("PORTCULLIS_MASTER_KEY", master_key.as_str())],
        )?;
        let setup_token = data.join("setup.token");
        wait_until(
            &mut server,
            "the server's /ready and setup token",
            || async { setup_token.exists() && ready(&url).await },
        )
        .await?;

        // The first admin, then a session with a TOTP code.
        let operator_password = passphrase();
        let created: serde_json::Value = serde_json::from_str(
            &cli.run(
                &[
                    "bootstrap",
                    "--setup-token-file",
                    path_text(&setup_token)?,
                    "--name",
                    OPERATOR,
                    "--password-stdin",
                    "--json",
                ],
                Some(&operator_password),
            )
            .await?,
        )?;
        let operator_totp = TotpSecret::from_base32(
            created["totp_secret"]
                .as_str()
                .context("bootstrap printed no totp_secret")?,
        )?;
        let code = operator_totp.current_code(unix_secs());
        cli.run(
            &[
                "login",
                "--name",
                OPERATOR,
                "--code",
                &code,
                "--password-stdin",
            ],
            Some(&operator_password),
        )
        .await?;

        // People: a developer who writes, an approver (ops) and the account that is attacked.
        let mut invites = Vec::new();
        for (name, role) in [
            (DEVELOPER, "developer"),
            (APPROVER, "ops"),
            (VICTIM, "viewer"),
        ] {
            let added: serde_json::Value = serde_json::from_str(
                &cli.run(&["user", "add", name, "--role", role, "--json"], None)
                    .await?,
            )?;
            let token = added["invite"]["enrol_token"]
                .as_str()
                .context("user add printed no enrol_token")?
                .to_owned();
            invites.push(token);
        }

        // The agent, its pinned key, and the API tokens of the readers and the abuser.
        let agent_token = cli.run(&["agents", "create", AGENT_NAME], None).await?;
        let token_file = root.join("agent.token");
        write_private(&token_file, agent_token.trim())?;
        let pin = cli
            .run(&["key", "show", "--data", path_text(&data)?], None)
            .await?;
        let mut reader_tokens = Vec::new();
        for i in 1..=READER_TOKENS {
            reader_tokens.push(token(&cli, &format!("soak-reader-{i}")).await?);
        }
        let abuser_token = token(&cli, "soak-abuser").await?;

        let ready_file = root.join("agent.ready");
        let agent_config = root.join("agent.toml");
        std::fs::write(
            &agent_config,
            agent_toml(&url, &token_file, &ready_file, &pin, &pg.url)?,
        )?;
        let mut agent = spawn(
            bin,
            "agent",
            &["agent", "--config", path_text(&agent_config)?],
            &root,
            &[],
        )?;
        wait_until(&mut agent, "the agent's ready file", || async {
            ready_file.exists()
        })
        .await?;
        server.check_alive()?;

        // Each person accepts their invitation (the developer and the attacked viewer without
        // an authenticator; the approver's role requires one).
        let anonymous = Client::new(&url, None)?;
        let developer_password = passphrase();
        let approver_password = passphrase();
        let victim_password = passphrase();
        let mut approver_totp = None;
        for (token, password, mfa) in [
            (&invites[0], &developer_password, Some(false)),
            (&invites[1], &approver_password, None),
            (&invites[2], &victim_password, Some(false)),
        ] {
            let done: EnrolResponse = anonymous
                .enrol(&EnrolRequest {
                    enrol_token: token.clone(),
                    password: password.clone(),
                    mfa,
                })
                .await
                .context("enrolment")?;
            if done.name == APPROVER {
                approver_totp = Some(TotpSecret::from_base32(
                    done.totp_secret
                        .as_deref()
                        .context("the approver got no TOTP secret")?,
                )?);
            }
        }
        let approver_totp = approver_totp.context("the approver enrolled no TOTP")?;

        let setup_events = vec![
            ("server.started", 1),
            ("bootstrap.completed", 1),
            ("login.succeeded", 1),
            ("user.created", 3),
            ("user.invited", 3),
            ("agent.created", 1),
            ("token.created", (READER_TOKENS + 1) as u64),
            ("user.enrolled", 3),
        ];
        Ok(Stack {
            dir,
            bin: bin.to_owned(),
            url,
            data,
            server,
            agent,
            creds: Credentials {
                developer_password,
                approver_password,
                approver_totp,
                reader_tokens,
                abuser_token,
            },
            setup_events,
            setup_time: started.elapsed(),
        })
    }

    /// `portcullis audit verify --data DIR --json`: the report and how long it took.
    pub(crate) async fn audit_verify(
        &self,
    ) -> anyhow::Result<(portcullis_proto::api::AuditVerifyView, Duration)> {
        let started = Instant::now();
        let out = command(&self.bin, &[])
            .args([
                "audit",
                "verify",
                "--json",
                "--data",
                path_text(&self.data)?,
            ])
            .stdin(Stdio::null())
            .output()
            .await?;
        let took = started.elapsed();
        // Exit 8 with a JSON report means a broken chain; anything else without JSON is an
        // error of the command itself.
        match serde_json::from_slice(&out.stdout) {
            Ok(view) => Ok((view, took)),
            Err(_) => bail!(
                "portcullis audit verify failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        }
    }

    /// `portcullis audit export --data DIR -o FILE`: every event, parsed.
    pub(crate) async fn audit_export(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let file = self.dir.path().join("audit.jsonl");
        let out = command(&self.bin, &[])
            .args([
                "audit",
                "export",
                "--data",
                path_text(&self.data)?,
                "-o",
                path_text(&file)?,
            ])
            .stdin(Stdio::null())
            .output()
            .await?;
        if !out.status.success() {
            bail!(
                "portcullis audit export failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let text = std::fs::read_to_string(&file)?;
        text.lines()
            .map(|l| serde_json::from_str(l).context("an exported line is not JSON"))
            .collect()
    }
}

async fn token(cli: &Cli<'_>, name: &str) -> anyhow::Result<String> {
    let created: serde_json::Value = serde_json::from_str(
        &cli.run(
            &[
                "token", "create", "--name", name, "--role", "viewer", "--ttl", "1d", "--json",
            ],
            None,
        )
        .await?,
    )?;
    Ok(created["token"]
        .as_str()
        .context("token create printed no token")?
        .to_owned())
}

/// The CLI as the operator runs it, against this run's server and session store.
struct Cli<'a> {
    bin: &'a Path,
    env: &'a [(&'a str, &'a str)],
}

impl Cli<'_> {
    /// Runs one command; its standard output, or an error with its standard error.
    async fn run(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        use tokio::io::AsyncWriteExt;
        let mut child = command(self.bin, self.env)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning portcullis {}", args[0]))?;
        let mut input = child.stdin.take().context("stdin")?;
        if let Some(text) = stdin {
            input.write_all(format!("{text}\n").as_bytes()).await?;
        }
        drop(input);
        let out = child.wait_with_output().await?;
        if !out.status.success() {
            bail!(
                "portcullis {} failed ({}): {}",
                args[..2.min(args.len())].join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }
}

fn spawn(
    bin: &Path,
    what: &'static str,
    args: &[&str],
    dir: &Path,
    env: &[(&str, &str)],
) -> anyhow::Result<Proc> {
    let log = dir.join(format!("{what}.log"));
    let out = std::fs::File::create(&log)?;
    let child = command(bin, env)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("spawning the {what}"))?;
    let pid = child.id().context("the child has no pid")?;
    Ok(Proc {
        child,
        pid,
        what,
        log,
    })
}

async fn wait_until<F, Fut>(proc: &mut Proc, what: &str, mut done: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if done().await {
            return Ok(());
        }
        proc.check_alive()?;
        if started.elapsed() > READY_DEADLINE {
            bail!(
                "waited {} s for {what}; the {} log ends:\n{}",
                READY_DEADLINE.as_secs(),
                proc.what,
                log_tail(&proc.log, 20)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn ready(url: &str) -> bool {
    match reqwest::Client::builder().no_proxy().build() {
        Ok(c) => c
            .get(format!("{url}/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success()),
        Err(_) => false,
    }
}

pub(crate) fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A random passphrase, made at run time.
pub(crate) fn passphrase() -> String {
    let bytes: [u8; 18] = rand::random();
    format!("soak {} pass", hex::encode(bytes))
}

fn path_text(p: &Path) -> anyhow::Result<&str> {
    p.to_str().context("a UTF-8 temp path")
}

fn server_toml(port: u16, data: &Path) -> anyhow::Result<String> {
    Ok(format!(
        r#"listen = "127.0.0.1:{port}"
data_dir = {data}

[rate_limit]
window_secs = {RATE_WINDOW_SECS}
authenticated = {RATE_LIMIT}

[[connections]]
name = "{CONNECTION}"
kind = "postgres"
environment = "staging"

[[policy]]
name = "soak reads"
connection = "{CONNECTION}"
class = "read"
decision = "auto_approve"

[[policy]]
name = "soak writes need ops"
connection = "{CONNECTION}"
class = "write"
decision = "require_approval"
[[policy.steps]]
roles = ["ops"]
"#,
        data = toml_path(data)?
    ))
}

fn agent_toml(
    url: &str,
    token_file: &Path,
    ready_file: &Path,
    pin: &str,
    pg_url: &str,
) -> anyhow::Result<String> {
    Ok(format!(
        r#"name = "{AGENT_NAME}"
server_url = {url}
token_file = {token_file}
ready_file = {ready_file}

{pin}

[[connections]]
name = "{CONNECTION}"
kind = "postgres"
environment = "staging"
allow = ["read", "write"]
credentials.read.url = {pg}
credentials.write.url = {pg}
"#,
        url = toml_str(url),
        token_file = toml_path(token_file)?,
        ready_file = toml_path(ready_file)?,
        pg = toml_str(pg_url),
    ))
}
