//! Per-pod windows: exact counts and first-seen items of what each pod did, taken whole at the
//! end of each report window. Also the node-wide totals that telemetry noises and exports.

// foldhash: several times faster than SipHash on the consumer's hot path (every event hashes its
// pod and its path), and randomly seeded per process against crafted collisions.
use foldhash::{HashMap, HashSet};
use std::net::IpAddr;

use agentmesh_api::wire::{BehaviorCounts, BlockedAction, Destination, MAX_ITEMS, PodBehavior};

/// One thing a pod did, as either tier observes it.
#[derive(Debug, Clone, Copy)]
pub enum Observation<'a> {
    Exec { path: &'a str },
    Exit,
    Open { path: &'a str, write: bool },
    Connect { ip: IpAddr, port: u16 },
    BlockedConnect { ip: IpAddr, port: u16 },
    BlockedExec { path: &'a str },
}

impl Observation<'_> {
    /// Label of the `kind` of the events metric.
    pub fn kind(&self) -> &'static str {
        match self {
            Observation::Exec { .. } => "exec",
            Observation::Exit => "exit",
            Observation::Open { .. } => "open",
            Observation::Connect { .. } => "connect",
            Observation::BlockedConnect { .. } => "blocked_connect",
            Observation::BlockedExec { .. } => "blocked_exec",
        }
    }
}

/// Whether open(2) flags may write: an access mode other than read-only, or create/truncate.
pub fn open_flags_write(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & (libc::O_CREAT | libc::O_TRUNC) != 0
}

#[derive(Debug)]
struct Items<T> {
    seen: HashSet<T>,
}

impl<T> Default for Items<T> {
    fn default() -> Self {
        Self {
            seen: HashSet::default(),
        }
    }
}

impl<T: std::hash::Hash + Eq + Clone + Ord> Items<T> {
    /// Adds an item; false when the list is full and the item new (truncated).
    fn add_with<Q>(&mut self, key: &Q, make: impl FnOnce() -> T) -> bool
    where
        T: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        if self.seen.contains(key) {
            return true;
        }
        if self.seen.len() >= MAX_ITEMS {
            return false;
        }
        self.seen.insert(make());
        true
    }

    fn into_sorted(self) -> Vec<T> {
        let mut items: Vec<T> = self.seen.into_iter().collect();
        items.sort();
        items
    }
}

#[derive(Debug, Default)]
struct PodWindow {
    counts: BehaviorCounts,
    executables: Items<String>,
    written_paths: Items<String>,
    read_paths: Items<String>,
    destinations: Items<(IpAddr, u16)>,
    blocked: Vec<BlockedAction>,
    truncated: u64,
    dropped: u64,
}

/// The current window of every pod seen in it.
#[derive(Debug)]
pub struct Aggregator {
    window_start_ms: i64,
    pods: HashMap<String, PodWindow>,
    telemetry: BehaviorCounts,
}

impl Aggregator {
    pub fn new(now_ms: i64) -> Self {
        Self {
            window_start_ms: now_ms,
            pods: HashMap::default(),
            telemetry: BehaviorCounts::default(),
        }
    }

    pub fn record(&mut self, pod_uid: &str, observation: Observation<'_>) {
        let window = match self.pods.get_mut(pod_uid) {
            Some(window) => window,
            None => self.pods.entry(pod_uid.to_string()).or_default(),
        };
        let kept = match observation {
            Observation::Exec { path } => {
                window.counts.execs += 1;
                self.telemetry.execs += 1;
                window.executables.add_with(path, || path.to_string())
            }
            Observation::Exit => {
                window.counts.exits += 1;
                self.telemetry.exits += 1;
                true
            }
            Observation::Open { path, write } => {
                window.counts.file_opens += 1;
                self.telemetry.file_opens += 1;
                let list = if write {
                    &mut window.written_paths
                } else {
                    &mut window.read_paths
                };
                list.add_with(path, || path.to_string())
            }
            Observation::Connect { ip, port } => {
                window.counts.connects += 1;
                self.telemetry.connects += 1;
                window.destinations.add_with(&(ip, port), || (ip, port))
            }
            Observation::BlockedConnect { ip, port } => {
                push_bounded(&mut window.blocked, BlockedAction::Connect { ip, port })
            }
            Observation::BlockedExec { path } => push_bounded(
                &mut window.blocked,
                BlockedAction::Exec {
                    path: path.to_string(),
                },
            ),
        };
        if !kept {
            window.truncated += 1;
        }
    }

    /// Opens the kernel counted without sending them (repeats within the window).
    pub fn record_repeated_opens(&mut self, pod_uid: &str, opens: u64) {
        let window = match self.pods.get_mut(pod_uid) {
            Some(window) => window,
            None => self.pods.entry(pod_uid.to_string()).or_default(),
        };
        window.counts.file_opens += opens;
        self.telemetry.file_opens += opens;
    }

    /// Events of the pod the kernel lost to a full ring buffer.
    pub fn record_dropped(&mut self, pod_uid: &str, events: u64) {
        let window = match self.pods.get_mut(pod_uid) {
            Some(window) => window,
            None => self.pods.entry(pod_uid.to_string()).or_default(),
        };
        window.dropped += events;
    }

    /// Ends the window: the behaviour of every pod seen in it, named by `pod_name`.
    pub fn take(
        &mut self,
        now_ms: i64,
        pod_name: impl Fn(&str) -> Option<(String, Option<String>)>,
    ) -> Vec<PodBehavior> {
        let start = std::mem::replace(&mut self.window_start_ms, now_ms);
        let mut pods: Vec<PodBehavior> = self
            .pods
            .drain()
            .map(|(uid, window)| {
                let (pod, identity) = match pod_name(&uid) {
                    Some((pod, identity)) => (Some(pod), identity),
                    None => (None, None),
                };
                PodBehavior {
                    pod,
                    identity,
                    window_start_ms: start,
                    window_end_ms: now_ms,
                    counts: window.counts,
                    executables: window.executables.into_sorted(),
                    written_paths: window.written_paths.into_sorted(),
                    read_paths: window.read_paths.into_sorted(),
                    destinations: window
                        .destinations
                        .into_sorted()
                        .into_iter()
                        .map(|(ip, port)| Destination { ip, port })
                        .collect(),
                    blocked: window.blocked,
                    items_truncated: window.truncated,
                    events_dropped: window.dropped,
                    pod_uid: uid,
                }
            })
            .collect();
        pods.sort_by(|a, b| a.pod_uid.cmp(&b.pod_uid));
        pods
    }

    /// Node totals since the last call (the input of noised telemetry).
    pub fn take_telemetry(&mut self) -> BehaviorCounts {
        std::mem::take(&mut self.telemetry)
    }
}

fn push_bounded(list: &mut Vec<BlockedAction>, action: BlockedAction) -> bool {
    if list.contains(&action) {
        return true;
    }
    if list.len() >= MAX_ITEMS {
        return false;
    }
    list.push(action);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_counts_and_lists_each_item_once() {
        let mut aggregator = Aggregator::new(1000);
        for _ in 0..3 {
            aggregator.record("pod-a", Observation::Exec { path: "/bin/sh" });
            aggregator.record(
                "pod-a",
                Observation::Open {
                    path: "/etc/passwd",
                    write: false,
                },
            );
            aggregator.record(
                "pod-a",
                Observation::Open {
                    path: "/tmp/x",
                    write: true,
                },
            );
            aggregator.record(
                "pod-a",
                Observation::Connect {
                    ip: "10.0.0.1".parse().unwrap(),
                    port: 443,
                },
            );
        }
        aggregator.record("pod-b", Observation::Exit);
        let pods = aggregator.take(2000, |uid| {
            (uid == "pod-a").then(|| ("ns/a".into(), Some("id-a".into())))
        });
        assert_eq!(pods.len(), 2);
        let a = &pods[0];
        assert_eq!(a.pod_uid, "pod-a");
        assert_eq!(a.pod.as_deref(), Some("ns/a"));
        assert_eq!(a.identity.as_deref(), Some("id-a"));
        assert_eq!((a.window_start_ms, a.window_end_ms), (1000, 2000));
        assert_eq!(
            a.counts,
            BehaviorCounts {
                execs: 3,
                exits: 0,
                file_opens: 6,
                connects: 3
            }
        );
        assert_eq!(a.executables, ["/bin/sh"]);
        assert_eq!(a.read_paths, ["/etc/passwd"]);
        assert_eq!(a.written_paths, ["/tmp/x"]);
        assert_eq!(a.destinations.len(), 1);
        assert_eq!(pods[1].pod, None);
        assert_eq!(pods[1].counts.exits, 1);
        // The next window starts empty where this one ended.
        aggregator.record("pod-a", Observation::Exit);
        let next = aggregator.take(3000, |_| None);
        assert_eq!((next[0].window_start_ms, next[0].counts.execs), (2000, 0));
    }

    #[test]
    fn lists_stop_at_max_items_and_count_the_rest() {
        let mut aggregator = Aggregator::new(0);
        let paths: Vec<String> = (0..MAX_ITEMS + 10).map(|i| format!("/data/{i}")).collect();
        for path in &paths {
            aggregator.record("p", Observation::Open { path, write: false });
        }
        // Seen again: still listed, not truncated twice.
        aggregator.record(
            "p",
            Observation::Open {
                path: &paths[0],
                write: false,
            },
        );
        let pods = aggregator.take(1, |_| None);
        assert_eq!(pods[0].read_paths.len(), MAX_ITEMS);
        assert_eq!(pods[0].items_truncated, 10);
        assert_eq!(pods[0].counts.file_opens, (MAX_ITEMS + 11) as u64);
    }

    #[test]
    fn write_flags_are_recognised() {
        assert!(!open_flags_write(libc::O_RDONLY | libc::O_CLOEXEC));
        assert!(open_flags_write(libc::O_WRONLY));
        assert!(open_flags_write(libc::O_RDWR));
        assert!(open_flags_write(libc::O_RDONLY | libc::O_CREAT));
    }

    #[test]
    fn telemetry_totals_are_taken_separately() {
        let mut aggregator = Aggregator::new(0);
        aggregator.record("p", Observation::Exec { path: "/x" });
        aggregator.take(1, |_| None);
        assert_eq!(aggregator.take_telemetry().execs, 1);
        assert_eq!(aggregator.take_telemetry().execs, 0);
    }
}
