//! Kernel map contents: the whole desired state, built in `meshlogic-probe-core`
//! ([`build`]), applied here as a diff.

use std::collections::{BTreeMap, BTreeSet};

use libbpf_rs::{MapCore, MapFlags};

pub use meshlogic_probe_core::maps::{KernelState, build};

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
            "deny_exec_file",
            &maps.deny_exec_file,
            old.deny_exec_file.clone(),
            new.deny_exec_file.clone(),
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
