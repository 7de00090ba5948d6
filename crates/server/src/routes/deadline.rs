//! A request body that must arrive whole by a deadline (`web.body_read_timeout_secs`): a client
//! trickling a body one byte at a time would otherwise keep its connection, its handler and
//! what the handler holds for as long as it liked. Past the deadline, reading the body fails
//! with [`BodyTimedOut`], which `ApiJson` answers with 408 `request_timeout`; the rest of the
//! body is never read and the connection is closed. Agent result uploads and reports stream
//! under their own rules and are not wrapped.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use http_body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// The error a body past its deadline reads as.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {secs} s")]
pub(crate) struct BodyTimedOut {
    pub(crate) secs: u64,
}

/// `inner`, failing once `within` has passed since now without its end.
pub(crate) fn within(inner: Body, within: Duration) -> Body {
    Body::new(Deadline {
        inner,
        at: Instant::now() + within,
        secs: within.as_secs(),
        timer: None,
    })
}

struct Deadline {
    inner: Body,
    at: Instant,
    secs: u64,
    /// Made only when the body is not there at once: a body that comes with its head (most
    /// of them) never registers a timer.
    timer: Option<Pin<Box<Sleep>>>,
}

impl http_body::Body for Deadline {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        let at = self.at;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if timer.as_mut().poll(cx).is_ready() {
            let secs = self.secs;
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut { secs }))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The deadline's seconds when `error` (or what caused it) is a body past its deadline.
pub(crate) fn timed_out(error: &(dyn std::error::Error + 'static)) -> Option<u64> {
    let mut at = Some(error);
    while let Some(e) = at {
        if let Some(t) = e.downcast_ref::<BodyTimedOut>() {
            return Some(t.secs);
        }
        at = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    #[tokio::test]
    async fn a_body_that_comes_in_time_is_whole_and_one_that_does_not_fails() {
        let quick = within(Body::from("{\"a\":1}"), Duration::from_secs(1));
        let bytes = axum::body::to_bytes(quick, 1024).await.expect("in time");
        assert_eq!(&bytes[..], b"{\"a\":1}");

        // One byte, then nothing more and no end: the read fails at the deadline.
        let trickle =
            futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"{"))])
                .chain(futures_util::stream::pending());
        let slow = within(Body::from_stream(trickle), Duration::from_millis(200));
        let err = axum::body::to_bytes(slow, 1024)
            .await
            .expect_err("past the deadline");
        assert_eq!(timed_out(&err), Some(0), "{err}");
        let other = axum::Error::new(std::io::Error::other("reset"));
        assert_eq!(timed_out(&other), None);
    }
}
