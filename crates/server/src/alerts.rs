//! Alerts (AUD-5). Which audit events raise an alert is declared once, here, by action: an
//! alert cannot be forgotten at a call site. The durable sink is the append-only `alerts`
//! table, written by [`crate::audit::AuditTx`] in the same transaction as the event; after the
//! commit every configured [`AlertSink`] receives it (today the structured log line; webhooks
//! later).

use portcullis_proto::api::AlertView;
use serde::Serialize;
use sqlx::Row;

use crate::audit::{Action, Event, Outcome};
use crate::clock;
use crate::error::ApiError;
use crate::store::Store;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// One alert, as stored and delivered.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    pub at: String,
    pub severity: Severity,
    /// The audit action that raised it (`login.locked`, `access.denied`, …).
    pub kind: String,
    pub actor: String,
    pub target: String,
    pub details: serde_json::Value,
}

/// Whether an event raises an alert, and how loud.
pub fn severity_of(event: &Event) -> Option<Severity> {
    use Action::*;
    match event.action {
        LoginLocked | AuditVerifyFailed | Lockdown | BreakGlass | BreakGlassUsed => {
            Some(Severity::Critical)
        }
        AccessDenied | TokenCreated | TokenRevoked | AgentCreated | AgentRevoked | UserCreated
        | UserUpdated | UserSuspended | UserUnsuspended | UserMfaReset | AdminCapExceeded
        | VaultRotated | LockdownLifted | KeyRotated => Some(Severity::Warning),
        // A denied approval attempt (self-approval, wrong role) is an RBAC denial too.
        ApprovalRefused if event.outcome == Outcome::Denied => Some(Severity::Warning),
        _ => None,
    }
}

/// Where alerts go after their transaction commits.
pub trait AlertSink: Send + Sync + std::fmt::Debug {
    fn deliver(&self, alert: &Alert);
}

/// The structured log line: `WARN`/`ERROR` with `alert = true` and the alert's fields.
#[derive(Debug, Default)]
pub struct LogSink;

impl AlertSink for LogSink {
    fn deliver(&self, alert: &Alert) {
        let details = alert.details.to_string();
        match alert.severity {
            Severity::Critical => tracing::error!(
                alert = true,
                severity = alert.severity.as_str(),
                kind = %alert.kind,
                actor = %alert.actor,
                target = %alert.target,
                details = %details,
                "ALERT"
            ),
            Severity::Warning => tracing::warn!(
                alert = true,
                severity = alert.severity.as_str(),
                kind = %alert.kind,
                actor = %alert.actor,
                target = %alert.target,
                details = %details,
                "ALERT"
            ),
        }
    }
}

/// The newest `limit` alerts after `after_seq`, oldest first.
pub async fn list(store: &Store, after_seq: i64, limit: i64) -> Result<Vec<AlertView>, ApiError> {
    let rows = sqlx::query(
        "SELECT seq, at_ms, severity, kind, actor, target, details FROM (
             SELECT * FROM alerts WHERE seq > ? ORDER BY seq DESC LIMIT ?
         ) ORDER BY seq",
    )
    .bind(after_seq)
    .bind(limit)
    .fetch_all(store.reader())
    .await?;
    rows.iter()
        .map(|r| {
            let details: String = r.try_get(6)?;
            Ok(AlertView {
                seq: r.try_get(0)?,
                at: clock::format_ms(r.try_get(1)?),
                severity: r.try_get(2)?,
                kind: r.try_get(3)?,
                actor: r.try_get(4)?,
                target: r.try_get(5)?,
                details: serde_json::from_str(&details).unwrap_or(serde_json::Value::Null),
            })
        })
        .collect()
}
