//! One connection pool per (connection, class) credential for the SQL stores, opened lazily at
//! start so a store that is down does not stop the agent. Acquiring is bounded by the job's
//! timeout; when it fails, one direct connection attempt finds out why, so the job reports
//! "connection refused" or "password authentication failed" rather than "pool timed out".

use std::time::Duration;

use portcullis_core::{ConnectionName, OperationClass};
use portcullis_proto::api::ExecError;
use sqlx::pool::{PoolConnection, PoolOptions};
use sqlx::{ConnectOptions, Connection, Database, Pool};

use super::url::ConnectionUrl;
use super::{FailureCode, Limits, failure};
use crate::config::TargetConfig;

/// The longest a job waits for a pooled connection, whatever its timeout.
const MAX_ACQUIRE: Duration = Duration::from_secs(10);
/// How long the diagnostic connection attempt may take.
const DIAGNOSE: Duration = Duration::from_secs(3);
/// How long closing a failed connection may take (it runs beside the job).
const CLOSE_WITHIN: Duration = Duration::from_secs(3);
/// Idle connections are closed after this long.
const IDLE: Duration = Duration::from_secs(300);

type Options<DB> = <<DB as Database>::Connection as Connection>::Options;

/// A pool for one credential of one connection.
pub(crate) struct StorePool<DB: Database> {
    connection: ConnectionName,
    class: OperationClass,
    url: ConnectionUrl,
    options: Options<DB>,
    pool: Pool<DB>,
}

impl<DB: Database> std::fmt::Debug for StorePool<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the driver's options: their Debug shows the password.
        f.debug_struct("StorePool")
            .field("class", &self.class)
            .field("url", &self.url)
            .field("size", &self.pool.size())
            .finish_non_exhaustive()
    }
}

impl<DB: Database> StorePool<DB> {
    /// Builds the pool for `class` on `target`; `configure` turns the URL into the driver's
    /// options (TLS and other URL parameters are the driver's to honour).
    pub(crate) fn open(
        target: &TargetConfig,
        class: OperationClass,
        configure: impl FnOnce(&str) -> Result<Options<DB>, sqlx::Error>,
    ) -> anyhow::Result<StorePool<DB>> {
        Self::open_with(target, class, configure, |pool| pool)
    }

    /// [`StorePool::open`], with `tune` adding to the pool's own options, or changing them: a
    /// driver's work on each connection as it goes back to the pool (`after_release`), which
    /// a closed connection skips; a connection kept open ahead (`min_connections`).
    pub(crate) fn open_with(
        target: &TargetConfig,
        class: OperationClass,
        configure: impl FnOnce(&str) -> Result<Options<DB>, sqlx::Error>,
        tune: impl FnOnce(PoolOptions<DB>) -> PoolOptions<DB>,
    ) -> anyhow::Result<StorePool<DB>> {
        let url = target.url(class)?;
        let options = configure(url.expose())
            .map_err(|e| {
                anyhow::anyhow!(
                    "connection {} ({class} credential): {}",
                    target.name,
                    url.redact(&e.to_string())
                )
            })?
            // User statements and their literals stay out of the agent's logs.
            .disable_statement_logging();
        let defaults = PoolOptions::<DB>::new()
            .max_connections(target.pool_size)
            .min_connections(0)
            .acquire_timeout(MAX_ACQUIRE)
            // No round trip to test a connection before each job; sqlx still tests each one
            // as it goes back to the pool (which also runs a rollback a job left queued) and
            // closes one that fails. A connection that died while idle fails before any of
            // the job's statement was sent (PostgreSQL's `BEGIN`, the MySQL session's setup),
            // and the driver's code then moves the job to another connection.
            .test_before_acquire(false)
            .idle_timeout(Some(IDLE));
        let pool = tune(defaults).connect_lazy_with(options.clone());
        Ok(StorePool {
            connection: target.name.clone(),
            class,
            url,
            options,
            pool,
        })
    }

    /// How many times a job may move to another connection ([`StorePool::replace`]): once
    /// per connection the pool can hold, so a store that restarted, leaving every idle
    /// connection dead, still gets the job a live one.
    pub(crate) fn spares(&self) -> u32 {
        self.pool.options().get_max_connections()
    }

    /// For a job whose connection failed before any of its statement was sent (one that died
    /// while idle in the pool, which is not tested before use, or one whose session a read's
    /// `BEGIN` message found residue on): closes it and, while `spares` last (counted down
    /// from [`StorePool::spares`]), gives the job another. `None` when none is left: the job
    /// reports `error`. Never for a failure after the statement was sent, which could run it
    /// twice (EX-3). The failed connection leaves the pool before another is asked for, so a
    /// pool of one does not wait for the dead connection's own place until the job's timeout.
    pub(crate) async fn replace(
        &self,
        conn: PoolConnection<DB>,
        spares: &mut u32,
        error: &sqlx::Error,
        limits: &Limits,
    ) -> Result<Option<PoolConnection<DB>>, ExecError> {
        // Out of the pool at once; closed (the server told, when it can still hear) beside
        // the job.
        let failed = conn.detach();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(CLOSE_WITHIN, failed.close()).await;
        });
        if *spares == 0 {
            return Ok(None);
        }
        *spares -= 1;
        tracing::debug!(connection = %self.connection, class = %self.class, error = %self.url.redact(&error.to_string()), "a pooled connection failed before its job's statement was sent; trying another");
        self.acquire(limits).await.map(Some)
    }

    /// Connections idle in the pool: back from their last job and tested on release.
    #[cfg(feature = "test-hooks")]
    pub(crate) fn idle(&self) -> usize {
        self.pool.num_idle()
    }

    /// Connections out of the pool: serving a job, or on their way back or to being closed.
    #[cfg(feature = "test-hooks")]
    pub(crate) fn busy(&self) -> usize {
        (self.pool.size() as usize).saturating_sub(self.pool.num_idle())
    }

    /// A connection of its own, outside the pool, for a one-off look at the store.
    pub(crate) async fn connect(&self) -> Result<DB::Connection, sqlx::Error> {
        self.options.connect().await
    }

    /// The connection the pool serves, for logs.
    pub(crate) fn connection(&self) -> &ConnectionName {
        &self.connection
    }

    pub(crate) fn url(&self) -> &ConnectionUrl {
        &self.url
    }

    /// A pooled connection, or `store_unavailable` with the reason, within the job's timeout.
    pub(crate) async fn acquire(&self, limits: &Limits) -> Result<PoolConnection<DB>, ExecError> {
        let wait = limits.timeout.min(MAX_ACQUIRE);
        match tokio::time::timeout(wait, self.pool.acquire()).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(sqlx::Error::PoolTimedOut)) | Err(_) => Err(self.diagnose(wait).await),
            Ok(Err(e)) => Err(self.unavailable(&e.to_string())),
        }
    }

    /// Why no connection could be had: one direct attempt shows the driver's own error.
    async fn diagnose(&self, waited: Duration) -> ExecError {
        match tokio::time::timeout(DIAGNOSE, self.connect()).await {
            Ok(Err(e)) => self.unavailable(&e.to_string()),
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
                self.unavailable(&format!(
                    "all {} connections stayed busy for {} ms",
                    self.pool.options().get_max_connections(),
                    waited.as_millis()
                ))
            }
            Err(_) => self.unavailable(&format!(
                "no connection within {} ms",
                (waited + DIAGNOSE).as_millis()
            )),
        }
    }

    /// `store_unavailable`, logged with the (redacted) URL for the operator; the error itself
    /// names only the connection, never its address.
    pub(crate) fn unavailable(&self, reason: &str) -> ExecError {
        let reason = self.url.redact(reason);
        tracing::warn!(
            connection = %self.connection,
            class = %self.class,
            url = %self.url,
            error = %reason,
            "data store unavailable"
        );
        failure(
            FailureCode::StoreUnavailable,
            format!(
                "connection {} ({} credential) is unavailable: {reason}",
                self.connection, self.class
            ),
        )
    }

    /// Maps a driver error from a statement run with the `class` credential: `database`
    /// classifies errors the store raised (timeouts, the read-only guard); a transport failure
    /// is `store_unavailable` for a read and `outcome_unknown` for anything else, because the
    /// change may have reached the store before the connection failed; the rest is
    /// `store_error`.
    pub(crate) fn error(
        &self,
        e: &sqlx::Error,
        class: OperationClass,
        database: impl FnOnce(&dyn sqlx::error::DatabaseError) -> FailureCode,
    ) -> ExecError {
        match e {
            sqlx::Error::Database(db) => {
                let code = database(db.as_ref());
                failure(code, self.url.redact(db.message()))
            }
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed
                if class != OperationClass::Read =>
            {
                let reason = self.url.redact(&e.to_string());
                tracing::warn!(connection = %self.connection, %class, url = %self.url, error = %reason, "connection lost during a change");
                failure(
                    FailureCode::OutcomeUnknown,
                    format!(
                        "the connection failed while the change was in flight ({reason}); it may or may not have been applied and will not be retried"
                    ),
                )
            }
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Configuration(_) => self.unavailable(&e.to_string()),
            other => failure(FailureCode::StoreError, self.url.redact(&other.to_string())),
        }
    }

    pub(crate) async fn close(&self) {
        self.pool.close().await;
    }
}
