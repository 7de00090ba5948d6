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

/// Logging and signals are the agent process's own, so that `portcullis-agent` and every
/// `portcullis` command that runs a service set them up alike.
pub(crate) use portcullis_agent::process::{init_logging, shutdown_signal};
