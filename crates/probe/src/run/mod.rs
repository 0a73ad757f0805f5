//! Start-up and the probe's tasks: the tier decision (with fallback), the cgroup scanner and
//! kernel map syncer, the report windows and sender, enforcement, telemetry, pod names and the
//! metrics/health server.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentmesh_api::meshlogic::{FileHook, TelemetrySink};
use agentmesh_api::wire::EnforcementSet;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::aggregate::Aggregator;
use crate::cgroup::{self, PodCgroups};
use crate::config::{ProbeConfig, Tier};
use crate::http::JsonClient;
use crate::kernel::maps;
use crate::kernel::{KernelCounters, KernelOptions, KernelProbe};
use crate::metrics::Metrics;
use crate::pods::{self, PodNames};
use crate::report::{Backoff, ReportQueue};
use crate::shared::Shared;
use crate::status::Status;
use crate::usermode::{UserModeOptions, UserModePoller};
use cgroup_root::resolve_cgroup_root;
use loops::{report_windows, scan_loop, telemetry_loop};
use tier::{KernelOutcome, TierDecision};

mod cgroup_root;
mod loops;
pub mod tier;

/// How often `/proc` is polled at tier 1.
const USER_MODE_INTERVAL: Duration = Duration::from_millis(500);

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("spec.cgroup.root (--cgroup-root): {0}")]
    CgroupRoot(String),
    #[error("MESHLOGIC_TRUST_API_CA: {0}")]
    TrustApiCa(String),
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

/// Loads the kernel programs when the requested tier needs them, and decides the tier.
fn load_kernel(
    config: &ProbeConfig,
    shared: &Arc<Mutex<Shared>>,
    metrics: &Metrics,
    pod_cgroup_created: &Arc<tokio::sync::Notify>,
) -> (Option<KernelProbe>, TierDecision) {
    let requested = config.requested_tier;
    if !tier::wants_kernel(requested) {
        return (None, tier::decide(requested, &KernelOutcome::NotWanted));
    }
    if !config.btf_path.is_file() {
        let outcome = KernelOutcome::NoBtf(&config.btf_path);
        return (None, tier::decide(requested, &outcome));
    }
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
        blocking: requested == Tier::Blocking,
        cgroup_driver: config.cgroup_driver,
        pod_cgroup_created: pod_cgroup_created.clone(),
        skip_runtime_opens: config.skip_runtime_opens,
        file_hook: config.file_hook,
        inject_fexit_load_failure: config.inject_fexit_load_failure,
    };
    match KernelProbe::start(options, shared.clone(), metrics.sensors.clone()) {
        Ok(probe) => {
            let outcome = KernelOutcome::Loaded {
                blocking: probe.loaded.blocking.clone(),
            };
            let decision = tier::decide(requested, &outcome);
            (Some(probe), decision)
        }
        Err(error) => (
            None,
            tier::decide(requested, &KernelOutcome::Failed(error.to_string())),
        ),
    }
}

/// Starts the probe: decides the tier (falling back rather than failing), then spawns its
/// tasks on the current tokio runtime.
pub async fn start(mut config: ProbeConfig) -> Result<ProbeHandle, StartError> {
    config.cgroup_root = resolve_cgroup_root(&config.cgroup_root)?;
    // The trust API's certificate is checked against the operator's CA only.
    let trust_api_tls = config
        .trust_api_ca
        .as_deref()
        .map(|pem| agentmesh_runtime::client::tls_config(pem.as_bytes()))
        .transpose()
        .map_err(StartError::TrustApiCa)?;
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
    let (kernel, decision) = load_kernel(&config, &shared, &metrics, &pod_cgroup_created);
    let TierDecision { tier, reason } = decision;
    if let Some(probe) = &kernel {
        status.set_programs_loaded(probe.loaded.programs);
        let loaded = &probe.loaded;
        status.set_file_hook(loaded.file_hook, loaded.file_hook_note.clone());
        if let Some(hook) = loaded.file_hook {
            let label = vec![("hook".to_string(), hook.to_string())];
            metrics.file_hook.get_or_create(&label).set(1);
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
            file_hook = status.file_hook().map(FileHook::as_str),
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

    let client = JsonClient::with_tls(Some(config.token_file.clone()), trust_api_tls);
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
        let (state, _) = maps::build(&PodCgroups::from_scan(&found), None, &Default::default());
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
        let sensors = metrics.sensors.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                poller.poll(&shared, &sensors.events);
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
        TelemetrySink::Http => {
            if let Some(endpoint) = config.telemetry_endpoint.clone() {
                tasks.push(tokio::spawn(telemetry_loop(
                    config.clone(),
                    shared.clone(),
                    metrics.clone(),
                    loops::TelemetryOut::Http(Box::new(JsonClient::new(None)), endpoint),
                )));
            }
        }
        TelemetrySink::Dynamodb => {
            let sink = crate::dynamodb::DynamoSink::new(&config, metrics.clone()).await;
            tracing::info!(table = %config.telemetry_table, region = %config.region, "telemetry to DynamoDB");
            tasks.push(tokio::spawn(telemetry_loop(
                config.clone(),
                shared.clone(),
                metrics.clone(),
                loops::TelemetryOut::Dynamodb(sink),
            )));
        }
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
