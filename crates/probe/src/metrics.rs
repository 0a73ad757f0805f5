//! Prometheus metrics of the probe (`/metrics` on `metrics.port`, 9090 by default).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::counters::SensorCounters;

/// Every metric of the probe.
#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    /// What the kernel's consumer and the `/proc` poller advance.
    pub sensors: Arc<SensorCounters>,
    pub report_drops: Counter,
    pub reports_sent: Counter,
    pub report_failures: Counter,
    pub report_latency: Histogram,
    pub programs_loaded: Gauge,
    /// 1 for the hook that observes file opens (`hook`: `fexit` or `sys_exit`).
    pub file_hook: Family<Vec<(String, String)>, Gauge>,
    pub tier: Gauge,
    pub tier_requested: Gauge,
    pub pods_watched: Gauge,
    pub epsilon_spent: Counter<f64, AtomicU64>,
    pub telemetry_exports: Counter,
    pub telemetry_drops: Counter,
    /// Rounds of resending telemetry items DynamoDB left unprocessed.
    pub telemetry_retries: Counter,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("meshlogic_probe");
        if let Some(spans) = agentmesh_runtime::traces::metrics("") {
            registry.register_collector(Box::new(spans));
        }
        let sensors = Arc::new(SensorCounters::default());
        registry.register(
            "events",
            "Kernel or /proc events received in user space, by kind",
            sensors.events.by_kind.clone(),
        );
        let kernel = &sensors.kernel;
        let metrics = Self {
            report_drops: Counter::default(),
            reports_sent: Counter::default(),
            report_failures: Counter::default(),
            report_latency: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            programs_loaded: Gauge::default(),
            file_hook: Family::default(),
            tier: Gauge::default(),
            tier_requested: Gauge::default(),
            pods_watched: Gauge::default(),
            epsilon_spent: Counter::default(),
            telemetry_exports: Counter::default(),
            telemetry_drops: Counter::default(),
            telemetry_retries: Counter::default(),
            registry: Registry::default(),
            sensors: sensors.clone(),
        };
        registry.register(
            "ring_buffer_drops",
            "Events lost in the kernel because the ring buffer was full",
            kernel.ring_buffer_drops.counter.clone(),
        );
        registry.register(
            "muted_events",
            "File opens dropped in the kernel by a mute path",
            kernel.muted.counter.clone(),
        );
        registry.register(
            "repeated_opens",
            "File opens counted in the kernel without an event: the same pod, path and flags again \
             in one report window (counted in the reports, not listed twice)",
            kernel.repeated_opens.counter.clone(),
        );
        registry.register(
            "runtime_setup_opens",
            "File opens in pod cgroups by tasks at the root of whoever creates cgroups outside pods (the container runtime setting a container up), not counted as the pod's",
            kernel.runtime_setup_opens.counter.clone(),
        );
        registry.register(
            "kernel_blocked",
            "Connects refused and execs killed in the kernel (tier 3), by kind",
            kernel.blocked.clone(),
        );
        registry.register(
            "report_drops",
            "Report batches dropped because the report queue was full or the trust API refused them",
            metrics.report_drops.clone(),
        );
        registry.register(
            "reports_sent",
            "Report batches accepted by the trust API",
            metrics.reports_sent.clone(),
        );
        registry.register(
            "report_failures",
            "Failed attempts to send a report batch (each is retried)",
            metrics.report_failures.clone(),
        );
        registry.register(
            "report_latency_seconds",
            "Time to deliver a report batch to the trust API",
            metrics.report_latency.clone(),
        );
        registry.register(
            "programs_loaded",
            "BPF programs loaded and attached",
            metrics.programs_loaded.clone(),
        );
        registry.register(
            "file_hook",
            "1 for the hook observing file opens: fexit (only opens pay) or sys_exit (every system call pays; where the kernel refuses fexit)",
            metrics.file_hook.clone(),
        );
        registry.register(
            "tier",
            "Safety tier in force (1 user-mode, 2 read-only eBPF, 3 controlled blocking)",
            metrics.tier.clone(),
        );
        registry.register(
            "tier_requested",
            "Safety tier requested by the MeshLogicAgent",
            metrics.tier_requested.clone(),
        );
        registry.register(
            "pods_watched",
            "Pod cgroups watched on this node",
            metrics.pods_watched.clone(),
        );
        registry.register(
            "privacy_epsilon_spent",
            "Differential-privacy budget spent on telemetry releases since start",
            metrics.epsilon_spent.clone(),
        );
        registry.register(
            "telemetry_exports",
            "Telemetry records sent to the telemetry sink",
            metrics.telemetry_exports.clone(),
        );
        registry.register(
            "telemetry_drops",
            "Telemetry records dropped undelivered because the backlog of records waiting for the \
             telemetry sink was full",
            metrics.telemetry_drops.clone(),
        );
        registry.register(
            "telemetry_retries",
            "Rounds of resending the telemetry items DynamoDB left unprocessed (throttled \
             requests are retried by the AWS SDK itself)",
            metrics.telemetry_retries.clone(),
        );
        registry.register(
            "unattributed_events",
            "Kernel events whose pod cgroup was no longer known in user space",
            sensors.events.unattributed.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    pub fn events_of(&self, kind: &str) -> u64 {
        self.sensors.events.of(kind)
    }

    pub fn encode(&self) -> String {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
