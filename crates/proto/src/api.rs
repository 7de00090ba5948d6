//! The public REST API's request and response bodies (`/api/v1`).

use portcullis_core::policy::{Decision, Step};
use portcullis_core::{
    ConnectionKind, ConnectionName, Environment, OperationClass, RequestState, Role,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::openapi;

/// `POST /api/v1/requests`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    #[schema(value_type = openapi::ConnectionName)]
    pub connection: ConnectionName,
    pub statement: String,
    pub reason: String,
    /// Relay the result row by row through `GET /api/v1/requests/{id}/result` instead of
    /// holding it for `wait`: for results too large to hold (see `stream`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
}

/// Timestamps are RFC 3339 strings in UTC with microseconds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct RequestView {
    pub id: Uuid,
    #[schema(value_type = openapi::ConnectionName)]
    pub connection: ConnectionName,
    #[schema(value_type = openapi::ConnectionKind)]
    pub kind: ConnectionKind,
    #[schema(value_type = openapi::Environment)]
    pub environment: Environment,
    #[schema(value_type = openapi::OperationClass)]
    pub class: OperationClass,
    #[schema(value_type = openapi::RequestState)]
    pub state: RequestState,
    #[schema(value_type = openapi::Decision)]
    pub decision: Decision,
    pub requester: String,
    pub reason: String,
    pub statement: String,
    pub created_at: String,
    pub updated_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatched_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ExecError>,
    /// The plain `EXPLAIN` of a SQL request awaiting approval, obtained through an agent:
    /// `{"columns": […], "rows": […]}`, or `{"error": {…}}` when it could not be had.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explain: Option<serde_json::Value>,
    /// The approval steps the policy requires, in order (AZ-3); empty when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<openapi::Step>)]
    pub steps: Vec<Step>,
    /// The step awaiting approvals (0-based); equal to `steps.len()` once all are met.
    #[serde(default)]
    pub current_step: u32,
    /// Every decision so far, oldest first (in single-request views; lists leave it out).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<ApprovalView>,
    /// The policy rule that decided (its name, or `#N`), or none for the built-in default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_rule: Option<String>,
    /// For an `UPDATE` or `DELETE` awaiting approval: `{"rows_affected": n, "rolled_back":
    /// true}` from a dry run an agent rolled back, or `{"error": {…}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<serde_json::Value>,
    /// Set when the request ran under a break-glass grant (AZ-4): the grant's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_glass: Option<String>,
    /// Who reviewed a break-glass request afterwards, and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reviewed_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reviewed_at: Option<String>,
}

/// One approver's decision on a request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct ApprovalView {
    pub approver: String,
    #[schema(value_type = openapi::Role)]
    pub role: Role,
    /// The step it counted towards (0-based).
    pub step: u32,
    /// `approve` or `reject`.
    pub decision: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    pub at: String,
}

/// `POST /api/v1/requests/{id}/approve` and `/reject`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecideRequest {
    /// Why; required to reject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// `POST /api/v1/policy/check`: how policy would decide, without running anything.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyCheck {
    #[schema(value_type = openapi::ConnectionName)]
    pub connection: ConnectionName,
    pub statement: String,
    /// Decide as a requester with this role (default: the caller's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<openapi::Role>)]
    pub role: Option<Role>,
}

/// The answer to a policy check.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PolicyVerdict {
    #[schema(value_type = openapi::ConnectionName)]
    pub connection: ConnectionName,
    #[schema(value_type = openapi::Environment)]
    pub environment: Environment,
    #[schema(value_type = openapi::OperationClass)]
    pub class: OperationClass,
    #[schema(value_type = openapi::Role)]
    pub role: Role,
    pub tables: Vec<String>,
    #[schema(value_type = openapi::Decision)]
    pub decision: Decision,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<openapi::Step>)]
    pub steps: Vec<Step>,
    /// The rule that matched (`name` or `#N`), or none for the built-in default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Each rule checked before it, and the matcher it failed on.
    pub skipped: Vec<SkippedRule>,
    /// A sentence saying why.
    pub because: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SkippedRule {
    pub rule: String,
    /// `connection`, `environment`, `class`, `role` or `tables`.
    pub failed_on: String,
}

/// A failure reported for an execution, safe to show to the requester.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct ExecError {
    pub code: String,
    pub message: String,
}

/// One column of a result set: its name and the store's type name.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub type_name: String,
}

/// The result of an execution. Values are JSON: integers as numbers, exact decimals as
/// strings, bytes as base64 strings, NULL as null.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ExecResult {
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<serde_json::Value>>,
    pub row_count: u64,
    pub truncated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affected_rows: Option<u64>,
}

/// The answer to creating or waiting for a request: the request, and its result when it
/// finished within the wait.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RequestOutcome {
    pub request: RequestView,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ExecResult>,
}

/// `POST /api/v1/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// 1-64 letters, digits, `-`, `_`, `.` or `@`.
    #[schema(pattern = "^[A-Za-z0-9._@-]{1,64}$")]
    pub name: String,
    #[schema(value_type = openapi::Role)]
    pub role: Role,
    /// Lifetime in seconds; mandatory, and at most the server's configured maximum.
    #[schema(minimum = 1)]
    pub ttl_seconds: u64,
    /// Environments the token may act on; absent means all.
    #[serde(default)]
    #[schema(value_type = Option<Vec<openapi::Environment>>)]
    pub environments: Option<Vec<Environment>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    #[schema(value_type = openapi::Role)]
    pub role: Role,
    pub owner: String,
    pub created_at: String,
    pub expires_at: String,
    #[serde(default)]
    #[schema(value_type = Option<Vec<openapi::Environment>>)]
    pub environments: Option<Vec<Environment>>,
    #[serde(default)]
    pub last_used_at: Option<String>,
    #[serde(default)]
    pub last_used_addr: Option<String>,
    #[serde(default)]
    pub revoked_at: Option<String>,
}

/// The only time a token's secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenCreated {
    pub token: String,
    pub info: TokenView,
}

/// `POST /api/v1/agents`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAgent {
    /// 1-64 letters, digits, `-`, `_`, `.` or `@`.
    #[schema(pattern = "^[A-Za-z0-9._@-]{1,64}$")]
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct AgentView {
    pub name: String,
    pub created_at: String,
    #[serde(default)]
    pub last_seen_at: Option<String>,
    pub connected: bool,
    #[schema(value_type = Vec<openapi::ConnectionName>)]
    pub connections: Vec<ConnectionName>,
    #[serde(default)]
    pub revoked_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentCreated {
    pub token: String,
    pub info: AgentView,
}

/// A connection the caller may use: never an address or a credential.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct ConnectionView {
    #[schema(value_type = openapi::ConnectionName)]
    pub name: ConnectionName,
    #[schema(value_type = openapi::ConnectionKind)]
    pub kind: ConnectionKind,
    #[schema(value_type = openapi::Environment)]
    pub environment: Environment,
    #[schema(value_type = Vec<openapi::OperationClass>)]
    pub classes: Vec<OperationClass>,
}

/// `GET /api/v1/public-key`: for operators to pin in agent configs. Never a trust decision.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct PublicKeyView {
    pub algorithm: String,
    pub key_id: String,
    pub public_key: String,
}

/// One audit event as exported (JSON Lines) and listed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct AuditEventView {
    pub seq: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub correlation_id: String,
    pub client_addr: String,
    pub details: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

/// `GET /api/v1/audit/verify`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct AuditVerifyView {
    pub ok: bool,
    pub events: u64,
    pub head_seq: i64,
    #[serde(default)]
    pub first_bad_seq: Option<i64>,
    #[serde(default)]
    pub problem: Option<String>,
}

/// `GET /api/v1/me`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct WhoAmI {
    pub principal: String,
    #[schema(value_type = openapi::Role)]
    pub role: Role,
    #[schema(value_type = Vec<openapi::Permission>)]
    pub permissions: Vec<portcullis_core::Permission>,
}

/// A stored alert (AUD-5), from `GET /api/v1/alerts`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct AlertView {
    pub seq: i64,
    pub at: String,
    /// `warning` or `critical`.
    pub severity: String,
    /// The audit action that raised it.
    pub kind: String,
    pub actor: String,
    pub target: String,
    pub details: serde_json::Value,
}
