//! Opening, loading and attaching the programs of `bpf/probe.bpf.c` as the options say, file
//! opens at fexit where the kernel allows it.

use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags};

use agentmesh_api::meshlogic::FileHook;
use meshlogic_probe_core::config::FileHookChoice;

use super::event::{HEADER_LEN, PATH_LEN};
use super::floor::fexit_fires;
use super::keys::mute_path_entries;
use super::skel::ProbeSkelBuilder;
use super::{KernelError, KernelOptions, Loaded};

pub(super) type Skel<'obj> = super::skel::ProbeSkel<'obj>;

/// Events one CPU sends between two wake-ups of the consumer: a power of two such that all CPUs
/// together fill at most a quarter of the ring buffer with full-size events in between.
fn wakeup_every(ring_buffer_size: u32, cpus: Result<usize, libbpf_rs::Error>) -> u64 {
    let cpus = cpus.unwrap_or(1).max(1) as u64;
    let full_event = (HEADER_LEN + PATH_LEN + 8) as u64; // 8: ring record header
    let events = u64::from(ring_buffer_size) / 4 / cpus / full_event;
    if events <= 1 {
        1
    } else {
        1 << (63 - events.leading_zeros())
    }
}

/// Where file opens are observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hook {
    /// fexit of this open function (and of do_handle_open).
    Fexit(&'static str),
    SysExit,
}

impl Hook {
    fn kind(self) -> FileHook {
        match self {
            Self::Fexit(_) => FileHook::Fexit,
            Self::SysExit => FileHook::SysExit,
        }
    }
}

/// The file hook to load, and why `auto` did not get fexit.
fn choose_file_hook(
    options: &KernelOptions,
) -> Result<(Option<Hook>, Option<String>), KernelError> {
    if !options.enable_file {
        return Ok((None, None));
    }
    let btf = options.btf_path.as_deref();
    match options.file_hook {
        FileHookChoice::Only(FileHook::SysExit) => Ok((Some(Hook::SysExit), None)),
        FileHookChoice::Only(FileHook::Fexit) => fexit_fires(btf)
            .map(|function| (Some(Hook::Fexit(function)), None))
            .map_err(KernelError::Load),
        FileHookChoice::Auto => Ok(match fexit_fires(btf) {
            Ok(function) => (Some(Hook::Fexit(function)), None),
            Err(why) => (Some(Hook::SysExit), Some(why)),
        }),
    }
}

/// Loads as the options say, the file hook chosen by [`choose_file_hook`]. With `auto`, a
/// probe that the kernel refuses with the fexit hook (when the empty pair was taken) is loaded
/// again with `sys_exit`, into `spare`.
pub(super) fn load<'obj>(
    options: &KernelOptions,
    object: &'obj mut MaybeUninit<libbpf_rs::OpenObject>,
    spare: &'obj mut MaybeUninit<libbpf_rs::OpenObject>,
) -> Result<(Skel<'obj>, Vec<Link>, Loaded), KernelError> {
    let (mut file_hook, note) = choose_file_hook(options)?;
    if options.inject_fexit_load_failure && matches!(file_hook, Some(Hook::Fexit(_))) {
        // The injected fault: do_handle_open's third argument is an int, which the program
        // would read as do_filp_open's `struct open_flags *`: the verifier refuses it.
        file_hook = Some(Hook::Fexit("do_handle_open"));
    }
    match (load_with(options, object, file_hook), file_hook) {
        (Err(error), Some(Hook::Fexit(function))) if options.file_hook == FileHookChoice::Auto => {
            let why = format!("the probe with fexit/{function}: {error}");
            tracing::warn!(%why, "file opens observed at sys_exit");
            let (skel, links, mut loaded) = load_with(options, spare, Some(Hook::SysExit))?;
            loaded.file_hook_note = Some(why);
            Ok((skel, links, loaded))
        }
        (Err(error), _) => Err(error),
        (Ok((skel, links, mut loaded)), _) => {
            if let Some(why) = note {
                tracing::info!(%why, "no fexit here: file opens observed at sys_exit");
                loaded.file_hook_note = Some(why);
            }
            Ok((skel, links, loaded))
        }
    }
}

fn load_with<'obj>(
    options: &KernelOptions,
    object: &'obj mut MaybeUninit<libbpf_rs::OpenObject>,
    file_hook: Option<Hook>,
) -> Result<(Skel<'obj>, Vec<Link>, Loaded), KernelError> {
    let load_error = |error: libbpf_rs::Error| KernelError::Load(format!("{error:#}"));
    let mut builder = ProbeSkelBuilder::default();
    if let Some(btf) = &options.btf_path {
        builder
            .obj_builder
            .btf_custom_path(btf)
            .map_err(load_error)?;
    }
    let mut open = builder.open(object).map_err(load_error)?;
    let blocking = options.blocking;
    if let Some(rodata) = open.maps.rodata_data.as_deref_mut() {
        rodata.filter_pods = options.filter_pods;
        rodata.enforce = blocking;
        rodata.report_exec = options.enable_process;
        rodata.observe_network = options.enable_network;
        rodata.fold_repeated_opens = true;
        rodata.skip_runtime_opens = options.skip_runtime_opens;
        rodata.hash_key = rand::random();
        rodata.wakeup_every =
            wakeup_every(options.ring_buffer_size, libbpf_rs::num_possible_cpus());
    }
    open.maps
        .events
        .set_max_entries(options.ring_buffer_size)
        .map_err(load_error)?;
    open.progs
        .handle_exec
        .set_autoload(options.enable_process || blocking);
    open.progs.handle_exit.set_autoload(options.enable_process);
    open.progs.handle_cgroup_mkdir.set_autoload(true);
    let fexit = matches!(file_hook, Some(Hook::Fexit(_)));
    open.progs
        .handle_sys_exit
        .set_autoload(file_hook == Some(Hook::SysExit));
    open.progs.handle_filp_open_exit.set_autoload(fexit);
    open.progs.handle_by_handle_exit.set_autoload(fexit);
    if let Some(Hook::Fexit(function)) = file_hook {
        open.progs
            .handle_filp_open_exit
            .set_attach_target(0, Some(function.to_string()))
            .map_err(load_error)?;
    }
    let connects = options.enable_network || blocking;
    open.progs.handle_connect4.set_autoload(connects);
    open.progs.handle_connect6.set_autoload(connects);
    let skel = open.load().map_err(load_error)?;

    for (key, value) in mute_path_entries(&options.mute_paths) {
        skel.maps
            .mute_paths
            .update(&key, &value, MapFlags::ANY)
            .map_err(load_error)?;
    }

    let attach_error =
        |name: &str, error: libbpf_rs::Error| KernelError::Attach(format!("{name}: {error:#}"));
    let mut links = Vec::new();
    let tracepoints = [
        (
            options.enable_process || blocking,
            "handle_exec",
            &skel.progs.handle_exec,
        ),
        (
            options.enable_process,
            "handle_exit",
            &skel.progs.handle_exit,
        ),
        (
            file_hook == Some(Hook::SysExit),
            "handle_sys_exit",
            &skel.progs.handle_sys_exit,
        ),
        (
            fexit,
            "handle_filp_open_exit",
            &skel.progs.handle_filp_open_exit,
        ),
        (
            fexit,
            "handle_by_handle_exit",
            &skel.progs.handle_by_handle_exit,
        ),
        (true, "handle_cgroup_mkdir", &skel.progs.handle_cgroup_mkdir),
    ];
    for (wanted, name, program) in tracepoints {
        if wanted {
            links.push(program.attach().map_err(|e| attach_error(name, e))?);
        }
    }
    if connects {
        attach_cgroup(&skel, &options.cgroup_root, &mut links).map_err(KernelError::Attach)?;
    }
    let loaded = Loaded {
        programs: links.len() as u32,
        file_hook: file_hook.map(Hook::kind),
        file_hook_note: None,
        blocking: if blocking {
            Ok(())
        } else {
            Err("safety tier 3 not requested".to_string())
        },
    };
    Ok((skel, links, loaded))
}

fn attach_cgroup(skel: &Skel<'_>, root: &PathBuf, links: &mut Vec<Link>) -> Result<(), String> {
    let cgroup = std::fs::File::open(root)
        .map_err(|error| format!("cannot open cgroup root {}: {error}", root.display()))?;
    let fd = cgroup.as_raw_fd();
    let v4 = skel
        .progs
        .handle_connect4
        .attach_cgroup(fd)
        .map_err(|error| format!("cgroup/connect4 on {}: {error:#}", root.display()))?;
    let v6 = skel
        .progs
        .handle_connect6
        .attach_cgroup(fd)
        .map_err(|error| format!("cgroup/connect6 on {}: {error:#}", root.display()))?;
    links.push(v4);
    links.push(v6);
    Ok(())
}
