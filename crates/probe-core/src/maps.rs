//! Kernel map contents: the whole desired state built from the pod cgroups and the enforcement
//! set (`meshlogic-probe` applies it to the maps as a diff).

use std::collections::{BTreeMap, BTreeSet};

use agentmesh_api::wire::{EnforcementSet, PodEnforcement};
use ipnet::IpNet;

use crate::cgroup::PodCgroups;
use crate::keys::{dest_key, exec_file_key, exec_key, net_key, net_rule};
use crate::layout::{
    EXEC_FILE_DENIED, EXEC_FILE_LOADER, EXEC_KEY_PATH, MAX_PORTS, POD_ENFORCED, POD_EXEC_DENIED,
    POD_QUARANTINED, POD_WATCHED,
};

/// A file as the kernel names it: the device of its file system (the kernel's dev_t) and its
/// inode number. Every name of a file (a hard link, a symbolic link to it, a merged /usr's
/// `/bin/id` and `/usr/bin/id`) is the same `FileId`; a copy is not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileId {
    pub dev: u32,
    pub ino: u64,
}

impl FileId {
    /// From stat(2)'s `st_dev` and `st_ino`. User space's dev_t splits major and minor across
    /// its bits (glibc's `gnu_dev_major`/`gnu_dev_minor`); the kernel keeps `major << 20 |
    /// minor` in `i_sb->s_dev`, which is what the exec program reads.
    pub fn from_stat(st_dev: u64, st_ino: u64) -> Self {
        let major = ((st_dev >> 32) & 0xffff_f000) | ((st_dev >> 8) & 0x0fff);
        let minor = ((st_dev >> 12) & 0xffff_ff00) | (st_dev & 0x00ff);
        Self {
            dev: ((major << 20) | (minor & 0xf_ffff)) as u32,
            ino: st_ino,
        }
    }
}

/// What the probe found in one enforced pod's containers (their root file systems, through
/// `/proc/<pid>/root`): the files its exact exec deny rules name, and its dynamic loaders.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PodFiles {
    /// An exact denied path -> the files it names in the pod's containers.
    pub denied: BTreeMap<String, BTreeSet<FileId>>,
    /// The dynamic loaders of the pod's containers (`ld-linux-*.so.*`, `ld-musl-*.so.1`).
    pub loaders: BTreeSet<FileId>,
}

/// Pod UID -> what was found in its containers.
pub type FilesByPod = BTreeMap<String, PodFiles>;

/// Everything user space writes into the kernel, besides the mute paths (set once at load).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KernelState {
    /// Pod cgroup id -> POD_* flags.
    pub pods: BTreeMap<u64, u32>,
    pub deny_exec: BTreeSet<Vec<u8>>,
    /// Denied executables and dynamic loaders by file: key -> EXEC_FILE_* kind.
    pub deny_exec_file: BTreeMap<Vec<u8>, Vec<u8>>,
    pub deny_net4: BTreeMap<Vec<u8>, Vec<u8>>,
    pub deny_net6: BTreeMap<Vec<u8>, Vec<u8>>,
    pub allowed: BTreeSet<Vec<u8>>,
}

/// A denied network as the tries hold it, with the ports it denies (empty: every port).
struct DeniedNet {
    net: IpNet,
    ports: BTreeSet<u16>,
}

/// The networks a pod's rules deny, each with the ports of every network that contains it:
/// the trie answers with the longest match only, so a more specific rule must never hide a
/// wider one. An IPv4 rule is in the IPv4 trie only: the kernel looks a dual-stack socket's
/// connect to `::ffff:10.0.0.1` up as 10.0.0.1 (`bpf/probe/connect.bpf.h`), as the trust rules
/// count it; and an IPv6 rule, even `::/0`, never applies to such a connect.
fn denied_nets(rules: Vec<(IpNet, BTreeSet<u16>)>) -> Vec<DeniedNet> {
    let nets: Vec<DeniedNet> = rules
        .into_iter()
        .map(|(net, ports)| DeniedNet { net, ports })
        .collect();
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
            }
        })
        .collect()
}

/// The kernel state for these pod cgroups under this enforcement (none below tier 3), and
/// warnings about rules that cannot be enforced as written.
impl KernelState {
    /// Whether the kernel refuses pod `pod`'s connect to `ip:port` under these maps, looked up
    /// as `bpf/probe/connect.bpf.h` does: the longest prefix in the trie of the address's
    /// family (an IPv4-mapped IPv6 address as IPv4), then that rule's ports (none: every port).
    /// The model the unit tests and the `enforcement_set` fuzz target hold the maps to.
    pub fn refuses_connect(&self, pod: u64, ip: std::net::IpAddr, port: u16) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            IpAddr::V4(_) => ip,
        };
        let (trie, bits) = match ip {
            IpAddr::V4(_) => (&self.deny_net4, 32),
            IpAddr::V6(_) => (&self.deny_net6, 128),
        };
        let longest = (0..=bits).rev().find_map(|len| {
            let net = IpNet::new(ip, len).ok()?.trunc();
            trie.get(&net_key(pod, net))
        });
        longest.is_some_and(|rule| {
            let nports = u32::from_ne_bytes(rule[..4].try_into().unwrap_or_default()) as usize;
            nports == 0
                || (0..nports.min(MAX_PORTS)).any(|i| {
                    rule.get(4 + 2 * i..6 + 2 * i)
                        .is_some_and(|p| u16::from_ne_bytes([p[0], p[1]]) == port)
                })
        })
    }
}

/// `files`: what the probe found in the pods' containers ([`PodFiles`]); a pod missing from it
/// is matched by path only (its containers were not read yet).
pub fn build(
    pod_cgroups: &PodCgroups,
    enforcement: Option<&EnforcementSet>,
    files: &FilesByPod,
) -> (KernelState, Vec<String>) {
    let mut state = KernelState::default();
    let mut warnings = Vec::new();
    let watched = POD_WATCHED;
    for id in pod_cgroups.by_id.keys() {
        state.pods.insert(*id, watched);
    }
    let Some(enforcement) = enforcement else {
        return (state, warnings);
    };
    // The operator sends one entry per pod, but the wire allows more: they add up, so that a
    // later entry cannot lift an earlier one's rules or quarantine.
    let mut entries: BTreeMap<&str, Vec<&PodEnforcement>> = BTreeMap::new();
    for pod in &enforcement.pods {
        entries.entry(&pod.pod_uid).or_default().push(pod);
    }
    for (uid, pod) in entries {
        let ids = pod_cgroups.ids_of(uid);
        let mut rules = Vec::new();
        for rule in pod.iter().flat_map(|entry| &entry.denied_networks) {
            match rule.network() {
                Ok(cidr) => rules.push((cidr.net(), rule.ports.iter().copied().collect())),
                Err(_) => warnings.push(format!("pod {uid}: bad CIDR {:?}", rule.cidr)),
            }
        }
        let nets = denied_nets(rules);
        for net in nets.iter().filter(|net| net.ports.len() > MAX_PORTS) {
            warnings.push(format!(
                "pod {uid}: more than {MAX_PORTS} ports denied to {}: every port denied",
                net.net
            ));
        }
        let mut flags = watched | POD_ENFORCED;
        if pod.iter().any(|entry| entry.quarantined) {
            flags |= POD_QUARANTINED;
        }
        let exec_patterns: BTreeSet<&String> = pod
            .iter()
            .flat_map(|entry| &entry.denied_executables)
            .collect();
        if !exec_patterns.is_empty() {
            flags |= POD_EXEC_DENIED;
        }
        // The files the exact patterns name, and, once anything is denied, the dynamic loader:
        // run directly it executes any program without an exec naming it.
        let mut pod_files: BTreeMap<FileId, u8> = BTreeMap::new();
        if let Some(found) = files.get(uid).filter(|_| !exec_patterns.is_empty()) {
            for file in &found.loaders {
                pod_files.insert(*file, EXEC_FILE_LOADER);
            }
            for pattern in &exec_patterns {
                for file in found.denied.get(pattern.as_str()).into_iter().flatten() {
                    pod_files.insert(*file, EXEC_FILE_DENIED);
                }
            }
        }
        for id in ids {
            state.pods.insert(id, flags);
            for pattern in &exec_patterns {
                match exec_key(id, pattern) {
                    Some(key) => {
                        state.deny_exec.insert(key);
                    }
                    None => warnings.push(format!(
                        "pod {uid}: executable pattern {pattern:?} must be absolute, at most {} bytes, with a `*` only at its end",
                        EXEC_KEY_PATH - 1
                    )),
                }
            }
            for (file, kind) in &pod_files {
                state
                    .deny_exec_file
                    .insert(exec_file_key(id, *file), vec![*kind]);
            }
            for DeniedNet { net, ports } in &nets {
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
            for destination in pod.iter().flat_map(|entry| &entry.allowed_destinations) {
                state
                    .allowed
                    .insert(dest_key(id, destination.ip, destination.port));
            }
        }
    }
    (state, warnings)
}

#[cfg(test)]
mod tests;
