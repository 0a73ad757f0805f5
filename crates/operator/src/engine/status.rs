//! The engine's status writes: score fields of AgentIdentity, violation fields of TrustPolicy.

use agentmesh_api::identity::{AgentIdentity, AnomalyRecord, BehaviorSummary, DecisionRecord};
use agentmesh_api::names::conditions as types;
use agentmesh_api::policy::{TrustPolicy, ViolationRecord};
use agentmesh_trust::{PersistedScore, Tier, Timestamp, WindowCounts};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::STATUS_MANAGER;
use crate::conditions::condition;
use crate::context::Context;

pub struct IdentityWrite {
    pub namespace: String,
    pub name: String,
    pub persisted: PersistedScore,
    pub tier: Tier,
    pub quarantined: bool,
    pub threshold: i32,
    pub window_start: Timestamp,
    pub window_end: Timestamp,
    pub counts: WindowCounts,
    pub recent: Vec<AnomalyRecord>,
    pub last_decision: Option<DecisionRecord>,
    /// The conditions in status now, to keep transition times of unchanged ones.
    pub conditions: Vec<Condition>,
}

pub async fn write_identity(ctx: &Context, write: IdentityWrite) {
    let time = |t: Timestamp| agentmesh_api::convert::time(t, "status").ok();
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
        recent_anomalies: write.recent,
    };
    let trusted = condition(
        &write.conditions,
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
        &write.conditions,
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
            "lastDecision": write.last_decision,
            "conditions": [trusted, quarantined],
        }
    });
    let api: Api<AgentIdentity> = Api::namespaced(ctx.client.clone(), &write.namespace);
    let params = PatchParams::apply(STATUS_MANAGER).force();
    match api
        .patch_status(&write.name, &params, &Patch::Apply(&patch))
        .await
    {
        Ok(_) => {
            ctx.metrics.status_writes.inc();
        }
        Err(error) => tracing::warn!(%error, identity = %write.name, "status write failed"),
    }
    let was_quarantined = write
        .conditions
        .iter()
        .any(|c| c.type_ == types::QUARANTINED && c.status == "True");
    if write.quarantined != was_quarantined {
        let reference = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("agentmesh.io/v1alpha1".into()),
            kind: Some("AgentIdentity".into()),
            name: Some(write.name.clone()),
            namespace: Some(write.namespace.clone()),
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
        ctx.event(&reference, type_, reason, "Score", note).await;
    }
}

pub async fn write_policy_violations(
    ctx: &Context,
    policy: &str,
    count: i64,
    last: Option<ViolationRecord>,
) {
    let Some((namespace, name)) = policy.split_once('/') else {
        return;
    };
    let patch = json!({
        "apiVersion": "agentmesh.io/v1alpha1",
        "kind": "TrustPolicy",
        "status": { "violations": count, "lastViolation": last },
    });
    let api: Api<TrustPolicy> = Api::namespaced(ctx.client.clone(), namespace);
    let params = PatchParams::apply(STATUS_MANAGER).force();
    if let Err(error) = api.patch_status(name, &params, &Patch::Apply(&patch)).await {
        tracing::warn!(%error, policy, "violation count write failed");
    }
}
