//! A probe's window for one pod: what the kernel saw the pod's processes do.
//!
//! Behaviour rules come first: a matched `allow` is expected behaviour, never an anomaly; a
//! matched `alert`/`deny` costs the rule's penalty (and is a violation unless it is `allow`).
//! What no rule matched goes to the baseline, which charges what is new after the learning
//! period. What the kernel refused at tier 3 is a violation.

use std::net::IpAddr;

use super::{AnomalyKind, Standing, Verdict, Violation};
use crate::baseline::Anomaly;
use crate::policy::spec::{BehaviorAction, FileAccess};
use crate::policy::{Decision, Reason};
use crate::{Effect, Policy, Signal, Timestamp};

/// Something the kernel refused at tier 3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blocked<'a> {
    Connect { ip: IpAddr, port: u16 },
    Exec { path: &'a str },
}

/// One pod's window, as a probe reported it. Counts come from the network: they saturate.
#[derive(Clone, Debug, Default)]
pub struct ProbeWindow<'a> {
    /// The pod's name, for the anomalies status lists.
    pub pod: &'a str,
    pub execs: u64,
    pub file_opens: u64,
    pub connects: u64,
    /// Executables run, each once.
    pub executables: Vec<&'a str>,
    /// Files opened for writing, each once.
    pub written_paths: Vec<&'a str>,
    /// Files opened read-only, each once.
    pub read_paths: Vec<&'a str>,
    /// Outbound destinations, each once.
    pub destinations: Vec<(IpAddr, u16)>,
    /// What the kernel refused.
    pub blocked: Vec<Blocked<'a>>,
    /// Items the probe saw but could not list (beyond the bound of a list) and events the
    /// kernel lost (a full ring buffer): what they were is unknown.
    pub unlisted: u64,
}

impl Standing {
    /// Applies one pod's window under `policy`; returns the violations to count against it.
    pub fn apply_probe_window(
        &mut self,
        policy: &Policy,
        report: &ProbeWindow<'_>,
        now: Timestamp,
    ) -> Vec<Violation> {
        let mut violations = Vec::new();
        self.window
            .counts
            .add_probe(report.execs, report.file_opens, report.connects);
        let anomalies = &policy.spec().behavior.anomalies;
        let pod = report.pod;
        for path in &report.executables {
            let decision = policy.decide_exec(path, self.trust.score());
            let seen = self.baseline.observe_exec(anomalies, path, now);
            let what = format!("exec {path}");
            self.judge(policy, decision, seen, &what, pod, now, &mut violations);
        }
        for path in &report.written_paths {
            let decision = policy.decide_file(path, FileAccess::Write, self.trust.score());
            let seen = self
                .baseline
                .observe_file(anomalies, path, FileAccess::Write, now);
            let what = format!("write {path}");
            self.judge(policy, decision, seen, &what, pod, now, &mut violations);
        }
        for path in &report.read_paths {
            let decision = policy.decide_file(path, FileAccess::Read, self.trust.score());
            let what = format!("read {path}");
            self.judge(policy, decision, None, &what, pod, now, &mut violations);
        }
        for &(ip, port) in &report.destinations {
            let decision = policy.decide_connect(ip, port, self.trust.score());
            let seen = self.baseline.observe_connect(anomalies, ip, port, now);
            let what = format!("connect {ip}:{port}");
            self.judge(policy, decision, seen, &what, pod, now, &mut violations);
        }
        if let Some(anomaly) = self
            .baseline
            .observe_unlisted(anomalies, report.unlisted, now)
        {
            let what = format!("{} events not seen whole", report.unlisted);
            self.charge_anomaly(
                policy,
                anomaly.kind.into(),
                &what,
                anomaly.penalty,
                pod,
                now,
            );
        }
        for blocked in &report.blocked {
            let what = match blocked {
                Blocked::Connect { ip, port } => format!("blocked connect {ip}:{port}"),
                Blocked::Exec { path } => format!("blocked exec {path}"),
            };
            self.window.counts.violation();
            self.trust.apply(policy.trust(), Signal::Violation, now);
            self.decide(
                Verdict::Blocked,
                &what,
                "refused in the kernel (safety tier 3)",
                now,
            );
            violations.push(Violation::new("kernel", &what, false));
        }
        violations
    }

    /// One observed action: the policy's behaviour rules decide first; the baseline's anomaly
    /// counts only when no rule matched.
    #[allow(clippy::too_many_arguments)]
    fn judge(
        &mut self,
        policy: &Policy,
        decision: Decision<'_>,
        baseline: Option<Anomaly>,
        what: &str,
        pod: &str,
        now: Timestamp,
        violations: &mut Vec<Violation>,
    ) {
        let matched = match decision.reason {
            Reason::BehaviorRule { action, .. } => Some(action),
            _ => None,
        };
        match matched {
            Some(BehaviorAction::Allow) => {}
            Some(_) => {
                let rule = decision.rule();
                self.charge_anomaly(
                    policy,
                    AnomalyKind::RuleMatch,
                    &format!("{what} ({rule})"),
                    decision.penalty,
                    pod,
                    now,
                );
                if decision.effect != Effect::Allow {
                    self.window.counts.violation();
                    violations.push(Violation::new(
                        &rule,
                        what,
                        decision.effect == Effect::WouldDeny,
                    ));
                }
            }
            None => {
                if let Some(anomaly) = baseline {
                    self.charge_anomaly(
                        policy,
                        anomaly.kind.into(),
                        what,
                        anomaly.penalty,
                        pod,
                        now,
                    );
                }
            }
        }
    }
}
