//! `meshlogic-probe-bench hooks`: what each file hook costs, by instruction count. Run by
//! `scripts/bench-kernels.sh` (`make bench-probe`) inside a QEMU VM per kernel with
//! `-icount shift=0`, where the guest's clock advances one nanosecond per instruction executed:
//! a CPU time in nanoseconds is an instruction count, the same from run to run whatever the
//! host's load (timing under emulation is useless: ±25%).
//!
//! Per workload (open+close of one file on tmpfs, exec of /bin/true, TCP connect+close), from a watched
//! pod cgroup, the median over `ROUNDS` rounds of the instructions per operation without any
//! program, then the overhead of: the probe with its file hook at fexit, the probe at sys_exit,
//! the probe without file events (`enableFile: false`), and each hook's empty program alone.

use std::path::Path;
use std::time::Duration;

use meshlogic_probe::kernel::floor;

use super::cpu::{Sample, measure};
use super::harness::{
    connect_target, move_to, start_probe, start_probe_without_files, stop, trust_stub,
};
use super::median;
use super::workloads::{connect_loop, exec_loop, open_path_loop};

const ROUNDS: usize = 3;
const OPENS: usize = 20_000;
const EXECS: usize = 100;
const CONNECTS: usize = 1_000;

/// What runs while the workloads are measured.
#[derive(Clone, Copy, PartialEq)]
enum Slot {
    Without,
    ProbeFexit,
    ProbeSysExit,
    ProbeNoFile,
    EmptyFexit,
    EmptySysExit,
}

const SLOTS: [(Slot, &str); 6] = [
    (Slot::Without, "none"),
    (Slot::ProbeFexit, "probe@fexit"),
    (Slot::ProbeSysExit, "probe@sys_exit"),
    (Slot::ProbeNoFile, "probe, no files"),
    (Slot::EmptyFexit, "empty fexit"),
    (Slot::EmptySysExit, "empty sys_exit"),
];

pub(crate) fn run(root: &Path, original: &Path, pod: &Path) {
    let trust = trust_stub();
    let target = connect_target();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let fexit = floor::fexit_fires(None);
    if let Err(why) = &fexit {
        println!("kernel {}: no fexit here ({why})", release.trim());
    }
    // A file in memory: in the VM /etc is the host's over virtio-9p, whose every open costs
    // tens of thousands of instructions and would drown what a hook costs.
    let file = std::env::temp_dir().join(format!("meshlogic-bench-hooks-{}", std::process::id()));
    std::fs::write(&file, "x").unwrap();
    let path = file.display().to_string();
    type Workload<'a> = (&'static str, Box<dyn Fn() + 'a>, usize);
    let workloads: [Workload; 3] = [
        (
            "open+close (tmpfs)",
            Box::new(|| open_path_loop(&path, OPENS)),
            OPENS,
        ),
        ("exec /bin/true", Box::new(|| exec_loop(EXECS)), EXECS),
        (
            "tcp connect+close",
            Box::new(move || connect_loop(target, CONNECTS)),
            CONNECTS,
        ),
    ];
    move_to(pod);
    // samples[workload][slot]: one per round.
    let mut samples: Vec<Vec<Vec<Sample>>> = vec![vec![Vec::new(); SLOTS.len()]; workloads.len()];
    for _round in 0..ROUNDS {
        for (s, (slot, _)) in SLOTS.iter().enumerate() {
            let wants_fexit = matches!(slot, Slot::ProbeFexit | Slot::EmptyFexit);
            if wants_fexit && fexit.is_err() {
                continue;
            }
            let probe = match slot {
                Slot::ProbeFexit => Some(start_probe(root, original, &trust, "{}", Some("fexit"))),
                Slot::ProbeSysExit => {
                    Some(start_probe(root, original, &trust, "{}", Some("sys_exit")))
                }
                Slot::ProbeNoFile => Some(start_probe_without_files(root, original, &trust)),
                _ => None,
            };
            let links = match slot {
                Slot::EmptyFexit => {
                    let function = fexit.as_ref().expect("fexit here");
                    floor::attach_empty_fexit(function).expect("empty fexit")
                }
                Slot::EmptySysExit => vec![floor::attach_empty_sys_exit().expect("empty sys_exit")],
                _ => Vec::new(),
            };
            for (w, (_, workload, _)) in workloads.iter().enumerate() {
                samples[w][s].push(measure(workload.as_ref(), None));
            }
            drop(links);
            if let Some((mut child, _)) = probe {
                stop(&mut child);
            }
        }
    }
    move_to(original);
    let _ = std::fs::remove_file(&file);

    println!(
        "kernel {}: instructions per operation (median of {ROUNDS} rounds, -icount shift=0), and the overhead over none",
        release.trim()
    );
    print!("{:<20}", "workload");
    for (_, name) in SLOTS {
        print!(" {name:>16}");
    }
    println!();
    let mut open_overheads = [None; SLOTS.len()];
    for (w, (name, _, ops)) in workloads.iter().enumerate() {
        let per_op = |slot: &[Sample]| {
            median(
                slot.iter()
                    .map(|sample| instructions(sample.cpu) / *ops as f64)
                    .collect(),
            )
        };
        let base = per_op(&samples[w][0]);
        print!("{name:<20} {base:>16.0}");
        for s in 1..SLOTS.len() {
            if samples[w][s].is_empty() {
                print!(" {:>16}", "-");
                continue;
            }
            let ratio = median(
                samples[w][s]
                    .iter()
                    .zip(&samples[w][0])
                    .map(|(with, without)| instructions(with.cpu) / instructions(without.cpu))
                    .collect(),
            );
            print!(" {:>+15.1}%", (ratio - 1.0) * 100.0);
            if w == 0 {
                open_overheads[s] = Some(ratio - 1.0);
            }
        }
        println!();
    }
    let (Some(fexit), Some(sys_exit)) = (open_overheads[1], open_overheads[2]) else {
        println!("fexit/sys_exit overhead ratio, open+close: - (no fexit on this kernel)");
        return;
    };
    println!(
        "fexit/sys_exit overhead ratio, open+close, the probe: {:.2} (goal <= 0.5)",
        fexit / sys_exit
    );
    if let (Some(empty_fexit), Some(empty_sys_exit)) = (open_overheads[4], open_overheads[5]) {
        println!(
            "fexit/sys_exit overhead ratio, open+close, empty programs: {:.2}",
            empty_fexit / empty_sys_exit
        );
    }
}

/// Under `-icount shift=0` a nanosecond of guest time is one instruction.
fn instructions(cpu: Duration) -> f64 {
    cpu.as_nanos() as f64
}
