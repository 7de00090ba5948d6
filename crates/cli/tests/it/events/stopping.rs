//! A stopping server closes its event sockets itself, with a close frame, before it is gone.

use std::time::Duration;

use futures_util::StreamExt;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message;

use super::{PATIENCE, authed, subscribed};
use crate::harness::TestApp;

/// 1001, "going away".
const AWAY: u16 = 1001;

/// EX-3: a server told to stop closes a subscribed socket with 1001 "server stopping", and its
/// stop waits for the socket: by the time the stop returns, the close frame is already at the
/// client, read without waiting, and so is the end of the connection. This client reads
/// nothing until then, so it never answers the close frame: the socket gives up waiting for
/// that answer after its close grace (2 s), within the stop's grace (5 s). Before, the socket
/// outlived the stop until its next recheck (up to 2 s) found the state store closed, and a
/// `portcullis server` process exited first, dropping the socket without a close frame.
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
    // The server's end of the connection is gone too: the stop waited for the socket to
    // finish, not only to send its close frame. Looked at on the TCP socket itself (a peek
    // that does not wait): the WebSocket client would report its own side closed here either
    // way. Nothing else runs meanwhile on this test's one thread, so a server that had not
    // waited could not have closed it since.
    let MaybeTlsStream::Plain(tcp) = socket.get_ref() else {
        panic!("a plain TCP socket was expected");
    };
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit()];
    match socket2::SockRef::from(tcp).peek(&mut byte) {
        Ok(0) => {}
        other => panic!("the server's end was still open when its stop returned: {other:?}"),
    }
}
