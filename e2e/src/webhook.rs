//! A test admission webhook: HTTPS on loopback with a throw-away CA, so that the API server can
//! call it through `clientConfig.url` exactly as it will call the operator's injector.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use rcgen::{CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Decides an AdmissionReview request: returns the JSON patch to apply, if any.
pub type Decide = dyn Fn(&Value) -> Option<Value> + Send + Sync;

/// A running webhook server.
pub struct WebhookServer {
    pub addr: SocketAddr,
    /// PEM of the CA that signed the serving certificate, for `caBundle`.
    pub ca_pem: String,
    /// Every AdmissionReview request received, in order.
    pub seen: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl WebhookServer {
    /// Starts on `127.0.0.1:<free port>`, answering every review with `decide`.
    pub async fn start(decide: Arc<Decide>) -> anyhow::Result<Self> {
        let (ca_pem, cert_der, key_der) = loopback_certificate()?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert_der], key_der)?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Vec::new()));

        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let (acceptor, seen, decide) = (acceptor.clone(), seen.clone(), decide.clone());
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(stream).await else {
                            return;
                        };
                        let service = hyper::service::service_fn(move |request| {
                            handle(request, seen.clone(), decide.clone())
                        });
                        let io = hyper_util::rt::TokioIo::new(tls);
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .await;
                    });
                }
            })
        };
        Ok(Self {
            addr,
            ca_pem,
            seen,
            task,
        })
    }

    /// `caBundle` value: the CA's PEM, base64.
    pub fn ca_bundle(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.ca_pem)
    }

    /// Number of reviews received so far.
    pub fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Drop for WebhookServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    request: Request<Incoming>,
    seen: Arc<Mutex<Vec<Value>>>,
    decide: Arc<Decide>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    if request.method() != hyper::Method::POST {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"error": "POST only"}),
        ));
    }
    let body = request.into_body().collect().await?.to_bytes();
    let Ok(review) = serde_json::from_slice::<Value>(&body) else {
        return Ok(reply(StatusCode::BAD_REQUEST, json!({"error": "not JSON"})));
    };
    let uid = review["request"]["uid"].clone();
    let patch = decide(&review);
    seen.lock().unwrap().push(review);
    let mut response = json!({"uid": uid, "allowed": true});
    if let Some(patch) = patch {
        response["patchType"] = "JSONPatch".into();
        response["patch"] = base64::engine::general_purpose::STANDARD
            .encode(patch.to_string())
            .into();
    }
    Ok(reply(
        StatusCode::OK,
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}),
    ))
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// A CA and a serving certificate for 127.0.0.1 signed by it.
fn loopback_certificate()
-> anyhow::Result<(String, CertificateDer<'static>, PrivateKeyDer<'static>)> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "agentmesh-e2e-ca");
    ca_params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    params.subject_alt_names = vec![SanType::IpAddress([127, 0, 0, 1].into())];
    let cert = params.signed_by(&key, &issuer)?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((ca_cert.pem(), cert.der().clone(), key_der))
}
