//! The webhook's HTTPS server: hyper (HTTP/1.1, keep-alive) over tokio-rustls. The serving
//! certificate is looked up for every TLS handshake in a [`CertStore`], which the certificate
//! manager updates on rotation: a new certificate is in use from the next connection, without a
//! restart; connections already open keep the one they were made with.

use std::future::Future;
use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::review::BadRequest;

/// The path the webhook is registered at.
pub const PATH: &str = "/inject";
/// Largest body accepted: the API server's own request limit is 3 MiB.
pub const MAX_BODY: usize = 6 * 1024 * 1024;

// The certificate store and the crypto provider are meshlogic-webhook-certs' (no cluster there).
pub use meshlogic_webhook_certs::{CertStore, provider};

/// A TLS acceptor whose certificate comes from `store` at each handshake.
pub fn acceptor(store: Arc<CertStore>) -> anyhow::Result<TlsAcceptor> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// What answers the reviews: the injector, or an echo in the benchmark's baseline.
pub trait Reviewer: Send + Sync + 'static {
    /// The AdmissionReview response body for a request body.
    fn review(&self, body: Bytes) -> impl Future<Output = Result<Vec<u8>, BadRequest>> + Send;
    /// Counts a request refused before review (wrong method, path, size or body).
    fn refused(&self, _reason: &'static str) {}
}

type Body = Full<Bytes>;

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response<Body> {
    let body = serde_json::json!({ "error": message.to_string() }).to_string();
    reply(status, "application/json", body)
}

/// One HTTP request: `POST /inject` with an AdmissionReview, anything else an error.
pub async fn handle<R: Reviewer>(reviewer: &R, request: Request<Incoming>) -> Response<Body> {
    if request.uri().path() != PATH {
        reviewer.refused("not_found");
        return error(
            StatusCode::NOT_FOUND,
            format!("no such path; the webhook is POST {PATH}"),
        );
    }
    if request.method() != Method::POST {
        reviewer.refused("method_not_allowed");
        let mut response = error(StatusCode::METHOD_NOT_ALLOWED, "POST only");
        response.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("POST"),
        );
        return response;
    }
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            reviewer.refused("too_large");
            return self::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than {MAX_BODY} bytes"),
            );
        }
        Err(error) => {
            reviewer.refused("bad_request");
            return self::error(
                StatusCode::BAD_REQUEST,
                format!("reading the body: {error}"),
            );
        }
    };
    match reviewer.review(body).await {
        Ok(answer) => reply(StatusCode::OK, "application/json", answer),
        Err(bad) => {
            reviewer.refused("bad_request");
            error(StatusCode::BAD_REQUEST, bad)
        }
    }
}

/// TLS with the webhook's certificate (re-read for each connection).
#[derive(Clone)]
struct Tls(TlsAcceptor);

impl agentmesh_runtime::Accept for Tls {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    async fn accept(&self, stream: tokio::net::TcpStream) -> std::io::Result<Self::Io> {
        let _ = stream.set_nodelay(true);
        self.0.accept(stream).await
    }
}

/// Serves AdmissionReviews over TLS on `listener` until `shutdown`, then drains
/// ([`agentmesh_runtime::serve`]; a TLS handshake must end within the header timeout).
pub async fn serve<R: Reviewer>(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    reviewer: Arc<R>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    agentmesh_runtime::serve(
        "webhook",
        listener,
        Tls(acceptor),
        agentmesh_runtime::Limits::default(),
        move |request, _peer| {
            let reviewer = reviewer.clone();
            async move { handle(&*reviewer, request).await }
        },
        shutdown,
    )
    .await;
}
