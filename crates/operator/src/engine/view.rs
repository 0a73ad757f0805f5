//! What the engine tells probes (per node) and sidecars (per identity).

use agentmesh_api::policy::{BehaviorAction, PolicyMode};
use agentmesh_api::wire::{
    DeniedNetwork, Destination, EnforcementSet, PodEnforcement, RegistryEntry, SidecarConfig,
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
                None => crate::governance::default_policy_spec(&self.config.settings),
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
                    allowed_destinations: if quarantined {
                        self.quarantine_exits()
                    } else {
                        Vec::new()
                    },
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

    /// What a quarantined pod may still reach: its own sidecar on loopback (which answers the
    /// agent's calls with the quarantine's denial instead of a connection error), the trust
    /// API (so the sidecar keeps reporting and learns of a release) and the cluster's DNS.
    fn quarantine_exits(&self) -> Vec<Destination> {
        let mut exits = vec![
            Destination {
                ip: std::net::Ipv4Addr::LOCALHOST.into(),
                port: agentmesh_api::names::ports::SIDECAR_PROXY,
            },
            Destination {
                ip: std::net::Ipv6Addr::LOCALHOST.into(),
                port: agentmesh_api::names::ports::SIDECAR_PROXY,
            },
        ];
        exits.extend(
            self.quarantine_exits
                .read()
                .expect("exits lock")
                .iter()
                .cloned(),
        );
        exits
    }

    /// What the sidecar of `identity` (`namespace/name`) needs; `None` when it is unknown.
    pub fn sidecar_config(&self, identity_key: &str) -> Option<SidecarConfig> {
        let identity = self.identity(identity_key)?;
        let (_, policy_name) = self.policy_of(identity_key);
        let policy = match policy_name.as_deref().and_then(|n| self.policy_object(n)) {
            Some(object) => object.spec.clone(),
            None => crate::governance::default_policy_spec(&self.config.settings),
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
        // A delegation the identity reconciler could not verify grants nothing, and peers
        // refuse the identity (the reason travels with the entry).
        let delegation_refused = identity.spec.delegation.as_ref().and_then(|_| {
            let condition = status.and_then(|s| {
                agentmesh_api::common::find_condition(
                    &s.conditions,
                    agentmesh_api::names::conditions::DELEGATION_VALID,
                )
            });
            match condition {
                Some(c) if c.status == "True" => None,
                Some(c) => Some(format!("{}: {}", c.reason, c.message)),
                None => Some("NotVerified: the delegation has not been verified yet".to_owned()),
            }
        });
        let capabilities = match (&identity.spec.delegation, &delegation_refused) {
            (Some(_), Some(_)) => Vec::new(),
            (Some(delegation), None) => delegation.capabilities.clone(),
            (None, _) => identity.spec.capabilities.clone(),
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
            delegation_refused,
        })
    }

    fn policy_object(&self, k: &str) -> Option<std::sync::Arc<agentmesh_api::TrustPolicy>> {
        let (namespace, name) = k.split_once('/')?;
        self.policies
            .get(&kube::runtime::reflector::ObjectRef::new(name).within(namespace))
    }
}

/// Keeps [`Engine::quarantine_exits`] current: every 30 s, the addresses of the trust API's
/// host (its Service's cluster IP in a cluster) and the nameservers of `/etc/resolv.conf`
/// (port 53), which pods of the default DNS policy share with the operator.
pub async fn refresh_quarantine_exits(engine: std::sync::Arc<Engine>) {
    let url = engine.config.trust_api_url.clone();
    let mut interval = tokio::time::interval(std::time::Duration::from_secs(30));
    loop {
        interval.tick().await;
        let mut exits = Vec::new();
        if let Ok(uri) = url.parse::<hyper::Uri>()
            && let Some(host) = uri.host()
        {
            let port = uri.port_u16().unwrap_or(80);
            match tokio::net::lookup_host((host.trim_matches(['[', ']']), port)).await {
                Ok(addresses) => exits.extend(addresses.map(|a| Destination {
                    ip: a.ip(),
                    port: a.port(),
                })),
                Err(error) => {
                    tracing::debug!(%error, %url, "the trust API's host does not resolve here")
                }
            }
        }
        // A small local file: read inline rather than pull in tokio's `fs`.
        let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        exits.extend(
            nameservers(&resolv)
                .into_iter()
                .map(|ip| Destination { ip, port: 53 }),
        );
        exits.sort_by_key(|d| (d.ip, d.port));
        exits.dedup();
        let changed = {
            let mut current = engine.quarantine_exits.write().expect("exits lock");
            let changed = *current != exits;
            *current = exits;
            changed
        };
        if changed {
            engine.changed.notify_waiters();
        }
    }
}

/// The `nameserver` addresses of a resolv.conf.
fn nameservers(resolv_conf: &str) -> Vec<std::net::IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next()?.split('%').next()?.parse().ok())
                .flatten()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_are_read_and_comments_and_junk_skipped() {
        let conf = "# generated\nsearch ns.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\n\
                    nameserver fe80::1%eth0\nnameserver not-an-ip\n#nameserver 1.1.1.1\noptions ndots:5\n";
        assert_eq!(
            nameservers(conf),
            vec![
                "10.96.0.10".parse::<std::net::IpAddr>().unwrap(),
                "fe80::1".parse().unwrap()
            ]
        );
        assert!(nameservers("").is_empty());
    }
}
