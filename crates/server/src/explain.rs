//! Context for approvers: a SQL request waiting for approval gets a plain `EXPLAIN` (never
//! `ANALYZE`), obtained through an agent with the same signed-token path as any read, and an
//! `UPDATE` or `DELETE` also a preview: the agent runs it inside a transaction it always
//! rolls back (the token says so, signed) and reports how many rows it would change. Both are
//! stored with the request; neither changes the request's state.

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
    binding(b"portcullis/explain/v1\0", request_id)
}

fn binding(domain: &[u8], request_id: Uuid) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(domain);
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
        .execute(tx.conn().await?)
        .await?;
    let event = Event {
        actor: format!("agent:{}", agent.name),
        action: Action::RequestExplained,
        target: format!("request:{request_id}"),
        outcome,
        details,
    };
    finish(tx, ctx, job_id, event, now).await
}

/// Marks a context job done and records its event, in the transaction that stored its
/// outcome.
async fn finish(
    mut tx: AuditTx,
    ctx: &Context,
    job_id: Uuid,
    event: Event,
    now: i64,
) -> Result<(), ApiError> {
    sqlx::query("UPDATE jobs SET state = 'done' WHERE id = ?")
        .bind(job_id.to_string())
        .execute(tx.conn().await?)
        .await?;
    tx.append_at(ctx, event, now).await?;
    tx.commit().await?;
    Ok(())
}

/// Whether a write awaiting approval gets a rolled-back preview: `UPDATE` and `DELETE` only,
/// on stores with transactional writes. `INSERT` is left out (sequences and auto-increment
/// counters move even when rolled back), as are DDL (MySQL commits it implicitly) and any
/// statement naming a sequence function. The agent checks the same again before running.
pub(crate) fn preview_eligible(
    kind: ConnectionKind,
    class: OperationClass,
    statement: &str,
) -> bool {
    class == OperationClass::Write
        && matches!(
            kind,
            ConnectionKind::Postgres | ConnectionKind::Mysql | ConnectionKind::Sqlite
        )
        && portcullis_core::sql::previewable(statement)
}

/// What a preview job's token binds instead of an approval: the request it previews.
pub(crate) fn preview_binding(request_id: Uuid) -> [u8; 32] {
    binding(b"portcullis/preview/v1\0", request_id)
}

/// Stores how many rows the write would change (or why that is unknown) with the request.
pub(crate) async fn record_preview(
    mut tx: AuditTx,
    agent: &AgentPrincipal,
    ctx: &Context,
    job_id: Uuid,
    request_id: Uuid,
    report: JobReport,
    now: i64,
) -> Result<(), ApiError> {
    let (preview, outcome) = match report {
        JobReport::Succeeded { result } => (
            json!({ "rows_affected": result.affected_rows.unwrap_or(0), "rolled_back": true }),
            Outcome::Success,
        ),
        JobReport::Failed { error } | JobReport::Refused { error } => {
            let error = sanitize(error);
            (
                json!({ "error": { "code": error.code, "message": error.message } }),
                Outcome::Failure,
            )
        }
    };
    sqlx::query("UPDATE requests SET preview = ? WHERE id = ?")
        .bind(preview.to_string())
        .bind(request_id.to_string())
        .execute(tx.conn().await?)
        .await?;
    let event = Event {
        actor: format!("agent:{}", agent.name),
        action: Action::RequestPreviewed,
        target: format!("request:{request_id}"),
        outcome,
        details: preview,
    };
    finish(tx, ctx, job_id, event, now).await
}
