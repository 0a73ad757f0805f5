//! The TrustPolicy reconciler: `Accepted` (with the reason when refused: `Invalid`,
//! `ConflictingMode`; see `governance`), the identities governed and the policy version.
//! Violation counts belong to the trust engine (its own field manager).

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentmesh_api::identity::AgentIdentity;
use agentmesh_api::names::{self, conditions as types};
use agentmesh_api::policy::TrustPolicy;
use futures::StreamExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::{Controller, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::conditions::condition;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::governance;

const CONTROLLER: &str = "trustpolicy";

pub async fn run(ctx: Arc<Context>) {
    Controller::new(
        ctx.watched_api::<TrustPolicy>(),
        watcher::Config::default().any_semantic(),
    )
    .run(reconcile, error_policy, ctx)
    .for_each(|_| async {})
    .await;
}

fn error_policy(_policy: Arc<TrustPolicy>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_error(CONTROLLER, error.metric_label());
    tracing::warn!(%error, "TrustPolicy reconcile failed");
    Action::requeue(Duration::from_secs(10))
}

async fn reconcile(policy: Arc<TrustPolicy>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let result = reconcile_inner(&policy, &ctx).await;
    ctx.metrics.observe_reconcile(CONTROLLER, started.elapsed());
    result
}

/// Every `K` of `namespace`.
async fn list_in<K>(ctx: &Context, namespace: &str) -> Result<Vec<Arc<K>>>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let items = Api::<K>::namespaced(ctx.client.clone(), namespace)
        .list(&ListParams::default())
        .await?
        .items;
    Ok(items.into_iter().map(Arc::new).collect())
}

async fn reconcile_inner(policy: &TrustPolicy, ctx: &Context) -> Result<Action> {
    let namespace = policy
        .namespace()
        .ok_or(Error::NoNamespace("TrustPolicy"))?;
    let name = policy.name_any();
    let policies: Vec<Arc<TrustPolicy>> = list_in(ctx, &namespace).await?;
    let identities: Vec<Arc<AgentIdentity>> = list_in(ctx, &namespace).await?;
    let governance = governance::evaluate(&policies, &identities);
    let verdict = governance
        .policies
        .get(&name)
        .cloned()
        .ok_or_else(|| Error::Invalid(format!("{name} vanished")))?;
    let current = policy.status.clone().unwrap_or_default();
    let accepted = condition(
        &current.conditions,
        types::ACCEPTED,
        verdict.accepted,
        verdict.reason,
        verdict.message.clone(),
        policy.metadata.generation,
    );
    let version =
        agentmesh_trust::policy::policy_version(&agentmesh_api::convert::policy_spec(&policy.spec));
    let matched = verdict.governs.len() as i32;
    let unchanged = current.observed_generation == policy.metadata.generation
        && current.identities_matched == matched
        && current.policy_version.as_deref() == Some(version.as_str())
        && current.conditions.iter().any(|c| {
            c.type_ == accepted.type_
                && c.status == accepted.status
                && c.reason == accepted.reason
                && c.message == accepted.message
        });
    if !unchanged {
        let patch = json!({
            "apiVersion": "agentmesh.io/v1alpha1",
            "kind": "TrustPolicy",
            "status": {
                "observedGeneration": policy.metadata.generation,
                "policyVersion": version,
                "identitiesMatched": matched,
                "conditions": [accepted],
            }
        });
        Api::<TrustPolicy>::namespaced(ctx.client.clone(), &namespace)
            .patch_status(
                &name,
                &PatchParams::apply(names::FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
        let was_refused = current.conditions.iter().any(|c| {
            c.type_ == types::ACCEPTED && c.status == "False" && c.reason == verdict.reason
        });
        if !verdict.accepted && !was_refused {
            ctx.event(
                &policy.object_ref(&()),
                EventType::Warning,
                "PolicyRefused",
                "Accept",
                verdict.message.clone(),
            )
            .await;
        }
    }
    // Identities come and go without touching the policy: look again soon.
    Ok(Action::requeue(Duration::from_secs(10)))
}
