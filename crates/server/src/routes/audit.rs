//! `/api/v1/audit/*`: verify the chain and export it as JSON Lines (AUD-3, AUD-6).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use portcullis_proto::api::{AlertView, AuditVerifyView};

use crate::AppState;
use crate::audit::{self, CheckpointFile};
use crate::error::ApiError;

/// Verifies the audit hash chain and its signed checkpoint (AUD-3); a failure raises a
/// critical alert.
#[utoipa::path(
    get,
    operation_id = "verify_audit",
    path = "/api/v1/audit/verify",
    tag = "audit",
    responses((status = 200, description = "The verification report; `ok` is false when the chain is broken", body = AuditVerifyView)),
)]
pub(super) async fn verify(
    State(state): State<AppState>,
    super::User(who): super::User,
    super::Ctx(ctx): super::Ctx,
) -> Result<Json<AuditVerifyView>, ApiError> {
    let checkpoint = CheckpointFile::in_dir(&state.config.data_dir)
        .read()
        .map_err(ApiError::Internal)?;
    let current = state.keys.current().signer.verifying_key();
    // A checkpoint may predate a key rotation: check it with the key it names.
    let key = match &checkpoint {
        Some(cp) => crate::key_rotation::historical_key(state.store.reader(), current, &cp.key_id)
            .await
            .map_err(ApiError::Internal)?
            .unwrap_or(current),
        None => current,
    };
    let report = audit::verify(state.store.reader(), checkpoint.as_ref().map(|c| (c, &key)))
        .await
        .map_err(ApiError::Internal)?;
    if !report.ok() {
        // AUD-5: a failed verification is a critical alert. When the chain cannot take the
        // event (its head no longer matches), the log sink still gets the alert.
        let event = crate::audit::Event {
            actor: who.display(),
            action: crate::audit::Action::AuditVerifyFailed,
            target: "audit".into(),
            outcome: crate::audit::Outcome::Failure,
            details: serde_json::json!({ "first_bad_seq": report.first_bad_seq, "problem": report.problem }),
        };
        if crate::lifecycle::audit_only(&state, &ctx, event.clone())
            .await
            .is_err()
        {
            use crate::alerts::AlertSink;
            crate::alerts::LogSink.deliver(&crate::alerts::Alert {
                at: crate::clock::format_ms(crate::clock::now_ms()),
                severity: crate::alerts::Severity::Critical,
                kind: event.action.as_str().to_owned(),
                actor: event.actor,
                target: event.target,
                details: event.details,
            });
        }
    }
    Ok(Json(AuditVerifyView {
        ok: report.ok(),
        events: report.events,
        head_seq: report.head_seq,
        first_bad_seq: report.first_bad_seq,
        problem: report.problem,
    }))
}

/// The whole audit chain (AUD-6).
#[utoipa::path(
    get,
    operation_id = "export_audit",
    path = "/api/v1/audit/export",
    tag = "audit",
    responses((
        status = 200,
        description = "JSON Lines: one `AuditEventView` per line, oldest first",
        content(("application/jsonl")),
    )),
)]
pub(super) async fn export(State(state): State<AppState>) -> Result<Response, ApiError> {
    let mut out = Vec::new();
    audit::export(state.store.reader(), &mut out)
        .await
        .map_err(ApiError::Internal)?;
    let mut response = out.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/jsonl"),
    );
    Ok(response)
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct AlertParams {
    /// Only alerts after this sequence number.
    #[serde(default)]
    after: Option<i64>,
    #[serde(default)]
    limit: Option<u32>,
}

/// The newest alerts, oldest first (AUD-5).
#[utoipa::path(
    get,
    operation_id = "list_alerts",
    path = "/api/v1/alerts",
    tag = "audit",
    params(AlertParams),
    responses(
        (status = 200, description = "Up to `limit` alerts (default 100, at most 1000)", body = Vec<AlertView>),
        (status = 400, description = "An unknown or malformed query parameter"),
    ),
)]
pub(super) async fn alerts(
    State(state): State<AppState>,
    crate::error::ApiQuery(p): crate::error::ApiQuery<AlertParams>,
) -> Result<Json<Vec<AlertView>>, ApiError> {
    let limit = i64::from(p.limit.unwrap_or(100).clamp(1, 1000));
    Ok(Json(
        crate::alerts::list(&state.store, p.after.unwrap_or(0), limit).await?,
    ))
}
