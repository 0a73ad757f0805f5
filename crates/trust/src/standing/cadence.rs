//! When an identity's status is due: at once when its tier or quarantine changes; otherwise at
//! most once per status interval, and only when the score or the last decision changed; on
//! first sight (a new identity, or a new leader) unless status already says it all.

use super::{AnomalyNote, DecisionNote, Standing, Window};
use crate::audit::{AuditDecision, AuditRecord};
use crate::{PersistedScore, Policy, Tier, Timestamp, WindowCounts};

/// What status shows now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stored {
    pub score: Option<i32>,
    pub tier: Option<Tier>,
    pub quarantined: bool,
    /// `scoreUpdatedAt` is set.
    pub has_score_time: bool,
}

/// What the last write said (or, on first sight, what status said), and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Written {
    score: i32,
    tier: Tier,
    quarantined: bool,
    at: Timestamp,
}

/// A status write that is due: everything the engine's fields in status say.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusUpdate {
    pub persisted: PersistedScore,
    pub tier: Tier,
    pub quarantined: bool,
    /// The policy's quarantine threshold.
    pub threshold: i32,
    /// The window since the last write, ending now.
    pub window_start: Timestamp,
    pub window_end: Timestamp,
    pub counts: WindowCounts,
    /// Newest first.
    pub recent: Vec<AnomalyNote>,
    pub last_decision: Option<DecisionNote>,
    /// The audit record of a quarantine or release this write makes known: the identity was
    /// not quarantined (by the last write, or by status on first sight) and now is, or the
    /// reverse. Written once per change, and not again after a restart (status says it).
    pub quarantine_change: Option<AuditRecord>,
}

impl Standing {
    /// The status write due now, if one is; a write starts a new window.
    pub fn status_due(
        &mut self,
        identity: &str,
        policy: &Policy,
        stored: Option<&Stored>,
        interval_ms: i64,
        now: Timestamp,
    ) -> Option<StatusUpdate> {
        let current = Written {
            score: self.trust.score(),
            tier: self.trust.tier(),
            quarantined: self.trust.is_quarantined(policy.trust()),
            at: now,
        };
        let in_status = stored.is_some_and(|s| {
            s.score == Some(current.score)
                && s.tier == Some(current.tier)
                && s.quarantined == current.quarantined
        });
        let due = match self.written {
            None => !in_status || stored.is_none_or(|s| !s.has_score_time),
            Some(written) => {
                written.tier != current.tier
                    || written.quarantined != current.quarantined
                    || ((written.score != current.score || self.decision_unwritten)
                        && now.millis_since(written.at) >= interval_ms)
            }
        };
        if !due {
            self.written.get_or_insert(current);
            return None;
        }
        let was_quarantined = self
            .written
            .map(|w| w.quarantined)
            .or(stored.map(|s| s.quarantined))
            .unwrap_or(false);
        let quarantine_change = (was_quarantined != current.quarantined).then(|| AuditRecord {
            at: now,
            identity: identity.to_owned(),
            subject: "identity".to_owned(),
            decision: if current.quarantined {
                AuditDecision::Quarantine
            } else {
                AuditDecision::Release
            },
            rule: "trust.minThreshold".to_owned(),
            score: current.score,
            policy_version: policy.version().to_owned(),
            detail: format!(
                "score {} {} the quarantine threshold {}",
                current.score,
                if current.quarantined {
                    "fell below"
                } else {
                    "is back at or above"
                },
                policy.trust().min_threshold
            ),
        });
        self.written = Some(current);
        self.decision_unwritten = false;
        let window = std::mem::replace(
            &mut self.window,
            Window {
                start: now,
                counts: WindowCounts::default(),
            },
        );
        Some(StatusUpdate {
            persisted: self.trust.to_persisted(policy.trust()),
            tier: current.tier,
            quarantined: current.quarantined,
            threshold: policy.trust().min_threshold,
            window_start: window.start,
            window_end: now,
            counts: window.counts,
            recent: self.recent.iter().cloned().collect(),
            last_decision: self.last_decision.clone(),
            quarantine_change,
        })
    }
}
