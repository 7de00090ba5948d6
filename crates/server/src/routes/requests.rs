//! `/api/v1/requests`: create, list, show, wait for and cancel requests.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use portcullis_core::{Permission, RequestState};
use portcullis_proto::api::{
    CreateRequest, DecideRequest, PolicyCheck, PolicyVerdict, RequestOutcome, RequestView,
};
use serde::Deserialize;
use tokio::sync::watch;
use utoipa::IntoParams;
use uuid::Uuid;

use super::{Ctx, Segment, User, openapi, path_uuid};
use crate::AppState;
use crate::approvals::{self, Verdict};
use crate::auth::UserPrincipal;
use crate::clock;
use crate::dispatch::Finished;
use crate::error::{ApiError, ApiJson, ApiQuery};
use crate::lifecycle;

mod list_query;
use list_query::list_sql;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct WaitParams {
    /// Seconds to wait for the request to finish before answering with its current state
    /// (at most `execution.max_wait_secs`).
    #[serde(default)]
    wait: Option<u64>,
    /// Answer early when an approval decision lands (for live progress).
    #[serde(default)]
    progress: bool,
}

/// Requests an operation on a connection. The server classifies the statement itself,
/// authorizes the class for the caller's role and environment scope, and applies policy:
/// denied, pending approval, or approved and queued for an agent. With `wait`, answers when
/// the request finished or the wait ended.
#[utoipa::path(
    post,
    operation_id = "create_request",
    path = "/api/v1/requests",
    tag = "requests",
    params(WaitParams),
    request_body(
        content = CreateRequest,
        examples(
            ("read" = (summary = "A read, held for `wait`", value = json!({
                "connection": "demo",
                "statement": "SELECT name, country FROM customers LIMIT 5",
                "reason": "first look",
            }))),
            ("streamed" = (summary = "A read relayed row by row to `GET /api/v1/requests/{id}/result`", value = json!({
                "connection": "demo",
                "statement": "SELECT * FROM customers",
                "reason": "export",
                "stream": true,
            }))),
        ),
    ),
    responses(
        (
            status = 201,
            description = "The request, and its result when it finished within the wait",
            body = RequestOutcome,
            links(
                ("show" = (operation_id = "show_request", parameters(("id" = "$response.body#/request/id")))),
                ("wait" = (operation_id = "wait_for_request", parameters(("id" = "$response.body#/request/id")))),
                ("result" = (operation_id = "request_result", parameters(("id" = "$response.body#/request/id")))),
                ("cancel" = (operation_id = "cancel_request", parameters(("id" = "$response.body#/request/id")))),
                ("approve" = (operation_id = "approve_request", parameters(("id" = "$response.body#/request/id")))),
                ("reject" = (operation_id = "reject_request", parameters(("id" = "$response.body#/request/id")))),
                ("review" = (operation_id = "review_request", parameters(("id" = "$response.body#/request/id"))))
            ),
        ),
        (status = 400, description = "The body or a query parameter is malformed, or the reason is refused"),
        (status = 403, description = "The role or environment scope does not allow this class here (`operation_not_permitted`), policy denies it (`policy_denied`), or the guard refused"),
        (status = 404, description = "The connection is not declared on this server (`unknown_connection`)"),
        (status = 413, description = "The body exceeds the size limit"),
        (status = 422, description = "Classification refused the statement (`statement_denied`; `reason` says why)"),
        (status = 503, description = "The state store or the audit chain is unavailable, or the server is stopping and takes no new request (`server_stopping`, with `Retry-After`)"),
    ),
)]
pub(super) async fn create(
    State(state): State<AppState>,
    User(who): User,
    Ctx(ctx): Ctx,
    ApiQuery(params): ApiQuery<WaitParams>,
    ApiJson(body): ApiJson<CreateRequest>,
) -> Result<(StatusCode, Json<RequestOutcome>), ApiError> {
    let created = lifecycle::create_request(&state, &who, &ctx, body).await?;
    let mut wait = params.wait.unwrap_or(0);
    // A caller that asked to wait is never answered "finished" without its result while the
    // outcome is on its way (EX-3), also when its wait was already spent below.
    let grace = publication_grace(wait, state.config.execution.max_wait_secs);
    if created.executing && !params.progress && wait > 0 {
        match finished_with_view(&state, created.id, wait).await {
            Some(outcome) => return Ok((StatusCode::CREATED, Json(outcome))),
            // The wait ran out, the server began to stop, or the request ended without its
            // view: the store answers, without waiting again — but for a request it reads as
            // just finished, the outcome its commit is publishing (the stop's drain ends at
            // that commit, so both can be ready at once).
            None => wait = 0,
        }
    }
    let outcome = wait_outcome(&state, &who, created.id, wait, params.progress, grace).await?;
    Ok((StatusCode::CREATED, Json(outcome)))
}

/// The outcome of a request the caller just created and that is executing, when it finishes
/// within the wait and its outcome carries the request as committed: the answer without a read
/// of the store. `None` otherwise (it did not finish in time, or it ended by a path that does
/// not carry the view); [`wait_outcome`] then answers, and finds it already finished.
///
/// The caller created the request, so it is the caller's own: no ownership check is due.
async fn finished_with_view(state: &AppState, id: Uuid, wait_secs: u64) -> Option<RequestOutcome> {
    let wait = Duration::from_secs(wait_secs.min(state.config.execution.max_wait_secs));
    let mut outcome = state.dispatch.subscribe(id);
    let finished = state
        .wait_unless_stopping(wait, outcome.wait_for(Option::is_some))
        .await?
        .ok()?
        .clone()?;
    let view = finished.view.as_deref()?.clone();
    Some(RequestOutcome {
        request: view,
        result: finished.result.as_deref().cloned(),
    })
}

/// Waits (up to `wait` seconds, default 30) for one of the caller's requests to finish.
#[utoipa::path(
    get,
    operation_id = "wait_for_request",
    path = "/api/v1/requests/{id}/wait",
    tag = "requests",
    params(("id" = String, Path, description = "The request's id"), WaitParams),
    responses(
        (status = 200, description = "The request, and its result when it finished within the wait", body = RequestOutcome),
        (status = 400, description = "A query parameter is malformed"),
        (status = 404, description = "No request of the caller has this id"),
    ),
)]
pub(super) async fn wait(
    State(state): State<AppState>,
    User(who): User,
    Segment(id): Segment,
    ApiQuery(params): ApiQuery<WaitParams>,
) -> Result<Json<RequestOutcome>, ApiError> {
    let id = path_uuid(&id)?;
    let wait = params.wait.unwrap_or(30);
    let grace = publication_grace(wait, state.config.execution.max_wait_secs);
    Ok(Json(
        wait_outcome(&state, &who, id, wait, params.progress, grace).await?,
    ))
}

/// The result as NDJSON: a `StreamHeader` line, one JSON array per row, then a
/// `ResultTrailer` line. A stream that ends without a trailer was cut.
#[utoipa::path(
    get,
    operation_id = "request_result",
    path = "/api/v1/requests/{id}/result",
    tag = "requests",
    params(("id" = String, Path, description = "The request's id"), WaitParams),
    responses(
        (status = 200, description = "NDJSON: `StreamHeader`, rows, `ResultTrailer`", content(("application/x-ndjson"))),
        (status = 400, description = "A query parameter is malformed"),
        (status = 404, description = "No request of the caller has this id"),
        (status = 409, description = "No result has begun yet (`result_not_ready`)"),
        (status = 410, description = "The result was delivered already or is no longer kept (`result_gone`)"),
    ),
)]
pub(super) async fn result(
    State(state): State<AppState>,
    User(who): User,
    Segment(id): Segment,
    ApiQuery(params): ApiQuery<WaitParams>,
) -> Result<axum::response::Response, ApiError> {
    let id = path_uuid(&id)?;
    let wait = params
        .wait
        .unwrap_or(30)
        .min(state.config.execution.max_wait_secs);
    crate::results::download(&state, &who, id, Duration::from_secs(wait)).await
}

/// How long a wait on a request just read as finished waits for its outcome to be
/// published (it follows the commit by microseconds).
const PUBLICATION_GRACE: Duration = Duration::from_millis(250);
/// A request that finished longer ago than this has had its outcome published, or never
/// will (past its retention, or finished before a restart): no grace for it.
const RECENTLY_FINISHED_MS: i64 = 5_000;

/// How long an answer for a caller who asked to wait `wait_secs` may wait for the outcome of
/// a request it reads as just finished: [`PUBLICATION_GRACE`], never more than the wait, and
/// nothing for a caller who asked not to wait.
fn publication_grace(wait_secs: u64, max_wait_secs: u64) -> Duration {
    Duration::from_secs(wait_secs.min(max_wait_secs)).min(PUBLICATION_GRACE)
}

/// Waits (pushed, never polled) up to `wait_secs` for `id` to finish. Results go only to the
/// requester who asked for them. A request read as just finished waits up to `grace` more for
/// its published outcome ([`published_outcome`]).
async fn wait_outcome(
    state: &AppState,
    who: &UserPrincipal,
    id: Uuid,
    wait_secs: u64,
    progress: bool,
    grace: Duration,
) -> Result<RequestOutcome, ApiError> {
    let mut outcome = state.dispatch.subscribe(id);
    let mut steps = state.dispatch.subscribe_progress(id);
    steps.mark_unchanged();
    let (mut view, owner) = lifecycle::load_view(state, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    if owner != who.user_id {
        return Err(ApiError::NotFound);
    }
    let wait = Duration::from_secs(wait_secs.min(state.config.execution.max_wait_secs));
    if !view.state.is_terminal() && !wait.is_zero() {
        let progressed = async {
            if progress {
                let _ = steps.changed().await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let _ = state
            .wait_unless_stopping(wait, async {
                tokio::select! {
                    _ = outcome.wait_for(Option::is_some) => {}
                    () = progressed => {}
                }
            })
            .await;
        // Read again after a wait for progress, or one that ended with nothing published
        // (its time ran out, or the server is stopping): the answer is the request as it is
        // now, not as it was when the wait began.
        if progress || outcome.borrow().is_none() {
            view = lifecycle::load_view(state, id)
                .await?
                .ok_or(ApiError::NotFound)?
                .0;
        }
    }
    let finished = published_outcome(
        &mut outcome,
        view.finished_at.as_deref(),
        grace,
        clock::now_ms(),
    )
    .await;
    if let Some(f) = &finished
        && f.state != view.state
    {
        // The view as the finishing transaction committed it, or read again.
        view = match &f.view {
            Some(v) => RequestView::clone(v),
            None => {
                lifecycle::load_view(state, id)
                    .await?
                    .ok_or(ApiError::NotFound)?
                    .0
            }
        };
    }
    let result = finished.and_then(|f| f.result.as_deref().cloned());
    Ok(RequestOutcome {
        request: view,
        result,
    })
}

/// The outcome published for a request whose view was just read, finished at `finished_at`
/// (`None`: not finished). A request read as finished may have been committed an instant
/// before its outcome is published (`Dispatch::complete` follows the commit): this waits that
/// instant, up to `grace` ([`publication_grace`]), rather than answer "succeeded" without its
/// result. A request that finished long ago, or is not finished, is answered at once with
/// what is published.
async fn published_outcome(
    outcome: &mut watch::Receiver<Option<Arc<Finished>>>,
    finished_at: Option<&str>,
    grace: Duration,
    now_ms: i64,
) -> Option<Arc<Finished>> {
    // Timestamps are fixed-width UTC, so they compare as text.
    let recent = clock::format_ms(now_ms - RECENTLY_FINISHED_MS);
    let just_finished = finished_at.is_some_and(|at| at >= recent.as_str());
    if just_finished && !grace.is_zero() && outcome.borrow().is_none() {
        let _ = tokio::time::timeout(grace, outcome.wait_for(Option::is_some)).await;
    }
    outcome.borrow().clone()
}

/// One request: the caller's own, or anyone's with `requests:view_all`.
#[utoipa::path(
    get,
    operation_id = "show_request",
    path = "/api/v1/requests/{id}",
    tag = "requests",
    params(("id" = String, Path, description = "The request's id")),
    responses(
        (status = 200, description = "The request", body = RequestView),
        (status = 404, description = "No request visible to the caller has this id"),
    ),
)]
pub(super) async fn show(
    State(state): State<AppState>,
    User(who): User,
    Segment(id): Segment,
) -> Result<Json<RequestView>, ApiError> {
    let id = path_uuid(&id)?;
    let (view, owner) = lifecycle::load_view(&state, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    if owner != who.user_id && !who.role.has(Permission::RequestsViewAll) {
        return Err(ApiError::NotFound);
    }
    Ok(Json(view))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ListParams {
    /// Only requests in this state.
    #[serde(default)]
    #[param(value_type = Option<portcullis_proto::openapi::RequestState>)]
    state: Option<RequestState>,
    /// At most this many, newest first (default 50, at most 500).
    #[serde(default)]
    limit: Option<u32>,
    /// Everyone's requests (needs `requests:view_all`); otherwise only the caller's.
    #[serde(default)]
    all: bool,
    /// Only requests that ran under break-glass and await their review.
    #[serde(default)]
    unreviewed: bool,
}

/// The newest requests: the caller's own, or everyone's with `all`.
#[utoipa::path(
    get,
    operation_id = "list_requests",
    path = "/api/v1/requests",
    tag = "requests",
    params(ListParams),
    responses(
        (status = 200, description = "The requests, newest first", body = Vec<RequestView>),
        (status = 400, description = "An unknown or malformed query parameter"),
        (status = 403, description = "`all` without `requests:view_all` (`missing_permission`), or the guard refused"),
    ),
)]
pub(super) async fn list(
    State(state): State<AppState>,
    User(who): User,
    ApiQuery(p): ApiQuery<ListParams>,
) -> Result<Json<Vec<RequestView>>, ApiError> {
    if p.all && !who.role.has(Permission::RequestsViewAll) {
        return Err(ApiError::Forbidden {
            reason: "missing_permission",
        });
    }
    let limit = i64::from(p.limit.unwrap_or(50).clamp(1, 500));
    let sql = list_sql(!p.all, p.state, p.unreviewed);
    let mut query = sqlx::query(sql);
    if !p.all {
        query = query.bind(&who.user_id);
    }
    if let Some(s) = p.state {
        query = query.bind(s.as_str());
    }
    let rows = query.bind(limit).fetch_all(state.store.reader()).await?;
    let views = rows
        .iter()
        .map(lifecycle::row_to_view)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(views))
}

/// Cancels one of the caller's requests that has not been dispatched.
#[utoipa::path(
    post,
    operation_id = "cancel_request",
    path = "/api/v1/requests/{id}/cancel",
    tag = "requests",
    params(("id" = String, Path, description = "The request's id")),
    responses(
        (status = 200, description = "The cancelled request", body = RequestView),
        (status = 404, description = "No request of the caller has this id"),
        (status = 409, description = "The request's state does not allow cancelling (`invalid_state`)"),
    ),
)]
pub(super) async fn cancel(
    State(state): State<AppState>,
    User(who): User,
    Ctx(ctx): Ctx,
    Segment(id): Segment,
) -> Result<Json<RequestView>, ApiError> {
    let id = path_uuid(&id)?;
    lifecycle::cancel(&state, &who, &ctx, id).await?;
    view_json(&state, id).await
}

/// Approves the current step of a request awaiting approval (AZ-3).
#[utoipa::path(
    post,
    operation_id = "approve_request",
    path = "/api/v1/requests/{id}/approve",
    tag = "approvals",
    params(("id" = String, Path, description = "The request's id")),
    request_body = DecideRequest,
    responses(
        (status = 200, description = "The request after the decision", body = RequestView),
        (status = 400, description = "The body is malformed or the comment is refused"),
        (status = 403, description = "Decisions need a person in a session (`approval_needs_session`), not the requester (`self_approval`), with a role of the current step (`role_not_in_step`); or the guard refused"),
        (status = 404, description = "No such request"),
        (status = 409, description = "The request awaits no decision, changed meanwhile, or the caller decided already"),
        (status = 413, description = "The body exceeds the size limit"),
    ),
)]
pub(super) async fn approve(
    State(state): State<AppState>,
    User(who): User,
    Ctx(ctx): Ctx,
    Segment(id): Segment,
    ApiJson(body): ApiJson<DecideRequest>,
) -> Result<Json<RequestView>, ApiError> {
    decide(state, who, ctx, id, Verdict::Approve, body).await
}

/// Rejects a request awaiting approval; the comment is required and shown to the requester.
#[utoipa::path(
    post,
    operation_id = "reject_request",
    path = "/api/v1/requests/{id}/reject",
    tag = "approvals",
    params(("id" = String, Path, description = "The request's id")),
    request_body = DecideRequest,
    responses(
        (status = 200, description = "The request after the decision", body = RequestView),
        (status = 400, description = "The body is malformed or the comment is refused or missing"),
        (status = 403, description = "Decisions need a person in a session (`approval_needs_session`), not the requester (`self_approval`), with a role of the current step (`role_not_in_step`); or the guard refused"),
        (status = 404, description = "No such request"),
        (status = 409, description = "The request awaits no decision, changed meanwhile, or the caller decided already"),
        (status = 413, description = "The body exceeds the size limit"),
    ),
)]
pub(super) async fn reject(
    State(state): State<AppState>,
    User(who): User,
    Ctx(ctx): Ctx,
    Segment(id): Segment,
    ApiJson(body): ApiJson<DecideRequest>,
) -> Result<Json<RequestView>, ApiError> {
    decide(state, who, ctx, id, Verdict::Reject, body).await
}

async fn decide(
    state: AppState,
    who: UserPrincipal,
    ctx: crate::audit::Context,
    id: String,
    verdict: Verdict,
    body: DecideRequest,
) -> Result<Json<RequestView>, ApiError> {
    let id = path_uuid(&id)?;
    approvals::decide(&state, &who, &ctx, id, verdict, body.comment).await?;
    view_json(&state, id).await
}

/// How policy would decide a statement, and why, without creating or running anything.
#[utoipa::path(
    post,
    operation_id = "check_policy",
    path = "/api/v1/policy/check",
    tag = "approvals",
    request_body(
        content = PolicyCheck,
        example = json!({"connection": "demo", "statement": "DELETE FROM customers WHERE id = 1"}),
    ),
    responses(
        (status = 200, description = "The verdict and the rules it passed", body = PolicyVerdict),
        (status = 400, description = "The body is malformed"),
        (status = 404, description = "The connection is not declared on this server (`unknown_connection`)"),
        (status = 413, description = "The body exceeds the size limit"),
        (status = 422, description = "Classification refused the statement (`statement_denied`)"),
    ),
)]
pub(super) async fn policy_check(
    State(state): State<AppState>,
    User(who): User,
    ApiJson(body): ApiJson<PolicyCheck>,
) -> Result<Json<PolicyVerdict>, ApiError> {
    Ok(Json(approvals::check(&state, &who, &body)?))
}

/// Opens a time-boxed break-glass grant (AZ-4): requests run without approval until it
/// expires, and each is reviewed afterwards.
#[utoipa::path(
    post,
    operation_id = "open_break_glass",
    path = "/api/v1/break-glass",
    tag = "approvals",
    request_body = openapi::OpenGrant,
    responses(
        (status = 201, description = "The grant", body = openapi::Grant),
        (status = 400, description = "The body is malformed, or the reason or duration is refused"),
        (status = 403, description = "Break-glass needs a person in a session (`needs_session`) whose role may break glass (`missing_permission`) with a fresh step-up (`step_up_required`)"),
        (status = 413, description = "The body exceeds the size limit"),
    ),
)]
pub(super) async fn open_break_glass(
    State(state): State<AppState>,
    User(who): User,
    Ctx(ctx): Ctx,
    ApiJson(body): ApiJson<crate::break_glass::OpenGrant>,
) -> Result<(StatusCode, Json<crate::break_glass::Grant>), ApiError> {
    let grant = crate::break_glass::open(&state, &ctx, &who, body).await?;
    Ok((StatusCode::CREATED, Json(grant)))
}

/// Reviews a request that ran under break-glass (AZ-4).
#[utoipa::path(
    post,
    operation_id = "review_request",
    path = "/api/v1/requests/{id}/review",
    tag = "approvals",
    params(("id" = String, Path, description = "The request's id")),
    request_body = DecideRequest,
    responses(
        (status = 200, description = "The reviewed request", body = RequestView),
        (status = 400, description = "The body is malformed, or the comment is missing or refused"),
        (status = 403, description = "Reviews need a person in a session (`needs_session`) other than the requester (`self_review`); or the guard refused"),
        (status = 404, description = "No such request"),
        (status = 409, description = "The request did not run under break-glass, or is reviewed already"),
        (status = 413, description = "The body exceeds the size limit"),
    ),
)]
pub(super) async fn review(
    State(state): State<AppState>,
    User(who): User,
    Ctx(ctx): Ctx,
    Segment(id): Segment,
    ApiJson(body): ApiJson<DecideRequest>,
) -> Result<Json<RequestView>, ApiError> {
    let id = path_uuid(&id)?;
    crate::break_glass::review(&state, &ctx, &who, id, body.comment).await?;
    view_json(&state, id).await
}

/// The request's view after an action on it.
async fn view_json(state: &AppState, id: Uuid) -> Result<Json<RequestView>, ApiError> {
    Ok(Json(
        lifecycle::load_view(state, id)
            .await?
            .ok_or(ApiError::NotFound)?
            .0,
    ))
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;
    use portcullis_proto::api::ExecResult;

    use super::*;

    fn succeeded_with_one_row() -> Arc<Finished> {
        Arc::new(Finished {
            state: RequestState::Succeeded,
            result: Some(Arc::new(ExecResult {
                rows: vec![vec![serde_json::json!(1)]],
                row_count: 1,
                ..ExecResult::default()
            })),
            error: None,
            view: None,
        })
    }

    /// EX-3: a wait that reads its request as just finished before the outcome is published
    /// (the commit came first; `Dispatch::complete` follows it) answers with the outcome and
    /// its result once published, not with "succeeded" and no result. The first poll runs the
    /// whole check in memory, so the outcome is published exactly between the read and the
    /// answer, with no timing involved.
    #[tokio::test]
    async fn ex3_a_wait_that_reads_a_request_just_finished_answers_with_its_published_result() {
        let now = clock::now_ms();
        let finished_at = clock::format_ms(now);
        let (publish, mut outcome) = watch::channel(None);
        let mut answer = Box::pin(published_outcome(
            &mut outcome,
            Some(&finished_at),
            PUBLICATION_GRACE,
            now,
        ));
        assert!(
            (&mut answer).now_or_never().is_none(),
            "a request read as just finished was answered before its outcome was published"
        );
        publish.send_replace(Some(succeeded_with_one_row()));
        let finished = answer.await.expect("the published outcome");
        assert_eq!(finished.state, RequestState::Succeeded);
        assert_eq!(finished.result.as_ref().map(|r| r.row_count), Some(1));
    }

    /// EX-3: a caller who asked to wait is given the grace even when the wait it asked for was
    /// spent before the store was read (`create`'s own wait ended as the server began to stop,
    /// its drain released by the very commit whose outcome is being published); only a
    /// caller who asked not to wait goes without it.
    #[test]
    fn every_caller_who_asked_to_wait_gets_the_grace() {
        assert_eq!(publication_grace(30, 300), PUBLICATION_GRACE);
        assert_eq!(publication_grace(1, 300), PUBLICATION_GRACE);
        assert_eq!(publication_grace(0, 300), Duration::ZERO);
    }

    /// The grace is only for a request that has just finished: one that is not finished, that
    /// finished long ago (its outcome was published, or never will be), or asked with no wait
    /// is answered at once with whatever is published.
    #[tokio::test]
    async fn a_wait_answers_at_once_when_no_publication_is_due() {
        let now = clock::now_ms();
        let long_ago = clock::format_ms(now - RECENTLY_FINISHED_MS - 1_000);
        let just_now = clock::format_ms(now);
        let cases = [
            (None, PUBLICATION_GRACE, "not finished"),
            (
                Some(long_ago.as_str()),
                PUBLICATION_GRACE,
                "finished long ago",
            ),
            (Some(just_now.as_str()), Duration::ZERO, "no wait asked"),
        ];
        for (finished_at, wait, case) in cases {
            let (_publish, mut outcome) = watch::channel(None);
            let answer = published_outcome(&mut outcome, finished_at, wait, now).now_or_never();
            assert!(
                matches!(answer, Some(None)),
                "{case}: not answered at once with nothing published"
            );
        }
        // Published already: answered at once with it.
        let (_publish, mut outcome) = watch::channel(Some(succeeded_with_one_row()));
        let answer = published_outcome(&mut outcome, Some(&just_now), PUBLICATION_GRACE, now)
            .now_or_never()
            .expect("answered at once");
        assert_eq!(
            answer.and_then(|f| f.result.as_ref().map(|r| r.row_count)),
            Some(1)
        );
    }
}
