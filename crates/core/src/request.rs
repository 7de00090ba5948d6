//! The request state machine of the product design. Every state change the server makes is
//! checked against [`RequestState::can_become`].

use crate::names::closed_enum;

closed_enum! {
    /// Where a request is in its life.
    RequestState, "request state" {
        PendingApproval => "pending_approval",
        Approved => "approved",
        Dispatched => "dispatched",
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
        OutcomeUnknown => "outcome_unknown",
        Rejected => "rejected",
        Cancelled => "cancelled",
        Expired => "expired",
    }
}

impl RequestState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RequestState::Succeeded
                | RequestState::Failed
                | RequestState::OutcomeUnknown
                | RequestState::Rejected
                | RequestState::Cancelled
                | RequestState::Expired
        )
    }

    /// The allowed transitions. Once dispatched a request can no longer be cancelled or
    /// expired: it may be executing, so only its agent's report (or a lost lease) ends it.
    pub fn can_become(self, next: RequestState) -> bool {
        use RequestState::*;
        matches!(
            (self, next),
            (PendingApproval, Approved | Rejected | Cancelled | Expired)
                | (Approved, Dispatched | Cancelled | Expired)
                | (Dispatched, Running | Succeeded | Failed | OutcomeUnknown)
                | (Running, Succeeded | Failed | OutcomeUnknown)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::RequestState::{self, *};

    #[test]
    fn terminal_states_never_move() {
        for from in RequestState::ALL.iter().filter(|s| s.is_terminal()) {
            for to in RequestState::ALL {
                assert!(!from.can_become(*to), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn executed_requests_cannot_go_back_to_dispatch() {
        // No replay: a request that ran or failed never gets a new token.
        for from in [Running, Succeeded, Failed, OutcomeUnknown] {
            assert!(!from.can_become(Dispatched), "{from}");
            assert!(!from.can_become(Approved), "{from}");
        }
        assert!(Approved.can_become(Dispatched));
        assert!(!Dispatched.can_become(Cancelled));
    }
}
