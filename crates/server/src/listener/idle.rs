//! A connection with no request open is closed `web.header_read_timeout_secs` (at most twice
//! that) after its last request ended, or after it opened, on HTTP/1.1 and HTTP/2 alike. hyper bounds the wait
//! for an HTTP/1.1 request head itself, but an HTTP/2 connection (`h2` over TLS, or prior
//! knowledge on plain HTTP) had no such bound: once its requests were answered, a client
//! could keep it open for ever, with PINGs or with nothing at all, and hold its place under
//! the connection caps, its task and its descriptor.
//!
//! The connection's service counts its open requests ([`Tracked`]); a request is open from
//! its head until its response body has ended or been dropped, so long polls and streamed
//! results are never cut. The connection's stream ([`Idle`]) reads as ended once no request
//! has been open for the timeout, which makes hyper close the connection. Bytes do not count
//! as activity: frames that are not requests (HTTP/2 PINGs, SETTINGS, WINDOW_UPDATEs) do not
//! keep a connection. A connection upgraded to a WebSocket is left to the event socket's own
//! rules (WEB-8).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{Response, StatusCode};
use http_body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// What one connection's requests tell its stream.
pub(super) struct Activity {
    /// Requests open now.
    open: AtomicUsize,
    /// Upgraded (a WebSocket): no longer a connection of requests.
    upgraded: AtomicBool,
    /// When the last request ended, or the connection opened: milliseconds since `opened`.
    quiet_since_ms: AtomicU64,
    opened: Instant,
}

impl Activity {
    pub(super) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            open: AtomicUsize::new(0),
            upgraded: AtomicBool::new(false),
            quiet_since_ms: AtomicU64::new(0),
            opened: Instant::now(),
        })
    }

    fn begin(self: &Arc<Self>) -> OpenRequest {
        self.open.fetch_add(1, Ordering::AcqRel);
        OpenRequest(Arc::clone(self))
    }

    fn quiet_since(&self) -> Instant {
        self.opened + Duration::from_millis(self.quiet_since_ms.load(Ordering::Acquire))
    }
}

/// One open request; ends when dropped.
struct OpenRequest(Arc<Activity>);

impl Drop for OpenRequest {
    fn drop(&mut self) {
        let activity = &self.0;
        // The time first, then the count: a timer that sees no request open sees this end.
        let ms = u64::try_from(activity.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        activity.quiet_since_ms.fetch_max(ms, Ordering::AcqRel);
        activity.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The timer of a connection's stream. It is not moved as requests come and go (that would
/// cost a timer-wheel update per request): when it fires, it looks at the connection and
/// either ends it or is set again, to the timeout after the last request's end, or a whole
/// timeout on while a request is open. So a connection closes between one and two timeouts
/// after its last request ended.
pub(super) struct Idle {
    activity: Arc<Activity>,
    after: Duration,
    /// Made when the connection first waits for a read.
    timer: Option<Pin<Box<Sleep>>>,
    /// Upgraded: never timed again.
    off: bool,
}

impl Idle {
    pub(super) fn new(activity: Arc<Activity>, after: Duration) -> Idle {
        Idle {
            activity,
            after,
            timer: None,
            off: false,
        }
    }

    /// Called when a read of the connection would wait: true when it has had no request open
    /// for the timeout, and the read should end the connection instead.
    pub(super) fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.off {
            return false;
        }
        let activity = &self.activity;
        let after = self.after;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(activity.opened + after)));
        while timer.as_mut().poll(cx).is_ready() {
            if activity.upgraded.load(Ordering::Acquire) {
                self.off = true;
                self.timer = None;
                return false;
            }
            let now = Instant::now();
            let deadline = if activity.open.load(Ordering::Acquire) > 0 {
                now + after.max(Duration::from_millis(1))
            } else {
                activity.quiet_since() + after
            };
            if deadline <= now {
                return true;
            }
            timer.as_mut().reset(deadline);
        }
        false
    }
}

/// A connection's service, counting its open requests into its [`Activity`].
#[derive(Clone)]
pub struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    pub(super) fn new(inner: S, activity: Arc<Activity>) -> Tracked<S> {
        Tracked { inner, activity }
    }
}

type Answer<B, E> = Pin<Box<dyn Future<Output = Result<Response<Held<B>>, E>> + Send>>;

impl<S, R, B> tower::Service<R> for Tracked<S>
where
    S: tower::Service<R, Response = Response<B>>,
    S::Future: Send + 'static,
    B: 'static,
{
    type Response = Response<Held<B>>;
    type Error = S::Error;
    type Future = Answer<B, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        // Open from here: dropped with the handler if it never answers, else with the body.
        let open = self.activity.begin();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                open.0.upgraded.store(true, Ordering::Release);
            }
            Ok(response.map(|body| Held {
                body,
                open: Some(open),
            }))
        })
    }
}

/// A response body that keeps its request open until it has ended or is dropped.
pub struct Held<B> {
    body: B,
    open: Option<OpenRequest>,
}

impl<B> http_body::Body for Held<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(frame, Poll::Ready(None)) {
            self.open = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `idle` expires within `wait`, its timer driven by the runtime.
    async fn expires_within(idle: &mut Idle, wait: Duration) -> bool {
        let expiry = std::future::poll_fn(|cx| {
            if idle.expired(cx) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        tokio::time::timeout(wait, expiry).await.is_ok()
    }

    #[tokio::test]
    async fn a_connection_expires_only_with_no_request_open_for_the_timeout() {
        let short = Duration::from_millis(50);
        let long = Duration::from_secs(10);
        let ms = Duration::from_millis(1);
        let activity = Activity::new();
        let mut patient = Idle::new(Arc::clone(&activity), Duration::from_secs(3600));
        assert!(
            !expires_within(&mut patient, short).await,
            "an hour has not passed"
        );
        let mut quick = Idle::new(Arc::clone(&activity), ms);
        assert!(
            expires_within(&mut quick, long).await,
            "nothing open for 1 ms"
        );

        let open = activity.begin();
        let mut quick = Idle::new(Arc::clone(&activity), ms);
        assert!(
            !expires_within(&mut quick, short).await,
            "a request is open"
        );
        drop(open);
        assert!(
            expires_within(&mut quick, long).await,
            "its end starts the wait"
        );
        assert!(
            !expires_within(&mut patient, short).await,
            "counted from its end"
        );

        activity.upgraded.store(true, Ordering::Release);
        let mut upgraded = Idle::new(Arc::clone(&activity), ms);
        assert!(!expires_within(&mut upgraded, short).await, "its own rules");
    }

    #[tokio::test]
    async fn a_request_stays_open_until_its_response_body_ends() {
        use tower::{Service, ServiceExt};

        let activity = Activity::new();
        let mut service = Tracked::new(
            tower::service_fn(|()| async {
                Ok::<_, std::convert::Infallible>(Response::new(axum::body::Body::from("ok")))
            }),
            Arc::clone(&activity),
        );
        let response = service.ready().await.unwrap().call(()).await.unwrap();
        assert_eq!(
            activity.open.load(Ordering::SeqCst),
            1,
            "its body is not read yet"
        );
        let body = axum::body::to_bytes(axum::body::Body::new(response.into_body()), 64)
            .await
            .unwrap();
        assert_eq!(&body[..], b"ok");
        assert_eq!(
            activity.open.load(Ordering::SeqCst),
            0,
            "its body has ended"
        );

        let dropped = service.ready().await.unwrap().call(());
        assert_eq!(activity.open.load(Ordering::SeqCst), 1);
        drop(dropped);
        assert_eq!(
            activity.open.load(Ordering::SeqCst),
            0,
            "a dropped answer ends it"
        );
    }
}
