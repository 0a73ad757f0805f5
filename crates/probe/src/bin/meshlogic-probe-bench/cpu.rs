//! CPU and wall time of a workload, and of the probe meanwhile.

use std::time::{Duration, Instant};

/// One measurement: wall time, CPU time of the workload (its thread and its children: the BPF
/// programs run in its syscalls, so they are charged here), CPU time of the probe meanwhile.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) wall: Duration,
    pub(crate) cpu: Duration,
    pub(crate) probe_cpu: Duration,
}

pub(crate) fn measure(workload: &dyn Fn(), probe: Option<u32>) -> Sample {
    let probe_before = probe.map_or(Duration::ZERO, process_cpu);
    let cpu_before = thread_cpu() + children_cpu();
    let start = Instant::now();
    workload();
    let wall = start.elapsed();
    let cpu = thread_cpu() + children_cpu() - cpu_before;
    let probe_cpu = probe
        .map_or(Duration::ZERO, process_cpu)
        .saturating_sub(probe_before);
    Sample {
        wall,
        cpu,
        probe_cpu,
    }
}

pub(crate) fn clock(id: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(id, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

pub(crate) fn thread_cpu() -> Duration {
    clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time of waited-for children (the exec loop's processes).
pub(crate) fn children_cpu() -> Duration {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a zeroed rusage to fill.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// utime + stime of a process, from /proc/<pid>/stat (clock ticks of 10 ms).
pub(crate) fn process_cpu(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    let Some(close) = stat.rfind(')') else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}
