//! One module per command group.

mod admin;
mod audit;
mod config;
mod dev;
mod exec;
mod people;
mod serve;
mod stream;
mod users;

use portcullis_client::Client;

use crate::args::{Command, Remote};
use crate::exit::{self, Exit};

pub(crate) async fn run(command: Command) -> anyhow::Result<u8> {
    match command {
        Command::Dev(a) => dev::run(a).await,
        Command::Server(a) => serve::server(a).await,
        Command::Agent(a) => serve::agent(a).await,
        Command::Config(c) => config::run(c),
        Command::Exec(a) => exec::run(a).await,
        Command::Request(c) => exec::request(c).await,
        Command::Token(c) => admin::token(c).await,
        Command::Agents(a) => admin::agents(a).await,
        Command::Connections(a) => admin::connections(&a.remote).await,
        Command::Whoami(a) => admin::whoami(&a.remote).await,
        Command::Audit(c) => audit::run(c).await,
        Command::Key(c) => audit::key(c).await,
        Command::Keygen => people::keygen(),
        Command::Bootstrap(a) => people::bootstrap(a).await,
        Command::Login(a) => people::login(a).await,
        Command::Logout(a) => people::logout(&a.remote).await,
        Command::Enrol(a) => people::enrol(a).await,
        Command::Password(a) => people::password(a).await,
        Command::StepUp(a) => people::step_up(a).await,
        Command::User(c) => users::run(c).await,
        Command::Vault(c) => users::vault(c).await,
        Command::Policy(c) => exec::policy(c).await,
        Command::BreakGlass(a) => admin::break_glass(a).await,
        Command::Alerts(a) => audit::alerts(a).await,
        Command::Lockdown(a) => users::lockdown(a).await,
    }
}

/// A client for the remote, acting with `--token`/`PORTCULLIS_TOKEN` or, without one, the
/// session stored by `portcullis login` for this server.
pub(crate) fn client(remote: &Remote) -> anyhow::Result<Client> {
    if let Some(token) = remote.token.as_deref().filter(|t| !t.trim().is_empty()) {
        return Ok(Client::new(&remote.server, Some(token))?);
    }
    match people::stored_session(&remote.server)? {
        Some(token) => Ok(Client::new(&remote.server, Some(&token))?),
        None => Err(Exit::new(
            exit::UNAUTHENTICATED,
            "not signed in: run `portcullis login --name NAME`, or set PORTCULLIS_TOKEN to an API token",
        )
        .into()),
    }
}

/// Initializes logging on stderr. `PORTCULLIS_LOG` (or `RUST_LOG`) takes filter directives;
/// `PORTCULLIS_LOG_FORMAT` is `json`, `pretty` or `auto` (the default: pretty on a terminal,
/// one JSON object per line everywhere else, for log shippers). Every line logged while an
/// HTTP request is handled carries its `request_id` (WEB-5).
pub(crate) fn init_logging(default: &str) {
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
