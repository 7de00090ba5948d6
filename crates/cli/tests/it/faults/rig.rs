//! The rig of the fault tests: a server process bootstrapped as an operator does it, agent
//! processes, a PostgreSQL schema per test, locks held at the target, a relay that can be
//! cut, and files made immutable.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use portcullis_client::{Client, ClientError};
use portcullis_core::Role;
use portcullis_proto::api::{CreateRequest, CreateToken, RequestOutcome, RequestView};
use portcullis_proto::people::{BootstrapRequest, LoginRequest};
use serde_json::Value;
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};
use uuid::Uuid;

use crate::harness::bin;
use crate::two_process::probe::health_ok;
use crate::two_process::{Running, free_port, wait_for};

pub(super) const PG: &str = "postgres://postgres@127.0.0.1:5432/test";
pub(super) const PASSWORD: &str = "granite pelican orchard 7431 ferry";
/// The longest any single condition is waited for.
pub(super) const DEADLINE: Duration = Duration::from_secs(45);

/// Polls `ready` until it holds, failing the test at the deadline.
pub(super) async fn eventually<F, Fut>(what: &str, mut ready: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    while !ready().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(super) async fn pg() -> PgConnection {
    PgConnection::connect(PG)
        .await
        .expect("connect to PostgreSQL")
}

pub(super) async fn run_sql(conn: &mut PgConnection, sql: String) {
    conn.execute(AssertSqlSafe(sql)).await.expect("test SQL");
}

pub(super) async fn scalar(sql: String) -> i64 {
    let mut conn = pg().await;
    let v: i64 = sqlx::query_scalar(AssertSqlSafe(sql))
        .fetch_one(&mut conn)
        .await
        .expect("query the target");
    let _ = conn.close().await;
    v
}

/// A PostgreSQL schema of one test, dropped when the test ends (also on failure).
pub(super) struct Schema {
    pub(super) name: String,
}

impl Schema {
    /// Creates the schema and runs `setup`, where `{s}` stands for the schema's name.
    pub(super) async fn create(setup: &str) -> Schema {
        let name = format!("faults_{:016x}", rand::random::<u64>());
        let mut conn = pg().await;
        run_sql(&mut conn, format!("CREATE SCHEMA {name}")).await;
        run_sql(&mut conn, setup.replace("{s}", &name)).await;
        let _ = conn.close().await;
        Schema { name }
    }

    pub(super) fn t(&self, table: &str) -> String {
        format!("{}.{table}", self.name)
    }

    /// Backends of agents whose statement names this schema, by what they wait for.
    pub(super) async fn agent_sessions(&self, filter: &str) -> i64 {
        scalar(format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'portcullis-agent' AND position('{}' in query) > 0 AND {filter}",
            self.name
        ))
        .await
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(mut conn) = PgConnection::connect(PG).await {
                    let _ = conn
                        .execute(AssertSqlSafe(format!(
                            "SET lock_timeout = '5s'; DROP SCHEMA IF EXISTS {name} CASCADE"
                        )))
                        .await;
                    let _ = conn.close().await;
                }
            });
        })
        .join();
    }
}

/// A test's own connection holding a lock at the target until released.
pub(super) struct Lock(PgConnection);

impl Lock {
    pub(super) async fn take(sql: String) -> Lock {
        let mut conn = pg().await;
        run_sql(&mut conn, "BEGIN".into()).await;
        run_sql(&mut conn, sql).await;
        Lock(conn)
    }

    pub(super) async fn release(mut self) {
        run_sql(&mut self.0, "ROLLBACK".into()).await;
        let _ = self.0.close().await;
    }
}

/// A table made by `setup`, a server whose one agent `first` (one worker) serves it as
/// `pg`, and a statement by the CLI (waiting up to 60 s for its outcome) held at the target
/// on a lock the test holds, seen waiting in `pg_stat_activity`.
pub(super) struct Held {
    pub(super) schema: Schema,
    /// The table, qualified.
    pub(super) table: String,
    pub(super) stack: Stack,
    pub(super) agent: AgentProc,
    pub(super) lock: Lock,
    pub(super) cli: tokio::process::Child,
}

/// See [`Held`]: `lock` and `statement` are made from the qualified name of `table`.
pub(super) async fn held(
    setup: &str,
    table: &str,
    lock: impl Fn(&str) -> String,
    statement: impl Fn(&str) -> String,
) -> Held {
    held_with("lease_secs = 2", setup, table, lock, statement).await
}

/// [`held`], the server's `[execution]` table being `execution`.
pub(super) async fn held_with(
    execution: &str,
    setup: &str,
    table: &str,
    lock: impl Fn(&str) -> String,
    statement: impl Fn(&str) -> String,
) -> Held {
    let schema = Schema::create(setup).await;
    let table = schema.t(table);
    let stack = Stack::start(&["pg"], execution).await;
    let agent = stack.agent("first", 1, &[("pg", PG)]).await;
    let lock = Lock::take(lock(&table)).await;
    let cli = stack
        .exec_on_the_lock(&schema, "pg", &statement(&table))
        .await;
    Held {
        schema,
        table,
        stack,
        agent,
        lock,
        cli,
    }
}

/// A ledger of one row, and `UPDATE ledger SET v = v + 1` held on the row's lock.
pub(super) async fn held_write() -> Held {
    held_write_with("lease_secs = 2").await
}

/// [`held_write`], the server's `[execution]` table being `execution`.
pub(super) async fn held_write_with(execution: &str) -> Held {
    held_with(
        execution,
        "CREATE TABLE {s}.ledger (id int PRIMARY KEY, v int NOT NULL); INSERT INTO {s}.ledger VALUES (1, 0)",
        "ledger",
        |t| format!("SELECT v FROM {t} WHERE id = 1 FOR UPDATE"),
        |t| format!("UPDATE {t} SET v = v + 1 WHERE id = 1"),
    )
    .await
}

/// A registered agent's process and the files it was started from.
pub(super) struct AgentProc {
    pub(super) process: Option<Running>,
    pub(super) config: PathBuf,
    pub(super) ready: PathBuf,
}

impl AgentProc {
    pub(super) fn spawn(&mut self) {
        let _ = std::fs::remove_file(&self.ready);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.config.with_extension("log"))
            .expect("agent log");
        let child = bin()
            .args(["agent", "--config"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn agent");
        let mut running = Running(child);
        wait_for("the agent's ready file", || {
            assert!(
                running.0.try_wait().expect("agent status").is_none(),
                "the agent exited at start"
            );
            self.ready.exists()
        });
        self.process = Some(running);
    }

    /// SIGTERM: the agent's own orderly stop. The process is left to exit by itself.
    pub(super) fn terminate(&self) {
        let running = self.process.as_ref().expect("a running agent");
        let pid = running.0.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(status.success(), "SIGTERM the agent");
    }

    /// Whether the process is still running.
    pub(super) fn running(&mut self) -> bool {
        let running = self.process.as_mut().expect("a started agent");
        running.0.try_wait().expect("agent status").is_none()
    }

    /// Waits (bounded) for the process to exit by itself and returns its exit code.
    pub(super) fn exit_code(&mut self) -> i32 {
        let mut running = self.process.take().expect("a started agent");
        let mut status = None;
        wait_for("the agent to exit", || {
            status = running.0.try_wait().expect("agent status");
            status.is_some()
        });
        status.and_then(|s| s.code()).unwrap_or(-1)
    }

    /// The process's log (stderr) so far.
    pub(super) fn log(&self) -> String {
        std::fs::read_to_string(self.config.with_extension("log")).unwrap_or_default()
    }

    /// SIGKILL: no clean-up, no last report.
    pub(super) fn kill(&mut self) {
        if let Some(mut running) = self.process.take() {
            running.0.kill().expect("SIGKILL the agent");
            running.0.wait().expect("reap the agent");
        }
    }
}

/// A server process on its own data directory and port, bootstrapped like an operator does
/// it, with an admin API token for the test and the signing key's pin for agents.
pub(super) struct Stack {
    pub(super) dir: tempfile::TempDir,
    pub(super) data: PathBuf,
    pub(super) url: String,
    pub(super) master_key: String,
    pub(super) config: PathBuf,
    pub(super) server: Option<Running>,
    pub(super) starts: u32,
    pub(super) admin: Client,
    pub(super) token: String,
    pub(super) pin: String,
}

impl Stack {
    /// `connections` are PostgreSQL connections in `development`, where a rule auto-approves
    /// everything; `execution` is the body of the `[execution]` table.
    pub(super) async fn start(connections: &[&str], execution: &str) -> Stack {
        let dir = tempfile::tempdir().expect("temp");
        let data = dir.path().join("data");
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let mut toml = format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n\n[execution]\n{execution}\n\n[[policy]]\nenvironment = \"development\"\ndecision = \"auto_approve\"\n",
            data.display()
        );
        for name in connections {
            toml.push_str(&format!(
                "\n[[connections]]\nname = \"{name}\"\nkind = \"postgres\"\nenvironment = \"development\"\n"
            ));
        }
        let config = dir.path().join("server.toml");
        std::fs::write(&config, toml).expect("server config");
        let mut stack = Stack {
            data,
            url: url.clone(),
            master_key: portcullis_identity::MasterKey::generate(),
            config,
            server: None,
            starts: 0,
            admin: Client::new(&url, None).expect("client"),
            token: String::new(),
            pin: String::new(),
            dir,
        };
        stack.spawn_server(None);
        stack.bootstrap().await;
        stack
    }

    pub(super) fn log(&self, n: u32) -> PathBuf {
        self.dir.path().join(format!("server-{n}.log"))
    }

    /// Starts `portcullis server`; with `file_blocks`, through `sh` with `ulimit -f` and
    /// SIGXFSZ ignored, so that a write past that size fails with EFBIG (a full disk).
    pub(super) fn spawn_server(&mut self, file_blocks: Option<u64>) {
        if let Err(log) = self.try_spawn_server(file_blocks) {
            panic!("the server exited at start: {log}");
        }
    }

    /// Like `spawn_server`; a server that exits at start gives its log instead.
    pub(super) fn try_spawn_server(&mut self, file_blocks: Option<u64>) -> Result<(), String> {
        self.starts += 1;
        let log = std::fs::File::create(self.log(self.starts)).expect("server log");
        let mut command = match file_blocks {
            None => bin(),
            Some(blocks) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!(
                        "trap '' XFSZ; ulimit -f {blocks}; exec \"$0\" \"$@\""
                    ))
                    .arg(env!("CARGO_BIN_EXE_portcullis"));
                sh
            }
        };
        let child = command
            .args(["server", "--config"])
            .arg(&self.config)
            .env("PORTCULLIS_MASTER_KEY", &self.master_key)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn server");
        let mut running = Running(child);
        let mut exited = None;
        wait_for("the server's health check", || {
            exited = running.0.try_wait().expect("server status");
            exited.is_some() || health_ok(&self.url)
        });
        if let Some(status) = exited {
            let log = std::fs::read_to_string(self.log(self.starts)).unwrap_or_default();
            return Err(format!("{status}: {log}"));
        }
        self.server = Some(running);
        Ok(())
    }

    pub(super) async fn bootstrap(&mut self) {
        let setup = self.data.join("setup.token");
        wait_for("the setup token", || setup.exists());
        let anonymous = Client::new(&self.url, None).expect("client");
        let created = anonymous
            .bootstrap(&BootstrapRequest {
                setup_token: std::fs::read_to_string(&setup)
                    .expect("setup token")
                    .trim()
                    .to_owned(),
                name: "root".into(),
                password: PASSWORD.into(),
            })
            .await
            .expect("bootstrap");
        let totp = portcullis_identity::TotpSecret::from_base32(&created.totp_secret)
            .expect("totp secret");
        let session = anonymous
            .login(&LoginRequest {
                name: "root".into(),
                password: PASSWORD.into(),
                code: Some(totp.current_code(crate::people::now_secs())),
                ..LoginRequest::default()
            })
            .await
            .expect("login");
        let person = Client::new(&self.url, Some(&session.token)).expect("client");
        let token = person
            .create_token(&CreateToken {
                name: "faults".into(),
                role: Role::Admin,
                ttl_seconds: 3_600,
                environments: None,
            })
            .await
            .expect("API token");
        self.token = token.token;
        self.admin = Client::new(&self.url, Some(&self.token)).expect("client");
        let out = bin()
            .args(["key", "show", "--data"])
            .arg(&self.data)
            .output()
            .expect("key show");
        assert!(out.status.success(), "key show failed");
        self.pin = String::from_utf8(out.stdout).expect("utf8");
    }

    /// Registers agent `name` serving `connections` (name, PostgreSQL URL) with at most
    /// `jobs` jobs at once, and starts it.
    pub(super) async fn agent(
        &self,
        name: &str,
        jobs: usize,
        connections: &[(&str, &str)],
    ) -> AgentProc {
        let created = self.admin.create_agent(name).await.expect("agent");
        let token = self.dir.path().join(format!("{name}.token"));
        std::fs::write(&token, created.token).expect("agent token");
        let ready = self.dir.path().join(format!("{name}.ready"));
        let mut toml = format!(
            "name = \"{name}\"\nserver_url = \"{}\"\ntoken_file = \"{}\"\nready_file = \"{}\"\nmax_concurrent_jobs = {jobs}\n\n{}\n",
            self.url,
            token.display(),
            ready.display(),
            self.pin
        );
        for (connection, url) in connections {
            toml.push_str(&format!(
                "\n[[connections]]\nname = \"{connection}\"\nkind = \"postgres\"\nenvironment = \"development\"\nallow = [\"read\", \"write\"]\n[connections.credentials.read]\nurl = \"{url}\"\n[connections.credentials.write]\nurl = \"{url}\"\n"
            ));
        }
        let config = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&config, toml).expect("agent config");
        let mut agent = AgentProc {
            process: None,
            config,
            ready,
        };
        agent.spawn();
        agent
    }

    /// SIGKILL of the server: no graceful shutdown, no final checkpoint.
    pub(super) fn kill_server(&mut self) {
        if let Some(mut running) = self.server.take() {
            running.0.kill().expect("SIGKILL the server");
            running.0.wait().expect("reap the server");
        }
    }

    /// SIGTERM, and the server's own orderly shutdown.
    pub(super) fn stop_server(&mut self) {
        self.terminate_server();
        self.server_exit_code();
    }

    /// SIGTERM without waiting: the server drains and stops while the test goes on.
    pub(super) fn terminate_server(&self) {
        let running = self.server.as_ref().expect("a running server");
        let status = Command::new("kill")
            .args(["-TERM", &running.0.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits until the server, told to stop, says it is draining (it has jobs running).
    pub(super) async fn draining(&self) {
        eventually("the server to announce its drain", || async {
            self.server_log()
                .contains("draining: refusing new requests")
        })
        .await;
    }

    /// Waits for the server to exit; its exit code.
    pub(super) fn server_exit_code(&mut self) -> i32 {
        let mut running = self.server.take().expect("a running server");
        wait_for("the server to stop", || {
            running.0.try_wait().expect("status").is_some()
        });
        running.0.wait().expect("status").code().unwrap_or(-1)
    }

    /// The log of the server's latest start.
    pub(super) fn server_log(&self) -> String {
        std::fs::read_to_string(self.log(self.starts)).unwrap_or_default()
    }

    pub(super) async fn submit(
        &self,
        connection: &str,
        statement: &str,
        wait_secs: u64,
    ) -> Result<RequestOutcome, ClientError> {
        let body = CreateRequest {
            connection: connection.parse().expect("name"),
            statement: statement.to_owned(),
            reason: "fault test".into(),
            stream: false,
        };
        self.admin
            .create_request(&body, Duration::from_secs(wait_secs))
            .await
    }

    pub(super) async fn view(&self, id: Uuid) -> RequestView {
        self.admin.request_view(id).await.expect("request view")
    }

    /// Waits until `id` is in a terminal state and returns it.
    pub(super) async fn settled(&self, id: Uuid) -> RequestView {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Ok(view) = self.admin.request_view(id).await
                && view.state.is_terminal()
            {
                return view;
            }
            assert!(Instant::now() < deadline, "request {id} never settled");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// How many audit events of `action` name `request:{id}`.
    pub(super) async fn audited(&self, id: Uuid, action: &str) -> usize {
        let counts = self.audit_counts().await;
        counts.get(&(id, action.to_owned())).copied().unwrap_or(0)
    }

    /// How many audit events name each request, by request and action: one export for
    /// every count a test needs.
    pub(super) async fn audit_counts(&self) -> HashMap<(Uuid, String), usize> {
        let bytes = self.admin.audit_export().await.expect("audit export");
        let mut counts = HashMap::new();
        for line in String::from_utf8(bytes).expect("utf8").lines() {
            let event: Value = serde_json::from_str(line).expect("json line");
            let Some(id) = event["target"]
                .as_str()
                .and_then(|t| t.strip_prefix("request:"))
                .and_then(|id| id.parse().ok())
            else {
                continue;
            };
            let action = event["action"].as_str().unwrap_or_default().to_owned();
            *counts.entry((id, action)).or_insert(0) += 1;
        }
        counts
    }

    /// `portcullis audit verify` on the data directory (AUD-3).
    pub(super) fn verify_audit(&self) {
        let out = bin()
            .args(["audit", "verify", "--data"])
            .arg(&self.data)
            .output()
            .expect("audit verify");
        assert!(
            out.status.success(),
            "audit verify: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `portcullis exec --json --wait 60` of `statement` on `connection`, returned once the
    /// statement waits at the target on a lock the test holds (seen in `pg_stat_activity`).
    pub(super) async fn exec_on_the_lock(
        &self,
        schema: &Schema,
        connection: &str,
        statement: &str,
    ) -> tokio::process::Child {
        let cli = self
            .cli(&[
                "exec",
                "--connection",
                connection,
                "--reason",
                "fault",
                "--json",
                "--wait",
                "60",
                statement,
            ])
            .spawn()
            .expect("exec");
        eventually("the statement to wait on the lock", || async {
            schema.agent_sessions("wait_event_type = 'Lock'").await > 0
        })
        .await;
        cli
    }

    /// The CLI as a user runs it, with the admin token.
    pub(super) fn cli(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = bin();
        command
            .args(args)
            .env("PORTCULLIS_SERVER", &self.url)
            .env("PORTCULLIS_TOKEN", &self.token)
            .env("PORTCULLIS_CONFIG_DIR", self.dir.path().join("cli"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        tokio::process::Command::from(command)
    }
}

/// Exit code, JSON stdout (when there is one) and stderr of a finished CLI run.
pub(super) async fn finished(child: tokio::process::Child) -> (i32, Value, String) {
    let out = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .expect("the CLI finished in time")
        .expect("CLI output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_str(stdout.trim()).unwrap_or(Value::Null),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub(super) fn request_id(v: &Value) -> Uuid {
    v["request_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no request id in {v}"))
}

pub(super) async fn markers(table: &str) -> Vec<String> {
    let mut conn = pg().await;
    let rows: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT marker FROM {table} ORDER BY marker"
    )))
    .fetch_all(&mut conn)
    .await
    .expect("markers");
    let _ = conn.close().await;
    rows
}

pub(super) fn insert(table: &str, marker: &str) -> String {
    format!("INSERT INTO {table} VALUES ('{marker}')")
}

/// Files made immutable (`chattr +i`): every write to them fails with EPERM, even through
/// descriptors already open and even for root. Undone when dropped.
pub(super) struct Immutable(Vec<PathBuf>);

impl Immutable {
    /// `None` when this system does not let the test set the flag.
    pub(super) fn set(files: Vec<PathBuf>) -> Option<Immutable> {
        let set = Command::new("chattr")
            .arg("+i")
            .args(&files)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let guard = Immutable(files);
        set.then_some(guard)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr")
            .arg("-i")
            .args(&self.0)
            .stderr(Stdio::null())
            .status();
    }
}

pub(super) fn set_mode(file: &std::path::Path, mode: u32) {
    std::fs::set_permissions(file, std::os::unix::fs::PermissionsExt::from_mode(mode))
        .expect("chmod");
}

/// A TCP relay to the target that the test can cut, as a network failure would.
pub(super) struct Relay {
    pub(super) port: u16,
    pub(super) accept: tokio::task::JoinHandle<()>,
    pub(super) links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    pub(super) async fn start() -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let links = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let held = links.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect("127.0.0.1:5432").await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                held.lock().expect("links").push(link);
            }
        });
        Relay {
            port,
            accept,
            links,
        }
    }

    pub(super) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/test", self.port)
    }

    /// Closes every relayed connection and the listener: the target is gone.
    pub(super) fn cut(&self) {
        self.accept.abort();
        for link in self.links.lock().expect("links").drain(..) {
            link.abort();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
    }
}
