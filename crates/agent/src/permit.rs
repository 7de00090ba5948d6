//! The gate between a job and its execution. [`check`] verifies the execution token against
//! the agent's own pinned keys and expectations (EX-1), then the agent's own capability list
//! (AZ-5), then classifies the statement again and refuses anything above the signed class.
//! Only `check` can mint a [`Permit`], and executors take one.

use portcullis_core::{ConnectionKind, OperationClass, classify};
use portcullis_proto::agent::JobAssignment;
use portcullis_proto::token::{Expected, ReplayCache, TokenClaims, TrustedKeys, verify};

use crate::config::{AgentConfig, TargetConfig};

/// Proof that a job passed every check. Fields are private.
#[derive(Debug)]
pub struct Permit<'a> {
    claims: TokenClaims,
    statement: &'a str,
    target: &'a TargetConfig,
}

impl<'a> Permit<'a> {
    pub fn class(&self) -> OperationClass {
        self.claims.class
    }
    pub fn statement(&self) -> &'a str {
        self.statement
    }
    pub fn target(&self) -> &'a TargetConfig {
        self.target
    }
    pub fn kind(&self) -> ConnectionKind {
        self.target.kind
    }
    pub fn row_cap(&self) -> u64 {
        self.claims.row_cap
    }
    pub fn timeout_ms(&self) -> u64 {
        self.claims.timeout_ms
    }
    pub fn dry_run(&self) -> bool {
        self.claims.dry_run
    }
}

/// Why a job was refused before anything ran. `code` is stable; `message` is for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

fn refuse(code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

pub fn check<'a>(
    config: &'a AgentConfig,
    keys: &TrustedKeys,
    replay: &mut ReplayCache,
    job: &'a JobAssignment,
    now_ms: i64,
) -> Result<Permit<'a>, Refusal> {
    let expected = Expected {
        agent: &config.name,
        job_id: job.job_id,
        statement: &job.statement,
        now_ms,
    };
    let verified = verify(keys, &job.token, &expected, replay)
        .map_err(|e| refuse(e.code(), format!("execution token refused: {e}")))?;
    let claims = verified.claims().clone();
    // From here on only signed values are used, never the unsigned copies in the assignment.
    let target = config.target(&claims.connection).ok_or_else(|| {
        refuse(
            "capability_connection",
            format!("this agent does not serve connection {}", claims.connection),
        )
    })?;
    if target.environment != claims.environment {
        return Err(refuse(
            "capability_environment",
            format!(
                "connection {} is {} here, the token says {}",
                target.name, target.environment, claims.environment
            ),
        ));
    }
    if !target.allow.contains(&claims.class) {
        return Err(refuse(
            "capability_class",
            format!(
                "this agent does not run {} operations on {}",
                claims.class, target.name
            ),
        ));
    }
    let class = classify(target.kind, &job.statement)
        .map_err(|e| refuse("statement_denied", format!("statement refused: {e}")))?;
    if class > claims.class {
        return Err(refuse(
            "class_escalation",
            format!(
                "the statement is {class} but the token allows only {}",
                claims.class
            ),
        ));
    }
    // A preview (signed) runs only what a rollback fully undoes: a plain UPDATE or DELETE on
    // a SQL store, never a read path left open nor DDL.
    if claims.dry_run
        && (claims.class != portcullis_core::OperationClass::Write
            || !matches!(
                target.kind,
                ConnectionKind::Postgres | ConnectionKind::Mysql | ConnectionKind::Sqlite
            )
            || !portcullis_core::sql::previewable(&job.statement))
    {
        return Err(refuse(
            "preview_refused",
            "only a plain UPDATE or DELETE on a SQL store can be previewed",
        ));
    }
    Ok(Permit {
        claims,
        statement: &job.statement,
        target,
    })
}
