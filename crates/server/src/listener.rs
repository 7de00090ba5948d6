//! How the server accepts connections, on its API listener (plain HTTP or native TLS) and on
//! the HTTPS redirect listener (NET-2):
//!
//! - every accepted connection sends each write at once (`TCP_NODELAY`). Without it, a
//!   response written in more than one piece — a streamed result's lines relayed as they
//!   arrive, a TLS record after the one before it — waits for the peer to acknowledge the
//!   previous piece, which a peer delaying its acknowledgements holds back for up to 40 ms;
//! - no client can hold the server's connections: one that has not sent a whole request head
//!   `web.header_read_timeout_secs` after it opened or after its previous response is closed
//!   (a TLS handshake has 10 s), and beyond `web.max_connections` open connections, or
//!   `web.max_connections_per_address` from one client address (`trusted_proxies` exempt), a
//!   new connection is closed as it arrives, before its TLS handshake. Without these a client
//!   trickling one header byte at a time, or opening connections and sending nothing, kept
//!   each connection (a task, its buffers, a file descriptor) for as long as it liked, until
//!   the server ran out of descriptors and refused everyone;
//! - a connection with no request open for `web.header_read_timeout_secs` (HTTP/2 included,
//!   which hyper's head timeout does not cover) is closed ([`idle`]);
//! - so is one whose client has taken none of what is being sent to it for
//!   `web.send_timeout_secs`: a client that stops reading would otherwise hold its
//!   connection, and the handler writing to it, for ever (a peer that acknowledges with a
//!   zero window is never timed out by TCP). Both the socket's writes ([`Stall`]) and each
//!   response are timed ([`idle`]): an HTTP/2 client that never opens a stream's
//!   flow-control window leaves the socket free but the response untaken.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::config::ServerConfig;
use crate::routes::web::TrustedProxies;

mod idle;

pub use idle::{Held, Tracked};

/// Open files kept for everything but client connections: the state store's connections
/// (three files each), the audit checkpoint, the logs, Redis, the runtime's own.
const RESERVED_FILES: u64 = 256;

/// Refusals are logged at most this often (a flood would otherwise flood the log too); the
/// metric counts every one.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// The connections open on the server's listeners, counted against its limits.
pub struct Connections {
    max: usize,
    per_address: usize,
    /// `trusted_proxies`: counted towards the total only.
    exempt: TrustedProxies,
    /// A connection with no request open this long is closed.
    idle: Duration,
    /// A connection whose client takes none of what is sent this long is closed.
    send_timeout: Duration,
    open: Mutex<Open>,
    refused: AtomicU64,
    last_logged: Mutex<Option<Instant>>,
}

#[derive(Default)]
struct Open {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

impl Connections {
    /// The limits of `config`, with `web.max_connections` held under what this process's
    /// open-files limit leaves for connections (its soft limit raised to the hard one
    /// first): past that limit a connection would not be refused alone, every file the
    /// server opens — the state store's among them — would fail.
    pub fn new(config: &ServerConfig) -> Arc<Connections> {
        Connections::within(config, open_files_limit())
    }

    fn within(config: &ServerConfig, open_files: Option<u64>) -> Arc<Connections> {
        let configured = config.web.max_connections;
        let max = connections_allowed(configured, open_files);
        if max < configured {
            tracing::warn!(
                max_connections = configured,
                open_files_limit = open_files,
                admitted_at_most = max,
                reserved_files = RESERVED_FILES,
                "web.max_connections is more than the open-files limit leaves for connections; raise the limit (ulimit -n, LimitNOFILE=) or lower the setting"
            );
        }
        Arc::new(Connections {
            max,
            per_address: config.web.max_connections_per_address,
            exempt: TrustedProxies::new(&config.trusted_proxies),
            idle: Duration::from_secs(config.web.header_read_timeout_secs),
            send_timeout: Duration::from_secs(config.web.send_timeout_secs),
            open: Mutex::new(Open::default()),
            refused: AtomicU64::new(0),
            last_logged: Mutex::new(None),
        })
    }

    /// Connections admitted at most.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).total
    }

    /// Connections closed on arrival for a limit since the server started.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// A place for a connection from `peer`, held until the returned ticket drops, or `None`
    /// when a limit is reached.
    fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<Ticket> {
        // An IPv4 client seen through an IPv6 socket counts as the IPv4 address it is.
        let peer = peer.to_canonical();
        let counted = !self.exempt.trusts(peer);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let from_peer = open.by_address.get(&peer).copied().unwrap_or(0);
        let limit = if open.total >= self.max {
            Some("web.max_connections")
        } else if counted && from_peer >= self.per_address {
            Some("web.max_connections_per_address")
        } else {
            None
        };
        if let Some(limit) = limit {
            let total = open.total;
            drop(open);
            self.refuse(peer, limit, total);
            return None;
        }
        open.total += 1;
        if counted {
            *open.by_address.entry(peer).or_insert(0) += 1;
        }
        Some(Ticket {
            connections: Arc::clone(self),
            counted: counted.then_some(peer),
        })
    }

    fn refuse(&self, peer: IpAddr, limit: &str, open: usize) {
        let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self.last_logged.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|at| at.elapsed() >= REFUSAL_LOG_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!(
                client_addr = %peer,
                limit,
                open,
                refused_so_far = refused,
                "a new connection was closed on arrival: a connection limit is reached (logged at most every 10 s; portcullis_connections_refused_total counts them all)"
            );
        }
    }
}

/// Raises this process's soft open-files limit to its hard one, as the kernel allows, and
/// returns the soft limit in force: `None` when unlimited.
fn open_files_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.maximum.is_some() && limit.current < limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::debug!(error = %e, "the open-files limit could not be raised to its hard limit");
        }
    }
    getrlimit(Resource::Nofile).current
}

/// `configured`, or fewer when the open-files limit leaves fewer files for connections.
fn connections_allowed(configured: usize, open_files: Option<u64>) -> usize {
    open_files.map_or(configured, |files| {
        let left = files.saturating_sub(RESERVED_FILES).max(1);
        configured.min(usize::try_from(left).unwrap_or(usize::MAX))
    })
}

/// A connection's place among the open ones; given back when the connection closes.
struct Ticket {
    connections: Arc<Connections>,
    /// The address the connection counts against, unless it is exempt.
    counted: Option<IpAddr>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut open = self
            .connections
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(peer) = self.counted
            && let Some(n) = open.by_address.get_mut(&peer)
        {
            *n -= 1;
            if *n == 0 {
                open.by_address.remove(&peer);
            }
        }
    }
}

/// The innermost acceptor of both listeners (under the TLS handshake on the HTTPS one): sets
/// `TCP_NODELAY`, admits the connection or closes it, and has its requests counted so that
/// it is closed once none has been open for `web.header_read_timeout_secs`, and its writes
/// timed so that it is closed once its client has taken nothing for `web.send_timeout_secs`.
#[derive(Clone)]
pub struct Gate(Arc<Connections>);

impl<S> Accept<TcpStream, S> for Gate {
    type Stream = Admitted;
    type Service = Tracked<S>;
    type Future = std::future::Ready<io::Result<(Admitted, Tracked<S>)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let ticket = match stream.peer_addr() {
            Ok(peer) => self.0.admit(peer.ip()),
            Err(e) => return std::future::ready(Err(e)),
        };
        let Some(ticket) = ticket else {
            return std::future::ready(Err(io::Error::other("connection limit reached")));
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY could not be set on an accepted connection");
        }
        let activity = idle::Activity::new();
        std::future::ready(Ok((
            Admitted {
                stream,
                idle: idle::Idle::new(Arc::clone(&activity), self.0.idle, self.0.send_timeout),
                stall: Stall::new(self.0.send_timeout),
                _ticket: ticket,
            },
            Tracked::new(service, activity),
        )))
    }
}

/// An admitted connection: the TCP stream, holding its place until it is dropped, reading as
/// ended once no request has been open on it for the idle timeout, and failing a write that
/// has waited for the send timeout.
pub struct Admitted {
    stream: TcpStream,
    idle: idle::Idle,
    stall: Stall,
    _ticket: Ticket,
}

/// How long the connection's writes have waited for the client to take anything.
struct Stall {
    after: Duration,
    /// Armed at the first write that has to wait, cleared by the next that goes through.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    waiting: bool,
}

impl Stall {
    fn new(after: Duration) -> Stall {
        Stall {
            after,
            timer: None,
            waiting: false,
        }
    }

    /// Passes a write's outcome through, or fails it once writes have waited for the timeout.
    fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if written.is_ready() {
            self.waiting = false;
            return written;
        }
        if !self.waiting {
            self.waiting = true;
            let deadline = tokio::time::Instant::now() + self.after;
            match &mut self.timer {
                Some(timer) => timer.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        let expired = self
            .timer
            .as_mut()
            .is_some_and(|timer| timer.as_mut().poll(cx).is_ready());
        if !expired {
            return Poll::Pending;
        }
        tracing::debug!("a connection whose client took nothing sent to it was closed");
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the client took none of the response for {} s",
                self.after.as_secs()
            ),
        )))
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let read = Pin::new(&mut self.stream).poll_read(cx, buf);
        if read.is_ready() || self.stall.waiting {
            // While a write waits for the client, the send timeout is in charge: a client
            // taking a large response slowly is not idle, even with its request ended (its
            // last piece may sit in hyper's buffer long after the body has ended).
            return read;
        }
        match self.idle.expired(cx) {
            None => Poll::Pending,
            Some(why) => {
                match why {
                    idle::Expiry::Idle => {
                        tracing::debug!("a connection with no request open was closed for idleness")
                    }
                    idle::Expiry::Untaken => tracing::debug!(
                        "a connection whose client took none of a response was closed"
                    ),
                }
                // Nothing read: the end of the stream, on which hyper closes the connection.
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.stall.check(cx, written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.stall.check(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A server on `listener` whose connections pass the [`Gate`] of `connections` and whose
/// request heads must arrive within `web.header_read_timeout_secs`.
pub fn server(
    listener: TcpListener,
    config: &ServerConfig,
    connections: &Arc<Connections>,
) -> axum_server::Server<SocketAddr, Gate> {
    let timeout = Duration::from_secs(config.web.header_read_timeout_secs);
    let mut server = axum_server::Server::<SocketAddr>::from_listener(listener)
        .acceptor(Gate(Arc::clone(connections)))
        .first_request_timeout(timeout);
    server.http_builder().http1().header_read_timeout(timeout);
    server
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn connections(max: usize, per_address: usize, exempt: &[&str]) -> Arc<Connections> {
        let mut config = ServerConfig::default();
        config.web.max_connections = max;
        config.web.max_connections_per_address = per_address;
        config.trusted_proxies = exempt.iter().map(|n| n.parse().expect("net")).collect();
        Connections::within(&config, None)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn one_address_gets_its_share_and_the_rest_stays_for_the_others() {
        let c = connections(5, 2, &[]);
        let a1 = c.admit(ip("192.0.2.1")).expect("first");
        let _a2 = c.admit(ip("192.0.2.1")).expect("second");
        assert!(
            c.admit(ip("192.0.2.1")).is_none(),
            "a third from one address"
        );
        // The same address seen through an IPv6 socket is the same client.
        assert!(c.admit(ip("::ffff:192.0.2.1")).is_none());
        let _b = c.admit(ip("192.0.2.2")).expect("another address");
        assert_eq!((c.open(), c.refused()), (3, 2));
        drop(a1);
        assert_eq!(c.open(), 2);
        let _a3 = c
            .admit(ip("192.0.2.1"))
            .expect("a place given back is taken again");
    }

    #[test]
    fn no_address_passes_the_total_and_proxies_count_only_towards_it() {
        let c = connections(3, 1, &["10.0.0.0/8"]);
        let p1 = c.admit(ip("10.1.1.1")).expect("proxy");
        let _p2 = c.admit(ip("10.1.1.1")).expect("a proxy is not held to one");
        let _x = c.admit(ip("192.0.2.9")).expect("a client");
        assert!(c.admit(ip("10.1.1.1")).is_none(), "the total binds proxies");
        assert!(c.admit(ip("192.0.2.10")).is_none(), "and everyone else");
        drop(p1);
        let _y = c.admit(ip("192.0.2.10")).expect("room again");
        assert_eq!((c.open(), c.refused()), (3, 2));
    }

    #[test]
    fn the_open_files_limit_holds_the_cap_under_it() {
        assert_eq!(connections_allowed(8192, None), 8192, "unlimited");
        assert_eq!(connections_allowed(8192, Some(1 << 20)), 8192);
        assert_eq!(connections_allowed(8192, Some(1024)), 1024 - 256);
        assert_eq!(connections_allowed(8192, Some(100)), 1, "never none at all");
        let mut config = ServerConfig::default();
        config.web.max_connections_per_address = 1;
        let c = Connections::within(&config, Some(258));
        assert_eq!(c.max(), 2);
        let _a = c.admit(ip("192.0.2.1")).expect("first");
        let _b = c.admit(ip("192.0.2.2")).expect("second");
        assert!(
            c.admit(ip("192.0.2.3")).is_none(),
            "past what the files allow"
        );
    }

    #[tokio::test]
    async fn admitted_connections_send_each_write_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let _client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (stream, _) = listener.accept().await.expect("accept");
        // The kernel's default, which the gate must change.
        assert!(!stream.nodelay().expect("nodelay"));
        let (admitted, _service) = Gate(connections(1, 1, &[]))
            .accept(stream, ())
            .await
            .expect("admitted");
        assert!(admitted.stream.nodelay().expect("nodelay"));
    }

    #[tokio::test]
    async fn a_connection_is_not_idle_while_a_write_waits_for_its_client() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("a small buffer");
        let mut client = socket
            .connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (stream, peer) = listener.accept().await.expect("accept");
        let activity = idle::Activity::new();
        // Idle after 1 ms with no request open; the send timeout out of the way.
        let mut admitted = Admitted {
            stream,
            idle: idle::Idle::new(
                activity,
                Duration::from_millis(1),
                Duration::from_secs(3600),
            ),
            stall: Stall::new(Duration::from_secs(3600)),
            _ticket: connections(1, 1, &[]).admit(peer.ip()).expect("admitted"),
        };
        let write = |admitted: &mut Admitted, n: usize| {
            let bytes = vec![0u8; n];
            let mut cx = Context::from_waker(std::task::Waker::noop());
            Pin::new(admitted).poll_write(&mut cx, &bytes)
        };
        let read = |admitted: &mut Admitted| {
            let mut bytes = [0u8; 16];
            let mut buf = ReadBuf::new(&mut bytes);
            let mut cx = Context::from_waker(std::task::Waker::noop());
            match Pin::new(admitted).poll_read(&mut cx, &mut buf) {
                Poll::Ready(Ok(())) => Some(buf.filled().len()),
                Poll::Ready(Err(e)) => panic!("read: {e}"),
                Poll::Pending => None,
            }
        };
        // The client takes nothing: the writes come to wait for it.
        while write(&mut admitted, 64 * 1024).is_ready() {}
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(read(&mut admitted), None, "not idle while a write waits");

        // The client takes it all, a write goes through: now it is idle.
        let mut sink = vec![0u8; 1 << 20];
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(100), client.read(&mut sink)).await
        {
            assert!(n > 0);
        }
        assert!(write(&mut admitted, 1).is_ready(), "room again");
        assert_eq!(read(&mut admitted), Some(0), "idle: the stream ends");
    }
}
