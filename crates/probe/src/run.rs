//! Start-up and the probe's tasks: the tier decision (with fallback), the cgroup scanner and
//! kernel map syncer, the report windows and sender, enforcement, telemetry, pod names and the
//! metrics/health server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentmesh_api::meshlogic::TelemetrySink;
use agentmesh_api::wire::{EnforcementSet, ReportBatch, ReportSource};
use hyper::Method;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::aggregate::Aggregator;
use crate::cgroup::{self, PodCgroups};
use crate::config::{ProbeConfig, Tier};
use crate::http::JsonClient;
use crate::kernel::event::C_RINGBUF_DROPS;
use crate::kernel::maps::{self, KernelState};
use crate::kernel::{KernelCounters, KernelOptions, KernelProbe, Shared};
use crate::metrics::Metrics;
use crate::pods::{self, PodNames};
use crate::privacy;
use crate::report::{Backoff, ReportQueue};
use crate::status::Status;
use crate::telemetry::{self, BACKLOG_CAPACITY, Backlog};
use crate::usermode::{UserModeOptions, UserModePoller};

/// How often pod cgroups are rescanned (and new pods start being watched in the kernel).
const SCAN_INTERVAL: Duration = Duration::from_millis(500);
/// How long a pod cgroup the kernel reported stays watched without a scan finding it.
const DISCOVERED_TTL: Duration = Duration::from_secs(5);
/// How often `/proc` is polled at tier 1.
const USER_MODE_INTERVAL: Duration = Duration::from_millis(500);
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("spec.cgroup.root (--cgroup-root): {0}")]
    CgroupRoot(String),
    #[error("metrics address {addr} (spec.metrics.port, --metrics-addr): {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
}

/// A running probe.
pub struct ProbeHandle {
    pub status: Arc<Status>,
    pub metrics: Arc<Metrics>,
    pub shared: Arc<Mutex<Shared>>,
    /// Where `/metrics` and `/health` are served.
    pub listen_addr: SocketAddr,
    kernel: Option<KernelProbe>,
    tasks: Vec<JoinHandle<()>>,
    stop_user_mode: Arc<AtomicBool>,
    user_mode: Option<std::thread::JoinHandle<()>>,
}

impl ProbeHandle {
    /// Kernel-side counters (tiers 2 and 3).
    pub fn kernel_counters(&self) -> Option<&KernelCounters> {
        self.kernel.as_ref().map(|kernel| kernel.counters.as_ref())
    }

    /// Stops every task and detaches every program.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        self.stop_user_mode.store(true, Ordering::Relaxed);
        if let Some(thread) = self.user_mode.take() {
            let _ = thread.join();
        }
        self.kernel.take();
    }
}

impl Drop for ProbeHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

fn is_cgroup2(root: &Path) -> Result<bool, String> {
    let path = std::ffi::CString::new(root.as_os_str().as_encoded_bytes())
        .map_err(|_| "contains a NUL byte".to_owned())?;
    let mut stats: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a zeroed statfs to fill.
    if unsafe { libc::statfs(path.as_ptr(), &mut stats) } != 0 {
        return Err(format!(
            "{}: {}",
            root.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(stats.f_type as i64 == CGROUP2_SUPER_MAGIC)
}

/// The cgroup v2 hierarchy to watch: `root` when it is one; on a hybrid host (cgroup v1 at
/// `root`, v2 at `root/unified`, as systemd lays it out) the latter, said in the log, so that
/// the default `/sys/fs/cgroup` works on both kinds of node.
fn resolve_cgroup_root(root: &Path) -> Result<PathBuf, StartError> {
    if is_cgroup2(root).map_err(StartError::CgroupRoot)? {
        return Ok(root.to_owned());
    }
    let unified = root.join("unified");
    if is_cgroup2(&unified).unwrap_or(false) {
        tracing::info!(
            configured = %root.display(),
            using = %unified.display(),
            "hybrid cgroup host: cgroup v2 is mounted below the configured root"
        );
        return Ok(unified);
    }
    Err(StartError::CgroupRoot(format!(
        "{} is not a cgroup v2 mount, nor is {}",
        root.display(),
        unified.display()
    )))
}

/// Starts the probe: decides the tier (falling back rather than failing), then spawns its
/// tasks on the current tokio runtime.
pub async fn start(mut config: ProbeConfig) -> Result<ProbeHandle, StartError> {
    config.cgroup_root = resolve_cgroup_root(&config.cgroup_root)?;
    let metrics = Arc::new(Metrics::new());
    let status = Arc::new(Status::new(config.requested_tier));
    metrics
        .tier_requested
        .set(config.requested_tier.number().into());

    let listener = crate::http::bind(config.metrics_addr)
        .await
        .map_err(|error| StartError::Bind {
            addr: config.metrics_addr,
            error,
        })?;
    let listen_addr = listener.local_addr().unwrap_or(config.metrics_addr);

    let found = cgroup::scan(&config.cgroup_root, config.cgroup_driver).unwrap_or_default();
    let shared = Arc::new(Mutex::new(Shared::new(
        Aggregator::new(now_ms()),
        PodCgroups::from_scan(&found),
    )));
    let pod_cgroup_created = Arc::new(tokio::sync::Notify::new());

    // The tier in force.
    let mut kernel = None;
    let mut tier = config.requested_tier;
    let mut reason = None;
    if tier >= Tier::ReadOnly {
        if !config.btf_path.is_file() {
            tier = Tier::UserMode;
            reason = Some(format!(
                "no kernel BTF at {}: CO-RE programs cannot be loaded",
                config.btf_path.display()
            ));
        } else {
            let default_btf = Path::new(agentmesh_api::names::paths::KERNEL_BTF);
            let options = KernelOptions {
                btf_path: (config.btf_path != default_btf).then(|| config.btf_path.clone()),
                ring_buffer_size: config.ring_buffer_size,
                enable_process: config.enable_process,
                enable_file: config.enable_file,
                enable_network: config.enable_network,
                mute_paths: config.mute_paths.clone(),
                filter_pods: config.filter_pods,
                cgroup_root: config.cgroup_root.clone(),
                blocking: tier == Tier::Blocking,
                cgroup_driver: config.cgroup_driver,
                pod_cgroup_created: pod_cgroup_created.clone(),
                skip_runtime_opens: config.skip_runtime_opens,
            };
            match KernelProbe::start(options, shared.clone(), metrics.clone()) {
                Ok(probe) => {
                    if tier == Tier::Blocking
                        && let Err(why) = &probe.loaded.blocking
                    {
                        tier = Tier::ReadOnly;
                        reason = Some(format!("tier 3 unavailable: {why}"));
                    }
                    status.set_programs_loaded(probe.loaded.programs);
                    kernel = Some(probe);
                }
                Err(error) => {
                    tier = Tier::UserMode;
                    reason = Some(error.to_string());
                }
            }
        }
    }
    status.set_tier(tier, reason.clone());
    metrics.tier.set(tier.number().into());
    metrics.programs_loaded.set(status.programs_loaded().into());
    match &reason {
        Some(reason) => tracing::warn!(
            requested = config.requested_tier.number(),
            tier = tier.number(),
            %reason,
            "safety tier lowered"
        ),
        None => tracing::info!(
            tier = tier.number(),
            programs = status.programs_loaded(),
            "probe started"
        ),
    }

    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(crate::http::serve(
        listener,
        metrics.clone(),
        status.clone(),
        config.metrics_enabled,
    )));

    // Pod names from the API server, when there is one.
    let names: PodNames = Arc::default();
    match pods::client(&config.kube).await {
        Ok(Some(client)) => tasks.push(tokio::spawn(pods::watch(
            client,
            config.node_name.clone(),
            names.clone(),
        ))),
        Ok(None) => tracing::info!("no API server configured: reports carry pod UIDs only"),
        Err(error) => {
            tracing::warn!(%error, "no API server reachable: reports carry pod UIDs only")
        }
    }

    let client = JsonClient::new(Some(config.token_file.clone()));
    let backoff = Backoff::default();

    // Enforcement (tier 3 in force only).
    let (sets_tx, sets_rx) = watch::channel::<Option<EnforcementSet>>(None);
    if tier == Tier::Blocking {
        tasks.push(tokio::spawn(crate::enforce::run(
            client.clone(),
            config.trust_api.clone(),
            config.node_name.clone(),
            sets_tx,
            backoff,
        )));
    }

    // Cgroup scanner and kernel map syncer.
    if let Some(probe) = &kernel {
        let sync = probe.syncer();
        let (state, _) = maps::build(&PodCgroups::from_scan(&found), None);
        metrics.pods_watched.set(state.pods.len() as i64);
        sync.send(state.clone());
        tasks.push(tokio::spawn(scan_loop(
            config.clone(),
            shared.clone(),
            metrics.clone(),
            status.clone(),
            sets_rx,
            sync,
            state,
        )));
    }

    // Tier 1: /proc polling on its own thread.
    let stop_user_mode = Arc::new(AtomicBool::new(false));
    let user_mode = (tier == Tier::UserMode).then(|| {
        let mut poller = UserModePoller::new(UserModeOptions {
            proc_root: config.proc_root.clone(),
            driver: config.cgroup_driver,
            enable_process: config.enable_process,
            enable_file: config.enable_file,
            enable_network: config.enable_network,
            mute_paths: config.mute_paths.clone(),
        });
        let stop = stop_user_mode.clone();
        let shared = shared.clone();
        let metrics = metrics.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                poller.poll(&shared, &metrics);
                std::thread::sleep(USER_MODE_INTERVAL);
            }
        })
    });

    // Report windows and their sender.
    let queue = Arc::new(ReportQueue::new(config.report_queue, metrics.clone()));
    tasks.push(tokio::spawn(queue.clone().run_sender(
        client.clone(),
        config.trust_api.clone(),
        backoff,
    )));
    let counters = kernel.as_ref().map(|probe| probe.counters.clone());
    tasks.push(tokio::spawn(report_windows(
        config.clone(),
        shared.clone(),
        status.clone(),
        names,
        queue,
        counters,
        kernel.as_ref().map(KernelProbe::syncer),
    )));

    // Noised telemetry.
    match config.telemetry_sink {
        TelemetrySink::None => {}
        TelemetrySink::Http => tasks.push(tokio::spawn(telemetry_loop(
            config.clone(),
            shared.clone(),
            metrics.clone(),
            JsonClient::new(None),
        ))),
        TelemetrySink::Dynamodb => tracing::warn!(
            "spec.telemetry.sink dynamodb is not implemented by this probe: no telemetry is exported"
        ),
    }
    if config.telemetry_sink != TelemetrySink::None && !config.enable_noise {
        tracing::warn!("spec.privacy.enableNoise is false: exact counts leave the node");
    }

    status.set_ready();
    Ok(ProbeHandle {
        status,
        metrics,
        shared,
        listen_addr,
        kernel,
        tasks,
        stop_user_mode,
        user_mode,
    })
}

async fn scan_loop(
    config: ProbeConfig,
    shared: Arc<Mutex<Shared>>,
    metrics: Arc<Metrics>,
    status: Arc<Status>,
    mut sets: watch::Receiver<Option<EnforcementSet>>,
    sync: crate::kernel::KernelSync,
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
            let mut shared = shared.lock().unwrap_or_else(|e| e.into_inner());
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
        let (state, warnings) = maps::build(&pod_cgroups, set.as_ref());
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

async fn report_windows(
    config: ProbeConfig,
    shared: Arc<Mutex<Shared>>,
    status: Arc<Status>,
    names: PodNames,
    queue: Arc<ReportQueue>,
    counters: Option<Arc<KernelCounters>>,
    kernel: Option<crate::kernel::KernelSync>,
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
        let drops = counters.as_ref().map_or(0, |c| c.get(C_RINGBUF_DROPS));
        status.set_ring_buffer_drops(drops);
        let pods = {
            let names = names.read().unwrap_or_else(|e| e.into_inner());
            shared
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .aggregator
                .take(now_ms(), |uid| {
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
                ring_buffer_drops: drops,
            },
            pods,
            outcomes: Vec::new(),
        });
    }
}

async fn telemetry_loop(
    config: ProbeConfig,
    shared: Arc<Mutex<Shared>>,
    metrics: Arc<Metrics>,
    client: JsonClient,
) {
    let Some(endpoint) = config.telemetry_endpoint.clone() else {
        return;
    };
    let mut backlog = Backlog::new(BACKLOG_CAPACITY);
    let mut tick = tokio::time::interval(config.telemetry_interval);
    tick.tick().await;
    let mut window_start = now_ms();
    loop {
        tick.tick().await;
        let exact = shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .aggregator
            .take_telemetry();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Where this host mounts cgroup v2, from /proc/self/mountinfo.
    fn cgroup2_mount() -> Option<PathBuf> {
        std::fs::read_to_string("/proc/self/mountinfo")
            .ok()?
            .lines()
            .find(|line| {
                line.split(" - ")
                    .nth(1)
                    .is_some_and(|fs| fs.starts_with("cgroup2 "))
            })
            .and_then(|line| line.split(' ').nth(4))
            .map(PathBuf::from)
    }

    #[test]
    fn the_default_root_finds_cgroup_v2_on_unified_and_hybrid_hosts() {
        let Some(mount) = cgroup2_mount() else {
            panic!("this test needs a host with cgroup v2 mounted");
        };
        // On a cgroup v2 host the default is the mount; on a hybrid one (this machine's
        // /sys/fs/cgroup is v1, v2 is at /sys/fs/cgroup/unified) the probe goes below it.
        assert_eq!(
            resolve_cgroup_root(Path::new("/sys/fs/cgroup")).unwrap(),
            mount
        );
        assert_eq!(resolve_cgroup_root(&mount).unwrap(), mount);
    }

    #[test]
    fn a_root_with_no_cgroup_v2_is_refused_naming_both_paths() {
        let dir = std::env::temp_dir();
        let error = resolve_cgroup_root(&dir).unwrap_err().to_string();
        assert!(error.contains("is not a cgroup v2 mount"), "{error}");
        assert!(
            error.contains(&dir.join("unified").display().to_string()),
            "{error}"
        );
        let missing = resolve_cgroup_root(Path::new("/nonexistent/cgroup")).unwrap_err();
        assert!(
            missing.to_string().contains("/nonexistent/cgroup"),
            "{missing}"
        );
    }
}
