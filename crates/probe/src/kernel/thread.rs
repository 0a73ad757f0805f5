//! The kernel thread: owns the loaded programs, drains the ring buffer into the aggregator,
//! writes the maps it is sent, closes the kernel's windows and reads its counters.

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use foldhash::HashMap;
use libbpf_rs::{MapCore, MapFlags, RingBufferBuilder};

use super::event::{Counter, EventKind, RawEvent};
use super::load::{Skel, load};
use super::maps::{self, KernelState};
use super::skel::types;
use super::{Command, KernelCounters, KernelError, KernelOptions, Loaded};
use crate::cgroup::pod_uid_of_component;
use crate::counters::{EventCounters, SensorCounters};
use crate::shared::{Shared, lock};

/// Longest time an event waits in the ring buffer when the kernel does not wake us.
const DRAIN_INTERVAL: Duration = Duration::from_millis(10);
/// How often the kernel's counters are read.
const COUNTERS_INTERVAL: Duration = Duration::from_millis(200);

/// What the kernel thread is given.
pub(super) struct Thread {
    pub options: KernelOptions,
    pub shared: Arc<Mutex<Shared>>,
    pub sensors: Arc<SensorCounters>,
    pub counters: Arc<KernelCounters>,
    pub stop: Arc<AtomicBool>,
    pub commands: mpsc::Receiver<Command>,
    pub loaded: mpsc::SyncSender<Result<Loaded, KernelError>>,
}

impl Thread {
    pub fn run(self) {
        let Thread {
            options,
            shared,
            sensors,
            counters,
            stop,
            commands,
            loaded,
        } = self;
        let mut object = MaybeUninit::uninit();
        let mut spare = MaybeUninit::uninit();
        let (skel, links, done) = match load(&options, &mut object, &mut spare) {
            Ok(done) => done,
            Err(error) => {
                let _ = loaded.send(Err(error));
                return;
            }
        };
        let _ = loaded.send(Ok(done));
        let _links = links;

        let mut builder = RingBufferBuilder::new();
        let consumer_shared = shared.clone();
        let consumer_sensors = sensors.clone();
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
                if event.header.kind == EventKind::EV_POD_CGROUP {
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
                    consume(&event, &consumer_shared, &consumer_sensors.events);
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
        let mut last_counters = Instant::now() - COUNTERS_INTERVAL;
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
                if let Err(error) = maps::bump_generation(&skel.maps.open_epoch) {
                    tracing::warn!(%error, "kernel map update failed");
                }
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
            if last_counters.elapsed() >= COUNTERS_INTERVAL {
                last_counters = Instant::now();
                read_counters(&skel, &counters, &sensors);
                repeated.fold(&skel, &shared);
            }
        }
        // Whatever is left, then the final counters.
        let _ = ring.consume();
        repeated.fold(&skel, &shared);
        read_counters(&skel, &counters, &sensors);
    }
}

/// The kernel's cumulative counts per cgroup (opens counted instead of sent, events lost to a
/// full ring buffer), as last folded in.
#[derive(Default)]
struct RepeatedOpens {
    last: HashMap<u64, [u64; 2]>,
}

impl RepeatedOpens {
    /// Adds what each cgroup's counts grew by since the last call to its pod's window.
    fn fold(&mut self, skel: &Skel<'_>, shared: &Mutex<Shared>) {
        let map = &skel.maps.cgroup_pod;
        let mut grown: Vec<(u64, [u64; 2])> = Vec::new();
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
            let mut entry = types::pod_of::default();
            let (Ok(cgroup), Ok(())) = (
                key.as_slice().try_into().map(u64::from_ne_bytes),
                plain::copy_from_bytes(&mut entry, &value),
            ) else {
                continue;
            };
            let counts = [entry.repeated_opens, entry.dropped];
            if counts == [0, 0] {
                continue;
            }
            // An entry evicted and made again starts from zero.
            let before = self.last.get(&cgroup).copied().unwrap_or_default();
            let delta: [u64; 2] = std::array::from_fn(|i| {
                counts[i] - Some(before[i]).filter(|b| *b <= counts[i]).unwrap_or(0)
            });
            if delta != [0, 0] && entry.pod != 0 {
                grown.push((entry.pod, delta));
            }
            now.insert(cgroup, counts);
        }
        self.last = now;
        if grown.is_empty() {
            return;
        }
        let mut shared = lock(shared);
        for (pod, [opens, dropped]) in grown {
            if opens > 0 {
                shared.record_repeated_opens(pod, opens);
            }
            if dropped > 0 {
                shared.record_dropped(pod, dropped);
            }
        }
    }
}

fn consume(event: &RawEvent<'_>, shared: &Mutex<Shared>, counters: &EventCounters) {
    let Some(observation) = event.observation() else {
        return;
    };
    counters.event(observation.kind());
    if !lock(shared).record(event.header.pod_cgroup_id, observation) {
        counters.unattributed.inc();
    }
}

fn read_counters(skel: &Skel<'_>, counters: &KernelCounters, sensors: &SensorCounters) {
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
    let kernel = &sensors.kernel;
    for (mirrored, counter) in [
        (&kernel.ring_buffer_drops, Counter::C_RINGBUF_DROPS),
        (&kernel.muted, Counter::C_MUTED),
        (&kernel.repeated_opens, Counter::C_OPEN_REPEATED),
        (&kernel.runtime_setup_opens, Counter::C_RUNTIME_SETUP),
        (&kernel.blocked_connects, Counter::C_BLOCKED_CONNECT),
        (&kernel.blocked_execs, Counter::C_BLOCKED_EXEC),
    ] {
        mirrored.follow(counters.get(counter));
    }
}
