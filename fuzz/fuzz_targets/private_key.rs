//! Key material from the environment or a Secret: PEM private keys, public keys, DIDs,
//! signatures, capabilities and RFC 3339 instants in text form.
#![no_main]

use agentmesh_identity::Timestamp;
use agentmesh_identity::capability::Capability;
use agentmesh_identity::keys::{self, Did};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(key) = keys::private_key_from_pem(text) {
        // Whatever form was read (PKCS#8 v1 or v2), the RFC 8410 v1 form written reads back.
        let pem = keys::private_key_to_pem(&key).expect("encoding cannot fail");
        let back = keys::private_key_from_pem(&pem).expect("the written form reads back");
        assert_eq!(back.to_bytes(), key.to_bytes());
    }
    let _ = keys::public_key_from_text(text);
    let _ = Did::parse(text);
    let _ = keys::signature_from_text(text);
    let _ = Capability::parse(text);
    if let Ok(t) = Timestamp::parse_rfc3339(text) {
        assert_eq!(Timestamp::parse_rfc3339(&t.to_rfc3339()), Ok(t));
    }
});
