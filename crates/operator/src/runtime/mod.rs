//! What every replica runs around the product's logic: leader election, HTTP serving, logging,
//! the CRD check at start-up, and the shutdown signal.

pub mod crd_check;
pub mod http;
pub mod leader;
pub mod logging;

pub use agentmesh_runtime::shutdown_signal;
