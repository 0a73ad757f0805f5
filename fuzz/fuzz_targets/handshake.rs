//! Handshake messages from a peer: decoded from JSON and fed to both state machines.
#![no_main]

use agentmesh_identity::handshake::{
    HandshakeChallenge, HandshakeConfig, HandshakeInit, HandshakeResponse, Initiator, Responder,
};
use agentmesh_identity::registry::MemoryRegistry;
use agentmesh_identity::{SigningKey, Timestamp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let alice = SigningKey::from_bytes(&[1; 32]);
    let bob = SigningKey::from_bytes(&[2; 32]);
    let mut registry = MemoryRegistry::new();
    registry.insert(alice.verifying_key(), 800);
    registry.insert(bob.verifying_key(), 800);
    let now = Timestamp::from_secs(1_800_000_000);
    let mut responder = Responder::new(bob.clone(), HandshakeConfig::default());
    if let Ok(init) = serde_json::from_slice::<HandshakeInit>(data) {
        let _ = responder.on_init(&init, &registry, [9; 16], [8; 32], now);
    }
    if let Ok(response) = serde_json::from_slice::<HandshakeResponse>(data) {
        // A real pending challenge, so that the response reaches the signature check.
        let (_, init) = Initiator::start(
            alice.clone(),
            [7; 32],
            None,
            HandshakeConfig::default(),
            now,
        );
        let _ = responder.on_init(&init, &registry, [0; 16], [8; 32], now);
        let _ = responder.on_response(&response, &registry, now);
    }
    if let Ok(challenge) = serde_json::from_slice::<HandshakeChallenge>(data) {
        let (initiator, _) =
            Initiator::start(alice, [7; 32], None, HandshakeConfig::default(), now);
        let _ = initiator.on_challenge(&challenge, &registry, now);
    }
});
