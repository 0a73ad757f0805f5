//! Tiers 2 and 3: the CO-RE programs of `bpf/probe.bpf.c`, loaded, attached and drained on one
//! dedicated thread that owns every libbpf object. The async side talks to it through a
//! channel ([`KernelProbe::sync`]) and reads its counters through atomics.

pub mod event;
pub mod floor;
pub mod maps;
pub mod skel;

use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use agentmesh_api::meshlogic::CgroupDriver;
use foldhash::HashMap;
use tokio::sync::Notify;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, RingBufferBuilder};

use crate::aggregate::Aggregator;
use crate::cgroup::{PodCgroups, pod_uid_of_component};
use crate::metrics::Metrics;
use event::{C_COUNT, EV_POD_CGROUP, RawEvent};
use maps::KernelState;
use skel::ProbeSkelBuilder;

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
}

/// The aggregation state the consumer writes into.
#[derive(Debug)]
pub struct Shared {
    pub aggregator: Aggregator,
    pub pod_cgroups: PodCgroups,
    /// Pod cgroups the kernel marked at their creation (id -> pod UID, when), until a scan
    /// finds them.
    pub discovered: HashMap<u64, (String, Instant)>,
    /// Events whose pod cgroup is no longer known (removed between the kernel and us).
    pub unattributed: u64,
}

impl Shared {
    pub fn new(aggregator: Aggregator, pod_cgroups: PodCgroups) -> Self {
        Self {
            aggregator,
            pod_cgroups,
            discovered: HashMap::default(),
            unattributed: 0,
        }
    }
}

/// Kernel counters summed over CPUs, refreshed by the kernel thread.
#[derive(Debug, Default)]
pub struct KernelCounters {
    values: [AtomicU64; C_COUNT],
}

impl KernelCounters {
    pub fn get(&self, index: usize) -> u64 {
        self.values[index].load(Ordering::Relaxed)
    }
}

/// What loading gave.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Programs attached.
    pub programs: u32,
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
    /// dropped. Returns once loading has succeeded or failed.
    pub fn start(
        options: KernelOptions,
        shared: Arc<Mutex<Shared>>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, KernelError> {
        let (loaded_tx, loaded_rx) = mpsc::sync_channel(1);
        let (commands, commands_rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(KernelCounters::default());
        let pod_cgroup_created = options.pod_cgroup_created.clone();
        let thread = {
            let stop = stop.clone();
            let counters = counters.clone();
            std::thread::Builder::new()
                .name("bpf-events".into())
                .spawn(move || {
                    kernel_thread(
                        options,
                        shared,
                        metrics,
                        counters,
                        stop,
                        commands_rx,
                        loaded_tx,
                    )
                })
                .map_err(|error| KernelError::Thread(error.to_string()))?
        };
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
        let (done, wait) = mpsc::sync_channel(1);
        if self.commands.send(Command::NewWindow(done)).is_ok() {
            let _ = wait.recv_timeout(Duration::from_secs(2));
        }
    }

    /// Returns once every state sent before has been written to the kernel.
    pub fn flush(&self) {
        let (done, wait) = mpsc::sync_channel(1);
        if self.commands.send(Command::Flush(done)).is_ok() {
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

fn kernel_thread(
    options: KernelOptions,
    shared: Arc<Mutex<Shared>>,
    metrics: Arc<Metrics>,
    counters: Arc<KernelCounters>,
    stop: Arc<AtomicBool>,
    commands: mpsc::Receiver<Command>,
    loaded_tx: mpsc::SyncSender<Result<Loaded, KernelError>>,
) {
    let mut object = MaybeUninit::uninit();
    let (skel, links, loaded) = match load(&options, &mut object) {
        Ok(done) => done,
        Err(error) => {
            let _ = loaded_tx.send(Err(error));
            return;
        }
    };
    let _ = loaded_tx.send(Ok(loaded));
    let _links = links;

    let mut builder = RingBufferBuilder::new();
    let consumer_shared = shared.clone();
    let consumer_metrics = metrics.clone();
    let driver = options.cgroup_driver;
    let created = options.pod_cgroup_created.clone();
    // Cgroups the kernel took for pods and that are not: unmarked after each drain.
    let rejected = Arc::new(Mutex::new(Vec::new()));
    let consumer_rejected = rejected.clone();
    let added = builder
        .add(&skel.maps.events, move |data: &[u8]| {
            let Some(event) = RawEvent::parse(data) else {
                return 0;
            };
            if event.header.kind == EV_POD_CGROUP {
                let id = event.header.pod_cgroup_id;
                let name = event.path.rsplit('/').next().unwrap_or_default();
                match pod_uid_of_component(name, driver) {
                    Some(uid) => {
                        lock(&consumer_shared)
                            .discovered
                            .insert(id, (uid, Instant::now()));
                        created.notify_one();
                    }
                    None => lock(&consumer_rejected).push(id),
                }
            } else {
                consume(&event, &consumer_shared, &consumer_metrics);
            }
            0
        })
        .map(|_| ());
    let ring = match added.and_then(|()| builder.build()) {
        Ok(ring) => ring,
        Err(error) => {
            tracing::error!(%error, "ring buffer could not be opened; no kernel events");
            return;
        }
    };
    let mut applied = KernelState::default();
    let mut repeated = RepeatedOpens::default();
    let mut last_counters = Instant::now() - Duration::from_secs(1);
    while !stop.load(Ordering::Relaxed) {
        // Woken when a quarter of the ring is full; otherwise drained every DRAIN_INTERVAL.
        if let Err(error) = ring.poll(DRAIN_INTERVAL)
            && error.kind() != libbpf_rs::ErrorKind::Interrupted
        {
            tracing::warn!(%error, "ring buffer poll");
        }
        let _ = ring.consume();
        for id in std::mem::take(&mut *lock(&rejected)) {
            if !applied.pods.contains_key(&id) {
                let _ = skel.maps.pod_cgroups.delete(&id.to_ne_bytes());
            }
        }
        let mut flushed = Vec::new();
        let mut latest = None;
        let mut windows = Vec::new();
        while let Ok(command) = commands.try_recv() {
            match command {
                Command::Apply(state) => latest = Some(state),
                Command::Flush(done) => flushed.push(done),
                Command::NewWindow(done) => windows.push(done),
            }
        }
        if !windows.is_empty() {
            // The new epoch first: opens from now on are sent once more. Then what the old
            // one counted or sent goes to the aggregator before the window is taken.
            bump(&skel.maps.open_epoch);
            let _ = ring.consume();
            repeated.fold(&skel, &shared);
            for done in windows {
                let _ = done.send(());
            }
        }
        if let Some(state) = latest {
            maps::apply(&skel, &applied, &state);
            applied = state;
        }
        for done in flushed {
            let _ = done.send(());
        }
        if last_counters.elapsed() >= Duration::from_millis(200) {
            last_counters = Instant::now();
            read_counters(&skel, &counters, &metrics);
            repeated.fold(&skel, &shared);
        }
    }
    // Whatever is left, then the final counters.
    let _ = ring.consume();
    repeated.fold(&skel, &shared);
    read_counters(&skel, &counters, &metrics);
}

type Skel<'obj> = skel::ProbeSkel<'obj>;

/// Events one CPU sends between two wake-ups of the consumer: a power of two such that all CPUs
/// together fill at most a quarter of the ring buffer with full-size events in between.
fn wakeup_every(ring_buffer_size: u32, cpus: Result<usize, libbpf_rs::Error>) -> u64 {
    let cpus = cpus.unwrap_or(1).max(1) as u64;
    let full_event = (event::HEADER_LEN + event::PATH_LEN + 8) as u64; // 8: ring record header
    let events = u64::from(ring_buffer_size) / 4 / cpus / full_event;
    if events <= 1 {
        1
    } else {
        1 << (63 - events.leading_zeros())
    }
}

/// Longest time an event waits in the ring buffer when the kernel does not wake us.
const DRAIN_INTERVAL: Duration = Duration::from_millis(10);

fn load<'obj>(
    options: &KernelOptions,
    object: &'obj mut MaybeUninit<libbpf_rs::OpenObject>,
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
    open.progs
        .handle_sys_enter
        .set_autoload(options.enable_file);
    let connects = options.enable_network || blocking;
    open.progs.handle_connect4.set_autoload(connects);
    open.progs.handle_connect6.set_autoload(connects);
    let skel = open.load().map_err(load_error)?;

    for (key, value) in maps::mute_path_entries(&options.mute_paths) {
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
            options.enable_file,
            "handle_sys_enter",
            &skel.progs.handle_sys_enter,
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

/// Adds one to the u64 at index 0 of an array map.
fn bump(map: &libbpf_rs::MapMut<'_>) {
    if let Err(error) = maps::bump_generation(map) {
        tracing::warn!(%error, "kernel map update failed");
    }
}

/// The kernel's cumulative counts of repeated opens per cgroup, as last folded in.
#[derive(Default)]
struct RepeatedOpens {
    last: HashMap<u64, u64>,
}

impl RepeatedOpens {
    /// Adds what each cgroup's count grew by since the last call to its pod's window.
    fn fold(&mut self, skel: &Skel<'_>, shared: &Mutex<Shared>) {
        let map = &skel.maps.cgroup_pod;
        let mut grown: Vec<(u64, u64)> = Vec::new();
        let mut now = HashMap::default();
        // In batches of 1024 entries per syscall: the map also holds every cgroup seen outside
        // the pods.
        let entries: Box<dyn Iterator<Item = (Vec<u8>, Vec<u8>)>> =
            match map.lookup_batch(1024, MapFlags::ANY, MapFlags::ANY) {
                Ok(batches) => Box::new(batches),
                Err(_) => Box::new(map.keys().filter_map(|key| {
                    let value = map.lookup(&key, MapFlags::ANY).ok().flatten()?;
                    Some((key, value))
                })),
            };
        for (key, value) in entries {
            let (Ok(cgroup), Some(pod), Some(count)) = (
                key.as_slice().try_into().map(u64::from_ne_bytes),
                read_u64(&value, 0),
                read_u64(&value, event::POD_OF_REPEATED_OPENS),
            ) else {
                continue;
            };
            if count == 0 {
                continue;
            }
            // An entry evicted and made again starts from zero.
            let before = self.last.get(&cgroup).copied().filter(|b| *b <= count);
            let delta = count - before.unwrap_or(0);
            if delta > 0 && pod != 0 {
                grown.push((pod, delta));
            }
            now.insert(cgroup, count);
        }
        self.last = now;
        if grown.is_empty() {
            return;
        }
        let mut shared = lock(shared);
        let shared = &mut *shared;
        for (pod, delta) in grown {
            let uid = (shared.pod_cgroups.by_id.get(&pod))
                .or_else(|| shared.discovered.get(&pod).map(|(uid, _)| uid));
            match uid {
                Some(uid) => shared.aggregator.record_repeated_opens(uid, delta),
                None => shared.unattributed += delta,
            }
        }
    }
}

fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn consume(event: &RawEvent<'_>, shared: &Mutex<Shared>, metrics: &Metrics) {
    let Some(observation) = event.observation() else {
        return;
    };
    metrics.event(observation.kind());
    let mut shared = lock(shared);
    let shared = &mut *shared;
    let id = event.header.pod_cgroup_id;
    let uid = (shared.pod_cgroups.by_id.get(&id))
        .or_else(|| shared.discovered.get(&id).map(|(uid, _)| uid));
    match uid {
        Some(uid) => shared.aggregator.record(uid, observation),
        None => {
            shared.unattributed += 1;
            metrics.unattributed.inc();
        }
    }
}

fn read_counters(skel: &Skel<'_>, counters: &KernelCounters, metrics: &Metrics) {
    for (index, slot) in counters.values.iter().enumerate() {
        let key = (index as u32).to_ne_bytes();
        let Ok(Some(per_cpu)) = skel.maps.counters.lookup_percpu(&key, MapFlags::ANY) else {
            continue;
        };
        let total: u64 = per_cpu
            .iter()
            .filter_map(|value| value.get(..8))
            .map(|bytes| u64::from_ne_bytes(bytes.try_into().unwrap_or_default()))
            .sum();
        slot.store(total, Ordering::Relaxed);
    }
    metrics.kernel_counters(counters);
}
