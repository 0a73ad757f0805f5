//! A MeshLogicAgent's status as a pure function of its DaemonSet, what its probes reported and
//! the previous status (whose transition times are kept for conditions that did not change).

use agentmesh_api::meshlogic::{MeshLogicAgentStatus, NodeProbeStatus};
use agentmesh_api::names::conditions;

use super::agent::Refusal;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// The DaemonSet's rollout, reduced to what status needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rollout {
    pub desired: i32,
    pub ready: i32,
    pub updated: i32,
    pub available: i32,
    pub unavailable: i32,
    /// The DaemonSet controller has seen the DaemonSet's latest spec.
    pub observed: bool,
}

impl Rollout {
    /// From a DaemonSet as read back from the API server (`None`: not there yet).
    pub fn of(daemon_set: Option<&DaemonSet>) -> Self {
        let Some(daemon_set) = daemon_set else {
            return Self::default();
        };
        let Some(status) = daemon_set.status.as_ref() else {
            return Self::default();
        };
        let generation = daemon_set.metadata.generation;
        Self {
            desired: status.desired_number_scheduled,
            ready: status.number_ready,
            updated: status.updated_number_scheduled.unwrap_or(0),
            available: status.number_available.unwrap_or(0),
            unavailable: status.number_unavailable.unwrap_or(0),
            observed: generation.is_some() && status.observed_generation >= generation,
        }
    }

    /// Every desired node runs the current template and is available (as
    /// `kubectl rollout status` decides).
    pub fn complete(&self) -> bool {
        self.observed && self.updated == self.desired && self.available == self.desired
    }
}

/// What the next status is.
pub fn compute(
    generation: Option<i64>,
    requested_tier: i32,
    rollout: &Rollout,
    nodes: Vec<NodeProbeStatus>,
    refusal: Option<&Refusal>,
    previous: Option<&MeshLogicAgentStatus>,
    now: &Time,
) -> MeshLogicAgentStatus {
    let previous_conditions = previous.map(|p| p.conditions.as_slice()).unwrap_or(&[]);
    // The transition time moves only when the status does.
    let condition = |type_: &str, holds: bool, reason: &str, message: String| {
        crate::conditions::condition_at(
            previous_conditions,
            type_,
            holds,
            reason,
            message,
            generation,
            now,
        )
    };

    let (desired, ready) = (rollout.desired, rollout.ready);
    let available = if desired == 0 && !rollout.observed {
        condition(
            conditions::AVAILABLE,
            false,
            "Pending",
            "the DaemonSet controller has not placed the probe yet".into(),
        )
    } else if desired == 0 {
        condition(
            conditions::AVAILABLE,
            false,
            "NoNodes",
            "no node matches the probe's node selector and tolerations".into(),
        )
    } else if ready == desired {
        condition(
            conditions::AVAILABLE,
            true,
            "AllNodesReady",
            format!("the probe is ready on all {desired} nodes"),
        )
    } else {
        condition(
            conditions::AVAILABLE,
            false,
            "NodesNotReady",
            format!("the probe is ready on {ready} of {desired} nodes"),
        )
    };

    let progressing = if rollout.complete() {
        condition(
            conditions::PROGRESSING,
            false,
            "RolloutComplete",
            format!(
                "{} of {desired} nodes run the current configuration",
                rollout.updated
            ),
        )
    } else if !rollout.observed {
        condition(
            conditions::PROGRESSING,
            true,
            "RollingOut",
            "the DaemonSet controller has not seen the latest configuration yet".into(),
        )
    } else {
        condition(
            conditions::PROGRESSING,
            true,
            "RollingOut",
            format!(
                "{} of {desired} nodes updated, {} available",
                rollout.updated, rollout.available
            ),
        )
    };

    let fallbacks: Vec<String> = nodes
        .iter()
        .filter(|node| node.tier < requested_tier)
        .map(|node| match &node.reason {
            Some(reason) => format!("{}: tier {} ({reason})", node.node, node.tier),
            None => format!("{}: tier {}", node.node, node.tier),
        })
        .collect();
    let degraded = if let Some(refusal) = refusal {
        condition(
            conditions::DEGRADED,
            true,
            refusal.reason,
            refusal.message.clone(),
        )
    } else if !fallbacks.is_empty() {
        condition(
            conditions::DEGRADED,
            true,
            "TierFallback",
            format!(
                "{} of {} reporting nodes run below the requested tier {requested_tier}: {}",
                fallbacks.len(),
                nodes.len(),
                fallbacks.join("; ")
            ),
        )
    } else if rollout.unavailable > 0 && rollout.observed && rollout.updated == desired {
        // Rolled out, yet pods are not available: they crash or fail their probes.
        condition(
            conditions::DEGRADED,
            true,
            "PodsUnavailable",
            format!(
                "{} of {desired} probe pods unavailable after the rollout",
                rollout.unavailable
            ),
        )
    } else {
        condition(
            conditions::DEGRADED,
            false,
            "AsExpected",
            format!(
                "{} reporting nodes run the requested tier {requested_tier}",
                nodes.len()
            ),
        )
    };

    MeshLogicAgentStatus {
        observed_generation: generation,
        desired_nodes: desired,
        ready_nodes: ready,
        updated_nodes: rollout.updated,
        nodes,
        conditions: vec![available, progressing, degraded],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::DaemonSetStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn time(seconds: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap())
    }

    fn daemon_set(
        generation: i64,
        observed: i64,
        desired: i32,
        ready: i32,
        updated: i32,
    ) -> DaemonSet {
        DaemonSet {
            metadata: ObjectMeta {
                generation: Some(generation),
                ..Default::default()
            },
            status: Some(DaemonSetStatus {
                observed_generation: Some(observed),
                desired_number_scheduled: desired,
                current_number_scheduled: desired,
                number_ready: ready,
                updated_number_scheduled: Some(updated),
                number_available: Some(ready),
                number_unavailable: Some(desired - ready),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn get<'a>(status: &'a MeshLogicAgentStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    fn node(name: &str, tier: i32, reason: Option<&str>) -> NodeProbeStatus {
        NodeProbeStatus {
            node: name.into(),
            tier,
            reason: reason.map(str::to_owned),
            programs_loaded: 0,
            file_hook: None,
            last_report_at: None,
        }
    }

    #[test]
    fn a_complete_rollout_is_available_and_not_progressing() {
        let rollout = Rollout::of(Some(&daemon_set(2, 2, 2, 2, 2)));
        assert!(rollout.complete());
        let status = compute(Some(3), 2, &rollout, vec![], None, None, &time(100));
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!(
            (
                status.desired_nodes,
                status.ready_nodes,
                status.updated_nodes
            ),
            (2, 2, 2)
        );
        assert_eq!(get(&status, "Available").status, "True");
        assert_eq!(get(&status, "Progressing").status, "False");
        assert_eq!(get(&status, "Degraded").status, "False");
        assert_eq!(get(&status, "Available").observed_generation, Some(3));
    }

    #[test]
    fn a_missing_or_unobserved_daemon_set_is_progressing() {
        let status = compute(
            Some(1),
            2,
            &Rollout::of(None),
            vec![],
            None,
            None,
            &time(100),
        );
        assert_eq!(get(&status, "Available").status, "False");
        assert_eq!(get(&status, "Available").reason, "Pending");
        assert_eq!(get(&status, "Progressing").status, "True");

        // Observed, and no node to run on.
        let rollout = Rollout::of(Some(&daemon_set(1, 1, 0, 0, 0)));
        let status = compute(Some(1), 2, &rollout, vec![], None, None, &time(100));
        assert_eq!(get(&status, "Available").reason, "NoNodes");
        assert_eq!(
            get(&status, "Progressing").status,
            "False",
            "nothing to roll out"
        );

        let rollout = Rollout::of(Some(&daemon_set(3, 2, 2, 2, 2)));
        assert!(!rollout.complete());
        let status = compute(Some(1), 2, &rollout, vec![], None, None, &time(100));
        assert_eq!(get(&status, "Progressing").status, "True");
    }

    #[test]
    fn a_partial_rollout_is_progressing_and_not_available() {
        let rollout = Rollout::of(Some(&daemon_set(2, 2, 2, 1, 1)));
        let status = compute(Some(1), 2, &rollout, vec![], None, None, &time(100));
        assert_eq!(get(&status, "Available").status, "False");
        assert_eq!(
            get(&status, "Available").message,
            "the probe is ready on 1 of 2 nodes"
        );
        assert_eq!(get(&status, "Progressing").status, "True");
        assert_eq!(get(&status, "Degraded").status, "False");
    }

    #[test]
    fn pods_unavailable_after_a_rollout_are_degraded() {
        let rollout = Rollout::of(Some(&daemon_set(2, 2, 2, 1, 2)));
        let status = compute(Some(1), 2, &rollout, vec![], None, None, &time(100));
        assert_eq!(get(&status, "Degraded").status, "True");
        assert_eq!(get(&status, "Degraded").reason, "PodsUnavailable");
    }

    #[test]
    fn a_node_below_the_requested_tier_is_degraded_with_its_reason() {
        let rollout = Rollout::of(Some(&daemon_set(1, 1, 2, 2, 2)));
        let nodes = vec![node("node-a", 1, Some("no BTF")), node("node-b", 2, None)];
        let status = compute(Some(1), 2, &rollout, nodes.clone(), None, None, &time(100));
        let degraded = get(&status, "Degraded");
        assert_eq!(degraded.status, "True");
        assert_eq!(degraded.reason, "TierFallback");
        assert!(
            degraded.message.contains("node-a: tier 1 (no BTF)"),
            "{}",
            degraded.message
        );
        assert!(!degraded.message.contains("node-b"), "{}", degraded.message);
        assert_eq!(status.nodes, nodes);
        // Asked for tier 1, a tier 1 node is as requested.
        let status = compute(Some(1), 1, &rollout, nodes, None, None, &time(100));
        assert_eq!(get(&status, "Degraded").status, "False");
    }

    #[test]
    fn transition_times_move_only_when_a_condition_changes() {
        let done = Rollout::of(Some(&daemon_set(1, 1, 2, 2, 2)));
        let first = compute(Some(1), 2, &done, vec![], None, None, &time(100));
        let again = compute(Some(1), 2, &done, vec![], None, Some(&first), &time(200));
        assert_eq!(again, first, "nothing changed, so the status is equal");

        let rolling = Rollout::of(Some(&daemon_set(2, 2, 2, 1, 1)));
        let next = compute(Some(2), 2, &rolling, vec![], None, Some(&again), &time(300));
        assert_eq!(get(&next, "Available").last_transition_time, time(300));
        assert_eq!(get(&next, "Progressing").last_transition_time, time(300));
        assert_eq!(get(&next, "Degraded").last_transition_time, time(100));
    }
}
