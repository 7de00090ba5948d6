//! Break-glass (AZ-4): an admin (or the one role `break_glass.role` names, never `ci`), in a
//! session with a fresh step-up and a reason, opens a time-boxed grant. While it lasts, their
//! requests skip approval steps and may run admin-class operations; explicit `deny` rules
//! still hold, and every agent still enforces its own capability list. The grant and every
//! request under it raise critical alerts, and each such request waits for an
//! after-the-fact review by another admin (`request list --unreviewed`). API tokens never
//! reach it, so neither do pipelines nor anything automated.

use portcullis_core::policy::{Decision, Evaluation, Source};
use portcullis_core::{Permission, Role};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::AppState;
use crate::audit::{Action, AuditTx, Context, Event, Outcome};
use crate::auth::UserPrincipal;
use crate::clock;
use crate::error::ApiError;

/// `POST /api/v1/break-glass`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenGrant {
    /// Required; checked after the caller's right to break glass.
    #[serde(default)]
    pub reason: String,
    /// How long, at most `break_glass.max_secs` (the default).
    #[serde(default)]
    pub duration_secs: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Grant {
    pub id: String,
    pub expires_at: String,
}

fn may_break_glass(state: &AppState, role: Role) -> bool {
    role.has(Permission::RequestsBreakGlass) || state.config.break_glass.role == Some(role)
}

async fn refused(
    state: &AppState,
    ctx: &Context,
    who: &UserPrincipal,
    target: String,
    reason: &'static str,
) -> ApiError {
    let event = Event {
        actor: who.display(),
        action: Action::AccessDenied,
        target,
        outcome: Outcome::Denied,
        details: json!({ "required": "break_glass", "reason": reason }),
    };
    if let Err(e) = crate::lifecycle::audit_only(state, ctx, event).await {
        return e;
    }
    if reason == "step_up_required" {
        return ApiError::StepUpRequired;
    }
    ApiError::Forbidden { reason }
}

pub async fn open(
    state: &AppState,
    ctx: &Context,
    who: &UserPrincipal,
    body: OpenGrant,
) -> Result<Grant, ApiError> {
    let now = clock::now_ms();
    if !who.session {
        return Err(refused(state, ctx, who, "break-glass".into(), "needs_session").await);
    }
    if !may_break_glass(state, who.role) {
        return Err(refused(state, ctx, who, "break-glass".into(), "missing_permission").await);
    }
    if !crate::routes::fresh_step_up(state, who, now) {
        return Err(refused(state, ctx, who, "break-glass".into(), "step_up_required").await);
    }
    let reason = body.reason.trim();
    if reason.chars().count() < 10
        || reason.chars().count() > 500
        || reason.chars().any(char::is_control)
    {
        return Err(ApiError::bad_request(
            "a break-glass reason of 10-500 printable characters is required: it is read in the review",
        ));
    }
    let max = state.config.break_glass.max_secs;
    let secs = body.duration_secs.unwrap_or(max);
    if secs == 0 || secs > max {
        return Err(ApiError::bad_request(format!(
            "duration_secs must be between 1 and {max} (break_glass.max_secs)"
        )));
    }
    let id = Uuid::new_v4().to_string();
    let expires = now + (secs as i64) * 1000;
    let mut tx = AuditTx::begin(&state.store, &state.audit).await?;
    sqlx::query(
        "INSERT INTO break_glass (id, user_id, user_name, reason, created_at_ms, expires_at_ms) VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(&id)
    .bind(&who.user_id)
    .bind(&who.user_name)
    .bind(reason)
    .bind(now)
    .bind(expires)
    .execute(tx.conn().await?)
    .await?;
    let event = Event {
        actor: who.display(),
        action: Action::BreakGlass,
        target: format!("break-glass:{id}"),
        outcome: Outcome::Success,
        details: json!({ "reason": reason, "expires_at": clock::format_ms(expires) }),
    };
    tx.append_at(ctx, event, now).await?;
    tx.commit().await?;
    Ok(Grant {
        id,
        expires_at: clock::format_ms(expires),
    })
}

/// The caller's live grant, if any: only a session of a person who may break glass.
pub async fn active(
    state: &AppState,
    who: &UserPrincipal,
    now: i64,
) -> Result<Option<String>, ApiError> {
    if !who.session || !may_break_glass(state, who.role) {
        return Ok(None);
    }
    Ok(sqlx::query_scalar(
        "SELECT id FROM break_glass WHERE user_id = ? AND expires_at_ms > ? ORDER BY expires_at_ms DESC LIMIT 1",
    )
    .bind(&who.user_id)
    .bind(now)
    .fetch_optional(state.store.reader())
    .await?)
}

/// Under a grant: approval steps are skipped and the built-in denial of admin-class
/// operations is lifted; an explicit `deny` rule still denies.
pub fn bypass(evaluation: &mut Evaluation) {
    let lift = match evaluation.decision {
        Decision::RequireApproval => true,
        Decision::Deny => evaluation.source == Source::Default || evaluation.admin_override,
        Decision::AutoApprove => false,
    };
    if lift {
        evaluation.decision = Decision::AutoApprove;
        evaluation.steps.clear();
    }
}

/// What the execution token binds for a request run under a grant.
pub fn approval_hash(request: Uuid, grant: &str, statement_hash: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"portcullis/approval/v1\0break-glass\0");
    h.update(request.as_bytes());
    h.update((grant.len() as u32).to_be_bytes());
    h.update(grant.as_bytes());
    h.update(statement_hash);
    h.finalize().into()
}

/// `POST /api/v1/requests/{id}/review`: another admin reviews a request that ran under
/// break-glass.
pub async fn review(
    state: &AppState,
    ctx: &Context,
    who: &UserPrincipal,
    id: Uuid,
    comment: Option<String>,
) -> Result<(), ApiError> {
    let target = format!("request:{id}");
    if !who.session {
        return Err(refused(state, ctx, who, target, "needs_session").await);
    }
    let comment = comment
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty() && c.chars().count() <= 500 && !c.chars().any(char::is_control))
        .ok_or_else(|| {
            ApiError::bad_request("a review comment of 1-500 printable characters is required")
        })?;
    let now = clock::now_ms();
    let row: Option<(Option<String>, String, Option<i64>)> = sqlx::query_as(
        "SELECT break_glass_id, requester_user_id, reviewed_at_ms FROM requests WHERE id = ?",
    )
    .bind(id.to_string())
    .fetch_optional(state.store.reader())
    .await?;
    let Some((grant, requester, reviewed)) = row else {
        return Err(ApiError::NotFound);
    };
    if grant.is_none() {
        return Err(ApiError::InvalidState {
            detail: "only requests run under break-glass are reviewed".into(),
        });
    }
    if reviewed.is_some() {
        return Err(ApiError::Conflict {
            detail: "this request has been reviewed".into(),
        });
    }
    if requester == who.user_id {
        return Err(refused(state, ctx, who, target, "self_review").await);
    }
    let mut tx = AuditTx::begin(&state.store, &state.audit).await?;
    let done = sqlx::query(
        "UPDATE requests SET reviewed_by = ?, reviewed_at_ms = ?, review_comment = ? WHERE id = ? AND reviewed_at_ms IS NULL",
    )
    .bind(who.display())
    .bind(now)
    .bind(&comment)
    .bind(id.to_string())
    .execute(tx.conn().await?)
    .await?
    .rows_affected();
    if done != 1 {
        return Err(ApiError::Conflict {
            detail: "this request has been reviewed".into(),
        });
    }
    let event = Event {
        actor: who.display(),
        action: Action::BreakGlassReviewed,
        target,
        outcome: Outcome::Success,
        details: json!({ "grant": grant, "comment": comment }),
    };
    tx.append_at(ctx, event, now).await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::policy::Step;

    fn evaluation(decision: Decision, source: Source, admin_override: bool) -> Evaluation {
        Evaluation {
            decision,
            source,
            steps: if decision == Decision::RequireApproval {
                vec![Step::default()]
            } else {
                Vec::new()
            },
            admin_override,
        }
    }

    #[test]
    fn a_grant_skips_steps_and_the_builtin_admin_denial_but_not_an_explicit_deny() {
        for (before, after) in [
            (
                evaluation(Decision::RequireApproval, Source::Rule(0), false),
                Decision::AutoApprove,
            ),
            (
                evaluation(Decision::Deny, Source::Default, false),
                Decision::AutoApprove,
            ),
            (
                evaluation(Decision::Deny, Source::Rule(1), true),
                Decision::AutoApprove,
            ),
            (
                evaluation(Decision::Deny, Source::Rule(1), false),
                Decision::Deny,
            ),
            (
                evaluation(Decision::AutoApprove, Source::Default, false),
                Decision::AutoApprove,
            ),
        ] {
            let mut e = before.clone();
            bypass(&mut e);
            assert_eq!(e.decision, after, "{before:?}");
            if after == Decision::AutoApprove {
                assert!(e.steps.is_empty());
            }
        }
    }
}
