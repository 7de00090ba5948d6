//! Executors: the only code that touches data-store credentials and drivers. Each takes a
//! [`Permit`], so nothing runs that did not pass the gate.

mod sqlite;

use std::collections::HashMap;

use portcullis_core::{ConnectionKind, ConnectionName};
use portcullis_proto::api::{ExecError, ExecResult};

use crate::config::{AgentConfig, TargetConfig};
use crate::permit::Permit;

pub use sqlite::SqliteTarget;

/// An open connection to one configured data store.
#[derive(Debug)]
pub enum Target {
    Sqlite(SqliteTarget),
}

/// All targets of this agent, opened once at start (pools, not per-job connects).
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

    pub async fn execute(&self, permit: &Permit<'_>) -> Result<ExecResult, ExecError> {
        match self.by_name.get(&permit.target().name) {
            Some(Target::Sqlite(t)) => t.execute(permit).await,
            None => Err(ExecError {
                code: "capability_connection".into(),
                message: "no such connection on this agent".into(),
            }),
        }
    }
}

impl Target {
    async fn open(c: &TargetConfig) -> anyhow::Result<Target> {
        match c.kind {
            ConnectionKind::Sqlite => {
                let path = c
                    .path
                    .as_deref()
                    .ok_or_else(|| anyhow::anyhow!("connection {}: sqlite needs path", c.name))?;
                Ok(Target::Sqlite(SqliteTarget::open(path).await?))
            }
            other => anyhow::bail!(
                "connection {}: kind {other} is not supported by this agent yet",
                c.name
            ),
        }
    }
}

/// An execution error from the store, with a stable code.
pub(crate) fn store_error(code: &str, e: impl std::fmt::Display) -> ExecError {
    ExecError {
        code: code.to_owned(),
        message: e.to_string(),
    }
}
