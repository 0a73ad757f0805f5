//! One way to serve HTTP/1: the trust API, the webhook (over TLS), `/metrics` and health
//! endpoints of every component, and the sidecar's proxy.
//!
//! - **Connection cap**: at most [`Limits::max_connections`] connections are served at once;
//!   beyond that, new connections wait in the listen backlog (the kernel's), never in memory
//!   here.
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

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
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
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(server = name, %error, "accept failed");
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let handler = handler.clone();
        let accept = accept.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let io = match tokio::time::timeout(limits.header_timeout, accept.accept(stream)).await
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
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let span = request_span(limits.request_span, name, &request);
                let response = handler(request, peer);
                async move { Ok::<_, Infallible>(response.await) }.instrument(span)
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(io), service);
            if let Err(error) = watcher.watch(connection).await {
                tracing::debug!(server = name, %peer, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(server = name, drain = ?limits.drain, "requests still in flight after the drain period");
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
    match level {
        tracing::Level::ERROR => span_at!(tracing::Level::ERROR),
        tracing::Level::WARN => span_at!(tracing::Level::WARN),
        tracing::Level::INFO => span_at!(tracing::Level::INFO),
        tracing::Level::DEBUG => span_at!(tracing::Level::DEBUG),
        tracing::Level::TRACE => span_at!(tracing::Level::TRACE),
    }
}

#[cfg(test)]
mod tests;
