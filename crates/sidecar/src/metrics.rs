//! `/metrics` on 9091: the seed's names where they fit, plus requests by method and decision,
//! upstream latency, rate-limit refusals and the report pipeline.

use std::sync::Arc;

use agentmesh_api::names::metrics as seed;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The MCP method, or `other` (kept to a fixed set: a client cannot grow the metric).
    pub method: &'static str,
    /// `allow`, `deny`, `would-deny`, `forwarded` (not a decided call) or `refused` (bad request).
    pub decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ViolationLabels {
    pub mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    pub rule: String,
}

pub use agentmesh_api::metrics::ExactCount;

#[derive(Debug)]
pub struct Metrics {
    pub handshakes: Family<StatusLabels, Counter>,
    pub violations: Family<ViolationLabels, ExactCount>,
    pub request_duration: Family<MethodLabels, Histogram>,
    pub trust_score: Gauge,
    pub registry_size: Gauge,
    pub requests: Family<RequestLabels, Counter>,
    pub upstream_latency: Histogram,
    pub upstream_errors: Counter,
    pub rate_limited: Family<RuleLabels, Counter>,
    pub tool_changes: Counter,
    pub list_items_hidden: Counter,
    pub reports_sent: Counter,
    pub report_failures: Counter,
    pub report_drops: Counter,
    pub policy_from_operator: Gauge,
}

fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

const KNOWN_METHODS: &[&str] = &[
    "initialize",
    "ping",
    "tools/call",
    "tools/list",
    "prompts/get",
    "prompts/list",
    "resources/read",
    "resources/list",
    "resources/templates/list",
    "resources/subscribe",
    "subscriptions/listen",
    "completion/complete",
    "logging/setLevel",
    "notifications/initialized",
    "notifications/cancelled",
];

/// Methods kept as label values; anything else is `other`, a message without a method
/// `response`.
pub fn method_label(method: Option<&str>) -> &'static str {
    match method {
        Some(m) => KNOWN_METHODS
            .iter()
            .find(|known| **known == m)
            .copied()
            .unwrap_or("other"),
        None => "response",
    }
}

impl Metrics {
    pub fn new() -> (Arc<Self>, Registry) {
        let metrics = Self {
            handshakes: Family::default(),
            violations: Family::default(),
            request_duration: Family::new_with_constructor(latency),
            trust_score: Gauge::default(),
            registry_size: Gauge::default(),
            requests: Family::default(),
            upstream_latency: latency(),
            upstream_errors: Counter::default(),
            rate_limited: Family::default(),
            tool_changes: Counter::default(),
            list_items_hidden: Counter::default(),
            reports_sent: Counter::default(),
            report_failures: Counter::default(),
            report_drops: Counter::default(),
            policy_from_operator: Gauge::default(),
        };
        let mut r = Registry::default();
        // prometheus-client appends `_total` to counters: this is `agentmesh_handshake_total`.
        r.register(
            seed::HANDSHAKE_TOTAL.trim_end_matches("_total"),
            "Mutual handshakes with peer agents, by status",
            metrics.handshakes.clone(),
        );
        r.register(
            seed::POLICY_VIOLATION_COUNT,
            "Calls the policy denied or would deny, by mode (monotonic; typed unknown to keep the seed's exact name)",
            metrics.violations.clone(),
        );
        r.register_with_unit(
            seed::API_REQUEST_DURATION_SECONDS.trim_end_matches("_seconds"),
            "Latency of the requests the proxy answered, by MCP method",
            Unit::Seconds,
            metrics.request_duration.clone(),
        );
        r.register(
            seed::TRUST_SCORE_GAUGE,
            "This agent's trust score as the sidecar enforces it (0-1000)",
            metrics.trust_score.clone(),
        );
        r.register(
            seed::REGISTRY_SIZE,
            "Identities in the registry the operator sent (peers' keys and scores)",
            metrics.registry_size.clone(),
        );
        r.register(
            "agentmesh_sidecar_requests",
            "MCP messages through the proxy, by method and decision",
            metrics.requests.clone(),
        );
        r.register_with_unit(
            "agentmesh_sidecar_upstream_latency",
            "Time until the upstream MCP server answered (response headers)",
            Unit::Seconds,
            metrics.upstream_latency.clone(),
        );
        r.register(
            "agentmesh_sidecar_upstream_errors",
            "Requests the upstream could not be reached for",
            metrics.upstream_errors.clone(),
        );
        r.register(
            "agentmesh_sidecar_rate_limited",
            "Calls refused by a rate limit, by rule",
            metrics.rate_limited.clone(),
        );
        r.register(
            "agentmesh_sidecar_tool_changes",
            "Tools whose description or input schema changed after they were first listed",
            metrics.tool_changes.clone(),
        );
        r.register(
            "agentmesh_sidecar_list_items_hidden",
            "Tools, prompts and resources removed from lists by the policy",
            metrics.list_items_hidden.clone(),
        );
        r.register(
            "agentmesh_sidecar_reports_sent",
            "Signed report batches the operator accepted",
            metrics.reports_sent.clone(),
        );
        r.register(
            "agentmesh_sidecar_report_failures",
            "Report batches that failed to send (retried)",
            metrics.report_failures.clone(),
        );
        r.register(
            "agentmesh_sidecar_report_drops",
            "Outcomes dropped because the report queue was full",
            metrics.report_drops.clone(),
        );
        r.register(
            "agentmesh_sidecar_policy_from_operator",
            "1 once the operator's policy is in force, 0 while the AGENTMESH_POLICY preset is",
            metrics.policy_from_operator.clone(),
        );
        (Arc::new(metrics), r)
    }
}

/// The registry in the OpenMetrics text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).expect("writing to a String");
    out
}
