//! What the seed promises of metrics beyond their names: `agentmesh_policy_violation_count` is
//! exposed under exactly that name by the operator and by every sidecar.

use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;

/// A count that only goes up, exposed under its exact name. OpenMetrics would append `_total`
/// to a counter; the seed promises `agentmesh_policy_violation_count` (its alert rule is
/// `rate(agentmesh_policy_violation_count[5m])`), so this one is typed `unknown`.
#[derive(Clone, Debug, Default)]
pub struct ExactCount(Counter);

impl ExactCount {
    pub fn inc(&self) {
        self.0.inc();
    }

    pub fn inc_by(&self, n: u64) {
        self.0.inc_by(n);
    }

    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

impl prometheus_client::metrics::TypedMetric for ExactCount {
    const TYPE: MetricType = MetricType::Unknown;
}

impl EncodeMetric for ExactCount {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&(self.0.get() as i64))
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Unknown
    }
}
