//! Reports in: a probe's per-pod windows and a sidecar's signed batches, converted from the
//! wire and handed to the trust rule ([`agentmesh_trust::standing`]); what it returns is
//! counted, audited and left for the next status write.

use std::sync::Arc;

use agentmesh_api::identity::AgentIdentity;
use agentmesh_api::wire::{BlockedAction, Outcome, PodBehavior, ReportAck};
use agentmesh_trust::Policy;
use agentmesh_trust::policy::Mode;
use agentmesh_trust::replay::ReplayError;
use agentmesh_trust::standing::{self, Blocked, ProbeWindow, SidecarOutcome};
use kube::ResourceExt;

use super::{Engine, key, now};

/// A sidecar's batch, from its `source` and `outcomes`.
#[derive(Clone, Copy, Debug)]
pub struct SidecarBatch<'a> {
    pub batch_id: &'a str,
    pub sent_at_ms: i64,
    pub outcomes: &'a [Outcome],
}

/// Why a sidecar batch was not applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SidecarRefusal {
    #[error("the AgentIdentity is not known")]
    UnknownIdentity,
    #[error(transparent)]
    Replay(ReplayError),
}

impl Engine {
    /// Applies the per-pod reports of the probe on `node` (its token's node). Pods without an
    /// identity, and pods of other nodes (a probe speaks only for its own node's pods), are
    /// counted and ignored.
    pub fn ingest_pods(&self, node: &str, reports: &[PodBehavior]) -> ReportAck {
        let now = now();
        let mut ack = ReportAck::default();
        let mut state = self.state.lock().expect("engine lock");
        for report in reports {
            let Some((identity, pod)) = self.identity_of_pod(&report.pod_uid) else {
                ack.unknown_pods += 1;
                continue;
            };
            if pod.node.as_deref() != Some(node) {
                ack.foreign_pods += 1;
                continue;
            }
            ack.accepted += 1;
            let k = key(
                &identity.namespace().unwrap_or_default(),
                &identity.name_any(),
            );
            let policy = state.policies.policy_for(&k);
            let governing = state.policies.governing_name(&k);
            let window = probe_window(report, &pod.name);
            let violations = state
                .standing(&k, &identity, &policy, now)
                .apply_probe_window(&policy, &window, now);
            self.count_violations(&identity, &policy, violations.len());
            state
                .policies
                .record_violations(governing, &identity.name_any(), &violations, now);
        }
        ack
    }

    /// Applies a sidecar's batch for identity `k` (`namespace/name`), sent by the sidecar of
    /// `pod`, whose signature the caller has verified: refused, applying nothing, when stale or
    /// already accepted. Positive credit is capped; every decision is audited.
    pub fn ingest_sidecar(
        &self,
        k: &str,
        pod: &str,
        batch: SidecarBatch<'_>,
    ) -> Result<(), SidecarRefusal> {
        let identity = self.identity(k).ok_or(SidecarRefusal::UnknownIdentity)?;
        let now = now();
        let mut state = self.state.lock().expect("engine lock");
        let policy = state.policies.policy_for(k);
        let governing = state.policies.governing_name(k);
        let batch = standing::SidecarBatch {
            batch_id: batch.batch_id,
            sent_at_ms: batch.sent_at_ms,
            pod,
            outcomes: batch.outcomes.iter().map(sidecar_outcome).collect(),
        };
        let applied = state
            .standing(k, &identity, &policy, now)
            .apply_sidecar_batch(&policy, k, &batch, now)
            .map_err(SidecarRefusal::Replay)?;
        self.metrics
            .audit_entries
            .inc_by(applied.audit.len() as u64);
        self.audit.record(applied.audit);
        self.count_violations(&identity, &policy, applied.violations.len());
        state
            .policies
            .record_violations(governing, &identity.name_any(), &applied.violations, now);
        Ok(())
    }

    /// `agentmesh_policy_violation_count{namespace, identity, mode}` moves by `count`.
    fn count_violations(&self, identity: &Arc<AgentIdentity>, policy: &Policy, count: usize) {
        if count == 0 {
            return;
        }
        let labels = crate::metrics::ViolationLabels {
            namespace: identity.namespace().unwrap_or_default(),
            identity: identity.name_any(),
            mode: match policy.mode() {
                Mode::Enforce => "enforce".into(),
                Mode::Shadow => "shadow".into(),
            },
        };
        self.metrics
            .policy_violations
            .get_or_create(&labels)
            .inc_by(count as u64);
    }
}

/// A probe's report for one pod, as the trust rule reads it.
fn probe_window<'a>(report: &'a PodBehavior, pod: &'a str) -> ProbeWindow<'a> {
    let strs = |items: &'a [String]| items.iter().map(String::as_str).collect();
    ProbeWindow {
        pod,
        execs: report.counts.execs,
        file_opens: report.counts.file_opens,
        connects: report.counts.connects,
        executables: strs(&report.executables),
        written_paths: strs(&report.written_paths),
        read_paths: strs(&report.read_paths),
        destinations: report.destinations.iter().map(|d| (d.ip, d.port)).collect(),
        unlisted: report.items_truncated.saturating_add(report.events_dropped),
        blocked: report
            .blocked
            .iter()
            .map(|blocked| match blocked {
                BlockedAction::Connect { ip, port } => Blocked::Connect {
                    ip: *ip,
                    port: *port,
                },
                BlockedAction::Exec { path } => Blocked::Exec { path },
            })
            .collect(),
    }
}

/// A sidecar's outcome, as the trust rule reads it.
fn sidecar_outcome(outcome: &Outcome) -> SidecarOutcome<'_> {
    match outcome {
        Outcome::ToolCall {
            method,
            tool,
            effect,
            rule,
            at_ms,
        } => SidecarOutcome::Call {
            method: method.as_deref(),
            name: tool,
            effect,
            rule,
            at_ms: *at_ms,
        },
        Outcome::Handshake {
            peer_did,
            succeeded,
            reason,
            at_ms,
        } => SidecarOutcome::Handshake {
            peer_did,
            succeeded: *succeeded,
            reason: reason.as_deref(),
            at_ms: *at_ms,
        },
        Outcome::ToolChanged { server, tool, .. } => SidecarOutcome::ToolChanged { server, tool },
    }
}
