//! Prometheus metrics on port 9090: the seed's names exactly, plus what an operator of this
//! software needs (reconciles, admissions, reports, status writes).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use agentmesh_api::names::metrics as seed;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IdentityLabels {
    pub namespace: String,
    pub identity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ViolationLabels {
    pub namespace: String,
    pub identity: String,
    /// `enforce` or `shadow`.
    pub mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: String,
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub path: String,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

pub use agentmesh_api::metrics::ExactCount;

/// Every metric of the operator.
#[derive(Debug)]
pub struct Metrics {
    pub trust_score: Family<IdentityLabels, Gauge>,
    pub policy_violations: Family<ViolationLabels, ExactCount>,
    pub registry_size: Gauge,
    pub undecodable_objects: Family<KindLabels, Counter>,
    pub api_request_duration: Family<RequestLabels, Histogram>,
    pub reconciles: Family<ControllerLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Family<ControllerLabels, Histogram>,
    pub reports_accepted: Counter,
    pub reports_refused: Family<ReasonLabels, Counter>,
    pub status_writes: Counter,
    pub audit_entries: Counter,
    pub admissions: Family<ReasonLabels, Counter>,
    pub is_leader: Gauge,
    /// 1 while the audit store answers (always 1 with the memory backend).
    pub storage_up: Gauge,
    /// Audit records waiting for the store.
    pub audit_pending: Gauge,
    /// Audit records dropped because the buffer was full.
    pub audit_dropped: Counter,
    /// Audit entries the store accepted.
    pub audit_written: Counter,
    /// Appends refused because another writer had moved the chain's head.
    pub audit_conflicts: Counter,
    /// Entries deleted by retention.
    pub audit_pruned: Counter,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Metrics {
    pub fn new() -> (Arc<Self>, Registry) {
        let metrics = Self {
            trust_score: Family::default(),
            policy_violations: Family::default(),
            registry_size: Gauge::default(),
            undecodable_objects: Family::default(),
            api_request_duration: Family::new_with_constructor(latency_histogram),
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Family::new_with_constructor(latency_histogram),
            reports_accepted: Counter::default(),
            reports_refused: Family::default(),
            status_writes: Counter::default(),
            audit_entries: Counter::default(),
            admissions: Family::default(),
            is_leader: Gauge::default(),
            storage_up: Gauge::default(),
            audit_pending: Gauge::default(),
            audit_dropped: Counter::default(),
            audit_written: Counter::default(),
            audit_conflicts: Counter::default(),
            audit_pruned: Counter::default(),
        };
        let mut registry = Registry::default();
        registry.register(
            seed::TRUST_SCORE_GAUGE,
            "Current trust score of each AgentIdentity (0-1000)",
            metrics.trust_score.clone(),
        );
        registry.register(
            seed::POLICY_VIOLATION_COUNT,
            "Policy violations, by identity and policy mode (monotonic; typed unknown to keep the seed's exact name)",
            metrics.policy_violations.clone(),
        );
        registry.register(
            seed::REGISTRY_SIZE,
            "AgentIdentities known to the trust engine",
            metrics.registry_size.clone(),
        );
        // Registered without the unit suffix: prometheus-client appends `_seconds`.
        registry.register_with_unit(
            seed::API_REQUEST_DURATION_SECONDS.trim_end_matches("_seconds"),
            "Trust API request latency",
            prometheus_client::registry::Unit::Seconds,
            metrics.api_request_duration.clone(),
        );
        registry.register(
            "meshlogic_operator_reconciles",
            "Reconciliations, by controller",
            metrics.reconciles.clone(),
        );
        registry.register(
            "meshlogic_operator_reconcile_errors",
            "Failed reconciliations, by controller and error",
            metrics.reconcile_errors.clone(),
        );
        registry.register_with_unit(
            "meshlogic_operator_reconcile_duration",
            "Reconciliation latency, by controller",
            prometheus_client::registry::Unit::Seconds,
            metrics.reconcile_duration.clone(),
        );
        registry.register(
            "meshlogic_operator_reports_accepted",
            "Report batches accepted by the trust API",
            metrics.reports_accepted.clone(),
        );
        registry.register(
            "meshlogic_operator_reports_refused",
            "Report batches refused by the trust API, by reason",
            metrics.reports_refused.clone(),
        );
        registry.register(
            "meshlogic_operator_status_writes",
            "AgentIdentity status writes made by the trust engine",
            metrics.status_writes.clone(),
        );
        registry.register(
            "meshlogic_operator_audit_entries",
            "Records appended to the audit hash chain (one per sidecar decision: tool call, prompt, resource read or handshake; and one per quarantine or release)",
            metrics.audit_entries.clone(),
        );
        registry.register(
            "meshlogic_operator_admissions",
            "Admission reviews of the injection webhook, by result (injected or the skip reason)",
            metrics.admissions.clone(),
        );
        registry.register(
            "meshlogic_operator_undecodable_objects",
            "Watched objects left out because they do not decode, by kind (the rest of the watch goes on)",
            metrics.undecodable_objects.clone(),
        );
        registry.register(
            "meshlogic_operator_leader",
            "1 while this replica is the leader",
            metrics.is_leader.clone(),
        );
        registry.register(
            "meshlogic_operator_storage_up",
            "1 while the audit store of AGENTMESH_STORAGE_BACKEND answers, 0 while it does not (always 1 with memory)",
            metrics.storage_up.clone(),
        );
        registry.register(
            "meshlogic_operator_audit_pending",
            "Audit records waiting for the audit store (held while it is down, at most MESHLOGIC_AUDIT_BUFFER)",
            metrics.audit_pending.clone(),
        );
        registry.register(
            "meshlogic_operator_audit_dropped",
            "Audit records dropped because the buffer (MESHLOGIC_AUDIT_BUFFER) was full",
            metrics.audit_dropped.clone(),
        );
        registry.register(
            "meshlogic_operator_audit_written",
            "Audit entries the audit store accepted",
            metrics.audit_written.clone(),
        );
        registry.register(
            "meshlogic_operator_audit_conflicts",
            "Audit appends refused because another writer had moved the chain's head (then chained after it)",
            metrics.audit_conflicts.clone(),
        );
        registry.register(
            "meshlogic_operator_audit_pruned",
            "Audit entries deleted by retention (AGENTMESH_GOVERNANCE_AUDIT_RETENTION_DAYS)",
            metrics.audit_pruned.clone(),
        );
        (Arc::new(metrics), registry)
    }

    pub fn observe_reconcile(&self, controller: &str, took: Duration) {
        let labels = ControllerLabels {
            controller: controller.to_owned(),
        };
        self.reconciles.get_or_create(&labels).inc();
        self.reconcile_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    pub fn undecodable_object(&self, kind: &str) {
        self.undecodable_objects
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    pub fn reconcile_error(&self, controller: &str, error: &str) {
        let labels = ErrorLabels {
            controller: controller.to_owned(),
            error: error.to_owned(),
        };
        self.reconcile_errors.get_or_create(&labels).inc();
    }
}

/// The registry in the OpenMetrics text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).expect("writing to a String");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_metric_names_are_exposed_exactly() {
        let (metrics, registry) = Metrics::new();
        let labels = IdentityLabels {
            namespace: "a".into(),
            identity: "b".into(),
        };
        metrics.trust_score.get_or_create(&labels).set(800);
        metrics
            .policy_violations
            .get_or_create(&ViolationLabels {
                namespace: "a".into(),
                identity: "b".into(),
                mode: "enforce".into(),
            })
            .inc();
        metrics
            .api_request_duration
            .get_or_create(&RequestLabels {
                path: "/v1/reports".into(),
                code: 202,
            })
            .observe(0.01);
        metrics.registry_size.set(1);
        let text = encode(&registry);
        for sample in [
            "agentmesh_trust_score_gauge{namespace=\"a\",identity=\"b\"} 800",
            "agentmesh_policy_violation_count{namespace=\"a\",identity=\"b\",mode=\"enforce\"} 1",
            "agentmesh_registry_size 1",
            "agentmesh_api_request_duration_seconds_count{path=\"/v1/reports\",code=\"202\"} 1",
        ] {
            assert!(
                text.lines().any(|line| line == sample),
                "no `{sample}` in:\n{text}"
            );
        }
    }
}
