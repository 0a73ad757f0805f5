use std::sync::Arc;

use super::*;

const DAY: Duration = Duration::from_secs(86_400);

fn sans() -> Vec<String> {
    super::sans(
        "agentmesh",
        "agentmesh",
        &[
            "https://127.0.0.1:9443/inject",
            "https://agentmesh.agentmesh.svc:8080",
        ],
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
    let other = super::sans("agentmesh", "other", &[]);
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

/// A PEM certificate with one character of its signature changed.
fn corrupt_signature(pem: &[u8]) -> Vec<u8> {
    let mut pem = pem.to_vec();
    let end = pem
        .windows(9)
        .position(|w| w == b"\n-----END")
        .expect("a PEM certificate");
    let at = (0..end)
        .rev()
        .filter(|i| pem[*i].is_ascii_alphanumeric())
        .nth(4)
        .unwrap();
    pem[at] = if pem[at] == b'A' { b'B' } else { b'A' };
    pem
}

/// Found by the fuzz target `cert_secret`: a serving certificate naming the CA as its issuer,
/// but with a signature the CA did not make, was kept, and would have been served (and refused
/// by the API server) until it expired.
#[test]
fn a_serving_certificate_the_ca_did_not_sign_is_renewed() {
    let now = OffsetDateTime::now_utc();
    let mut data = execute(&Plan::NewCa, &BTreeMap::new(), DAY, 365 * DAY, &sans()).unwrap();
    let corrupt = corrupt_signature(&data[TLS_CRT].0);
    assert!(parse_first(&corrupt).is_some());
    assert!(
        CertStore::default()
            .set_pem(&corrupt, &data[TLS_KEY].0)
            .is_ok()
    );
    data.insert(TLS_CRT.into(), ByteString(corrupt));
    assert_eq!(plan(&data, now, DAY, 365 * DAY, &sans()), Plan::Renew);
    let renewed = execute(&Plan::Renew, &data, DAY, 365 * DAY, &sans()).unwrap();
    assert_eq!(plan(&renewed, now, DAY, 365 * DAY, &sans()), Plan::Keep);
}

/// A CA key that is not the CA certificate's would sign certificates that verify against
/// nothing in the bundle, renewed again and again: a new CA is made instead.
#[test]
fn a_ca_key_that_is_not_the_cas_makes_a_new_ca() {
    let now = OffsetDateTime::now_utc();
    let mut data = execute(&Plan::NewCa, &BTreeMap::new(), DAY, 365 * DAY, &sans()).unwrap();
    let (_, other_key) = new_ca(365 * DAY).unwrap();
    data.insert(CA_SIGNER_KEY.into(), ByteString(other_key.into_bytes()));
    assert_eq!(plan(&data, now, DAY, 365 * DAY, &sans()), Plan::NewCa);
}

/// Found by the fuzz target `cert_secret`: a bundle holding the CA's PEM text after bytes that
/// are not PEM, and a broken block, was taken to hold the CA (it contained its text), while a
/// TLS client reading it finds no certificate at all. The bundle is read as certificates now.
#[test]
fn a_bundle_that_does_not_read_as_certificates_makes_a_new_ca() {
    let now = OffsetDateTime::now_utc();
    let mut data = execute(&Plan::NewCa, &BTreeMap::new(), DAY, 365 * DAY, &sans()).unwrap();
    let ca = data[CA_SIGNER_CRT].0.clone();
    let mut bundle = b"\x8f\x8f".to_vec();
    bundle.extend_from_slice(&ca);
    bundle.extend_from_slice(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CE\xf7RTIFICATE-----\n");
    data.insert(CA_BUNDLE.into(), ByteString(bundle));
    assert_eq!(plan(&data, now, DAY, 365 * DAY, &sans()), Plan::NewCa);
    // A new CA keeps the old one, which the bundle's text still holds whole.
    let rotated = execute(&Plan::NewCa, &data, DAY, 365 * DAY, &sans()).unwrap();
    assert_eq!(plan(&rotated, now, DAY, 365 * DAY, &sans()), Plan::Keep);
    let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(&rotated[CA_BUNDLE].0)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(certs.len(), 2);
    // Line endings a TLS client reads alike are the same bundle.
    let mut crlf = execute(&Plan::NewCa, &BTreeMap::new(), DAY, 365 * DAY, &sans()).unwrap();
    let text = String::from_utf8(crlf[CA_BUNDLE].0.clone()).unwrap();
    crlf.insert(
        CA_BUNDLE.into(),
        ByteString(text.replace('\n', "\r\n").into_bytes()),
    );
    assert_eq!(plan(&crlf, now, DAY, 365 * DAY, &sans()), Plan::Keep);
}

/// Found by the fuzz target `cert_secret`: a CA certificate with empty lines in its PEM reads
/// for the checks (and for a TLS client) but not for the issuer that renews the serving
/// certificate: the leader would have failed to renew it at every round until it expired.
#[test]
fn a_ca_the_issuer_cannot_read_makes_a_new_ca() {
    let now = OffsetDateTime::now_utc();
    let mut data = execute(&Plan::NewCa, &BTreeMap::new(), DAY, 365 * DAY, &sans()).unwrap();
    let pem = String::from_utf8(data[CA_SIGNER_CRT].0.clone()).unwrap();
    let (first, rest) = pem.split_once('\n').unwrap();
    let (second, rest) = rest.split_once('\n').unwrap();
    let spaced = format!("{first}\n{second}\n\n\n{rest}");
    assert!(parse_first(spaced.as_bytes()).is_some());
    data.insert(CA_BUNDLE.into(), ByteString(spaced.clone().into_bytes()));
    data.insert(CA_SIGNER_CRT.into(), ByteString(spaced.into_bytes()));
    data.remove(TLS_CRT);
    assert_eq!(plan(&data, now, DAY, 365 * DAY, &sans()), Plan::NewCa);
    let rotated = execute(&Plan::NewCa, &data, DAY, 365 * DAY, &sans()).unwrap();
    assert_eq!(plan(&rotated, now, DAY, 365 * DAY, &sans()), Plan::Keep);
}
