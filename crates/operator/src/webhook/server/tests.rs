//! The webhook port with client certificates required: only the API server's certificate (the
//! right CA, an allowed name) gets a review answered; everyone else is cut at the handshake,
//! counted, and reviews nothing.

use std::sync::Mutex;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// A reviewer that answers every review and records what was refused before review.
#[derive(Default)]
struct Recorder {
    reviews: Mutex<usize>,
    refusals: Mutex<Vec<&'static str>>,
}

impl Reviewer for Recorder {
    async fn review(&self, _body: Bytes) -> Result<Vec<u8>, BadRequest> {
        *self.reviews.lock().unwrap() += 1;
        Ok(br#"{"reviewed":true}"#.to_vec())
    }
    fn refused(&self, reason: &'static str) {
        self.refusals.lock().unwrap().push(reason);
    }
}

struct Ca {
    cert: rcgen::Certificate,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).unwrap();
    Ca {
        cert,
        issuer: Issuer::new(params, key),
    }
}

/// A certificate for `sans` (common name `common_name`), signed by `ca`, with `usage`.
struct Leaf {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Leaf {
    /// (chain, key) as a TLS client presents them.
    fn identity(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (
            vec![self.cert.der().clone()],
            PrivateKeyDer::try_from(self.key.serialize_der()).unwrap(),
        )
    }
}

fn leaf(ca: &Ca, common_name: &str, sans: &[&str], usage: ExtendedKeyUsagePurpose) -> Leaf {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    Leaf { cert, key }
}

/// Serves the webhook with the server CA's `127.0.0.1` certificate and `client`; its address.
async fn start(
    server_ca: &Ca,
    client: Option<ClientAuth>,
    recorder: Arc<Recorder>,
) -> std::net::SocketAddr {
    let serving = leaf(
        server_ca,
        "agentmesh-webhook",
        &["127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let store = Arc::new(CertStore::default());
    store
        .set_pem(
            serving.cert.pem().as_bytes(),
            serving.key.serialize_pem().as_bytes(),
        )
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = acceptor(store, client.as_ref()).unwrap();
    tokio::spawn(serve(
        listener,
        acceptor,
        client,
        recorder,
        std::future::pending(),
    ));
    addr
}

/// Posts a review to `addr` as a client with `identity` (or none); the response's status line,
/// or the error that ended the exchange.
async fn post(
    addr: std::net::SocketAddr,
    server_ca: &Ca,
    identity: Option<Leaf>,
) -> Result<String, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server_ca.cert.der().clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some(leaf) => {
            let (chain, key) = leaf.identity();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let mut tls = connector
            .connect(ServerName::try_from("127.0.0.1").unwrap(), stream)
            .await
            .map_err(|e| e.to_string())?;
        let body = "{}";
        let request = format!(
            "POST {PATH} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        // TLS 1.3: the server's verdict on the client's certificate arrives after the client
        // thinks the handshake is done, so the refusal shows on the write or the read.
        tls.write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        tls.read_to_end(&mut response)
            .await
            .map_err(|e| e.to_string())?;
        let response = String::from_utf8_lossy(&response).into_owned();
        match response.lines().next() {
            Some(status) if !status.is_empty() => Ok(status.to_owned()),
            _ => Err("the connection closed without a response".to_owned()),
        }
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| "timed out".to_owned())?
}

#[tokio::test]
async fn only_the_api_servers_certificate_gets_a_review_answered() {
    let server_ca = ca("webhook-serving-ca");
    let client_ca = ca("apiserver-webhook-client-ca");
    let cluster_ca = ca("cluster-ca");
    let recorder = Arc::new(Recorder::default());
    let client = ClientAuth {
        roots: vec![client_ca.cert.der().clone()],
        names: vec!["kube-apiserver-webhook-client".into()],
    };
    let addr = start(&server_ca, Some(client), recorder.clone()).await;
    let client_cert =
        |ca: &Ca, name: &str| leaf(ca, name, &[], ExtendedKeyUsagePurpose::ClientAuth);

    // Anyone who reaches the port: no certificate, a certificate of another CA (the cluster's,
    // which signs every kubelet's), the right CA with another name, a serving certificate.
    let attempts = [
        ("no certificate", None),
        (
            "another CA",
            Some(client_cert(&cluster_ca, "kube-apiserver-webhook-client")),
        ),
        (
            "another name",
            Some(client_cert(&client_ca, "system:node:evil")),
        ),
        (
            "a server certificate",
            Some(leaf(
                &client_ca,
                "kube-apiserver-webhook-client",
                &[],
                ExtendedKeyUsagePurpose::ServerAuth,
            )),
        ),
    ];
    for (attack, identity) in attempts {
        let answer = post(addr, &server_ca, identity).await;
        assert!(answer.is_err(), "{attack}: answered {answer:?}");
    }
    assert_eq!(*recorder.reviews.lock().unwrap(), 0);
    assert_eq!(
        *recorder.refusals.lock().unwrap(),
        vec!["client_certificate"; 4]
    );

    // The API server's certificate: reviewed. A DNS subjectAltName counts as a name too.
    let answer = post(
        addr,
        &server_ca,
        Some(client_cert(&client_ca, "kube-apiserver-webhook-client")),
    )
    .await;
    assert_eq!(answer.as_deref(), Ok("HTTP/1.1 200 OK"));
    let by_san = leaf(
        &client_ca,
        "something-else",
        &["kube-apiserver-webhook-client"],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let answer = post(addr, &server_ca, Some(by_san)).await;
    assert_eq!(answer.as_deref(), Ok("HTTP/1.1 200 OK"));
    assert_eq!(*recorder.reviews.lock().unwrap(), 2);
}

#[tokio::test]
async fn without_client_auth_any_client_is_served_and_with_no_names_any_the_ca_signs() {
    let server_ca = ca("webhook-serving-ca");
    let recorder = Arc::new(Recorder::default());
    let open = start(&server_ca, None, recorder.clone()).await;
    assert_eq!(
        post(open, &server_ca, None).await.as_deref(),
        Ok("HTTP/1.1 200 OK")
    );

    let client_ca = ca("apiserver-webhook-client-ca");
    let any_name = ClientAuth {
        roots: vec![client_ca.cert.der().clone()],
        names: vec![],
    };
    let closed = start(&server_ca, Some(any_name), recorder.clone()).await;
    assert!(post(closed, &server_ca, None).await.is_err());
    let identity = leaf(
        &client_ca,
        "whoever",
        &[],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    assert_eq!(
        post(closed, &server_ca, Some(identity)).await.as_deref(),
        Ok("HTTP/1.1 200 OK")
    );
    assert_eq!(*recorder.reviews.lock().unwrap(), 2);
}
