//! Command-line arguments. Each flag is defined once here; `--help` comes from these docs.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use portcullis_core::{ConnectionName, Environment, Role};

#[derive(Debug, Parser)]
#[command(
    name = "portcullis",
    version,
    about = "A security-hardened privileged access gateway: the client requests, the server decides, the agent executes.",
    after_help = "Exit codes: 0 success · 1 error · 2 usage or invalid input · 3 denied · 4 timed out waiting · \
5 execution failed (or expired/cancelled) · 6 outcome unknown · 7 authentication failed · 8 audit chain broken"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Where the server is and who is asking (for every command that talks to a server).
#[derive(Debug, Clone, Args)]
pub(crate) struct Remote {
    /// Server URL, for example http://127.0.0.1:7070.
    #[arg(
        long,
        env = "PORTCULLIS_SERVER",
        global = true,
        default_value = "http://127.0.0.1:7070"
    )]
    pub(crate) server: String,
    /// API token. Prefer the environment variable: arguments are visible to other users.
    #[arg(long, env = "PORTCULLIS_TOKEN", global = true, hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run server, agent and embedded state in one process on loopback, with a demo database.
    Dev(DevArgs),
    /// Run the server.
    Server(ServerArgs),
    /// Run an agent next to the data stores it serves; it connects out to the server.
    Agent(AgentArgs),
    /// Check a server configuration before running it.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run a statement or command on a connection and print the result.
    Exec(ExecArgs),
    /// Inspect, wait for or cancel requests.
    #[command(subcommand)]
    Request(RequestCommand),
    /// Create, list and revoke API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// List, register and revoke agents.
    Agents(AgentsArgs),
    /// List the connections you may use.
    Connections(RemoteOnly),
    /// Show who the token belongs to and what it may do.
    Whoami(RemoteOnly),
    /// Verify and export the audit chain.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Show the signing key to pin in agent configurations.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Print a new random master key (for PORTCULLIS_MASTER_KEY or master_key_file).
    Keygen,
    /// Create the first admin with the one-time setup token of a fresh server.
    Bootstrap(BootstrapArgs),
    /// Sign in: stores a short-lived session token for this server (mode 0600).
    Login(LoginArgs),
    /// End the stored session.
    Logout(RemoteOnly),
    /// Accept an invitation: set your password and enrol your authenticator.
    Enrol(EnrolArgs),
    /// Change your password; every other session and every API token of yours ends.
    Password(PasswordArgs),
    /// Confirm a fresh authenticator code for this session, before sensitive actions.
    StepUp(StepUpArgs),
    /// Add, list, invite, suspend and unsuspend users; reset a lost authenticator.
    #[command(subcommand)]
    User(UserCommand),
    /// Re-seal every stored secret under a new vault key version.
    #[command(subcommand)]
    Vault(VaultCommand),
    /// Emergency access: for a limited time your requests skip approval steps (admins only;
    /// a session with a fresh step-up; alerted; every request is reviewed afterwards).
    BreakGlass(BreakGlassArgs),
    /// Ask how policy decides a statement.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// List alerts: lockouts, RBAC denials, admin actions, token changes, audit failures.
    Alerts(AlertsArgs),
    /// Incident response: lock every non-admin account, revoke every session and token,
    /// cancel everything pending (`lockdown lift` undoes the account locks).
    Lockdown(LockdownArgs),
}

#[derive(Debug, Args)]
pub(crate) struct EnrolArgs {
    /// A file holding the enrolment token from your invitation (or set
    /// PORTCULLIS_ENROL_TOKEN).
    #[arg(long, conflicts_with = "token_env")]
    pub(crate) token_file: Option<PathBuf>,
    #[arg(
        long = "enrol-token",
        env = "PORTCULLIS_ENROL_TOKEN",
        hide = true,
        hide_env_values = true
    )]
    pub(crate) token_env: Option<String>,
    /// Read the password from stdin (one line) instead of prompting: a new password, or your
    /// current one when your authenticator was reset.
    #[arg(long)]
    pub(crate) password_stdin: bool,
    /// Do not enrol an authenticator (only for roles that do not require MFA).
    #[arg(long)]
    pub(crate) no_mfa: bool,
    #[command(flatten)]
    pub(crate) remote: Remote,
}

#[derive(Debug, Args)]
pub(crate) struct PasswordArgs {
    /// Read the current and the new password from stdin, one per line, instead of prompting.
    #[arg(long)]
    pub(crate) password_stdin: bool,
    #[command(flatten)]
    pub(crate) remote: Remote,
}

#[derive(Debug, Args)]
pub(crate) struct StepUpArgs {
    /// The 6-digit code from your authenticator app (prompted when omitted).
    #[arg(long)]
    pub(crate) code: Option<String>,
    /// A recovery code instead (each works once).
    #[arg(long, conflicts_with = "code")]
    pub(crate) recovery_code: Option<String>,
    #[command(flatten)]
    pub(crate) remote: Remote,
}

#[derive(Debug, Subcommand)]
pub(crate) enum UserCommand {
    /// Add a user; prints the invitation's enrolment token once.
    Add {
        name: String,
        #[arg(long)]
        role: Role,
        #[command(flatten)]
        remote: Remote,
    },
    /// List users: role, MFA, sessions, tokens, suspension.
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// A new invitation (for users from [[users]], or when one expired).
    Invite {
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Suspend at once: sessions and tokens end, requests not yet running are cancelled.
    Suspend {
        name: String,
        /// Why; recorded in the audit log.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Incident response: the same as suspend, with the reason recorded as a lock.
    Lock {
        name: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Lift a suspension (the user signs in again).
    Unsuspend {
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// For a lost authenticator: removes TOTP, recovery codes, trusted devices and sessions,
    /// and prints an invitation to enrol again.
    ResetMfa {
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum VaultCommand {
    /// Re-seal everything under a new key version now; the server swaps keys without a
    /// restart.
    Rotate {
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Print the effective server configuration (the file and PORTCULLIS_* variables over
    /// the defaults) with secrets redacted, then every warning and error. Exits 2 when there
    /// is an error: `portcullis server` would refuse to start.
    Check(ConfigCheckArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ConfigCheckArgs {
    /// TOML configuration file.
    #[arg(long, env = "PORTCULLIS_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Print `{"config": …, "master_key": …, "findings": […]}` instead of TOML and lines.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct BootstrapArgs {
    /// The file the server wrote on first start (`<data>/setup.token`).
    #[arg(long)]
    pub(crate) setup_token_file: PathBuf,
    /// The first admin's user name.
    #[arg(long)]
    pub(crate) name: String,
    /// Read the password from stdin (one line) instead of prompting.
    #[arg(long)]
    pub(crate) password_stdin: bool,
    #[command(flatten)]
    pub(crate) remote: Remote,
}

#[derive(Debug, Args)]
pub(crate) struct LoginArgs {
    /// Your user name.
    #[arg(long)]
    pub(crate) name: String,
    /// The 6-digit code from your authenticator app (prompted when needed and omitted).
    #[arg(long)]
    pub(crate) code: Option<String>,
    /// A recovery code instead of an authenticator code (each works once).
    #[arg(long, conflicts_with = "code")]
    pub(crate) recovery_code: Option<String>,
    /// Remember this device: later logins here need no code until the server's
    /// trusted-device period ends (the device token is stored like the session, 0600).
    #[arg(long)]
    pub(crate) remember_device: bool,
    /// Read the password from stdin (one line) instead of prompting.
    #[arg(long)]
    pub(crate) password_stdin: bool,
    #[command(flatten)]
    pub(crate) remote: Remote,
}

#[derive(Debug, Args)]
pub(crate) struct RemoteOnly {
    #[command(flatten)]
    pub(crate) remote: Remote,
}

#[derive(Debug, Args)]
pub(crate) struct DevArgs {
    /// Loopback address to listen on. Non-loopback addresses are refused.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub(crate) listen: SocketAddr,
    /// State directory (created if missing). A temporary one when omitted.
    #[arg(long)]
    pub(crate) data: Option<PathBuf>,
    /// A TOML file of extra `[[connections]]` (agent format) to serve beside `demo`, for
    /// example examples/local-stores.toml.
    #[arg(long)]
    pub(crate) connections: Option<PathBuf>,
    /// Rate limiting (WEB-4); `false` turns it off, for API fuzzing from one address.
    #[arg(
        long,
        env = "PORTCULLIS_RATE_LIMIT__ENABLED",
        value_name = "BOOL",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub(crate) rate_limit: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ServerArgs {
    /// TOML configuration file.
    #[arg(long, env = "PORTCULLIS_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Listen address (overrides the file).
    #[arg(long)]
    pub(crate) listen: Option<SocketAddr>,
    /// State directory (overrides the file).
    #[arg(long)]
    pub(crate) data: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct AgentArgs {
    /// TOML configuration file (to run the agent).
    #[arg(long, env = "PORTCULLIS_AGENT_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Option<AgentCommand>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum AgentCommand {
    /// Incident response (IR-5): revoke an agent at once; it can no longer claim jobs, and
    /// jobs it held are not handed to it again. The same as `portcullis agents revoke`.
    Revoke {
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Args)]
pub(crate) struct ExecArgs {
    /// The connection to run on.
    #[arg(long, short = 'c')]
    pub(crate) connection: ConnectionName,
    /// Why you need this; recorded with the request and in the audit log.
    #[arg(long, short = 'r')]
    pub(crate) reason: String,
    /// Return the request id at once instead of waiting for the result.
    #[arg(long)]
    pub(crate) no_wait: bool,
    /// How long to wait for approval and execution, in seconds.
    #[arg(long, default_value_t = 300)]
    pub(crate) wait: u64,
    /// Print the result as NDJSON while it is produced (a `{"columns": …}` header, one JSON
    /// array per row, then a trailer with the state and counts): for results of any size.
    #[arg(long, conflicts_with = "no_wait")]
    pub(crate) stream: bool,
    /// The statement (SQL) or command (Redis).
    pub(crate) statement: String,
    #[command(flatten)]
    pub(crate) remote: Remote,
}

#[derive(Debug, Subcommand)]
pub(crate) enum RequestCommand {
    /// List your requests (or everyone's with --all).
    List {
        #[arg(long)]
        all: bool,
        /// Everyone's requests that ran under break-glass and await review.
        #[arg(long, conflicts_with_all = ["all", "state"])]
        unreviewed: bool,
        /// Only requests in this state (pending_approval, approved, succeeded, …).
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show one request.
    Show {
        id: uuid::Uuid,
        #[command(flatten)]
        remote: Remote,
    },
    /// Wait for a request to finish and print its result.
    Wait {
        id: uuid::Uuid,
        /// Seconds to wait.
        #[arg(long, default_value_t = 300)]
        wait: u64,
        #[command(flatten)]
        remote: Remote,
    },
    /// Cancel a request that has not been dispatched.
    Cancel {
        id: uuid::Uuid,
        #[command(flatten)]
        remote: Remote,
    },
    /// Review a request that ran under break-glass (another admin, after the fact).
    Review {
        id: uuid::Uuid,
        /// What you checked (required).
        #[arg(long)]
        comment: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Approve someone else's pending request (needs requests:approve and a fresh step-up).
    Approve {
        id: uuid::Uuid,
        /// A note recorded with your decision.
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Reject a pending request; the requester sees your comment.
    Reject {
        id: uuid::Uuid,
        /// Why (required).
        #[arg(long)]
        comment: String,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCommand {
    /// Explain which rule decides a statement and why, without running anything.
    Check {
        /// Decide as a requester with this role (default: yours).
        #[arg(long = "as")]
        role: Option<Role>,
        #[arg(long, short = 'c')]
        connection: ConnectionName,
        /// The statement (SQL) or command (Redis).
        statement: String,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Args)]
pub(crate) struct BreakGlassArgs {
    /// Why (10-500 characters); read by the reviewer.
    #[arg(long)]
    pub(crate) reason: String,
    /// How long: 30m, 1h or seconds (at most the server's break_glass.max_secs, the default).
    #[arg(long)]
    pub(crate) duration: Option<String>,
    #[command(flatten)]
    pub(crate) remote: Remote,
}

#[derive(Debug, Args)]
pub(crate) struct AlertsArgs {
    /// Only alerts after this sequence number.
    #[arg(long, default_value_t = 0)]
    pub(crate) after: i64,
    /// At most this many (the newest).
    #[arg(long, default_value_t = 50)]
    pub(crate) limit: u32,
    #[command(flatten)]
    pub(crate) remote: Remote,
}

#[derive(Debug, Args)]
pub(crate) struct LockdownArgs {
    #[command(subcommand)]
    pub(crate) command: Option<LockdownCommand>,
    #[command(flatten)]
    pub(crate) remote: Remote,
}

#[derive(Debug, Subcommand)]
pub(crate) enum LockdownCommand {
    /// Unlock the accounts the lockdown locked (people sign in again).
    Lift,
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Create an API token. Its secret is printed once.
    Create {
        /// A name for the token (letters, digits, '-', '_', '.', '@').
        #[arg(long)]
        name: String,
        /// Its role; at most your own.
        #[arg(long)]
        role: Role,
        /// Lifetime: 90d, 12h, 30m or seconds. Mandatory.
        #[arg(long)]
        ttl: String,
        /// Limit the token to these environments (repeatable).
        #[arg(long = "env")]
        environments: Vec<Environment>,
        #[command(flatten)]
        remote: Remote,
    },
    /// List tokens.
    List {
        /// Only tokens that were never used.
        #[arg(long)]
        unused: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Revoke a token at once.
    Revoke {
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Args)]
pub(crate) struct AgentsArgs {
    #[command(subcommand)]
    pub(crate) command: Option<AgentsCommand>,
    #[command(flatten)]
    pub(crate) remote: Remote,
}

#[derive(Debug, Subcommand)]
pub(crate) enum AgentsCommand {
    /// List agents and whether they are connected.
    List,
    /// Register an agent; its token is printed once.
    Create { name: String },
    /// Revoke an agent: it can no longer claim jobs.
    Revoke { name: String },
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Check the whole chain and the signed checkpoint; names the first bad sequence number.
    Verify {
        /// Verify the state directory directly (offline) instead of asking the server.
        #[arg(long)]
        data: Option<PathBuf>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Write every event as JSON Lines.
    Export {
        /// Read the state directory directly (offline) instead of asking the server.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Output file (standard output when omitted).
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeyCommand {
    /// Print the key id and public key, as a `[[trusted_keys]]` entry for agent configs.
    Show {
        /// The server's state directory.
        #[arg(long)]
        data: PathBuf,
    },
    /// Replace the execution-token signing key now (incident response, IR-4).
    Rotate {
        #[command(flatten)]
        remote: Remote,
    },
}
