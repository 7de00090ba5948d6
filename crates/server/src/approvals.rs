//! Approvals (AZ-3): people with `requests:approve`, in a session with a fresh step-up
//! (never through an API token), approve or reject a pending request step by step. The
//! requester never approves their own request, and nobody counts twice (one decision per
//! person per request, enforced by the table's key). Each decision records who, when, why and
//! the plan that was on show. Approving approves exactly that statement (its hash) on that
//! connection: the execution token carries a hash over the request, its approvers and the
//! statement hash.

use portcullis_core::policy::{Source, Step};
use portcullis_core::{ConnectionName, RequestState};
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::Row;
use uuid::Uuid;

use crate::AppState;
use crate::audit::{Action, AuditTx, Context, Event, Outcome};
use crate::auth::UserPrincipal;
use crate::clock;
use crate::dispatch::Finished;
use crate::error::ApiError;
use crate::lifecycle::{self, parse};

/// Approve or reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Approve,
    Reject,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::Approve => "approve",
            Verdict::Reject => "reject",
        }
    }
}

const MAX_COMMENT: usize = 500;

/// Records a decision; returns `true` when it completed the last step and the request is
/// now approved (its job queued).
pub async fn decide(
    state: &AppState,
    who: &UserPrincipal,
    ctx: &Context,
    id: Uuid,
    verdict: Verdict,
    comment: Option<String>,
) -> Result<bool, ApiError> {
    if !who.session {
        return Err(refuse(state, ctx, who, id, "approval_needs_session").await);
    }
    let comment = comment
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty());
    if comment
        .as_deref()
        .is_some_and(|c| c.chars().count() > MAX_COMMENT || c.chars().any(char::is_control))
    {
        return Err(ApiError::bad_request(format!(
            "comment must be at most {MAX_COMMENT} printable characters"
        )));
    }
    if verdict == Verdict::Reject && comment.is_none() {
        return Err(ApiError::bad_request(
            "say why you reject (comment); the requester sees it",
        ));
    }
    let now = clock::now_ms();
    // Checked on a reader; the write transaction below re-reads what can change meanwhile.
    let row = sqlx::query(
        "SELECT state, requester_user_id, steps, current_step, connection, statement_sha256, explain, created_at_ms FROM requests WHERE id = ?",
    )
    .bind(id.to_string())
    .fetch_optional(state.store.reader())
    .await?
    .ok_or(ApiError::NotFound)?;
    let current: RequestState = parse(row.try_get::<String, _>(0)?)?;
    let requester: String = row.try_get(1)?;
    let steps: Vec<Step> = row
        .try_get::<Option<String>, _>(2)?
        .map(|s| serde_json::from_str(&s))
        .transpose()
        .map_err(|e| ApiError::Internal(e.into()))?
        .unwrap_or_default();
    let step_index = usize::try_from(row.try_get::<i64, _>(3)?).unwrap_or(usize::MAX);
    let connection: ConnectionName = parse(row.try_get::<String, _>(4)?)?;
    let statement_hash: Vec<u8> = row.try_get(5)?;
    let explain: Option<String> = row.try_get(6)?;
    let created_at: i64 = row.try_get(7)?;
    if current != RequestState::PendingApproval {
        return Err(ApiError::InvalidState {
            detail: format!("a request in state {current} takes no decisions"),
        });
    }
    if now - created_at > (state.config.execution.approval_timeout_secs as i64) * 1000 {
        return Err(ApiError::InvalidState {
            detail: "the request waited too long for approval and is expiring".into(),
        });
    }
    if requester == who.user_id {
        return Err(refuse(state, ctx, who, id, "self_approval").await);
    }
    let Some(step) = steps.get(step_index) else {
        return Err(ApiError::Internal(anyhow::anyhow!(
            "request {id} is pending without a step to approve"
        )));
    };
    if !step.roles.contains(&who.role) {
        return Err(refuse(state, ctx, who, id, "role_not_in_step").await);
    }

    let mut tx = AuditTx::begin(&state.store, &state.audit).await?;
    // Re-read inside the write transaction: another decision may have landed meanwhile.
    let (still, still_step): (String, i64) =
        sqlx::query_as("SELECT state, current_step FROM requests WHERE id = ?")
            .bind(id.to_string())
            .fetch_one(tx.conn().await?)
            .await?;
    if still != RequestState::PendingApproval.as_str()
        || usize::try_from(still_step).ok() != Some(step_index)
    {
        return Err(ApiError::Conflict {
            detail: "the request changed while you decided; look again".into(),
        });
    }
    let inserted = sqlx::query(
        "INSERT INTO approvals (request_id, approver_user_id, approver, role, step, decision, comment, explain_shown, at_ms)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (request_id, approver_user_id) DO NOTHING",
    )
    .bind(id.to_string())
    .bind(&who.user_id)
    .bind(&who.user_name)
    .bind(who.role.as_str())
    .bind(step_index as i64)
    .bind(verdict.as_str())
    .bind(&comment)
    .bind(&explain)
    .bind(now)
    .execute(tx.conn().await?)
    .await?
    .rows_affected();
    if inserted == 0 {
        drop(tx);
        return Err(refuse(state, ctx, who, id, "already_decided").await);
    }
    let target = format!("request:{id}");
    let given: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM approvals WHERE request_id = ? AND step = ? AND decision = 'approve'",
    )
    .bind(id.to_string())
    .bind(step_index as i64)
    .fetch_one(tx.conn().await?)
    .await?;
    let event = Event {
        actor: who.display(),
        action: Action::ApprovalRecorded,
        target: target.clone(),
        outcome: Outcome::Success,
        details: json!({
            "decision": verdict.as_str(),
            "step": step_index + 1,
            "steps": steps.len(),
            "approvals": given,
            "required": step.approvals,
            "comment": comment,
            "explain_shown": explain.is_some(),
        }),
    };
    tx.append_at(ctx, event, now).await?;
    if verdict == Verdict::Reject {
        lifecycle::end_undispatched(&mut tx, id, RequestState::Rejected, now).await?;
        let event = Event {
            actor: who.display(),
            action: Action::RequestRejected,
            target,
            outcome: Outcome::Success,
            details: json!({ "step": step_index + 1, "comment": comment }),
        };
        tx.append_at(ctx, event, now).await?;
        // Published once committed, even if the approver is gone by then.
        let publish = state.clone();
        tx.commit_then(move || {
            let rejected = Finished {
                state: RequestState::Rejected,
                result: None,
                error: None,
                view: None,
            };
            publish.dispatch.complete(id, rejected, now);
        })
        .await?;
        return Ok(false);
    }
    let step_done = u32::try_from(given).unwrap_or(0) >= step.approvals;
    let last = step_index + 1 >= steps.len();
    if step_done && !last {
        sqlx::query("UPDATE requests SET current_step = ?, updated_at_ms = ? WHERE id = ?")
            .bind((step_index + 1) as i64)
            .bind(now)
            .bind(id.to_string())
            .execute(tx.conn().await?)
            .await?;
    }
    let approved = step_done && last;
    if approved {
        let approvers: Vec<String> = sqlx::query_scalar(
            "SELECT approver_user_id FROM approvals WHERE request_id = ? AND decision = 'approve' ORDER BY approver_user_id",
        )
        .bind(id.to_string())
        .fetch_all(tx.conn().await?)
        .await?;
        let hash = approval_hash(id, &approvers, &statement_hash);
        sqlx::query(
            "UPDATE requests SET state = 'approved', approved_at_ms = ?, updated_at_ms = ?, current_step = ?, approval_sha256 = ? WHERE id = ?",
        )
        .bind(now)
        .bind(now)
        .bind(steps.len() as i64)
        .bind(&hash[..])
        .bind(id.to_string())
        .execute(tx.conn().await?)
        .await?;
        lifecycle::queue_execution(&mut tx, id, &connection, now).await?;
        let event = Event {
            actor: who.display(),
            action: Action::RequestApproved,
            target,
            outcome: Outcome::Success,
            details: json!({ "auto": false, "approvers": approvers.len(), "approval_sha256": hex::encode(hash) }),
        };
        tx.append_at(ctx, event, now).await?;
    }
    // Announced once committed, even if the approver is gone by then: an approved job to
    // the claims waiting for one.
    let announce = state.clone();
    tx.commit_then(move || {
        announce.dispatch.progress(id);
        if approved {
            announce.dispatch.job_queued(&connection);
        }
    })
    .await?;
    Ok(approved)
}

/// Audits a refused decision and answers 403 with a stable reason.
async fn refuse(
    state: &AppState,
    ctx: &Context,
    who: &UserPrincipal,
    id: Uuid,
    reason: &'static str,
) -> ApiError {
    let event = Event {
        actor: who.display(),
        action: Action::ApprovalRefused,
        target: format!("request:{id}"),
        outcome: Outcome::Denied,
        details: json!({ "reason": reason }),
    };
    if let Err(e) = lifecycle::audit_only(state, ctx, event).await {
        return e;
    }
    if reason == "already_decided" {
        return ApiError::Conflict {
            detail: "you have decided on this request already; nobody counts twice".into(),
        };
    }
    ApiError::Forbidden { reason }
}

/// What the execution token binds: the request, who approved it, and the statement hash.
fn approval_hash(id: Uuid, approvers: &[String], statement_hash: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"portcullis/approval/v1\0");
    h.update(id.as_bytes());
    h.update(b"approved-by\0");
    for a in approvers {
        h.update((a.len() as u32).to_be_bytes());
        h.update(a.as_bytes());
    }
    h.update(statement_hash);
    h.finalize().into()
}

/// `POST /api/v1/policy/check`: how policy would decide a statement, and why, without
/// creating or running anything. The class and tables come from the same parser that
/// decides real requests.
pub fn check(
    state: &AppState,
    who: &UserPrincipal,
    body: &portcullis_proto::api::PolicyCheck,
) -> Result<portcullis_proto::api::PolicyVerdict, ApiError> {
    use portcullis_core::policy::{Decision, Facts, Mismatch};
    use portcullis_proto::api::{PolicyVerdict, SkippedRule};

    let decl = state
        .config
        .connection(&body.connection)
        .ok_or(ApiError::UnknownConnection)?;
    let operation = portcullis_core::analyse(decl.kind, &body.statement).map_err(|e| {
        ApiError::StatementDenied {
            reason: e.code(),
            detail: e.to_string(),
        }
    })?;
    let role = body.role.unwrap_or(who.role);
    let facts = Facts {
        connection: &decl.name,
        environment: decl.environment,
        class: operation.class,
        role,
        tables: &operation.tables,
    };
    let explained = state.policy.explain(&facts);
    let label =
        |i: usize| rule_label(&state.policy, Source::Rule(i)).unwrap_or_else(|| format!("#{i}"));
    let skipped = explained
        .checked
        .iter()
        .filter_map(|(i, m)| {
            m.map(|m| SkippedRule {
                rule: label(*i),
                failed_on: match m {
                    Mismatch::Connection => "connection",
                    Mismatch::Environment => "environment",
                    Mismatch::Class => "class",
                    Mismatch::Role => "role",
                    Mismatch::Tables => "tables",
                }
                .into(),
            })
        })
        .collect();
    let e = explained.evaluation;
    let rule = rule_label(&state.policy, e.source);
    let what = match e.decision {
        Decision::Deny => "denied".to_owned(),
        Decision::AutoApprove => "auto-approved".to_owned(),
        Decision::RequireApproval => {
            let steps: Vec<String> = e
                .steps
                .iter()
                .map(|s| {
                    let roles: Vec<&str> = s.roles.iter().map(|r| r.as_str()).collect();
                    format!("{} from {}", s.approvals, roles.join("/"))
                })
                .collect();
            format!("held for approval ({})", steps.join(", then "))
        }
    };
    let because = match (&rule, e.admin_override) {
        (Some(r), true) => format!(
            "{what}: rule {r} matched and said auto_approve, but admin operations are never auto-approved"
        ),
        (Some(r), false) => format!("{what}: rule {r} is the first that matches"),
        (None, _) => format!(
            "{what}: no rule matches, so the built-in default applies (reads auto-approved, writes and DDL need one approval, admin operations denied)"
        ),
    };
    let authorized =
        portcullis_core::authorize(role, None, decl.kind, decl.environment, operation.class);
    let because = match authorized {
        Ok(_) => because,
        Err(denied) => format!("{because}; but the {role} role may not run it at all ({denied})"),
    };
    Ok(PolicyVerdict {
        connection: decl.name.clone(),
        environment: decl.environment,
        class: operation.class,
        role,
        tables: operation.tables,
        decision: e.decision,
        steps: e.steps,
        rule,
        skipped,
        because,
    })
}

/// How a rule is named in views and the audit log: its `name`, or `#N` (1-based).
pub fn rule_label(policy: &portcullis_core::Policy, source: Source) -> Option<String> {
    match source {
        Source::Rule(i) => Some(
            policy
                .rules()
                .get(i)
                .and_then(|r| r.name.clone())
                .unwrap_or_else(|| format!("#{}", i + 1)),
        ),
        Source::Default => None,
    }
}

/// What the execution token binds for an auto-approved request: the request, the rule and
/// the statement hash.
pub(crate) fn auto_approval_hash(
    request_id: Uuid,
    source: Source,
    statement_hash: &[u8; 32],
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"portcullis/approval/v1\0");
    h.update(request_id.as_bytes());
    match source {
        Source::Rule(i) => h.update(format!("policy-rule:{i}")),
        Source::Default => h.update("policy-default"),
    }
    h.update(statement_hash);
    h.finalize().into()
}
