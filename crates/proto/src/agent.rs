//! The agent protocol (`/api/v1/agent/*`): an agent connects out, long-polls for a job, and
//! reports the outcome. Only agent tokens can call these routes.

use portcullis_core::{ConnectionKind, ConnectionName, Environment, OperationClass};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::api::{ExecError, ExecResult};
use crate::openapi;
use crate::token::ExecutionToken;

/// A connection the agent serves, as declared in its own config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct ServedConnection {
    #[schema(value_type = openapi::ConnectionName)]
    pub name: ConnectionName,
    #[schema(value_type = openapi::ConnectionKind)]
    pub kind: ConnectionKind,
    #[schema(value_type = openapi::Environment)]
    pub environment: Environment,
}

/// `POST /api/v1/agent/claim`: wait up to `wait_ms` for a job on one of `connections`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    pub connections: Vec<ServedConnection>,
    pub wait_ms: u64,
}

/// A leased job. The agent trusts nothing here until the token verifies against its own
/// pinned keys and matches the statement.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobAssignment {
    pub job_id: Uuid,
    pub request_id: Uuid,
    #[schema(value_type = openapi::ConnectionName)]
    pub connection: ConnectionName,
    #[schema(value_type = openapi::OperationClass)]
    pub class: OperationClass,
    pub statement: String,
    /// The signed execution token, base64url without padding.
    #[schema(value_type = String)]
    pub token: ExecutionToken,
    pub lease_ms: u64,
}

/// `POST /api/v1/agent/jobs/{id}/report`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum JobReport {
    Succeeded {
        result: ExecResult,
    },
    /// Execution was attempted and failed in the data store.
    Failed {
        error: ExecError,
    },
    /// The agent refused before executing anything (token, capability or class check).
    Refused {
        error: ExecError,
    },
}
