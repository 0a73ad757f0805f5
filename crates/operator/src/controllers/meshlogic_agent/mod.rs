//! The MeshLogicAgent reconciler: each agent becomes a ServiceAccount, a ClusterRoleBinding of
//! it to the installation's probe ClusterRole (`MESHLOGIC_PROBE_CLUSTER_ROLE`, made by the
//! chart), a ConfigMap holding the probe's configuration file and the probe DaemonSet; status
//! comes from the DaemonSet and from what the probes report.
//!
//! Namespaced objects are owned by the agent (`controller: true`), so the garbage collector
//! removes them with it. The ClusterRoleBinding cannot be owned by a namespaced object, nor a
//! ServiceMonitor put in another namespace (`metrics.serviceMonitor.namespace`): a finalizer on
//! the agent deletes them before it goes. A ServiceAccount the spec says not to create
//! (`serviceAccount.create: false`) is neither made nor changed, only bound.
//!
//! The operator's own permissions, this reconciler's included, are `deploy/operator-rbac.yaml`
//! (an e2e test runs the operator with exactly those). It makes no ClusterRole: RBAC lets it
//! bind the probe ClusterRole because it holds `bind` on that one by name.
//!
//! Deleting the namespaced objects is the garbage collector's work, not the operator's.

pub mod agent;
pub mod daemon_set;
pub mod monitoring;
pub mod rbac;
pub mod status;
#[cfg(test)]
mod tests;

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_api::MeshLogicAgent;
use agentmesh_api::common::find_condition;
use agentmesh_api::names::{self, annotations, conditions, labels};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{self, Event, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use self::agent::{Agent, OperatorSettings, Refusal};
use self::status::Rollout;
use super::Reconcilers;
use crate::context::Context;
use crate::error::{Error, Result};

/// The `controller` label of this reconciler's metrics.
pub const CONTROLLER: &str = "meshlogicagent";
/// How often an agent is looked at again without a change, so that what probes report
/// reaches its status.
const RESYNC: Duration = Duration::from_secs(30);

/// Runs the reconciler until the process is told to stop.
pub async fn run(shared: Arc<Reconcilers>) {
    let ctx = &shared.ctx;
    let managed = format!("{}={}", labels::APP_MANAGED_BY, labels::MANAGED_BY_VALUE);
    let owned = || watcher::Config::default().labels(&managed);
    let controller = Controller::new(
        ctx.watched_api::<MeshLogicAgent>(),
        watcher::Config::default().any_semantic(),
    )
    .owns(ctx.watched_api::<DaemonSet>(), owned())
    .owns(ctx.watched_api::<ConfigMap>(), owned())
    .owns(ctx.watched_api::<ServiceAccount>(), owned())
    .owns(ctx.watched_api::<Service>(), owned())
    // Cluster-scoped, so not owned: mapped back to its agent by annotation, so that a
    // ClusterRoleBinding changed or deleted by hand is restored at once.
    .watches(
        Api::<ClusterRoleBinding>::all(ctx.client.clone()),
        owned(),
        agent_of(ctx.config.args.watch_namespace.clone()),
    );
    super::run(CONTROLLER, controller, reconcile, shared.clone()).await;
}

/// Maps a cluster-scoped object made for an agent back to that agent (from its
/// [`annotations::OWNER`]), when the agent's namespace is watched.
fn agent_of<K: Resource>(
    watched_namespace: Option<String>,
) -> impl Fn(K) -> Option<ObjectRef<MeshLogicAgent>> + Send + Sync + 'static {
    move |object| {
        let owner = object.annotations().get(annotations::OWNER)?;
        let (namespace, name) = owner.split_once('/')?;
        if watched_namespace.as_deref().is_some_and(|w| w != namespace) {
            return None;
        }
        Some(ObjectRef::new(name).within(namespace))
    }
}

async fn reconcile(agent: Arc<MeshLogicAgent>, shared: Arc<Reconcilers>) -> Result<Action> {
    let ctx = &shared.ctx;
    let namespace = agent
        .namespace()
        .ok_or(Error::NoNamespace("MeshLogicAgent"))?;
    let api: Api<MeshLogicAgent> = Api::namespaced(ctx.client.clone(), &namespace);
    finalizer(&api, names::MESHLOGIC_FINALIZER, agent, |event| async {
        match event {
            Event::Apply(agent) => apply(&agent, ctx).await,
            Event::Cleanup(agent) => cleanup(&agent, ctx).await,
        }
    })
    .await
    .map_err(from_finalizer)
}

fn from_finalizer(error: finalizer::Error<Error>) -> Error {
    match error {
        finalizer::Error::ApplyFailed(error) | finalizer::Error::CleanupFailed(error) => error,
        finalizer::Error::AddFinalizer(error) | finalizer::Error::RemoveFinalizer(error) => {
            Error::Kube(error)
        }
        other => Error::Invalid(other.to_string()),
    }
}

/// Server-side apply of `object` under the operator's field manager; returns it as stored.
async fn server_side_apply<K>(api: &Api<K>, name: &str, object: &K) -> Result<K>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    let params = PatchParams::apply(names::FIELD_MANAGER).force();
    Ok(api.patch(name, &params, &Patch::Apply(object)).await?)
}

/// Makes the world match the agent, then its status match the world.
async fn apply(resource: &MeshLogicAgent, ctx: &Context) -> Result<Action> {
    let agent = Agent::new(resource)?;
    let args = &ctx.config.args;
    // The probes trust the operator's CA only: until this replica has loaded it (seconds after
    // the leader starts), there is no DaemonSet to write.
    let Some(trust_api_ca) = ctx.certs.bundle() else {
        tracing::debug!("the CA bundle is not loaded yet; the agent waits for it");
        return Ok(Action::requeue(std::time::Duration::from_secs(1)));
    };
    let settings = OperatorSettings {
        default_image_tag: args.probe_image_tag.clone(),
        trust_api_url: args.trust_api_url.clone(),
        trust_api_ca: String::from_utf8_lossy(&trust_api_ca).into_owned(),
        operator_namespace: args.namespace.clone(),
        agent_namespaces: args.agent_namespaces.clone(),
        probe_images: args.probe_images.clone(),
        probe_cluster_role: args.probe_cluster_role.clone(),
        otel_endpoint: ctx
            .config
            .settings
            .otel_enabled
            .then(|| ctx.config.settings.otel_endpoint.clone()),
    };
    if let Some(refusal) = settings.refusal(&agent) {
        return refuse(resource, &agent, refusal, ctx).await;
    }
    let client = &ctx.client;
    let namespace = agent.namespace;
    let probe_name = agent.probe_name();
    let rbac_name = agent.cluster_rbac_name();

    // The ServiceAccount first: the DaemonSet controller cannot create pods that name a
    // ServiceAccount that does not exist. One the operator does not make is left as it is; one
    // it made before `serviceAccount` named another stays, unused, until the garbage collector
    // removes it with the agent (the operator holds no right to delete ServiceAccounts).
    let account_name = agent.service_account_name();
    // Reports naming this agent count from its probes' account only.
    ctx.probes.expect(&agent.key(), namespace, &account_name);
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    if rbac::creates_service_account(&agent) {
        server_side_apply(&accounts, &account_name, &rbac::service_account(&agent)).await?;
    }
    server_side_apply(
        &Api::all(client.clone()),
        &rbac_name,
        &rbac::cluster_role_binding(&agent, &settings.probe_cluster_role),
    )
    .await?;
    let config = daemon_set::config_json(&agent)?;
    server_side_apply(
        &Api::namespaced(client.clone(), namespace),
        &agent.config_map_name(),
        &daemon_set::config_map(&agent, &config),
    )
    .await?;

    let desired = daemon_set::daemon_set(&agent, &settings, &config)?;
    let daemon_sets: Api<DaemonSet> = Api::namespaced(client.clone(), namespace);
    let before = daemon_sets.get_opt(&probe_name).await?;
    let applied = server_side_apply(&daemon_sets, &probe_name, &desired).await?;
    let reference = resource.object_ref(&());
    let new_hash = daemon_set::template_hash(&desired).unwrap_or_default();
    match before.as_ref().map(daemon_set::template_hash) {
        None => {
            ctx.events.publish(
                &reference,
                EventType::Normal,
                "Created",
                "Apply",
                format!(
                    "created DaemonSet {probe_name}, ConfigMap {} and ClusterRoleBinding {rbac_name} to {} for ServiceAccount {account_name}",
                    agent.config_map_name(),
                    settings.probe_cluster_role
                ),
            )
            .await;
        }
        Some(old_hash) if old_hash != Some(new_hash) => {
            ctx.events
                .publish(
                    &reference,
                    EventType::Normal,
                    "ConfigChanged",
                    "Apply",
                    format!(
                        "rolling DaemonSet {probe_name}: configuration hash {} -> {new_hash}",
                        old_hash.unwrap_or("none")
                    ),
                )
                .await;
        }
        Some(_) => {}
    }

    monitoring::reconcile(&agent, ctx).await?;

    let rollout = Rollout::of(Some(&applied));
    write_status(resource, &agent, &rollout, None, ctx).await?;
    Ok(Action::requeue(RESYNC))
}

/// An agent the operator may not act on: what it made for it before goes (its DaemonSet and
/// cluster RBAC; reports naming it are refused), and its status says why (`Degraded`, with a
/// Warning Event).
async fn refuse(
    resource: &MeshLogicAgent,
    agent: &Agent<'_>,
    refusal: Refusal,
    ctx: &Context,
) -> Result<Action> {
    // Said once by the status and its Warning Event; the log repeats it at every resync.
    tracing::debug!(agent = %agent.key(), reason = refusal.reason, "{}", refusal.message);
    ctx.probes.forget(&agent.key());
    let uid = resource.metadata.uid.as_deref().unwrap_or_default();
    let daemon_sets: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), agent.namespace);
    if delete_controlled(&daemon_sets, &agent.probe_name(), uid).await? {
        tracing::info!(agent = %agent.key(), "deleted the probe DaemonSet of a refused agent");
    }
    delete_cluster_rbac(resource, ctx).await?;
    let rollout = Rollout::of(None);
    write_status(resource, agent, &rollout, Some(&refusal), ctx).await?;
    Ok(Action::requeue(RESYNC))
}

/// Deletes `name` if it exists and this agent (`uid`) is its controller; whether it did.
async fn delete_controlled<K>(api: &Api<K>, name: &str, uid: &str) -> Result<bool>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let Some(object) = api.get_opt(name).await? else {
        return Ok(false);
    };
    let controlled = object
        .owner_references()
        .iter()
        .any(|owner| owner.controller == Some(true) && owner.uid == uid);
    if !controlled {
        return Ok(false);
    }
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(response)) if response.code == 404 => Ok(false),
        Err(error) => Err(error.into()),
    }
}

/// Writes the status when it differs from the one the agent carries.
async fn write_status(
    resource: &MeshLogicAgent,
    agent: &Agent<'_>,
    rollout: &Rollout,
    refusal: Option<&Refusal>,
    ctx: &Context,
) -> Result<()> {
    let now = k8s_openapi::jiff::Timestamp::now();
    // Whole seconds: what the API server keeps, so that an unchanged status compares equal.
    let now = Time(k8s_openapi::jiff::Timestamp::from_second(now.as_second()).unwrap_or(now));
    let previous = resource.status.as_ref();
    let next = status::compute(
        resource.metadata.generation,
        resource.spec.safety_tier,
        rollout,
        ctx.probes.nodes(&agent.key()),
        refusal,
        previous,
        &now,
    );
    let api: Api<MeshLogicAgent> = Api::namespaced(ctx.client.clone(), agent.namespace);
    if !super::apply_status(&api, resource, previous, &next, &ctx.status_writes).await? {
        return Ok(());
    }
    tracing::debug!(
        desired = next.desired_nodes,
        ready = next.ready_nodes,
        "status written"
    );

    // A change of Degraded is worth telling whoever looks at the agent's events.
    let was = previous
        .and_then(|p| find_condition(&p.conditions, conditions::DEGRADED))
        .map(|c| (c.status.clone(), c.message.clone()));
    if let Some(degraded) = find_condition(&next.conditions, conditions::DEGRADED)
        && degraded.status == "True"
        && was != Some((degraded.status.clone(), degraded.message.clone()))
    {
        ctx.events
            .publish(
                &resource.object_ref(&()),
                EventType::Warning,
                &degraded.reason,
                "Status",
                degraded.message.clone(),
            )
            .await;
    }
    Ok(())
}

/// Deletes `name` if it exists and was made for the agent `owner` (`namespace/name`).
async fn delete_owned<K>(api: &Api<K>, name: &str, owner: &str) -> Result<bool>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let Some(object) = api.get_opt(name).await? else {
        return Ok(false);
    };
    if object
        .annotations()
        .get(annotations::OWNER)
        .map(String::as_str)
        != Some(owner)
    {
        tracing::warn!(name, owner, "not deleting an object made for someone else");
        return Ok(false);
    }
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(response)) if response.code == 404 => Ok(false),
        Err(error) => Err(error.into()),
    }
}

/// Before the agent goes: delete what the garbage collector cannot (cluster-scoped RBAC, and a
/// ServiceMonitor in another namespace).
async fn cleanup(resource: &MeshLogicAgent, ctx: &Context) -> Result<Action> {
    let namespace = resource
        .namespace()
        .ok_or(Error::NoNamespace("MeshLogicAgent"))?;
    let name = resource.name_any();
    let owner = format!("{namespace}/{name}");
    let uid = resource.metadata.uid.as_deref().unwrap_or_default();
    // Where the spec puts the monitor, and where the metrics Service says it is (they differ
    // when the agent is deleted before a move was reconciled). The Service may be gone already
    // (foreground deletion removes it first): the spec is then all there is to go by.
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &namespace);
    let service = services
        .get_opt(&agent::metrics_service_name(&name))
        .await?;
    let mut monitor_namespaces: Vec<String> =
        monitoring::previous_monitor_namespace(service.as_ref(), &namespace, uid)
            .into_iter()
            .collect();
    monitor_namespaces.extend(resource.spec.metrics.service_monitor.namespace.clone());
    monitor_namespaces.retain(|monitor_namespace| *monitor_namespace != namespace);
    monitor_namespaces.dedup();
    for monitor_namespace in &monitor_namespaces {
        if monitoring::delete_service_monitor(ctx, (&namespace, &name, uid), monitor_namespace)
            .await?
        {
            tracing::info!(agent = %owner, namespace = %monitor_namespace, "deleted ServiceMonitor");
        }
    }
    delete_cluster_rbac(resource, ctx).await?;
    ctx.probes.forget(&owner);
    tracing::info!(agent = %owner, "cleaned up cluster-scoped RBAC");
    Ok(Action::await_change())
}

/// Deletes the ClusterRoleBinding made for the agent, if any (with an Event).
async fn delete_cluster_rbac(resource: &MeshLogicAgent, ctx: &Context) -> Result<()> {
    let namespace = resource
        .namespace()
        .ok_or(Error::NoNamespace("MeshLogicAgent"))?;
    let name = resource.name_any();
    let owner = format!("{namespace}/{name}");
    let rbac_name = agent::cluster_rbac_name(&namespace, &name);
    let bindings: Api<ClusterRoleBinding> = Api::all(ctx.client.clone());
    if delete_owned(&bindings, &rbac_name, &owner).await? {
        ctx.events
            .publish(
                &resource.object_ref(&()),
                EventType::Normal,
                "Deleted",
                "Cleanup",
                format!("deleted ClusterRoleBinding {rbac_name}"),
            )
            .await;
    }
    Ok(())
}
