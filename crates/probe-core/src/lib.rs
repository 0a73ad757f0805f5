//! `meshlogic-probe-core`: the parts of the node probe (`meshlogic-probe`) that need neither a
//! kernel nor a network, so that they build without clang and libbpf and can be fuzzed
//! (`fuzz/`): the start-up configuration, pod cgroups, and the keys and values the probe writes
//! into its kernel maps, built from the operator's enforcement set.
//!
//! `meshlogic-probe` re-exports [`config`] and [`cgroup`] as its own, and checks at compile time
//! that [`layout`] is laid out as the types libbpf generates from `bpf/probe.h`.

pub mod cgroup;
pub mod config;
pub mod keys;
pub mod layout;
pub mod maps;
