//! `meshlogic-webhook-certs`: the webhook's serving certificate, as `meshlogic-operator` keeps it
//! (its `webhook::certs` manager reads and writes the Secret and applies the
//! MutatingWebhookConfiguration that trusts it). Everything here reads or makes certificates
//! without a cluster, so that the parsing of the Secret can be fuzzed (`fuzz/`).
//!
//! Self-managed (the default): a CA and a serving certificate it signs, both in the Secret
//! `--webhook-secret` of the operator's namespace (`tls.crt`, `tls.key`, `ca.crt` — the bundle
//! the API server trusts — and `ca-signer.crt`/`ca-signer.key`). Only the leader writes: it
//! creates them, renews the serving certificate when less than a third of its lifetime is left
//! (same CA, so `caBundle` does not change), and replaces the CA when less than a third of the
//! CA's lifetime is left (the old CA stays in `ca.crt` while it is valid, so certificates it
//! signed keep working). After writing the Secret it applies the configuration with the new
//! `caBundle`. Every replica polls the Secret and loads what it holds into the [`CertStore`],
//! read at each TLS handshake.
//!
//! cert-manager mode: a cert-manager `Certificate` writes the Secret and its CA injector fills
//! `caBundle`; the operator only reads the Secret and applies the configuration.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use time::OffsetDateTime;

mod store;

pub use store::{CertStore, provider};

pub const TLS_CRT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";
pub const CA_BUNDLE: &str = "ca.crt";
pub const CA_SIGNER_CRT: &str = "ca-signer.crt";
pub const CA_SIGNER_KEY: &str = "ca-signer.key";
/// Backdating of `notBefore`, for clocks a little behind ours.
const BACKDATE: time::Duration = time::Duration::minutes(5);

/// Where the serving certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    SelfManaged {
        serving_lifetime: Duration,
        ca_lifetime: Duration,
        /// Subject alternative names of the serving certificate.
        sans: Vec<String>,
    },
    CertManager,
}

/// The DNS names and IPs the serving certificate is valid for: loopback, the Service's names,
/// and the hosts of `urls` (`--webhook-url`, the trust API's URL).
pub fn sans(service: &str, namespace: &str, urls: &[&str]) -> Vec<String> {
    let mut sans = vec![
        "127.0.0.1".to_owned(),
        "localhost".to_owned(),
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ];
    for host in urls.iter().filter_map(|url| url_host(url)) {
        if !sans.contains(&host) {
            sans.push(host);
        }
    }
    sans
}

/// The host of a URL (`https://host:port/path`; an IPv6 address without its brackets).
pub fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = if let Some(bracketed) = authority.strip_prefix('[') {
        bracketed.split(']').next()?
    } else {
        authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host)
    };
    (!host.is_empty()).then(|| host.to_owned())
}

fn san(name: &str) -> anyhow::Result<SanType> {
    Ok(match name.parse::<std::net::IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(name.try_into()?),
    })
}

fn validity(params: &mut CertificateParams, lifetime: Duration, now: OffsetDateTime) {
    params.not_before = now - BACKDATE;
    params.not_after = now + time::Duration::seconds(lifetime.as_secs() as i64);
}

/// A new self-signed CA: (certificate PEM, key PEM).
pub fn new_ca(lifetime: Duration) -> anyhow::Result<(String, String)> {
    new_ca_at(lifetime, OffsetDateTime::now_utc())
}

/// [`new_ca`] as made at `now`.
fn new_ca_at(lifetime: Duration, now: OffsetDateTime) -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(
        DnType::CommonName,
        format!("agentmesh-webhook-ca-{}", now.unix_timestamp()),
    );
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, lifetime, now);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A serving certificate for `sans`, signed by the CA: (certificate PEM, key PEM).
pub fn issue(
    ca_pem: &str,
    ca_key_pem: &str,
    sans: &[String],
    lifetime: Duration,
) -> anyhow::Result<(String, String)> {
    issue_at(
        ca_pem,
        ca_key_pem,
        sans,
        lifetime,
        OffsetDateTime::now_utc(),
    )
}

/// [`issue`] as issued at `now`.
fn issue_at(
    ca_pem: &str,
    ca_key_pem: &str,
    sans: &[String],
    lifetime: Duration,
    now: OffsetDateTime,
) -> anyhow::Result<(String, String)> {
    let issuer = Issuer::from_ca_cert_pem(ca_pem, KeyPair::from_pem(ca_key_pem)?)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "agentmesh-webhook");
    params.subject_alt_names = sans
        .iter()
        .map(|name| san(name))
        .collect::<Result<_, _>>()?;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, lifetime, now);
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// What a certificate PEM says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub not_after: OffsetDateTime,
    /// DNS names and IP addresses, as text.
    pub sans: Vec<String>,
    /// The issuer's and the subject's distinguished names, as text.
    pub issuer: String,
    pub subject: String,
    /// The subject's public key (the bits of its SubjectPublicKeyInfo).
    pub public_key: Vec<u8>,
}

/// The first certificate of a PEM text, `None` when it does not parse.
pub fn parse_first(pem: &[u8]) -> Option<Parsed> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    let sans = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => Some((*dns).to_owned()),
                    x509_parser::extensions::GeneralName::IPAddress(bytes) => match bytes.len() {
                        4 => Some(
                            std::net::IpAddr::from(<[u8; 4]>::try_from(*bytes).ok()?).to_string(),
                        ),
                        16 => Some(
                            std::net::IpAddr::from(<[u8; 16]>::try_from(*bytes).ok()?).to_string(),
                        ),
                        _ => None,
                    },
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Some(Parsed {
        not_after: cert.validity().not_after.to_datetime(),
        sans,
        issuer: cert.issuer().to_string(),
        subject: cert.subject().to_string(),
        public_key: cert.public_key().subject_public_key.data.to_vec(),
    })
}

/// Whether the bundle is PEM certificates only, one of them the first of `ca_pem`: read as a
/// TLS client reads a bundle, not as text that merely contains the CA's.
fn bundle_has(bundle: &[u8], ca_pem: &[u8]) -> bool {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let Ok(ca) = CertificateDer::from_pem_slice(ca_pem) else {
        return false;
    };
    CertificateDer::pem_slice_iter(bundle)
        .collect::<Result<Vec<_>, _>>()
        .is_ok_and(|certs| certs.contains(&ca))
}

/// Whether the first certificate of `chain_pem` is signed by the CA of `ca_pem` and valid at
/// `now` for a TLS server, as a client that trusts that CA checks it (names apart).
fn signed_by(chain_pem: &[u8], ca_pem: &[u8], now: OffsetDateTime) -> bool {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, UnixTime};
    let mut roots = rustls::RootCertStore::empty();
    let Ok(ca) = CertificateDer::from_pem_slice(ca_pem) else {
        return false;
    };
    let Ok(chain) = CertificateDer::pem_slice_iter(chain_pem).collect::<Result<Vec<_>, _>>() else {
        return false;
    };
    let Some((leaf, intermediates)) = chain.split_first() else {
        return false;
    };
    let Ok(leaf) = rustls::server::ParsedCertificate::try_from(leaf) else {
        return false;
    };
    let now = UnixTime::since_unix_epoch(Duration::from_secs(
        u64::try_from(now.unix_timestamp()).unwrap_or(0),
    ));
    roots.add(ca).is_ok()
        && rustls::client::verify_server_cert_signed_by_trust_anchor(
            &leaf,
            &roots,
            intermediates,
            now,
            provider().signature_verification_algorithms.all,
        )
        .is_ok()
}

/// The certificates of a PEM bundle that are still valid, each as PEM.
pub fn valid_certificates(bundle: &[u8], now: OffsetDateTime) -> Vec<String> {
    let text = String::from_utf8_lossy(bundle);
    let mut out = Vec::new();
    let mut rest = text.as_ref();
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let Some(end) = rest[start..].find("-----END CERTIFICATE-----") else {
            break;
        };
        let end = start + end + "-----END CERTIFICATE-----".len();
        let pem = &rest[start..end];
        if parse_first(pem.as_bytes()).is_some_and(|parsed| parsed.not_after > now) {
            out.push(format!("{pem}\n"));
        }
        rest = &rest[end..];
    }
    out
}

/// What the leader must do with the Secret's contents.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    Keep,
    /// A new serving certificate from the current CA.
    Renew,
    /// A new CA (the old one kept in the bundle while valid) and a new serving certificate.
    NewCa,
}

fn remaining_fraction_low(
    not_after: OffsetDateTime,
    now: OffsetDateTime,
    lifetime: Duration,
) -> bool {
    let left = (not_after - now).whole_seconds();
    left <= 0 || (left as u64).saturating_mul(3) < lifetime.as_secs()
}

/// Decides from the Secret's data whether certificates must be made.
pub fn plan(
    data: &BTreeMap<String, ByteString>,
    now: OffsetDateTime,
    serving_lifetime: Duration,
    ca_lifetime: Duration,
    sans: &[String],
) -> Plan {
    let get = |key: &str| data.get(key).map(|value| value.0.as_slice());
    let (Some(ca), Some(ca_key), Some(bundle)) =
        (get(CA_SIGNER_CRT), get(CA_SIGNER_KEY), get(CA_BUNDLE))
    else {
        return Plan::NewCa;
    };
    let ca_pem = ca;
    let Some(ca) = parse_first(ca) else {
        return Plan::NewCa;
    };
    // The CA as `issue` reads it, with its own key: a CA it cannot read, or whose key is not
    // the certificate's (what it signs would verify against nothing in the bundle), renews
    // nothing.
    let issuer = KeyPair::from_pem(&String::from_utf8_lossy(ca_key))
        .ok()
        .filter(|key| key.der_bytes() == ca.public_key)
        .and_then(|key| Issuer::from_ca_cert_pem(&String::from_utf8_lossy(ca_pem), key).ok());
    if issuer.is_none()
        || remaining_fraction_low(ca.not_after, now, ca_lifetime)
        || !bundle_has(bundle, ca_pem)
    {
        return Plan::NewCa;
    }
    let (Some(cert), Some(key)) = (get(TLS_CRT), get(TLS_KEY)) else {
        return Plan::Renew;
    };
    let Some(serving) = parse_first(cert) else {
        return Plan::Renew;
    };
    let mut have: Vec<&str> = serving.sans.iter().map(String::as_str).collect();
    let mut want: Vec<&str> = sans.iter().map(String::as_str).collect();
    have.sort_unstable();
    want.sort_unstable();
    // Signed by the CA (not merely naming it as issuer: a corrupt or foreign certificate would
    // be served, and refused by the API server, until it expires).
    if serving.issuer != ca.subject
        || have != want
        || remaining_fraction_low(serving.not_after, now, serving_lifetime)
        || !signed_by(cert, ca_pem, now)
        || CertStore::default().set_pem(cert, key).is_err()
    {
        return Plan::Renew;
    }
    Plan::Keep
}

/// Makes what `plan` asks for; returns the Secret's new data.
pub fn execute(
    plan: &Plan,
    data: &BTreeMap<String, ByteString>,
    serving_lifetime: Duration,
    ca_lifetime: Duration,
    sans: &[String],
) -> anyhow::Result<BTreeMap<String, ByteString>> {
    let now = OffsetDateTime::now_utc();
    execute_at(plan, data, serving_lifetime, ca_lifetime, sans, now)
}

/// [`execute`] at `now` (the certificates' validity, the CAs kept in the bundle): what the fuzz
/// target runs, so that its checks do not depend on the day.
pub fn execute_at(
    plan: &Plan,
    data: &BTreeMap<String, ByteString>,
    serving_lifetime: Duration,
    ca_lifetime: Duration,
    sans: &[String],
    now: OffsetDateTime,
) -> anyhow::Result<BTreeMap<String, ByteString>> {
    let mut data = data.clone();
    let text = |data: &BTreeMap<String, ByteString>, key: &str| {
        data.get(key)
            .map(|value| String::from_utf8_lossy(&value.0).into_owned())
            .unwrap_or_default()
    };
    if *plan == Plan::NewCa {
        let (ca, ca_key) = new_ca_at(ca_lifetime, now)?;
        // The new CA first, then the old ones still valid: what they signed stays trusted.
        let mut bundle = ca.clone();
        let old = data.get(CA_BUNDLE).map(|b| b.0.clone()).unwrap_or_default();
        for pem in valid_certificates(&old, now) {
            bundle.push_str(&pem);
        }
        data.insert(CA_SIGNER_CRT.into(), ByteString(ca.into_bytes()));
        data.insert(CA_SIGNER_KEY.into(), ByteString(ca_key.into_bytes()));
        data.insert(CA_BUNDLE.into(), ByteString(bundle.into_bytes()));
    }
    if *plan != Plan::Keep {
        let (cert, key) = issue_at(
            &text(&data, CA_SIGNER_CRT),
            &text(&data, CA_SIGNER_KEY),
            sans,
            serving_lifetime,
            now,
        )?;
        data.insert(TLS_CRT.into(), ByteString(cert.into_bytes()));
        data.insert(TLS_KEY.into(), ByteString(key.into_bytes()));
    }
    Ok(data)
}

#[cfg(test)]
mod tests;
