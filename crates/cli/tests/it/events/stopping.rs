//! A stopping server closes its event sockets itself, with a close frame, before it is gone.

use std::time::Duration;

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use super::{PATIENCE, authed, subscribed};
use crate::harness::TestApp;

/// 1001, "going away".
const AWAY: u16 = 1001;

/// EX-3: a server told to stop closes a subscribed socket with 1001 "server stopping", and its
/// stop waits for the socket: by the time the stop returns, the close frame is already at the
/// client, read without waiting. Before, the socket outlived the stop until its next recheck
/// (up to 2 s) found the state store closed, and a `portcullis server` process exited first,
/// dropping the socket without a close frame.
#[tokio::test]
async fn ex3_a_stopping_server_closes_its_event_sockets_before_its_stop_returns() {
    let app = TestApp::spawn().await;
    let (mut socket, _) = authed(app.url(), &app.stack.admin_token).await;
    subscribed(&mut socket, "requests").await;
    tokio::time::timeout(PATIENCE, app.stop())
        .await
        .expect("the stop ended");
    let first = tokio::time::timeout(Duration::ZERO, socket.next())
        .await
        .expect("the close frame was sent before the stop returned");
    match first {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), AWAY, "{frame:?}");
            assert_eq!(frame.reason.as_str(), "server stopping");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
}
