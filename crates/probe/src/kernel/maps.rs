//! Kernel map contents: keys and values laid out as `bpf/probe.h` says, the whole desired state
//! built from the pod cgroups and the enforcement set, and applied as a diff.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use agentmesh_api::wire::EnforcementSet;
use libbpf_rs::{MapCore, MapFlags};

use super::event::{
    EXEC_KEY_PATH, MAX_PORTS, PATH_LEN, POD_ENFORCED, POD_QUARANTINED, POD_WATCHED,
};
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

/// Entries of the mute_paths trie. A mute path `/proc` mutes `/proc` itself and everything
/// under `/proc/`, not `/process`: two prefixes, the path with its NUL and the path with `/`.
pub fn mute_path_entries(paths: &[String]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut entries = Vec::new();
    for path in paths {
        let path = path.as_bytes();
        let mut prefixes: Vec<Vec<u8>> = Vec::new();
        if path.ends_with(b"/") {
            prefixes.push(path.to_vec());
        } else {
            prefixes.push([path, b"\0"].concat());
            prefixes.push([path, b"/"].concat());
        }
        for prefix in prefixes {
            if prefix.len() > PATH_LEN {
                continue;
            }
            let mut key = Vec::with_capacity(4 + PATH_LEN);
            key.extend_from_slice(&((prefix.len() * 8) as u32).to_ne_bytes());
            key.extend_from_slice(&prefix);
            key.resize(4 + PATH_LEN, 0);
            entries.push((key, vec![1u8]));
        }
    }
    entries
}

/// deny_exec key for a pod: an absolute path (matched exactly, NUL included) or a prefix
/// ending in `*`. `None` when the pattern cannot be matched (too long, not absolute).
pub fn exec_key(pod: u64, pattern: &str) -> Option<Vec<u8>> {
    let (bytes, exact) = match pattern.strip_suffix('*') {
        Some(prefix) => (prefix.as_bytes().to_vec(), false),
        None => ([pattern.as_bytes(), b"\0"].concat(), true),
    };
    if !pattern.starts_with('/') || bytes.len() > EXEC_KEY_PATH || (exact && bytes.len() < 2) {
        return None;
    }
    let mut key = Vec::with_capacity(4 + 8 + EXEC_KEY_PATH);
    key.extend_from_slice(&((64 + bytes.len() * 8) as u32).to_ne_bytes());
    key.extend_from_slice(&pod.to_ne_bytes());
    key.extend_from_slice(&bytes);
    key.resize(4 + 8 + EXEC_KEY_PATH, 0);
    Some(key)
}

/// A CIDR (or a bare address) with its host bits cleared.
pub fn parse_cidr(cidr: &str) -> Option<(IpAddr, u8)> {
    let (ip, len) = match cidr.split_once('/') {
        Some((ip, len)) => (ip.parse::<IpAddr>().ok()?, len.parse::<u8>().ok()?),
        None => {
            let ip = cidr.parse::<IpAddr>().ok()?;
            (ip, if ip.is_ipv4() { 32 } else { 128 })
        }
    };
    match ip {
        IpAddr::V4(v4) if len <= 32 => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            Some((IpAddr::V4((u32::from(v4) & mask).into()), len))
        }
        IpAddr::V6(v6) if len <= 128 => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            Some((IpAddr::V6((u128::from(v6) & mask).into()), len))
        }
        _ => None,
    }
}

fn contains(net: (IpAddr, u8), other: (IpAddr, u8)) -> bool {
    match (net.0, other.0) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = if net.1 == 0 {
                0
            } else {
                u32::MAX << (32 - net.1)
            };
            net.1 <= other.1 && u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = if net.1 == 0 {
                0
            } else {
                u128::MAX << (128 - net.1)
            };
            net.1 <= other.1 && u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

fn net_key(pod: u64, ip: IpAddr, len: u8) -> Vec<u8> {
    let mut key = Vec::with_capacity(28);
    key.extend_from_slice(&(64 + u32::from(len)).to_ne_bytes());
    key.extend_from_slice(&pod.to_ne_bytes());
    match ip {
        IpAddr::V4(v4) => key.extend_from_slice(&v4.octets()),
        IpAddr::V6(v6) => key.extend_from_slice(&v6.octets()),
    }
    key
}

/// net_rule value: no ports means every port.
fn net_rule(ports: &BTreeSet<u16>) -> Vec<u8> {
    let mut value = Vec::with_capacity(4 + 2 * MAX_PORTS);
    value.extend_from_slice(&(ports.len() as u32).to_ne_bytes());
    for port in ports {
        value.extend_from_slice(&port.to_ne_bytes());
    }
    value.resize(4 + 2 * MAX_PORTS, 0);
    value
}

pub fn dest_key(pod: u64, ip: IpAddr, port: u16) -> Vec<u8> {
    let mut key = Vec::with_capacity(32);
    key.extend_from_slice(&pod.to_ne_bytes());
    let (family, addr) = match ip {
        IpAddr::V4(v4) => {
            let mut addr = [0u8; 16];
            addr[..4].copy_from_slice(&v4.octets());
            (libc::AF_INET as u32, addr)
        }
        IpAddr::V6(v6) => (libc::AF_INET6 as u32, v6.octets()),
    };
    key.extend_from_slice(&addr);
    key.extend_from_slice(&family.to_ne_bytes());
    key.extend_from_slice(&u32::from(port).to_ne_bytes());
    key
}

/// The kernel state for these pod cgroups under this enforcement (none below tier 3), and
/// warnings about rules that cannot be enforced as written.
pub fn build(
    pod_cgroups: &PodCgroups,
    enforcement: Option<&EnforcementSet>,
) -> (KernelState, Vec<String>) {
    let mut state = KernelState::default();
    let mut warnings = Vec::new();
    for id in pod_cgroups.by_id.keys() {
        state.pods.insert(*id, POD_WATCHED);
    }
    let Some(enforcement) = enforcement else {
        return (state, warnings);
    };
    for pod in &enforcement.pods {
        let ids = pod_cgroups.ids_of(&pod.pod_uid);
        let mut nets: Vec<((IpAddr, u8), BTreeSet<u16>)> = Vec::new();
        for rule in &pod.denied_networks {
            match parse_cidr(&rule.cidr) {
                Some(net) => nets.push((net, rule.ports.iter().copied().collect())),
                None => warnings.push(format!("pod {}: bad CIDR {:?}", pod.pod_uid, rule.cidr)),
            }
        }
        // The trie answers with the longest match only: give each network the ports of every
        // network that contains it, so a more specific rule never hides a wider one.
        let effective: Vec<((IpAddr, u8), BTreeSet<u16>)> = nets
            .iter()
            .map(|(net, _)| {
                let covering: Vec<&BTreeSet<u16>> = nets
                    .iter()
                    .filter(|(outer, _)| contains(*outer, *net))
                    .map(|(_, ports)| ports)
                    .collect();
                let ports = if covering.iter().any(|ports| ports.is_empty()) {
                    BTreeSet::new()
                } else {
                    covering.into_iter().flatten().copied().collect()
                };
                (*net, ports)
            })
            .collect();
        for id in ids {
            let mut flags = POD_WATCHED | POD_ENFORCED;
            if pod.quarantined {
                flags |= POD_QUARANTINED;
            }
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
            for ((ip, len), ports) in &effective {
                let ports = if ports.len() > MAX_PORTS {
                    warnings.push(format!(
                        "pod {}: more than {MAX_PORTS} ports denied to {ip}/{len}: every port denied",
                        pod.pod_uid
                    ));
                    BTreeSet::new()
                } else {
                    ports.clone()
                };
                let map = if ip.is_ipv4() {
                    &mut state.deny_net4
                } else {
                    &mut state.deny_net6
                };
                map.insert(net_key(id, *ip, *len), net_rule(&ports));
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
    // Rules first, flags last: a pod is marked enforced only once its rules are in place.
    for key in new.deny_exec.difference(&old.deny_exec) {
        report("deny_exec", maps.deny_exec.update(key, &[1], MapFlags::ANY));
    }
    for (map, old, new, name) in [
        (&maps.deny_net4, &old.deny_net4, &new.deny_net4, "deny_net4"),
        (&maps.deny_net6, &old.deny_net6, &new.deny_net6, "deny_net6"),
    ] {
        for (key, value) in new {
            if old.get(key) != Some(value) {
                report(name, map.update(key, value, MapFlags::ANY));
            }
        }
    }
    for key in new.allowed.difference(&old.allowed) {
        report(
            "allowed_dest",
            maps.allowed_dest.update(key, &[1], MapFlags::ANY),
        );
    }
    for (id, flags) in &new.pods {
        if old.pods.get(id) != Some(flags) {
            report(
                "pod_cgroups",
                maps.pod_cgroups
                    .update(&id.to_ne_bytes(), &flags.to_ne_bytes(), MapFlags::ANY),
            );
        }
    }
    // Then what is gone.
    for id in old.pods.keys().filter(|id| !new.pods.contains_key(id)) {
        report("pod_cgroups", maps.pod_cgroups.delete(&id.to_ne_bytes()));
    }
    for key in old.deny_exec.difference(&new.deny_exec) {
        report("deny_exec", maps.deny_exec.delete(key));
    }
    for (map, old, new, name) in [
        (&maps.deny_net4, &old.deny_net4, &new.deny_net4, "deny_net4"),
        (&maps.deny_net6, &old.deny_net6, &new.deny_net6, "deny_net6"),
    ] {
        for key in old.keys().filter(|key| !new.contains_key(*key)) {
            report(name, map.delete(key));
        }
    }
    for key in old.allowed.difference(&new.allowed) {
        report("allowed_dest", maps.allowed_dest.delete(key));
    }
    // Last: the programs' cache of each cgroup's pod and flags is stale now.
    if old.pods != new.pods {
        report("pods_generation", bump_generation(&maps.pods_generation));
    }
}

pub fn bump_generation(map: &libbpf_rs::MapMut<'_>) -> libbpf_rs::Result<()> {
    let key = 0u32.to_ne_bytes();
    let current = map
        .lookup(&key, MapFlags::ANY)?
        .and_then(|value| value.try_into().ok())
        .map_or(0, u64::from_ne_bytes);
    map.update(&key, &current.wrapping_add(1).to_ne_bytes(), MapFlags::ANY)
}

#[cfg(test)]
mod tests {
    use agentmesh_api::wire::{DeniedNetwork, Destination, PodEnforcement};

    use super::*;

    #[test]
    fn a_mute_path_is_the_path_itself_and_its_subtree() {
        let entries = mute_path_entries(&["/proc".into(), "/var/log/".into()]);
        let prefixes: Vec<(u32, Vec<u8>)> = entries
            .iter()
            .map(|(key, _)| {
                let len = u32::from_ne_bytes(key[..4].try_into().unwrap());
                (len, key[4..4 + len as usize / 8].to_vec())
            })
            .collect();
        assert_eq!(
            prefixes,
            [
                (48, b"/proc\0".to_vec()),
                (48, b"/proc/".to_vec()),
                (72, b"/var/log/".to_vec())
            ]
        );
        assert!(entries.iter().all(|(key, _)| key.len() == 4 + PATH_LEN));
    }

    #[test]
    fn exec_keys_match_exactly_or_by_prefix() {
        let exact = exec_key(7, "/usr/bin/curl").unwrap();
        assert_eq!(
            u32::from_ne_bytes(exact[..4].try_into().unwrap()),
            64 + 14 * 8
        );
        assert_eq!(&exact[4..12], &7u64.to_ne_bytes());
        assert_eq!(&exact[12..26], b"/usr/bin/curl\0");
        let prefix = exec_key(7, "/tmp/*").unwrap();
        assert_eq!(
            u32::from_ne_bytes(prefix[..4].try_into().unwrap()),
            64 + 5 * 8
        );
        assert!(exec_key(7, "curl").is_none());
        assert!(exec_key(7, &format!("/{}", "a".repeat(300))).is_none());
    }

    #[test]
    fn cidrs_are_parsed_and_masked() {
        assert_eq!(
            parse_cidr("10.1.2.3/8"),
            Some(("10.0.0.0".parse().unwrap(), 8))
        );
        assert_eq!(
            parse_cidr("10.1.2.3"),
            Some(("10.1.2.3".parse().unwrap(), 32))
        );
        assert_eq!(parse_cidr("::1/128"), Some(("::1".parse().unwrap(), 128)));
        assert_eq!(
            parse_cidr("0.0.0.0/0"),
            Some(("0.0.0.0".parse().unwrap(), 0))
        );
        assert_eq!(parse_cidr("10.0.0.0/33"), None);
        assert_eq!(parse_cidr("nope"), None);
    }

    #[test]
    fn enforcement_marks_the_pod_and_narrow_rules_keep_wide_ports() {
        let pods = PodCgroups {
            by_id: [(11, "a".to_string()), (22, "b".to_string())]
                .into_iter()
                .collect(),
        };
        let set = EnforcementSet {
            version: "1".into(),
            pods: vec![PodEnforcement {
                pod_uid: "a".into(),
                quarantined: true,
                denied_networks: vec![
                    DeniedNetwork {
                        cidr: "10.0.0.0/8".into(),
                        ports: vec![22],
                    },
                    DeniedNetwork {
                        cidr: "10.1.0.0/16".into(),
                        ports: vec![443],
                    },
                    DeniedNetwork {
                        cidr: "fd00::/8".into(),
                        ports: vec![],
                    },
                ],
                denied_executables: vec!["/usr/bin/curl".into(), "bad".into()],
                allowed_destinations: vec![Destination {
                    ip: "10.0.0.1".parse().unwrap(),
                    port: 8080,
                }],
            }],
        };
        let (state, warnings) = build(&pods, Some(&set));
        assert_eq!(
            state.pods[&11],
            POD_WATCHED | POD_ENFORCED | POD_QUARANTINED
        );
        assert_eq!(state.pods[&22], POD_WATCHED);
        assert_eq!(state.deny_exec.len(), 1);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(state.deny_net4.len(), 2);
        let narrow = &state.deny_net4[&net_key(11, "10.1.0.0".parse().unwrap(), 16)];
        assert_eq!(u32::from_ne_bytes(narrow[..4].try_into().unwrap()), 2);
        assert_eq!(state.deny_net6.len(), 1);
        assert_eq!(state.allowed.len(), 1);
        let (plain, _) = build(&pods, None);
        assert!(plain.deny_exec.is_empty() && plain.pods.values().all(|f| *f == POD_WATCHED));
    }
}
