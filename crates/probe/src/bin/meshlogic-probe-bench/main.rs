//! `make bench-probe`: the probe's cost and capacity, measured against a baseline in the same
//! run. Needs root, cgroup v2 and BPF. The bench process moves itself into a pod cgroup laid out
//! like the kubelet's, so everything it does is watched (the worst case); the probe (the real
//! binary, tier 2, every category on, default 1 MiB ring buffer) runs in the original cgroup.
//!
//! - exec, open and connect loops without and with the probe: overhead ratio per workload (the
//!   median over `ROUNDS` rounds of each round's ratio), plus opens by an unwatched process and
//!   opens of a new path each time; and the same loops with only an empty program at the raw
//!   `sys_exit` tracepoint, the one file hook a kernel that refuses fexit offers (this machine's):
//!   the floor under any observer of opens there;
//! - the highest open-event rate delivered with zero ring-buffer drops, stepping the offered
//!   rate up;
//! - the probe's peak RSS (VmHWM).
//!
//! `meshlogic-probe-bench hooks` measures the file hooks instead, by instruction count, in the
//! VMs of `scripts/bench-kernels.sh` (see `hooks`).
//!
//! By concern: `cpu` (what a workload and the probe cost), `workloads` (the loops measured),
//! `harness` (the probe under test, its trust API stub, cgroups), `hooks` (the hook comparison).

mod cpu;
mod harness;
mod hooks;
mod workloads;

use std::path::Path;
use std::time::Duration;

use cpu::{Sample, measure};
use harness::*;
use workloads::*;

const ROUNDS: usize = 7;
const EXECS: usize = 1_000;
const OPENS: usize = 300_000;
const CONNECTS: usize = 5_000;
const GENERATORS: usize = 2;

fn main() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("meshlogic-probe-bench: needs root (BPF, cgroups)");
        std::process::exit(2);
    }
    let root = cgroup2_root();
    let original = own_cgroup(&root);
    let top = root.join(format!("meshlogic-bench-{}", std::process::id()));
    let uid = "0b6c1f8e-3f6a-4d38-9d0e-3f2d1c0a9b11";
    let pod = top.join(format!("kubepods/burstable/pod{uid}/{:064x}", 1));
    std::fs::create_dir_all(&pod).expect("creating the bench pod cgroup");
    let hooks = std::env::args().nth(1).as_deref() == Some("hooks");
    let result = std::panic::catch_unwind(|| {
        if hooks {
            hooks::run(&root, &original, &pod)
        } else {
            run(&root, &original, &pod)
        }
    });
    move_to(&original);
    let _ = remove_tree(&top);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// Name, loop, operations per loop.
type Workload = (&'static str, Box<dyn Fn()>, usize);

fn run(root: &Path, original: &Path, pod: &Path) {
    let trust = trust_stub();
    let target = connect_target();

    move_to(pod);
    println!(
        "meshlogic-probe bench: tier 2, exec+file+network on, ring buffer 1 MiB, bench process watched"
    );
    println!(
        "median of {ROUNDS} rounds (each: without, with the probe, floor, back to back); CPU = the workload's own CPU time (BPF programs run in its \
         syscalls), + probe = plus the probe process's CPU time meanwhile"
    );
    println!(
        "floor = the same loop with only an empty program attached at the raw sys_exit tracepoint"
    );
    println!(
        "{:<28} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9} {:>13} {:>10}",
        "workload (us/op)",
        "wall w/o",
        "wall with",
        "cpu w/o",
        "cpu with",
        "cpu ovh",
        "wall ovh",
        "cpu+probe ovh",
        "floor ovh"
    );
    let workloads: Vec<Workload> = vec![
        ("exec /bin/true", Box::new(|| exec_loop(EXECS)), EXECS),
        ("open+close", Box::new(|| open_loop(OPENS)), OPENS),
        (
            "tcp connect+close",
            Box::new(move || connect_loop(target, CONNECTS)),
            CONNECTS,
        ),
    ];
    // Not one of the loops: a path never opened before each time, so that no open is a
    // repeat the kernel folds into a count: every open is an event sent to user space.
    let distinct = workloads.len();
    let unwatched = distinct + 1;
    // Per workload: without, with the probe, with the empty sys_exit program, and (exec and
    // connect only) with the probe told `ebpf.enableFile: false`, which leaves sys_exit alone.
    const WITHOUT: usize = 0;
    const PROBE: usize = 1;
    const FLOOR: usize = 2;
    const NO_FILE: usize = 3;
    // Every round's sample, per workload and slot: the slots of a round run back to back, so a
    // round's ratios compare like with like on a machine whose speed drifts.
    let mut samples: Vec<[Vec<Sample>; 4]> = vec![Default::default(); workloads.len() + 2];
    let mut hwm_kib = 0;
    for _round in 0..ROUNDS {
        for slot in [WITHOUT, PROBE, FLOOR, NO_FILE] {
            let probe = match slot {
                PROBE => Some(start_probe(root, original, &trust, "{}", None)),
                NO_FILE => Some(start_probe_without_files(root, original, &trust)),
                _ => None,
            };
            let floor = (slot == FLOOR).then(|| {
                meshlogic_probe::kernel::floor::attach_empty_sys_exit()
                    .expect("attaching the empty sys_exit program")
            });
            let pid = probe.as_ref().map(|(child, _)| child.id());
            for (i, (name, workload, _)) in workloads.iter().enumerate() {
                if slot != NO_FILE || !name.starts_with("open") {
                    samples[i][slot].push(measure(workload.as_ref(), pid));
                }
            }
            if slot != NO_FILE {
                samples[distinct][slot].push(measure(&|| open_distinct_loop(OPENS), pid));
                move_to(original);
                samples[unwatched][slot].push(measure(&|| open_loop(OPENS), pid));
                move_to(pod);
            }
            if let Some((mut child, _)) = probe {
                hwm_kib = hwm_kib.max(vm_hwm_kib(child.id()));
                stop(&mut child);
            }
            drop(floor);
        }
    }
    let mut worst = (0f64, "");
    let mut open_floor = 0f64;
    for (i, (name, _, ops)) in workloads.iter().enumerate() {
        let (total, floor) = row(name, &samples[i], *ops);
        if total > worst.0 {
            worst = (total, name);
        }
        if *name == "open+close" {
            open_floor = floor;
        }
    }
    let (every_open_sent, _) = row("open ENOENT, new path each", &samples[distinct], OPENS);
    row("open+close (unwatched proc)", &samples[unwatched], OPENS);
    println!();
    let mut worst_without_files = (0f64, "");
    for (i, (name, _, _)) in workloads.iter().enumerate() {
        if samples[i][NO_FILE].is_empty() {
            continue;
        }
        let total = overhead(&samples[i][NO_FILE], &samples[i][WITHOUT], |s| {
            s.cpu + s.probe_cpu
        });
        println!(
            "with ebpf.enableFile=false (no sys_exit program): {name}: CPU incl. probe {:+.1}%",
            total * 100.0
        );
        if total > worst_without_files.0 {
            worst_without_files = (total, name);
        }
    }

    // Capacity: offered open rate stepped up until the ring buffer drops.
    let (mut child, metrics) = start_probe(root, original, &trust, "{}", None);
    let mut sustained = 0f64;
    println!();
    for offered in [
        100_000u64,
        250_000,
        500_000,
        750_000,
        1_000_000,
        1_500_000,
        u64::MAX,
    ] {
        let before = scrape(metrics);
        let elapsed = generate(offered, Duration::from_secs(2));
        std::thread::sleep(Duration::from_millis(300)); // let the consumer drain
        let after = scrape(metrics);
        let delivered = after.0 - before.0;
        let drops = after.1 - before.1;
        let rate = delivered / elapsed.as_secs_f64();
        let label = if offered == u64::MAX {
            "max".to_string()
        } else {
            format!("{}k/s", offered / 1000)
        };
        println!("offered {label:>9}: delivered {rate:>8.0} events/s, ring-buffer drops {drops}");
        if drops == 0.0 {
            sustained = sustained.max(rate);
        }
    }
    hwm_kib = hwm_kib.max(vm_hwm_kib(child.id()));
    stop(&mut child);

    println!();
    println!(
        "overhead ratio, worst watched workload ({}), CPU incl. probe: {:.3} (goal <= 1.03)",
        worst.1,
        1.0 + worst.0
    );
    println!(
        "floor ratio, open+close with an empty sys_exit program and nothing else: {:.3}",
        1.0 + open_floor
    );
    println!(
        "overhead ratio, opens of a new path each (every open an event), CPU incl. probe: {:.3}",
        1.0 + every_open_sent
    );
    println!(
        "overhead ratio, worst of exec and connect with ebpf.enableFile=false ({}), CPU incl. probe: {:.3} (goal <= 1.03)",
        worst_without_files.1,
        1.0 + worst_without_files.0
    );
    println!("highest event rate with zero drops: {sustained:.0} events/s (goal >= 500000)");
    println!(
        "probe peak RSS: {:.1} MiB (goal <= 32 MiB)",
        hwm_kib as f64 / 1024.0
    );
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// The median over the rounds of `value(sample) / value(baseline) - 1`.
fn overhead(of: &[Sample], baseline: &[Sample], value: fn(&Sample) -> Duration) -> f64 {
    median(
        of.iter()
            .zip(baseline)
            .map(|(s, b)| value(s).as_secs_f64() / b.cpu.as_secs_f64() - 1.0)
            .collect(),
    )
}

/// Prints one workload: medians over the rounds of the time per operation and of each round's
/// overhead. Returns the CPU overhead including the probe's CPU, and the floor's.
fn row(name: &str, samples: &[Vec<Sample>; 4], ops: usize) -> (f64, f64) {
    let [without, with, floor, _] = samples;
    let per = |pick: fn(&Sample) -> Duration, slot: &[Sample]| {
        median(
            slot.iter()
                .map(|s| pick(s).as_secs_f64() * 1e6 / ops as f64)
                .collect(),
        )
    };
    let overhead =
        |value: fn(&Sample) -> Duration, base: fn(&Sample) -> Duration, of: &[Sample]| {
            median(
                of.iter()
                    .zip(without)
                    .map(|(s, w)| value(s).as_secs_f64() / base(w).as_secs_f64() - 1.0)
                    .collect(),
            )
        };
    let cpu = overhead(|s| s.cpu, |w| w.cpu, with);
    let wall = overhead(|s| s.wall, |w| w.wall, with);
    let total = overhead(|s| s.cpu + s.probe_cpu, |w| w.cpu, with);
    let floor_overhead = overhead(|s| s.cpu, |w| w.cpu, floor);
    println!(
        "{:<28} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>+8.1}% {:>+8.1}% {:>+12.1}% {:>+9.1}%",
        name,
        per(|s| s.wall, without),
        per(|s| s.wall, with),
        per(|s| s.cpu, without),
        per(|s| s.cpu, with),
        cpu * 100.0,
        wall * 100.0,
        total * 100.0,
        floor_overhead * 100.0
    );
    (total, floor_overhead)
}
