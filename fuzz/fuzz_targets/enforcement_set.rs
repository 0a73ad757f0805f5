//! The node's enforcement set as the probe receives it from the trust API
//! (`GET /v1/enforcement`), and the kernel map entries it builds from it
//! (`meshlogic_probe_core::maps::build`). Whatever the body, decoding and building never panic;
//! every key and value has the size and layout `bpf/probe.h` declares, prefix lengths within
//! their trie's bounds and no bit set past them; every pod cgroup gets the flags of its pod;
//! and the kernel, looking the tries up as `bpf/probe/connect.bpf.h` does, refuses exactly the
//! connects that the pod's rules deny as the trust rules read them (`Cidr::contains`).
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use agentmesh_api::wire::{Cidr, EnforcementSet};
use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;
use meshlogic_probe_core::cgroup::PodCgroups;
use meshlogic_probe_core::keys::exec_file_key;
use meshlogic_probe_core::layout::{
    DestKey, EXEC_FILE_DENIED, EXEC_FILE_LOADER, EXEC_KEY_PATH, ExecKey, MAX_PORTS, Net4Key,
    Net6Key, NetRule, POD_ENFORCED, POD_EXEC_DENIED, POD_QUARANTINED, POD_WATCHED,
};
use meshlogic_probe_core::maps::{FileId, FilesByPod, PodFiles, build};

/// Bounds the work of the oracle on large inputs.
const PROBED_RULES: usize = 8;
const PROBED_PORTS: usize = 8;

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap())
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(bytes[at..at + 8].try_into().unwrap())
}

/// An LPM key: its prefix length is within `4 + 8 + data` bytes' bits and covers the pod id;
/// no bit of the data is set past it. Returns (pod, prefix length of the data).
fn check_lpm_key(key: &[u8], data: usize) -> (u64, u32) {
    assert_eq!(key.len(), 4 + 8 + data, "key size");
    let prefixlen = u32_at(key, 0);
    assert!(prefixlen >= 64, "prefix {prefixlen} does not cover the pod");
    let bits = prefixlen - 64;
    assert!(bits as usize <= data * 8, "prefix {prefixlen} past the key");
    for (i, byte) in key[12..].iter().enumerate() {
        let kept = bits.saturating_sub(i as u32 * 8).min(8);
        let mask = if kept == 8 { 0xff } else { !(0xffu8 >> kept) };
        assert_eq!(byte & !mask, 0, "bit set past the prefix in {key:?}");
    }
    (u64_at(key, 4), bits)
}

/// The ports a net_rule denies: `None` for every port.
fn check_rule(value: &[u8]) -> Option<BTreeSet<u16>> {
    assert_eq!(value.len(), size_of::<NetRule>());
    let nports = u32_at(value, 0) as usize;
    assert!(nports <= MAX_PORTS, "{nports} ports");
    let ports: Vec<u16> = (0..MAX_PORTS)
        .map(|i| u16::from_ne_bytes(value[4 + 2 * i..6 + 2 * i].try_into().unwrap()))
        .collect();
    assert!(ports[nports..].iter().all(|p| *p == 0), "ports past nports");
    assert!(
        ports[..nports].windows(2).all(|w| w[0] < w[1]),
        "ports unsorted"
    );
    (nports > 0).then(|| ports[..nports].iter().copied().collect())
}

/// Addresses worth asking about a network: its first and last, and their neighbours outside.
fn probes_of(net: IpNet, out: &mut BTreeSet<IpAddr>) {
    let (first, last) = (net.network(), net.broadcast());
    out.extend([first, last]);
    match (first, last) {
        (IpAddr::V4(first), IpAddr::V4(last)) => {
            let (first, last) = (u32::from(first), u32::from(last));
            out.extend(first.checked_sub(1).map(|a| IpAddr::V4(a.into())));
            out.extend(last.checked_add(1).map(|a| IpAddr::V4(a.into())));
        }
        (IpAddr::V6(first), IpAddr::V6(last)) => {
            let (first, last) = (u128::from(first), u128::from(last));
            out.extend(first.checked_sub(1).map(|a| IpAddr::V6(a.into())));
            out.extend(last.checked_add(1).map(|a| IpAddr::V6(a.into())));
        }
        _ => unreachable!(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(set) = serde_json::from_slice::<EnforcementSet>(data) else {
        return;
    };
    // The node's pod cgroups: one per pod the set names (the first has two, as while it is
    // recreated), and one pod the set does not name.
    let mut cgroups = PodCgroups::default();
    let uids: BTreeSet<&str> = set.pods.iter().map(|p| p.pod_uid.as_str()).collect();
    for (i, uid) in uids.iter().enumerate() {
        cgroups.by_id.insert(i as u64 + 1, uid.to_string());
    }
    if let Some(first) = uids.first() {
        cgroups.by_id.insert(1_000_000, first.to_string());
    }
    let stranger = (0..)
        .map(|i| format!("stranger-{i}"))
        .find(|u| !uids.contains(u.as_str()))
        .unwrap();
    cgroups.by_id.insert(2_000_000, stranger);

    // What the probe found in each pod's containers: one file per exact pattern (the same file
    // for two pods naming the same path), and one dynamic loader.
    let file_of = |pattern: &str| FileId {
        dev: 1,
        ino: pattern
            .bytes()
            .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b.into())),
    };
    let loader = FileId { dev: 2, ino: 1 };
    let mut files = FilesByPod::new();
    for pod in &set.pods {
        let found: &mut PodFiles = files.entry(pod.pod_uid.clone()).or_default();
        found.loaders.insert(loader);
        for pattern in pod.denied_executables.iter().filter(|p| !p.ends_with('*')) {
            found
                .denied
                .entry(pattern.clone())
                .or_default()
                .insert(file_of(pattern));
        }
    }
    let (state, warnings) = build(&cgroups, Some(&set), &files);
    let (plain, none) = build(&cgroups, None, &FilesByPod::new());
    assert!(none.is_empty());
    assert!(plain.deny_exec.is_empty() && plain.deny_net4.is_empty() && plain.deny_net6.is_empty());
    assert!(plain.allowed.is_empty() && plain.pods.values().all(|f| *f == POD_WATCHED));

    // Flags: every cgroup watched; enforced when its pod is named; quarantined when any entry
    // of its pod says so.
    assert_eq!(state.pods.len(), cgroups.by_id.len());
    for (id, uid) in &cgroups.by_id {
        let entries: Vec<_> = set.pods.iter().filter(|p| &p.pod_uid == uid).collect();
        let mut want = POD_WATCHED;
        if !entries.is_empty() {
            want |= POD_ENFORCED;
        }
        if entries.iter().any(|p| p.quarantined) {
            want |= POD_QUARANTINED;
        }
        let patterns: BTreeSet<&String> =
            entries.iter().flat_map(|p| &p.denied_executables).collect();
        if !patterns.is_empty() {
            want |= POD_EXEC_DENIED;
        }
        assert_eq!(state.pods[id], want, "flags of pod {uid:?}");
        // By file: the loader and each exact pattern's file, when anything is denied; a loader
        // that is also a denied file is denied.
        let mut want_files = BTreeMap::new();
        if !patterns.is_empty() {
            want_files.insert(exec_file_key(*id, loader), vec![EXEC_FILE_LOADER]);
            for pattern in patterns.iter().filter(|p| !p.ends_with('*')) {
                want_files.insert(exec_file_key(*id, file_of(pattern)), vec![EXEC_FILE_DENIED]);
            }
        }
        let got: BTreeMap<_, _> = (state.deny_exec_file.iter())
            .filter(|(key, _)| u64_at(key, 0) == *id)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(got, want_files, "files of pod {uid:?}");
    }
    let enforced: BTreeSet<u64> = (state.pods.iter())
        .filter(|(_, f)| *f & POD_ENFORCED != 0)
        .map(|(id, _)| *id)
        .collect();

    // Keys and values as bpf/probe.h lays them out.
    for key in &state.deny_exec {
        let (pod, bits) = check_lpm_key(key, EXEC_KEY_PATH);
        assert_eq!(key.len(), size_of::<ExecKey>());
        assert!(enforced.contains(&pod));
        assert!(bits % 8 == 0 && bits >= 8, "exec prefix {bits}");
        let path = &key[12..12 + bits as usize / 8];
        assert_eq!(path[0], b'/', "exec key not absolute: {path:?}");
        let uid = &cgroups.by_id[&pod];
        let named = set
            .pods
            .iter()
            .filter(|p| &p.pod_uid == uid)
            .flat_map(|p| &p.denied_executables);
        assert!(
            named
                .into_iter()
                .any(|pattern| match pattern.strip_suffix('*') {
                    Some(prefix) => prefix.as_bytes() == path,
                    None => [pattern.as_bytes(), b"\0"].concat() == path,
                }),
            "an exec key no pattern of pod {uid:?} asked for: {path:?}"
        );
    }
    for (key, value) in &state.deny_net4 {
        assert_eq!(key.len(), size_of::<Net4Key>());
        assert!(enforced.contains(&check_lpm_key(key, 4).0));
        check_rule(value);
    }
    for (key, value) in &state.deny_net6 {
        assert_eq!(key.len(), size_of::<Net6Key>());
        assert!(enforced.contains(&check_lpm_key(key, 16).0));
        check_rule(value);
    }
    for key in &state.allowed {
        assert_eq!(key.len(), size_of::<DestKey>());
        assert!(enforced.contains(&u64_at(key, 0)));
        let family = u32_at(key, 24);
        assert!(family == libc::AF_INET as u32 || family == libc::AF_INET6 as u32);
        if family == libc::AF_INET as u32 {
            assert!(
                key[12..24].iter().all(|b| *b == 0),
                "IPv4 destination past 4 bytes"
            );
        }
        assert!(u32_at(key, 28) <= u32::from(u16::MAX));
    }

    // Every executable pattern that can be matched is in the trie; the others are warned of.
    let mut warned = 0;
    for pod in &set.pods {
        for pattern in &pod.denied_executables {
            let bytes = pattern
                .strip_suffix('*')
                .map_or(pattern.len() + 1, str::len);
            let usable = agentmesh_api::common::exec_pattern_ok(pattern) && bytes <= EXEC_KEY_PATH;
            warned += usize::from(!usable);
        }
        warned += pod
            .denied_networks
            .iter()
            .filter(|n| n.network().is_err())
            .count();
    }
    assert!(warnings.len() >= warned.min(1), "{warnings:?}");

    // The kernel refuses exactly what the trust rules deny (more when a network has more
    // ports than a rule holds: then every port, and the probe says so).
    let mut rules_of: BTreeMap<&str, Vec<(Cidr, Vec<u16>)>> = BTreeMap::new();
    for pod in &set.pods {
        let rules = rules_of.entry(pod.pod_uid.as_str()).or_default();
        rules.extend(
            pod.denied_networks
                .iter()
                .filter_map(|n| Some((n.network().ok()?, n.ports.clone()))),
        );
    }
    for (uid, rules) in &rules_of {
        let id = *cgroups.by_id.iter().find(|(_, u)| u == uid).unwrap().0;
        let mut ips = BTreeSet::new();
        let mut ports = BTreeSet::from([0u16, 443]);
        for (cidr, rule_ports) in rules.iter().take(PROBED_RULES) {
            probes_of(cidr.net(), &mut ips);
            ports.extend(rule_ports.iter().take(PROBED_PORTS));
        }
        // Each address also as an IPv4-mapped IPv6 address, as a dual-stack socket connects.
        let mapped: Vec<IpAddr> = (ips.iter())
            .filter_map(|ip| match ip {
                IpAddr::V4(v4) => Some(IpAddr::V6(v4.to_ipv6_mapped())),
                IpAddr::V6(_) => None,
            })
            .collect();
        ips.extend(mapped);
        ips.extend(
            ["::ffff:0.0.0.0", "::ffff:10.0.0.1", "::"].map(|ip| ip.parse::<IpAddr>().unwrap()),
        );
        for ip in &ips {
            let covering: Vec<&Vec<u16>> = (rules.iter())
                .filter(|(cidr, _)| cidr.contains(*ip))
                .map(|(_, ports)| ports)
                .collect();
            let every_port = covering.iter().any(|p| p.is_empty());
            let union: BTreeSet<u16> = covering.iter().flat_map(|p| p.iter().copied()).collect();
            for port in &ports {
                let denied = every_port || union.contains(port);
                let refused = state.refuses_connect(id, *ip, *port);
                if denied {
                    assert!(
                        refused,
                        "pod {uid:?}: {ip} port {port} denied by its rules, not refused"
                    );
                } else if refused {
                    assert!(
                        union.len() > MAX_PORTS
                            && warnings.iter().any(|w| w.contains("every port denied")),
                        "pod {uid:?}: {ip} port {port} refused, but no rule denies it: {rules:?}"
                    );
                }
            }
        }
    }
});
