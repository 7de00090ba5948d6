//! `GET /api/v1/events`: live events over a WebSocket (WEB-8).
//!
//! The route is `Public` in the route table only because a browser cannot put an
//! `Authorization` header on a WebSocket: the socket authenticates itself before any event
//! flows, and an anonymous socket never receives one (SEC-2). It accepts, in this order, an
//! `Authorization: Bearer` header on the upgrade; the session cookie, only together with an
//! allowed `Origin` (AUTH-3); or a first message `{"type":"auth","token":…}` within
//! `events.auth_timeout_secs`, after which the socket is closed with 1008 (policy violation).
//! An `Origin` that is neither this server's nor listed in `web.cors_origins` is refused with
//! 403 before the upgrade, so another site's page cannot ride on a visitor's cookie.
//!
//! The protocol is JSON text messages.
//! - Client: `{"type":"auth","token":…}`, `{"type":"subscribe","channel":…}`,
//!   `{"type":"unsubscribe","channel":…}`, `{"type":"ping"}`.
//! - Server: `{"type":"ready","user":…,"role":…,"channels":[…],"max_subscriptions":…}`,
//!   `{"type":"subscribed","channel":…}`, `{"type":"unsubscribed","channel":…}`,
//!   `{"type":"pong"}`, `{"type":"event","channel":…,"event":{…}}` and
//!   `{"type":"error","code":…,"message":…}` (with `channel` when it names one).
//!
//! Limits (WEB-8): a message over `events.max_message_bytes` closes the socket (1009, or 1008
//! when the transport refuses it first); more than `events.max_messages_per_sec` client
//! messages in any second close it (1008); a binary message closes it (1003); a subscription
//! beyond `events.max_subscriptions` is refused. The credential is checked again through the
//! revocation-aware authentication cache before every batch of events and every
//! [`RECHECK_EVERY`], so a revoked token or a suspended user stops receiving and the socket
//! closes. Channels and who sees what are in [`crate::events`].

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::time::{Instant, MissedTickBehavior};
use zeroize::Zeroizing;

use super::{Ctx, same_origin, session_cookie};
use crate::AppState;
use crate::audit::{Action, Context, Event, Outcome};
use crate::auth::{Principal, UserPrincipal};
use crate::clock;
use crate::config::EventSettings;
use crate::error::ApiError;
use crate::events::{Channel, LiveEvent, Refusal, Subscriptions, valid_channel_name};

const ROUTE: &str = "GET /api/v1/events";
/// The longest an authenticated socket goes without its credential being checked again.
const RECHECK_EVERY: Duration = Duration::from_secs(2);
/// How long a closing socket waits for the client's close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// The most events handled between two credential checks.
const BATCH: usize = 256;

/// What a client may send. No `Debug`: `Auth` carries a secret.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientMessage {
    Auth { token: String },
    Subscribe { channel: String },
    Unsubscribe { channel: String },
    Ping {},
}

impl ClientMessage {
    /// A JSON object only: serde would also read a tagged enum from an array.
    fn parse(text: &str) -> Option<ClientMessage> {
        let object =
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text).ok()?;
        ClientMessage::deserialize(serde_json::Value::Object(object)).ok()
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ServerMessage<'a> {
    Ready {
        user: &'a str,
        role: &'a str,
        channels: Vec<&'static str>,
        max_subscriptions: usize,
        max_messages_per_sec: u32,
        max_message_bytes: usize,
    },
    Subscribed {
        channel: &'a str,
    },
    Unsubscribed {
        channel: &'a str,
    },
    Pong,
    Error {
        code: &'static str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<&'a str>,
    },
    Event {
        channel: &'a str,
        event: &'a LiveEvent,
    },
}

/// A person (or their token) on this socket, and the credential to check again.
struct Authenticated {
    who: UserPrincipal,
    secret: Zeroizing<String>,
}

/// How a socket ends: closed by the server with a code and reason, or gone from the client.
enum End {
    Close(u16, &'static str),
    Gone,
}

enum Inbound {
    Text(Utf8Bytes),
    /// A ping or pong frame; counted, answered by the transport.
    Control,
}

/// Live events over a WebSocket. Authenticate with an `Authorization: Bearer` header on the
/// upgrade, the session cookie from an allowed `Origin`, or a first message
/// `{"type":"auth","token":…}` within `events.auth_timeout_secs`; then subscribe to
/// `requests`, `request:<id>`, `approvals` or `audit` with `{"type":"subscribe","channel":…}`.
/// Events arrive as `{"type":"event","channel":…,"event":{…}}`; refusals as
/// `{"type":"error","code":…,"message":…}`.
#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = "events",
    responses(
        (status = 101, description = "Switched to the WebSocket protocol (JSON text messages)"),
        (status = 400, description = "Not a WebSocket upgrade"),
        (status = 401, description = "The bearer header or the session cookie is not a valid credential"),
        (status = 403, description = "The `Origin` is neither this server's nor in `web.cors_origins`, or a session cookie came without one (`origin_not_allowed`); or the credential is an agent's (`missing_permission`)"),
        (status = 503, description = "The audit chain is unavailable"),
    ),
)]
pub(super) async fn events(State(state): State<AppState>, Ctx(ctx): Ctx, req: Request) -> Response {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    let origin_allowed = origin
        .as_deref()
        .map(|o| same_origin(&req) || state.config.web.cors_origins.iter().any(|c| c == o));
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|v| Zeroizing::new(v.trim().to_owned()));
    let cookie = session_cookie(&req, state.config.secure_cookies()).map(Zeroizing::new);
    // A foreign Origin is refused outright; the cookie is a browser's credential, so it
    // counts only with an Origin this server accepts (AUTH-3).
    let cookie_without_origin = bearer.is_none() && cookie.is_some() && origin.is_none();
    if origin_allowed == Some(false) || cookie_without_origin {
        return refuse_origin(&state, &ctx, origin.as_deref()).await;
    }
    let (mut parts, _body) = req.into_parts();
    let Ok(upgrade) = WebSocketUpgrade::from_request_parts(&mut parts, &state).await else {
        return ApiError::bad_request("this endpoint speaks WebSocket only").into_response();
    };
    let authenticated = match bearer.or(cookie) {
        None => None,
        Some(secret) => match authenticate(&state, &ctx, secret).await {
            Ok(a) => Some(a),
            Err(e) => return e.into_response(),
        },
    };
    let limits = state.config.events.clone();
    // Counted open from here until it closes: a stopping server waits for it (EX-3).
    let open = state.socket_opened();
    upgrade
        .max_message_size(limits.max_message_bytes)
        .max_frame_size(limits.max_message_bytes)
        .on_upgrade(move |socket| async move {
            let _open = open;
            let mut connection = Connection {
                state,
                ctx,
                socket,
                limits,
                recent: VecDeque::new(),
            };
            let end = connection.session(authenticated).await;
            connection.close(end).await;
        })
}

async fn refuse_origin(state: &AppState, ctx: &Context, origin: Option<&str>) -> Response {
    let event = Event {
        actor: "anonymous".into(),
        action: Action::OriginRefused,
        target: ROUTE.into(),
        outcome: Outcome::Denied,
        details: json!({ "origin": origin.map(|o| o.chars().take(200).collect::<String>()) }),
    };
    if let Err(e) = crate::lifecycle::audit_only(state, ctx, event).await {
        return e.into_response();
    }
    ApiError::Forbidden {
        reason: "origin_not_allowed",
    }
    .into_response()
}

/// Authenticates a person's credential, auditing a refusal as the route guard does. Agents
/// have no business here.
async fn authenticate(
    state: &AppState,
    ctx: &Context,
    secret: Zeroizing<String>,
) -> Result<Authenticated, ApiError> {
    let now = clock::now_ms();
    let (event, refusal) = match state
        .auth
        .authenticate(&state.store, &secret, now, &ctx.client_addr)
        .await
    {
        Ok(Principal::User(who)) => return Ok(Authenticated { who, secret }),
        Ok(Principal::Agent(agent)) => (
            Event {
                actor: format!("agent:{}", agent.name),
                action: Action::AccessDenied,
                target: ROUTE.into(),
                outcome: Outcome::Denied,
                details: json!({ "required": "user" }),
            },
            ApiError::Forbidden {
                reason: "missing_permission",
            },
        ),
        Err(failure) => {
            let token_id = crate::auth::parse_bearer(&secret).map(|(_, id)| id.to_owned());
            (
                Event {
                    actor: "anonymous".into(),
                    action: Action::AuthFailed,
                    target: ROUTE.into(),
                    outcome: Outcome::Denied,
                    details: json!({ "reason": failure.as_str(), "token_id": token_id }),
                },
                ApiError::Unauthenticated,
            )
        }
    };
    crate::lifecycle::audit_only(state, ctx, event).await?;
    Err(refusal)
}

struct Connection {
    state: AppState,
    ctx: Context,
    socket: WebSocket,
    limits: EventSettings,
    /// When the client's messages of the last second arrived.
    recent: VecDeque<Instant>,
}

impl Connection {
    async fn session(&mut self, authenticated: Option<Authenticated>) -> End {
        let mut auth = match authenticated {
            Some(a) => a,
            None => match self.first_message_auth().await {
                Ok(a) => a,
                Err(end) => return end,
            },
        };
        match self.serve(&mut auth).await {
            Ok(never) => match never {},
            Err(end) => end,
        }
    }

    /// Waits for `{"type":"auth","token":…}` until the auth timeout; anything else first
    /// closes the socket. No event source exists for the connection yet.
    async fn first_message_auth(&mut self) -> Result<Authenticated, End> {
        let deadline = Instant::now() + Duration::from_secs(self.limits.auth_timeout_secs);
        loop {
            let Ok(inbound) = tokio::time::timeout_at(deadline, self.next_message()).await else {
                let message = format!(
                    "authenticate within {} seconds: {{\"type\":\"auth\",\"token\":…}}",
                    self.limits.auth_timeout_secs
                );
                self.error("auth_timeout", &message, None).await?;
                return Err(End::Close(close_code::POLICY, "authentication timed out"));
            };
            let Inbound::Text(text) = inbound? else {
                continue;
            };
            let Some(ClientMessage::Auth { token }) = ClientMessage::parse(&text) else {
                let message = "authenticate first: {\"type\":\"auth\",\"token\":…}";
                self.error("unauthenticated", message, None).await?;
                return Err(End::Close(close_code::POLICY, "authentication required"));
            };
            return match authenticate(&self.state, &self.ctx, Zeroizing::new(token)).await {
                Ok(a) => Ok(a),
                Err(ApiError::Forbidden { .. }) => {
                    let message = "agent credentials cannot subscribe to events";
                    self.error("forbidden", message, None).await?;
                    Err(End::Close(close_code::POLICY, "not a person's credential"))
                }
                Err(ApiError::Unauthenticated) => {
                    let message = "the token is not valid";
                    self.error("unauthenticated", message, None).await?;
                    Err(End::Close(close_code::POLICY, "authentication failed"))
                }
                Err(e) => Err(self.fail(e).await),
            };
        }
    }

    async fn serve(&mut self, auth: &mut Authenticated) -> Result<Infallible, End> {
        // Subscribed only now: nothing was buffered for the socket before it authenticated.
        let mut live = self.state.audit.live();
        let mut subscriptions = Subscriptions::new(self.limits.max_subscriptions);
        let ready = ServerMessage::Ready {
            user: &auth.who.user_name,
            role: auth.who.role.as_str(),
            channels: Channel::offered(&auth.who),
            max_subscriptions: self.limits.max_subscriptions,
            max_messages_per_sec: self.limits.max_messages_per_sec,
            max_message_bytes: self.limits.max_message_bytes,
        };
        self.send(&ready).await?;
        let mut recheck = tokio::time::interval_at(Instant::now() + RECHECK_EVERY, RECHECK_EVERY);
        recheck.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let state = self.state.clone();
        let stopping = state.stopping();
        tokio::pin!(stopping);
        loop {
            tokio::select! {
                inbound = self.next_message() => {
                    if let Inbound::Text(text) = inbound? {
                        self.handle(&text, auth, &mut subscriptions).await?;
                    }
                }
                received = live.recv() => {
                    let mut batch = Vec::new();
                    match received {
                        Ok(event) => batch.push(event),
                        Err(RecvError::Lagged(missed)) => self.lagged(missed).await?,
                        Err(RecvError::Closed) => {
                            return Err(End::Close(close_code::AWAY, "server stopping"));
                        }
                    }
                    while batch.len() < BATCH {
                        match live.try_recv() {
                            Ok(event) => batch.push(event),
                            Err(TryRecvError::Lagged(missed)) => self.lagged(missed).await?,
                            Err(_) => break,
                        }
                    }
                    // Every batch wakes the check, so the commit that revokes a credential
                    // is itself what closes its sockets.
                    self.recheck(auth).await?;
                    self.deliver(&batch, auth, &mut subscriptions).await?;
                }
                _ = recheck.tick() => self.recheck(auth).await?,
                // EX-3: a stopping server closes its sockets itself, with a close frame,
                // before it exits.
                () = &mut stopping => {
                    return Err(End::Close(close_code::AWAY, "server stopping"));
                }
            }
        }
    }

    async fn deliver(
        &mut self,
        batch: &[Arc<LiveEvent>],
        auth: &Authenticated,
        subscriptions: &mut Subscriptions,
    ) -> Result<(), End> {
        if subscriptions.is_empty() {
            return Ok(());
        }
        for event in batch {
            for channel in subscriptions
                .deliveries(&self.state, &auth.who, event)
                .await
            {
                let name = channel.name();
                self.send(&ServerMessage::Event {
                    channel: &name,
                    event,
                })
                .await?;
            }
        }
        Ok(())
    }

    /// The credential is still valid and still means the same person and role; otherwise
    /// the socket closes.
    async fn recheck(&mut self, auth: &mut Authenticated) -> Result<(), End> {
        if self.state.store.reader().is_closed() {
            return Err(End::Close(close_code::AWAY, "server stopping"));
        }
        let now = clock::now_ms();
        let checked = self
            .state
            .auth
            .recheck(&self.state.store, &auth.secret, now)
            .await;
        match checked {
            Ok(Principal::User(who))
                if who.user_id == auth.who.user_id && who.role == auth.who.role =>
            {
                auth.who = who;
                Ok(())
            }
            Ok(_) => {
                let message = "the role of this credential changed: connect again";
                self.error("credential_changed", message, None).await?;
                Err(End::Close(close_code::POLICY, "credential changed"))
            }
            Err(_) => {
                let message = "the credential was revoked or has expired";
                self.error("unauthenticated", message, None).await?;
                Err(End::Close(close_code::POLICY, "credential no longer valid"))
            }
        }
    }

    async fn handle(
        &mut self,
        text: &str,
        auth: &Authenticated,
        subscriptions: &mut Subscriptions,
    ) -> Result<(), End> {
        let Some(message) = ClientMessage::parse(text) else {
            let message = "expected {\"type\":\"subscribe\"|\"unsubscribe\",\"channel\":…} or {\"type\":\"ping\"}";
            return self.error("invalid_message", message, None).await;
        };
        match message {
            ClientMessage::Auth { .. } => {
                let message = "this connection is authenticated already";
                self.error("already_authenticated", message, None).await
            }
            ClientMessage::Ping {} => self.send(&ServerMessage::Pong).await,
            ClientMessage::Subscribe { channel } => {
                let subscribed = subscriptions
                    .subscribe(&self.state, &auth.who, &self.ctx, &channel)
                    .await;
                match subscribed {
                    Ok(c) => {
                        let name = c.name();
                        self.send(&ServerMessage::Subscribed { channel: &name })
                            .await
                    }
                    Err(Ok(refusal)) => self.refuse(refusal, &channel).await,
                    Err(Err(e)) => Err(self.fail(e).await),
                }
            }
            ClientMessage::Unsubscribe { channel } => match subscriptions.unsubscribe(&channel) {
                Ok(c) => {
                    let name = c.name();
                    self.send(&ServerMessage::Unsubscribed { channel: &name })
                        .await
                }
                Err(refusal) => self.refuse(refusal, &channel).await,
            },
        }
    }

    /// The next client message, after the rate and size limits. A close from the client
    /// ends the socket (the transport answers it).
    async fn next_message(&mut self) -> Result<Inbound, End> {
        let message = match self.socket.recv().await {
            None | Some(Ok(Message::Close(_))) => return Err(End::Gone),
            Some(Ok(m)) => m,
            // Over the transport's size limit, or not WebSocket at all.
            Some(Err(e)) => {
                tracing::debug!(error = %e, "live events: unreadable message");
                return Err(End::Close(close_code::POLICY, "message refused"));
            }
        };
        let now = Instant::now();
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.limits.max_messages_per_sec as usize {
            let message = format!(
                "more than {} messages in a second",
                self.limits.max_messages_per_sec
            );
            self.error("rate_limited", &message, None).await?;
            return Err(End::Close(close_code::POLICY, "too many messages"));
        }
        self.recent.push_back(now);
        match message {
            Message::Text(text) if text.len() > self.limits.max_message_bytes => {
                Err(End::Close(close_code::SIZE, "message too large"))
            }
            Message::Text(text) => Ok(Inbound::Text(text)),
            Message::Binary(_) => {
                let message = "messages are JSON text";
                self.error("binary_not_supported", message, None).await?;
                Err(End::Close(
                    close_code::UNSUPPORTED,
                    "binary messages are refused",
                ))
            }
            Message::Ping(_) | Message::Pong(_) => Ok(Inbound::Control),
            Message::Close(_) => Err(End::Gone),
        }
    }

    async fn lagged(&mut self, missed: u64) -> Result<(), End> {
        let message = format!(
            "{missed} events were dropped because this connection fell behind; reload the current state"
        );
        self.error("lagged", &message, None).await
    }

    async fn refuse(&mut self, refusal: Refusal, channel: &str) -> Result<(), End> {
        let message = refusal.message(self.limits.max_subscriptions);
        // Only a well-formed name is echoed back.
        let channel = valid_channel_name(channel).then_some(channel);
        self.error(refusal.code(), &message, channel).await
    }

    /// An internal failure (the audit append among them, AUD-2): logged, and the socket
    /// closes with an opaque reason.
    async fn fail(&mut self, e: ApiError) -> End {
        tracing::error!(error = %e, "live events: internal error");
        match self.error("internal", "internal error", None).await {
            Ok(()) => End::Close(close_code::ERROR, "internal error"),
            Err(end) => end,
        }
    }

    async fn error(
        &mut self,
        code: &'static str,
        message: &str,
        channel: Option<&str>,
    ) -> Result<(), End> {
        self.send(&ServerMessage::Error {
            code,
            message,
            channel,
        })
        .await
    }

    async fn send(&mut self, message: &ServerMessage<'_>) -> Result<(), End> {
        let text = match serde_json::to_string(message) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "live events: encoding a message failed");
                return Err(End::Close(close_code::ERROR, "internal error"));
            }
        };
        self.socket
            .send(Message::Text(text.into()))
            .await
            .map_err(|_| End::Gone)
    }

    /// Sends the close frame and waits briefly for the client's, so that everything sent
    /// before it is read before the connection goes.
    async fn close(mut self, end: End) {
        if let End::Close(code, reason) = end {
            let frame = CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            };
            if self.socket.send(Message::Close(Some(frame))).await.is_err() {
                return;
            }
        }
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            while let Some(Ok(m)) = self.socket.recv().await {
                if matches!(m, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The protocol is strict: a known type with a field it does not have is no message.
    #[test]
    fn client_messages_parse_strictly() {
        let parses = |text: &str| ClientMessage::parse(text).is_some();
        for good in [
            r#"{"type":"ping"}"#,
            r#"{"type":"auth","token":"t"}"#,
            r#"{"type":"subscribe","channel":"audit"}"#,
            r#"{"type":"unsubscribe","channel":"audit"}"#,
        ] {
            assert!(parses(good), "{good}");
        }
        for bad in [
            r#"{"type":"ping","pad":"x"}"#,
            r#"{"type":"subscribe","channel":"audit","extra":1}"#,
            r#"{"type":"subscribe"}"#,
            r#"{"type":"Ping"}"#,
            r#"{"channel":"audit"}"#,
            r#"["ping"]"#,
            r#"["subscribe","audit"]"#,
        ] {
            assert!(!parses(bad), "{bad}");
        }
    }
}
