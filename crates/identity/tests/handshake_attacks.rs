//! Every way a handshake or a request proof can be wrong is refused, each with its own reason.

use agentmesh_identity::handshake::{
    CHALLENGE_TTL_MS, HandshakeChallenge, HandshakeConfig, HandshakeError, HandshakeInit,
    HandshakeResponse, Initiator, Responder, Role,
};
use agentmesh_identity::keys::{self, Did};
use agentmesh_identity::proof::{
    Covered, ProofError, ProofSigner, ProofVerifier, sign_with_counter,
};
use agentmesh_identity::registry::MemoryRegistry;
use agentmesh_identity::{SigningKey, Timestamp};

const T0: Timestamp = Timestamp::from_millis(1_800_000_000_000);
const T1: Timestamp = Timestamp::from_millis(1_800_000_000_020);

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

struct World {
    registry: MemoryRegistry,
    alice: SigningKey,
    bob: SigningKey,
    mallory: SigningKey,
}

fn world() -> World {
    let (alice, bob, mallory) = (key(1), key(2), key(3));
    let mut registry = MemoryRegistry::new();
    registry.insert(alice.verifying_key(), 800);
    registry.insert(bob.verifying_key(), 750);
    World {
        registry,
        alice,
        bob,
        mallory,
    }
}

fn did(k: &SigningKey) -> Did {
    Did::from_public_key(&k.verifying_key())
}

/// Runs the first two steps; returns what the third needs.
fn start(w: &World) -> (Initiator, Responder, HandshakeInit, HandshakeChallenge) {
    let (initiator, init) = Initiator::start(
        w.alice.clone(),
        [7; 32],
        Some(did(&w.bob)),
        HandshakeConfig::default(),
        T0,
    );
    let mut responder = Responder::new(w.bob.clone(), HandshakeConfig::default());
    let challenge = responder
        .on_init(&init, &w.registry, [9; 16], [8; 32], T0.plus_millis(5))
        .unwrap();
    (initiator, responder, init, challenge)
}

fn full(
    w: &World,
) -> (
    agentmesh_identity::Session,
    agentmesh_identity::Session,
    Responder,
    HandshakeResponse,
) {
    let (initiator, mut responder, _, challenge) = start(w);
    let (response, a) = initiator
        .on_challenge(&challenge, &w.registry, T0.plus_millis(10))
        .unwrap();
    let b = responder
        .on_response(&response, &w.registry, T0.plus_millis(15))
        .unwrap();
    (a, b, responder, response)
}

#[test]
fn honest_handshake_gives_both_sides_the_same_session() {
    let w = world();
    let (a, b, _, _) = full(&w);
    assert_eq!(a.id, b.id);
    assert_eq!((a.role, b.role), (Role::Initiator, Role::Responder));
    assert_eq!(
        (a.peer.clone(), b.peer.clone()),
        (did(&w.bob), did(&w.alice))
    );
    assert_eq!((a.peer_score, b.peer_score), (750, 800));
    assert_eq!(a.peer_key, w.bob.verifying_key());
}

#[test]
fn messages_round_trip_through_json() {
    let w = world();
    let (_, _, init, challenge) = start(&w);
    let back: HandshakeInit = serde_json::from_str(&serde_json::to_string(&init).unwrap()).unwrap();
    assert_eq!(back, init);
    let back: HandshakeChallenge =
        serde_json::from_str(&serde_json::to_string(&challenge).unwrap()).unwrap();
    assert_eq!(back, challenge);
}

#[test]
fn unregistered_did_is_refused() {
    let w = world();
    let (_, init) = Initiator::start(
        w.mallory.clone(),
        [7; 32],
        None,
        HandshakeConfig::default(),
        T0,
    );
    let mut responder = Responder::new(w.bob.clone(), HandshakeConfig::default());
    assert_eq!(
        responder.on_init(&init, &w.registry, [9; 16], [8; 32], T0),
        Err(HandshakeError::UnregisteredDid(did(&w.mallory)))
    );
}

#[test]
fn wrong_key_for_a_registered_did_is_refused() {
    // Mallory claims Alice's DID but presents her own key.
    let w = world();
    let (_, mut init) = Initiator::start(
        w.mallory.clone(),
        [7; 32],
        None,
        HandshakeConfig::default(),
        T0,
    );
    init.initiator = did(&w.alice);
    let mut responder = Responder::new(w.bob.clone(), HandshakeConfig::default());
    assert_eq!(
        responder.on_init(&init, &w.registry, [9; 16], [8; 32], T0),
        Err(HandshakeError::KeyMismatch(did(&w.alice)))
    );
}

#[test]
fn responder_signing_with_a_key_other_than_the_registered_one_is_refused() {
    // Mallory answers as Bob, presenting Bob's public key but signing with her own.
    let w = world();
    let (initiator, init) = Initiator::start(
        w.alice.clone(),
        [7; 32],
        Some(did(&w.bob)),
        HandshakeConfig::default(),
        T0,
    );
    let mut fake = Responder::new(w.mallory.clone(), HandshakeConfig::default());
    let mut challenge = fake
        .on_init(&init, &w.registry, [9; 16], [8; 32], T0)
        .unwrap();
    challenge.responder = did(&w.bob);
    challenge.responder_key = keys::public_key_to_text(&w.bob.verifying_key());
    assert_eq!(
        initiator
            .on_challenge(&challenge, &w.registry, T0)
            .unwrap_err(),
        HandshakeError::BadSignature(did(&w.bob))
    );
}

#[test]
fn initiator_signing_with_the_wrong_key_is_refused() {
    // Mallory intercepts Bob's challenge to Alice and answers it for Alice with her own key.
    let w = world();
    let (_, mut responder, _, challenge) = start(&w);
    let transcript_guess = b"agentmesh-handshake-v1 initiator";
    let forged = HandshakeResponse {
        version: 1,
        challenge_id: challenge.challenge_id.clone(),
        initiator: did(&w.alice),
        responder: did(&w.bob),
        signature: keys::signature_to_text(&ed25519_dalek::Signer::sign(
            &w.mallory,
            transcript_guess,
        )),
    };
    assert_eq!(
        responder.on_response(&forged, &w.registry, T1),
        Err(HandshakeError::BadSignature(did(&w.alice)))
    );
    // The failed attempt spent the challenge.
    assert_eq!(
        responder.on_response(&forged, &w.registry, T1),
        Err(HandshakeError::ChallengeReused)
    );
}

#[test]
fn missing_signature_is_refused() {
    let w = world();
    let (initiator, mut responder, _, mut challenge) = start(&w);
    let (mut response, _) = initiator.on_challenge(&challenge, &w.registry, T0).unwrap();
    response.signature.clear();
    assert_eq!(
        responder.on_response(&response, &w.registry, T1),
        Err(HandshakeError::MissingSignature)
    );

    let (initiator, _, _, _) = start(&w);
    challenge.signature.clear();
    assert_eq!(
        initiator
            .on_challenge(&challenge, &w.registry, T0)
            .unwrap_err(),
        HandshakeError::MissingSignature
    );
}

#[test]
fn tampered_field_breaks_the_signature() {
    let w = world();
    let (initiator, _, _, mut challenge) = start(&w);
    challenge.responder_nonce = keys_b64(&[0xAA; 32]);
    assert_eq!(
        initiator
            .on_challenge(&challenge, &w.registry, T0)
            .unwrap_err(),
        HandshakeError::BadSignature(did(&w.bob))
    );
}

#[test]
fn tampered_echoed_nonce_is_refused() {
    let w = world();
    let (initiator, _, _, mut challenge) = start(&w);
    challenge.initiator_nonce = keys_b64(&[0xAA; 32]);
    assert_eq!(
        initiator
            .on_challenge(&challenge, &w.registry, T0)
            .unwrap_err(),
        HandshakeError::NonceMismatch
    );
}

#[test]
fn swapped_dids_are_refused() {
    let w = world();
    let (initiator, mut responder, _, challenge) = start(&w);
    let (mut response, _) = initiator.on_challenge(&challenge, &w.registry, T0).unwrap();
    std::mem::swap(&mut response.initiator, &mut response.responder);
    assert!(matches!(
        responder.on_response(&response, &w.registry, T1),
        Err(HandshakeError::DidMismatch { .. })
    ));

    // And on the initiator's side: a challenge naming the DIDs the other way round.
    let (initiator, _, _, mut challenge) = start(&w);
    std::mem::swap(&mut challenge.initiator, &mut challenge.responder);
    assert!(matches!(
        initiator.on_challenge(&challenge, &w.registry, T0),
        Err(HandshakeError::DidMismatch { .. })
    ));
}

#[test]
fn reflected_signature_is_refused() {
    // The responder's own signature sent back as the initiator's: the role in the transcript
    // makes it invalid.
    let w = world();
    let (_, mut responder, _, challenge) = start(&w);
    let response = HandshakeResponse {
        version: 1,
        challenge_id: challenge.challenge_id.clone(),
        initiator: challenge.initiator.clone(),
        responder: challenge.responder.clone(),
        signature: challenge.signature.clone(),
    };
    assert_eq!(
        responder.on_response(&response, &w.registry, T1),
        Err(HandshakeError::BadSignature(did(&w.alice)))
    );
}

#[test]
fn expired_challenge_is_refused_on_both_sides() {
    let w = world();
    let (initiator, mut responder, _, challenge) = start(&w);
    let late = T0.plus_millis(5 + CHALLENGE_TTL_MS + 1);
    let (response, _) = Initiator::start(
        w.alice.clone(),
        [7; 32],
        None,
        HandshakeConfig::default(),
        T0,
    )
    .0
    .on_challenge(&challenge, &w.registry, T0.plus_millis(10))
    .unwrap();
    assert!(matches!(
        responder.on_response(&response, &w.registry, late),
        Err(HandshakeError::ChallengeExpired { .. })
    ));
    assert!(matches!(
        initiator.on_challenge(
            &challenge,
            &w.registry,
            T0.plus_millis(CHALLENGE_TTL_MS + 1)
        ),
        Err(HandshakeError::ChallengeExpired { .. })
    ));
}

#[test]
fn reused_challenge_is_refused() {
    let w = world();
    let (_, _, mut responder, response) = full(&w);
    assert_eq!(
        responder.on_response(&response, &w.registry, T0.plus_millis(20)),
        Err(HandshakeError::ChallengeReused)
    );
}

#[test]
fn unknown_challenge_is_refused() {
    let w = world();
    let (initiator, mut responder, _, challenge) = start(&w);
    let (mut response, _) = initiator.on_challenge(&challenge, &w.registry, T0).unwrap();
    response.challenge_id = keys_b64(&[1; 16]);
    assert_eq!(
        responder.on_response(&response, &w.registry, T1),
        Err(HandshakeError::UnknownChallenge)
    );
}

#[test]
fn low_peer_score_and_bad_versions_are_refused() {
    let w = world();
    let strict = HandshakeConfig {
        min_peer_score: Some(900),
        ..HandshakeConfig::default()
    };
    let (_, init) = Initiator::start(w.alice.clone(), [7; 32], None, strict, T0);
    let mut responder = Responder::new(w.bob.clone(), strict);
    assert!(matches!(
        responder.on_init(&init, &w.registry, [9; 16], [8; 32], T0),
        Err(HandshakeError::PeerScoreTooLow {
            score: 800,
            required: 900,
            ..
        })
    ));
    let mut bad = init.clone();
    bad.version = 2;
    assert_eq!(
        responder.on_init(&bad, &w.registry, [9; 16], [8; 32], T0),
        Err(HandshakeError::UnsupportedVersion(2))
    );
}

#[test]
fn unexpected_responder_is_refused() {
    let w = world();
    let mut registry = w.registry.clone();
    registry.insert(w.mallory.verifying_key(), 900);
    let (initiator, init) = Initiator::start(
        w.alice.clone(),
        [7; 32],
        Some(did(&w.bob)),
        HandshakeConfig::default(),
        T0,
    );
    let mut mallory = Responder::new(w.mallory.clone(), HandshakeConfig::default());
    let challenge = mallory
        .on_init(&init, &registry, [9; 16], [8; 32], T0)
        .unwrap();
    assert!(matches!(
        initiator.on_challenge(&challenge, &registry, T0),
        Err(HandshakeError::DidMismatch { .. })
    ));
}

fn keys_b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

// ---- request proofs ----

fn req(body: &[u8]) -> Covered<'_> {
    Covered {
        method: "POST",
        path: "/inbound/mcp",
        body,
    }
}

#[test]
fn a_proof_moved_to_another_path_or_method_is_refused() {
    let w = world();
    let (a, b, _, _) = full(&w);
    let now = T0.plus_millis(100);
    let mut signer = ProofSigner::new(&a, w.alice.clone());
    let mut verifier = ProofVerifier::new(&b);
    let proof = signer.sign(req(b"{}"), now);
    let moved = Covered {
        path: "/inbound/admin",
        ..req(b"{}")
    };
    assert_eq!(
        verifier.verify(&proof, moved, now),
        Err(ProofError::BadSignature)
    );
    let other_method = Covered {
        method: "DELETE",
        ..req(b"{}")
    };
    assert_eq!(
        verifier.verify(&proof, other_method, now),
        Err(ProofError::BadSignature)
    );
    assert_eq!(verifier.verify(&proof, req(b"{}"), now), Ok(()));
}

#[test]
fn request_proofs_verify_once() {
    let w = world();
    let (a, b, _, _) = full(&w);
    let mut signer = ProofSigner::new(&a, w.alice.clone());
    let mut verifier = ProofVerifier::new(&b);
    let now = T0.plus_millis(100);
    let p1 = signer.sign(req(b"{\"tool\":\"search\"}"), now);
    let p2 = signer.sign(req(b"{}"), now);
    assert_eq!(verifier.verify(&p2, req(b"{}"), now), Ok(()));
    assert_eq!(
        verifier.verify(&p1, req(b"{\"tool\":\"search\"}"), now),
        Ok(())
    );
    assert_eq!(
        verifier.verify(&p1, req(b"{\"tool\":\"search\"}"), now),
        Err(ProofError::Replayed(1))
    );
}

#[test]
fn request_proof_attacks_are_refused() {
    let w = world();
    let (a, b, _, _) = full(&w);
    let now = T0.plus_millis(100);
    let mut verifier = ProofVerifier::new(&b);
    let good = sign_with_counter(&a.id, &a.local, &w.alice, 200, req(b"body"), now);

    let mut tampered = good.clone();
    tampered.counter = 201;
    assert_eq!(
        verifier.verify(&tampered, req(b"body"), now),
        Err(ProofError::BadSignature)
    );
    assert_eq!(
        verifier.verify(&good, req(b"other body"), now),
        Err(ProofError::BodyMismatch)
    );
    let mut unsigned = good.clone();
    unsigned.signature.clear();
    assert_eq!(
        verifier.verify(&unsigned, req(b"body"), now),
        Err(ProofError::MissingSignature)
    );
    let wrong_key = sign_with_counter(&a.id, &a.local, &w.mallory, 202, req(b"body"), now);
    assert_eq!(
        verifier.verify(&wrong_key, req(b"body"), now),
        Err(ProofError::BadSignature)
    );
    let other_session = sign_with_counter(&[0; 32], &a.local, &w.alice, 203, req(b"body"), now);
    assert_eq!(
        verifier.verify(&other_session, req(b"body"), now),
        Err(ProofError::SessionMismatch)
    );
    let other_sender = sign_with_counter(&a.id, &did(&w.bob), &w.bob, 204, req(b"body"), now);
    assert!(matches!(
        verifier.verify(&other_sender, req(b"body"), now),
        Err(ProofError::SenderMismatch { .. })
    ));
    assert!(matches!(
        verifier.verify(&good, req(b"body"), now.plus_millis(31_000)),
        Err(ProofError::Stale { .. })
    ));

    assert_eq!(verifier.verify(&good, req(b"body"), now), Ok(()));
    assert_eq!(
        verifier.verify(&good, req(b"body"), now),
        Err(ProofError::Replayed(200))
    );
    let ancient = sign_with_counter(&a.id, &a.local, &w.alice, 50, req(b"body"), now);
    assert!(matches!(
        verifier.verify(&ancient, req(b"body"), now),
        Err(ProofError::OutsideWindow { .. })
    ));
}
