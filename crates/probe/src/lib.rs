//! `meshlogic-probe`: the AgentMesh node probe. It observes what the processes of the pods on
//! its node exec, open and connect to (CO-RE eBPF at safety tiers 2 and 3, `/proc` polling at
//! tier 1), reports it per pod and per window to the operator's trust API, exports noised
//! telemetry, and at tier 3 refuses denied connects and kills denied executables in the kernel.

pub mod aggregate;
pub mod counters;
pub mod dynamodb;
pub mod enforce;
pub mod files;
pub mod http;
pub mod kernel;
pub mod metrics;
pub mod pods;
pub mod privacy;
pub mod report;
pub mod retry;
pub mod run;
pub mod shared;
pub mod status;
pub mod telemetry;
pub mod usermode;

// Built in meshlogic-probe-core, which needs no kernel (and is fuzzed).
pub use meshlogic_probe_core::{cgroup, config};
