//! `AgentIdentity`: who an agent is (key pair, DID, capabilities, delegation) and how far it is
//! trusted right now.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Conditions, TrustTier, conditions_schema};

/// Which pods are an agent, what it may do, and who delegated it.
// Each printcolumn(...) repeats `type_ = "..."`, which clippy takes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "agentmesh.io",
    version = "v1alpha1",
    kind = "AgentIdentity",
    plural = "agentidentities",
    singular = "agentidentity",
    shortname = "agentid",
    category = "agentmesh",
    namespaced,
    status = "AgentIdentityStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "An AI agent's verifiable identity: an Ed25519 key pair (the private key only in a Secret), a DID, capabilities, an optional delegation from a parent identity, and the live trust score computed from what the agent does.",
    printcolumn(name = "DID", type_ = "string", json_path = ".status.did", description = "Decentralized identifier of the agent"),
    printcolumn(name = "SCORE", type_ = "integer", json_path = ".status.trustScore", description = "Trust score, 0-1000"),
    printcolumn(name = "TIER", type_ = "string", json_path = ".status.tier", description = "Trust tier"),
    printcolumn(name = "PODS", type_ = "integer", json_path = ".status.podsMatched", description = "Pods running as this identity"),
    printcolumn(name = "QUARANTINED", type_ = "boolean", json_path = ".status.quarantined", priority = 1, description = "Below the policy's minimum score"),
    printcolumn(name = "AGE", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("!has(self.spec.delegation) || self.spec.delegation.parent != self.metadata.name").message("spec.delegation.parent must name another AgentIdentity, not this one").field_path(".spec.delegation.parent"),
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.delegation) || !has(self.capabilities) || size(self.capabilities) == 0").message("a delegated identity takes its capabilities from spec.delegation.capabilities: leave spec.capabilities empty").field_path(".capabilities"))]
#[x_kube(validation = Rule::new("!has(self.selector) || (has(self.selector.matchLabels) && size(self.selector.matchLabels) > 0) || (has(self.selector.matchExpressions) && size(self.selector.matchExpressions) > 0)").message("spec.selector must select by at least one label or expression (an empty selector would capture every pod of the account)").field_path(".selector"))]
pub struct AgentIdentitySpec {
    /// Pods that run as this agent, among the pods of its ServiceAccount. Defaults to the pods
    /// labelled `agentmesh.io/identity: <name of this AgentIdentity>` (or, without that label,
    /// whose ServiceAccount has this name). When set, it selects at least by one label or
    /// expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,

    /// The ServiceAccount whose pods may run as this agent: a pod of another account is never
    /// this agent's, whatever its labels say (the webhook refuses to create it, the operator
    /// does not count it, its sidecar gets no configuration). Defaults to the name of this
    /// AgentIdentity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub service_account_name: Option<String>,

    /// What the agent may do, each `action:resource[:qualifier]`; `*` alone grants everything and
    /// a trailing `*` matches any suffix (`read:*`, `tools:search:*`). A delegated identity takes
    /// its capabilities from `delegation.capabilities` and leaves this empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(regex(pattern = crate::common::CAPABILITY_PATTERN), length(max = 253)),
        extend("x-kubernetes-list-type" = "set")
    )]
    pub capabilities: Vec<String>,

    /// Delegation from a parent identity in the same namespace: this agent acts on the parent's
    /// behalf with a subset of the parent's capabilities, until the delegation expires. The
    /// parent must list this identity in its `delegates`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegation: Option<Delegation>,

    /// The AgentIdentities of this namespace that may name this one as their
    /// `delegation.parent`. No other identity gets a link signed with this identity's key, and
    /// taking a name off the list revokes the link that identity holds. Empty or absent: this
    /// identity delegates to no one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(
            regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"),
            length(min = 1, max = 253)
        ),
        extend("x-kubernetes-list-type" = "set")
    )]
    pub delegates: Vec<String>,

    /// The agent's own Ed25519 public key (base64 of the 32 key bytes). When set, the operator
    /// creates no key Secret: the agent holds its private key itself. When absent, the operator
    /// generates a key pair and keeps the private key in a Secret owned by this identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::common::PUBLIC_KEY_PATTERN))]
    pub public_key: Option<String>,
}

impl AgentIdentity {
    /// The ServiceAccount whose pods may run as this identity: `spec.serviceAccountName`, else
    /// the identity's name.
    pub fn service_account(&self) -> &str {
        self.spec
            .service_account_name
            .as_deref()
            .or(self.metadata.name.as_deref())
            .unwrap_or_default()
    }
}

/// A delegation from a parent identity. Verified link by link by the operator; the result is the
/// `DelegationValid` condition.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Delegation {
    /// Name of the parent AgentIdentity, in the same namespace.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub parent: String,

    /// Capabilities delegated to this agent: at least one, each a subset of what the parent
    /// holds (a delegation only narrows).
    #[schemars(
        length(min = 1, max = 64),
        inner(regex(pattern = crate::common::CAPABILITY_PATTERN), length(max = 253)),
        extend("x-kubernetes-list-type" = "set")
    )]
    pub capabilities: Vec<String>,

    /// When the delegation stops being valid (RFC 3339). No expiry when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
}

/// Observed state of an AgentIdentity, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentIdentityStatus {
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Decentralized identifier: `did:mesh:` and the first 32 hex digits of sha256(public key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::common::DID_PATTERN))]
    pub did: Option<String>,

    /// The Ed25519 public key in force (base64 of the 32 key bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::common::PUBLIC_KEY_PATTERN))]
    pub public_key: Option<String>,

    /// Name of the Secret that holds the private key (key `private-key`), when the operator
    /// manages the key: in the operator's own namespace, not the identity's (the sidecars of
    /// the identity's pods fetch the key from the operator's trust API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_secret_name: Option<String>,

    /// Current trust score, 0 (none) to 1000 (full).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub trust_score: Option<i32>,

    /// Trust tier of the current score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<TrustTier>,

    /// True while the score is below the governing policy's minimum threshold: tool calls are
    /// denied and, at safety tier 3, the agent's pods are blocked in the kernel.
    #[serde(default)]
    pub quarantined: bool,

    /// When the score was last brought up to date (signals applied and decay accounted).
    /// Decay is only ever applied for time after this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_updated_at: Option<Time>,

    /// Links from the root identity down to this one; 0 for an identity without delegation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 32))]
    pub delegation_depth: Option<i32>,

    /// The verified delegation chain, root first, each link signed by its parent's key, so that
    /// peers can check it without trusting the operator's word.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub delegation_chain: Vec<SignedDelegationLink>,

    /// Number of running pods that are this agent.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub pods_matched: i32,

    /// What the agent did in the last reporting window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behavior: Option<BehaviorSummary>,

    /// The last decision taken on what the agent did: a tool call allowed or denied by its
    /// sidecar, a handshake, a behaviour anomaly or a refusal in the kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_decision: Option<DecisionRecord>,

    /// `KeyReady`, `Trusted`, `Quarantined`, `DelegationValid`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(transform = conditions_schema)]
    pub conditions: Conditions,
}

/// One link of a delegation chain: the issuer, at `issuedAt`, grants the subject these
/// capabilities until the expiry, signed with the issuer's key.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignedDelegationLink {
    /// DID of the delegating (parent) identity.
    #[schemars(regex(pattern = crate::common::DID_PATTERN))]
    pub issuer: String,
    /// DID of the delegated (child) identity.
    #[schemars(regex(pattern = crate::common::DID_PATTERN))]
    pub subject: String,
    /// Capabilities granted by this link.
    #[schemars(length(max = 64), inner(length(max = 253)))]
    pub capabilities: Vec<String>,
    /// When the issuer signed the link (RFC 3339). Kept while the link stays the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<Time>,
    /// Expiry of the link (RFC 3339), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// Ed25519 signature by the issuer over the link's canonical encoding, base64.
    #[schemars(length(max = 128))]
    pub signature: String,
}

/// Counts of one reporting window, and the most recent anomalies.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BehaviorSummary {
    /// Start of the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_start: Option<Time>,
    /// End of the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_end: Option<Time>,
    /// Processes executed.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub execs: i64,
    /// Files opened.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub file_opens: i64,
    /// Outbound connections attempted.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub connects: i64,
    /// MCP tool calls proxied by the sidecar.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub tool_calls: i64,
    /// Tool calls denied by policy.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub denied_calls: i64,
    /// Policy violations (denied calls, denied behaviour, failed handshakes).
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub violations: i64,
    /// Behaviour anomalies.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub anomalies: i64,
    /// The most recent anomalies, newest first, at most 10.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub recent_anomalies: Vec<AnomalyRecord>,
}

/// One decision on what an agent did, as `agentmesh trust status` shows it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DecisionRecord {
    /// When the operator applied it.
    pub at: Time,
    /// What was decided.
    pub decision: Decision,
    /// What it was about: `tools/call echo`, `peer:did:mesh:…`, `exec /usr/bin/curl`, …
    #[schemars(length(max = 512))]
    pub subject: String,
    /// Why: the policy rule that decided, the handshake's failure, the anomaly and its penalty.
    #[schemars(length(max = 512))]
    pub reason: String,
}

/// Kinds of decision.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    /// Allowed: a tool call or a handshake.
    Allow,
    /// Denied by the sidecar: a tool call or a handshake.
    Deny,
    /// Shadow mode: would have been denied, was allowed.
    WouldDeny,
    /// Behaviour outside the identity's baseline, or a behaviour rule matched: trust lowered.
    Anomaly,
    /// Refused in the kernel (safety tier 3): a connect or an exec.
    Blocked,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::WouldDeny => "would-deny",
            Self::Anomaly => "anomaly",
            Self::Blocked => "blocked",
        }
    }
}

/// One anomaly: behaviour outside what the identity has been seen doing, or a matched rule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnomalyRecord {
    /// When it was observed.
    pub observed_at: Time,
    /// What kind of anomaly.
    pub kind: AnomalyKind,
    /// What was seen: the executable, destination or path.
    #[schemars(length(max = 512))]
    pub detail: String,
    /// Trust points it cost.
    #[schemars(range(min = 0, max = 1000))]
    pub penalty: i32,
    /// The pod it came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

/// Kinds of behaviour anomaly.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AnomalyKind {
    /// An executable this identity had not run before.
    NewExecutable,
    /// A network destination this identity had not connected to before.
    NewDestination,
    /// A write under a sensitive path.
    SensitiveWrite,
    /// A behaviour rule of the policy matched.
    RuleMatch,
    /// An upstream MCP tool whose description or input schema changed after it was first seen
    /// (reported by the sidecar).
    ToolChanged,
    /// A probe window not seen whole: more items than a report lists, or events lost to a full
    /// ring buffer (`spec.behavior.anomalies.unobserved`).
    Unobserved,
}
