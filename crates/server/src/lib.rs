//! The Portcullis server: authentication, authorization, policy, dispatch to agents, the
//! hash-chained audit log, and the REST API under `/api/v1`.
//!
//! The server decides; it never executes. It holds no data-store credential and no data-store
//! address: its configuration knows connections only by name, kind and environment, and
//! agents (which connect out to it) do the executing. `app(state)` builds the router;
//! `Server::start` opens the state store and runs the background tasks.

pub mod alerts;
pub mod approvals;
pub mod audit;
pub mod auth;
pub mod break_glass;
pub mod clock;
pub mod config;
pub mod dispatch;
pub mod error;
pub mod events;
pub mod explain;
pub mod key_rotation;
pub mod keys;
pub mod lease;
pub mod lifecycle;
pub mod listener;
pub mod metrics;
pub mod people;
pub mod preflight;
pub mod principals;
pub mod ratelimit;
pub mod reaper;
pub mod results;
pub mod routes;
pub mod store;
pub mod tls;
mod to_the_end;
pub mod views;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis_core::Policy;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use config::ServerConfig;
pub use people::ServerSecrets;
pub use routes::app;

use audit::{Audit, CheckpointFile};
use auth::Authenticator;
use dispatch::Dispatch;
use store::Store;

/// Creates the state directory owner-only (0700) when missing; an existing one is used as is.
pub fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| anyhow::anyhow!("cannot create data directory {}: {e}", dir.display()))?;
    }
    Ok(())
}

/// How long a stopping server waits, at most, for the jobs its agents are running to be
/// reported before it ends the waits for them ([`Server::stop`]), unless
/// `execution.drain_secs` says otherwise. With [`SHUTDOWN_GRACE`] it stays under the 10 s a
/// container runtime commonly allows between SIGTERM and SIGKILL.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(4);

/// How long a stopping server then gives its open connections and background tasks to
/// finish, all of them together, before it closes the state store and exits anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Everything a handler needs, grouped by concern.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: ServerConfig,
    pub policy: Policy,
    pub store: Store,
    pub audit: Arc<Audit>,
    pub auth: Authenticator,
    /// The execution-token signing key, also used for audit checkpoints; swapped whole by
    /// a rotation (IR-4).
    pub keys: Arc<keys::SigningKeys>,
    pub dispatch: Dispatch,
    pub presence: Mutex<lifecycle::Presence>,
    pub people: people::People,
    /// This server's Prometheus registry (WEB-9).
    pub metrics: metrics::Metrics,
    /// The rate limiter (WEB-4); `None` when `rate_limit.enabled` is false.
    pub limiter: Option<ratelimit::RateLimiter>,
    /// Turns `true` once the server begins to drain ([`Inner::draining`]).
    drain_signal: tokio::sync::watch::Receiver<bool>,
    /// Turns `true` once the server begins to stop ([`Inner::stopping`]).
    stop_signal: tokio::sync::watch::Receiver<bool>,
    /// How many event sockets are open: a stopping server closes them and waits for them.
    open_sockets: tokio::sync::watch::Sender<usize>,
    /// The connections open on the listeners, against their limits.
    pub connections: Arc<listener::Connections>,
}

impl Inner {
    /// Resolves once the server has begun to drain: from then on it takes no new request and
    /// leases no job, while the jobs its agents are running still report
    /// ([`Server::stop`]).
    pub async fn draining(&self) {
        Self::signalled(&self.drain_signal).await;
    }

    /// Whether the server has begun to drain (or to stop).
    pub fn is_draining(&self) -> bool {
        *self.drain_signal.borrow()
    }

    /// A new request refused because the server is stopping: 503 with `Retry-After`, and
    /// nothing recorded or queued.
    pub fn refuse_when_draining(&self) -> Result<(), error::ApiError> {
        if self.is_draining() {
            return Err(error::ApiError::Stopping {
                drain_secs: self.config.execution.drain_secs,
            });
        }
        Ok(())
    }

    async fn signalled(signal: &tokio::sync::watch::Receiver<bool>) {
        let mut signal = signal.clone();
        if signal.wait_for(|s| *s).await.is_err() {
            // No server behind this state any more: nothing will stop it.
            std::future::pending::<()>().await;
        }
    }

    /// Counts an event socket open until the guard drops ([`Server::stop`] waits for it).
    pub fn socket_opened(&self) -> OpenSocket {
        self.open_sockets.send_modify(|n| *n += 1);
        OpenSocket(self.open_sockets.clone())
    }

    /// Resolves once the server has begun to stop. Every wait a client or an agent worker is
    /// in — a request's outcome, a result's start, a claim's long poll — ends then, answering
    /// as if its time had run out, so a stopping server is not held open by callers that are
    /// only waiting, and each of them is told where things stand instead of losing its
    /// connection.
    pub async fn stopping(&self) {
        Self::signalled(&self.stop_signal).await;
    }

    /// `what`, for at most `wait`, unless the server begins to stop first: `None` when the
    /// time ran out or the server is stopping.
    pub async fn wait_unless_stopping<F: std::future::Future>(
        &self,
        wait: Duration,
        what: F,
    ) -> Option<F::Output> {
        tokio::select! {
            done = tokio::time::timeout(wait, what) => done.ok(),
            () = self.stopping() => None,
        }
    }
}

/// An open event socket, counted until it drops ([`Inner::socket_opened`]).
pub struct OpenSocket(tokio::sync::watch::Sender<usize>);

impl Drop for OpenSocket {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// A running server: its address, its state (for in-process callers such as `dev`), and the
/// handle to stop it.
pub struct Server {
    pub addr: SocketAddr,
    /// `portcullis dev` only: true when this start created the first admin and wrote its
    /// token to `config.admin_token_file`.
    pub provisioned_admin: bool,
    /// True when this start found no users and wrote the one-time setup token to
    /// `config.setup_token_file()` (SEC-2).
    pub setup_token_written: bool,
    /// The plain-HTTP listener that only redirects to HTTPS, when configured (NET-2).
    pub redirect_addr: Option<SocketAddr>,
    pub state: AppState,
    /// Native TLS, when configured (NET-1); reloaded by [`Server::reload_tls`].
    tls: Option<tls::LiveTls>,
    drain: tokio::sync::watch::Sender<bool>,
    shutdown: tokio::sync::watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// Opens the state in `config.data_dir`, then serves on `listener` until stopped. Fails
    /// before serving anything when a sealed secret cannot be opened with `secrets` (SEC-3).
    pub async fn start(
        config: ServerConfig,
        policy: Policy,
        secrets: ServerSecrets,
        listener: TcpListener,
    ) -> anyhow::Result<Server> {
        if config.admin_token_file.is_some() && !config.listen.ip().is_loopback() {
            anyhow::bail!("an admin token file is for `portcullis dev` on loopback only (SEC-2)");
        }
        // NET-1 and NET-2, decided on the address actually bound and before any state is
        // touched: a server that cannot serve the way it must does not start at all.
        let addr = listener.local_addr()?;
        let tls = tls::files(&config).map(tls::LiveTls::load).transpose()?;
        tls::transport(addr, tls.is_some(), config.behind_tls_proxy)?;
        let redirect = match config.http_redirect_listen {
            Some(_) if tls.is_none() => anyhow::bail!(
                "http_redirect_listen redirects to this server's HTTPS port and needs native TLS (tls_cert_file and tls_key_file) (NET-2)"
            ),
            Some(at) => Some(TcpListener::bind(at).await.map_err(|e| {
                anyhow::anyhow!("cannot listen on {at} (http_redirect_listen): {e}")
            })?),
            None => None,
        };
        let redirect_addr = redirect.as_ref().map(TcpListener::local_addr).transpose()?;
        // WEB-4: a server told to share its limits through Redis does not start without it,
        // rather than serve with no limits or with limits of its own.
        let limiter = ratelimit::RateLimiter::from_settings(&config.rate_limit)
            .await
            .map_err(|e| anyhow::anyhow!("rate limiting (WEB-4): {e}"))?;
        let data_dir = config.data_dir.clone();
        create_private_dir(&data_dir)?;
        let signing_key = keys::load_or_create(&data_dir)?;
        let store = Store::open_with(&data_dir, config.state.synchronous).await?;
        let checkpoint = CheckpointFile::in_dir(&data_dir);
        let audit = Audit::open(&store, &checkpoint).await?;
        let signing = Arc::new(keys::SigningKeys::new(signing_key));
        let people = people::People::open(&store, &config, &secrets).await?;
        drop(secrets);
        let auth = Authenticator::new(
            Duration::from_secs(config.sessions.idle_timeout_secs),
            Duration::from_secs(config.sessions.absolute_lifetime_secs),
        );
        let (drain, _) = tokio::sync::watch::channel(false);
        let (shutdown, mut stop) = tokio::sync::watch::channel(false);
        let connections = listener::Connections::new(&config);
        let state = AppState(Arc::new(Inner {
            config,
            policy,
            store,
            audit: audit.clone(),
            auth,
            keys: signing.clone(),
            dispatch: Dispatch::default(),
            presence: Mutex::new(lifecycle::Presence::default()),
            people,
            metrics: metrics::Metrics::new(),
            limiter,
            drain_signal: drain.subscribe(),
            stop_signal: shutdown.subscribe(),
            open_sockets: tokio::sync::watch::channel(0).0,
            connections,
        }));
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(audit::run_checkpointer(
            audit.subscribe(),
            checkpoint,
            signing,
        )));
        tasks.push(tokio::spawn(store::run_wal_checkpointer(
            state.store.clone(),
            audit.subscribe(),
            shutdown.subscribe(),
        )));
        tasks.push(tokio::spawn(reaper::run_reaper(
            state.clone(),
            shutdown.subscribe(),
        )));
        // Everything a client may rely on exists before the first connection is accepted:
        // the start event and, on first start, the setup token (or dev's admin credential).
        lifecycle::record_start(&state, addr).await?;
        people::users::apply_config(&state).await?;
        let (provisioned_admin, setup_token_written) = match &state.config.admin_token_file {
            Some(file) => (
                principals::provision_admin(&state, file).await?.is_some(),
                false,
            ),
            None => (
                false,
                people::provision_setup_token(&state.store, &state.config.setup_token_file())
                    .await?,
            ),
        };
        tasks.push(tokio::spawn(people::vault::run_schedule(
            state.clone(),
            shutdown.subscribe(),
        )));
        let service = app(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
        // Both paths stop the same way: stop accepting when told, then give the connections
        // the rest of `SHUTDOWN_GRACE`.
        let handles = [axum_server::Handle::new(), axum_server::Handle::new()];
        let serve = listener::server(listener, &state.config, &state.connections)
            .handle(handles[0].clone());
        tasks.push(tokio::spawn({
            let handles = handles.clone();
            async move {
                let _ = stop.wait_for(|s| *s).await;
                for handle in handles {
                    handle.graceful_shutdown(Some(SHUTDOWN_GRACE));
                }
            }
        }));
        match &tls {
            Some(live) => {
                let rustls = axum_server::tls_rustls::RustlsAcceptor::new(live.rustls_config());
                let server = serve.map(|gate| rustls.acceptor(gate));
                tasks.push(tokio::spawn(async move {
                    if let Err(e) = server.serve(service).await {
                        tracing::error!(error = %e, "HTTPS server stopped with an error");
                    }
                }));
            }
            None => tasks.push(tokio::spawn(async move {
                if let Err(e) = serve.serve(service).await {
                    tracing::error!(error = %e, "HTTP server stopped with an error");
                }
            })),
        }
        if let Some(redirect) = redirect {
            let router = tls::redirect_router(addr.port());
            let server = listener::server(redirect, &state.config, &state.connections)
                .handle(handles[1].clone());
            tasks.push(tokio::spawn(async move {
                if let Err(e) = server.serve(router.into_make_service()).await {
                    tracing::error!(error = %e, "the HTTP redirect listener stopped with an error");
                }
            }));
        }
        Ok(Server {
            addr,
            provisioned_admin,
            setup_token_written,
            redirect_addr,
            state,
            tls,
            drain,
            shutdown,
            tasks,
        })
    }

    /// Reads the TLS certificate and key files again (on SIGHUP): connections accepted from
    /// now on use them, open ones keep theirs, and on failure the current certificate stays
    /// (NET-1).
    pub fn reload_tls(&self) -> Result<(), tls::TlsError> {
        self.tls
            .as_ref()
            .ok_or(tls::TlsError::NotConfigured)?
            .reload()
    }

    /// Stops in two steps (EX-3):
    ///
    /// 1. **Drain**: new requests are refused (503, `Retry-After`) and no job is leased, while
    ///    the listener stays open for the agents' reports of the jobs they are running, so a
    ///    client waiting for one still gets its result. At most `execution.drain_secs`
    ///    ([`SHUTDOWN_DRAIN`] by default), and not at all when no job is leased.
    /// 2. **Stop**: stops accepting, ends every wait at once (the waiters are answered with
    ///    where their request stands), closes the event sockets (1001), gives the requests in
    ///    flight, the sockets and the background tasks [`SHUTDOWN_GRACE`] in all to finish,
    ///    then flushes batched writes and the audit checkpoint and closes the state store.
    pub async fn stop(self) {
        self.stop_or_cut(std::future::pending()).await;
    }

    /// [`Server::stop`], its drain cut short when `cut` resolves (`portcullis server`: a
    /// second SIGTERM or Ctrl-C).
    pub async fn stop_or_cut(self, cut: impl std::future::Future<Output = ()>) {
        self.drain.send_replace(true);
        tokio::select! {
            () = settle_leased_jobs(&self.state) => {}
            () = cut => tracing::warn!(
                "draining cut short: the jobs still running settle when their agents report after the restart, or as their leases run out"
            ),
        }
        self.shutdown.send_replace(true);
        let Server { state, tasks, .. } = self;
        let mut tasks = tasks.into_iter();
        let checkpointer = tasks.next();
        let rest: Vec<_> = tasks.collect();
        let count = rest.len();
        let mut sockets = state.open_sockets.subscribe();
        let all = async {
            futures_util::future::join_all(rest).await;
            let _ = sockets.wait_for(|n| *n == 0).await;
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, all).await.is_err() {
            tracing::warn!(
                grace_secs = SHUTDOWN_GRACE.as_secs(),
                tasks = count,
                sockets = *state.open_sockets.borrow(),
                "stopping: connections or background tasks still busy after the grace period; closing the state store anyway"
            );
        }
        if let Err(e) = state.auth.flush_last_used(&state.store).await {
            tracing::warn!(error = %e, "flushing token last-used times failed");
        }
        let head = state.audit.head();
        if head.seq > 0 {
            let cp = audit::Checkpoint::sign(head, &state.keys.current().key);
            if let Err(e) = CheckpointFile::in_dir(&state.config.data_dir).write(&cp) {
                tracing::error!(error = %e, "writing the final audit checkpoint failed");
            }
        }
        if let Some(t) = checkpointer {
            t.abort();
        }
        state.store.close().await;
    }
}

/// The drain of [`Server::stop`]: waits until no job is leased to an agent (each report, give-
/// back or expiry commits, and every commit wakes this for another count) or until
/// `execution.drain_secs` have passed.
async fn settle_leased_jobs(state: &AppState) {
    let drain = Duration::from_secs(state.config.execution.drain_secs);
    if drain.is_zero() {
        return;
    }
    let deadline = tokio::time::Instant::now() + drain;
    // A request or a claim that looked for the drain an instant before it began may already
    // have given the writer thread its transaction; counted now, its lease, committed a
    // moment later, would be missed and its report not waited for. The thread runs
    // transactions in the order they were sent, so once this empty one is answered all of
    // those are committed, and every transaction it runs from now on sees the drain and
    // leases nothing (EX-3).
    match tokio::time::timeout_at(deadline, state.audit.transact(|_| Ok(()))).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(
            error = %e,
            "draining: the writer thread could not be waited for; counting the running jobs as they are"
        ),
        Err(_) => {
            tracing::warn!("draining: the writer thread was still busy when the drain ran out");
            return;
        }
    }
    let mut commits = state.audit.subscribe();
    let mut logged = false;
    loop {
        commits.borrow_and_update();
        let leased = match leased_jobs(&state.store).await {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "draining: the leased jobs could not be counted; stopping now");
                return;
            }
        };
        if !logged {
            tracing::info!(
                jobs = leased,
                drain_secs = drain.as_secs(),
                "draining: refusing new requests, waiting for the jobs agents are running to report"
            );
            logged = true;
        }
        if tokio::time::timeout_at(deadline, commits.changed())
            .await
            .map_or(true, |changed| changed.is_err())
        {
            tracing::warn!(
                jobs = leased,
                "draining: jobs still running at the end of the drain; their waiters are told where they stand, and the jobs settle when their agents report after the restart or their leases expire"
            );
            return;
        }
    }
}

async fn leased_jobs(store: &Store) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'leased'")
        .fetch_one(store.reader())
        .await
}
