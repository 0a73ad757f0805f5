//! The state the sensors write into and the report windows take from: the aggregator and what
//! attributes a pod cgroup to its pod.

use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use foldhash::HashMap;

use crate::aggregate::{Aggregator, Observation};
use crate::cgroup::PodCgroups;

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

    /// Records an observation of a pod cgroup's task; false (and counted as unattributed) when
    /// the pod is not known.
    pub fn record(&mut self, pod_cgroup: u64, observation: Observation<'_>) -> bool {
        self.attribute(pod_cgroup, 1, |aggregator, uid| {
            aggregator.record(uid, observation)
        })
    }

    /// Adds opens of a pod cgroup's tasks that the kernel counted without sending them.
    pub fn record_repeated_opens(&mut self, pod_cgroup: u64, opens: u64) -> bool {
        self.attribute(pod_cgroup, opens, |aggregator, uid| {
            aggregator.record_repeated_opens(uid, opens)
        })
    }

    /// Adds events of a pod cgroup's tasks that the kernel lost to a full ring buffer.
    pub fn record_dropped(&mut self, pod_cgroup: u64, events: u64) -> bool {
        self.attribute(pod_cgroup, events, |aggregator, uid| {
            aggregator.record_dropped(uid, events)
        })
    }

    /// Gives the aggregator the UID of the pod of a pod cgroup, scanned or only reported by the
    /// kernel so far; when neither knows it, counts `events` unattributed.
    fn attribute(
        &mut self,
        pod_cgroup: u64,
        events: u64,
        record: impl FnOnce(&mut Aggregator, &str),
    ) -> bool {
        let uid = (self.pod_cgroups.by_id.get(&pod_cgroup))
            .or_else(|| self.discovered.get(&pod_cgroup).map(|(uid, _)| uid));
        match uid {
            Some(uid) => record(&mut self.aggregator, uid),
            None => self.unattributed += events,
        }
        uid.is_some()
    }
}

/// Locks, taking the state of a holder that panicked as it is: every write leaves it whole.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
