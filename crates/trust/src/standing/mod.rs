//! The trust rule: what a probe's window ([`probe`]) or a sidecar's outcomes ([`sidecar`]) do
//! to one identity's [`Standing`], and when its status is due to be written ([`cadence`]).
//!
//! The operator's engine looks up the identity and its governing policy, converts the wire
//! types into the inputs here, and turns what comes back (violations, audit records, a status
//! update) into Kubernetes writes. Everything that decides lives here, so that it is tested
//! in-process: time is an input, nothing here reads a clock.

pub mod cadence;
pub mod probe;
pub mod sidecar;

use std::collections::VecDeque;

use crate::baseline::Baseline;
use crate::credit::{CreditBudget, CreditCap};
use crate::replay::ReplayGuard;
use crate::{Timestamp, TrustState, WindowCounts};

pub use cadence::{StatusUpdate, Stored};
pub use probe::{Blocked, ProbeWindow};
pub use sidecar::{SidecarBatch, SidecarOutcome};

/// Most recent anomalies kept per identity (status shows them).
pub const RECENT_ANOMALIES: usize = 10;
/// Longest subject, reason, rule or anomaly detail kept (the CRD's limits).
pub const MAX_TEXT: usize = 512;
/// Longest violation or audit detail kept.
pub const MAX_DETAIL: usize = 1024;

/// Kinds of anomaly, as AgentIdentity status names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AnomalyKind {
    NewExecutable,
    NewDestination,
    SensitiveWrite,
    /// A behaviour rule of the policy matched (and is not `allow`).
    RuleMatch,
    /// An upstream MCP tool changed its description or schema after it was first seen.
    ToolChanged,
    /// A probe window the probe could not see whole: items beyond the list bound, or events
    /// lost to a full ring buffer. Flooding the list must not hide what comes after.
    Unobserved,
}

impl AnomalyKind {
    /// The name in status (`newExecutable`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NewExecutable => "newExecutable",
            Self::NewDestination => "newDestination",
            Self::SensitiveWrite => "sensitiveWrite",
            Self::RuleMatch => "ruleMatch",
            Self::ToolChanged => "toolChanged",
            Self::Unobserved => "unobserved",
        }
    }
}

impl From<crate::baseline::AnomalyKind> for AnomalyKind {
    fn from(kind: crate::baseline::AnomalyKind) -> Self {
        use crate::baseline::AnomalyKind as Seen;
        match kind {
            Seen::NewExecutable => Self::NewExecutable,
            Seen::NewDestination => Self::NewDestination,
            Seen::SensitiveWrite => Self::SensitiveWrite,
            Seen::Unobserved => Self::Unobserved,
        }
    }
}

/// An anomaly as status records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnomalyNote {
    pub at: Timestamp,
    pub kind: AnomalyKind,
    /// What was seen (at most [`MAX_TEXT`] bytes).
    pub detail: String,
    /// Trust points it cost.
    pub penalty: i32,
    /// The pod it came from.
    pub pod: Option<String>,
}

/// Kinds of decision on what an agent did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    Allow,
    Deny,
    WouldDeny,
    Anomaly,
    /// Refused in the kernel (safety tier 3).
    Blocked,
}

/// The last decision on what an identity did, as status shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecisionNote {
    pub at: Timestamp,
    pub verdict: Verdict,
    /// What it was about (at most [`MAX_TEXT`] bytes).
    pub subject: String,
    /// Why (at most [`MAX_TEXT`] bytes).
    pub reason: String,
}

/// A policy violation, counted against the governing TrustPolicy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The rule that decided (at most [`MAX_TEXT`] bytes).
    pub rule: String,
    /// What was done (at most [`MAX_DETAIL`] bytes).
    pub detail: String,
    /// Shadow mode: it would have been denied.
    pub shadow: bool,
}

impl Violation {
    fn new(rule: &str, detail: &str, shadow: bool) -> Self {
        Self {
            rule: truncate(rule, MAX_TEXT),
            detail: truncate(detail, MAX_DETAIL),
            shadow,
        }
    }
}

/// Counts since the last status write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start: Timestamp,
    pub counts: WindowCounts,
}

/// What the engine knows of one identity: its score, what it has been seen doing, and what
/// status does not show yet.
#[derive(Clone, Debug)]
pub struct Standing {
    trust: TrustState,
    baseline: Baseline,
    window: Window,
    recent: VecDeque<AnomalyNote>,
    last_decision: Option<DecisionNote>,
    /// `last_decision` is not in status yet.
    decision_unwritten: bool,
    written: Option<cadence::Written>,
    /// What sidecar outcomes may still add ([`CreditCap::default`]).
    credit: CreditBudget,
    /// Sidecar batch ids accepted and still fresh.
    replay: ReplayGuard,
}

impl Standing {
    /// An identity's standing, continuing from what status shows: its score, its recent
    /// anomalies (newest first) and its last decision. The baseline starts empty.
    pub fn new(
        trust: TrustState,
        recent: impl IntoIterator<Item = AnomalyNote>,
        last_decision: Option<DecisionNote>,
        now: Timestamp,
    ) -> Self {
        let mut recent: VecDeque<AnomalyNote> = recent.into_iter().collect();
        recent.truncate(RECENT_ANOMALIES);
        Self {
            trust,
            baseline: Baseline::new(),
            window: Window {
                start: now,
                counts: WindowCounts::default(),
            },
            recent,
            last_decision,
            decision_unwritten: false,
            written: None,
            credit: CreditBudget::full(&CreditCap::default(), now),
            replay: ReplayGuard::default(),
        }
    }

    /// Continue from a baseline kept outside the leader ([`Baseline::restore`]).
    pub fn with_baseline(mut self, baseline: Baseline) -> Self {
        self.baseline = baseline;
        self
    }

    pub fn baseline(&self) -> &Baseline {
        &self.baseline
    }

    pub fn trust(&self) -> &TrustState {
        &self.trust
    }

    /// Lets time act on the score (decay towards the floor).
    pub fn advance(&mut self, config: &crate::TrustConfig, now: Timestamp) {
        self.trust.advance(config, now);
    }

    /// Counts since the last status write.
    pub fn window(&self) -> &Window {
        &self.window
    }

    /// Recent anomalies, newest first.
    pub fn recent(&self) -> impl ExactSizeIterator<Item = &AnomalyNote> {
        self.recent.iter()
    }

    pub fn last_decision(&self) -> Option<&DecisionNote> {
        self.last_decision.as_ref()
    }

    /// An anomaly: status lists it among the recent ones, and it is the last decision.
    /// An anomaly: counted in the window, its penalty charged, listed in status.
    fn charge_anomaly(
        &mut self,
        policy: &crate::Policy,
        kind: AnomalyKind,
        what: &str,
        penalty: i32,
        pod: &str,
        now: Timestamp,
    ) {
        self.window.counts.anomaly();
        self.trust
            .apply(policy.trust(), crate::Signal::Anomaly { penalty }, now);
        self.note_anomaly(kind, what, penalty, pod, now);
    }

    fn note_anomaly(
        &mut self,
        kind: AnomalyKind,
        detail: &str,
        penalty: i32,
        pod: &str,
        now: Timestamp,
    ) {
        self.decide(
            Verdict::Anomaly,
            detail,
            &format!("{}, -{penalty} trust", kind.as_str()),
            now,
        );
        self.recent.push_front(AnomalyNote {
            at: now,
            kind,
            detail: truncate(detail, MAX_TEXT),
            penalty,
            pod: Some(pod.to_owned()),
        });
        self.recent.truncate(RECENT_ANOMALIES);
    }

    /// Records a decision as the identity's last one; status shows it with the next write.
    /// Within one second (one report: a refused handshake and the allowed call that needed it
    /// arrive together), an allow does not hide a refusal or an anomaly.
    fn decide(&mut self, verdict: Verdict, subject: &str, reason: &str, now: Timestamp) {
        if verdict == Verdict::Allow
            && self.last_decision.as_ref().is_some_and(|last| {
                last.verdict != Verdict::Allow && last.at.as_secs_floor() == now.as_secs_floor()
            })
        {
            return;
        }
        self.last_decision = Some(DecisionNote {
            at: now,
            verdict,
            subject: truncate(subject, MAX_TEXT),
            reason: truncate(reason, MAX_TEXT),
        });
        self.decision_unwritten = true;
    }
}

/// `text` cut to at most `max` bytes, on a character boundary.
pub fn truncate(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests;
