//! The probe's periodic tasks: the cgroup scanner and kernel map syncer, the report windows and
//! the noised telemetry export.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentmesh_api::wire::{EnforcementSet, ReportBatch, ReportSource};
use hyper::Method;
use tokio::sync::watch;

use super::now_ms;
use crate::cgroup::{self, PodCgroups};
use crate::config::ProbeConfig;
use crate::http::JsonClient;
use crate::kernel::event::Counter;
use crate::kernel::maps::{self, KernelState};
use crate::kernel::{KernelCounters, KernelSync};
use crate::metrics::Metrics;
use crate::pods::PodNames;
use crate::privacy;
use crate::report::ReportQueue;
use crate::shared::{Shared, lock};
use crate::status::Status;
use crate::telemetry::{self, BACKLOG_CAPACITY, Backlog};
use meshlogic_probe_core::maps::FilesByPod;

/// How often pod cgroups are rescanned (and new pods start being watched in the kernel).
const SCAN_INTERVAL: Duration = Duration::from_millis(500);
/// How long a pod cgroup the kernel reported stays watched without a scan finding it.
const DISCOVERED_TTL: Duration = Duration::from_secs(5);

pub(super) async fn scan_loop(
    config: ProbeConfig,
    shared: Arc<Mutex<Shared>>,
    metrics: Arc<Metrics>,
    status: Arc<Status>,
    mut sets: watch::Receiver<Option<EnforcementSet>>,
    sync: KernelSync,
    mut applied: KernelState,
) {
    let pod_cgroup_created = sync.pod_cgroup_created();
    let mut tick = tokio::time::interval(SCAN_INTERVAL);
    // Below tier 3 nobody sends enforcement sets: the channel is closed.
    let mut enforcement_open = true;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = pod_cgroup_created.notified() => {}
            changed = sets.changed(), if enforcement_open => {
                enforcement_open = changed.is_ok();
            }
        }
        let root = config.cgroup_root.clone();
        let driver = config.cgroup_driver;
        let Ok(Ok(found)) = tokio::task::spawn_blocking(move || cgroup::scan(&root, driver)).await
        else {
            continue;
        };
        let mut pod_cgroups = PodCgroups::from_scan(&found);
        {
            // Pods the kernel marked at creation stay watched until a scan finds them, or are
            // dropped (and unmarked) when none does in time: they were gone before.
            let mut shared = lock(&shared);
            shared.discovered.retain(|id, (_, at)| {
                !pod_cgroups.by_id.contains_key(id) && at.elapsed() < DISCOVERED_TTL
            });
            for (id, (uid, _)) in &shared.discovered {
                pod_cgroups.by_id.insert(*id, uid.clone());
            }
            // New cgroups are known to the consumer before the kernel reports them.
            shared.pod_cgroups = pod_cgroups.clone();
        }
        let set = sets.borrow_and_update().clone();
        let files = match &set {
            Some(set) => {
                let (set, proc_root, found) =
                    (set.clone(), config.proc_root.clone(), found.clone());
                tokio::task::spawn_blocking(move || enforced_files(&found, &set, &proc_root))
                    .await
                    .unwrap_or_default()
            }
            None => FilesByPod::new(),
        };
        let (state, warnings) = maps::build(&pod_cgroups, set.as_ref(), &files);
        for warning in warnings {
            tracing::warn!(%warning, "enforcement rule not applied as written");
        }
        if state != applied {
            metrics.pods_watched.set(state.pods.len() as i64);
            sync.send(state.clone());
            applied = state;
        }
        if let Some(set) = set
            && status.enforcement_version().as_deref() != Some(set.version.as_str())
        {
            // Applied by the kernel thread within one drain interval (10 ms); wait for it.
            let flusher = sync.clone();
            let _ = tokio::task::spawn_blocking(move || flusher.flush()).await;
            status.set_enforcement_version(set.version);
        }
    }
}

/// The files named by the exact exec deny rules of each pod that has some, and its dynamic
/// loaders, read in its containers ([`crate::files`]).
fn enforced_files(
    found: &[cgroup::PodCgroup],
    set: &EnforcementSet,
    proc_root: &std::path::Path,
) -> FilesByPod {
    let mut files = FilesByPod::new();
    for pod in set.pods.iter().filter(|p| !p.denied_executables.is_empty()) {
        let patterns = pod.denied_executables.iter().map(String::as_str).collect();
        for cgroup in found.iter().filter(|c| c.uid == pod.pod_uid) {
            let got = crate::files::pod_files(&cgroup.path, proc_root, &patterns);
            let entry = files.entry(pod.pod_uid.clone()).or_default();
            for (path, ids) in got.denied {
                entry.denied.entry(path).or_default().extend(ids);
            }
            entry.loaders.extend(got.loaders);
        }
    }
    files
}

pub(super) async fn report_windows(
    config: ProbeConfig,
    shared: Arc<Mutex<Shared>>,
    status: Arc<Status>,
    names: PodNames,
    queue: Arc<ReportQueue>,
    counters: Option<Arc<KernelCounters>>,
    kernel: Option<KernelSync>,
) {
    let mut tick = tokio::time::interval(config.report_interval);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Some(kernel) = &kernel {
            // The kernel's window closes first, so that its counts land in this one.
            let kernel = kernel.clone();
            let _ = tokio::task::spawn_blocking(move || kernel.new_window()).await;
        }
        let drops = counters
            .as_ref()
            .map_or(0, |c| c.get(Counter::C_RINGBUF_DROPS));
        status.set_ring_buffer_drops(drops);
        let pods = {
            let names = names.read().unwrap_or_else(|e| e.into_inner());
            lock(&shared).aggregator.take(now_ms(), |uid| {
                names
                    .get(uid)
                    .map(|info| (info.name.clone(), info.identity.clone()))
            })
        };
        queue.push(ReportBatch {
            source: ReportSource::Probe {
                node: config.node_name.clone(),
                agent: config.agent.clone(),
                tier: status.tier(),
                fallback_reason: status.fallback_reason(),
                programs_loaded: status.programs_loaded(),
                file_hook: status.file_hook(),
                ring_buffer_drops: drops,
            },
            pods,
            outcomes: Vec::new(),
        });
    }
}

/// Where telemetry goes.
pub(super) enum TelemetryOut {
    /// One POST of JSON per record to the endpoint.
    Http(Box<JsonClient>, String),
    /// `BatchWriteItem`s ([`crate::dynamodb`]).
    Dynamodb(crate::dynamodb::DynamoSink),
}

pub(super) async fn telemetry_loop(
    config: ProbeConfig,
    shared: Arc<Mutex<Shared>>,
    metrics: Arc<Metrics>,
    out: TelemetryOut,
) {
    let mut backlog = Backlog::new(BACKLOG_CAPACITY);
    let mut tick = tokio::time::interval(config.telemetry_interval);
    tick.tick().await;
    let mut window_start = now_ms();
    loop {
        tick.tick().await;
        let exact = lock(&shared).aggregator.take_telemetry();
        let (counts, spent) = {
            let mut rng = rand::rng();
            privacy::release(&exact, config.enable_noise, config.epsilon, &mut rng)
        };
        let window_end = now_ms();
        let record = serde_json::json!({
            "node": config.node_name,
            "agent": config.agent,
            "windowStartMs": window_start,
            "windowEndMs": window_end,
            "counts": counts,
            "noise": config.enable_noise,
            "epsilon": if config.enable_noise { Some(config.epsilon) } else { None },
            "noiseScale": if config.enable_noise { Some(privacy::scale(config.epsilon)) } else { None },
        });
        window_start = window_end;
        // The budget is spent by the release, whether or not it is delivered.
        metrics.epsilon_spent.inc_by(spent);
        let dropped = backlog.push(record);
        if dropped > 0 {
            metrics.telemetry_drops.inc_by(dropped as u64);
        }
        let (client, endpoint) = match &out {
            TelemetryOut::Dynamodb(sink) => {
                let batch = backlog.batch(config.telemetry_batch_size);
                let written = sink.write(&batch).await;
                backlog.delivered(written);
                continue;
            }
            TelemetryOut::Http(client, endpoint) => (client, endpoint),
        };
        // The http sink takes one record per POST.
        telemetry::export(&mut backlog, config.telemetry_batch_size, |record| {
            let (client, endpoint, metrics) = (&client, &endpoint, &metrics);
            async move {
                let body = record.to_string().into_bytes();
                match client
                    .send(Method::POST, endpoint, Some(body), Duration::from_secs(10))
                    .await
                {
                    Ok(_) => {
                        metrics.telemetry_exports.inc();
                        true
                    }
                    Err(error) => {
                        tracing::warn!(%error, %endpoint, "telemetry not delivered; kept for the next export");
                        false
                    }
                }
            }
        })
        .await;
    }
}
