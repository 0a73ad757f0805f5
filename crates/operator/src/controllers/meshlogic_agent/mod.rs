//! The MeshLogicAgent reconciler: each agent becomes a ServiceAccount, least-privilege RBAC
//! (a ClusterRole and its binding), a ConfigMap holding the probe's configuration file and the
//! probe DaemonSet; status comes from the DaemonSet and from what the probes report.
//!
//! Namespaced objects are owned by the agent (`controller: true`), so the garbage collector
//! removes them with it. The ClusterRole and ClusterRoleBinding cannot be owned by a namespaced
//! object, nor a ServiceMonitor put in another namespace (`metrics.serviceMonitor.namespace`):
//! a finalizer on the agent deletes them before it goes. A ServiceAccount the spec says not to
//! create (`serviceAccount.create: false`) is neither made nor changed, only bound.
//!
//! The operator's own permissions, this reconciler's included, are `deploy/operator-rbac.yaml`
//! (an e2e test runs the operator with exactly those). It must hold `pods` get/list/watch and
//! `reports.agentmesh.io` create itself, since RBAC lets one grant only what one holds.
//!
//! Deleting the namespaced objects is the garbage collector's work, not the operator's.

pub mod resources;
pub mod status;

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_api::MeshLogicAgent;
use agentmesh_api::common::find_condition;
use agentmesh_api::names::{self, annotations, conditions, labels};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams,
};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{self, Event, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use self::resources::{Agent, OperatorSettings};
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
    // Cluster-scoped, so not owned: mapped back to their agent by annotation, so that a
    // ClusterRole(Binding) changed or deleted by hand is restored at once.
    .watches(
        Api::<ClusterRole>::all(ctx.client.clone()),
        owned(),
        agent_of(ctx.config.args.watch_namespace.clone()),
    )
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
    let settings = OperatorSettings {
        default_image_tag: ctx.config.args.probe_image_tag.clone(),
        trust_api_url: ctx.config.args.trust_api_url.clone(),
    };
    let client = &ctx.client;
    let namespace = agent.namespace;
    let probe_name = agent.probe_name();
    let rbac_name = agent.cluster_rbac_name();

    // The ServiceAccount first: the DaemonSet controller cannot create pods that name a
    // ServiceAccount that does not exist. One the operator does not make is left as it is; one
    // it made before `serviceAccount` named another stays, unused, until the garbage collector
    // removes it with the agent (the operator holds no right to delete ServiceAccounts).
    let account_name = agent.service_account_name();
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    if resources::creates_service_account(&agent) {
        server_side_apply(
            &accounts,
            &account_name,
            &resources::service_account(&agent),
        )
        .await?;
    }
    server_side_apply(
        &Api::all(client.clone()),
        &rbac_name,
        &resources::cluster_role(&agent),
    )
    .await?;
    server_side_apply(
        &Api::all(client.clone()),
        &rbac_name,
        &resources::cluster_role_binding(&agent),
    )
    .await?;
    let config = resources::config_json(&agent)?;
    server_side_apply(
        &Api::namespaced(client.clone(), namespace),
        &agent.config_map_name(),
        &resources::config_map(&agent, &config),
    )
    .await?;

    let desired = resources::daemon_set(&agent, &settings, &config)?;
    let daemon_sets: Api<DaemonSet> = Api::namespaced(client.clone(), namespace);
    let before = daemon_sets.get_opt(&probe_name).await?;
    let applied = server_side_apply(&daemon_sets, &probe_name, &desired).await?;
    let reference = resource.object_ref(&());
    let new_hash = resources::template_hash(&desired).unwrap_or_default();
    match before.as_ref().map(resources::template_hash) {
        None => {
            ctx.event(
                &reference,
                EventType::Normal,
                "Created",
                "Apply",
                format!(
                    "created DaemonSet {probe_name}, ConfigMap {} and ClusterRole(Binding) {rbac_name} for ServiceAccount {account_name}",
                    agent.config_map_name()
                ),
            )
            .await;
        }
        Some(old_hash) if old_hash != Some(new_hash) => {
            ctx.event(
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

    reconcile_service_monitor(&agent, ctx).await?;

    let rollout = Rollout::of(Some(&applied));
    write_status(resource, &agent, &rollout, ctx).await?;
    Ok(Action::requeue(RESYNC))
}

/// The Prometheus Operator's ServiceMonitors in `namespace`.
fn service_monitors(ctx: &Context, namespace: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(
        resources::SERVICE_MONITOR_GROUP,
        resources::SERVICE_MONITOR_VERSION,
        "ServiceMonitor",
    );
    let monitor_type = ApiResource::from_gvk_with_plural(&gvk, resources::SERVICE_MONITOR_PLURAL);
    Api::namespaced_with(ctx.client.clone(), namespace, &monitor_type)
}

/// Deletes the ServiceMonitor the agent `namespace/name` (`uid`) has in `monitor_namespace`, if
/// it made one there: owned by it beside it, annotated with it elsewhere. A cluster without the
/// ServiceMonitor CRD has none to delete.
async fn delete_service_monitor(
    ctx: &Context,
    (namespace, name, uid): (&str, &str, &str),
    monitor_namespace: &str,
) -> Result<bool> {
    let monitors = service_monitors(ctx, monitor_namespace);
    let monitor_name = resources::service_monitor_name(namespace, name, monitor_namespace);
    let deleted = if monitor_namespace == namespace {
        delete_controlled(&monitors, &monitor_name, uid).await
    } else {
        delete_owned(&monitors, &monitor_name, &format!("{namespace}/{name}")).await
    };
    match deleted {
        Err(Error::Kube(kube::Error::Api(response))) if response.code == 404 => Ok(false),
        other => other,
    }
}

/// Where the agent's ServiceMonitor was last put, as its metrics Service (if this agent made
/// it) remembers: the annotated namespace, else the agent's own; `None` without the Service.
fn previous_monitor_namespace(
    service: Option<&Service>,
    agent_namespace: &str,
    uid: &str,
) -> Option<String> {
    let service = service.filter(|service| {
        service
            .owner_references()
            .iter()
            .any(|owner| owner.controller == Some(true) && owner.uid == uid)
    })?;
    Some(
        service
            .annotations()
            .get(annotations::SERVICE_MONITOR_NAMESPACE)
            .cloned()
            .unwrap_or_else(|| agent_namespace.to_owned()),
    )
}

/// The metrics Service and ServiceMonitor, when `metrics.serviceMonitor.enabled` (and
/// metrics are on); removed when no longer asked for, and the monitor moved when its namespace
/// changes. Without the Prometheus Operator's CRD the agent gets a Warning Event and the rest
/// of it proceeds.
async fn reconcile_service_monitor(agent: &Agent<'_>, ctx: &Context) -> Result<()> {
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), agent.namespace);
    let service_name = agent.metrics_service_name();
    let uid = agent.resource.metadata.uid.as_deref().unwrap_or_default();
    let owner = (agent.namespace, agent.name, uid);
    // The Service and the monitor are made together; one GET tells whether there is a monitor,
    // and where.
    let service = services.get_opt(&service_name).await?;
    let previous = previous_monitor_namespace(service.as_ref(), agent.namespace, uid);

    if !resources::wants_service_monitor(agent) {
        if let Some(previous) = previous {
            delete_service_monitor(ctx, owner, &previous).await?;
            delete_controlled(&services, &service_name, uid).await?;
        }
        return Ok(());
    }
    let monitor_namespace = agent.service_monitor_namespace();
    if let Some(previous) = previous.filter(|previous| previous != monitor_namespace) {
        delete_service_monitor(ctx, owner, &previous).await?;
    }
    server_side_apply(&services, &service_name, &resources::metrics_service(agent)).await?;
    let params = PatchParams::apply(names::FIELD_MANAGER).force();
    let monitor = resources::service_monitor(agent);
    let monitor_name = resources::service_monitor_name_of(agent);
    match service_monitors(ctx, monitor_namespace)
        .patch(&monitor_name, &params, &Patch::Apply(&monitor))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(response)) if response.code == 404 => {
            ctx.event(
                &agent.resource.object_ref(&()),
                EventType::Warning,
                "ServiceMonitorUnavailable",
                "Apply",
                // Not found: the ServiceMonitor type, or the namespace asked for.
                format!(
                    "metrics.serviceMonitor.enabled is true but ServiceMonitor \
                     {monitor_namespace}/{monitor_name} cannot be made: {} (does the cluster \
                     serve monitoring.coreos.com/v1 ServiceMonitors, from the Prometheus \
                     Operator, and is there such a namespace?); the probe pods keep their \
                     prometheus.io annotations",
                    response.message
                ),
            )
            .await;
            Ok(())
        }
        Err(error) => Err(error.into()),
    }
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
        previous,
        &now,
    );
    if previous == Some(&next) {
        return Ok(());
    }
    let api: Api<MeshLogicAgent> = Api::namespaced(ctx.client.clone(), agent.namespace);
    let patch = serde_json::json!({
        "apiVersion": MeshLogicAgent::api_version(&()),
        "kind": MeshLogicAgent::kind(&()),
        "status": next,
    });
    let params = PatchParams::apply(names::FIELD_MANAGER).force();
    api.patch_status(agent.name, &params, &Patch::Apply(&patch))
        .await?;
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
        ctx.event(
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
        .get_opt(&resources::metrics_service_name(&name))
        .await?;
    let mut monitor_namespaces: Vec<String> =
        previous_monitor_namespace(service.as_ref(), &namespace, uid)
            .into_iter()
            .collect();
    monitor_namespaces.extend(resource.spec.metrics.service_monitor.namespace.clone());
    monitor_namespaces.retain(|monitor_namespace| *monitor_namespace != namespace);
    monitor_namespaces.dedup();
    for monitor_namespace in &monitor_namespaces {
        if delete_service_monitor(ctx, (&namespace, &name, uid), monitor_namespace).await? {
            tracing::info!(agent = %owner, namespace = %monitor_namespace, "deleted ServiceMonitor");
        }
    }
    let rbac_name = resources::cluster_rbac_name(&namespace, &name);
    let bindings: Api<ClusterRoleBinding> = Api::all(ctx.client.clone());
    let roles: Api<ClusterRole> = Api::all(ctx.client.clone());
    let deleted_binding = delete_owned(&bindings, &rbac_name, &owner).await?;
    let deleted_role = delete_owned(&roles, &rbac_name, &owner).await?;
    ctx.probes.forget(&owner);
    if deleted_binding || deleted_role {
        ctx.event(
            &resource.object_ref(&()),
            EventType::Normal,
            "Deleted",
            "Cleanup",
            format!("deleted ClusterRole and ClusterRoleBinding {rbac_name}"),
        )
        .await;
    }
    tracing::info!(agent = %owner, "cleaned up cluster-scoped RBAC");
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    fn service(uid: &str, monitor_namespace: Option<&str>) -> Service {
        Service {
            metadata: ObjectMeta {
                owner_references: Some(vec![OwnerReference {
                    uid: uid.into(),
                    controller: Some(true),
                    ..Default::default()
                }]),
                annotations: monitor_namespace.map(|namespace| {
                    [(
                        annotations::SERVICE_MONITOR_NAMESPACE.to_owned(),
                        namespace.to_owned(),
                    )]
                    .into()
                }),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn the_metrics_service_tells_where_the_monitor_was_put() {
        let previous =
            |service: Option<&Service>| previous_monitor_namespace(service, "team", "uid-1");
        assert_eq!(previous(None), None);
        assert_eq!(
            previous(Some(&service("uid-1", None))).as_deref(),
            Some("team")
        );
        assert_eq!(
            previous(Some(&service("uid-1", Some("monitoring")))).as_deref(),
            Some("monitoring")
        );
        // A Service this agent does not control says nothing.
        assert_eq!(previous(Some(&service("uid-2", Some("monitoring")))), None);
    }
}
