//! What each MeshLogicAgent's probes say about their nodes, from their reports: the tier in
//! force and why it differs from the requested one. The trust API records; the MeshLogicAgent
//! reconciler reads it into `status.nodes`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use agentmesh_api::meshlogic::NodeProbeStatus;

#[derive(Default)]
pub struct ProbeRegistry {
    /// `namespace/name` of the MeshLogicAgent → node → status.
    agents: Mutex<HashMap<String, BTreeMap<String, NodeProbeStatus>>>,
}

impl ProbeRegistry {
    /// Records what the probe on `status.node` of `agent` (`namespace/name`) reported; returns
    /// whether it differs from what was known (tier, reason or programs loaded).
    pub fn record(&self, agent: &str, status: NodeProbeStatus) -> bool {
        let mut agents = self.agents.lock().expect("probe registry lock");
        let nodes = agents.entry(agent.to_owned()).or_default();
        let changed = nodes.get(&status.node).is_none_or(|known| {
            (known.tier, &known.reason, known.programs_loaded)
                != (status.tier, &status.reason, status.programs_loaded)
        });
        nodes.insert(status.node.clone(), status);
        changed
    }

    /// The nodes of `agent`, by name.
    pub fn nodes(&self, agent: &str) -> Vec<NodeProbeStatus> {
        let agents = self.agents.lock().expect("probe registry lock");
        agents
            .get(agent)
            .map(|nodes| nodes.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Forgets an agent (deleted).
    pub fn forget(&self, agent: &str) {
        self.agents
            .lock()
            .expect("probe registry lock")
            .remove(agent);
    }
}
