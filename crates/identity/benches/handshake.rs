//! A full mutual handshake against a bare Ed25519 sign + verify pair, measured in the same
//! run; prints `ratio = X` (goal ≤ 4: a handshake is two signatures and two verifications plus
//! bookkeeping). `make bench` runs it.

use std::hint::black_box;

use agentmesh_identity::handshake::{HandshakeConfig, Initiator, Responder};
use agentmesh_identity::registry::MemoryRegistry;
use agentmesh_identity::{SigningKey, Timestamp};
use criterion::Criterion;
use ed25519_dalek::{Signer, Verifier};

mod support;

fn benches(c: &mut Criterion) {
    let alice = SigningKey::from_bytes(&[1; 32]);
    let bob = SigningKey::from_bytes(&[2; 32]);
    let mut registry = MemoryRegistry::new();
    registry.insert(alice.verifying_key(), 800);
    registry.insert(bob.verifying_key(), 800);
    let now = Timestamp::from_secs(1_800_000_000);
    let mut group = c.benchmark_group("handshake");
    let mut counter = 0u64;
    let mut responder = Responder::new(bob.clone(), HandshakeConfig::default());
    group.bench_function("full_mutual", |b| {
        b.iter(|| {
            counter += 1;
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&counter.to_le_bytes());
            let (initiator, init) = Initiator::start(
                alice.clone(),
                [7; 32],
                None,
                HandshakeConfig::default(),
                now,
            );
            let challenge = responder
                .on_init(&init, &registry, id, [8; 32], now)
                .unwrap();
            let (response, _) = initiator.on_challenge(&challenge, &registry, now).unwrap();
            let session = responder.on_response(&response, &registry, now).unwrap();
            if counter.is_multiple_of(1024) {
                responder.expire(now.plus_millis(60_000));
            }
            black_box(session)
        })
    });
    let public = alice.verifying_key();
    let message = [42u8; 160];
    group.bench_function("ed25519_sign_verify", |b| {
        b.iter(|| {
            let signature = alice.sign(black_box(&message));
            public.verify(&message, &signature).unwrap();
            black_box(signature)
        })
    });
    group.finish();
}

fn main() {
    let mut c = support::criterion();
    benches(&mut c);
    c.final_summary();
    if let (Some(handshake), Some(pair)) = (
        support::mean_ns("handshake", "full_mutual"),
        support::mean_ns("handshake", "ed25519_sign_verify"),
    ) {
        println!(
            "handshake: full mutual {:.1} µs, one sign+verify {:.1} µs",
            handshake / 1e3,
            pair / 1e3
        );
        println!(
            "handshake vs sign+verify: ratio = {:.2} (goal <= 4)",
            handshake / pair
        );
    }
}
