//! An empty program at the raw `sys_exit` tracepoint (`bpf/floor.bpf.c`). `make bench-probe`
//! attaches it to measure what the hook costs before the probe does any work there.

use std::mem::MaybeUninit;

use libbpf_rs::Link;
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};

use super::skel::floor as skel;

/// Loads and attaches the empty program; it stays attached until the link is dropped.
pub fn attach_empty_sys_exit() -> Result<Link, libbpf_rs::Error> {
    let mut object = MaybeUninit::uninit();
    let open = skel::FloorSkelBuilder::default().open(&mut object)?;
    let mut loaded = open.load()?;
    loaded.attach()?;
    loaded
        .links
        .empty_sys_exit
        .take()
        .ok_or_else(|| libbpf_rs::Error::from(std::io::Error::other("no link")))
}
