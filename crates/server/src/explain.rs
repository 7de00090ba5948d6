//! Context for approvers: a SQL request waiting for approval gets a plain `EXPLAIN` (never
//! `ANALYZE`), obtained through an agent with the same signed-token path as any read. The
//! plan is stored with the request; explaining never changes the request's state.

use portcullis_core::{ConnectionKind, OperationClass};
use portcullis_proto::agent::JobReport;
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::audit::{Action, AuditTx, Context, Event, Outcome};
use crate::auth::AgentPrincipal;
use crate::error::ApiError;
use crate::lifecycle::sanitize;

/// The plain `EXPLAIN` (never `ANALYZE`) approvers see for a SQL read or write waiting for
/// approval. DDL is not explained (MySQL cannot, and its plan says little). On MySQL/MariaDB
/// only reads are: the server refuses `EXPLAIN UPDATE …` inside the read-only transaction
/// every agent read runs in, and the read path is not loosened to get a plan.
pub(crate) fn explain_statement(
    kind: ConnectionKind,
    class: OperationClass,
    statement: &str,
) -> Option<String> {
    if !matches!(class, OperationClass::Read | OperationClass::Write) {
        return None;
    }
    let text = statement.trim().trim_end_matches(';');
    match kind {
        ConnectionKind::Postgres => Some(format!("EXPLAIN {text}")),
        ConnectionKind::Mysql if class == OperationClass::Read => Some(format!("EXPLAIN {text}")),
        ConnectionKind::Mysql => None,
        ConnectionKind::Sqlite => Some(format!("EXPLAIN QUERY PLAN {text}")),
        ConnectionKind::Redis | ConnectionKind::Http => None,
    }
}

/// What an explain job's token binds instead of an approval: the request it explains.
pub(crate) fn explain_binding(request_id: Uuid) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"portcullis/explain/v1\0");
    h.update(request_id.as_bytes());
    h.finalize().into()
}

/// Stores the plan (or why there is none) with the request for approvers. The request's state
/// does not change: explaining is not executing.
pub(crate) async fn record_explain(
    mut tx: AuditTx,
    agent: &AgentPrincipal,
    ctx: &Context,
    job_id: Uuid,
    request_id: Uuid,
    report: JobReport,
    now: i64,
) -> Result<(), ApiError> {
    let (plan, outcome, details) = match report {
        JobReport::Succeeded { result } => {
            let columns: Vec<&str> = result.columns.iter().map(|c| c.name.as_str()).collect();
            let rows = result.row_count;
            (
                json!({ "columns": columns, "rows": result.rows }),
                Outcome::Success,
                json!({ "rows": rows }),
            )
        }
        JobReport::Failed { error } | JobReport::Refused { error } => {
            let error = sanitize(error);
            let details = json!({ "error": error.code });
            (
                json!({ "error": { "code": error.code, "message": error.message } }),
                Outcome::Failure,
                details,
            )
        }
    };
    sqlx::query("UPDATE requests SET explain = ? WHERE id = ?")
        .bind(plan.to_string())
        .bind(request_id.to_string())
        .execute(tx.conn())
        .await?;
    sqlx::query("UPDATE jobs SET state = 'done' WHERE id = ?")
        .bind(job_id.to_string())
        .execute(tx.conn())
        .await?;
    let event = Event {
        actor: format!("agent:{}", agent.name),
        action: Action::RequestExplained,
        target: format!("request:{request_id}"),
        outcome,
        details,
    };
    tx.append_at(ctx, event, now).await?;
    tx.commit().await?;
    Ok(())
}
