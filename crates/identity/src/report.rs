//! Signatures over the report batches a sidecar sends to the operator: the operator believes a
//! sidecar's outcomes only when its identity's registered key signed the exact request body.

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::encode::Transcript;
use crate::keys;

/// Domain-separation prefix of report signatures.
pub const REPORT_DOMAIN: &str = "agentmesh-report-v1";

/// Why a report signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportSignatureError {
    #[error("the report carries no signature")]
    Missing,
    #[error("the report signature is not base64 of 64 bytes")]
    Malformed,
    #[error("the report signature does not verify with the identity's registered key")]
    BadSignature,
}

fn message(body: &[u8]) -> Vec<u8> {
    let digest: [u8; 32] = Sha256::digest(body).into();
    Transcript::new(REPORT_DOMAIN).field(&digest).into_bytes()
}

/// The signature (standard base64) of a report body.
pub fn sign_report(key: &SigningKey, body: &[u8]) -> String {
    keys::signature_to_text(&key.sign(&message(body)))
}

/// Check a report body's signature against the identity's registered key.
pub fn verify_report(
    key: &VerifyingKey,
    body: &[u8],
    signature: &str,
) -> Result<(), ReportSignatureError> {
    if signature.trim().is_empty() {
        return Err(ReportSignatureError::Missing);
    }
    let signature =
        keys::signature_from_text(signature.trim()).map_err(|_| ReportSignatureError::Malformed)?;
    key.verify_strict(&message(body), &signature)
        .map_err(|_| ReportSignatureError::BadSignature)
}
