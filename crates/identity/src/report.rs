//! Signed report batches: a sidecar signs the exact bytes of each report batch it posts to the
//! operator with its identity's key; the operator believes a batch only when the signature
//! verifies with the identity's registered public key (AgentIdentity `status.publicKey`).
//!
//! The signature is Ed25519 over the transcript `agentmesh-report-v1 ‖ 0 ‖ len ‖ sha256(body)`
//! (see the crate's canonical encoding), carried as standard padded base64 (88 characters) in
//! the `x-agentmesh-signature` header. The domain prefix keeps a report signature from ever
//! being mistaken for a handshake, request-proof or delegation signature made by the same key.
//!
//! Freshness and replay (the batch's `batchId` and `sentAtMs`) are the receiver's business: the
//! signature covers them because they are in the body.

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::encode::Transcript;
use crate::keys;

/// Domain-separation prefix of report signatures.
pub const REPORT_DOMAIN: &str = "agentmesh-report-v1";

/// Why a report signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportSignatureError {
    #[error("the report batch is not signed (no x-agentmesh-signature)")]
    Missing,
    #[error("the report signature is not standard base64 of 64 bytes")]
    Malformed,
    #[error("the report signature does not verify with the identity's registered key")]
    BadSignature,
}

fn message(body: &[u8]) -> Vec<u8> {
    let digest = Sha256::digest(body);
    Transcript::new(REPORT_DOMAIN).field(&digest).into_bytes()
}

/// The signature of a report batch whose exact request body is `body`: standard padded base64
/// of the 64 signature bytes.
pub fn sign_report(key: &SigningKey, body: &[u8]) -> String {
    keys::signature_to_text(&key.sign(&message(body)))
}

/// Checks `signature` (the header's value, surrounding whitespace ignored) over `body` with
/// the identity's registered key. Strict verification: no malleable or small-order forms.
pub fn verify_report(
    key: &VerifyingKey,
    body: &[u8],
    signature: &str,
) -> Result<(), ReportSignatureError> {
    let signature = signature.trim();
    if signature.is_empty() {
        return Err(ReportSignatureError::Missing);
    }
    let signature =
        keys::signature_from_text(signature).map_err(|_| ReportSignatureError::Malformed)?;
    key.verify_strict(&message(body), &signature)
        .map_err(|_| ReportSignatureError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    const BODY: &[u8] = br#"{"source":{"kind":"sidecar","identity":"ns/agent","batchId":"AAAAAAAAAAAAAAAAAAAAAA","sentAtMs":1},"outcomes":[]}"#;

    #[test]
    fn a_signed_body_verifies() {
        let signature = sign_report(&key(1), BODY);
        assert_eq!(signature.len(), 88);
        assert_eq!(
            verify_report(&key(1).verifying_key(), BODY, &signature),
            Ok(())
        );
        // Header values may carry surrounding whitespace.
        assert_eq!(
            verify_report(&key(1).verifying_key(), BODY, &format!(" {signature}\t")),
            Ok(())
        );
    }

    #[test]
    fn the_signature_covers_the_domain_and_the_body_hash_exactly() {
        // Recomputed by hand: domain, NUL, u32 length 32, sha256(body).
        let mut expected = b"agentmesh-report-v1\0".to_vec();
        expected.extend_from_slice(&32u32.to_be_bytes());
        expected.extend_from_slice(&Sha256::digest(BODY));
        assert_eq!(message(BODY), expected);
        let signature = keys::signature_from_text(&sign_report(&key(1), BODY)).unwrap();
        assert!(
            key(1)
                .verifying_key()
                .verify_strict(&expected, &signature)
                .is_ok()
        );
    }

    #[test]
    fn a_body_changed_by_one_byte_is_refused() {
        let signature = sign_report(&key(1), BODY);
        for index in [0, BODY.len() / 2, BODY.len() - 1] {
            let mut changed = BODY.to_vec();
            changed[index] ^= 0x01;
            assert_eq!(
                verify_report(&key(1).verifying_key(), &changed, &signature),
                Err(ReportSignatureError::BadSignature),
                "byte {index}"
            );
        }
        let mut longer = BODY.to_vec();
        longer.push(b' ');
        assert_eq!(
            verify_report(&key(1).verifying_key(), &longer, &signature),
            Err(ReportSignatureError::BadSignature)
        );
    }

    #[test]
    fn another_key_is_refused() {
        let signature = sign_report(&key(2), BODY);
        assert_eq!(
            verify_report(&key(1).verifying_key(), BODY, &signature),
            Err(ReportSignatureError::BadSignature)
        );
    }

    #[test]
    fn a_signature_of_another_domain_is_refused() {
        // The same key signing sha256(body) without the report domain (as another protocol
        // might) does not make a report signature.
        let raw = keys::signature_to_text(&key(1).sign(&Sha256::digest(BODY)));
        assert_eq!(
            verify_report(&key(1).verifying_key(), BODY, &raw),
            Err(ReportSignatureError::BadSignature)
        );
    }

    #[test]
    fn empty_and_garbage_signatures_say_what_is_wrong() {
        let public = key(1).verifying_key();
        assert_eq!(
            verify_report(&public, BODY, ""),
            Err(ReportSignatureError::Missing)
        );
        assert_eq!(
            verify_report(&public, BODY, "   "),
            Err(ReportSignatureError::Missing)
        );
        for garbage in [
            "not base64 at all",
            "AAAA",
            &"A".repeat(87),
            &"!".repeat(88),
            &"A".repeat(200),
        ] {
            let result = verify_report(&public, BODY, garbage);
            assert!(
                matches!(
                    result,
                    Err(ReportSignatureError::Malformed | ReportSignatureError::BadSignature)
                ),
                "{garbage}: {result:?}"
            );
        }
        // Well-formed but all zeroes: parses, does not verify.
        let zeroes = keys::signature_to_text(&ed25519_dalek::Signature::from_bytes(&[0; 64]));
        assert_eq!(
            verify_report(&public, BODY, &zeroes),
            Err(ReportSignatureError::BadSignature)
        );
        assert_eq!(
            verify_report(&public, BODY, "not base64 at all"),
            Err(ReportSignatureError::Malformed)
        );
    }

    proptest! {
        #[test]
        fn any_body_round_trips_and_any_other_body_is_refused(
            body in proptest::collection::vec(any::<u8>(), 0..512),
            other in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let signature = sign_report(&key(3), &body);
            prop_assert_eq!(verify_report(&key(3).verifying_key(), &body, &signature), Ok(()));
            if other != body {
                prop_assert_eq!(
                    verify_report(&key(3).verifying_key(), &other, &signature),
                    Err(ReportSignatureError::BadSignature)
                );
            }
        }

        #[test]
        fn arbitrary_signature_text_never_panics(text in ".{0,200}") {
            let _ = verify_report(&key(3).verifying_key(), BODY, &text);
        }
    }
}
