//! Results on their way from an agent to the requester, as NDJSON lines (see
//! `portcullis_proto::stream`).
//!
//! An agent uploads every result it produced to `POST /api/v1/agent/jobs/{id}/result`. For a
//! request created with `stream`, the server checks each line and relays it at once to the
//! one requester reading `GET /api/v1/requests/{id}/result`, through a small bounded
//! channel: a slow reader slows the upload, then the agent, then the store, and no party
//! ever holds the result whole. Other results (and plans for approvers) are collected, still
//! bounded, and kept for `result_retention_secs` as before.
//!
//! Whatever an agent sends is checked: one header, rows as wide as the header, no more rows
//! than the signed row cap, the trailer last and its count equal to the rows seen. The
//! outcome is recorded and audited only at the trailer; a cut upload records nothing and the
//! agent reports the outcome through the plain report route.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use portcullis_core::RequestState;
use portcullis_proto::agent::JobReport;
use portcullis_proto::api::ExecResult;
use portcullis_proto::stream::{
    AgentTrailer, LineKind, LineSplitter, NDJSON, ResultTrailer, StreamHeader,
};
use serde::de::IgnoredAny;
use sqlx::Row;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::AppState;
use crate::audit::Context;
use crate::auth::{AgentPrincipal, UserPrincipal};
use crate::dispatch::{Finished, Reader};
use crate::error::ApiError;
use crate::lifecycle::{self, parse_uuid};

/// The longest line (one row) an upload may carry.
pub const MAX_LINE: usize = 16 * 1024 * 1024;
/// The most a collected (not streamed) result may take on the server.
pub const MAX_COLLECTED: usize = 64 * 1024 * 1024;
/// Chunks waiting between an upload and its reader.
const RELAY_CHUNKS: usize = 16;

/// The job an upload is for, checked against the uploading agent.
struct UploadJob {
    request_id: Uuid,
    collect: bool,
}

async fn upload_job(
    state: &AppState,
    agent: &AgentPrincipal,
    job_id: Uuid,
) -> Result<UploadJob, ApiError> {
    let row = sqlx::query(
        "SELECT j.request_id, j.agent, j.state, j.purpose, r.result_mode FROM jobs j JOIN requests r ON r.id = j.request_id WHERE j.id = ?",
    )
    .bind(job_id.to_string())
    .fetch_optional(state.store.reader())
    .await?
    .ok_or(ApiError::NotFound)?;
    let holder: Option<String> = row.try_get(1)?;
    if holder.as_deref() != Some(agent.name.as_str()) {
        return Err(ApiError::Forbidden {
            reason: "job_not_leased_to_agent",
        });
    }
    let job_state: String = row.try_get(2)?;
    if job_state != "leased" {
        return Err(ApiError::InvalidState {
            detail: "the job is no longer leased (its lease expired or it was already reported)"
                .into(),
        });
    }
    let purpose: String = row.try_get(3)?;
    let mode: String = row.try_get(4)?;
    Ok(UploadJob {
        request_id: parse_uuid(row.try_get(0)?)?,
        collect: purpose != "execute" || mode != "stream",
    })
}

/// Checks the lines of one upload in order.
struct Checker {
    columns: Option<usize>,
    rows: u64,
    row_cap: u64,
    trailer: Option<AgentTrailer>,
}

/// One checked line.
enum Checked {
    Header(StreamHeader),
    Row,
    Trailer,
}

fn protocol(detail: impl Into<String>) -> ApiError {
    ApiError::bad_request(format!("result stream: {}", detail.into()))
}

impl Checker {
    fn new(row_cap: u64) -> Checker {
        Checker {
            columns: None,
            rows: 0,
            row_cap,
            trailer: None,
        }
    }

    fn check(&mut self, line: &[u8]) -> Result<Checked, ApiError> {
        if self.trailer.is_some() {
            return Err(protocol("a line follows the trailer"));
        }
        match LineKind::of(line) {
            Some(LineKind::Row) => {
                let Some(width) = self.columns else {
                    return Err(protocol("a row arrived before the header"));
                };
                let row: Vec<IgnoredAny> = serde_json::from_slice(line)
                    .map_err(|e| protocol(format!("row {} is not JSON: {e}", self.rows + 1)))?;
                if row.len() != width {
                    return Err(protocol(format!(
                        "row {} has {} values for {width} columns",
                        self.rows + 1,
                        row.len()
                    )));
                }
                self.rows += 1;
                if self.rows > self.row_cap {
                    return Err(protocol(format!(
                        "more rows than the signed row cap ({})",
                        self.row_cap
                    )));
                }
                Ok(Checked::Row)
            }
            Some(LineKind::Object) if self.columns.is_none() && line_is_header(line) => {
                let header: StreamHeader = serde_json::from_slice(line)
                    .map_err(|e| protocol(format!("invalid header: {e}")))?;
                self.columns = Some(header.columns.len());
                Ok(Checked::Header(header))
            }
            Some(LineKind::Object) => {
                let trailer: AgentTrailer = serde_json::from_slice(line)
                    .map_err(|e| protocol(format!("invalid trailer: {e}")))?;
                if let AgentTrailer::Succeeded { row_count, .. } = &trailer {
                    if self.columns.is_none() {
                        return Err(protocol("a successful result has no header"));
                    }
                    if *row_count != self.rows {
                        return Err(protocol(format!(
                            "the trailer counts {row_count} rows, the stream had {}",
                            self.rows
                        )));
                    }
                }
                self.trailer = Some(trailer);
                Ok(Checked::Trailer)
            }
            None => Err(protocol("a line is neither a row nor an object")),
        }
    }

    fn finish(self) -> Result<AgentTrailer, ApiError> {
        self.trailer
            .ok_or_else(|| protocol("the upload ended without its trailer"))
    }
}

fn line_is_header(line: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Probe {
        columns: Option<IgnoredAny>,
    }
    serde_json::from_slice::<Probe>(line).is_ok_and(|p| p.columns.is_some())
}

/// `POST /api/v1/agent/jobs/{id}/result`.
pub async fn upload(
    state: &AppState,
    agent: &AgentPrincipal,
    ctx: &Context,
    job_id: Uuid,
    body: Body,
) -> Result<(), ApiError> {
    // A job handed to this agent as it was created needs no store read to be found; its
    // report checks the lease in the store as any other (EX-3).
    if state
        .dispatch
        .handed_to(job_id, &agent.name, crate::clock::now_ms())
    {
        let report = collect(state, body).await?;
        return lifecycle::report_job(state, agent, ctx, job_id, report, false).await;
    }
    let job = upload_job(state, agent, job_id).await?;
    if job.collect {
        let report = collect(state, body).await?;
        return lifecycle::report_job(state, agent, ctx, job_id, report, false).await;
    }
    let wait = Duration::from_secs(state.config.execution.stream_reader_wait_secs);
    let Some(reader) = state.dispatch.take_reader(job.request_id, wait).await else {
        return Err(ApiError::Conflict {
            detail: "nobody started reading this streamed result in time".into(),
        });
    };
    relay(state, agent, ctx, job_id, body, reader).await
}

/// The lines of an upload body, read chunk by chunk.
struct BodyLines {
    stream: axum::body::BodyDataStream,
    split: LineSplitter,
    ended: bool,
    /// Body bytes read so far.
    taken: usize,
}

impl BodyLines {
    fn new(body: Body) -> BodyLines {
        BodyLines {
            stream: body.into_data_stream(),
            split: LineSplitter::new(MAX_LINE),
            ended: false,
            taken: 0,
        }
    }

    /// Reads the next chunk; `false` once the body has ended. A last line without its
    /// newline is completed, so [`next_line`](Self::next_line) yields it too.
    async fn read(&mut self) -> Result<bool, ApiError> {
        if self.ended {
            return Ok(false);
        }
        match self.stream.next().await {
            Some(chunk) => {
                let chunk = chunk.map_err(|_| protocol("the upload was cut"))?;
                self.taken += chunk.len();
                self.split.push(&chunk);
            }
            None => {
                self.ended = true;
                self.split.push(b"\n");
            }
        }
        Ok(true)
    }

    /// The next complete line of what was read so far.
    fn next_line(&mut self) -> Result<Option<&[u8]>, ApiError> {
        self.split.next_line().map_err(|e| protocol(e.to_string()))
    }
}

/// Reads a whole upload into a report, bounded by [`MAX_COLLECTED`].
async fn collect(state: &AppState, body: Body) -> Result<JobReport, ApiError> {
    let mut checker = Checker::new(state.config.execution.row_cap);
    let mut result = ExecResult::default();
    let mut lines = BodyLines::new(body);
    while lines.read().await? {
        if lines.taken > MAX_COLLECTED {
            return Err(ApiError::PayloadTooLarge);
        }
        while let Some(line) = lines.next_line()? {
            take_line(&mut checker, &mut result, line)?;
        }
    }
    Ok(match checker.finish()? {
        AgentTrailer::Succeeded {
            row_count,
            truncated,
            affected_rows,
        } => {
            result.row_count = row_count;
            result.truncated = truncated;
            result.affected_rows = affected_rows;
            JobReport::Succeeded { result }
        }
        AgentTrailer::Failed { error } => JobReport::Failed { error },
    })
}

fn take_line(checker: &mut Checker, result: &mut ExecResult, line: &[u8]) -> Result<(), ApiError> {
    match checker.check(line)? {
        Checked::Header(h) => result.columns = h.columns,
        Checked::Row => result
            .rows
            .push(serde_json::from_slice(line).map_err(|e| protocol(format!("invalid row: {e}")))?),
        Checked::Trailer => {}
    }
    Ok(())
}

/// Relays an upload to its reader line by line, then records the outcome and ends the
/// reader's stream with the server's trailer.
async fn relay(
    state: &AppState,
    agent: &AgentPrincipal,
    ctx: &Context,
    job_id: Uuid,
    body: Body,
    reader: mpsc::Sender<Bytes>,
) -> Result<(), ApiError> {
    let mut checker = Checker::new(state.config.execution.row_cap);
    let mut columns = Vec::new();
    let mut lines = BodyLines::new(body);
    let gone = || ApiError::Conflict {
        detail: "the requester stopped reading the result".into(),
    };
    while lines.read().await? {
        let mut out = Vec::new();
        while let Some(line) = lines.next_line()? {
            relay_line(&mut checker, &mut columns, &mut out, line)?;
        }
        if !out.is_empty() && reader.send(Bytes::from(out)).await.is_err() {
            return Err(gone());
        }
    }
    let trailer = checker.finish()?;
    let report = match &trailer {
        AgentTrailer::Succeeded {
            row_count,
            truncated,
            affected_rows,
        } => JobReport::Succeeded {
            result: ExecResult {
                columns,
                rows: Vec::new(),
                row_count: *row_count,
                truncated: *truncated,
                affected_rows: *affected_rows,
            },
        },
        AgentTrailer::Failed { error } => JobReport::Failed {
            error: error.clone(),
        },
    };
    lifecycle::report_job(state, agent, ctx, job_id, report, true).await?;
    let outcome = match trailer {
        AgentTrailer::Succeeded {
            row_count,
            truncated,
            affected_rows,
        } => ResultTrailer {
            state: RequestState::Succeeded,
            row_count,
            truncated,
            affected_rows,
            error: None,
        },
        AgentTrailer::Failed { error } => ResultTrailer {
            state: lifecycle::failed_state(&error),
            row_count: 0,
            truncated: false,
            affected_rows: None,
            error: Some(lifecycle::sanitize(error)),
        },
    };
    // The outcome is recorded: a reader that left now only misses the trailer.
    let _ = reader.send(Bytes::from(json_line(&outcome))).await;
    Ok(())
}

fn relay_line(
    checker: &mut Checker,
    columns: &mut Vec<portcullis_proto::api::Column>,
    out: &mut Vec<u8>,
    line: &[u8],
) -> Result<(), ApiError> {
    match checker.check(line)? {
        Checked::Header(h) => {
            out.extend_from_slice(&json_line(&h));
            *columns = h.columns;
        }
        Checked::Row => {
            out.extend_from_slice(line);
            out.push(b'\n');
        }
        Checked::Trailer => {}
    }
    Ok(())
}

fn json_line(value: &impl serde::Serialize) -> Vec<u8> {
    // Plain data structures always serialize.
    let mut line = serde_json::to_vec(value).unwrap_or_default();
    line.push(b'\n');
    line
}

/// `GET /api/v1/requests/{id}/result`: the result of the caller's own request as NDJSON,
/// waiting up to `wait` for it to begin.
pub async fn download(
    state: &AppState,
    who: &UserPrincipal,
    id: Uuid,
    wait: Duration,
) -> Result<Response, ApiError> {
    let mut finished = state.dispatch.subscribe(id);
    let row =
        sqlx::query("SELECT requester_user_id, state, result_mode FROM requests WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(state.store.reader())
            .await?
            .ok_or(ApiError::NotFound)?;
    let owner: String = row.try_get(0)?;
    if owner != who.user_id {
        return Err(ApiError::NotFound);
    }
    let current: RequestState = lifecycle::parse(row.try_get(1)?)?;
    let streamed = row.try_get::<String, _>(2)? == "stream";
    if !streamed || current.is_terminal() {
        if !current.is_terminal() {
            let _ = state
                .wait_unless_stopping(wait, finished.wait_for(Option::is_some))
                .await;
        }
        let done = finished.borrow().clone();
        return match done {
            Some(f) if !(streamed && f.state == RequestState::Succeeded && f.result.is_none()) => {
                Ok(ndjson(Body::from(finished_lines(&f))))
            }
            Some(_) => Err(ApiError::ResultGone {
                detail: "this streamed result was already delivered".into(),
            }),
            None if current.is_terminal() || streamed => Err(ApiError::ResultGone {
                detail: format!(
                    "the request is {current} and its result is no longer kept (results are kept for {} s)",
                    state.config.execution.result_retention_secs
                ),
            }),
            None => Err(not_ready(current)),
        };
    }
    let mut rx = match state.dispatch.register_reader(id, RELAY_CHUNKS) {
        Reader::Waiting(rx) => rx,
        Reader::Delivered => {
            return Err(ApiError::ResultGone {
                detail: "this streamed result was already delivered".into(),
            });
        }
    };
    let first = tokio::select! {
        chunk = rx.recv() => chunk,
        _ = tokio::time::sleep(wait) => None,
        _ = finished.wait_for(Option::is_some) => None,
        () = state.stopping() => None,
    };
    let first = match first {
        Some(chunk) => chunk,
        // The wait ended, or the request ended without an upload taking this reader. An
        // upload that took it in the meantime has the rows on their way.
        None if !state.dispatch.withdraw_reader(id) => match rx.recv().await {
            Some(chunk) => chunk,
            None => {
                return Err(ApiError::ResultGone {
                    detail: "the result stream was cut before it began".into(),
                });
            }
        },
        None => {
            let done = finished.borrow().clone();
            return match done {
                Some(f) => Ok(ndjson(Body::from(finished_lines(&f)))),
                None => Err(not_ready(current)),
            };
        }
    };
    let rest = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let body = futures_util::stream::iter([first])
        .chain(rest)
        .map(Ok::<_, std::convert::Infallible>);
    Ok(ndjson(Body::from_stream(body)))
}

fn not_ready(state: RequestState) -> ApiError {
    ApiError::ResultNotReady {
        detail: format!("the request is {state}; no result has begun yet"),
    }
}

fn ndjson(body: Body) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    response
}

/// A finished request as NDJSON: its kept rows, if any, then the trailer.
fn finished_lines(f: &Finished) -> Vec<u8> {
    let mut out = Vec::new();
    let mut trailer = ResultTrailer {
        state: f.state,
        row_count: 0,
        truncated: false,
        affected_rows: None,
        error: f.error.clone(),
    };
    if let Some(result) = &f.result {
        out.extend_from_slice(&json_line(&StreamHeader {
            columns: result.columns.clone(),
        }));
        for row in &result.rows {
            out.extend_from_slice(&json_line(row));
        }
        trailer.row_count = result.row_count;
        trailer.truncated = result.truncated;
        trailer.affected_rows = result.affected_rows;
    }
    out.extend_from_slice(&json_line(&trailer));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &[u8] = br#"{"columns":[{"name":"a","type":"INT4"},{"name":"b","type":"TEXT"}]}"#;

    fn run(cap: u64, lines: &[&[u8]]) -> Result<AgentTrailer, ApiError> {
        let mut c = Checker::new(cap);
        for line in lines {
            c.check(line)?;
        }
        c.finish()
    }

    fn detail(e: ApiError) -> String {
        match e {
            ApiError::BadRequest { detail } => detail,
            other => panic!("expected a bad request, got {other:?}"),
        }
    }

    #[test]
    fn a_well_formed_upload_passes() {
        let t = run(
            10,
            &[
                HEADER,
                br#"[1,"x"]"#,
                br#"[2,null]"#,
                br#"{"outcome":"succeeded","row_count":2,"truncated":false}"#,
            ],
        )
        .expect("valid");
        assert!(matches!(t, AgentTrailer::Succeeded { row_count: 2, .. }));
        let failed = run(
            10,
            &[br#"{"outcome":"failed","error":{"code":"store_error","message":"boom"}}"#],
        );
        assert!(matches!(failed, Ok(AgentTrailer::Failed { .. })));
    }

    /// Whatever an agent sends is checked before it is relayed or recorded.
    #[test]
    fn hostile_uploads_are_refused_with_a_specific_reason() {
        let ok_trailer: &[u8] = br#"{"outcome":"succeeded","row_count":1,"truncated":false}"#;
        for (lines, expected) in [
            (
                vec![br#"[1,"x"]"#.as_slice(), ok_trailer],
                "before the header",
            ),
            (
                vec![HEADER, br#"[1]"#, ok_trailer],
                "has 1 values for 2 columns",
            ),
            (vec![HEADER, br#"[1,"x"#, ok_trailer], "is not JSON"),
            (
                vec![HEADER, br#"[1,"x"]"#, br#"[2,"y"]"#],
                "more rows than the signed row cap",
            ),
            (
                vec![
                    HEADER,
                    br#"{"outcome":"succeeded","row_count":5,"truncated":false}"#,
                ],
                "the trailer counts 5 rows, the stream had 0",
            ),
            (vec![HEADER, br#"[1,"x"]"#], "without its trailer"),
            (
                vec![
                    HEADER,
                    br#"{"outcome":"succeeded","row_count":0,"truncated":false}"#,
                    br#"[1,"x"]"#,
                ],
                "follows the trailer",
            ),
            (vec![ok_trailer], "has no header"),
            (vec![b"42"], "neither a row nor an object"),
            (vec![HEADER, br#"{"outcome":"won"}"#], "invalid trailer"),
        ] {
            let err = run(1, &lines).expect_err(expected);
            let text = detail(err);
            assert!(text.contains(expected), "{text:?} should say {expected:?}");
        }
    }
}
