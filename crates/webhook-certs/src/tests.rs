use std::sync::Arc;

use super::*;

const DAY: Duration = Duration::from_secs(86_400);

fn sans() -> Vec<String> {
    super::sans(
        "agentmesh",
        "agentmesh",
        Some("https://127.0.0.1:9443/inject"),
    )
}

#[test]
fn an_empty_secret_gets_a_ca_and_a_certificate_that_verify() {
    let empty = BTreeMap::new();
    let now = OffsetDateTime::now_utc();
    assert_eq!(plan(&empty, now, DAY, 365 * DAY, &sans()), Plan::NewCa);
    let data = execute(&Plan::NewCa, &empty, DAY, 365 * DAY, &sans()).unwrap();
    assert_eq!(plan(&data, now, DAY, 365 * DAY, &sans()), Plan::Keep);

    // The serving certificate verifies against the bundle for 127.0.0.1 and the Service.
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&data[CA_BUNDLE].0) {
        roots.add(cert.unwrap()).unwrap();
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(super::provider()),
    )
    .build()
    .unwrap();
    let leaf = rustls::pki_types::CertificateDer::from_pem_slice(&data[TLS_CRT].0).unwrap();
    for name in ["127.0.0.1", "agentmesh.agentmesh.svc"] {
        verifier
            .verify_server_cert(
                &leaf,
                &[],
                &rustls::pki_types::ServerName::try_from(name).unwrap(),
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;

#[test]
fn certificates_are_renewed_with_a_third_of_their_life_left() {
    let data = execute(&Plan::NewCa, &BTreeMap::new(), DAY, 365 * DAY, &sans()).unwrap();
    let now = OffsetDateTime::now_utc();
    let later = |hours: i64| now + time::Duration::hours(hours);
    assert_eq!(plan(&data, later(15), DAY, 365 * DAY, &sans()), Plan::Keep);
    assert_eq!(plan(&data, later(17), DAY, 365 * DAY, &sans()), Plan::Renew);
    assert_eq!(
        plan(&data, later(250 * 24), DAY, 365 * DAY, &sans()),
        Plan::NewCa
    );
    // A different set of names needs a new certificate.
    let other = super::sans("agentmesh", "other", None);
    assert_eq!(plan(&data, now, DAY, 365 * DAY, &other), Plan::Renew);

    let renewed = execute(&Plan::Renew, &data, DAY, 365 * DAY, &sans()).unwrap();
    assert_eq!(renewed[CA_BUNDLE], data[CA_BUNDLE]);
    assert_ne!(renewed[TLS_CRT], data[TLS_CRT]);

    // A new CA keeps the old, still valid, one in the bundle.
    let rotated = execute(&Plan::NewCa, &data, DAY, 365 * DAY, &sans()).unwrap();
    let bundle = String::from_utf8(rotated[CA_BUNDLE].0.clone()).unwrap();
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2);
    assert!(
        bundle.contains(
            String::from_utf8(data[CA_SIGNER_CRT].0.clone())
                .unwrap()
                .trim()
        )
    );
    assert_eq!(plan(&rotated, now, DAY, 365 * DAY, &sans()), Plan::Keep);
}

#[test]
fn url_hosts_are_read() {
    assert_eq!(
        url_host("https://127.0.0.1:8443/inject").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        url_host("https://webhook.example.com/x").as_deref(),
        Some("webhook.example.com")
    );
    assert_eq!(url_host("https://[::1]:8443/").as_deref(), Some("::1"));
    assert_eq!(url_host("nonsense"), None);
}
