//! Tiers 2 and 3: the CO-RE programs of `bpf/probe.bpf.c`, loaded, attached and drained on one
//! dedicated thread that owns every libbpf object. The async side talks to it through a
//! channel ([`KernelProbe::sync`]) and reads its counters through atomics.

pub mod event;
pub mod floor;
pub mod libbpf_log;
mod load;
pub mod maps;
pub mod skel;
mod thread;

pub use meshlogic_probe_core::keys;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use agentmesh_api::meshlogic::{CgroupDriver, FileHook};
use meshlogic_probe_core::config::FileHookChoice;
use tokio::sync::Notify;

use crate::counters::SensorCounters;
use crate::shared::Shared;
use event::{COUNTERS, Counter};
use maps::KernelState;

/// What to load and how.
#[derive(Debug, Clone)]
pub struct KernelOptions {
    /// BTF of the running kernel; `None`: libbpf finds it.
    pub btf_path: Option<PathBuf>,
    pub ring_buffer_size: u32,
    pub enable_process: bool,
    pub enable_file: bool,
    pub enable_network: bool,
    pub mute_paths: Vec<String>,
    pub filter_pods: bool,
    /// The cgroup v2 root, where the connect programs attach (they observe connects, and
    /// refuse them at tier 3).
    pub cgroup_root: PathBuf,
    /// Tier 3: kill denied execs and refuse denied connects.
    pub blocking: bool,
    /// The kubelet's cgroup layout, to read pod UIDs from the cgroups the kernel reports.
    pub cgroup_driver: CgroupDriver,
    /// Notified when the kernel reports a new pod cgroup.
    pub pod_cgroup_created: Arc<Notify>,
    /// Opens of pod tasks at the container runtime's root (the runtime setting a container
    /// up) are not the pod's: skipped in the kernel and counted (`runtime_setup_opens`). Off
    /// in tests whose "pods" are host processes in cgroups the test made.
    pub skip_runtime_opens: bool,
    /// Which hook observes file opens.
    pub file_hook: FileHookChoice,
    /// See [`crate::config::ProbeConfig::inject_fexit_load_failure`].
    pub inject_fexit_load_failure: bool,
}

/// Kernel counters summed over CPUs, refreshed by the kernel thread.
#[derive(Debug, Default)]
pub struct KernelCounters {
    values: [AtomicU64; COUNTERS],
}

impl KernelCounters {
    pub fn get(&self, counter: Counter) -> u64 {
        self.values
            .get(counter.0 as usize)
            .map_or(0, |value| value.load(Ordering::Relaxed))
    }
}

/// What loading gave.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Programs attached.
    pub programs: u32,
    /// Where file opens are observed; `None` when they are not (`ebpf.enableFile: false`).
    pub file_hook: Option<FileHook>,
    /// Why `auto` did not get the fexit hook, when it did not.
    pub file_hook_note: Option<String>,
    /// Tier 3 enforcement attached; otherwise why not.
    pub blocking: Result<(), String>,
}

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("BPF load failed: {0}")]
    Load(String),
    #[error("BPF attach failed: {0}")]
    Attach(String),
    #[error("kernel thread: {0}")]
    Thread(String),
}

/// The running kernel side.
pub struct KernelProbe {
    commands: mpsc::Sender<Command>,
    pod_cgroup_created: Arc<Notify>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub counters: Arc<KernelCounters>,
    pub loaded: Loaded,
}

impl KernelProbe {
    /// Loads and attaches on a new thread, then drains the ring buffer into `shared` until
    /// dropped, advancing `sensors`. Returns once loading has succeeded or failed.
    pub fn start(
        options: KernelOptions,
        shared: Arc<Mutex<Shared>>,
        sensors: Arc<SensorCounters>,
    ) -> Result<Self, KernelError> {
        let (loaded_tx, loaded_rx) = mpsc::sync_channel(1);
        let (commands, commands_rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(KernelCounters::default());
        let pod_cgroup_created = options.pod_cgroup_created.clone();
        let thread = thread::Thread {
            options,
            shared,
            sensors,
            counters: counters.clone(),
            stop: stop.clone(),
            commands: commands_rx,
            loaded: loaded_tx,
        };
        let thread = std::thread::Builder::new()
            .name("bpf-events".into())
            .spawn(move || thread.run())
            .map_err(|error| KernelError::Thread(error.to_string()))?;
        match loaded_rx.recv() {
            Ok(Ok(loaded)) => Ok(Self {
                commands,
                pod_cgroup_created,
                stop,
                thread: Some(thread),
                counters,
                loaded,
            }),
            Ok(Err(error)) => {
                let _ = thread.join();
                Err(error)
            }
            Err(_) => {
                let _ = thread.join();
                Err(KernelError::Thread("exited while loading".into()))
            }
        }
    }

    /// A sender of new kernel map contents to the kernel thread.
    pub fn syncer(&self) -> KernelSync {
        KernelSync {
            commands: self.commands.clone(),
            pod_cgroup_created: self.pod_cgroup_created.clone(),
        }
    }
}

/// Sends desired kernel map contents to the kernel thread.
#[derive(Debug, Clone)]
pub struct KernelSync {
    commands: mpsc::Sender<Command>,
    pod_cgroup_created: Arc<Notify>,
}

impl KernelSync {
    /// Notified when the kernel reports a new pod cgroup: time to scan.
    pub fn pod_cgroup_created(&self) -> Arc<Notify> {
        self.pod_cgroup_created.clone()
    }

    /// Replaces the watched pods and enforcement in the kernel maps.
    pub fn send(&self, state: KernelState) {
        let _ = self.commands.send(Command::Apply(state));
    }

    /// Closes the kernel's report window: opens seen before are sent again when repeated, and
    /// the opens it counted without sending are in the aggregator. Returns once done (or 2 s).
    pub fn new_window(&self) {
        self.round_trip(Command::NewWindow);
    }

    /// Returns once every state sent before has been written to the kernel.
    pub fn flush(&self) {
        self.round_trip(Command::Flush);
    }

    /// Sends a command and waits (2 s at most) for the kernel thread to have done it.
    fn round_trip(&self, command: fn(mpsc::SyncSender<()>) -> Command) {
        let (done, wait) = mpsc::sync_channel(1);
        if self.commands.send(command(done)).is_ok() {
            let _ = wait.recv_timeout(Duration::from_secs(2));
        }
    }
}

enum Command {
    Apply(KernelState),
    Flush(mpsc::SyncSender<()>),
    NewWindow(mpsc::SyncSender<()>),
}

impl Drop for KernelProbe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
