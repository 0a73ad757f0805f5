//! Every way a delegation chain can be wrong is refused, each with its own reason.

use agentmesh_identity::capability::{Capability, parse_all};
use agentmesh_identity::delegation::{DelegationError, DelegationLink, verify_chain};
use agentmesh_identity::keys::{self, Did};
use agentmesh_identity::registry::MemoryRegistry;
use agentmesh_identity::{SigningKey, Timestamp};

const NOW: Timestamp = Timestamp::from_secs(1_800_000_000);

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn did(k: &SigningKey) -> Did {
    Did::from_public_key(&k.verifying_key())
}

fn caps(texts: &[&str]) -> Vec<Capability> {
    parse_all(texts).unwrap()
}

fn strings(texts: &[&str]) -> Vec<String> {
    texts.iter().map(|s| s.to_string()).collect()
}

struct Chain {
    registry: MemoryRegistry,
    keys: Vec<SigningKey>,
    root_grants: Vec<Capability>,
    links: Vec<DelegationLink>,
}

/// root -> k1 -> ... -> k(n), each link narrowing a little, registered keys.
fn chain(n: usize) -> Chain {
    let keys: Vec<SigningKey> = (0..=n as u8).map(|i| key(i + 10)).collect();
    let mut registry = MemoryRegistry::new();
    for k in &keys {
        registry.insert(k.verifying_key(), 800);
    }
    let root_grants = caps(&["read:*", "tools:*"]);
    let mut grants = root_grants.clone();
    let mut links = Vec::new();
    for i in 0..n {
        let granted = strings(&["read:documents", "tools:search:*"]);
        let link = DelegationLink::create(
            &keys[i],
            &grants,
            did(&keys[i + 1]),
            granted.clone(),
            Some(Timestamp::from_secs(1_900_000_000)),
        )
        .unwrap();
        grants = parse_all(&granted).unwrap();
        links.push(link);
    }
    Chain {
        registry,
        keys,
        root_grants,
        links,
    }
}

fn verify(
    c: &Chain,
    max_depth: usize,
) -> Result<agentmesh_identity::VerifiedChain, DelegationError> {
    verify_chain(
        &c.links,
        &did(&c.keys[0]),
        &c.root_grants,
        &c.registry,
        NOW,
        max_depth,
    )
}

#[test]
fn valid_chain_verifies() {
    let c = chain(3);
    let v = verify(&c, 5).unwrap();
    assert_eq!(v.depth, 3);
    assert_eq!(v.leaf, did(&c.keys[3]));
    assert_eq!(v.capabilities, caps(&["read:documents", "tools:search:*"]));
    assert_eq!(v.expires_at, Some(Timestamp::from_secs(1_900_000_000)));
}

#[test]
fn links_round_trip_as_the_crd_shape() {
    let c = chain(1);
    let json = serde_json::to_value(&c.links[0]).unwrap();
    let keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "capabilities",
            "expiresAt",
            "issuer",
            "signature",
            "subject"
        ]
    );
    assert_eq!(json["expiresAt"], "2030-03-17T17:46:40Z");
    let back: DelegationLink = serde_json::from_value(json).unwrap();
    assert_eq!(back, c.links[0]);
}

#[test]
fn widened_capabilities_are_refused() {
    let mut c = chain(2);
    // Re-sign link 1 with a capability link 0 did not grant: a valid signature, a wider grant.
    let forged = DelegationLink::create(
        &c.keys[1],
        &caps(&["*"]),
        did(&c.keys[2]),
        strings(&["write:documents"]),
        None,
    )
    .unwrap();
    c.links[1] = forged;
    assert_eq!(
        verify(&c, 5).unwrap_err(),
        DelegationError::Widened {
            index: 1,
            capability: "write:documents".into()
        }
    );
    // And creation itself refuses to widen.
    let err = DelegationLink::create(
        &c.keys[0],
        &caps(&["read:documents"]),
        did(&c.keys[1]),
        strings(&["read:*"]),
        None,
    )
    .unwrap_err();
    assert_eq!(
        err,
        DelegationError::Widened {
            index: 0,
            capability: "read:*".into()
        }
    );
}

#[test]
fn depth_over_the_limit_is_refused() {
    let c = chain(6);
    assert_eq!(
        verify(&c, 5).unwrap_err(),
        DelegationError::DepthExceeded { depth: 6, max: 5 }
    );
    assert!(verify(&c, 6).is_ok());
}

#[test]
fn expired_link_is_refused() {
    let mut c = chain(2);
    c.links[1] = DelegationLink::create(
        &c.keys[1],
        &caps(&["read:documents"]),
        did(&c.keys[2]),
        strings(&["read:documents"]),
        Some(NOW),
    )
    .unwrap();
    assert_eq!(
        verify(&c, 5).unwrap_err(),
        DelegationError::Expired {
            index: 1,
            expired_at: NOW
        }
    );
}

#[test]
fn missing_signature_is_refused() {
    let mut c = chain(2);
    c.links[0].signature.clear();
    assert_eq!(
        verify(&c, 5).unwrap_err(),
        DelegationError::MissingSignature { index: 0 }
    );
}

#[test]
fn bad_signature_is_refused() {
    let mut c = chain(2);
    c.links[1].signature = c.links[0].signature.clone();
    assert_eq!(
        verify(&c, 5).unwrap_err(),
        DelegationError::BadSignature { index: 1 }
    );
    let mut c = chain(2);
    c.links[1].signature = "!!".into();
    assert_eq!(
        verify(&c, 5).unwrap_err(),
        DelegationError::MalformedSignature { index: 1 }
    );
}

#[test]
fn tampered_fields_break_the_signature() {
    let base = chain(2);
    let tampers: [fn(&mut DelegationLink); 3] = [
        |l| l.capabilities.truncate(1),
        |l| l.expires_at = None,
        |l| l.expires_at = Some(Timestamp::from_secs(1_900_000_001)),
    ];
    for tamper in tampers {
        let mut c = Chain {
            registry: base.registry.clone(),
            keys: base.keys.clone(),
            root_grants: base.root_grants.clone(),
            links: base.links.clone(),
        };
        tamper(&mut c.links[1]);
        assert_eq!(
            verify(&c, 5).unwrap_err(),
            DelegationError::BadSignature { index: 1 }
        );
    }
}

#[test]
fn signed_by_a_key_other_than_the_issuers_is_refused() {
    let mut c = chain(2);
    let mallory = key(99);
    let mut forged = DelegationLink::create(
        &mallory,
        &caps(&["*"]),
        did(&c.keys[2]),
        strings(&["read:documents"]),
        None,
    )
    .unwrap();
    forged.issuer = did(&c.keys[1]);
    c.links[1] = forged;
    assert_eq!(
        verify(&c, 5).unwrap_err(),
        DelegationError::BadSignature { index: 1 }
    );
}

#[test]
fn unregistered_issuer_broken_links_and_cycles_are_refused() {
    let mut c = chain(2);
    c.registry.remove(&did(&c.keys[1]));
    assert_eq!(
        verify(&c, 5).unwrap_err(),
        DelegationError::UnregisteredIssuer {
            index: 1,
            did: did(&c.keys[1])
        }
    );

    let mut c = chain(3);
    c.links.remove(1);
    assert!(matches!(
        verify(&c, 5).unwrap_err(),
        DelegationError::BrokenChain { index: 1, .. }
    ));

    let mut c = chain(1);
    let back = DelegationLink::create(
        &c.keys[1],
        &caps(&["read:documents", "tools:search:*"]),
        did(&c.keys[0]),
        strings(&["read:documents"]),
        None,
    )
    .unwrap();
    c.links.push(back);
    assert!(matches!(
        verify(&c, 5).unwrap_err(),
        DelegationError::Cycle { index: 1, .. }
    ));

    let c = chain(0);
    assert_eq!(verify(&c, 5).unwrap_err(), DelegationError::EmptyChain);
}

#[test]
fn invalid_or_empty_capabilities_are_refused() {
    let c = chain(1);
    let k = c.keys.clone();
    let mut link = c.links[0].clone();
    link.capabilities = strings(&["READ:x"]);
    link.signature =
        keys::signature_to_text(&ed25519_dalek::Signer::sign(&k[0], &link.signed_bytes()));
    let c2 = Chain {
        links: vec![link.clone()],
        ..c
    };
    assert!(matches!(
        verify(&c2, 5).unwrap_err(),
        DelegationError::InvalidCapability { index: 0, .. }
    ));
    let mut empty = link;
    empty.capabilities.clear();
    empty.signature =
        keys::signature_to_text(&ed25519_dalek::Signer::sign(&k[0], &empty.signed_bytes()));
    let c3 = Chain {
        links: vec![empty],
        ..c2
    };
    assert_eq!(
        verify(&c3, 5).unwrap_err(),
        DelegationError::NoCapabilities { index: 0 }
    );
}
