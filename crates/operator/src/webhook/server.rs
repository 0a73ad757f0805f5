//! The webhook's HTTPS server: hyper (HTTP/1.1, keep-alive) over tokio-rustls. The serving
//! certificate is looked up for every TLS handshake in a [`CertStore`], which the certificate
//! manager updates on rotation: a new certificate is in use from the next connection, without a
//! restart; connections already open keep the one they were made with.

use std::future::Future;
use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use rustls::pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::review::BadRequest;

/// The path the webhook is registered at.
pub const PATH: &str = "/inject";
/// Largest body accepted: the API server's own request limit is 3 MiB.
pub const MAX_BODY: usize = 6 * 1024 * 1024;

// The certificate store and the crypto provider are meshlogic-webhook-certs' (no cluster there).
pub use meshlogic_webhook_certs::{CertStore, provider};

/// Who may open a connection: any TLS client (no `ClientAuth`), or one whose certificate
/// chains to `roots` and, when `names` is not empty, carries one of them as its subject common
/// name or a DNS subjectAltName: the API server, with the client certificate its admission
/// configuration gives it for this webhook.
#[derive(Clone, Debug, Default)]
pub struct ClientAuth {
    pub roots: Vec<CertificateDer<'static>>,
    pub names: Vec<String>,
}

impl ClientAuth {
    /// Whether the leaf certificate `der` (already verified) carries an allowed name.
    pub fn names_match(&self, der: &[u8]) -> bool {
        if self.names.is_empty() {
            return true;
        }
        let Ok((_, certificate)) = x509_parser::parse_x509_certificate(der) else {
            return false;
        };
        let common_names = certificate
            .subject()
            .iter_common_name()
            .filter_map(|name| name.as_str().ok());
        let dns_names = certificate
            .subject_alternative_name()
            .ok()
            .flatten()
            .into_iter()
            .flat_map(|san| san.value.general_names.iter())
            .filter_map(|name| match name {
                x509_parser::extensions::GeneralName::DNSName(dns) => Some(*dns),
                _ => None,
            });
        common_names
            .chain(dns_names)
            .any(|name| self.names.iter().any(|allowed| allowed == name))
    }
}

/// A TLS acceptor whose certificate comes from `store` at each handshake; with `client`, a
/// client certificate signed by its roots is required.
pub fn acceptor(store: Arc<CertStore>, client: Option<&ClientAuth>) -> anyhow::Result<TlsAcceptor> {
    let provider = Arc::new(provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match client {
        None => builder.with_no_client_auth(),
        Some(client) => {
            let mut roots = rustls::RootCertStore::empty();
            for root in &client.roots {
                roots.add(root.clone())?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(store);
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

/// TLS with the webhook's certificate (re-read for each connection), and the client's checked
/// when required: a connection without the right one is closed before any HTTP is read.
struct Tls<R> {
    acceptor: TlsAcceptor,
    client: Option<Arc<ClientAuth>>,
    reviewer: Arc<R>,
}

impl<R> Clone for Tls<R> {
    fn clone(&self) -> Self {
        Self {
            acceptor: self.acceptor.clone(),
            client: self.client.clone(),
            reviewer: self.reviewer.clone(),
        }
    }
}

impl<R: Reviewer> agentmesh_runtime::Accept for Tls<R> {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    async fn accept(&self, stream: tokio::net::TcpStream) -> std::io::Result<Self::Io> {
        let _ = stream.set_nodelay(true);
        let io = self.acceptor.accept(stream).await.inspect_err(|error| {
            if self.client.is_some() && is_client_certificate_error(error) {
                self.reviewer.refused("client_certificate");
            }
        })?;
        if let Some(client) = &self.client {
            let leaf = io
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first());
            if !leaf.is_some_and(|leaf| client.names_match(leaf)) {
                self.reviewer.refused("client_certificate");
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    "the client certificate names no allowed client",
                ));
            }
        }
        Ok(io)
    }
    fn over_tls(_io: &Self::Io) -> bool {
        true
    }
}

/// Whether a failed handshake failed on the client's certificate (none, or not trusted).
fn is_client_certificate_error(error: &std::io::Error) -> bool {
    matches!(
        error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::NoCertificatesPresented | rustls::Error::InvalidCertificate(_))
    )
}

/// Serves AdmissionReviews over TLS on `listener` until `shutdown`, then drains
/// ([`agentmesh_runtime::serve`]; a TLS handshake must end within the header timeout). With
/// `client`, only clients with a certificate it accepts are served (see [`acceptor`]).
pub async fn serve<R: Reviewer>(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    client: Option<ClientAuth>,
    reviewer: Arc<R>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let tls = Tls {
        acceptor,
        client: client.map(Arc::new),
        reviewer: reviewer.clone(),
    };
    agentmesh_runtime::serve(
        "webhook",
        listener,
        tls,
        agentmesh_runtime::Limits::default(),
        move |request, _peer| {
            let reviewer = reviewer.clone();
            async move { handle(&*reviewer, request).await }
        },
        shutdown,
    )
    .await;
}

#[cfg(test)]
mod tests;
