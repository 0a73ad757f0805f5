//! The engine's status writes: score fields of AgentIdentity, violation fields of TrustPolicy.

use std::sync::Arc;

use agentmesh_api::convert::{anomaly_record, decision_record};
use agentmesh_api::identity::{AgentIdentity, BehaviorSummary};
use agentmesh_api::names::conditions as types;
use agentmesh_api::policy::TrustPolicy;
use agentmesh_trust::Timestamp;
use agentmesh_trust::standing::StatusUpdate;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::STATUS_MANAGER;
use super::policies::ViolationWrite;
use crate::conditions::condition;
use crate::events::Events;
use crate::metrics::Metrics;

/// An AgentIdentity's engine fields, due to be written.
pub struct IdentityWrite {
    pub namespace: String,
    pub name: String,
    pub update: StatusUpdate,
    /// The conditions in status now, to keep transition times of unchanged ones.
    pub conditions: Vec<Condition>,
}

impl IdentityWrite {
    pub fn new(identity: &AgentIdentity, update: StatusUpdate) -> Self {
        Self {
            namespace: identity.namespace().unwrap_or_default(),
            name: identity.name_any(),
            update,
            conditions: identity
                .status
                .as_ref()
                .map(|s| s.conditions.clone())
                .unwrap_or_default(),
        }
    }
}

/// Writes the engine's status fields with server-side apply ([`STATUS_MANAGER`]); a failed
/// write is logged (the next due write carries the same fields).
#[derive(Clone)]
pub struct StatusWriter {
    client: kube::Client,
    metrics: Arc<Metrics>,
    events: Events,
}

impl StatusWriter {
    pub fn new(client: kube::Client, metrics: Arc<Metrics>, events: Events) -> Self {
        Self {
            client,
            metrics,
            events,
        }
    }

    /// Score, tier, quarantine, behaviour window and last decision; an Event when quarantine
    /// starts or ends.
    pub async fn identity(&self, write: IdentityWrite) {
        let time = |t: Timestamp| agentmesh_api::convert::time(t, "status").ok();
        let IdentityWrite {
            namespace,
            name,
            update: write,
            conditions,
        } = write;
        let score = write.persisted.trust_score;
        let counts = write.counts;
        let behavior = BehaviorSummary {
            window_start: time(write.window_start),
            window_end: time(write.window_end),
            execs: counts.execs,
            file_opens: counts.file_opens,
            connects: counts.connects,
            tool_calls: counts.tool_calls,
            denied_calls: counts.denied_calls,
            violations: counts.violations,
            anomalies: counts.anomalies,
            recent_anomalies: write.recent.iter().filter_map(anomaly_record).collect(),
        };
        let trusted = condition(
            &conditions,
            types::TRUSTED,
            !write.quarantined,
            if write.quarantined {
                "BelowThreshold"
            } else {
                "ScoreAboveThreshold"
            },
            format!(
                "score {score} ({}), threshold {}",
                write.tier.as_str(),
                write.threshold
            ),
            None,
        );
        let quarantined = condition(
            &conditions,
            types::QUARANTINED,
            write.quarantined,
            if write.quarantined {
                "BelowThreshold"
            } else {
                "AboveThreshold"
            },
            format!("score {score}, threshold {}", write.threshold),
            None,
        );
        let patch = json!({
            "apiVersion": "agentmesh.io/v1alpha1",
            "kind": "AgentIdentity",
            "status": {
                "trustScore": score,
                "tier": agentmesh_api::convert::tier(write.tier),
                "quarantined": write.quarantined,
                "scoreUpdatedAt": time(write.persisted.score_updated_at),
                "behavior": behavior,
                "lastDecision": write.last_decision.as_ref().and_then(decision_record),
                "conditions": [trusted, quarantined],
            }
        });
        let api: Api<AgentIdentity> = Api::namespaced(self.client.clone(), &namespace);
        let params = PatchParams::apply(STATUS_MANAGER).force();
        match api
            .patch_status(&name, &params, &Patch::Apply(&patch))
            .await
        {
            Ok(_) => {
                self.metrics.status_writes.inc();
            }
            Err(error) => tracing::warn!(%error, identity = %name, "status write failed"),
        }
        let was_quarantined = conditions
            .iter()
            .any(|c| c.type_ == types::QUARANTINED && c.status == "True");
        if write.quarantined != was_quarantined {
            let reference = k8s_openapi::api::core::v1::ObjectReference {
                api_version: Some("agentmesh.io/v1alpha1".into()),
                kind: Some("AgentIdentity".into()),
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                ..Default::default()
            };
            let (type_, reason, note) = if write.quarantined {
                (
                    kube::runtime::events::EventType::Warning,
                    "Quarantined",
                    format!(
                        "trust score {score} fell below the threshold {}",
                        write.threshold
                    ),
                )
            } else {
                (
                    kube::runtime::events::EventType::Normal,
                    "Released",
                    format!(
                        "trust score {score} is back at or above the threshold {}",
                        write.threshold
                    ),
                )
            };
            self.events
                .publish(&reference, type_, reason, "Score", note)
                .await;
        }
    }

    /// A TrustPolicy's violation count and last violation.
    pub async fn policy_violations(&self, write: ViolationWrite) {
        let ViolationWrite {
            policy,
            count,
            last,
        } = write;
        let Some((namespace, name)) = policy.split_once('/') else {
            return;
        };
        let patch = json!({
            "apiVersion": "agentmesh.io/v1alpha1",
            "kind": "TrustPolicy",
            "status": { "violations": count, "lastViolation": last },
        });
        let api: Api<TrustPolicy> = Api::namespaced(self.client.clone(), namespace);
        let params = PatchParams::apply(STATUS_MANAGER).force();
        if let Err(error) = api.patch_status(name, &params, &Patch::Apply(&patch)).await {
            tracing::warn!(%error, %policy, "violation count write failed");
        }
    }
}
