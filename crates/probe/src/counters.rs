//! The counters the sensors (the kernel programs' consumer and the `/proc` poller) advance,
//! handed to them on their own: the sensors do not know the metrics registry, and the registry
//! (`metrics`) does not know the sensors; it registers these counters under their names.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

/// The `kind` labels of the events counter ([`crate::aggregate::Observation::kind`]).
pub const EVENT_KINDS: [&str; 6] = [
    "exec",
    "exit",
    "open",
    "connect",
    "blocked_connect",
    "blocked_exec",
];

/// Events received in user space, by kind, and those whose pod was no longer known.
#[derive(Debug)]
pub struct EventCounters {
    pub by_kind: Family<KindLabel, Counter>,
    kinds: [Counter; 6],
    pub unattributed: Counter,
}

impl Default for EventCounters {
    fn default() -> Self {
        let by_kind = Family::<KindLabel, Counter>::default();
        let kinds = EVENT_KINDS.map(|kind| by_kind.get_or_create(&KindLabel { kind }).clone());
        Self {
            by_kind,
            kinds,
            unattributed: Counter::default(),
        }
    }
}

impl EventCounters {
    /// One event of `kind` received.
    pub fn event(&self, kind: &str) {
        if let Some(index) = EVENT_KINDS.iter().position(|k| *k == kind) {
            self.kinds[index].inc();
        }
    }

    pub fn of(&self, kind: &str) -> u64 {
        EVENT_KINDS
            .iter()
            .position(|k| *k == kind)
            .map_or(0, |index| self.kinds[index].get())
    }
}

/// A counter that follows a running total kept elsewhere (the kernel's per-CPU counters).
#[derive(Debug, Default)]
pub struct MirroredCounter {
    pub counter: Counter,
    last: AtomicU64,
}

impl MirroredCounter {
    fn new(counter: Counter) -> Self {
        Self {
            counter,
            last: AtomicU64::new(0),
        }
    }

    /// Advances the counter by what `total` grew since the last call.
    pub fn follow(&self, total: u64) {
        let before = self.last.swap(total, Ordering::Relaxed);
        if total > before {
            self.counter.inc_by(total - before);
        }
    }
}

/// The kernel's running totals that are exported.
#[derive(Debug)]
pub struct KernelTotals {
    pub ring_buffer_drops: MirroredCounter,
    pub muted: MirroredCounter,
    pub repeated_opens: MirroredCounter,
    pub runtime_setup_opens: MirroredCounter,
    /// Refusals by kind (`connect`, `exec`): the two counters below.
    pub blocked: Family<KindLabel, Counter>,
    pub blocked_connects: MirroredCounter,
    pub blocked_execs: MirroredCounter,
}

impl Default for KernelTotals {
    fn default() -> Self {
        let blocked = Family::<KindLabel, Counter>::default();
        let of = |kind| MirroredCounter::new(blocked.get_or_create(&KindLabel { kind }).clone());
        Self {
            ring_buffer_drops: MirroredCounter::default(),
            muted: MirroredCounter::default(),
            repeated_opens: MirroredCounter::default(),
            runtime_setup_opens: MirroredCounter::default(),
            blocked_connects: of("connect"),
            blocked_execs: of("exec"),
            blocked,
        }
    }
}

/// Everything a sensor advances.
#[derive(Debug, Default)]
pub struct SensorCounters {
    pub events: EventCounters,
    pub kernel: KernelTotals,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mirrored_counter_advances_by_growth_only() {
        let mirrored = MirroredCounter::default();
        mirrored.follow(5);
        mirrored.follow(5);
        mirrored.follow(8);
        // A total that went back (a map recreated) adds nothing, and is followed from there.
        mirrored.follow(2);
        mirrored.follow(3);
        assert_eq!(mirrored.counter.get(), 9);
    }

    #[test]
    fn events_are_counted_by_kind() {
        let counters = EventCounters::default();
        counters.event("open");
        counters.event("open");
        counters.event("no such kind");
        assert_eq!((counters.of("open"), counters.of("exec")), (2, 0));
    }
}
