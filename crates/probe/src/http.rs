//! HTTP plumbing: a small JSON client for the trust API and telemetry sink, and the server of
//! `/metrics`, `/health` and `/ready`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_runtime::client::HttpsClient;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use crate::metrics::Metrics;
use crate::status::Status;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("token file {path}: {error}")]
    Token {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("request: {0}")]
    Request(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("HTTP {status}: {body}")]
    Status { status: StatusCode, body: String },
}

impl HttpError {
    /// A refusal that sending again will not change (4xx other than 408 and 429).
    pub fn is_permanent(&self) -> bool {
        matches!(self, HttpError::Status { status, .. }
            if status.is_client_error()
                && *status != StatusCode::REQUEST_TIMEOUT
                && *status != StatusCode::TOO_MANY_REQUESTS
                && *status != StatusCode::UNAUTHORIZED)
    }
}

/// A JSON client that sends `Authorization: Bearer <token>`, the token re-read from its file for
/// each request (projected ServiceAccount tokens rotate). `https://` URLs are checked against
/// the roots it was made with (the operator's CA), `http://` ones are plain.
#[derive(Clone, Debug)]
pub struct JsonClient {
    client: HttpsClient<Full<Bytes>>,
    token_file: Option<PathBuf>,
}

impl JsonClient {
    /// A client without TLS roots (`https://` URLs fail their handshake).
    pub fn new(token_file: Option<PathBuf>) -> Self {
        Self::with_tls(token_file, None)
    }

    /// A client that trusts `tls`'s roots for `https://` URLs.
    pub fn with_tls(
        token_file: Option<PathBuf>,
        tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    ) -> Self {
        Self {
            client: agentmesh_runtime::client::https_client(
                Duration::from_secs(5),
                agentmesh_runtime::client::OWN_SERVERS_POOL_IDLE,
                tls,
            ),
            token_file,
        }
    }

    pub async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), HttpError> {
        let mut request = Request::builder().method(method).uri(url);
        if let Some(path) = &self.token_file {
            let token = std::fs::read_to_string(path).map_err(|error| HttpError::Token {
                path: path.clone(),
                error,
            })?;
            request = request.header("authorization", format!("Bearer {}", token.trim()));
        }
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let mut request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|error| HttpError::Request(error.to_string()))?;
        // The trace goes on to the operator (with traces on).
        agentmesh_runtime::traces::inject(request.headers_mut());
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|error| HttpError::Request(format!("{error:#}")))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|error| HttpError::Request(error.to_string()))?
                .to_bytes();
            Ok::<_, HttpError>((status, body))
        };
        let (status, body) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| HttpError::Timeout(timeout))??;
        if !status.is_success() {
            return Err(HttpError::Status {
                status,
                body: String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
            });
        }
        Ok((status, body))
    }
}

/// Serves `/metrics`, `/health` and `/ready` until SIGTERM ([`agentmesh_runtime::serve`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    status: Arc<Status>,
    serve_metrics: bool,
) {
    agentmesh_runtime::serve(
        "probe",
        listener,
        agentmesh_runtime::Plain,
        agentmesh_runtime::Limits::default(),
        move |request: Request<Incoming>, _peer| {
            let response = route(&request, &metrics, &status, serve_metrics);
            async move { response }
        },
        agentmesh_runtime::shutdown_signal(),
    )
    .await;
}

fn route(
    request: &Request<Incoming>,
    metrics: &Metrics,
    status: &Status,
    serve_metrics: bool,
) -> Response<Full<Bytes>> {
    let reply = |code: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(code)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("static response")
    };
    if request.method() != Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match request.uri().path() {
        "/metrics" if serve_metrics => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        "/health" | "/healthz" => reply(StatusCode::OK, "application/json", status.to_json()),
        "/ready" => {
            let code = if status.is_ready() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply(code, "application/json", status.to_json())
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// Binds the metrics server's address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
