//! Live events (WEB-8): what a subscriber of `GET /api/v1/events` may see.
//!
//! The source is the audit log itself: [`crate::audit::AuditTx::commit`] publishes every
//! committed event as a [`LiveEvent`], so a live event is exactly an audited one, never
//! something that was rolled back. This module names the channels, checks channel names by
//! hand against `^[a-zA-Z0-9:._-]{1,200}$`, and decides who may see what:
//!
//! - `requests`: every event that targets a request; a principal sees its own requests, and
//!   every request when its role has `requests:view_all`, `requests:approve` or `audit:read`.
//! - `request:<uuid>`: every event that targets that request, for whoever may read it with
//!   `GET /api/v1/requests/{id}` (its owner, or `requests:view_all`).
//! - `approvals`: requests awaiting approval and their decisions; needs `requests:approve`.
//! - `audit`: every audit event; needs `audit:read`.
//!
//! Unknown channels are refused; a channel the principal may not see is refused and audited
//! as a denial.
//!
//! The socket itself (authentication, limits, the protocol) is `routes/events.rs`.

use std::collections::HashMap;

use portcullis_core::Permission;
use serde::Serialize;
use serde_json::json;
use sqlx::Row;
use uuid::Uuid;

use crate::AppState;
use crate::audit::{Action, Context, Event, Outcome, RowFields};
use crate::auth::UserPrincipal;
use crate::error::ApiError;

/// The longest channel name (WEB-8).
pub const MAX_CHANNEL_NAME: usize = 200;
/// Request owners remembered per connection; the map starts over when full.
const OWNER_CACHE: usize = 4096;
const REQUEST_PREFIX: &str = "request:";

/// One committed audit event as live subscribers see it. The client address stays in the
/// audit log. `details` are the audited details, which never carry a secret (SEC-4):
/// statements appear as their SHA-256, credentials and invitations by id only, agent
/// errors sanitized.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiveEvent {
    pub seq: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub correlation_id: String,
    /// Set when the target is a request (`request:<uuid>`).
    pub request_id: Option<Uuid>,
    pub details: serde_json::Value,
}

impl LiveEvent {
    /// The event as it was hashed into the chain.
    pub(crate) fn committed(f: &RowFields<'_>, details: &serde_json::Value) -> LiveEvent {
        LiveEvent {
            seq: f.seq,
            at: f.at.to_owned(),
            actor: f.actor.to_owned(),
            action: f.action.to_owned(),
            target: f.target.to_owned(),
            outcome: f.outcome.to_owned(),
            correlation_id: f.correlation_id.to_owned(),
            request_id: f
                .target
                .strip_prefix(REQUEST_PREFIX)
                .and_then(|id| Uuid::parse_str(id).ok()),
            details: details.clone(),
        }
    }
}

/// `^[a-zA-Z0-9:._-]{1,200}$`, by hand: bytes, so that no multi-byte character can pass.
pub fn valid_channel_name(name: &str) -> bool {
    (1..=MAX_CHANNEL_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'.' | b'_' | b'-'))
}

/// A channel this server knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    Requests,
    Request(Uuid),
    Approvals,
    Audit,
}

impl Channel {
    /// Parses a channel name: a bad name is `InvalidName`, a good one nobody serves is
    /// `Unknown`. A request id must be in its canonical hyphenated form, so that one request
    /// has one channel name.
    pub fn parse(name: &str) -> Result<Channel, Refusal> {
        if !valid_channel_name(name) {
            return Err(Refusal::InvalidName);
        }
        match name {
            "requests" => Ok(Channel::Requests),
            "approvals" => Ok(Channel::Approvals),
            "audit" => Ok(Channel::Audit),
            _ => name
                .strip_prefix(REQUEST_PREFIX)
                .and_then(|id| Uuid::parse_str(id).ok().filter(|u| u.to_string() == id))
                .map(Channel::Request)
                .ok_or(Refusal::Unknown),
        }
    }

    pub fn name(self) -> String {
        match self {
            Channel::Requests => "requests".to_owned(),
            Channel::Request(id) => format!("{REQUEST_PREFIX}{id}"),
            Channel::Approvals => "approvals".to_owned(),
            Channel::Audit => "audit".to_owned(),
        }
    }

    /// The channel names `who` may use, for the greeting.
    pub fn offered(who: &UserPrincipal) -> Vec<&'static str> {
        let mut names = vec!["requests", "request:<id>"];
        if who.role.has(Permission::RequestsApprove) {
            names.push("approvals");
        }
        if who.role.has(Permission::AuditRead) {
            names.push("audit");
        }
        names
    }
}

/// Why a subscription was refused. The codes are part of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    InvalidName,
    Unknown,
    /// The channel exists but not for this principal, or the request is not visible to it
    /// (the same answer either way, so request ids cannot be probed).
    Forbidden,
    TooMany,
    NotSubscribed,
}

impl Refusal {
    pub fn code(self) -> &'static str {
        match self {
            Refusal::InvalidName => "invalid_channel",
            Refusal::Unknown => "unknown_channel",
            Refusal::Forbidden => "forbidden_channel",
            Refusal::TooMany => "too_many_subscriptions",
            Refusal::NotSubscribed => "not_subscribed",
        }
    }

    pub fn message(self, max_subscriptions: usize) -> String {
        match self {
            Refusal::InvalidName => format!(
                "a channel name is 1 to {MAX_CHANNEL_NAME} characters of a-z, A-Z, 0-9, ':', '.', '_' and '-'"
            ),
            Refusal::Unknown => {
                "no such channel: use requests, request:<id>, approvals or audit".to_owned()
            }
            Refusal::Forbidden => "this channel is not visible to you".to_owned(),
            Refusal::TooMany => {
                format!("a connection may hold at most {max_subscriptions} subscriptions")
            }
            Refusal::NotSubscribed => "this connection is not subscribed to it".to_owned(),
        }
    }
}

/// Whoever may read every request, approve them or read the audit log sees every request's
/// events on `requests`; anyone else only their own.
fn sees_every_request(who: &UserPrincipal) -> bool {
    [
        Permission::RequestsViewAll,
        Permission::RequestsApprove,
        Permission::AuditRead,
    ]
    .into_iter()
    .any(|p| who.role.has(p))
}

/// What an approver follows: requests that need a decision, the decisions, the context
/// gathered for them, and pending requests ending without one.
fn concerns_approvers(event: &LiveEvent) -> bool {
    let action = event.action.as_str();
    let is = |a: Action| action == a.as_str();
    if is(Action::RequestCreated) {
        return event.details.get("decision").and_then(|d| d.as_str()) == Some("require_approval");
    }
    if is(Action::RequestApproved) {
        // An auto-approval needed nobody.
        return event.details.get("auto").and_then(|a| a.as_bool()) != Some(true);
    }
    if is(Action::RequestCancelled) || is(Action::RequestExpired) {
        // Without `from` the cancellation covered every open request (lockdown).
        return event
            .details
            .get("from")
            .and_then(|f| f.as_str())
            .is_none_or(|f| f == "pending_approval");
    }
    [
        Action::ApprovalRecorded,
        Action::ApprovalRefused,
        Action::RequestRejected,
        Action::RequestExplained,
        Action::RequestPreviewed,
    ]
    .into_iter()
    .any(is)
}

/// The owner (user id) of a request, `None` when it does not exist.
async fn request_owner(state: &AppState, id: Uuid) -> Result<Option<String>, ApiError> {
    let row = sqlx::query("SELECT requester_user_id FROM requests WHERE id = ?")
        .bind(id.to_string())
        .fetch_optional(state.store.reader())
        .await?;
    Ok(match row {
        Some(row) => Some(row.try_get(0)?),
        None => None,
    })
}

/// The subscriptions of one connection.
#[derive(Debug)]
pub struct Subscriptions {
    channels: Vec<Channel>,
    max: usize,
    /// Request id → whether the subscriber owns it, for `requests` without the right to see
    /// every request.
    owned: HashMap<Uuid, bool>,
    /// Refusals audited so far: a client sending refused subscriptions in a loop gets each
    /// one refused, but cannot write more than `max` audit events per connection.
    audited: usize,
}

impl Subscriptions {
    pub fn new(max: usize) -> Subscriptions {
        Subscriptions {
            channels: Vec::new(),
            max,
            owned: HashMap::new(),
            audited: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }

    /// Subscribes `who` to the channel `name`, or says why not. A channel `who` may not see is
    /// audited as a denial (AUD-1); `Err(Ok(refusal))` is a refusal, `Err(Err(_))` a failure
    /// of the audit itself, which ends the connection (AUD-2).
    pub async fn subscribe(
        &mut self,
        state: &AppState,
        who: &UserPrincipal,
        ctx: &Context,
        name: &str,
    ) -> Result<Channel, Result<Refusal, ApiError>> {
        let channel = Channel::parse(name).map_err(Ok)?;
        if self.channels.contains(&channel) {
            return Ok(channel);
        }
        if self.channels.len() >= self.max {
            return Err(Ok(Refusal::TooMany));
        }
        let (allowed, required) = match channel {
            Channel::Requests => (true, None),
            Channel::Approvals => (
                who.role.has(Permission::RequestsApprove),
                Some(Permission::RequestsApprove),
            ),
            Channel::Audit => (
                who.role.has(Permission::AuditRead),
                Some(Permission::AuditRead),
            ),
            // The rule of `GET /api/v1/requests/{id}`: the owner, or `requests:view_all`.
            Channel::Request(id) => {
                let owner = request_owner(state, id).await.map_err(Err)?;
                let visible = owner
                    .is_some_and(|o| o == who.user_id || who.role.has(Permission::RequestsViewAll));
                (visible, Some(Permission::RequestsViewAll))
            }
        };
        if allowed {
            self.channels.push(channel);
            return Ok(channel);
        }
        if self.audited < self.max {
            self.audited += 1;
            let event = Event {
                actor: who.display(),
                action: Action::AccessDenied,
                target: "GET /api/v1/events".to_owned(),
                outcome: Outcome::Denied,
                details: json!({ "channel": name, "required": required.map(|p| p.as_str()) }),
            };
            crate::lifecycle::audit_only(state, ctx, event)
                .await
                .map_err(Err)?;
        }
        Err(Ok(Refusal::Forbidden))
    }

    pub fn unsubscribe(&mut self, name: &str) -> Result<Channel, Refusal> {
        let channel = Channel::parse(name)?;
        let at = self
            .channels
            .iter()
            .position(|c| *c == channel)
            .ok_or(Refusal::NotSubscribed)?;
        self.channels.remove(at);
        Ok(channel)
    }

    /// The subscribed channels `event` goes out on, in subscription order. A request whose
    /// owner cannot be looked up is not delivered (fail closed).
    pub async fn deliveries(
        &mut self,
        state: &AppState,
        who: &UserPrincipal,
        event: &LiveEvent,
    ) -> Vec<Channel> {
        let on_requests = match event.request_id {
            Some(id) if self.channels.contains(&Channel::Requests) => {
                sees_every_request(who) || self.owns(state, who, id).await
            }
            _ => false,
        };
        self.channels
            .iter()
            .copied()
            .filter(|c| match c {
                Channel::Requests => on_requests,
                Channel::Request(id) => event.request_id == Some(*id),
                Channel::Approvals => concerns_approvers(event),
                Channel::Audit => true,
            })
            .collect()
    }

    async fn owns(&mut self, state: &AppState, who: &UserPrincipal, id: Uuid) -> bool {
        if let Some(owned) = self.owned.get(&id) {
            return *owned;
        }
        match request_owner(state, id).await {
            Ok(owner) => {
                let owned = owner.is_some_and(|o| o == who.user_id);
                if self.owned.len() >= OWNER_CACHE {
                    self.owned.clear();
                }
                self.owned.insert(id, owned);
                owned
            }
            Err(e) => {
                tracing::warn!(error = %e, request = %id, "live events: request owner lookup failed");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, expect: Result<Channel, Refusal>) {
        assert_eq!(Channel::parse(name), expect, "{name:?}");
    }

    #[test]
    fn channel_names_follow_the_pattern_and_only_known_channels_parse() {
        let id = Uuid::new_v4();
        check("requests", Ok(Channel::Requests));
        check("approvals", Ok(Channel::Approvals));
        check("audit", Ok(Channel::Audit));
        check(&format!("request:{id}"), Ok(Channel::Request(id)));
        for bad in [
            "",
            "has space",
            "a/b",
            "caf\u{e9}",
            "\u{ff41}udit",
            "audit\n",
            "audit\0",
            &"a".repeat(MAX_CHANNEL_NAME + 1),
        ] {
            check(bad, Err(Refusal::InvalidName));
        }
        for unknown in [
            "Audit",
            "request:",
            "request:not-a-uuid",
            &format!("request:{}", id.simple()),
            &format!("request:{}", id.to_string().to_uppercase()),
            "requests:all",
            &"a".repeat(MAX_CHANNEL_NAME),
        ] {
            check(unknown, Err(Refusal::Unknown));
        }
        assert_eq!(Channel::Request(id).name(), format!("request:{id}"));
    }
}
