//! The AgentMesh API: the three custom resources of group `agentmesh.io`, version `v1alpha1`,
//! and the names (labels, annotations, ports, environment variables, metrics) that every
//! component shares.
//!
//! The CRD manifests under `crds/` are generated from these types ([`crd::all`]) and a test
//! fails when the committed files drift from them.

pub mod common;
pub mod convert;
pub mod crd;
pub mod identity;
pub mod meshlogic;
pub mod metrics;
pub mod names;
pub mod policy;
pub mod settings;
pub mod wire;

pub use common::{Conditions, TrustTier};
pub use identity::{AgentIdentity, AgentIdentitySpec, AgentIdentityStatus};
pub use meshlogic::{MeshLogicAgent, MeshLogicAgentSpec, MeshLogicAgentStatus};
pub use policy::{TrustPolicy, TrustPolicySpec, TrustPolicyStatus};
