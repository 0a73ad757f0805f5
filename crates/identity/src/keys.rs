//! Ed25519 keys, their text forms, and DIDs.
//!
//! - **DID**: `did:mesh:` followed by the first 32 hex digits (16 bytes) of sha256 over the 32
//!   raw public-key bytes.
//! - **Public key text**: standard base64 (RFC 4648, padded) of the 32 raw key bytes, 44
//!   characters, as the CRD pattern `^[A-Za-z0-9+/]{43}=$` requires.
//! - **Private key text**: PKCS#8 v1 PEM (`-----BEGIN PRIVATE KEY-----`) as RFC 8410 §7 gives
//!   it — DER `302e020100300506032b657004220420 ‖ 32-byte seed` — the form `openssl genpkey
//!   -algorithm ed25519` writes and that OpenSSL 3 and Python's `cryptography` read. (The PKCS#8
//!   v2 "OneAsymmetricKey" form with the public key appended, which ed25519-dalek writes, is
//!   refused by both.) Both forms are read.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Why a key, a DID or a signature in text form was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(
        "private key is not a PKCS#8 PEM Ed25519 key (expected -----BEGIN PRIVATE KEY-----): {0}"
    )]
    MalformedPrivateKey(String),
    #[error("public key is not 44 characters of standard base64 encoding 32 bytes")]
    MalformedPublicKey,
    #[error("public key bytes are not a valid Ed25519 point")]
    InvalidPublicKey,
    #[error("DID is not did:mesh: followed by 32 lowercase hex digits")]
    MalformedDid,
    #[error("signature is not base64 of 64 bytes")]
    MalformedSignature,
    #[error("could not encode the private key as PEM: {0}")]
    Encode(String),
}

/// A DID of the form `did:mesh:<32 lowercase hex digits>`. Constructed only from a public key
/// or by parsing, so a value of this type is always well formed.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Did(String);

pub const DID_PREFIX: &str = "did:mesh:";

impl Did {
    pub fn from_public_key(key: &VerifyingKey) -> Self {
        let digest = Sha256::digest(key.as_bytes());
        let mut text = String::with_capacity(DID_PREFIX.len() + 32);
        text.push_str(DID_PREFIX);
        for byte in &digest[..16] {
            text.push(hex_digit(byte >> 4));
            text.push(hex_digit(byte & 0xf));
        }
        Self(text)
    }

    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let hex = text
            .strip_prefix(DID_PREFIX)
            .ok_or(KeyError::MalformedDid)?;
        if hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(Self(text.to_owned()))
        } else {
            Err(KeyError::MalformedDid)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this DID is the one derived from `key`.
    pub fn is_of(&self, key: &VerifyingKey) -> bool {
        *self == Self::from_public_key(key)
    }
}

fn hex_digit(nibble: u8) -> char {
    char::from(b"0123456789abcdef"[usize::from(nibble)])
}

impl TryFrom<String> for Did {
    type Error = KeyError;
    fn try_from(value: String) -> Result<Self, KeyError> {
        Self::parse(&value)
    }
}

impl From<Did> for String {
    fn from(did: Did) -> String {
        did.0
    }
}

impl fmt::Display for Did {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Did {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Did({})", self.0)
    }
}

/// A new key pair from the given cryptographic RNG (the binaries pass `rand_core::OsRng`).
pub fn generate(rng: &mut impl CryptoRngCore) -> SigningKey {
    SigningKey::generate(rng)
}

/// The public key's text form: standard base64 of its 32 bytes (44 characters).
pub fn public_key_to_text(key: &VerifyingKey) -> String {
    STANDARD.encode(key.as_bytes())
}

/// Parse the public key text form (surrounding whitespace ignored).
pub fn public_key_from_text(text: &str) -> Result<VerifyingKey, KeyError> {
    let text = text.trim();
    if text.len() != 44 {
        return Err(KeyError::MalformedPublicKey);
    }
    let bytes = STANDARD
        .decode(text)
        .map_err(|_| KeyError::MalformedPublicKey)?;
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| KeyError::MalformedPublicKey)?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::InvalidPublicKey)
}

/// DER of an RFC 8410 v1 Ed25519 private key before its 32-byte seed: SEQUENCE (46 bytes) {
/// INTEGER 0 (v1), SEQUENCE { OID 1.3.101.112 (id-Ed25519) }, OCTET STRING (34 bytes) {
/// OCTET STRING (32 bytes) } }.
const PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The private key's DER (RFC 8410 v1 PKCS#8): [`PKCS8_V1_PREFIX`] then the 32-byte seed.
fn private_key_der(key: &SigningKey) -> [u8; 48] {
    let mut der = [0u8; 48];
    der[..16].copy_from_slice(&PKCS8_V1_PREFIX);
    der[16..].copy_from_slice(key.as_bytes());
    der
}

/// The private key as PKCS#8 v1 PEM (RFC 8410), ending with a newline. The `Result` is kept
/// for callers; this encoding cannot fail.
pub fn private_key_to_pem(key: &SigningKey) -> Result<String, KeyError> {
    let mut der = private_key_der(key);
    // 48 bytes are 64 base64 characters: one PEM line.
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        STANDARD.encode(der)
    );
    der.fill(0);
    Ok(pem)
}

/// Parse a PKCS#8 PEM Ed25519 private key, v1 (RFC 8410) or v2 (with the public key; then the
/// public key must match the seed), surrounding whitespace ignored.
pub fn private_key_from_pem(pem: &str) -> Result<SigningKey, KeyError> {
    let pem = pem.trim();
    if !pem.starts_with("-----BEGIN PRIVATE KEY-----") {
        return Err(KeyError::MalformedPrivateKey(
            "no -----BEGIN PRIVATE KEY----- line".into(),
        ));
    }
    SigningKey::from_pkcs8_pem(pem).map_err(|e| KeyError::MalformedPrivateKey(e.to_string()))
}

pub fn signature_to_text(signature: &Signature) -> String {
    STANDARD.encode(signature.to_bytes())
}

pub fn signature_from_text(text: &str) -> Result<Signature, KeyError> {
    if text.len() != 88 {
        return Err(KeyError::MalformedSignature);
    }
    let bytes = STANDARD
        .decode(text)
        .map_err(|_| KeyError::MalformedSignature)?;
    let bytes: [u8; 64] = bytes.try_into().map_err(|_| KeyError::MalformedSignature)?;
    Ok(Signature::from_bytes(&bytes))
}

/// Standard base64 of arbitrary bytes (nonces, challenge ids).
pub(crate) fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Decode standard base64 into exactly `N` bytes.
pub(crate) fn b64_array<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() > 4 * N.div_ceil(3) {
        return None;
    }
    STANDARD.decode(text).ok()?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    fn fixed_key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn did_is_sha256_prefix_of_public_key() {
        let key = fixed_key(7).verifying_key();
        let did = Did::from_public_key(&key);
        let digest = Sha256::digest(key.as_bytes());
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(did.as_str(), format!("did:mesh:{hex}"));
        assert_eq!(Did::parse(did.as_str()).unwrap(), did);
        assert!(did.is_of(&key));
        assert!(!did.is_of(&fixed_key(8).verifying_key()));
    }

    #[test]
    fn did_parse_refuses_bad_forms() {
        for bad in [
            "",
            "did:mesh:",
            "did:web:0123456789abcdef0123456789abcdef",
            "did:mesh:0123456789ABCDEF0123456789abcdef",
            "did:mesh:0123456789abcdef0123456789abcde",
            "did:mesh:0123456789abcdef0123456789abcdef0",
        ] {
            assert_eq!(Did::parse(bad), Err(KeyError::MalformedDid), "{bad}");
        }
    }

    #[test]
    fn public_key_text_round_trips_and_matches_crd_pattern() {
        let key = generate(&mut OsRng).verifying_key();
        let text = public_key_to_text(&key);
        assert_eq!(text.len(), 44);
        assert!(text.ends_with('=') && !text.ends_with("=="));
        assert!(
            text[..43]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
        );
        assert_eq!(public_key_from_text(&text).unwrap(), key);
        assert_eq!(
            public_key_from_text("abc"),
            Err(KeyError::MalformedPublicKey)
        );
        assert_eq!(
            public_key_from_text(&"A".repeat(44)),
            Err(KeyError::MalformedPublicKey)
        );
    }

    #[test]
    fn pem_is_the_rfc_8410_v1_form_exactly() {
        let key = fixed_key(0x42);
        let pem = private_key_to_pem(&key).unwrap();
        let mut lines = pem.lines();
        assert_eq!(lines.next(), Some("-----BEGIN PRIVATE KEY-----"));
        let body = lines.next().unwrap();
        assert_eq!(lines.next(), Some("-----END PRIVATE KEY-----"));
        assert_eq!(lines.next(), None);
        assert!(pem.ends_with("-----\n"));
        let der = STANDARD.decode(body).unwrap();
        let mut expected = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        expected.extend_from_slice(&[0x42; 32]);
        assert_eq!(der, expected);
        // The RFC's own example (RFC 8410 §10.3) has exactly this shape.
        let rfc = "MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC";
        let rfc_der = STANDARD.decode(rfc).unwrap();
        assert_eq!(rfc_der[..16], expected[..16]);
    }

    #[test]
    fn reads_the_pkcs8_v2_form_too() {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
        let key = generate(&mut OsRng);
        // What earlier versions wrote (and Secrets made by them still hold).
        let v2 = key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
        assert_ne!(v2, private_key_to_pem(&key).unwrap());
        assert_eq!(
            private_key_from_pem(&v2).unwrap().to_bytes(),
            key.to_bytes()
        );
    }

    #[test]
    fn pem_round_trips() {
        let key = generate(&mut OsRng);
        let pem = private_key_to_pem(&key).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let back = private_key_from_pem(&pem).unwrap();
        assert_eq!(back.to_bytes(), key.to_bytes());
    }

    #[test]
    fn reads_openssl_pem() {
        // `openssl genpkey -algorithm ed25519` output (a throwaway test key).
        let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIHQpuFNY5Rl/ZeyhPd9rC4+2kgMwtJtHQlnkg6APLnqR\n-----END PRIVATE KEY-----\n";
        assert!(private_key_from_pem(pem).is_ok());
    }

    #[test]
    fn malformed_private_keys_say_so() {
        for bad in [
            "",
            "not a key",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
        ] {
            let err = private_key_from_pem(bad).unwrap_err();
            assert!(
                matches!(err, KeyError::MalformedPrivateKey(_)),
                "{bad}: {err}"
            );
            assert!(err.to_string().contains("PKCS#8"));
        }
    }
}
