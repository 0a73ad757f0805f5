//! One way to serve HTTP/1: the trust API, the webhook (over TLS), `/metrics` and health
//! endpoints of every component, and the sidecar's proxy.
//!
//! - **Connection cap**: at most [`Limits::max_connections`] connections are served at once.
//!   A new connection beyond the cap takes the place of the connection that has been idle the
//!   longest (no request in flight, no response body still streaming: a silent or half-sent
//!   connection, or a keep-alive one between requests), which is closed; only when every
//!   connection is busy does the new one wait (in memory, one at a time; the rest in the
//!   kernel's listen backlog). So holding connections open (a slow-loris) cannot lock real
//!   clients out: theirs are the newest, and a busy connection is never cut.
//! - **Accept errors** (out of file descriptors, say) are logged and retried after a pause
//!   that doubles from 10 ms to 1 s, never in a busy loop.
//! - **Header and idle timeout**: a connection must deliver a complete request head within
//!   [`Limits::header_timeout`] of the server starting to wait for one, so a slow or silent
//!   client (the TLS handshake included) and an idle keep-alive connection are both closed
//!   after that long (hyper starts the timer whenever it waits for a head). Responses, long
//!   polls and streams are not cut short.
//! - **Graceful shutdown**: when `shutdown` resolves the listener is closed, connections
//!   finish their in-flight request and close; after [`Limits::drain`] the rest is dropped.
//! - **A span per request** (`request`: server, method, path), under which the handler's own
//!   logs are recorded; at [`Limits::request_span`] (`INFO` by default, so enabled at the
//!   default log level).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tracing::Instrument;

/// Bounds of one server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest wait for a complete request head (or TLS handshake), and so the longest a
    /// keep-alive connection stays idle.
    pub header_timeout: Duration,
    /// Most connections served at once.
    pub max_connections: usize,
    /// How long in-flight requests get to finish after shutdown starts.
    pub drain: Duration,
    /// The level of the per-request span: `DEBUG` for a data path, where an enabled span
    /// costs a measurable share of each request (the sidecar's proxy: about 10 % more CPU per
    /// call at `INFO`, `make bench-sidecar`), `INFO` elsewhere. A span below the log level is
    /// never created.
    pub request_span: tracing::Level,
}

impl Default for Limits {
    /// 60 s (longer than the idle pools of the product's own clients, which are 30 s, so a
    /// pooled connection is never closed under a request), 1024 connections, 10 s of drain,
    /// request spans at `INFO`.
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(60),
            max_connections: 1024,
            drain: Duration::from_secs(10),
            request_span: tracing::Level::INFO,
        }
    }
}

/// Turns an accepted TCP stream into what HTTP is spoken over (TLS, or nothing).
pub trait Accept: Clone + Send + Sync + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&self, stream: TcpStream) -> impl Future<Output = std::io::Result<Self::Io>> + Send;
    /// Whether `io` is TLS: every request read from it carries [`OverTls`] saying so.
    fn over_tls(_io: &Self::Io) -> bool {
        false
    }
}

/// In every request's extensions: whether its connection is TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverTls(pub bool);

/// The first byte of every TLS connection: a handshake record (RFC 8446, 5.1). No HTTP/1
/// request starts with it (a method is a token of letters).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// TLS and plain HTTP on one port, told apart by the connection's first byte: a client that
/// starts a TLS handshake gets TLS with `acceptor`, any other is served plain. The handler
/// decides what each may reach by the request's [`OverTls`] (the operator's port 8080 answers
/// the seed's plain `curl http://…:8080/health` and the kubelet's probes, and serves the trust
/// API's calls, which carry tokens, only over TLS). The wait for the first byte counts toward
/// the header timeout.
#[derive(Clone)]
pub struct TlsOrPlain(pub tokio_rustls::TlsAcceptor);

impl Accept for TlsOrPlain {
    type Io = tokio_util::either::Either<tokio_rustls::server::TlsStream<TcpStream>, TcpStream>;
    async fn accept(&self, stream: TcpStream) -> std::io::Result<Self::Io> {
        use tokio_util::either::Either;
        let _ = stream.set_nodelay(true);
        let mut first = [0u8; 1];
        let read = stream.peek(&mut first).await?;
        if read == 1 && first[0] == TLS_HANDSHAKE_RECORD {
            Ok(Either::Left(self.0.accept(stream).await?))
        } else {
            Ok(Either::Right(stream))
        }
    }
    fn over_tls(io: &Self::Io) -> bool {
        matches!(io, tokio_util::either::Either::Left(_))
    }
}

/// Plain TCP.
#[derive(Clone, Copy, Debug, Default)]
pub struct Plain;

impl Accept for Plain {
    type Io = TcpStream;
    async fn accept(&self, stream: TcpStream) -> std::io::Result<TcpStream> {
        Ok(stream)
    }
}

/// Serves every connection accepted on `listener` with `handler` (which gets the request and
/// the peer's address) until `shutdown` resolves, then drains (see the module docs).
pub async fn serve<A, H, F, B>(
    name: &'static str,
    listener: TcpListener,
    accept: A,
    limits: Limits,
    handler: H,
    shutdown: impl Future<Output = ()>,
) where
    A: Accept,
    H: Fn(Request<Incoming>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let handler = Arc::new(handler);
    let tracker = Tracker::new(limits.max_connections.max(1));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    let mut pause = ACCEPT_PAUSE_MIN;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    pause = ACCEPT_PAUSE_MIN;
                    accepted
                }
                Err(error) => {
                    tracing::warn!(server = name, %error, ?pause, "accept failed; pausing");
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = &mut shutdown => break,
                    }
                    pause = (pause * 2).min(ACCEPT_PAUSE_MAX);
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // Room for it: below the cap, or the longest-idle connection closed, or wait until a
        // connection ends.
        let evict = Arc::new(Notify::new());
        let (id, evicted) = loop {
            let freed = tracker.freed.notified();
            if let Some(admitted) = tracker.admit(&evict) {
                break admitted;
            }
            tokio::select! {
                _ = freed => {}
                _ = &mut shutdown => return drain(name, limits, listener, graceful).await,
            }
        };
        if evicted {
            tracing::debug!(server = name, %peer, "at the connection cap: the longest-idle connection closed");
        }
        let handler = handler.clone();
        let accept = accept.clone();
        let watcher = graceful.watcher();
        let tracker = tracker.clone();
        tokio::spawn(async move {
            let _registered = Registered {
                tracker: tracker.clone(),
                id,
            };
            let serve = async {
                let io = match tokio::time::timeout(limits.header_timeout, accept.accept(stream))
                    .await
                {
                    Ok(Ok(io)) => io,
                    Ok(Err(error)) => {
                        tracing::debug!(server = name, %peer, %error, "connection refused at accept");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(server = name, %peer, "no handshake in time");
                        return;
                    }
                };
                let over_tls = OverTls(A::over_tls(&io));
                let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
                    request.extensions_mut().insert(over_tls);
                    let span = request_span(limits.request_span, name, &request);
                    let busy = Busy::start(tracker.clone(), id);
                    let response = handler(request, peer);
                    async move {
                        // Busy until the response body is sent (or dropped).
                        Ok::<_, Infallible>(
                            response.await.map(|body| Tracked { body, _busy: busy }),
                        )
                    }
                    .instrument(span)
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_timeout)
                    .serve_connection(TokioIo::new(io), service);
                if let Err(error) = watcher.watch(connection).await {
                    tracing::debug!(server = name, %peer, %error, "connection ended with an error");
                }
            };
            tokio::select! {
                _ = serve => {}
                _ = evict.notified() => {
                    tracing::debug!(server = name, %peer, "closed to make room (idle longest at the cap)");
                }
            }
        });
    }
    drain(name, limits, listener, graceful).await;
}

/// The first pause after an accept error; it doubles up to [`ACCEPT_PAUSE_MAX`].
const ACCEPT_PAUSE_MIN: Duration = Duration::from_millis(10);
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);

/// Closes the listener and lets the requests in flight finish, for up to [`Limits::drain`].
async fn drain(
    name: &'static str,
    limits: Limits,
    listener: TcpListener,
    graceful: GracefulShutdown,
) {
    drop(listener);
    if tokio::time::timeout(limits.drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(server = name, drain = ?limits.drain, "requests still in flight after the drain period");
    }
}

/// The connections being served: which are idle since when, and how to close one.
struct Tracker {
    max: usize,
    state: Mutex<TrackerState>,
    /// Notified when a connection ends or becomes idle (room for a waiting one).
    freed: Notify,
}

#[derive(Default)]
struct TrackerState {
    next_id: u64,
    connections: HashMap<u64, Connection>,
}

struct Connection {
    /// Requests whose response is not yet sent.
    busy: usize,
    /// When it last had nothing in flight (its accept, or its last response sent).
    idle_since: Instant,
    /// Closes it (notified once; the permit is kept if the task is not waiting yet).
    evict: Arc<Notify>,
}

impl Tracker {
    fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            state: Mutex::default(),
            freed: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TrackerState> {
        self.state.lock().expect("connection tracker lock")
    }

    /// Registers a new connection when there is room, closing the longest-idle one if that is
    /// what makes room: `(id, whether one was closed)`; `None` when every connection is busy.
    fn admit(&self, evict: &Arc<Notify>) -> Option<(u64, bool)> {
        let mut state = self.lock();
        let mut evicted = false;
        if state.connections.len() >= self.max {
            let oldest = state
                .connections
                .iter()
                .filter(|(_, c)| c.busy == 0)
                .min_by_key(|(_, c)| c.idle_since)
                .map(|(id, _)| *id)?;
            // Gone from the count now, so that the next one is not taken for it too.
            if let Some(connection) = state.connections.remove(&oldest) {
                connection.evict.notify_one();
            }
            evicted = true;
        }
        let id = state.next_id;
        state.next_id += 1;
        state.connections.insert(
            id,
            Connection {
                busy: 0,
                idle_since: Instant::now(),
                evict: evict.clone(),
            },
        );
        Some((id, evicted))
    }

    fn busy(&self, id: u64, delta: isize) {
        let idle = match self.lock().connections.get_mut(&id) {
            Some(connection) => {
                connection.busy = connection.busy.saturating_add_signed(delta);
                if connection.busy == 0 {
                    connection.idle_since = Instant::now();
                }
                connection.busy == 0
            }
            None => false,
        };
        if idle {
            self.freed.notify_one();
        }
    }

    fn remove(&self, id: u64) {
        if self.lock().connections.remove(&id).is_some() {
            self.freed.notify_one();
        }
    }
}

/// Removes its connection from the tracker when the connection's task ends.
struct Registered {
    tracker: Arc<Tracker>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        // An evicted connection was removed already (its slot went to the one that evicted
        // it): nothing to free then.
        self.tracker.remove(self.id);
    }
}

/// A request in flight on a connection, until its response body is sent or dropped.
struct Busy {
    tracker: Arc<Tracker>,
    id: u64,
}

impl Busy {
    fn start(tracker: Arc<Tracker>, id: u64) -> Self {
        tracker.busy(id, 1);
        Self { tracker, id }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.tracker.busy(self.id, -1);
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its connection busy while it streams.
    struct Tracked<B> {
        #[pin]
        body: B,
        _busy: Busy,
    }
}

impl<B: Body> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The span a request is served under (see [`Limits::request_span`]).
fn request_span(
    level: tracing::Level,
    server: &'static str,
    request: &Request<Incoming>,
) -> tracing::Span {
    macro_rules! span_at {
        ($level:expr) => {
            tracing::span!(
                $level,
                "request",
                server,
                method = %request.method(),
                path = %request.uri().path(),
            )
        };
    }
    let span = match level {
        tracing::Level::ERROR => span_at!(tracing::Level::ERROR),
        tracing::Level::WARN => span_at!(tracing::Level::WARN),
        tracing::Level::INFO => span_at!(tracing::Level::INFO),
        tracing::Level::DEBUG => span_at!(tracing::Level::DEBUG),
        tracing::Level::TRACE => span_at!(tracing::Level::TRACE),
    };
    // The caller's trace (W3C `traceparent`), when it sent one and traces are exported.
    if request.headers().contains_key("traceparent") && !span.is_disabled() {
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        let _ = span.set_parent(crate::traces::extract(request.headers()));
    }
    span
}

#[cfg(test)]
mod tests;
