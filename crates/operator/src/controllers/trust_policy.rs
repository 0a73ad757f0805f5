//! The TrustPolicy reconciler: `Accepted` (with the reason when refused: `Invalid`,
//! `ConflictingMode`; see `governance`), the identities governed and the policy version.
//! Violation counts belong to the trust engine (its own field manager).

use std::sync::Arc;
use std::time::Duration;

use agentmesh_api::names::{self, conditions as types};
use agentmesh_api::policy::TrustPolicy;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::Reconcilers;
use crate::conditions::condition;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::governance;
use crate::index::Indexes;

const CONTROLLER: &str = "trustpolicy";

pub async fn run(shared: Arc<Reconcilers>) {
    let policies = &shared.indexes.policies;
    let controller = Controller::for_shared_stream(policies.changes(), policies.store.clone());
    super::run(CONTROLLER, controller, reconcile, shared.clone()).await;
}

async fn reconcile(policy: Arc<TrustPolicy>, shared: Arc<Reconcilers>) -> Result<Action> {
    reconcile_inner(&policy, &shared.ctx, &shared.indexes).await
}

async fn reconcile_inner(policy: &TrustPolicy, ctx: &Context, indexes: &Indexes) -> Result<Action> {
    let namespace = policy
        .namespace()
        .ok_or(Error::NoNamespace("TrustPolicy"))?;
    let name = policy.name_any();
    let mut policies = Indexes::in_namespace(&indexes.policies.store, &namespace);
    // The index may not have seen this policy yet (the controller's watch is its own).
    if !policies.iter().any(|p| p.name_any() == name) {
        policies.push(Arc::new(policy.clone()));
    }
    let identities = Indexes::in_namespace(&indexes.identities.store, &namespace);
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
