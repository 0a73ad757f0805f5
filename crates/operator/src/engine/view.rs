//! What the engine tells probes (per node) and sidecars (per identity).

use agentmesh_api::policy::{BehaviorAction, PolicyMode};
use agentmesh_api::wire::{
    DeniedNetwork, EnforcementSet, PodEnforcement, RegistryEntry, SidecarConfig,
};
use kube::ResourceExt;
use sha2::{Digest, Sha256};

use super::{Engine, key};

/// A short, stable version of a view: the hash of its JSON.
fn version_of<T: serde::Serialize>(view: &T) -> String {
    let json = serde_json::to_vec(view).expect("views serialize");
    Sha256::digest(json)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Engine {
    /// What the probe on `node` must enforce at safety tier 3: for the pods of identities
    /// governed in enforce mode, the policy's deny rules, and a network block while the
    /// identity is quarantined and the policy says `quarantine.blockNetwork`.
    pub fn enforcement_for(&self, node: &str) -> EnforcementSet {
        let mut pods = Vec::new();
        for (uid, pod) in self.pods.on_node(node) {
            let Some((identity, _)) = self.identity_of_pod(&uid) else {
                continue;
            };
            let k = key(&pod.namespace, &identity.name_any());
            let (policy, name) = self.policy_of(&k);
            let spec = match name.as_deref().and_then(|n| self.policy_object(n)) {
                Some(object) => object.spec.clone(),
                None => crate::governance::default_policy_spec(&self.ctx.config.settings),
            };
            if spec.mode != PolicyMode::Enforce {
                continue;
            }
            let quarantined =
                self.live(&k).is_some_and(|(_, _, q)| q) && policy.spec().quarantine.block_network;
            let denied_networks: Vec<DeniedNetwork> = spec
                .behavior
                .network
                .iter()
                .filter(|rule| rule.action == BehaviorAction::Deny)
                .map(|rule| DeniedNetwork {
                    cidr: rule.cidr.clone(),
                    ports: rule
                        .ports
                        .iter()
                        .filter_map(|p| u16::try_from(*p).ok())
                        .collect(),
                })
                .collect();
            let denied_executables: Vec<String> = spec
                .behavior
                .exec
                .iter()
                .filter(|rule| rule.action == BehaviorAction::Deny)
                .map(|rule| rule.path.clone())
                .collect();
            if quarantined || !denied_networks.is_empty() || !denied_executables.is_empty() {
                pods.push(PodEnforcement {
                    pod_uid: uid,
                    quarantined,
                    denied_networks,
                    denied_executables,
                    allowed_destinations: Vec::new(),
                });
            }
        }
        pods.sort_by(|a, b| a.pod_uid.cmp(&b.pod_uid));
        let mut set = EnforcementSet {
            version: String::new(),
            pods,
        };
        set.version = version_of(&set.pods);
        set
    }

    /// What the sidecar of `identity` (`namespace/name`) needs; `None` when it is unknown.
    pub fn sidecar_config(&self, identity_key: &str) -> Option<SidecarConfig> {
        let identity = self.identity(identity_key)?;
        let (_, policy_name) = self.policy_of(identity_key);
        let policy = match policy_name.as_deref().and_then(|n| self.policy_object(n)) {
            Some(object) => object.spec.clone(),
            None => crate::governance::default_policy_spec(&self.ctx.config.settings),
        };
        let mut peers: Vec<RegistryEntry> = self
            .identities
            .state()
            .iter()
            .filter_map(|i| self.registry_entry(i))
            .collect();
        peers.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let mut config = SidecarConfig {
            version: String::new(),
            identity: self.registry_entry(&identity)?,
            policy_name,
            policy,
            peers,
        };
        config.version = version_of(&(
            &config.identity,
            &config.policy_name,
            &config.policy,
            &config.peers,
        ));
        Some(config)
    }

    fn registry_entry(&self, identity: &agentmesh_api::AgentIdentity) -> Option<RegistryEntry> {
        let namespace = identity.namespace()?;
        let name = identity.name_any();
        let (score, tier, quarantined) = self.live(&key(&namespace, &name))?;
        let status = identity.status.as_ref();
        let capabilities = match &identity.spec.delegation {
            Some(delegation) => delegation.capabilities.clone(),
            None => identity.spec.capabilities.clone(),
        };
        Some(RegistryEntry {
            namespace,
            name,
            did: status.and_then(|s| s.did.clone()),
            public_key: status.and_then(|s| s.public_key.clone()),
            score,
            tier: agentmesh_api::convert::tier(tier),
            quarantined,
            capabilities,
        })
    }

    fn policy_object(&self, k: &str) -> Option<std::sync::Arc<agentmesh_api::TrustPolicy>> {
        let (namespace, name) = k.split_once('/')?;
        self.policies
            .get(&kube::runtime::reflector::ObjectRef::new(name).within(namespace))
    }
}
