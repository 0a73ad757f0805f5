//! Every way a delegation chain can be wrong is refused, each with its own reason.

use agentmesh_identity::capability::{Capability, parse_all};
use agentmesh_identity::delegation::{DelegationError, DelegationLink, verify_chain};
use agentmesh_identity::keys::{self, Did};
use agentmesh_identity::registry::MemoryRegistry;
use agentmesh_identity::{SigningKey, Timestamp};

const NOW: Timestamp = Timestamp::from_secs(1_800_000_000);
/// When the chain's links were issued: an hour before NOW.
const ISSUED: Timestamp = Timestamp::from_secs(1_799_996_400);

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

/// root -> k1 -> ... -> k(n), each link narrowing a little, registered keys, each issuer
/// consenting to delegate to its subject.
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
            ISSUED,
            Some(Timestamp::from_secs(1_900_000_000)),
        )
        .unwrap();
        assert!(registry.allow_delegation(&did(&keys[i]), did(&keys[i + 1])));
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
            "issuedAt",
            "issuer",
            "signature",
            "subject"
        ]
    );
    assert_eq!(json["expiresAt"], "2030-03-17T17:46:40Z");
    assert_eq!(json["issuedAt"], "2027-01-15T07:00:00Z");
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
        ISSUED,
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
        ISSUED,
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
        ISSUED,
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
    let tampers: [fn(&mut DelegationLink); 5] = [
        |l| l.capabilities.truncate(1),
        |l| l.issued_at = NOW,
        |l| l.issued_at = Timestamp::from_secs(0),
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
        ISSUED,
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
        ISSUED,
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

/// A link signed with the parent's key is not enough: the parent must consent to this
/// subject. The attack: whoever can have a link signed (an AgentIdentity naming the parent,
/// for the operator that holds the parent's key) gets the parent's capabilities.
#[test]
fn a_link_the_issuer_did_not_consent_to_is_refused() {
    let mut c = chain(2);
    // A valid signature by the registered issuer, to a subject it never listed.
    let mallory = key(99);
    c.registry.insert(mallory.verifying_key(), 800);
    c.links[1] = DelegationLink::create(
        &c.keys[1],
        &caps(&["read:documents"]),
        did(&mallory),
        strings(&["read:documents"]),
        ISSUED,
        None,
    )
    .unwrap();
    c.links.truncate(2);
    c.keys[2] = mallory.clone();
    assert_eq!(
        verify(&c, 5).unwrap_err(),
        DelegationError::NotConsented {
            index: 1,
            issuer: did(&c.keys[1]),
            subject: did(&mallory),
        }
    );
    // Consent given: the same link verifies.
    c.registry.allow_delegation(&did(&c.keys[1]), did(&mallory));
    assert!(verify(&c, 5).is_ok());
}

/// Consent withdrawn revokes the links already issued: the verifier reads it from the
/// registry, so a copy of the old link does not outlive it.
#[test]
fn withdrawn_consent_revokes_an_issued_link() {
    let c = chain(2);
    assert!(verify(&c, 5).is_ok());
    let mut registry = agentmesh_identity::registry::MemoryRegistry::new();
    for (i, k) in c.keys.iter().enumerate() {
        registry.insert(k.verifying_key(), 800);
        // The root withdraws its consent to k1; k1's to k2 stands.
        if i == 1 {
            registry.allow_delegation(&did(&c.keys[1]), did(&c.keys[2]));
        }
    }
    let c = Chain { registry, ..c };
    assert_eq!(
        verify(&c, 5).unwrap_err(),
        DelegationError::NotConsented {
            index: 0,
            issuer: did(&c.keys[0]),
            subject: did(&c.keys[1]),
        }
    );
}

/// A link dated in the future would outlive a later revocation: refused beyond the skew.
#[test]
fn a_link_issued_in_the_future_is_refused() {
    let mut c = chain(2);
    let later = Timestamp::from_secs(
        NOW.as_secs_floor() + agentmesh_identity::delegation::MAX_CLOCK_SKEW_SECS + 1,
    );
    c.links[1] = DelegationLink::create(
        &c.keys[1],
        &caps(&["read:documents"]),
        did(&c.keys[2]),
        strings(&["read:documents"]),
        later,
        None,
    )
    .unwrap();
    assert_eq!(
        verify(&c, 5).unwrap_err(),
        DelegationError::IssuedInFuture {
            index: 1,
            issued_at: later
        }
    );
    // Within the skew it verifies.
    c.links[1] = DelegationLink::create(
        &c.keys[1],
        &caps(&["read:documents"]),
        did(&c.keys[2]),
        strings(&["read:documents"]),
        Timestamp::from_secs(later.as_secs_floor() - 1),
        None,
    )
    .unwrap();
    assert!(verify(&c, 5).is_ok());
}

/// A delegated prefix reaches only whole segments: `read:docs*` cannot be narrowed into
/// `read:docs-secret`, and no `..` spelling climbs out of it.
#[test]
fn a_prefix_grant_cannot_be_stretched_to_a_sibling_or_a_parent() {
    let c = chain(0);
    let root = &c.keys[0];
    let mut registry = c.registry.clone();
    let child = key(50);
    registry.insert(child.verifying_key(), 800);
    registry.allow_delegation(&did(root), did(&child));
    for (wanted, error) in [
        ("read:docs-secret", "Widened"),
        ("read:docsx/a", "Widened"),
        ("read:docs/../secret", "InvalidCapability"),
        ("read:docs//x", "InvalidCapability"),
    ] {
        let err = DelegationLink::create(
            root,
            &caps(&["read:docs*"]),
            did(&child),
            strings(&[wanted]),
            ISSUED,
            None,
        )
        .unwrap_err();
        assert!(format!("{err:?}").starts_with(error), "{wanted}: {err:?}");
    }
    // What the prefix does reach is granted.
    let link = DelegationLink::create(
        root,
        &caps(&["read:docs*"]),
        did(&child),
        strings(&["read:docs", "read:docs/a/b"]),
        ISSUED,
        None,
    )
    .unwrap();
    let verified = verify_chain(
        &[link],
        &did(root),
        &caps(&["read:docs*"]),
        &registry,
        NOW,
        5,
    )
    .unwrap();
    assert_eq!(verified.capabilities.len(), 2);
}
