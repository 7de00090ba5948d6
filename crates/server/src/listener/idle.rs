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
//!
//! A request whose response its client does not take is not open for ever either: from the
//! moment its head is answered, and again after each piece of its body is handed on, the
//! request *owes* the client a read, until the body is asked for its next piece. A request
//! that has owed for `web.send_timeout_secs` ends its connection, as [`super::Stall`] ends
//! one whose socket writes wait that long. On HTTP/1.1 the two agree; on HTTP/2 only this
//! one sees a client that never opens its stream's flow-control window (the socket is
//! never full, so no write waits, and frames that are not requests keep going both ways).
//! Bodies are handed on in pieces of at most [`PIECE`] bytes, so a client is held to taking
//! one piece per timeout (273 bytes/s at the 60 s default), whatever the body's size.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
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
    /// The requests that owe their client a read, with the time each began to owe it.
    owing: Mutex<Vec<(u64, Instant)>>,
    /// The id of the next request.
    next: AtomicU64,
}

impl Activity {
    pub(super) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            open: AtomicUsize::new(0),
            upgraded: AtomicBool::new(false),
            quiet_since_ms: AtomicU64::new(0),
            opened: Instant::now(),
            owing: Mutex::new(Vec::new()),
            next: AtomicU64::new(0),
        })
    }

    fn begin(self: &Arc<Self>) -> OpenRequest {
        self.open.fetch_add(1, Ordering::AcqRel);
        OpenRequest {
            activity: Arc::clone(self),
            id: self.next.fetch_add(1, Ordering::Relaxed),
            owes: false,
        }
    }

    fn owing(&self) -> std::sync::MutexGuard<'_, Vec<(u64, Instant)>> {
        self.owing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Since when the request that has owed its client a read the longest has owed it.
    fn owed_since(&self) -> Option<Instant> {
        self.owing().iter().map(|&(_, since)| since).min()
    }

    fn quiet_since(&self) -> Instant {
        self.opened + Duration::from_millis(self.quiet_since_ms.load(Ordering::Acquire))
    }
}

/// One open request; ends when dropped.
struct OpenRequest {
    activity: Arc<Activity>,
    id: u64,
    /// Listed in its connection's `owing`.
    owes: bool,
}

impl OpenRequest {
    /// Something has been handed on for the client to take.
    fn owes(&mut self) {
        if !self.owes {
            self.owes = true;
            self.activity.owing().push((self.id, Instant::now()));
        }
    }

    /// The body is asked for more: the client has taken what it was handed.
    fn taken(&mut self) {
        if self.owes {
            self.owes = false;
            let mut owing = self.activity.owing();
            if let Some(at) = owing.iter().position(|&(id, _)| id == self.id) {
                owing.swap_remove(at);
            }
        }
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        self.taken();
        let activity = &self.activity;
        // The time first, then the count: a timer that sees no request open sees this end.
        let ms = u64::try_from(activity.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        activity.quiet_since_ms.fetch_max(ms, Ordering::AcqRel);
        activity.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a connection's stream ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expiry {
    /// No request open for the idle timeout.
    Idle,
    /// A request has owed its client a read for the send timeout.
    Untaken,
}

/// The timer of a connection's stream. It is not moved as requests come and go (that would
/// cost a timer-wheel update per request): when it fires, it looks at the connection and
/// either ends it or is set again: to the idle timeout after the last request's end, to the
/// send timeout after the longest-owing request began to owe, and never more than the
/// shorter of the two timeouts on. So a connection closes the idle timeout after its last
/// request ended, or the send timeout after a request began to owe, within the timer's
/// resolution (while its reads are polled; no later than twice the timeout).
pub(super) struct Idle {
    activity: Arc<Activity>,
    after: Duration,
    /// A request that has owed its client a read this long ends the connection.
    untaken: Duration,
    /// Made when the connection first waits for a read.
    timer: Option<Pin<Box<Sleep>>>,
    /// Upgraded: never timed again.
    off: bool,
}

impl Idle {
    pub(super) fn new(activity: Arc<Activity>, after: Duration, untaken: Duration) -> Idle {
        Idle {
            activity,
            after,
            untaken,
            timer: None,
            off: false,
        }
    }

    /// Called when a read of the connection would wait: why the read should end the
    /// connection instead, if it should.
    pub(super) fn expired(&mut self, cx: &mut Context<'_>) -> Option<Expiry> {
        if self.off {
            return None;
        }
        let activity = &self.activity;
        let (after, untaken) = (self.after, self.untaken);
        let every = after.min(untaken).max(Duration::from_millis(1));
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(activity.opened + every)));
        while timer.as_mut().poll(cx).is_ready() {
            if activity.upgraded.load(Ordering::Acquire) {
                self.off = true;
                self.timer = None;
                return None;
            }
            let now = Instant::now();
            let deadline = if activity.open.load(Ordering::Acquire) > 0 {
                match activity.owed_since() {
                    Some(since) if since + untaken <= now => return Some(Expiry::Untaken),
                    Some(since) => (now + every).min(since + untaken),
                    None => now + every,
                }
            } else {
                let deadline = activity.quiet_since() + after;
                if deadline <= now {
                    return Some(Expiry::Idle);
                }
                // No later than `every`: a request may begin, and owe, before the deadline.
                deadline.min(now + every)
            };
            timer.as_mut().reset(deadline);
        }
        None
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

/// The most a response body hands on at a time: a larger piece of data is handed on in
/// pieces of this size (the bytes are shared, not copied).
pub(super) const PIECE: usize = 16 * 1024;

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
        let mut open = self.activity.begin();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                open.activity.upgraded.store(true, Ordering::Release);
            } else {
                // The head is handed on: the client owes a read until the body is asked for.
                open.owes();
            }
            Ok(response.map(|body| Held {
                body,
                rest: Bytes::new(),
                open: Some(open),
            }))
        })
    }
}

/// A response body that keeps its request open until it has ended or is dropped, hands its
/// data on in pieces of at most [`PIECE`] bytes, and tells its request when it owes the
/// client a read.
pub struct Held<B> {
    body: B,
    /// What is left of a piece of data larger than [`PIECE`].
    rest: Bytes,
    open: Option<OpenRequest>,
}

impl<B> Held<B> {
    /// The next piece of `data`, keeping what is left of it.
    fn piece(&mut self, mut data: Bytes) -> Bytes {
        if data.len() > PIECE {
            self.rest = data.split_off(PIECE);
        }
        data
    }
}

impl<B> http_body::Body for Held<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        if let Some(open) = &mut this.open {
            open.taken();
        }
        let frame = if this.rest.is_empty() {
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(frame) => frame,
            }
        } else {
            let rest = std::mem::take(&mut this.rest);
            Some(Ok(Frame::data(rest)))
        };
        let frame = match frame {
            None => {
                this.open = None;
                return Poll::Ready(None);
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => Frame::data(this.piece(data)),
                Err(frame) => frame,
            },
            Some(Err(e)) => return Poll::Ready(Some(Err(e))),
        };
        if let Some(open) = &mut this.open {
            open.owes();
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.body.size_hint();
        let rest = u64::try_from(self.rest.len()).unwrap_or(u64::MAX);
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(rest));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(rest));
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;

    /// Why `idle` expires within `wait`, its timer driven by the runtime, if it does.
    async fn expiry_within(idle: &mut Idle, wait: Duration) -> Option<Expiry> {
        let expiry = std::future::poll_fn(|cx| match idle.expired(cx) {
            Some(why) => Poll::Ready(why),
            None => Poll::Pending,
        });
        tokio::time::timeout(wait, expiry).await.ok()
    }

    async fn expires_within(idle: &mut Idle, wait: Duration) -> bool {
        expiry_within(idle, wait).await.is_some()
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[tokio::test]
    async fn a_connection_expires_only_with_no_request_open_for_the_timeout() {
        let short = Duration::from_millis(50);
        let long = Duration::from_secs(10);
        let ms = Duration::from_millis(1);
        let activity = Activity::new();
        let mut patient = Idle::new(Arc::clone(&activity), HOUR, HOUR);
        assert!(
            !expires_within(&mut patient, short).await,
            "an hour has not passed"
        );
        let mut quick = Idle::new(Arc::clone(&activity), ms, HOUR);
        assert_eq!(
            expiry_within(&mut quick, long).await,
            Some(Expiry::Idle),
            "nothing open for 1 ms"
        );

        let open = activity.begin();
        let mut quick = Idle::new(Arc::clone(&activity), ms, ms);
        assert!(
            !expires_within(&mut quick, short).await,
            "a request is open, and owes its client nothing"
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
        let mut upgraded = Idle::new(Arc::clone(&activity), ms, ms);
        assert!(!expires_within(&mut upgraded, short).await, "its own rules");
    }

    #[tokio::test]
    async fn a_response_its_client_does_not_take_expires_its_connection() {
        let short = Duration::from_millis(50);
        let long = Duration::from_secs(10);
        // The idle timeout is an hour: only the 20 ms send timeout can end these.
        let timed = |activity: &Arc<Activity>| {
            Idle::new(Arc::clone(activity), HOUR, Duration::from_millis(20))
        };
        let activity = Activity::new();
        let mut first = activity.begin();
        let mut second = activity.begin();
        first.owes();
        second.owes();
        assert_eq!(
            expiry_within(&mut timed(&activity), long).await,
            Some(Expiry::Untaken),
            "two responses untaken for 20 ms"
        );
        first.taken();
        assert_eq!(
            expiry_within(&mut timed(&activity), long).await,
            Some(Expiry::Untaken),
            "one taken, the other still not"
        );
        second.taken();
        assert!(
            !expires_within(&mut timed(&activity), short).await,
            "both taken: open, owing nothing"
        );
        second.owes();
        drop(second);
        assert!(
            activity.owing().is_empty(),
            "a dropped request owes nothing"
        );
        drop(first);

        // A connection waiting out its idle hour still sees a request that begins to owe.
        let activity = Activity::new();
        let mut idle = timed(&activity);
        assert!(
            !expires_within(&mut idle, short).await,
            "nothing open, an hour to go"
        );
        let mut late = activity.begin();
        late.owes();
        assert_eq!(
            expiry_within(&mut idle, long).await,
            Some(Expiry::Untaken),
            "a response untaken within the idle hour"
        );
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
        assert_eq!(activity.owing().len(), 1, "its head is handed on");
        let body = axum::body::to_bytes(axum::body::Body::new(response.into_body()), 64)
            .await
            .unwrap();
        assert_eq!(&body[..], b"ok");
        assert_eq!(
            activity.open.load(Ordering::SeqCst),
            0,
            "its body has ended"
        );
        assert!(activity.owing().is_empty());

        let dropped = service.ready().await.unwrap().call(());
        assert_eq!(activity.open.load(Ordering::SeqCst), 1);
        drop(dropped);
        assert_eq!(
            activity.open.load(Ordering::SeqCst),
            0,
            "a dropped answer ends it"
        );
    }

    #[tokio::test]
    async fn a_body_is_handed_on_in_pieces_each_owed_until_the_next_is_asked_for() {
        use tower::{Service, ServiceExt};

        let activity = Activity::new();
        let size = 2 * PIECE + 100;
        let mut service = Tracked::new(
            tower::service_fn(move |()| async move {
                Ok::<_, std::convert::Infallible>(Response::new(axum::body::Body::from(vec![
                    7u8;
                    size
                ])))
            }),
            Arc::clone(&activity),
        );
        let mut body = service
            .ready()
            .await
            .unwrap()
            .call(())
            .await
            .unwrap()
            .into_body();
        assert_eq!(body.size_hint().exact(), Some(size as u64));
        let mut pieces = Vec::new();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            let data = frame.unwrap().into_data().unwrap();
            pieces.push(data.len());
            assert_eq!(activity.owing().len(), 1, "a piece handed on is owed");
            let left = size - pieces.iter().sum::<usize>();
            assert_eq!(body.size_hint().exact(), Some(left as u64));
            assert_eq!(body.is_end_stream(), left == 0);
        }
        assert_eq!(pieces, [PIECE, PIECE, 100]);
        assert!(activity.owing().is_empty(), "all taken");
        assert_eq!(activity.open.load(Ordering::SeqCst), 0);

        // A body waiting for its own data owes the client nothing.
        let mut waiting = Tracked::new(
            tower::service_fn(|()| async {
                Ok::<_, std::convert::Infallible>(Response::new(axum::body::Body::from_stream(
                    futures_util::stream::pending::<Result<Bytes, std::io::Error>>(),
                )))
            }),
            Arc::clone(&activity),
        );
        let mut body = waiting
            .ready()
            .await
            .unwrap()
            .call(())
            .await
            .unwrap()
            .into_body();
        assert_eq!(activity.owing().len(), 1, "its head");
        let polled = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx)));
        assert!(polled.await.is_pending());
        assert!(activity.owing().is_empty(), "it waits for itself");
        assert_eq!(activity.open.load(Ordering::SeqCst), 1, "still open");
    }
}
