//! Executors: the only code that touches data-store credentials and drivers. Each takes a
//! [`Permit`], so nothing runs that did not pass the gate, and runs it with the credential of
//! the permit's class under the guards of [`Limits`] (EX-3): reads in a read-only transaction
//! (or a read-only connection, or a read-only ACL user for Redis), every statement with a
//! server-side timeout, results capped by rows and bytes. Writes and DDL run in a transaction
//! where the store has one and are never retried.
//!
//! Every driver message passes through [`url::ConnectionUrl::redact`] before it leaves an
//! executor, and no error names a store's address (SEC-4).

mod limits;
pub mod mysql;
mod pool;
pub mod postgres;
pub mod redis;
pub mod sink;
mod sqlite;
pub mod url;
mod values;

use std::collections::HashMap;

use portcullis_core::{ConnectionKind, ConnectionName, OperationClass};
use portcullis_proto::api::ExecError;

use crate::config::{AgentConfig, TargetConfig};
use crate::permit::Permit;

pub use limits::Limits;
pub use mysql::MySqlTarget;
pub use postgres::PgTarget;
pub use redis::RedisTarget;
pub use sink::{RowSink, Summary};
pub use sqlite::SqliteTarget;

/// The stable codes of execution failures (`ExecError::code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureCode {
    /// The store cancelled the statement at the signed timeout (nothing was changed), or it
    /// did not answer a read in time.
    StatementTimeout,
    /// No connection could be had: the store is down, unreachable, refused the credential or
    /// every pooled connection stayed busy.
    StoreUnavailable,
    /// The store rejected or failed the statement; the message is the store's, redacted.
    StoreError,
    /// The read-only guard (transaction, connection or ACL user) blocked a change (EX-3).
    ReadOnlyViolation,
    /// A write or DDL got no answer in time: it may or may not have been applied. Never
    /// retried.
    OutcomeUnknown,
    /// The statement could not be prepared for the store (it passed the gate's parser, so this
    /// means the executor's own parse disagrees).
    StatementDenied,
    /// A preview was refused: a table it touches would not be rolled back.
    PreviewRefused,
}

impl FailureCode {
    pub const fn as_str(self) -> &'static str {
        match self {
            FailureCode::StatementTimeout => "statement_timeout",
            FailureCode::StoreUnavailable => "store_unavailable",
            FailureCode::StoreError => "store_error",
            FailureCode::ReadOnlyViolation => "read_only_violation",
            FailureCode::OutcomeUnknown => "outcome_unknown",
            FailureCode::StatementDenied => "statement_denied",
            FailureCode::PreviewRefused => "preview_refused",
        }
    }
}

/// An execution failure with its code. `message` must already be redacted.
pub(crate) fn failure(code: FailureCode, message: impl Into<String>) -> ExecError {
    ExecError {
        code: code.as_str().to_owned(),
        message: message.into(),
    }
}

/// The failure when the store did not answer within the timeout and its grace.
pub(crate) fn no_answer(class: OperationClass, limits: Limits) -> ExecError {
    if class == OperationClass::Read {
        failure(
            FailureCode::StatementTimeout,
            format!("the statement ran longer than {} ms", limits.timeout_ms()),
        )
    } else {
        failure(
            FailureCode::OutcomeUnknown,
            format!(
                "the store did not answer within {} ms; the change may or may not have been applied and will not be retried",
                limits.timeout_ms()
            ),
        )
    }
}

/// An open connection to one configured data store.
#[derive(Debug)]
pub enum Target {
    Sqlite(SqliteTarget),
    Postgres(PgTarget),
    Mysql(MySqlTarget),
    Redis(RedisTarget),
}

/// All targets of this agent, opened once at start (pools, not per-job connects). Network
/// stores connect lazily, so a store that is down does not stop the agent: its jobs fail with
/// `store_unavailable` until it is back.
#[derive(Debug, Default)]
pub struct Targets {
    by_name: HashMap<ConnectionName, Target>,
}

impl Targets {
    pub async fn open(config: &AgentConfig) -> anyhow::Result<Targets> {
        let mut by_name = HashMap::new();
        for c in &config.connections {
            by_name.insert(c.name.clone(), Target::open(c).await?);
        }
        Ok(Targets { by_name })
    }

    /// Executes a permitted statement, sending its header and rows to `sink` and returning
    /// how it ended. The caller finishes the sink.
    pub async fn execute(
        &self,
        permit: &Permit<'_>,
        sink: &mut RowSink,
    ) -> Result<Summary, ExecError> {
        match self.by_name.get(&permit.target().name) {
            Some(Target::Sqlite(t)) => t.execute(permit, sink).await,
            Some(Target::Postgres(t)) => t.execute(permit, sink).await,
            Some(Target::Mysql(t)) => t.execute(permit, sink).await,
            Some(Target::Redis(t)) => t.execute(permit, sink).await,
            None => Err(ExecError {
                code: "capability_connection".into(),
                message: "no such connection on this agent".into(),
            }),
        }
    }

    /// Closes every pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        for target in self.by_name.values() {
            match target {
                Target::Sqlite(t) => t.close().await,
                Target::Postgres(t) => t.close().await,
                Target::Mysql(t) => t.close().await,
                Target::Redis(_) => {}
            }
        }
    }
}

impl Target {
    pub async fn open(c: &TargetConfig) -> anyhow::Result<Target> {
        match c.kind {
            ConnectionKind::Sqlite => {
                let path = c
                    .path
                    .as_deref()
                    .ok_or_else(|| anyhow::anyhow!("connection {}: sqlite needs path", c.name))?;
                Ok(Target::Sqlite(SqliteTarget::open(path).await?))
            }
            ConnectionKind::Postgres => Ok(Target::Postgres(PgTarget::open(c)?)),
            ConnectionKind::Mysql => Ok(Target::Mysql(MySqlTarget::open(c)?)),
            ConnectionKind::Redis => Ok(Target::Redis(RedisTarget::open(c)?)),
            other => anyhow::bail!(
                "connection {}: kind {other} is not supported by this agent yet",
                c.name
            ),
        }
    }
}
