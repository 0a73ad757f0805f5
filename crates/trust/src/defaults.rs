//! Defaults, the seed's values; the CRD (`crates/api/src/policy.rs`) uses the same ones and a
//! test there checks that they agree.

pub const INITIAL_SCORE: i32 = 800;
pub const DECAY_RATE_POINTS_PER_HOUR: f64 = 2.0;
pub const DECAY_FLOOR: i32 = 100;
pub const MIN_THRESHOLD: i32 = 300;
pub const MAX_DELEGATION_DEPTH: u32 = 5;

pub const COMPLIANT_ACTIVITY_REWARD: i32 = 1;
pub const SUCCESSFUL_HANDSHAKE_REWARD: i32 = 2;
pub const FAILED_HANDSHAKE_PENALTY: i32 = 25;
pub const DENIED_CALL_PENALTY: i32 = 10;
pub const VIOLATION_PENALTY: i32 = 50;

pub const NEW_EXECUTABLE_PENALTY: i32 = 20;
pub const NEW_DESTINATION_PENALTY: i32 = 10;
pub const SENSITIVE_WRITE_PENALTY: i32 = 50;
/// A probe window whose items were not all seen (the list truncated, events lost to a full
/// ring buffer): as much as one new executable, since any of them may have been one.
pub const UNOBSERVED_PENALTY: i32 = 20;
pub const SENSITIVE_PATHS: [&str; 6] = [
    "/etc",
    "/root",
    "/boot",
    "/usr/bin",
    "/usr/sbin",
    "/var/run/secrets",
];
pub const LEARNING_PERIOD_SECONDS: i32 = 300;

pub const RATE_LIMIT_PERIOD_SECONDS: i32 = 60;
