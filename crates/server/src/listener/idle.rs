//! A connection with no request open is closed `web.header_read_timeout_secs` after its last
//! request ended (or after it opened), on HTTP/1.1 and HTTP/2 alike. hyper bounds the wait
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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
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
    /// The stream's reader, woken when the last open request ends so that it arms its timer.
    reader: Mutex<Option<Waker>>,
}

impl Activity {
    pub(super) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            open: AtomicUsize::new(0),
            upgraded: AtomicBool::new(false),
            quiet_since_ms: AtomicU64::new(0),
            opened: Instant::now(),
            reader: Mutex::new(None),
        })
    }

    fn begin(self: &Arc<Self>) -> OpenRequest {
        self.open.fetch_add(1, Ordering::AcqRel);
        OpenRequest(Arc::clone(self))
    }

    fn quiet_since(&self) -> Instant {
        self.opened + Duration::from_millis(self.quiet_since_ms.load(Ordering::Acquire))
    }

    fn register(&self, waker: &Waker) {
        let mut reader = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        if !reader.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *reader = Some(waker.clone());
        }
    }
}

/// One open request; ends when dropped.
struct OpenRequest(Arc<Activity>);

impl Drop for OpenRequest {
    fn drop(&mut self) {
        let activity = &self.0;
        // The time first, then the count: a reader that sees no request open sees this end.
        let ms = u64::try_from(activity.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        activity.quiet_since_ms.fetch_max(ms, Ordering::AcqRel);
        if activity.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            let reader = activity
                .reader
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(reader) = reader {
                reader.wake();
            }
        }
    }
}

/// The timer of a connection's stream.
pub(super) struct Idle {
    activity: Arc<Activity>,
    after: Duration,
    /// Made when the connection first waits with no request open.
    timer: Option<Pin<Box<Sleep>>>,
}

impl Idle {
    pub(super) fn new(activity: Arc<Activity>, after: Duration) -> Idle {
        Idle {
            activity,
            after,
            timer: None,
        }
    }

    /// Called when a read of the connection would wait: true when it has had no request open
    /// for the timeout, and the read should end the connection instead.
    pub(super) fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let activity = &self.activity;
        if activity.upgraded.load(Ordering::Acquire) {
            self.timer = None;
            return false;
        }
        // Registered before the count is read: a request ending after the read wakes this one.
        activity.register(cx.waker());
        if activity.open.load(Ordering::Acquire) > 0 {
            return false;
        }
        let deadline = activity.quiet_since() + self.after;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().poll(cx).is_ready()
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
    use std::task::Wake;

    use super::*;

    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

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
        let activity = Activity::new();
        let mut patient = Idle::new(Arc::clone(&activity), Duration::from_secs(3600));
        assert!(
            !expires_within(&mut patient, short).await,
            "an hour has not passed"
        );
        let mut now = Idle::new(Arc::clone(&activity), Duration::ZERO);
        assert!(
            expires_within(&mut now, long).await,
            "nothing open, no time allowed"
        );

        let open = activity.begin();
        let mut now = Idle::new(Arc::clone(&activity), Duration::ZERO);
        assert!(!expires_within(&mut now, short).await, "a request is open");
        let woken = Arc::new(Counter(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&woken));
        assert!(!now.expired(&mut Context::from_waker(&waker)));
        drop(open);
        assert_eq!(
            woken.0.load(Ordering::SeqCst),
            1,
            "the last request's end wakes the reader"
        );
        assert!(
            expires_within(&mut now, long).await,
            "its end starts the wait"
        );
        assert!(
            !expires_within(&mut patient, short).await,
            "counted from its end"
        );

        activity.upgraded.store(true, Ordering::Release);
        let mut upgraded = Idle::new(Arc::clone(&activity), Duration::ZERO);
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
