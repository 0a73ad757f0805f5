//! Plain HTTP/1 serving for the trust API and the metrics endpoint, and their responses.

use std::future::Future;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;

pub type Body = Full<Bytes>;

/// Serves plain HTTP on `listener` with `handler` until SIGTERM, then drains
/// ([`agentmesh_runtime::serve`]: header and idle timeout, connection cap, a span per request).
pub async fn serve<H, F>(name: &'static str, listener: TcpListener, handler: H)
where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    agentmesh_runtime::serve(
        name,
        listener,
        agentmesh_runtime::Plain,
        agentmesh_runtime::Limits::default(),
        move |request, _peer| handler(request),
        super::shutdown_signal(),
    )
    .await;
}

/// A JSON response.
pub fn json(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("static headers are valid")
}

/// A JSON error response: `{"error": message}`.
pub fn error(status: StatusCode, message: impl std::fmt::Display) -> Response<Body> {
    json(status, &serde_json::json!({ "error": message.to_string() }))
}

/// A plain-text response.
pub fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static headers are valid")
}
