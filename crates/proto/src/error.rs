//! Problem documents (RFC 9457) with a stable, closed set of error codes. Clients match on
//! [`ErrorCode`], never on message text.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

macro_rules! codes {
    ($($variant:ident => $text:literal, $status:literal;)+) => {
        /// A stable error code. Its HTTP status is fixed by [`ErrorCode::status`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum ErrorCode { $($variant),+, #[serde(other)] Unknown }

        impl ErrorCode {
            pub fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $text),+, ErrorCode::Unknown => "unknown" }
            }
            pub fn status(self) -> u16 {
                match self { $(ErrorCode::$variant => $status),+, ErrorCode::Unknown => 500 }
            }
        }
    };
}

codes! {
    Unauthenticated => "unauthenticated", 401;
    Forbidden => "forbidden", 403;
    NotFound => "not_found", 404;
    MethodNotAllowed => "method_not_allowed", 405;
    BadRequest => "bad_request", 400;
    PayloadTooLarge => "payload_too_large", 413;
    RequestTimeout => "request_timeout", 408;
    UnknownConnection => "unknown_connection", 404;
    StatementDenied => "statement_denied", 422;
    PolicyDenied => "policy_denied", 403;
    InvalidState => "invalid_state", 409;
    Conflict => "conflict", 409;
    ResultNotReady => "result_not_ready", 409;
    ResultGone => "result_gone", 410;
    RateLimited => "rate_limited", 429;
    Internal => "internal", 500;
    Unavailable => "unavailable", 503;
}

/// A problem document. `detail` is written for the caller and never holds internal text;
/// `error_id` ties the response to the server's log line for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub code: ErrorCode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// A finer, stable reason inside `code` (for example `sql_multiple_statements`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub error_id: String,
}

impl Problem {
    pub fn new(code: ErrorCode, title: impl Into<String>, error_id: impl Into<String>) -> Problem {
        Problem {
            kind: format!("urn:portcullis:error:{}", code.as_str()),
            title: title.into(),
            status: code.status(),
            code,
            detail: None,
            reason: None,
            error_id: error_id.into(),
        }
    }
}
