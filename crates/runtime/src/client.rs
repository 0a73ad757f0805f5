//! One way to make the HTTP/1 client of a component: the probe's and the sidecar's calls to the
//! trust API (over TLS, trusting the operator's CA only), and the sidecar's to the MCP servers
//! behind it.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Body;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// How long a connection to one of the product's own servers stays pooled while idle: shorter
/// than their idle timeout ([`crate::Limits::header_timeout`], 60 s), so a pooled connection is
/// not reused just as the server closes it.
pub const OWN_SERVERS_POOL_IDLE: Duration = Duration::from_secs(30);

/// A pooled client over plain TCP (no Nagle delay) giving up on a connect after
/// `connect_timeout` and closing a connection idle for `pool_idle`.
pub fn client<B>(connect_timeout: Duration, pool_idle: Duration) -> Client<HttpConnector, B>
where
    B: Body + Send + 'static,
    B::Data: Send,
{
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(pool_idle)
        .build(connector(connect_timeout))
}

/// TCP with a connect timeout and no Nagle delay, for `http://` URLs only.
fn connector(connect_timeout: Duration) -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    connector
}

/// A client of [`https_client`].
pub type HttpsClient<B> = Client<HttpsConnector<HttpConnector>, B>;

/// TLS that trusts the certificates of `bundle_pem` (the operator's CA bundle) and nothing
/// else — not the system's roots: the trust API's certificate is the operator's own. An error
/// when the bundle holds no certificate or one that does not parse.
pub fn tls_config(bundle_pem: &[u8]) -> Result<Arc<rustls::ClientConfig>, String> {
    let certificates = CertificateDer::pem_slice_iter(bundle_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate bundle: {e}"))?;
    if certificates.is_empty() {
        return Err("no certificate in the PEM bundle".into());
    }
    let mut roots = rustls::RootCertStore::empty();
    for certificate in certificates {
        roots
            .add(certificate)
            .map_err(|e| format!("a certificate of the bundle is not a CA: {e}"))?;
    }
    Ok(Arc::new(with_roots(roots)))
}

/// TLS with these roots and the ring provider. No ALPN here: the HTTPS connector sets it from
/// the protocols it enables.
fn with_roots(roots: rustls::RootCertStore) -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// [`client`] that also speaks HTTPS to `https://` URLs, checking the server's certificate
/// against `tls`'s roots and the URL's host. Without `tls` it trusts no root, so an `https://`
/// URL fails its handshake; `http://` URLs are plain either way.
pub fn https_client<B>(
    connect_timeout: Duration,
    pool_idle: Duration,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> HttpsClient<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
{
    let config = match tls {
        Some(config) => (*config).clone(),
        None => with_roots(rustls::RootCertStore::empty()),
    };
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .wrap_connector({
            // Under TLS: the HTTPS connector checks the scheme itself.
            let mut tcp = connector(connect_timeout);
            tcp.enforce_http(false);
            tcp
        });
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(pool_idle)
        .build(https)
}
