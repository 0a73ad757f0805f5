//! Prometheus metrics of the probe (`/metrics` on `metrics.port`, 9090 by default).

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::kernel::KernelCounters;
use crate::kernel::event::{
    C_BLOCKED_CONNECT, C_BLOCKED_EXEC, C_MUTED, C_OPEN_REPEATED, C_RINGBUF_DROPS, C_RUNTIME_SETUP,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

const KINDS: [&str; 6] = [
    "exec",
    "exit",
    "open",
    "connect",
    "blocked_connect",
    "blocked_exec",
];

/// Every metric of the probe.
#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    events: [Counter; 6],
    pub ring_buffer_drops: Counter,
    pub muted: Counter,
    pub repeated_opens: Counter,
    pub runtime_setup_opens: Counter,
    pub kernel_blocked: Family<KindLabel, Counter>,
    pub report_drops: Counter,
    pub reports_sent: Counter,
    pub report_failures: Counter,
    pub report_latency: Histogram,
    pub programs_loaded: Gauge,
    pub tier: Gauge,
    pub tier_requested: Gauge,
    pub pods_watched: Gauge,
    pub epsilon_spent: Counter<f64, AtomicU64>,
    pub telemetry_exports: Counter,
    pub telemetry_drops: Counter,
    pub unattributed: Counter,
    last_drops: AtomicU64,
    last_muted: AtomicU64,
    last_repeated: AtomicU64,
    last_runtime_setup: AtomicU64,
    last_blocked: [AtomicU64; 2],
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("meshlogic_probe");
        let events_family = Family::<KindLabel, Counter>::default();
        let events = KINDS.map(|kind| events_family.get_or_create(&KindLabel { kind }).clone());
        registry.register(
            "events",
            "Kernel or /proc events received in user space, by kind",
            events_family,
        );
        let metrics = Self {
            events,
            ring_buffer_drops: Counter::default(),
            muted: Counter::default(),
            repeated_opens: Counter::default(),
            runtime_setup_opens: Counter::default(),
            kernel_blocked: Family::default(),
            report_drops: Counter::default(),
            reports_sent: Counter::default(),
            report_failures: Counter::default(),
            report_latency: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            programs_loaded: Gauge::default(),
            tier: Gauge::default(),
            tier_requested: Gauge::default(),
            pods_watched: Gauge::default(),
            epsilon_spent: Counter::default(),
            telemetry_exports: Counter::default(),
            telemetry_drops: Counter::default(),
            unattributed: Counter::default(),
            last_drops: AtomicU64::new(0),
            last_muted: AtomicU64::new(0),
            last_repeated: AtomicU64::new(0),
            last_runtime_setup: AtomicU64::new(0),
            last_blocked: [AtomicU64::new(0), AtomicU64::new(0)],
            registry: Registry::default(),
        };
        registry.register(
            "ring_buffer_drops",
            "Events lost in the kernel because the ring buffer was full",
            metrics.ring_buffer_drops.clone(),
        );
        registry.register(
            "muted_events",
            "File opens dropped in the kernel by a mute path",
            metrics.muted.clone(),
        );
        registry.register(
            "repeated_opens",
            "File opens counted in the kernel without an event: the same pod, path and flags again \
             in one report window (counted in the reports, not listed twice)",
            metrics.repeated_opens.clone(),
        );
        registry.register(
            "runtime_setup_opens",
            "File opens in pod cgroups by tasks at the root of whoever creates cgroups outside pods (the container runtime setting a container up), not counted as the pod's",
            metrics.runtime_setup_opens.clone(),
        );
        registry.register(
            "kernel_blocked",
            "Connects refused and execs killed in the kernel (tier 3), by kind",
            metrics.kernel_blocked.clone(),
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
            "unattributed_events",
            "Kernel events whose pod cgroup was no longer known in user space",
            metrics.unattributed.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    /// One event of `kind` received.
    pub fn event(&self, kind: &str) {
        if let Some(index) = KINDS.iter().position(|k| *k == kind) {
            self.events[index].inc();
        }
    }

    pub fn events_of(&self, kind: &str) -> u64 {
        KINDS
            .iter()
            .position(|k| *k == kind)
            .map_or(0, |index| self.events[index].get())
    }

    /// Mirrors the kernel's running totals into the counters.
    pub fn kernel_counters(&self, counters: &KernelCounters) {
        let advance = |counter: &Counter, last: &AtomicU64, now: u64| {
            let before = last.swap(now, Ordering::Relaxed);
            if now > before {
                counter.inc_by(now - before);
            }
        };
        advance(
            &self.ring_buffer_drops,
            &self.last_drops,
            counters.get(C_RINGBUF_DROPS),
        );
        advance(&self.muted, &self.last_muted, counters.get(C_MUTED));
        advance(
            &self.repeated_opens,
            &self.last_repeated,
            counters.get(C_OPEN_REPEATED),
        );
        advance(
            &self.runtime_setup_opens,
            &self.last_runtime_setup,
            counters.get(C_RUNTIME_SETUP),
        );
        for (i, (kind, index)) in [("connect", C_BLOCKED_CONNECT), ("exec", C_BLOCKED_EXEC)]
            .into_iter()
            .enumerate()
        {
            let counter = self
                .kernel_blocked
                .get_or_create(&KindLabel { kind })
                .clone();
            advance(&counter, &self.last_blocked[i], counters.get(index));
        }
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
