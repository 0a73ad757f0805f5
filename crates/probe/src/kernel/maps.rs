//! Kernel map contents: the whole desired state built from the pod cgroups and the enforcement
//! set, and applied as a diff.

use std::collections::{BTreeMap, BTreeSet};

use agentmesh_api::wire::EnforcementSet;
use ipnet::{IpNet, Ipv6Net};
use libbpf_rs::{MapCore, MapFlags};

use super::event::{EXEC_KEY_PATH, MAX_PORTS, PodFlag};
use super::keys::{dest_key, exec_key, net_key, net_rule};
use crate::cgroup::PodCgroups;

/// Everything user space writes into the kernel, besides the mute paths (set once at load).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KernelState {
    /// Pod cgroup id -> POD_* flags.
    pub pods: BTreeMap<u64, u32>,
    pub deny_exec: BTreeSet<Vec<u8>>,
    pub deny_net4: BTreeMap<Vec<u8>, Vec<u8>>,
    pub deny_net6: BTreeMap<Vec<u8>, Vec<u8>>,
    pub allowed: BTreeSet<Vec<u8>>,
}

/// A denied network as the tries hold it, with the ports it denies (empty: every port).
struct DeniedNet {
    net: IpNet,
    ports: BTreeSet<u16>,
    /// The IPv4-mapped IPv6 form of an IPv4 rule: a dual-stack socket connects to
    /// `::ffff:10.0.0.1` through connect6, and the trust rules count that as 10.0.0.1.
    mapped: bool,
}

/// The networks a pod's rules deny, in both tries, each with the ports of every network that
/// contains it: the trie answers with the longest match only, so a more specific rule must
/// never hide a wider one.
fn denied_nets(rules: Vec<(IpNet, BTreeSet<u16>)>) -> Vec<DeniedNet> {
    let mut nets: Vec<DeniedNet> = Vec::new();
    for (net, ports) in rules {
        if let IpNet::V4(v4) = net {
            let mapped = Ipv6Net::new(v4.network().to_ipv6_mapped(), 96 + v4.prefix_len())
                .expect("a mapped IPv4 prefix is at most 128 bits");
            nets.push(DeniedNet {
                net: IpNet::V6(mapped),
                ports: ports.clone(),
                mapped: true,
            });
        }
        nets.push(DeniedNet {
            net,
            ports,
            mapped: false,
        });
    }
    nets.iter()
        .map(|inner| {
            let covering: Vec<&BTreeSet<u16>> = nets
                .iter()
                .filter(|outer| outer.net.contains(&inner.net))
                .map(|outer| &outer.ports)
                .collect();
            let ports = if covering.iter().any(|ports| ports.is_empty()) {
                BTreeSet::new()
            } else {
                covering.into_iter().flatten().copied().collect()
            };
            DeniedNet {
                net: inner.net,
                ports,
                mapped: inner.mapped,
            }
        })
        .collect()
}

/// The kernel state for these pod cgroups under this enforcement (none below tier 3), and
/// warnings about rules that cannot be enforced as written.
pub fn build(
    pod_cgroups: &PodCgroups,
    enforcement: Option<&EnforcementSet>,
) -> (KernelState, Vec<String>) {
    let mut state = KernelState::default();
    let mut warnings = Vec::new();
    let watched = PodFlag::POD_WATCHED.0;
    for id in pod_cgroups.by_id.keys() {
        state.pods.insert(*id, watched);
    }
    let Some(enforcement) = enforcement else {
        return (state, warnings);
    };
    for pod in &enforcement.pods {
        let ids = pod_cgroups.ids_of(&pod.pod_uid);
        let mut rules = Vec::new();
        for rule in &pod.denied_networks {
            match rule.network() {
                Ok(cidr) => rules.push((cidr.net(), rule.ports.iter().copied().collect())),
                Err(_) => warnings.push(format!("pod {}: bad CIDR {:?}", pod.pod_uid, rule.cidr)),
            }
        }
        let nets = denied_nets(rules);
        for net in nets
            .iter()
            .filter(|net| net.ports.len() > MAX_PORTS && !net.mapped)
        {
            warnings.push(format!(
                "pod {}: more than {MAX_PORTS} ports denied to {}: every port denied",
                pod.pod_uid, net.net
            ));
        }
        let mut flags = watched | PodFlag::POD_ENFORCED.0;
        if pod.quarantined {
            flags |= PodFlag::POD_QUARANTINED.0;
        }
        for id in ids {
            state.pods.insert(id, flags);
            for pattern in &pod.denied_executables {
                match exec_key(id, pattern) {
                    Some(key) => {
                        state.deny_exec.insert(key);
                    }
                    None => warnings.push(format!(
                        "pod {}: executable pattern {pattern:?} must be absolute and at most {} bytes",
                        pod.pod_uid,
                        EXEC_KEY_PATH - 1
                    )),
                }
            }
            for DeniedNet { net, ports, .. } in &nets {
                let every_port = BTreeSet::new();
                let ports = if ports.len() > MAX_PORTS {
                    &every_port
                } else {
                    ports
                };
                let map = match net {
                    IpNet::V4(_) => &mut state.deny_net4,
                    IpNet::V6(_) => &mut state.deny_net6,
                };
                map.insert(net_key(id, *net), net_rule(ports));
            }
            for destination in &pod.allowed_destinations {
                state
                    .allowed
                    .insert(dest_key(id, destination.ip, destination.port));
            }
        }
    }
    (state, warnings)
}

/// Writes the difference between what is in the kernel (`old`) and `new`.
pub fn apply(skel: &super::skel::ProbeSkel<'_>, old: &KernelState, new: &KernelState) {
    let maps = &skel.maps;
    let report = |what: &str, result: libbpf_rs::Result<()>| {
        if let Err(error) = result {
            tracing::warn!(map = what, %error, "kernel map update failed");
        }
    };
    let pods = |state: &KernelState| -> BTreeMap<Vec<u8>, Vec<u8>> {
        (state.pods.iter())
            .map(|(id, flags)| (id.to_ne_bytes().to_vec(), flags.to_ne_bytes().to_vec()))
            .collect()
    };
    let set = |keys: &BTreeSet<Vec<u8>>| -> BTreeMap<Vec<u8>, Vec<u8>> {
        keys.iter().map(|key| (key.clone(), vec![1u8])).collect()
    };
    // In this order: rules first, flags last, so that a pod is marked enforced only once its
    // rules are in place.
    let tables = [
        (
            "deny_exec",
            &maps.deny_exec,
            set(&old.deny_exec),
            set(&new.deny_exec),
        ),
        (
            "deny_net4",
            &maps.deny_net4,
            old.deny_net4.clone(),
            new.deny_net4.clone(),
        ),
        (
            "deny_net6",
            &maps.deny_net6,
            old.deny_net6.clone(),
            new.deny_net6.clone(),
        ),
        (
            "allowed_dest",
            &maps.allowed_dest,
            set(&old.allowed),
            set(&new.allowed),
        ),
        ("pod_cgroups", &maps.pod_cgroups, pods(old), pods(new)),
    ];
    for (name, map, old, new) in &tables {
        for (key, value) in new {
            if old.get(key) != Some(value) {
                report(name, map.update(key, value, MapFlags::ANY));
            }
        }
    }
    // Then what is gone: the pods' flags first.
    for (name, map, old, new) in tables.iter().rev() {
        for key in old.keys().filter(|key| !new.contains_key(*key)) {
            report(name, map.delete(key));
        }
    }
    // Last: the programs' cache of each cgroup's pod and flags is stale now.
    if old.pods != new.pods {
        report("pods_generation", bump_generation(&maps.pods_generation));
    }
}

/// Adds one to the u64 at index 0 of an array map.
pub fn bump_generation(map: &libbpf_rs::MapMut<'_>) -> libbpf_rs::Result<()> {
    let key = 0u32.to_ne_bytes();
    let current = map
        .lookup(&key, MapFlags::ANY)?
        .and_then(|value| value.try_into().ok())
        .map_or(0, u64::from_ne_bytes);
    map.update(&key, &current.wrapping_add(1).to_ne_bytes(), MapFlags::ANY)
}

#[cfg(test)]
mod tests;
