//! A delegation chain as published in status: decoded from JSON and verified link by link.
#![no_main]

use agentmesh_identity::capability::parse_all;
use agentmesh_identity::delegation::{DelegationLink, verify_chain};
use agentmesh_identity::keys::Did;
use agentmesh_identity::registry::MemoryRegistry;
use agentmesh_identity::{SigningKey, Timestamp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(links) = serde_json::from_slice::<Vec<DelegationLink>>(data) else {
        return;
    };
    let root = SigningKey::from_bytes(&[1; 32]);
    let mut registry = MemoryRegistry::new();
    let dids: Vec<Did> = (1..4u8)
        .map(|seed| registry.insert(SigningKey::from_bytes(&[seed; 32]).verifying_key(), 800))
        .collect();
    // Each consents to the next, so inputs reach the checks past consent.
    for pair in dids.windows(2) {
        registry.allow_delegation(&pair[0], pair[1].clone());
    }
    let grants = parse_all(&["*"]).unwrap();
    let root_did = Did::from_public_key(&root.verifying_key());
    let _ = verify_chain(
        &links,
        &root_did,
        &grants,
        &registry,
        Timestamp::from_secs(1_800_000_000),
        5,
    );
    for link in &links {
        let _ = link.signed_bytes();
        let _ = parse_all(&link.capabilities);
    }
});
