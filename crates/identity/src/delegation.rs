//! Delegation links and the verification of whole chains.
//!
//! A link says "issuer, at this instant, grants subject these capabilities until that instant",
//! signed with the issuer's key over its canonical encoding: the prefix
//! `agentmesh-delegation-v2`, issuer DID, subject DID, the number of capabilities and each
//! capability in order, the issue time in whole Unix seconds, then the expiry (or a marker for
//! none). The serde form is the CRD's `SignedDelegationLink` (`issuer`, `subject`,
//! `capabilities`, `issuedAt` and `expiresAt` RFC 3339, `signature` base64), so status can hold
//! links verbatim.
//!
//! A chain is root first. [`verify_chain`] checks, link by link: depth within the limit; each
//! issuer is the previous subject (the first one is the root); no identity twice; a signature
//! present and valid under the issuer's *registered* key; the issuer's registered consent to
//! delegate to this subject (a link signed without it, or after it was withdrawn, is refused);
//! issued no later than now (give or take [`MAX_CLOCK_SKEW_SECS`]) and not expired; every
//! capability valid and covered by what the issuer holds (the root's own capabilities for the
//! first link, the previous link's grants after that). Instants are whole seconds:
//! [`DelegationLink::create`] truncates, since Kubernetes stores instants to the second.

use ed25519_dalek::{Signer, SigningKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::capability::{Capability, CapabilityError};
use crate::encode::Transcript;
use crate::keys::{self, Did};
use crate::registry::Registry;
use crate::time::Timestamp;

const DOMAIN: &str = "agentmesh-delegation-v2";

/// How far in the future a link's issue time may lie (clocks of issuers and verifiers differ).
pub const MAX_CLOCK_SKEW_SECS: i64 = 300;

/// Default longest chain (the seed's `AGENTMESH_DELEGATION_MAX_DEPTH`).
pub const DEFAULT_MAX_DEPTH: usize = 5;
/// Capabilities per link at most (the CRD's bound).
pub const MAX_CAPABILITIES_PER_LINK: usize = 64;

/// Why a link or a chain was refused; `index` is the link's position, root first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DelegationError {
    #[error("empty delegation chain")]
    EmptyChain,
    #[error("delegation chain of depth {depth} exceeds the maximum {max}")]
    DepthExceeded { depth: usize, max: usize },
    #[error("link {index}: issuer {got} is not the previous subject {expected}")]
    BrokenChain {
        index: usize,
        expected: Did,
        got: Did,
    },
    #[error("link {index}: {did} appears twice in the chain")]
    Cycle { index: usize, did: Did },
    #[error("link {index}: issuer {did} is not a registered identity")]
    UnregisteredIssuer { index: usize, did: Did },
    #[error("link {index}: no signature")]
    MissingSignature { index: usize },
    #[error("link {index}: signature is not base64 of 64 bytes")]
    MalformedSignature { index: usize },
    #[error("link {index}: signature does not verify with the issuer's registered key")]
    BadSignature { index: usize },
    #[error(
        "link {index}: {issuer} does not consent to delegate to {subject} (not in its spec.delegates)"
    )]
    NotConsented {
        index: usize,
        issuer: Did,
        subject: Did,
    },
    #[error("link {index}: issued at {issued_at}, in the future")]
    IssuedInFuture { index: usize, issued_at: Timestamp },
    #[error("link {index}: expired at {expired_at}")]
    Expired { index: usize, expired_at: Timestamp },
    #[error("link {index}: grants no capability")]
    NoCapabilities { index: usize },
    #[error("link {index}: more than {MAX_CAPABILITIES_PER_LINK} capabilities")]
    TooManyCapabilities { index: usize },
    #[error("link {index}: {source}")]
    InvalidCapability {
        index: usize,
        source: CapabilityError,
    },
    #[error(
        "link {index}: capability {capability} is not held by the issuer (delegation only narrows)"
    )]
    Widened { index: usize, capability: String },
}

/// One signed link. Maps field for field onto the CRD's `SignedDelegationLink`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DelegationLink {
    pub issuer: Did,
    pub subject: Did,
    pub capabilities: Vec<String>,
    #[serde(with = "rfc3339")]
    pub issued_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "rfc3339_opt")]
    pub expires_at: Option<Timestamp>,
    /// Ed25519 signature by the issuer over the canonical encoding, base64; empty when absent.
    #[serde(default)]
    pub signature: String,
}

impl DelegationLink {
    /// The bytes the issuer signs.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut t = Transcript::new(DOMAIN)
            .str(self.issuer.as_str())
            .str(self.subject.as_str())
            .u64(self.capabilities.len() as u64);
        for capability in &self.capabilities {
            t = t.str(capability);
        }
        t = t.str("issued").i64(self.issued_at.as_secs_floor());
        match self.expires_at {
            Some(at) => t.str("expires").i64(at.as_secs_floor()),
            None => t.str("never"),
        }
        .into_bytes()
    }

    /// Create and sign a link issued at `issued_at` with the issuer's key, refusing any
    /// capability the issuer does not hold (`issuer_grants`: its own capabilities, or what its
    /// own delegation granted). Consent is the verifier's to check ([`verify_chain`]): the
    /// issuer's registry entry, not the signer, says whom it delegates to.
    pub fn create(
        issuer_key: &SigningKey,
        issuer_grants: &[Capability],
        subject: Did,
        capabilities: Vec<String>,
        issued_at: Timestamp,
        expires_at: Option<Timestamp>,
    ) -> Result<Self, DelegationError> {
        let issuer = Did::from_public_key(&issuer_key.verifying_key());
        if issuer == subject {
            return Err(DelegationError::Cycle {
                index: 0,
                did: subject,
            });
        }
        check_capabilities(0, &capabilities, issuer_grants)?;
        let mut link = Self {
            issuer,
            subject,
            capabilities,
            issued_at: Timestamp::from_secs(issued_at.as_secs_floor()),
            expires_at: expires_at.map(|t| Timestamp::from_secs(t.as_secs_floor())),
            signature: String::new(),
        };
        link.signature = keys::signature_to_text(&issuer_key.sign(&link.signed_bytes()));
        Ok(link)
    }
}

/// What a verified chain establishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedChain {
    pub root: Did,
    pub leaf: Did,
    /// Links, root to leaf.
    pub depth: usize,
    /// What the leaf may do: the last link's capabilities.
    pub capabilities: Vec<Capability>,
    /// The earliest expiry along the chain.
    pub expires_at: Option<Timestamp>,
}

fn check_capabilities(
    index: usize,
    texts: &[String],
    grants: &[Capability],
) -> Result<Vec<Capability>, DelegationError> {
    if texts.is_empty() {
        return Err(DelegationError::NoCapabilities { index });
    }
    if texts.len() > MAX_CAPABILITIES_PER_LINK {
        return Err(DelegationError::TooManyCapabilities { index });
    }
    let mut parsed = Vec::with_capacity(texts.len());
    for text in texts {
        let capability = Capability::parse(text)
            .map_err(|source| DelegationError::InvalidCapability { index, source })?;
        if !capability.is_covered_by(grants) {
            return Err(DelegationError::Widened {
                index,
                capability: text.clone(),
            });
        }
        parsed.push(capability);
    }
    Ok(parsed)
}

/// Verify a chain, root first. `root` is the identity at the top, `root_grants` its own
/// capabilities (AgentIdentity `spec.capabilities`); keys come from `registry` only.
pub fn verify_chain(
    links: &[DelegationLink],
    root: &Did,
    root_grants: &[Capability],
    registry: &impl Registry,
    now: Timestamp,
    max_depth: usize,
) -> Result<VerifiedChain, DelegationError> {
    if links.is_empty() {
        return Err(DelegationError::EmptyChain);
    }
    if links.len() > max_depth {
        return Err(DelegationError::DepthExceeded {
            depth: links.len(),
            max: max_depth,
        });
    }
    let mut seen: Vec<&Did> = vec![root];
    let mut expected_issuer = root;
    let mut grants: Vec<Capability> = root_grants.to_vec();
    let mut earliest: Option<Timestamp> = None;
    for (index, link) in links.iter().enumerate() {
        if link.issuer != *expected_issuer {
            return Err(DelegationError::BrokenChain {
                index,
                expected: expected_issuer.clone(),
                got: link.issuer.clone(),
            });
        }
        if seen.contains(&&link.subject) {
            return Err(DelegationError::Cycle {
                index,
                did: link.subject.clone(),
            });
        }
        if link.signature.is_empty() {
            return Err(DelegationError::MissingSignature { index });
        }
        let signature = keys::signature_from_text(&link.signature)
            .map_err(|_| DelegationError::MalformedSignature { index })?;
        let issuer =
            registry
                .lookup(&link.issuer)
                .ok_or_else(|| DelegationError::UnregisteredIssuer {
                    index,
                    did: link.issuer.clone(),
                })?;
        issuer
            .public_key
            .verify_strict(&link.signed_bytes(), &signature)
            .map_err(|_| DelegationError::BadSignature { index })?;
        if !issuer.delegates.contains(&link.subject) {
            return Err(DelegationError::NotConsented {
                index,
                issuer: link.issuer.clone(),
                subject: link.subject.clone(),
            });
        }
        if link.issued_at.as_secs_floor() > now.as_secs_floor() + MAX_CLOCK_SKEW_SECS {
            return Err(DelegationError::IssuedInFuture {
                index,
                issued_at: link.issued_at,
            });
        }
        if let Some(at) = link.expires_at {
            if now >= at {
                return Err(DelegationError::Expired {
                    index,
                    expired_at: at,
                });
            }
            earliest = Some(earliest.map_or(at, |e| e.min(at)));
        }
        grants = check_capabilities(index, &link.capabilities, &grants)?;
        seen.push(&link.subject);
        expected_issuer = &link.subject;
    }
    Ok(VerifiedChain {
        root: root.clone(),
        leaf: expected_issuer.clone(),
        depth: links.len(),
        capabilities: grants,
        expires_at: earliest,
    })
}

mod rfc3339 {
    use super::*;

    pub fn serialize<S: Serializer>(value: &Timestamp, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&value.to_rfc3339())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Timestamp, D::Error> {
        let text = String::deserialize(deserializer)?;
        Timestamp::parse_rfc3339(&text).map_err(serde::de::Error::custom)
    }
}

mod rfc3339_opt {
    use super::*;

    pub fn serialize<S: Serializer>(
        value: &Option<Timestamp>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(t) => serializer.serialize_str(&t.to_rfc3339()),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Timestamp>, D::Error> {
        let text: Option<String> = Option::deserialize(deserializer)?;
        text.map(|t| Timestamp::parse_rfc3339(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}
