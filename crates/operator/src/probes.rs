//! What each MeshLogicAgent's probes say about their nodes, from their reports: the tier in
//! force and why it differs from the requested one. The trust API records; the MeshLogicAgent
//! reconciler reads it into `status.nodes`.
//!
//! The registry is also who may speak for an agent: the MeshLogicAgent reconciler registers
//! each agent with the ServiceAccount its probes run as, and a report naming an agent counts
//! only from that account (another principal allowed to create reports cannot write its tier
//! into someone else's agent). Agents are dropped when deleted; a node that has not reported
//! for [`NODE_STALE_AFTER`] is dropped from its agent (drained, deleted, or its probe gone), so
//! memory follows the live agents and nodes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use agentmesh_api::meshlogic::NodeProbeStatus;

/// A node whose probe has not reported for this long is no longer listed.
pub const NODE_STALE_AFTER: Duration = Duration::from_secs(600);

/// Why a probe may not speak for an agent.
#[derive(Debug, PartialEq, Eq)]
pub enum NotBound {
    /// No MeshLogicAgent of that name is known (not yet reconciled, or none).
    UnknownAgent,
    /// The agent's probes run as another ServiceAccount: this one is the username.
    OtherAccount { expected: String },
}

struct Agent {
    /// `system:serviceaccount:<namespace>:<name>` of its probes.
    username: String,
    nodes: BTreeMap<String, (NodeProbeStatus, Instant)>,
}

#[derive(Default)]
pub struct ProbeRegistry {
    /// `namespace/name` of the MeshLogicAgent → its probes' account and nodes.
    agents: Mutex<HashMap<String, Agent>>,
}

impl ProbeRegistry {
    /// Registers `agent` (`namespace/name`), whose probes run as the ServiceAccount
    /// `namespace/service_account`; keeps what its nodes reported.
    pub fn expect(&self, agent: &str, namespace: &str, service_account: &str) {
        let username = format!("system:serviceaccount:{namespace}:{service_account}");
        let mut agents = self.agents.lock().expect("probe registry lock");
        agents
            .entry(agent.to_owned())
            .and_modify(|known| known.username.clone_from(&username))
            .or_insert_with(|| Agent {
                username,
                nodes: BTreeMap::new(),
            });
    }

    /// Whether the caller `username` speaks for `agent`.
    pub fn check(&self, agent: &str, username: &str) -> Result<(), NotBound> {
        let agents = self.agents.lock().expect("probe registry lock");
        match agents.get(agent) {
            None => Err(NotBound::UnknownAgent),
            Some(known) if known.username == username => Ok(()),
            Some(known) => Err(NotBound::OtherAccount {
                expected: known.username.clone(),
            }),
        }
    }

    /// Records what the probe on `status.node` of `agent` (`namespace/name`) reported; returns
    /// whether it differs from what was known (tier, reason, programs loaded or file hook). Nothing is
    /// recorded for an agent not registered.
    pub fn record(&self, agent: &str, status: NodeProbeStatus) -> bool {
        self.record_at(agent, status, Instant::now())
    }

    fn record_at(&self, agent: &str, status: NodeProbeStatus, now: Instant) -> bool {
        let mut agents = self.agents.lock().expect("probe registry lock");
        let Some(known) = agents.get_mut(agent) else {
            return false;
        };
        let changed = known.nodes.get(&status.node).is_none_or(|(previous, _)| {
            let known = (previous.tier, &previous.reason, previous.programs_loaded);
            known != (status.tier, &status.reason, status.programs_loaded)
                || previous.file_hook != status.file_hook
        });
        known.nodes.insert(status.node.clone(), (status, now));
        known
            .nodes
            .retain(|_, (_, at)| now.duration_since(*at) < NODE_STALE_AFTER);
        changed
    }

    /// The nodes of `agent` that reported within [`NODE_STALE_AFTER`], by name.
    pub fn nodes(&self, agent: &str) -> Vec<NodeProbeStatus> {
        self.nodes_at(agent, Instant::now())
    }

    fn nodes_at(&self, agent: &str, now: Instant) -> Vec<NodeProbeStatus> {
        let mut agents = self.agents.lock().expect("probe registry lock");
        let Some(known) = agents.get_mut(agent) else {
            return Vec::new();
        };
        known
            .nodes
            .retain(|_, (_, at)| now.duration_since(*at) < NODE_STALE_AFTER);
        known.nodes.values().map(|(s, _)| s.clone()).collect()
    }

    /// Forgets an agent (deleted).
    pub fn forget(&self, agent: &str) {
        self.agents
            .lock()
            .expect("probe registry lock")
            .remove(agent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, tier: i32) -> NodeProbeStatus {
        NodeProbeStatus {
            node: name.into(),
            tier,
            reason: None,
            programs_loaded: 7,
            file_hook: None,
            last_report_at: None,
        }
    }

    #[test]
    fn only_the_agents_own_account_speaks_for_it() {
        let registry = ProbeRegistry::default();
        assert_eq!(
            registry.check("ns/mla", "system:serviceaccount:ns:mla-probe"),
            Err(NotBound::UnknownAgent)
        );
        registry.expect("ns/mla", "ns", "mla-probe");
        assert_eq!(
            registry.check("ns/mla", "system:serviceaccount:ns:mla-probe"),
            Ok(())
        );
        // Another account allowed to create reports, the same name in another namespace, a
        // spelling variant: each refused.
        for forged in [
            "system:serviceaccount:ns:other-probe",
            "system:serviceaccount:other:mla-probe",
            "system:serviceaccount:ns:MLA-probe",
            "system:serviceaccount:ns:mla-probe ",
            "mla-probe",
        ] {
            assert!(
                matches!(
                    registry.check("ns/mla", forged),
                    Err(NotBound::OtherAccount { .. })
                ),
                "{forged}"
            );
        }
        // The agent changes its account: the old one no longer speaks for it.
        registry.expect("ns/mla", "ns", "custom");
        assert!(
            registry
                .check("ns/mla", "system:serviceaccount:ns:mla-probe")
                .is_err()
        );
        registry.forget("ns/mla");
        assert_eq!(
            registry.check("ns/mla", "system:serviceaccount:ns:custom"),
            Err(NotBound::UnknownAgent)
        );
    }

    #[test]
    fn nodes_are_kept_for_registered_agents_and_dropped_when_stale() {
        let registry = ProbeRegistry::default();
        let start = Instant::now();
        // Not registered: nothing kept (a report cannot grow memory for a made-up agent).
        assert!(!registry.record_at("ns/ghost", node("n1", 2), start));
        assert!(registry.nodes_at("ns/ghost", start).is_empty());
        assert!(registry.agents.lock().unwrap().is_empty());

        registry.expect("ns/mla", "ns", "mla-probe");
        assert!(registry.record_at("ns/mla", node("n1", 2), start));
        assert!(!registry.record_at("ns/mla", node("n1", 2), start));
        // The file hook changing (a probe restarted on a kernel that now allows fexit) is news.
        let fexit = NodeProbeStatus {
            file_hook: Some(agentmesh_api::meshlogic::FileHook::Fexit),
            ..node("n1", 2)
        };
        assert!(registry.record_at("ns/mla", fexit.clone(), start));
        assert!(!registry.record_at("ns/mla", fexit, start));
        assert!(registry.record_at("ns/mla", node("n2", 1), start + NODE_STALE_AFTER / 2));
        assert_eq!(
            registry
                .nodes_at("ns/mla", start + NODE_STALE_AFTER / 2)
                .len(),
            2
        );
        // n1 stops reporting (its node deleted): gone once stale; n2 still there.
        let later = start + NODE_STALE_AFTER + Duration::from_secs(1);
        let nodes = registry.nodes_at("ns/mla", later);
        assert_eq!(
            nodes.iter().map(|n| n.node.as_str()).collect::<Vec<_>>(),
            ["n2"]
        );
        // Re-registering (every reconcile) keeps what was reported.
        registry.expect("ns/mla", "ns", "mla-probe");
        assert_eq!(registry.nodes_at("ns/mla", later).len(), 1);
    }
}
