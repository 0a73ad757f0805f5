//! A sidecar's report batch as the trust API receives it: the `x-agentmesh-signature` header
//! (the first line of the input) and the body (the rest). Verifying never panics, a batch
//! signed by the key verifies and any other signature or body is refused; the body decodes as
//! a `ReportBatch` or is refused.
#![no_main]

use agentmesh_api::wire::ReportBatch;
use agentmesh_identity::SigningKey;
use agentmesh_identity::report::{sign_report, verify_report};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = SigningKey::from_bytes(&[7; 32]);
    let public = key.verifying_key();
    let (header, body) = match data.iter().position(|b| *b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&data[..0], data),
    };
    let header = String::from_utf8_lossy(header);
    let genuine = sign_report(&key, body);
    assert!(verify_report(&public, body, &genuine).is_ok());
    if header.trim() != genuine {
        assert!(verify_report(&public, body, &header).is_err());
    }
    let _ = serde_json::from_slice::<ReportBatch>(body);
});
