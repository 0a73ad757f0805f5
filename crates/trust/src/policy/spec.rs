//! The policy as data: everything a `TrustPolicySpec` says (but its selector), with the same
//! defaults. `crates/api` fills it from the CRD; [`crate::Policy::compile`] checks and compiles
//! it.

use serde::{Deserialize, Serialize};

use crate::defaults;
use crate::score::SignalWeights;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Mode {
    #[default]
    Enforce,
    /// Record what would be denied, never deny.
    Shadow,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Preset {
    /// Deny shell-, exec- and eval-like tools, allow the rest.
    #[default]
    Standard,
    /// Allow read-only tools only.
    Strict,
    /// Allow every tool.
    Permissive,
}

impl Preset {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Standard => "standard",
            Self::Strict => "strict",
            Self::Permissive => "permissive",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicySpec {
    pub mode: Mode,
    pub preset: Preset,
    pub trust: TrustSpec,
    pub max_delegation_depth: i32,
    pub tools: ToolSpec,
    pub allowed_peers: Vec<String>,
    pub min_peer_score: Option<i32>,
    pub behavior: BehaviorSpec,
    pub quarantine: QuarantineSpec,
}

impl Default for PolicySpec {
    fn default() -> Self {
        Self {
            mode: Mode::default(),
            preset: Preset::default(),
            trust: TrustSpec::default(),
            max_delegation_depth: defaults::MAX_DELEGATION_DEPTH as i32,
            tools: ToolSpec::default(),
            allowed_peers: Vec::new(),
            min_peer_score: None,
            behavior: BehaviorSpec::default(),
            quarantine: QuarantineSpec::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrustSpec {
    pub initial_score: i32,
    /// Points per hour.
    pub decay_rate: f64,
    pub decay_floor: i32,
    pub min_threshold: i32,
    pub signals: SignalWeights,
}

impl Default for TrustSpec {
    fn default() -> Self {
        Self {
            initial_score: defaults::INITIAL_SCORE,
            decay_rate: defaults::DECAY_RATE_POINTS_PER_HOUR,
            decay_floor: defaults::DECAY_FLOOR,
            min_threshold: defaults::MIN_THRESHOLD,
            signals: SignalWeights::default(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolSpec {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    pub rules: Vec<ToolRuleSpec>,
    pub rate_limit: Option<RateLimitSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolRuleSpec {
    pub tool: String,
    pub min_score: Option<i32>,
    pub rate_limit: Option<RateLimitSpec>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitSpec {
    pub requests: i32,
    pub period_seconds: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BehaviorAction {
    Allow,
    Alert,
    Deny,
}

impl BehaviorAction {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Alert => "alert",
            Self::Deny => "deny",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FileAccess {
    Read,
    Write,
    #[default]
    Any,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecRuleSpec {
    pub path: String,
    pub action: BehaviorAction,
    pub penalty: i32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileRuleSpec {
    pub path_prefix: String,
    pub access: FileAccess,
    pub action: BehaviorAction,
    pub penalty: i32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkRuleSpec {
    pub cidr: String,
    pub ports: Vec<i32>,
    pub action: BehaviorAction,
    pub penalty: i32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BehaviorSpec {
    pub exec: Vec<ExecRuleSpec>,
    pub files: Vec<FileRuleSpec>,
    pub network: Vec<NetworkRuleSpec>,
    pub anomalies: AnomalySpec,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnomalySpec {
    pub new_executable: i32,
    pub new_destination: i32,
    pub sensitive_write: i32,
    pub unobserved: i32,
    pub sensitive_paths: Vec<String>,
    pub learning_period_seconds: i32,
}

impl Default for AnomalySpec {
    fn default() -> Self {
        Self {
            new_executable: defaults::NEW_EXECUTABLE_PENALTY,
            new_destination: defaults::NEW_DESTINATION_PENALTY,
            sensitive_write: defaults::SENSITIVE_WRITE_PENALTY,
            unobserved: defaults::UNOBSERVED_PENALTY,
            sensitive_paths: defaults::SENSITIVE_PATHS.map(String::from).to_vec(),
            learning_period_seconds: defaults::LEARNING_PERIOD_SECONDS,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuarantineSpec {
    pub deny_tools: bool,
    pub block_network: bool,
}

impl Default for QuarantineSpec {
    fn default() -> Self {
        Self {
            deny_tools: true,
            block_network: true,
        }
    }
}
