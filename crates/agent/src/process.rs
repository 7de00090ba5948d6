//! Running an agent as a process: logging, signals and the run itself, shared by the
//! dedicated `portcullis-agent` binary and by `portcullis agent`, so that both behave alike
//! (same configuration, same environment, same log format, same exit codes).

use std::path::Path;

use crate::{Agent, AgentConfig, load_token};

/// The log filter when neither `PORTCULLIS_LOG` nor `RUST_LOG` is set.
pub const DEFAULT_LOG: &str = "info,sqlx=warn";

/// Exit code: the agent stopped on SIGTERM or Ctrl-C.
pub const EXIT_OK: u8 = 0;
/// Exit code: any other failure (a target that cannot be opened, a runtime error).
pub const EXIT_ERROR: u8 = 1;
/// Exit code: the configuration or the token is missing or invalid.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the server refused the agent's credential (revoked or unknown); retrying with
/// the same token cannot help.
pub const EXIT_UNAUTHENTICATED: u8 = 7;

/// Why a run of the agent ended other than by a signal.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration file or the token could not be used.
    #[error("{0}")]
    Config(String),
    /// The server refused the agent's credential.
    #[error("{0:#}")]
    Refused(anyhow::Error),
    /// Anything else.
    #[error("{0:#}")]
    Failed(anyhow::Error),
}

impl RunError {
    /// The process exit code for this error ([`EXIT_USAGE`], [`EXIT_UNAUTHENTICATED`] or
    /// [`EXIT_ERROR`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Config(_) => EXIT_USAGE,
            RunError::Refused(_) => EXIT_UNAUTHENTICATED,
            RunError::Failed(_) => EXIT_ERROR,
        }
    }
}

/// The async runtime every `portcullis` process runs on (one worker thread per core).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// Loads the configuration at `path` and the token, opens every target, connects out and
/// serves jobs until SIGTERM or Ctrl-C, then finishes the jobs in flight (then `Ok`; a
/// second signal stops at once), or until the server refuses the credential. Logging must
/// already be set up ([`init_logging`]).
pub async fn run(path: &Path) -> Result<(), RunError> {
    let config = AgentConfig::load(path).map_err(|e| RunError::Config(e.to_string()))?;
    let token = load_token(&config).map_err(|e| RunError::Config(e.to_string()))?;
    let agent = Agent::new(config, &token).await.map_err(RunError::Failed)?;
    drop(token);
    tracing::info!(name = %agent.config().name, server = %agent.config().server_url, "agent started; connecting out");
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut run = tokio::spawn(agent.run(stop));
    tokio::select! {
        done = &mut run => return ended(done),
        _ = shutdown_signal() => {}
    }
    // Stop claiming, and let every job in flight finish and its result reach the server:
    // an agent stopped by its orchestrator (a rolling restart) leaves no write it started
    // without its recorded outcome. A second signal stops at once; so does the
    // orchestrator's SIGKILL at the end of its grace period.
    stop_tx.send_replace(true);
    tracing::info!(
        "stopping: no new jobs; finishing the jobs in flight and recording their results (signal again to stop at once)"
    );
    tokio::select! {
        done = &mut run => ended(done),
        _ = shutdown_signal() => {
            tracing::warn!("stopping at once: a job still in flight ends as its lease runs out (a write as outcome_unknown)");
            Ok(())
        }
    }
}

/// What the run's ending means for the process.
fn ended(done: Result<anyhow::Result<()>, tokio::task::JoinError>) -> Result<(), RunError> {
    match done {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(RunError::Refused(e)),
        Err(e) => Err(RunError::Failed(e.into())),
    }
}

/// Initializes logging on stderr. `PORTCULLIS_LOG` (or `RUST_LOG`) takes filter directives;
/// `PORTCULLIS_LOG_FORMAT` is `json`, `pretty` or `auto` (the default: pretty on a terminal,
/// one JSON object per line everywhere else, for log shippers). Every line logged while an
/// HTTP request is handled carries its `request_id` (WEB-5).
pub fn init_logging(default: &str) {
    use std::io::IsTerminal;
    let filter = std::env::var("PORTCULLIS_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default.to_owned());
    let terminal = std::io::stderr().is_terminal();
    let json = match std::env::var("PORTCULLIS_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("pretty") => false,
        _ => !terminal,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = if json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.with_ansi(terminal).try_init()
    };
}

/// Waits for Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
