//! AgentMesh trust, pure: the scoring model ([`score`]), the cap on sidecar credit
//! ([`credit`]), policy evaluation ([`policy`]), behaviour baselines ([`baseline`]), the
//! audit hash chain ([`audit`]), and the rule that turns probe windows and sidecar outcomes
//! into signals, anomalies, violations and status writes ([`standing`]; sidecar batches are
//! fresh and used once: [`replay`]).
//!
//! No Kubernetes, no async runtime, no I/O, no clock: time is an input
//! ([`agentmesh_identity::Timestamp`]), so the same inputs always give the same outputs and
//! everything is tested in-process. `crates/api` converts a `TrustPolicySpec` into
//! [`policy::PolicySpec`] and compiles it.

pub mod audit;
pub mod baseline;
pub mod credit;
pub mod defaults;
pub mod policy;
pub mod replay;
pub mod score;
pub mod standing;
pub mod window;

pub use agentmesh_identity::Timestamp;
pub use credit::{CreditBudget, CreditCap};
pub use policy::{CallKind, Decision, Effect, Policy, PolicyError, PolicySpec, canonical_name};
pub use score::{PersistedScore, Signal, Tier, TrustConfig, TrustState};
pub use standing::Standing;
pub use window::WindowCounts;
