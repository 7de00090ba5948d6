//! One module per command group.

mod admin;
mod audit;
mod dev;
mod exec;
mod serve;
mod stream;

use portcullis_client::Client;

use crate::args::{Command, Remote};
use crate::exit::{self, Exit};

pub(crate) async fn run(command: Command) -> anyhow::Result<u8> {
    match command {
        Command::Dev(a) => dev::run(a).await,
        Command::Server(a) => serve::server(a).await,
        Command::Agent(a) => serve::agent(a).await,
        Command::Exec(a) => exec::run(a).await,
        Command::Request(c) => exec::request(c).await,
        Command::Token(c) => admin::token(c).await,
        Command::Agents(a) => admin::agents(a).await,
        Command::Connections(a) => admin::connections(&a.remote).await,
        Command::Whoami(a) => admin::whoami(&a.remote).await,
        Command::Audit(c) => audit::run(c).await,
        Command::Key(c) => audit::key(c).await,
    }
}

/// A client for the remote, requiring a token.
pub(crate) fn client(remote: &Remote) -> anyhow::Result<Client> {
    let Some(token) = remote.token.as_deref().filter(|t| !t.trim().is_empty()) else {
        return Err(Exit::new(
            exit::USAGE,
            "no API token: set PORTCULLIS_TOKEN or pass --token",
        )
        .into());
    };
    Ok(Client::new(&remote.server, Some(token))?)
}

/// Initializes logging on stderr. `PORTCULLIS_LOG` (or `RUST_LOG`) takes filter directives.
pub(crate) fn init_logging(default: &str) {
    let filter = std::env::var("PORTCULLIS_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default.to_owned());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Waits for Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
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
