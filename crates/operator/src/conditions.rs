//! Conditions in the Kubernetes shape, as every reconciler and the trust engine write them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition at `now`, keeping the transition time of the current one of that type when its
/// status does not change.
pub fn condition_at(
    current: &[Condition],
    type_: &str,
    holds: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if holds { "True" } else { "False" };
    let last_transition_time = current
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// [`condition_at`] the current time.
pub fn condition(
    current: &[Condition],
    type_: &str,
    holds: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    condition_at(current, type_, holds, reason, message, generation, &now)
}
