//! The TrustPolicy reconciler: `Accepted` (with the reason when refused: `Invalid`,
//! `ConflictingMode`; see `governance`), the identities governed and the policy version.
//! Violation counts belong to the trust engine (its own field manager).

use std::sync::Arc;
use std::time::Duration;

use agentmesh_api::common::find_condition;
use agentmesh_api::names::conditions as types;
use agentmesh_api::policy::{TrustPolicy, TrustPolicyStatus};
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::Api;
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde::Serialize;

use super::Reconcilers;
use crate::conditions::condition;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::governance;
use crate::index::Indexes;

const CONTROLLER: &str = "trustpolicy";

pub async fn run(shared: Arc<Reconcilers>) {
    let policies = &shared.indexes.policies;
    // Triggered by a new spec (a new generation), not by status writes: its own write of
    // `identitiesMatched` would otherwise wake it again while identities keep arriving. What
    // it decides also depends on the namespace's identities, which the 10 s requeue follows.
    let mut generations = super::ChangeFilter::new(policies.store.clone());
    let changes = policies.changes().filter(move |policy| {
        std::future::ready(generations.changed(&**policy, policy.metadata.generation))
    });
    let controller = Controller::for_shared_stream(changes, policies.store.clone());
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
    // The controller runs on this index, so the policy is normally in it; a policy deleted
    // since its trigger is answered from the object itself.
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
    let desired = Owned {
        observed_generation: policy.metadata.generation,
        policy_version: Some(version),
        identities_matched: matched,
        conditions: vec![accepted],
    };
    let api = Api::<TrustPolicy>::namespaced(ctx.client.clone(), &namespace);
    if super::apply_status(
        &api,
        policy,
        Some(&Owned::of(&current)),
        &desired,
        &ctx.status_writes,
    )
    .await?
    {
        let was_refused = current.conditions.iter().any(|c| {
            c.type_ == types::ACCEPTED && c.status == "False" && c.reason == verdict.reason
        });
        if !verdict.accepted && !was_refused {
            ctx.events
                .publish(
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

/// The status fields this reconciler owns (violations are the trust engine's), compared typed
/// with what status holds.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
struct Owned {
    observed_generation: Option<i64>,
    policy_version: Option<String>,
    identities_matched: i32,
    /// `Accepted`.
    conditions: Vec<Condition>,
}

impl Owned {
    fn of(status: &TrustPolicyStatus) -> Self {
        Self {
            observed_generation: status.observed_generation,
            policy_version: status.policy_version.clone(),
            identities_matched: status.identities_matched,
            conditions: find_condition(&status.conditions, types::ACCEPTED)
                .cloned()
                .into_iter()
                .collect(),
        }
    }
}
