//! `/api/v1/audit/*`: verify the chain and export it as JSON Lines (AUD-3, AUD-6).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use portcullis_proto::api::AuditVerifyView;

use crate::AppState;
use crate::audit::{self, CheckpointFile};
use crate::error::ApiError;

pub(super) async fn verify(
    State(state): State<AppState>,
) -> Result<Json<AuditVerifyView>, ApiError> {
    let checkpoint = CheckpointFile::in_dir(&state.config.data_dir)
        .read()
        .map_err(ApiError::Internal)?;
    let key = state.signer.verifying_key();
    let report = audit::verify(state.store.reader(), checkpoint.as_ref().map(|c| (c, &key)))
        .await
        .map_err(ApiError::Internal)?;
    Ok(Json(AuditVerifyView {
        ok: report.ok(),
        events: report.events,
        head_seq: report.head_seq,
        first_bad_seq: report.first_bad_seq,
        problem: report.problem,
    }))
}

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
