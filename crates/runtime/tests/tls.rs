//! One port for TLS and plain HTTP ([`agentmesh_runtime::TlsOrPlain`]) and the client that
//! trusts one CA bundle only ([`agentmesh_runtime::client::https_client`]): the operator's
//! trust API and its probes' and sidecars' side of it.

use std::sync::Arc;
use std::time::Duration;

use agentmesh_runtime::client::{HttpsClient, https_client, tls_config};
use agentmesh_runtime::{Limits, OverTls, TlsOrPlain};
use http_body_util::{BodyExt, Full};
use hyper::Response;
use hyper::body::Bytes;
use meshlogic_webhook_certs::{CertStore, issue, new_ca, provider};

const DAY: Duration = Duration::from_secs(86_400);

/// A CA and a serving certificate it signs for 127.0.0.1: (CA PEM, certificate store).
fn ca_and_store() -> (String, Arc<CertStore>) {
    let (ca, ca_key) = new_ca(365 * DAY).unwrap();
    let (cert, key) = issue(&ca, &ca_key, &["127.0.0.1".to_owned()], DAY).unwrap();
    let store = Arc::new(CertStore::default());
    assert!(store.set_pem(cert.as_bytes(), key.as_bytes()).unwrap());
    (ca, store)
}

/// A server on both transports answering which one each request came on.
async fn server(store: Arc<CertStore>) -> std::net::SocketAddr {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(store);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(agentmesh_runtime::serve(
        "test",
        listener,
        TlsOrPlain(acceptor),
        Limits::default(),
        |request: hyper::Request<hyper::body::Incoming>, _peer| {
            let over_tls = request.extensions().get::<OverTls>().copied();
            async move {
                let answer = match over_tls {
                    Some(OverTls(true)) => "tls",
                    Some(OverTls(false)) => "plain",
                    None => "unknown",
                };
                Response::new(Full::new(Bytes::from_static(answer.as_bytes())))
            }
        },
        std::future::pending(),
    ));
    addr
}

async fn get(client: &HttpsClient<Full<Bytes>>, url: String) -> Result<String, String> {
    let response = tokio::time::timeout(Duration::from_secs(5), client.get(url.parse().unwrap()))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| format!("{e:?}"))?;
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn one_port_serves_tls_and_plain_and_says_which() {
    let (ca, store) = ca_and_store();
    let addr = server(store).await;
    let client = https_client(
        Duration::from_secs(2),
        Duration::from_secs(30),
        Some(tls_config(ca.as_bytes()).unwrap()),
    );
    assert_eq!(
        get(&client, format!("https://{addr}/")).await,
        Ok("tls".into())
    );
    assert_eq!(
        get(&client, format!("http://{addr}/")).await,
        Ok("plain".into())
    );
    // The plain client of the same module never speaks TLS.
    let plain: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        agentmesh_runtime::client::client(Duration::from_secs(2), Duration::from_secs(30));
    assert!(
        plain
            .get(format!("https://{addr}/").parse().unwrap())
            .await
            .is_err()
    );
}

/// A server whose certificate another CA signed (a pod that took over the operator's address,
/// say) gets no request: the handshake fails before the token is sent. So does a client made
/// without roots, and the name is checked too.
#[tokio::test]
async fn only_a_certificate_of_the_trusted_ca_for_the_right_name_is_accepted() {
    let (_, store) = ca_and_store();
    let addr = server(store).await;
    let (other_ca, _) = ca_and_store();
    let other = https_client(
        Duration::from_secs(2),
        Duration::from_secs(30),
        Some(tls_config(other_ca.as_bytes()).unwrap()),
    );
    let error = get(&other, format!("https://{addr}/")).await.unwrap_err();
    // Both CAs carry the operator's CA name: the signature is what does not check.
    assert!(
        error.contains("InvalidCertificate(BadSignature)"),
        "{error}"
    );
    let rootless = https_client(Duration::from_secs(2), Duration::from_secs(30), None);
    assert!(get(&rootless, format!("https://{addr}/")).await.is_err());

    let (ca, store) = ca_and_store();
    let addr = server(store).await;
    let right_ca = https_client(
        Duration::from_secs(2),
        Duration::from_secs(30),
        Some(tls_config(ca.as_bytes()).unwrap()),
    );
    // The certificate is for 127.0.0.1, not for localhost.
    let port = addr.port();
    let error = get(&right_ca, format!("https://localhost:{port}/"))
        .await
        .unwrap_err();
    assert!(error.contains("NotValidForName"), "{error}");
}

#[test]
fn a_bundle_without_a_certificate_is_refused() {
    assert!(tls_config(b"").unwrap_err().contains("no certificate"));
    assert!(
        tls_config(b"not a pem")
            .unwrap_err()
            .contains("no certificate")
    );
    let broken = b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n";
    assert!(tls_config(broken).is_err());
}
