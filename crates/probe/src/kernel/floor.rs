//! Empty programs at the probe's file hooks (`bpf/floor.bpf.c`). `make bench-probe` attaches
//! them to measure what each hook costs before the probe does any work there; the probe loads
//! the fexit pair first to learn whether that hook can be had on this kernel
//! ([`fexit_fires`]).

use std::mem::MaybeUninit;
use std::path::Path;

use libbpf_rs::Link;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};

use super::skel::floor as skel;

/// The kernel function every path-opening system call ends in, by kernel version: fexit
/// programs attach to the first of these the kernel has.
pub const OPEN_FUNCTIONS: [&str; 2] = ["do_filp_open", "do_file_open"];

/// With `fexit`, the fexit pair attached to `open_function`; else the sys_exit program.
fn open_floor<'obj>(
    object: &'obj mut MaybeUninit<libbpf_rs::OpenObject>,
    btf: Option<&Path>,
    fexit: Option<&str>,
) -> Result<skel::FloorSkel<'obj>, libbpf_rs::Error> {
    let mut builder = skel::FloorSkelBuilder::default();
    if let Some(btf) = btf {
        builder.obj_builder.btf_custom_path(btf)?;
    }
    let mut open = builder.open(object)?;
    open.progs.empty_sys_exit.set_autoload(fexit.is_none());
    open.progs
        .empty_filp_open_exit
        .set_autoload(fexit.is_some());
    open.progs
        .empty_by_handle_exit
        .set_autoload(fexit.is_some());
    if let Some(function) = fexit {
        open.progs
            .empty_filp_open_exit
            .set_attach_target(0, Some(function.to_string()))?;
    }
    open.load()
}

/// Loads and attaches the empty `sys_exit` program; it stays attached until the link is
/// dropped.
pub fn attach_empty_sys_exit() -> Result<Link, libbpf_rs::Error> {
    let mut object = MaybeUninit::uninit();
    let loaded = open_floor(&mut object, None, None)?;
    loaded.progs.empty_sys_exit.attach()
}

/// Loads and attaches the empty fexit pair at `open_function` (from [`fexit_fires`]);
/// attached until the links are dropped.
pub fn attach_empty_fexit(open_function: &str) -> Result<Vec<Link>, libbpf_rs::Error> {
    let mut object = MaybeUninit::uninit();
    let loaded = open_floor(&mut object, None, Some(open_function))?;
    Ok(vec![
        loaded.progs.empty_filp_open_exit.attach()?,
        loaded.progs.empty_by_handle_exit.attach()?,
    ])
}

/// Whether the fexit hook can be had here, and at which open function ([`OPEN_FUNCTIONS`]): the
/// empty pair loads and attaches (a kernel under lockdown, or without fexit on this
/// architecture, refuses one or the other), and an open of this process is then seen (an
/// attached program that never runs would observe nothing). Err: why not, for the status and
/// the log. Everything is detached on return.
pub fn fexit_fires(btf: Option<&Path>) -> Result<&'static str, String> {
    let mut errors = Vec::new();
    for function in OPEN_FUNCTIONS {
        match super::libbpf_log::refusal_expected(|| fexit_fires_at(btf, function)) {
            Ok(()) => return Ok(function),
            Err(error) => errors.push(error),
        }
    }
    Err(errors.join("; "))
}

fn fexit_fires_at(btf: Option<&Path>, function: &str) -> Result<(), String> {
    let mut object = MaybeUninit::uninit();
    let mut loaded = open_floor(&mut object, btf, Some(function))
        .map_err(|error| format!("fexit/{function}: {error:#}"))?;
    let mut links = Vec::new();
    for (name, program) in [
        (function, &loaded.progs.empty_filp_open_exit),
        ("do_handle_open", &loaded.progs.empty_by_handle_exit),
    ] {
        links.push(
            program
                .attach()
                .map_err(|error| format!("fexit/{name}: {error:#}"))?,
        );
    }
    let bss: *mut skel::types::bss = loaded
        .maps
        .bss_data
        .as_deref_mut()
        .ok_or_else(|| "fexit: no .bss".to_string())?;
    // SAFETY: the .bss map is mmap'ed for as long as `loaded` lives, and the kernel writes
    // `fired` concurrently: volatile accesses of aligned integers through the raw pointer.
    unsafe { std::ptr::write_volatile(&raw mut (*bss).probe_tgid, std::process::id()) };
    for _ in 0..3 {
        drop(std::fs::File::open("/"));
        if unsafe { std::ptr::read_volatile(&raw const (*bss).fired) } > 0 {
            return Ok(());
        }
    }
    Err(format!("fexit/{function} attached but never ran"))
}
