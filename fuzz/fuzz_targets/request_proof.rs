//! A request proof header from a peer: decoded from JSON and verified.
#![no_main]

use agentmesh_identity::handshake::{HandshakeConfig, Initiator, Responder};
use agentmesh_identity::proof::{Covered, ProofVerifier, RequestProof};
use agentmesh_identity::registry::MemoryRegistry;
use agentmesh_identity::{SigningKey, Timestamp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(proof) = serde_json::from_slice::<RequestProof>(data) else {
        return;
    };
    let alice = SigningKey::from_bytes(&[1; 32]);
    let bob = SigningKey::from_bytes(&[2; 32]);
    let mut registry = MemoryRegistry::new();
    registry.insert(alice.verifying_key(), 800);
    registry.insert(bob.verifying_key(), 800);
    let now = Timestamp::from_secs(1_800_000_000);
    let (initiator, init) = Initiator::start(alice, [7; 32], None, HandshakeConfig::default(), now);
    let mut responder = Responder::new(bob, HandshakeConfig::default());
    let challenge = responder
        .on_init(&init, &registry, [9; 16], [8; 32], now)
        .unwrap();
    let (response, _) = initiator.on_challenge(&challenge, &registry, now).unwrap();
    let session = responder.on_response(&response, &registry, now).unwrap();
    let mut verifier = ProofVerifier::new(&session);
    let covered = |body| Covered {
        method: "POST",
        path: "/inbound/mcp",
        body,
    };
    let _ = verifier.verify(&proof, covered(data), proof.timestamp);
    let _ = verifier.verify(&proof, covered(b""), now);
});
