//! `portcullis server` and `portcullis agent`.

use portcullis_core::Policy;
use portcullis_identity::MasterKey;
use portcullis_identity::master_key::MASTER_KEY_ENV;
use portcullis_proto::token::public_key_base64;
use portcullis_server::preflight::{self, Level};
use portcullis_server::tls::TlsError;
use portcullis_server::{Server, ServerConfig, ServerSecrets};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use crate::args::{AgentArgs, ServerArgs};
use crate::exit::{self, Exit};

pub(crate) async fn server(args: ServerArgs) -> anyhow::Result<u8> {
    super::init_logging("info,sqlx=warn");
    let mut config = ServerConfig::load(args.config.as_deref())
        .map_err(|e| Exit::new(exit::USAGE, e.to_string()))?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(data) = args.data {
        config.data_dir = data;
    }
    // The checks `portcullis config check` reports, before anything is bound or written:
    // plain HTTP where others can reach it (NET-1), the redirect listener (NET-2), the TLS
    // files, the master key (SEC-1), CORS (WEB-2) and the rest. Warnings are logged; any
    // error stops the start.
    let master_key_env = std::env::var(MASTER_KEY_ENV).ok();
    let report = preflight::check(&config, master_key_env.as_deref());
    for f in report.findings.iter().filter(|f| f.level == Level::Warning) {
        tracing::warn!(code = f.code.as_str(), "{}", f.message);
    }
    if report.has_errors() {
        let errors: Vec<String> = report
            .findings
            .iter()
            .filter(|f| f.level == Level::Error)
            .map(|f| f.message.clone())
            .collect();
        return Err(Exit::new(
            exit::USAGE,
            format!("cannot start: {}", errors.join("\n  ")),
        )
        .into());
    }
    // SEC-1: no default for the master key; a missing or weak one stops the start here.
    let master_key = MasterKey::load(master_key_env, config.master_key_file.as_deref())
        .map_err(|e| Exit::new(exit::USAGE, format!("cannot start: {e}")))?;
    let policy = Policy::new(config.policy.clone())
        .map_err(|e| Exit::new(exit::USAGE, format!("invalid configuration: {e}")))?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    // Registered before the server announces itself, so that a SIGHUP sent after the
    // announcement never meets the default action (terminate).
    let mut hangup =
        signal(SignalKind::hangup()).map_err(|e| anyhow::anyhow!("cannot handle SIGHUP: {e}"))?;
    let server = Server::start(config, policy, ServerSecrets { master_key }, listener).await?;
    if server.setup_token_written {
        let file = server.state.config.setup_token_file();
        tracing::warn!(path = %file.display(), "first start: no users yet; wrote a one-time setup token. Create the first admin with `portcullis bootstrap --setup-token-file {}`", file.display());
    }
    let keys = server.state.keys.current();
    let signer = &keys.signer;
    tracing::info!(
        addr = %server.addr,
        tls = server.state.config.tls_cert_file.is_some(),
        redirect = ?server.redirect_addr,
        key_id = %signer.key_id(),
        public_key = %public_key_base64(&signer.verifying_key()),
        "portcullis server listening; pin this key in agent configs ([[trusted_keys]])"
    );
    let shutdown = super::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(()) = hangup.recv() => {
                // NET-1: a renewed certificate is picked up without a restart; the reload
                // logs its own success or failure, and a failure keeps the old certificate.
                tracing::info!("SIGHUP: reloading the TLS certificate and key");
                if let Err(TlsError::NotConfigured) = server.reload_tls() {
                    tracing::info!("SIGHUP: native TLS is not configured; nothing to reload");
                }
            }
        }
    }
    tracing::info!(
        drain_secs = server.state.config.execution.drain_secs,
        grace_secs = portcullis_server::SHUTDOWN_GRACE.as_secs(),
        "shutting down: refusing new requests, letting the jobs agents are running report, then answering every wait with where its request stands (signal again to end the drain at once)"
    );
    server.stop_or_cut(super::shutdown_signal()).await;
    Ok(exit::OK)
}

pub(crate) async fn agent(args: AgentArgs) -> anyhow::Result<u8> {
    if let Some(crate::args::AgentCommand::Revoke { name, remote }) = args.command {
        super::client(&remote)?.revoke_agent(&name).await?;
        if remote.json {
            crate::output::json(&serde_json::json!({ "agent": name, "revoked": true }))?;
        } else {
            eprintln!("agent {name} revoked: it can no longer claim, heartbeat or report");
        }
        return Ok(exit::OK);
    }
    let Some(path) = args.config else {
        return Err(Exit::new(
            exit::USAGE,
            "give --config (or PORTCULLIS_AGENT_CONFIG) to run an agent, or a subcommand: portcullis agent revoke NAME",
        )
        .into());
    };
    super::init_logging(portcullis_agent::process::DEFAULT_LOG);
    match portcullis_agent::process::run(&path).await {
        Ok(()) => Ok(exit::OK),
        Err(e) => Err(Exit::new(e.exit_code(), e.to_string()).into()),
    }
}
