//! `TrustPolicy`: which tools an agent may call, which peers it may talk to, what behaviour costs
//! it trust, and what happens below the minimum score.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use agentmesh_trust::defaults;

use crate::common::{Conditions, EXEC_PATH_PATTERN, NAME_PATTERN, PATH_PATTERN, conditions_schema};

/// Governs the AgentIdentities it selects.
// Each printcolumn(...) repeats `type_ = "..."`, which clippy takes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "agentmesh.io",
    version = "v1alpha1",
    kind = "TrustPolicy",
    plural = "trustpolicies",
    singular = "trustpolicy",
    shortname = "tp",
    category = "agentmesh",
    namespaced,
    status = "TrustPolicyStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "Policy over the AgentIdentities it selects: trust settings, MCP tool rules, allowed peers and behaviour rules, enforced or only recorded (shadow mode).",
    printcolumn(
        name = "MODE",
        type_ = "string",
        json_path = ".spec.mode",
        description = "enforce or shadow"
    ),
    printcolumn(
        name = "MIN-SCORE",
        type_ = "integer",
        json_path = ".spec.trust.minThreshold",
        description = "Score below which an identity is quarantined"
    ),
    printcolumn(
        name = "AGENTS",
        type_ = "integer",
        json_path = ".status.identitiesMatched",
        description = "AgentIdentities selected"
    ),
    printcolumn(
        name = "VIOLATIONS",
        type_ = "integer",
        json_path = ".status.violations",
        description = "Violations counted"
    ),
    printcolumn(
        name = "PRESET",
        type_ = "string",
        json_path = ".spec.preset",
        priority = 1,
        description = "Preset the rules refine"
    ),
    printcolumn(
        name = "AGE",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct TrustPolicySpec {
    /// AgentIdentities in this namespace that the policy governs, by their labels. An empty
    /// selector selects every AgentIdentity of the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,

    /// `enforce` denies what the policy denies; `shadow` only records what would have been
    /// denied ("would deny") and never denies.
    #[serde(default)]
    pub mode: PolicyMode,

    /// Starting point that the rules below refine: `standard` denies shell, exec and eval-like
    /// tools and allows the rest; `strict` allows read-only tools only; `permissive` allows
    /// every tool.
    #[serde(default)]
    pub preset: Preset,

    /// How the trust score starts, decays and what it costs to fall below the threshold.
    #[serde(default)]
    pub trust: TrustSettings,

    /// Limits on delegation chains.
    #[serde(default)]
    pub delegation: DelegationSettings,

    /// MCP tool rules.
    #[serde(default)]
    pub tools: ToolRules,

    /// Peers the agent may talk to (after a successful handshake). Each entry is an
    /// AgentIdentity name of this namespace, `namespace/name`, or a DID; `*` matches any run of
    /// characters. Empty: any registered identity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 256),
        inner(regex(pattern = NAME_PATTERN), length(min = 1, max = 253)),
        extend("x-kubernetes-list-type" = "set")
    )]
    pub allowed_peers: Vec<String>,

    /// Minimum trust score a peer must have for the agent to talk to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub min_peer_score: Option<i32>,

    /// Rules over what the agent's processes do: executables, files and network destinations,
    /// and what behaviour outside its baseline costs.
    #[serde(default)]
    pub behavior: BehaviorRules,

    /// What quarantine (a score below `trust.minThreshold`) does.
    #[serde(default)]
    pub quarantine: QuarantineSettings,

    /// MCP servers the governed agents reach by name through their sidecar:
    /// `http://localhost:8081/servers/<name>/<path>` is forwarded to `<url>/<path>` (for example
    /// `/servers/search/mcp`, or `/servers/search/sse` for the legacy HTTP+SSE transport), with
    /// every call judged by this policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub mcp_servers: Vec<McpServer>,
}

/// An upstream MCP server, declared for the sidecars of the governed agents.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct McpServer {
    /// Name in the sidecar's path `/servers/<name>/`: a DNS label.
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
        length(min = 1, max = 63)
    )]
    pub name: String,
    /// Base URL the path after `/servers/<name>` is appended to (`http` or `https`), e.g.
    /// `http://search.tools.svc:8080`.
    #[schemars(
        regex(pattern = r"^https?://[^\s/?#]+(/[^\s?#]*)?$"),
        length(min = 8, max = 2048)
    )]
    pub url: String,
    /// When the server is another agent behind its sidecar: that agent's AgentIdentity (a name
    /// of this namespace, or `namespace/name`). The two sidecars then run the mutual handshake
    /// (keys and scores from the registry, never from the peer) and every request carries a
    /// proof bound to the session, method, path and body; `url` is the peer sidecar's inbound
    /// route, e.g. `http://summarizer.agents.svc:8081/inbound`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?/)?[a-z0-9]([-.a-z0-9]*[a-z0-9])?$"),
        length(min = 1, max = 317)
    )]
    pub agent: Option<String>,
}

/// Enforcement mode.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum PolicyMode {
    #[default]
    Enforce,
    Shadow,
}

/// A policy preset.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Preset {
    #[default]
    Standard,
    Strict,
    Permissive,
}

/// Trust score settings. Defaults are the seed's: initial 800, decay 2.0 points per hour, floor
/// 100, minimum threshold 300.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.decayFloor < self.minThreshold").message("decayFloor must be lower than minThreshold").field_path(".decayFloor"),
    validation = Rule::new("self.minThreshold <= self.initialScore").message("minThreshold must not exceed initialScore").field_path(".minThreshold"),
)]
pub struct TrustSettings {
    /// Score of a new identity (capped by a delegating parent's score).
    #[serde(default = "default_initial_score")]
    #[schemars(range(min = 0, max = 1000))]
    pub initial_score: i32,

    /// Points lost per hour without positive signals, linearly, down to the floor.
    #[serde(default = "default_decay_rate")]
    #[schemars(range(min = 0.0, max = 1000.0))]
    pub decay_rate: f64,

    /// Decay never takes the score below this.
    #[serde(default = "default_decay_floor")]
    #[schemars(range(min = 0, max = 1000))]
    pub decay_floor: i32,

    /// Below this score the identity is quarantined.
    #[serde(default = "default_min_threshold")]
    #[schemars(range(min = 0, max = 1000))]
    pub min_threshold: i32,

    /// Points gained or lost per signal.
    #[serde(default)]
    pub signals: SignalWeights,
}

impl Default for TrustSettings {
    fn default() -> Self {
        Self {
            initial_score: default_initial_score(),
            decay_rate: default_decay_rate(),
            decay_floor: default_decay_floor(),
            min_threshold: default_min_threshold(),
            signals: SignalWeights::default(),
        }
    }
}

fn default_initial_score() -> i32 {
    defaults::INITIAL_SCORE
}
fn default_decay_rate() -> f64 {
    defaults::DECAY_RATE_POINTS_PER_HOUR
}
fn default_decay_floor() -> i32 {
    defaults::DECAY_FLOOR
}
fn default_min_threshold() -> i32 {
    defaults::MIN_THRESHOLD
}

/// Points each signal adds (rewards) or removes (penalties).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignalWeights {
    /// Reward for a compliant, allowed tool call.
    #[serde(default = "default_compliant_reward")]
    #[schemars(range(min = 0, max = 100))]
    pub compliant_activity: i32,
    /// Reward for a successful mutual handshake.
    #[serde(default = "default_handshake_reward")]
    #[schemars(range(min = 0, max = 100))]
    pub successful_handshake: i32,
    /// Penalty for a failed handshake.
    #[serde(default = "default_failed_handshake_penalty")]
    #[schemars(range(min = 0, max = 1000))]
    pub failed_handshake: i32,
    /// Penalty for a tool call denied by policy.
    #[serde(default = "default_denied_call_penalty")]
    #[schemars(range(min = 0, max = 1000))]
    pub denied_call: i32,
    /// Penalty for a policy violation other than a denied call.
    #[serde(default = "default_violation_penalty")]
    #[schemars(range(min = 0, max = 1000))]
    pub violation: i32,
}

impl Default for SignalWeights {
    fn default() -> Self {
        Self {
            compliant_activity: default_compliant_reward(),
            successful_handshake: default_handshake_reward(),
            failed_handshake: default_failed_handshake_penalty(),
            denied_call: default_denied_call_penalty(),
            violation: default_violation_penalty(),
        }
    }
}

fn default_compliant_reward() -> i32 {
    defaults::COMPLIANT_ACTIVITY_REWARD
}
fn default_handshake_reward() -> i32 {
    defaults::SUCCESSFUL_HANDSHAKE_REWARD
}
fn default_failed_handshake_penalty() -> i32 {
    defaults::FAILED_HANDSHAKE_PENALTY
}
fn default_denied_call_penalty() -> i32 {
    defaults::DENIED_CALL_PENALTY
}
fn default_violation_penalty() -> i32 {
    defaults::VIOLATION_PENALTY
}

/// Delegation limits.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DelegationSettings {
    /// Longest chain of delegations accepted, root to leaf.
    #[serde(default = "default_max_depth")]
    #[schemars(range(min = 0, max = 16))]
    pub max_depth: i32,
}

impl Default for DelegationSettings {
    fn default() -> Self {
        Self {
            max_depth: default_max_depth(),
        }
    }
}

fn default_max_depth() -> i32 {
    defaults::MAX_DELEGATION_DEPTH as i32
}

/// MCP tool rules, applied on top of the preset: a deny wins over an allow.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ToolRules {
    /// Tools allowed in addition to the preset's, by name; `*` matches any run of characters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 256),
        inner(regex(pattern = NAME_PATTERN), length(min = 1, max = 253)),
        extend("x-kubernetes-list-type" = "set")
    )]
    pub allow: Vec<String>,

    /// Tools denied whatever the preset says, by name; `*` matches any run of characters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 256),
        inner(regex(pattern = NAME_PATTERN), length(min = 1, max = 253)),
        extend("x-kubernetes-list-type" = "set")
    )]
    pub deny: Vec<String>,

    /// Per-tool requirements: a minimum score, a rate limit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub rules: Vec<ToolRule>,

    /// Rate limit over all tool calls of one identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

/// Requirements for calling the tools a pattern matches.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.minScore) || has(self.rateLimit)").message("a tool rule needs minScore, rateLimit or both"))]
pub struct ToolRule {
    /// Tool name pattern; `*` matches any run of characters.
    #[schemars(regex(pattern = NAME_PATTERN), length(min = 1, max = 253))]
    pub tool: String,
    /// Minimum trust score to call the tool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub min_score: Option<i32>,
    /// Calls allowed per period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

/// At most `requests` calls per `periodSeconds`, per identity.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Calls allowed in one period.
    #[schemars(range(min = 1, max = 1_000_000))]
    pub requests: i32,
    /// Length of the period in seconds.
    #[serde(default = "default_period_seconds")]
    #[schemars(range(min = 1, max = 86_400))]
    pub period_seconds: i32,
}

fn default_period_seconds() -> i32 {
    defaults::RATE_LIMIT_PERIOD_SECONDS
}

/// Behaviour rules and anomaly costs.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BehaviorRules {
    /// Rules over executed programs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub exec: Vec<ExecRule>,
    /// Rules over opened files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub files: Vec<FileRule>,
    /// Rules over outbound connections.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub network: Vec<NetworkRule>,
    /// What behaviour outside the identity's baseline costs.
    #[serde(default)]
    pub anomalies: AnomalySettings,
}

/// What a behaviour rule does when it matches.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum BehaviorAction {
    /// Expected behaviour: no penalty, never an anomaly.
    Allow,
    /// Recorded as an anomaly and costs the penalty.
    Alert,
    /// Costs the penalty and, at safety tier 3 in enforce mode, is blocked in the kernel.
    Deny,
}

/// A rule over executed programs.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.action != 'allow' || self.penalty == 0").message("an allow rule cannot carry a penalty").field_path(".penalty"))]
pub struct ExecRule {
    /// Absolute path of the executable; a trailing `*` matches any suffix (`/usr/bin/*`). A `*`
    /// anywhere else is refused: the kernel (safety tier 3) matches exact paths and prefixes
    /// only. At most 239 bytes (the kernel's deny key).
    #[schemars(regex(pattern = EXEC_PATH_PATTERN), length(min = 1, max = 239))]
    pub path: String,
    /// What a match does.
    pub action: BehaviorAction,
    /// Trust points a match costs.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub penalty: i32,
}

/// How a file is opened.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum FileAccess {
    Read,
    Write,
    #[default]
    Any,
}

/// A rule over opened files.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.action != 'allow' || self.penalty == 0").message("an allow rule cannot carry a penalty").field_path(".penalty"))]
pub struct FileRule {
    /// Absolute path prefix: the rule matches this path and everything under it.
    #[schemars(regex(pattern = PATH_PATTERN), length(min = 1, max = 255))]
    pub path_prefix: String,
    /// Which opens match.
    #[serde(default)]
    pub access: FileAccess,
    /// What a match does.
    pub action: BehaviorAction,
    /// Trust points a match costs.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub penalty: i32,
}

/// A rule over outbound connections.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.action != 'allow' || self.penalty == 0").message("an allow rule cannot carry a penalty").field_path(".penalty"))]
pub struct NetworkRule {
    /// Destination network, IPv4 or IPv6 CIDR (`10.0.0.0/8`, `0.0.0.0/0`, `fd00::/8`).
    #[schemars(length(min = 1, max = 43))]
    #[x_kube(validation = Rule::new("isCIDR(self)").message("must be an IPv4 or IPv6 CIDR such as 10.0.0.0/8"))]
    pub cidr: String,
    /// Destination ports; empty: every port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(range(min = 1, max = 65535)))]
    pub ports: Vec<i32>,
    /// What a match does.
    pub action: BehaviorAction,
    /// Trust points a match costs.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub penalty: i32,
}

/// Costs of behaviour outside what the identity has been seen doing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnomalySettings {
    /// Penalty for running an executable not seen before.
    #[serde(default = "default_new_executable_penalty")]
    #[schemars(range(min = 0, max = 1000))]
    pub new_executable: i32,
    /// Penalty for connecting to a destination not seen before.
    #[serde(default = "default_new_destination_penalty")]
    #[schemars(range(min = 0, max = 1000))]
    pub new_destination: i32,
    /// Penalty for a write under one of `sensitivePaths`.
    #[serde(default = "default_sensitive_write_penalty")]
    #[schemars(range(min = 0, max = 1000))]
    pub sensitive_write: i32,
    /// Penalty for a probe window not seen whole: more distinct items than a report lists
    /// (256 per list), or events lost to a full ring buffer. Charged once per window, so that
    /// flooding the lists cannot hide what follows.
    #[serde(default = "default_unobserved_penalty")]
    #[schemars(range(min = 0, max = 1000))]
    pub unobserved: i32,
    /// Path prefixes where a write is an anomaly.
    #[serde(default = "default_sensitive_paths")]
    #[schemars(length(max = 64), inner(regex(pattern = PATH_PATTERN), length(min = 1, max = 255)))]
    pub sensitive_paths: Vec<String>,
    /// Seconds after an identity is first seen during which new behaviour is learned into its
    /// baseline without penalty.
    #[serde(default = "default_learning_seconds")]
    #[schemars(range(min = 0, max = 604_800))]
    pub learning_period_seconds: i32,
}

impl Default for AnomalySettings {
    fn default() -> Self {
        Self {
            new_executable: default_new_executable_penalty(),
            new_destination: default_new_destination_penalty(),
            sensitive_write: default_sensitive_write_penalty(),
            unobserved: default_unobserved_penalty(),
            sensitive_paths: default_sensitive_paths(),
            learning_period_seconds: default_learning_seconds(),
        }
    }
}

fn default_new_executable_penalty() -> i32 {
    defaults::NEW_EXECUTABLE_PENALTY
}
fn default_new_destination_penalty() -> i32 {
    defaults::NEW_DESTINATION_PENALTY
}
fn default_sensitive_write_penalty() -> i32 {
    defaults::SENSITIVE_WRITE_PENALTY
}
fn default_unobserved_penalty() -> i32 {
    defaults::UNOBSERVED_PENALTY
}
fn default_sensitive_paths() -> Vec<String> {
    defaults::SENSITIVE_PATHS.map(String::from).to_vec()
}
fn default_learning_seconds() -> i32 {
    defaults::LEARNING_PERIOD_SECONDS
}

/// What quarantine does to an identity.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuarantineSettings {
    /// Deny every MCP tool call of a quarantined identity.
    #[serde(default = "default_true")]
    pub deny_tools: bool,
    /// At safety tier 3, refuse the outbound connections of a quarantined identity's pods in
    /// the kernel.
    #[serde(default = "default_true")]
    pub block_network: bool,
}

impl Default for QuarantineSettings {
    fn default() -> Self {
        Self {
            deny_tools: true,
            block_network: true,
        }
    }
}

fn default_true() -> bool {
    true
}

/// Observed state of a TrustPolicy, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrustPolicyStatus {
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Version of the policy in force: a hash of its spec. Audit entries cover it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<String>,
    /// AgentIdentities this policy governs.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub identities_matched: i32,
    /// Violations counted since the policy was created.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub violations: i64,
    /// The most recent violation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_violation: Option<ViolationRecord>,
    /// `Accepted`, with the reason when the policy is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(transform = conditions_schema)]
    pub conditions: Conditions,
}

/// A violation of the policy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ViolationRecord {
    /// When it happened.
    pub observed_at: Time,
    /// The AgentIdentity that violated the policy.
    pub identity: String,
    /// The rule or preset that decided.
    #[schemars(length(max = 512))]
    pub rule: String,
    /// What was attempted.
    #[schemars(length(max = 1024))]
    pub detail: String,
    /// True when the policy was in shadow mode and the action was only recorded.
    #[serde(default)]
    pub shadow: bool,
}
