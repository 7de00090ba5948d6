//! Exit codes. Scripts rely on these; they are listed in `--help` and the README.

use portcullis_client::ClientError;
use portcullis_core::RequestState;
use portcullis_proto::ErrorCode;

pub(crate) const OK: u8 = 0;
pub(crate) const ERROR: u8 = 1;
pub(crate) const USAGE: u8 = 2;
pub(crate) const DENIED: u8 = 3;
pub(crate) const TIMED_OUT: u8 = 4;
pub(crate) const FAILED: u8 = 5;
pub(crate) const OUTCOME_UNKNOWN: u8 = 6;
pub(crate) const UNAUTHENTICATED: u8 = 7;
pub(crate) const AUDIT_BROKEN: u8 = 8;

/// An error that ends the command with a specific exit code.
#[derive(Debug)]
pub(crate) struct Exit {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl Exit {
    pub(crate) fn new(code: u8, message: impl Into<String>) -> Exit {
        Exit {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// The exit code for a server error.
pub(crate) fn for_client_error(e: &ClientError) -> u8 {
    match e.code() {
        Some(ErrorCode::Unauthenticated) => UNAUTHENTICATED,
        Some(
            ErrorCode::Forbidden
            | ErrorCode::PolicyDenied
            | ErrorCode::StatementDenied
            | ErrorCode::UnknownConnection,
        ) => DENIED,
        Some(ErrorCode::BadRequest | ErrorCode::PayloadTooLarge) => USAGE,
        _ => ERROR,
    }
}

/// The exit code for where a request ended up.
pub(crate) fn for_state(state: RequestState) -> u8 {
    match state {
        RequestState::Succeeded => OK,
        RequestState::Rejected => DENIED,
        RequestState::Failed | RequestState::Expired | RequestState::Cancelled => FAILED,
        RequestState::OutcomeUnknown => OUTCOME_UNKNOWN,
        RequestState::PendingApproval
        | RequestState::Approved
        | RequestState::Dispatched
        | RequestState::Running => TIMED_OUT,
    }
}

#[cfg(test)]
mod tests {
    use portcullis_core::RequestState::*;

    use super::*;

    #[test]
    fn every_request_state_has_its_documented_exit_code() {
        for (state, code) in [
            (Succeeded, OK),
            (Rejected, DENIED),
            (Failed, FAILED),
            (Expired, FAILED),
            (Cancelled, FAILED),
            (OutcomeUnknown, OUTCOME_UNKNOWN),
            (PendingApproval, TIMED_OUT),
            (Approved, TIMED_OUT),
            (Dispatched, TIMED_OUT),
            (Running, TIMED_OUT),
        ] {
            assert_eq!(for_state(state), code, "{state}");
        }
        let distinct: std::collections::BTreeSet<u8> = [
            DENIED,
            TIMED_OUT,
            FAILED,
            OUTCOME_UNKNOWN,
            UNAUTHENTICATED,
            AUDIT_BROKEN,
        ]
        .into();
        assert_eq!(
            distinct.len(),
            6,
            "scripts tell these outcomes apart by exit code"
        );
    }
}
