//! Behaviour baseline: what an identity has been seen doing, so that behaviour outside it is
//! an anomaly.
//!
//! - During the learning period (`learningPeriodSeconds` from the first event, 300 s by
//!   default) new executables and destinations are learned without penalty.
//! - After it, an executable or a destination (IP and port) not in the baseline is an anomaly
//!   (`newExecutable`, `newDestination`) and is then learned, so each one costs once.
//! - A write under a sensitive path (`sensitivePaths`) is always an anomaly
//!   (`sensitiveWrite`), learning period or not: it is a rule, not a habit to learn.
//!
//! **Bounds:** at most [`MAX_EXECUTABLES`] executables and [`MAX_DESTINATIONS`] destinations
//! per identity (paths longer than [`MAX_PATH_LEN`] bytes are cut there). A full baseline stops
//! learning: new items are still anomalies, every time, but memory does not grow and a flood of
//! new items cannot push known-good ones out. Worst case about 256 × 4 KiB + 1024 × 32 B,
//! about 1 MiB per identity; typical agents use a few kilobytes.

use std::collections::HashSet;
use std::net::IpAddr;

use agentmesh_identity::Timestamp;
use serde::{Deserialize, Serialize};

use crate::policy::AnomalySpec;
use crate::policy::FileAccess;

pub const MAX_EXECUTABLES: usize = 256;
pub const MAX_DESTINATIONS: usize = 1024;
pub const MAX_PATH_LEN: usize = 4096;

/// Kinds of anomaly; the same names as the CRD's `AnomalyKind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AnomalyKind {
    NewExecutable,
    NewDestination,
    SensitiveWrite,
    /// A window not seen whole (items unlisted, events lost).
    Unobserved,
}

/// An anomaly and what it costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Anomaly {
    pub kind: AnomalyKind,
    pub penalty: i32,
}

/// One identity's baseline.
#[derive(Clone, Debug, Default)]
pub struct Baseline {
    first_seen: Option<Timestamp>,
    executables: HashSet<Box<str>>,
    destinations: HashSet<(IpAddr, u16)>,
    /// Bumped by every change (learning starts, an item is learned): what is saved is compared
    /// with it.
    changes: u64,
}

/// A baseline as kept outside the leader's memory (the audit store of
/// `AGENTMESH_STORAGE_BACKEND`), so that a new leader continues learning where the last one
/// was instead of starting every identity's learning period again.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BaselineSnapshot {
    /// When learning started (`null`: nothing seen yet).
    pub first_seen: Option<Timestamp>,
    /// Executables learned, sorted.
    pub executables: Vec<String>,
    /// Destinations learned (`10.0.0.1:443`, `[2001:db8::1]:443`), sorted.
    pub destinations: Vec<String>,
}

fn cut(path: &str) -> &str {
    if path.len() <= MAX_PATH_LEN {
        return path;
    }
    let mut end = MAX_PATH_LEN;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    &path[..end]
}

impl Baseline {
    pub fn new() -> Self {
        Self::default()
    }

    /// What to keep outside the leader.
    pub fn snapshot(&self) -> BaselineSnapshot {
        let mut executables: Vec<String> = self.executables.iter().map(|e| e.to_string()).collect();
        executables.sort();
        let mut destinations: Vec<(IpAddr, u16)> = self.destinations.iter().copied().collect();
        destinations.sort();
        BaselineSnapshot {
            first_seen: self.first_seen,
            executables,
            destinations: destinations
                .into_iter()
                .map(|(ip, port)| std::net::SocketAddr::new(ip, port).to_string())
                .collect(),
        }
    }

    /// A baseline continued from a snapshot, within the same bounds as one learned here: at
    /// most [`MAX_EXECUTABLES`] and [`MAX_DESTINATIONS`] items, paths cut at
    /// [`MAX_PATH_LEN`]; destinations that do not parse are left out.
    pub fn restore(snapshot: &BaselineSnapshot) -> Self {
        let executables = snapshot
            .executables
            .iter()
            .map(|e| Box::from(cut(e)))
            .take(MAX_EXECUTABLES)
            .collect();
        let destinations = snapshot
            .destinations
            .iter()
            .filter_map(|d| d.parse::<std::net::SocketAddr>().ok())
            .map(|a| (a.ip(), a.port()))
            .take(MAX_DESTINATIONS)
            .collect();
        Self {
            first_seen: snapshot.first_seen,
            executables,
            destinations,
            changes: 0,
        }
    }

    /// A counter that moves with every change; equal values, equal baselines.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    fn learning(&mut self, settings: &AnomalySpec, now: Timestamp) -> bool {
        if self.first_seen.is_none() {
            self.changes += 1;
        }
        let first = *self.first_seen.get_or_insert(now);
        now.millis_since(first) < i64::from(settings.learning_period_seconds) * 1000
    }

    /// A window with `unlisted` items the probe could not report: an anomaly once learnt.
    pub fn observe_unlisted(
        &mut self,
        settings: &AnomalySpec,
        unlisted: u64,
        now: Timestamp,
    ) -> Option<Anomaly> {
        let learning = self.learning(settings, now);
        (unlisted > 0 && !learning).then_some(Anomaly {
            kind: AnomalyKind::Unobserved,
            penalty: settings.unobserved,
        })
    }

    pub fn observe_exec(
        &mut self,
        settings: &AnomalySpec,
        path: &str,
        now: Timestamp,
    ) -> Option<Anomaly> {
        let learning = self.learning(settings, now);
        let path = cut(path);
        if self.executables.contains(path) {
            return None;
        }
        if self.executables.len() < MAX_EXECUTABLES {
            self.executables.insert(path.into());
            self.changes += 1;
        }
        (!learning).then_some(Anomaly {
            kind: AnomalyKind::NewExecutable,
            penalty: settings.new_executable,
        })
    }

    pub fn observe_connect(
        &mut self,
        settings: &AnomalySpec,
        ip: IpAddr,
        port: u16,
        now: Timestamp,
    ) -> Option<Anomaly> {
        let learning = self.learning(settings, now);
        if self.destinations.contains(&(ip, port)) {
            return None;
        }
        if self.destinations.len() < MAX_DESTINATIONS {
            self.destinations.insert((ip, port));
            self.changes += 1;
        }
        (!learning).then_some(Anomaly {
            kind: AnomalyKind::NewDestination,
            penalty: settings.new_destination,
        })
    }

    pub fn observe_file(
        &mut self,
        settings: &AnomalySpec,
        path: &str,
        access: FileAccess,
        now: Timestamp,
    ) -> Option<Anomaly> {
        self.learning(settings, now);
        let writes = matches!(access, FileAccess::Write | FileAccess::Any);
        let sensitive = settings.sensitive_paths.iter().any(|p| {
            let p = if p.len() > 1 {
                p.trim_end_matches('/')
            } else {
                p.as_str()
            };
            crate::policy::path_is_under(p, path)
        });
        (writes && sensitive).then_some(Anomaly {
            kind: AnomalyKind::SensitiveWrite,
            penalty: settings.sensitive_write,
        })
    }

    pub fn executables(&self) -> usize {
        self.executables.len()
    }

    pub fn destinations(&self) -> usize {
        self.destinations.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restored_baseline_goes_on_where_the_saved_one_was() {
        let s = AnomalySpec::default();
        let mut b = Baseline::new();
        assert_eq!(b.changes(), 0);
        b.observe_exec(&s, "/usr/bin/python3", T0);
        b.observe_connect(&s, "10.0.0.1".parse().unwrap(), 443, T0);
        b.observe_connect(&s, "2001:db8::1".parse().unwrap(), 8443, T0);
        assert_eq!(b.changes(), 4, "learning started, three items");
        let snapshot = b.snapshot();
        assert_eq!(
            snapshot.destinations,
            ["10.0.0.1:443", "[2001:db8::1]:8443"]
        );
        let json = serde_json::to_string(&snapshot).unwrap();
        let mut restored = Baseline::restore(&serde_json::from_str(&json).unwrap());
        assert_eq!(restored.snapshot(), snapshot);
        // Past the learning period (counted from the saved start): known items cost nothing,
        // new ones are anomalies — the learning period does not start again.
        let after = T0.plus_millis(300_000);
        assert_eq!(restored.observe_exec(&s, "/usr/bin/python3", after), None);
        assert_eq!(
            restored.observe_connect(&s, "2001:db8::1".parse().unwrap(), 8443, after),
            None
        );
        assert!(restored.observe_exec(&s, "/bin/sh", after).is_some());
        let fresh_after_restart = Baseline::new().observe_exec(&s, "/bin/sh", after);
        assert_eq!(
            fresh_after_restart, None,
            "what a new leader without it would do"
        );
    }

    #[test]
    fn a_restored_snapshot_keeps_the_bounds_whatever_the_store_held() {
        let snapshot = BaselineSnapshot {
            first_seen: Some(T0),
            executables: (0..MAX_EXECUTABLES + 50)
                .map(|i| {
                    format!(
                        "/bin/{i}{}",
                        "x".repeat(if i == 0 { MAX_PATH_LEN } else { 0 })
                    )
                })
                .collect(),
            destinations: (0..MAX_DESTINATIONS as u32 + 10)
                .map(|i| format!("10.0.{}.{}:80", i / 256, i % 256))
                .chain(["not an address".to_owned(), "10.0.0.1".to_owned()])
                .collect(),
        };
        let restored = Baseline::restore(&snapshot);
        assert_eq!(restored.executables(), MAX_EXECUTABLES);
        assert_eq!(restored.destinations(), MAX_DESTINATIONS);
        assert!(
            restored
                .snapshot()
                .executables
                .iter()
                .all(|e| e.len() <= MAX_PATH_LEN)
        );
    }

    const T0: Timestamp = Timestamp::from_secs(1_800_000_000);

    #[test]
    fn learns_then_flags_new_behaviour_once() {
        let s = AnomalySpec::default();
        let mut b = Baseline::new();
        assert_eq!(b.observe_exec(&s, "/usr/bin/python3", T0), None);
        assert_eq!(
            b.observe_connect(&s, "10.0.0.1".parse().unwrap(), 443, T0.plus_millis(1000)),
            None
        );
        let after = T0.plus_millis(300_000);
        assert_eq!(b.observe_exec(&s, "/usr/bin/python3", after), None);
        assert_eq!(
            b.observe_exec(&s, "/bin/sh", after),
            Some(Anomaly {
                kind: AnomalyKind::NewExecutable,
                penalty: 20
            })
        );
        assert_eq!(b.observe_exec(&s, "/bin/sh", after), None);
        assert_eq!(
            b.observe_connect(&s, "10.0.0.1".parse().unwrap(), 443, after),
            None
        );
        assert_eq!(
            b.observe_connect(&s, "10.0.0.1".parse().unwrap(), 22, after),
            Some(Anomaly {
                kind: AnomalyKind::NewDestination,
                penalty: 10
            })
        );
    }

    #[test]
    fn sensitive_writes_are_always_anomalies() {
        let s = AnomalySpec::default();
        let mut b = Baseline::new();
        assert!(
            b.observe_file(&s, "/etc/passwd", FileAccess::Write, T0)
                .is_some()
        );
        assert!(
            b.observe_file(&s, "/etc/passwd", FileAccess::Read, T0)
                .is_none()
        );
        assert!(
            b.observe_file(&s, "/etcetera/x", FileAccess::Write, T0)
                .is_none()
        );
        assert!(
            b.observe_file(&s, "/tmp/x", FileAccess::Write, T0)
                .is_none()
        );
        assert!(
            b.observe_file(
                &s,
                "/var/run/secrets/kubernetes.io/token",
                FileAccess::Write,
                T0
            )
            .is_some()
        );
    }

    #[test]
    fn memory_is_bounded() {
        let s = AnomalySpec {
            learning_period_seconds: 0,
            ..AnomalySpec::default()
        };
        let mut b = Baseline::new();
        for i in 0..(MAX_EXECUTABLES + 50) {
            assert!(b.observe_exec(&s, &format!("/bin/x{i}"), T0).is_some());
        }
        assert_eq!(b.executables(), MAX_EXECUTABLES);
        // Past the bound: still an anomaly each time, never learned.
        assert!(b.observe_exec(&s, "/bin/overflow", T0).is_some());
        assert!(b.observe_exec(&s, "/bin/overflow", T0).is_some());
        assert!(b.observe_exec(&s, "/bin/x0", T0).is_none());
        for port in 0..(MAX_DESTINATIONS as u16 + 10) {
            b.observe_connect(&s, "10.0.0.1".parse().unwrap(), port, T0);
        }
        assert_eq!(b.destinations(), MAX_DESTINATIONS);
        let long = format!("/{}", "a".repeat(10_000));
        b.observe_exec(&s, &long, T0);
    }
}
