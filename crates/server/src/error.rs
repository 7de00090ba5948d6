//! The one API error type. Each variant maps to a stable [`ErrorCode`]; internal errors reach
//! the client as an opaque problem document whose error id points at the server's log line
//! (WEB-6). No SQL, paths, stack traces or internal messages ever reach a response.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use portcullis_proto::{ErrorCode, Problem};

use crate::ratelimit::{X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING, X_RATELIMIT_RESET};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401: no valid credential.
    #[error("authentication required")]
    Unauthenticated,
    /// 401: a login failed. One answer for every cause (AUTH-1).
    #[error("login failed")]
    LoginFailed,
    /// 401: the password was right and a second factor is needed (AUTH-2).
    #[error("second factor required")]
    MfaRequired,
    /// 403: a sensitive action in a session whose last TOTP check is too old (AUTH-2).
    #[error("step-up required")]
    StepUpRequired,
    /// 403: the principal lacks the permission for this route or operation.
    #[error("forbidden")]
    Forbidden { reason: &'static str },
    /// 403: the principal may not run this operation; `detail` says why (role, class or
    /// environment scope) and is safe to show.
    #[error("operation denied: {detail}")]
    OperationDenied { detail: String },
    /// 404.
    #[error("not found")]
    NotFound,
    /// 405: the path exists, the method does not.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 400: the body or a parameter is malformed; `detail` is safe to show.
    #[error("bad request: {detail}")]
    BadRequest { detail: String },
    /// 413: the body exceeds the route's limit (WEB-3).
    #[error("payload too large")]
    PayloadTooLarge,
    /// 408: the request body did not arrive whole within `web.body_read_timeout_secs`.
    #[error("request body too slow")]
    RequestTimeout { secs: u64 },
    /// 404: the connection is not declared on this server.
    #[error("unknown connection")]
    UnknownConnection,
    /// 422: classification refused the statement; `reason` is a stable code.
    #[error("statement denied: {reason}")]
    StatementDenied {
        reason: &'static str,
        detail: String,
    },
    /// 403: the approval policy denies the operation.
    #[error("denied by policy")]
    PolicyDenied,
    /// 409: the request is not in a state that allows this.
    #[error("invalid state: {detail}")]
    InvalidState { detail: String },
    /// 409.
    #[error("conflict: {detail}")]
    Conflict { detail: String },
    /// 409: the request has no result to read yet; `detail` says what it waits for.
    #[error("result not ready: {detail}")]
    ResultNotReady { detail: String },
    /// 410: the result was delivered already, or no longer kept.
    #[error("result gone: {detail}")]
    ResultGone { detail: String },
    /// 429: a rate limit of `bucket` is reached (WEB-4); the response carries `Retry-After`
    /// and the `X-RateLimit-*` headers.
    #[error("rate limited")]
    RateLimited {
        bucket: &'static str,
        limit: u32,
        reset_secs: u64,
        retry_after_secs: u64,
    },
    /// 503: a dependency (state store, audit chain) is unavailable; fails closed.
    #[error("unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// 503: the server is stopping and takes no new request (EX-3); the response carries
    /// `Retry-After`.
    #[error("server stopping")]
    Stopping { drain_secs: u64 },
    /// 500: anything else, logged with its error id.
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::Unavailable(e.into())
    }
}

impl From<rusqlite::Error> for ApiError {
    fn from(e: rusqlite::Error) -> Self {
        ApiError::Unavailable(e.into())
    }
}

impl From<crate::audit::AuditError> for ApiError {
    fn from(e: crate::audit::AuditError) -> Self {
        // AUD-2: an action whose audit record cannot be written fails.
        ApiError::Unavailable(e.into())
    }
}

impl ApiError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::Unauthenticated | ApiError::LoginFailed | ApiError::MfaRequired => {
                ErrorCode::Unauthenticated
            }
            ApiError::Forbidden { .. }
            | ApiError::OperationDenied { .. }
            | ApiError::StepUpRequired => ErrorCode::Forbidden,
            ApiError::NotFound => ErrorCode::NotFound,
            ApiError::MethodNotAllowed => ErrorCode::MethodNotAllowed,
            ApiError::BadRequest { .. } => ErrorCode::BadRequest,
            ApiError::PayloadTooLarge => ErrorCode::PayloadTooLarge,
            ApiError::RequestTimeout { .. } => ErrorCode::RequestTimeout,
            ApiError::UnknownConnection => ErrorCode::UnknownConnection,
            ApiError::StatementDenied { .. } => ErrorCode::StatementDenied,
            ApiError::PolicyDenied => ErrorCode::PolicyDenied,
            ApiError::InvalidState { .. } => ErrorCode::InvalidState,
            ApiError::Conflict { .. } => ErrorCode::Conflict,
            ApiError::ResultNotReady { .. } => ErrorCode::ResultNotReady,
            ApiError::ResultGone { .. } => ErrorCode::ResultGone,
            ApiError::RateLimited { .. } => ErrorCode::RateLimited,
            ApiError::Unavailable(_) | ApiError::Stopping { .. } => ErrorCode::Unavailable,
            ApiError::Internal(_) => ErrorCode::Internal,
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            detail: detail.into(),
        }
    }
}

pub fn problem_response(problem: Problem) -> Response {
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, axum::Json(&problem)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let error_id = uuid::Uuid::new_v4().to_string();
        let code = self.code();
        let (title, detail, reason) = match &self {
            ApiError::Unauthenticated => ("Authentication required", None, None),
            ApiError::LoginFailed => (
                "Login failed",
                Some(
                    "the name, password or code is wrong, or the account is locked or suspended"
                        .to_owned(),
                ),
                Some("login_failed".to_owned()),
            ),
            ApiError::MfaRequired => (
                "Second factor required",
                Some("enter the code from your authenticator app, or a recovery code".to_owned()),
                Some("mfa_required".to_owned()),
            ),
            ApiError::OperationDenied { detail } => (
                "Operation denied",
                Some(detail.clone()),
                Some("operation_not_permitted".to_owned()),
            ),
            ApiError::Forbidden { reason } => (
                "Forbidden",
                forbidden_detail(reason).map(str::to_owned),
                Some((*reason).to_owned()),
            ),
            ApiError::StepUpRequired => (
                "Step-up required",
                Some(
                    "confirm with a fresh authenticator code first: portcullis step-up".to_owned(),
                ),
                Some("step_up_required".to_owned()),
            ),
            ApiError::NotFound => ("Not found", None, None),
            ApiError::MethodNotAllowed => ("Method not allowed", None, None),
            ApiError::BadRequest { detail } => ("Bad request", Some(detail.clone()), None),
            ApiError::PayloadTooLarge => ("Payload too large", None, None),
            ApiError::RequestTimeout { secs } => (
                "Request timeout",
                Some(format!("the request body did not arrive within {secs} s")),
                None,
            ),
            ApiError::UnknownConnection => ("Unknown connection", None, None),
            ApiError::StatementDenied { reason, detail } => (
                "Statement denied",
                Some(detail.clone()),
                Some((*reason).to_owned()),
            ),
            ApiError::PolicyDenied => ("Denied by policy", None, None),
            ApiError::InvalidState { detail } => ("Invalid state", Some(detail.clone()), None),
            ApiError::Conflict { detail } => ("Conflict", Some(detail.clone()), None),
            ApiError::ResultNotReady { detail } => ("Result not ready", Some(detail.clone()), None),
            ApiError::ResultGone { detail } => ("Result gone", Some(detail.clone()), None),
            ApiError::RateLimited {
                bucket,
                retry_after_secs,
                ..
            } => (
                "Too many requests",
                Some(format!(
                    "too many requests; try again in {retry_after_secs} s"
                )),
                Some((*bucket).to_owned()),
            ),
            ApiError::Unavailable(e) => {
                tracing::error!(%error_id, error = %format!("{e:#}"), "dependency unavailable");
                ("Service unavailable", None, None)
            }
            ApiError::Stopping { .. } => (
                "Service unavailable",
                Some(
                    "the server is stopping and takes no new request: try again once it is back"
                        .to_owned(),
                ),
                Some("server_stopping".to_owned()),
            ),
            ApiError::Internal(e) => {
                tracing::error!(%error_id, error = %format!("{e:#}"), "internal error");
                ("Internal error", None, None)
            }
        };
        let mut problem = Problem::new(code, title, error_id);
        problem.detail = detail;
        problem.reason = reason;
        let mut response = problem_response(problem);
        if let ApiError::RateLimited {
            limit,
            reset_secs,
            retry_after_secs,
            ..
        } = self
        {
            let h = response.headers_mut();
            h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            h.insert(X_RATELIMIT_LIMIT, HeaderValue::from(limit));
            h.insert(X_RATELIMIT_REMAINING, HeaderValue::from(0u32));
            h.insert(X_RATELIMIT_RESET, HeaderValue::from(reset_secs));
        }
        if let ApiError::Stopping { drain_secs } = self {
            let retry = drain_secs + crate::SHUTDOWN_GRACE.as_secs();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry));
        }
        response
    }
}

/// What a person can do about a refusal; fixed text, safe to show.
fn forbidden_detail(reason: &str) -> Option<&'static str> {
    Some(match reason {
        "mfa_enrolment_required" => {
            "this role requires an authenticator: ask an admin for an invitation (portcullis user reset-mfa NAME) and run portcullis enrol"
        }
        "mfa_not_enrolled" => "no authenticator is enrolled for this account",
        "step_up_failed" => "the code is wrong or already used, or the account is locked",
        "password_incorrect" => "the current password is wrong, or the account is locked",
        "origin_mismatch" => {
            "a state-changing request with the session cookie needs this server's Origin"
        }
        "missing_permission" => "your role does not grant this",
        _ => return None,
    })
}

/// A JSON body extractor whose rejections are problem documents.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    axum::Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::PayloadTooLarge)
            }
            Err(JsonRejection::BytesRejection(rejection)) => {
                match crate::routes::deadline::timed_out(&rejection) {
                    Some(secs) => Err(ApiError::RequestTimeout { secs }),
                    None => Err(ApiError::bad_request("the request body could not be read")),
                }
            }
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::bad_request(
                "expected Content-Type: application/json",
            )),
            Err(rejection) => {
                let text = rejection.body_text();
                Err(ApiError::bad_request(
                    text.chars().take(300).collect::<String>(),
                ))
            }
        }
    }
}

impl<T: serde::Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// A query-string extractor whose rejections are problem documents. Unknown or malformed
/// parameters are refused with a short, fixed message (WEB-6): the deserializer's own text
/// names internal field lists and is not passed on.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    axum::extract::Query<T>: FromRequestParts<S, Rejection = QueryRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(_) => Err(ApiError::bad_request("invalid or unknown query parameter")),
        }
    }
}
