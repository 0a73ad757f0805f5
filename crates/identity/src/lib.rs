//! AgentMesh identity, pure: Ed25519 keys and DIDs, the mutual handshake, per-request session
//! proofs, delegation chains and signed report batches.
//!
//! Nothing here reads a clock, a random source or the network: time ([`Timestamp`]) and
//! randomness (nonces, challenge ids, an RNG for key generation) are inputs, so every protocol
//! step is deterministic and tested in-process. The one exception is [`keyfile`], a tiny,
//! isolated helper that reads a private key from a file or from `AGENTMESH_AGENT_PRIVATE_KEY`
//! for the binaries.
//!
//! Keys and trust scores of peers always come from a [`Registry`] (filled by the operator from
//! AgentIdentity status), never from what a peer claims about itself.

pub mod capability;
pub mod delegation;
mod encode;
pub mod handshake;
pub mod keyfile;
pub mod keys;
pub mod proof;
pub mod registry;
pub mod report;
pub mod time;

pub use capability::{Capability, CapabilityError};
pub use delegation::{DelegationError, DelegationLink, VerifiedChain};
pub use handshake::{HandshakeError, Session};
pub use keys::{Did, KeyError};
pub use registry::{RegisteredIdentity, Registry};
pub use report::{REPORT_DOMAIN, ReportSignatureError, sign_report, verify_report};
pub use time::Timestamp;

/// Re-exported so that callers name the same key types as this crate.
pub use ed25519_dalek::{SigningKey, VerifyingKey};
