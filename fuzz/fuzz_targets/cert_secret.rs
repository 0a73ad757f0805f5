//! The webhook's certificate Secret as the operator reads it (`meshlogic-webhook-certs`): a
//! Secret as JSON (its `data`, base64, as the API server sends it), or the values themselves
//! separated by NUL bytes (`tls.crt`, `tls.key`, `ca.crt`, `ca-signer.crt`, `ca-signer.key`).
//! Whatever they hold, the leader's plan, the bundle's reading and the TLS store's loading never
//! panic; a Secret kept as it is serves a certificate that is valid, has the names asked for and
//! verifies against the bundle the API server trusts; a Secret whose serving certificate must be
//! renewed gets one from its CA, and the result is then kept.
#![no_main]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use libfuzzer_sys::fuzz_target;
use meshlogic_webhook_certs::{
    CA_BUNDLE, CA_SIGNER_CRT, CA_SIGNER_KEY, CertStore, Plan, TLS_CRT, TLS_KEY, execute_at,
    parse_first, plan, provider, sans, valid_certificates,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use time::OffsetDateTime;

const DAY: Duration = Duration::from_secs(86_400);
const SERVING_LIFETIME: Duration = DAY;
const CA_LIFETIME: Duration = Duration::from_secs(365 * 86_400);
/// "Now" for everything read from the input, so that a run does not depend on the day: an hour
/// after the seeds were made (`execute(&Plan::NewCa, ..)` with the lifetimes and names here, at
/// 1_796_192_560, then written as a Secret's JSON and as raw values).
const NOW: i64 = 1_796_196_160;

fn secret_data(input: &[u8]) -> BTreeMap<String, ByteString> {
    if let Ok(secret) = serde_json::from_slice::<k8s_openapi::api::core::v1::Secret>(input) {
        return secret.data.unwrap_or_default();
    }
    [TLS_CRT, TLS_KEY, CA_BUNDLE, CA_SIGNER_CRT, CA_SIGNER_KEY]
        .into_iter()
        .zip(input.split(|b| *b == 0))
        .map(|(key, value)| (key.to_string(), ByteString(value.to_vec())))
        .collect()
}

/// Whether the serving chain verifies against the bundle, for each name, at `now`.
fn verifies(
    data: &BTreeMap<String, ByteString>,
    names: &[String],
    now: OffsetDateTime,
) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&data[CA_BUNDLE].0).flatten() {
        let _ = roots.add(cert);
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(provider()),
    )
    .build()
    .map_err(|e| format!("no usable root in the bundle: {e}"))?;
    let chain: Vec<CertificateDer> = CertificateDer::pem_slice_iter(&data[TLS_CRT].0)
        .flatten()
        .collect();
    let (leaf, intermediates) = chain.split_first().ok_or("no certificate")?;
    let now = UnixTime::since_unix_epoch(Duration::from_secs(now.unix_timestamp() as u64));
    for name in names {
        let server = ServerName::try_from(name.as_str()).map_err(|e| format!("{name}: {e}"))?;
        verifier
            .verify_server_cert(leaf, intermediates, &server, &[], now)
            .map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(())
}

fuzz_target!(|input: &[u8]| {
    let data = secret_data(input);
    let now = OffsetDateTime::from_unix_timestamp(NOW).unwrap();
    let names = sans(
        "agentmesh-webhook",
        "agentmesh",
        &["https://127.0.0.1:9443/inject"],
    );

    // Every certificate of the bundle kept at a CA rotation is one of the bundle's, and valid.
    for key in [CA_BUNDLE, TLS_CRT, CA_SIGNER_CRT] {
        let Some(value) = data.get(key) else { continue };
        let text = String::from_utf8_lossy(&value.0);
        for pem in valid_certificates(&value.0, now) {
            assert!(
                text.contains(pem.trim_end()),
                "{key}: a certificate not in the bundle"
            );
            let parsed = parse_first(pem.as_bytes()).expect("a kept certificate parses");
            assert!(parsed.not_after > now, "{key}: an expired certificate kept");
        }
    }

    // What every replica loads for TLS.
    let store = CertStore::default();
    let loaded = match (data.get(TLS_CRT), data.get(TLS_KEY)) {
        (Some(cert), Some(key)) => match store.set_pem(&cert.0, &key.0) {
            Ok(changed) => {
                assert!(changed && store.is_loaded());
                assert!(
                    !store
                        .set_pem(&cert.0, &key.0)
                        .expect("loaded once, loads again")
                );
                true
            }
            Err(_) => {
                assert!(!store.is_loaded());
                false
            }
        },
        _ => false,
    };

    // What the leader does with it.
    match plan(&data, now, SERVING_LIFETIME, CA_LIFETIME, &names) {
        Plan::Keep => {
            assert!(loaded, "a Secret kept whose certificate does not load");
            let serving = parse_first(&data[TLS_CRT].0).expect("a kept certificate parses");
            assert!(serving.not_after > now);
            let mut have = serving.sans.clone();
            let mut want = names.clone();
            have.sort();
            want.sort();
            assert_eq!(have, want);
            if let Err(error) = verifies(&data, &names, now) {
                panic!(
                    "a Secret kept whose certificate does not verify against its bundle: {error}"
                );
            }
        }
        Plan::Renew => {
            let renewed = execute_at(
                &Plan::Renew,
                &data,
                SERVING_LIFETIME,
                CA_LIFETIME,
                &names,
                now,
            )
            .expect("a CA fit to keep issues a serving certificate");
            assert_eq!(renewed[CA_BUNDLE], data[CA_BUNDLE]);
            assert_eq!(renewed[CA_SIGNER_CRT], data[CA_SIGNER_CRT]);
            assert_eq!(
                plan(&renewed, now, SERVING_LIFETIME, CA_LIFETIME, &names),
                Plan::Keep,
                "a renewed certificate renewed again"
            );
        }
        Plan::NewCa => {}
    }
});
