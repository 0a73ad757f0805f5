//! Where keys and scores of other identities come from: the registry, filled by the operator
//! from AgentIdentity status. A peer's own claims are never believed.

use std::collections::HashMap;

use ed25519_dalek::VerifyingKey;

use crate::keys::Did;

/// What the registry knows of one identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisteredIdentity {
    /// The public key in force (AgentIdentity `status.publicKey`).
    pub public_key: VerifyingKey,
    /// The current trust score (AgentIdentity `status.trustScore`), 0–1000.
    pub trust_score: i32,
    /// The identities this one consents to delegate to (AgentIdentity `spec.delegates`, names
    /// resolved to DIDs). A link it issued to anyone else is refused; empty: no one. Taking an
    /// identity off the list revokes every link it was issued, wherever the link was copied.
    pub delegates: Vec<Did>,
}

/// Lookup of registered identities by DID.
pub trait Registry {
    fn lookup(&self, did: &Did) -> Option<RegisteredIdentity>;
}

/// An in-memory registry: what tests, benches and the CLI use, and what the sidecar fills from
/// the operator's trust API.
#[derive(Clone, Debug, Default)]
pub struct MemoryRegistry {
    identities: HashMap<Did, RegisteredIdentity>,
}

impl MemoryRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Register a key (its DID is derived from it) with a score.
    pub fn insert(&mut self, public_key: VerifyingKey, trust_score: i32) -> Did {
        let did = Did::from_public_key(&public_key);
        self.identities.insert(
            did.clone(),
            RegisteredIdentity {
                public_key,
                trust_score,
                delegates: Vec::new(),
            },
        );
        did
    }

    /// Record that `issuer` consents to delegate to `subject`; false when `issuer` is not
    /// registered.
    pub fn allow_delegation(&mut self, issuer: &Did, subject: Did) -> bool {
        match self.identities.get_mut(issuer) {
            Some(entry) => {
                if !entry.delegates.contains(&subject) {
                    entry.delegates.push(subject);
                }
                true
            }
            None => false,
        }
    }

    pub fn remove(&mut self, did: &Did) {
        self.identities.remove(did);
    }

    pub fn len(&self) -> usize {
        self.identities.len()
    }

    pub fn is_empty(&self) -> bool {
        self.identities.is_empty()
    }
}

impl Registry for MemoryRegistry {
    fn lookup(&self, did: &Did) -> Option<RegisteredIdentity> {
        self.identities.get(did).cloned()
    }
}

impl<R: Registry + ?Sized> Registry for &R {
    fn lookup(&self, did: &Did) -> Option<RegisteredIdentity> {
        (**self).lookup(did)
    }
}
