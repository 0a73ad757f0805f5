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

    fn learning(&mut self, settings: &AnomalySpec, now: Timestamp) -> bool {
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
