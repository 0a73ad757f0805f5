//! Proof carried by each request after a handshake: the sender signs, with its registered key,
//! the session id, its DID, a counter, the time, the request's method and path (with its query)
//! and sha256 of its body, under the prefix `agentmesh-request-v2`: a proof moved to another
//! path, method or body does not verify.
//!
//! Replay safety: the receiver keeps, per session, the highest counter seen and a bitmap of
//! the [`REPLAY_WINDOW`] counters below it (as IPsec does); a counter already seen, or older
//! than the window, is refused; so is a timestamp more than [`MAX_CLOCK_SKEW_MS`] away from
//! the receiver's clock. The state is 24 bytes per session.

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::encode::Transcript;
use crate::handshake::Session;
use crate::keys::{self, Did, b64, b64_array};
use crate::time::Timestamp;

/// Counters this far below the highest one seen are still accepted once.
pub const REPLAY_WINDOW: u64 = 128;
/// Largest difference between the proof's time and the receiver's.
pub const MAX_CLOCK_SKEW_MS: i64 = 30_000;

const DOMAIN: &str = "agentmesh-request-v2";

/// What a proof covers of its request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Covered<'a> {
    /// HTTP method (`POST`).
    pub method: &'a str,
    /// Path and query as sent on the wire (`/inbound/mcp?x=1`).
    pub path: &'a str,
    pub body: &'a [u8],
}

/// Why a request proof was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("malformed request proof: {0}")]
    Malformed(&'static str),
    #[error("the proof is for another session")]
    SessionMismatch,
    #[error("the proof is from {got}, not the session's peer {expected}")]
    SenderMismatch { expected: Did, got: Did },
    #[error("the proof carries no signature")]
    MissingSignature,
    #[error("the proof's signature does not verify with the peer's registered key")]
    BadSignature,
    #[error("the request body does not match the proof")]
    BodyMismatch,
    #[error("request counter {0} was already used (replay)")]
    Replayed(u64),
    #[error("request counter {counter} is older than the replay window (highest seen {highest})")]
    OutsideWindow { counter: u64, highest: u64 },
    #[error("request time is {skew_ms} ms away from this side's clock (limit {MAX_CLOCK_SKEW_MS})")]
    Stale { skew_ms: i64 },
}

/// The proof, as carried in a request header (JSON, then base64url by the transport).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestProof {
    /// Session id, base64 of 32 bytes.
    pub session: String,
    pub sender: Did,
    /// Starts at 1 and grows by one per request of the session.
    pub counter: u64,
    pub timestamp: Timestamp,
    /// sha256 of the request body, base64.
    pub body_sha256: String,
    #[serde(default)]
    pub signature: String,
}

fn transcript(
    session: &[u8; 32],
    sender: &Did,
    counter: u64,
    timestamp: Timestamp,
    request: (&str, &str),
    body_hash: &[u8; 32],
) -> Vec<u8> {
    Transcript::new(DOMAIN)
        .field(session)
        .str(sender.as_str())
        .u64(counter)
        .i64(timestamp.as_millis())
        .str(request.0)
        .str(request.1)
        .field(body_hash)
        .into_bytes()
}

/// The sending side of a session: numbers and signs requests.
pub struct ProofSigner {
    session: [u8; 32],
    local: Did,
    key: SigningKey,
    next_counter: u64,
}

impl ProofSigner {
    /// `key` must be the key the handshake proved (the session's local identity).
    pub fn new(session: &Session, key: SigningKey) -> Self {
        Self {
            session: session.id,
            local: session.local.clone(),
            key,
            next_counter: 1,
        }
    }

    pub fn sign(&mut self, request: Covered<'_>, now: Timestamp) -> RequestProof {
        let counter = self.next_counter;
        self.next_counter += 1;
        sign_with_counter(&self.session, &self.local, &self.key, counter, request, now)
    }
}

/// Sign a proof with an explicit counter (tests and callers that persist counters).
pub fn sign_with_counter(
    session: &[u8; 32],
    sender: &Did,
    key: &SigningKey,
    counter: u64,
    request: Covered<'_>,
    now: Timestamp,
) -> RequestProof {
    let body_hash: [u8; 32] = Sha256::digest(request.body).into();
    let signature = key.sign(&transcript(
        session,
        sender,
        counter,
        now,
        (request.method, request.path),
        &body_hash,
    ));
    RequestProof {
        session: b64(session),
        sender: sender.clone(),
        counter,
        timestamp: now,
        body_sha256: b64(&body_hash),
        signature: keys::signature_to_text(&signature),
    }
}

/// The receiving side of a session: checks proofs and remembers counters.
pub struct ProofVerifier {
    session: [u8; 32],
    peer: Did,
    peer_key: VerifyingKey,
    window: ReplayWindow,
}

impl ProofVerifier {
    pub fn new(session: &Session) -> Self {
        Self {
            session: session.id,
            peer: session.peer.clone(),
            peer_key: session.peer_key,
            window: ReplayWindow::default(),
        }
    }

    /// Check a proof for `request`; on success its counter is spent.
    pub fn verify(
        &mut self,
        proof: &RequestProof,
        request: Covered<'_>,
        now: Timestamp,
    ) -> Result<(), ProofError> {
        let session: [u8; 32] =
            b64_array(&proof.session).ok_or(ProofError::Malformed("session"))?;
        if session != self.session {
            return Err(ProofError::SessionMismatch);
        }
        if proof.sender != self.peer {
            return Err(ProofError::SenderMismatch {
                expected: self.peer.clone(),
                got: proof.sender.clone(),
            });
        }
        if proof.counter == 0 {
            return Err(ProofError::Malformed("counter 0"));
        }
        let skew_ms = now.millis_since(proof.timestamp);
        if skew_ms.abs() > MAX_CLOCK_SKEW_MS {
            return Err(ProofError::Stale { skew_ms });
        }
        let claimed_hash: [u8; 32] =
            b64_array(&proof.body_sha256).ok_or(ProofError::Malformed("body hash"))?;
        if proof.signature.is_empty() {
            return Err(ProofError::MissingSignature);
        }
        let signature = keys::signature_from_text(&proof.signature)
            .map_err(|_| ProofError::Malformed("signature"))?;
        let message = transcript(
            &session,
            &proof.sender,
            proof.counter,
            proof.timestamp,
            (request.method, request.path),
            &claimed_hash,
        );
        self.peer_key
            .verify_strict(&message, &signature)
            .map_err(|_| ProofError::BadSignature)?;
        let body_hash: [u8; 32] = Sha256::digest(request.body).into();
        if body_hash != claimed_hash {
            return Err(ProofError::BodyMismatch);
        }
        // Only a proof with a valid signature may move the window.
        self.window.accept(proof.counter)
    }
}

/// Sliding window over request counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayWindow {
    highest: u64,
    /// Bit `i` set: counter `highest - i` was seen.
    seen: u128,
}

impl ReplayWindow {
    pub fn accept(&mut self, counter: u64) -> Result<(), ProofError> {
        if counter > self.highest {
            let shift = counter - self.highest;
            self.seen = if shift >= REPLAY_WINDOW {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.highest = counter;
            return Ok(());
        }
        let back = self.highest - counter;
        if back >= REPLAY_WINDOW {
            return Err(ProofError::OutsideWindow {
                counter,
                highest: self.highest,
            });
        }
        let bit = 1u128 << back;
        if self.seen & bit != 0 {
            return Err(ProofError::Replayed(counter));
        }
        self.seen |= bit;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_accepts_each_counter_once_in_any_order() {
        let mut w = ReplayWindow::default();
        for c in [1, 3, 2, 10, 5, 130, 4] {
            assert_eq!(w.accept(c), Ok(()), "{c}");
        }
        assert_eq!(
            w.accept(1),
            Err(ProofError::OutsideWindow {
                counter: 1,
                highest: 130
            })
        );
        assert_eq!(w.accept(3), Err(ProofError::Replayed(3)));
        assert_eq!(w.accept(130), Err(ProofError::Replayed(130)));
        assert_eq!(w.accept(10), Err(ProofError::Replayed(10)));
        assert_eq!(w.accept(129), Ok(()));
    }

    proptest::proptest! {
        #[test]
        fn window_never_accepts_a_counter_twice(counters in proptest::collection::vec(1u64..400, 1..200)) {
            let mut w = ReplayWindow::default();
            let mut accepted = std::collections::HashSet::new();
            for c in counters {
                if w.accept(c).is_ok() {
                    proptest::prop_assert!(accepted.insert(c), "counter {c} accepted twice");
                }
            }
        }
    }
}
