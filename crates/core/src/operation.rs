//! One entry point that classifies an operation for any connection kind. The server uses it
//! to decide, and the agent uses it again to refuse anything above the signed class.

use crate::names::{ConnectionKind, OperationClass};
use crate::redis::RedisCommand;
use crate::sql::{SqlDialect, SqlStatement};

/// Why an operation cannot be classified (and so is denied).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassifyError {
    #[error(transparent)]
    Sql(#[from] crate::sql::SqlError),
    #[error(transparent)]
    Redis(#[from] crate::redis::RedisError),
    #[error("operations on {0} connections are not supported yet")]
    UnsupportedKind(ConnectionKind),
}

impl ClassifyError {
    /// A stable snake_case reason code.
    pub fn code(&self) -> &'static str {
        match self {
            ClassifyError::Sql(e) => e.code(),
            ClassifyError::Redis(e) => e.code(),
            ClassifyError::UnsupportedKind(_) => "unsupported_kind",
        }
    }
}

/// What the server decides on: the class and, for SQL, the tables touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub class: OperationClass,
    /// Lower-cased, deduplicated and sorted; empty for Redis.
    pub tables: Vec<String>,
}

/// Classifies `text` as an operation on a `kind` connection.
pub fn classify(kind: ConnectionKind, text: &str) -> Result<OperationClass, ClassifyError> {
    analyse(kind, text).map(|op| op.class)
}

/// Classifies `text` and lists the tables it touches.
pub fn analyse(kind: ConnectionKind, text: &str) -> Result<Operation, ClassifyError> {
    if let Some(dialect) = SqlDialect::for_kind(kind) {
        let statement = SqlStatement::parse(dialect, text)?;
        return Ok(Operation {
            class: statement.class(),
            tables: statement.tables().to_vec(),
        });
    }
    match kind {
        ConnectionKind::Redis => Ok(Operation {
            class: RedisCommand::parse(text)?.class(),
            tables: Vec::new(),
        }),
        other => Err(ClassifyError::UnsupportedKind(other)),
    }
}
