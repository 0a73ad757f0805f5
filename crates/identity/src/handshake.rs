//! The mutual handshake between two sidecars, as a transport-independent state machine.
//!
//! ```text
//! initiator A                                  responder B
//!   HandshakeInit { A, keyA, nA }        ──▶   looks A up in the registry, checks keyA is
//!                                              A's registered key, picks challenge id c and
//!                                              nonce nB, signs T(responder), remembers c
//!   ◀── HandshakeChallenge { c, A, nA, B, keyB, nB, sigB }
//!   looks B up, checks keyB and sigB over
//!   T(responder), signs T(initiator)
//!   HandshakeResponse { c, A, B, sigA }  ──▶   takes c (single use, 30 s), checks sigA
//!                                              over T(initiator) with A's registered key
//! ```
//!
//! `T(role)` is the canonical encoding (see `encode`) of the domain-separation prefix
//! `agentmesh-handshake-v1`, the role, both DIDs, both nonces and the challenge id; the role
//! keeps one side's signature from being reflected as the other's. Keys and scores are always
//! the registry's; the keys carried in messages are only compared with it, which is what lets
//! a wrong key be told apart from a tampered message. Time, nonces and challenge ids are
//! inputs. Every refusal is its own [`HandshakeError`] variant.

use std::collections::HashMap;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::encode::Transcript;
use crate::keys::{self, Did, b64, b64_array};
use crate::registry::Registry;
use crate::time::Timestamp;

/// Version carried by every message; another version is refused.
pub const PROTOCOL_VERSION: u32 = 1;
/// A challenge is answered within this time or not at all.
pub const CHALLENGE_TTL_MS: i64 = 30_000;
/// Challenges a responder remembers at once (pending or used and not yet expired). Past this,
/// new handshakes are refused until old challenges expire: memory stays bounded under a flood.
pub const MAX_PENDING_CHALLENGES: usize = 4096;

const DOMAIN: &str = "agentmesh-handshake-v1";
const SESSION_DOMAIN: &str = "agentmesh-session-v1";

pub type Nonce = [u8; 32];
pub type ChallengeId = [u8; 16];

/// Why a handshake was refused. One variant per way it can be wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("unsupported handshake version {0} (this side speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion(u32),
    #[error("malformed handshake message: {0}")]
    Malformed(&'static str),
    #[error("{0} is not a registered identity")]
    UnregisteredDid(Did),
    #[error("the key presented for {0} is not its registered key")]
    KeyMismatch(Did),
    #[error("the message carries no signature")]
    MissingSignature,
    #[error("the signature does not verify with the registered key of {0}")]
    BadSignature(Did),
    #[error("unknown challenge")]
    UnknownChallenge,
    #[error("challenge expired ({age_ms} ms old, limit {CHALLENGE_TTL_MS} ms)")]
    ChallengeExpired { age_ms: i64 },
    #[error("challenge already used")]
    ChallengeReused,
    #[error("DIDs do not match the handshake in progress: expected {expected}, got {got}")]
    DidMismatch { expected: String, got: String },
    #[error("the echoed nonce is not the one this side sent")]
    NonceMismatch,
    #[error("an identity cannot handshake with itself")]
    SelfHandshake,
    #[error("peer {did} has trust score {score}, below the required {required}")]
    PeerScoreTooLow { did: Did, score: i32, required: i32 },
    #[error("too many pending challenges ({MAX_PENDING_CHALLENGES}); try again later")]
    TooManyPending,
}

/// First message, initiator to responder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HandshakeInit {
    pub version: u32,
    pub initiator: Did,
    /// The initiator's public key, text form; compared with the registry's, never trusted.
    pub initiator_key: String,
    /// 32 random bytes, base64.
    pub initiator_nonce: String,
}

/// Second message, responder to initiator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HandshakeChallenge {
    pub version: u32,
    /// 16 random bytes, base64.
    pub challenge_id: String,
    pub initiator: Did,
    pub initiator_nonce: String,
    pub responder: Did,
    pub responder_key: String,
    pub responder_nonce: String,
    /// The responder's signature over `T(responder)`, base64.
    #[serde(default)]
    pub signature: String,
}

/// Third message, initiator to responder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HandshakeResponse {
    pub version: u32,
    pub challenge_id: String,
    pub initiator: Did,
    pub responder: Did,
    /// The initiator's signature over `T(initiator)`, base64.
    #[serde(default)]
    pub signature: String,
}

/// Which side of a handshake this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Role {
    Initiator,
    Responder,
}

/// An established session: what both sides know after a successful handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// sha256 over the handshake transcript; equal on both sides.
    pub id: [u8; 32],
    pub role: Role,
    pub local: Did,
    pub peer: Did,
    /// The peer's registered key, used to check its request proofs.
    pub peer_key: VerifyingKey,
    /// The peer's registered score at handshake time.
    pub peer_score: i32,
    pub established_at: Timestamp,
}

/// Settings both sides apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandshakeConfig {
    /// Refuse peers whose registered score is below this (a policy's `minPeerScore`).
    pub min_peer_score: Option<i32>,
    /// Challenge lifetime; [`CHALLENGE_TTL_MS`] by default.
    pub challenge_ttl_ms: i64,
}

impl Default for HandshakeConfig {
    fn default() -> Self {
        Self {
            min_peer_score: None,
            challenge_ttl_ms: CHALLENGE_TTL_MS,
        }
    }
}

struct Fields<'a> {
    initiator: &'a Did,
    responder: &'a Did,
    initiator_nonce: &'a Nonce,
    responder_nonce: &'a Nonce,
    challenge_id: &'a ChallengeId,
}

impl Fields<'_> {
    fn transcript(&self, role: Role) -> Vec<u8> {
        let role = match role {
            Role::Initiator => "initiator",
            Role::Responder => "responder",
        };
        Transcript::new(DOMAIN)
            .str(role)
            .str(self.initiator.as_str())
            .str(self.responder.as_str())
            .field(self.initiator_nonce)
            .field(self.responder_nonce)
            .field(self.challenge_id)
            .into_bytes()
    }

    fn session_id(&self) -> [u8; 32] {
        let bytes = Transcript::new(SESSION_DOMAIN)
            .str(self.initiator.as_str())
            .str(self.responder.as_str())
            .field(self.initiator_nonce)
            .field(self.responder_nonce)
            .field(self.challenge_id)
            .into_bytes();
        Sha256::digest(bytes).into()
    }
}

fn check_version(version: u32) -> Result<(), HandshakeError> {
    if version == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(HandshakeError::UnsupportedVersion(version))
    }
}

fn did_mismatch(expected: &Did, got: &Did) -> HandshakeError {
    HandshakeError::DidMismatch {
        expected: expected.to_string(),
        got: got.to_string(),
    }
}

/// Look the peer up and check the key it presents against the registered one.
fn registered_peer(
    registry: &impl Registry,
    did: &Did,
    presented_key: &str,
    config: &HandshakeConfig,
) -> Result<(VerifyingKey, i32), HandshakeError> {
    let entry = registry
        .lookup(did)
        .ok_or_else(|| HandshakeError::UnregisteredDid(did.clone()))?;
    let presented = keys::public_key_from_text(presented_key)
        .map_err(|_| HandshakeError::Malformed("public key"))?;
    if presented != entry.public_key {
        return Err(HandshakeError::KeyMismatch(did.clone()));
    }
    check_score(did, entry.trust_score, config)?;
    Ok((entry.public_key, entry.trust_score))
}

fn check_score(did: &Did, score: i32, config: &HandshakeConfig) -> Result<(), HandshakeError> {
    match config.min_peer_score {
        Some(required) if score < required => Err(HandshakeError::PeerScoreTooLow {
            did: did.clone(),
            score,
            required,
        }),
        _ => Ok(()),
    }
}

fn verify_signature(
    key: &VerifyingKey,
    did: &Did,
    message: &[u8],
    signature: &str,
) -> Result<(), HandshakeError> {
    if signature.is_empty() {
        return Err(HandshakeError::MissingSignature);
    }
    let signature =
        keys::signature_from_text(signature).map_err(|_| HandshakeError::Malformed("signature"))?;
    key.verify_strict(message, &signature)
        .map_err(|_| HandshakeError::BadSignature(did.clone()))
}

/// The initiating side, between sending [`HandshakeInit`] and receiving the challenge.
pub struct Initiator {
    key: SigningKey,
    did: Did,
    nonce: Nonce,
    started_at: Timestamp,
    expected_peer: Option<Did>,
    config: HandshakeConfig,
}

impl Initiator {
    /// Start a handshake. `expected_peer`, when the caller knows whom it is calling, makes any
    /// other responder a [`HandshakeError::DidMismatch`].
    pub fn start(
        key: SigningKey,
        nonce: Nonce,
        expected_peer: Option<Did>,
        config: HandshakeConfig,
        now: Timestamp,
    ) -> (Self, HandshakeInit) {
        let did = Did::from_public_key(&key.verifying_key());
        let init = HandshakeInit {
            version: PROTOCOL_VERSION,
            initiator: did.clone(),
            initiator_key: keys::public_key_to_text(&key.verifying_key()),
            initiator_nonce: b64(&nonce),
        };
        (
            Self {
                key,
                did,
                nonce,
                started_at: now,
                expected_peer,
                config,
            },
            init,
        )
    }

    pub fn did(&self) -> &Did {
        &self.did
    }

    /// Check the responder's challenge and answer it.
    pub fn on_challenge(
        self,
        challenge: &HandshakeChallenge,
        registry: &impl Registry,
        now: Timestamp,
    ) -> Result<(HandshakeResponse, Session), HandshakeError> {
        check_version(challenge.version)?;
        if challenge.initiator != self.did {
            return Err(did_mismatch(&self.did, &challenge.initiator));
        }
        if challenge.responder == self.did {
            return Err(HandshakeError::SelfHandshake);
        }
        if let Some(expected) = &self.expected_peer
            && *expected != challenge.responder
        {
            return Err(did_mismatch(expected, &challenge.responder));
        }
        let echoed: Nonce = b64_array(&challenge.initiator_nonce)
            .ok_or(HandshakeError::Malformed("initiator nonce"))?;
        if echoed != self.nonce {
            return Err(HandshakeError::NonceMismatch);
        }
        let age_ms = now.millis_since(self.started_at);
        if !(0..=self.config.challenge_ttl_ms).contains(&age_ms) {
            return Err(HandshakeError::ChallengeExpired { age_ms });
        }
        let responder_nonce: Nonce = b64_array(&challenge.responder_nonce)
            .ok_or(HandshakeError::Malformed("responder nonce"))?;
        let challenge_id: ChallengeId =
            b64_array(&challenge.challenge_id).ok_or(HandshakeError::Malformed("challenge id"))?;
        let (peer_key, peer_score) = registered_peer(
            registry,
            &challenge.responder,
            &challenge.responder_key,
            &self.config,
        )?;
        let fields = Fields {
            initiator: &self.did,
            responder: &challenge.responder,
            initiator_nonce: &self.nonce,
            responder_nonce: &responder_nonce,
            challenge_id: &challenge_id,
        };
        verify_signature(
            &peer_key,
            &challenge.responder,
            &fields.transcript(Role::Responder),
            &challenge.signature,
        )?;
        let signature = self.key.sign(&fields.transcript(Role::Initiator));
        let response = HandshakeResponse {
            version: PROTOCOL_VERSION,
            challenge_id: challenge.challenge_id.clone(),
            initiator: self.did.clone(),
            responder: challenge.responder.clone(),
            signature: keys::signature_to_text(&signature),
        };
        let session = Session {
            id: fields.session_id(),
            role: Role::Initiator,
            local: self.did.clone(),
            peer: challenge.responder.clone(),
            peer_key,
            peer_score,
            established_at: now,
        };
        Ok((response, session))
    }
}

struct Pending {
    initiator: Did,
    initiator_nonce: Nonce,
    responder_nonce: Nonce,
    issued_at: Timestamp,
    used: bool,
}

/// The responding side: answers any number of handshakes, remembering each challenge until it
/// expires so that a second use is refused as such.
pub struct Responder {
    key: SigningKey,
    did: Did,
    config: HandshakeConfig,
    challenges: HashMap<ChallengeId, Pending>,
}

impl Responder {
    pub fn new(key: SigningKey, config: HandshakeConfig) -> Self {
        let did = Did::from_public_key(&key.verifying_key());
        Self {
            key,
            did,
            config,
            challenges: HashMap::new(),
        }
    }

    pub fn did(&self) -> &Did {
        &self.did
    }

    /// Challenges remembered right now (bounded by [`MAX_PENDING_CHALLENGES`]).
    pub fn pending(&self) -> usize {
        self.challenges.len()
    }

    /// Forget challenges older than the lifetime.
    pub fn expire(&mut self, now: Timestamp) {
        let ttl = self.config.challenge_ttl_ms;
        self.challenges
            .retain(|_, p| now.millis_since(p.issued_at) <= ttl);
    }

    /// Answer an initiator with a signed challenge. `challenge_id` and `nonce` must be fresh
    /// random bytes.
    pub fn on_init(
        &mut self,
        init: &HandshakeInit,
        registry: &impl Registry,
        challenge_id: ChallengeId,
        nonce: Nonce,
        now: Timestamp,
    ) -> Result<HandshakeChallenge, HandshakeError> {
        check_version(init.version)?;
        if init.initiator == self.did {
            return Err(HandshakeError::SelfHandshake);
        }
        let initiator_nonce: Nonce =
            b64_array(&init.initiator_nonce).ok_or(HandshakeError::Malformed("initiator nonce"))?;
        registered_peer(registry, &init.initiator, &init.initiator_key, &self.config)?;
        if self.challenges.len() >= MAX_PENDING_CHALLENGES {
            self.expire(now);
            if self.challenges.len() >= MAX_PENDING_CHALLENGES {
                return Err(HandshakeError::TooManyPending);
            }
        }
        if self.challenges.contains_key(&challenge_id) {
            return Err(HandshakeError::Malformed("challenge id not fresh"));
        }
        let fields = Fields {
            initiator: &init.initiator,
            responder: &self.did,
            initiator_nonce: &initiator_nonce,
            responder_nonce: &nonce,
            challenge_id: &challenge_id,
        };
        let signature = self.key.sign(&fields.transcript(Role::Responder));
        self.challenges.insert(
            challenge_id,
            Pending {
                initiator: init.initiator.clone(),
                initiator_nonce,
                responder_nonce: nonce,
                issued_at: now,
                used: false,
            },
        );
        Ok(HandshakeChallenge {
            version: PROTOCOL_VERSION,
            challenge_id: b64(&challenge_id),
            initiator: init.initiator.clone(),
            initiator_nonce: init.initiator_nonce.clone(),
            responder: self.did.clone(),
            responder_key: keys::public_key_to_text(&self.key.verifying_key()),
            responder_nonce: b64(&nonce),
            signature: keys::signature_to_text(&signature),
        })
    }

    /// Check the initiator's answer. The challenge is spent by this call whatever the outcome.
    pub fn on_response(
        &mut self,
        response: &HandshakeResponse,
        registry: &impl Registry,
        now: Timestamp,
    ) -> Result<Session, HandshakeError> {
        check_version(response.version)?;
        let challenge_id: ChallengeId =
            b64_array(&response.challenge_id).ok_or(HandshakeError::Malformed("challenge id"))?;
        let pending = self
            .challenges
            .get_mut(&challenge_id)
            .ok_or(HandshakeError::UnknownChallenge)?;
        if pending.used {
            return Err(HandshakeError::ChallengeReused);
        }
        pending.used = true;
        let age_ms = now.millis_since(pending.issued_at);
        if !(0..=self.config.challenge_ttl_ms).contains(&age_ms) {
            return Err(HandshakeError::ChallengeExpired { age_ms });
        }
        if response.initiator != pending.initiator {
            return Err(did_mismatch(&pending.initiator, &response.initiator));
        }
        if response.responder != self.did {
            return Err(did_mismatch(&self.did, &response.responder));
        }
        let entry = registry
            .lookup(&response.initiator)
            .ok_or_else(|| HandshakeError::UnregisteredDid(response.initiator.clone()))?;
        let fields = Fields {
            initiator: &pending.initiator,
            responder: &self.did,
            initiator_nonce: &pending.initiator_nonce,
            responder_nonce: &pending.responder_nonce,
            challenge_id: &challenge_id,
        };
        verify_signature(
            &entry.public_key,
            &response.initiator,
            &fields.transcript(Role::Initiator),
            &response.signature,
        )?;
        check_score(&response.initiator, entry.trust_score, &self.config)?;
        Ok(Session {
            id: fields.session_id(),
            role: Role::Responder,
            local: self.did.clone(),
            peer: response.initiator.clone(),
            peer_key: entry.public_key,
            peer_score: entry.trust_score,
            established_at: now,
        })
    }
}
