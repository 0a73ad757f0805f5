//! The metrics Service of the probe pods and, when asked for, a Prometheus Operator
//! ServiceMonitor selecting it.

use std::collections::BTreeMap;

use agentmesh_api::names::{self, annotations, labels, paths};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use serde_json::json;

use crate::error::{Error, Result};

use kube::ResourceExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::events::EventType;

use super::agent::*;
use super::{delete_controlled, delete_owned, server_side_apply};
use crate::context::Context;

/// Whether the spec asks for a Prometheus Operator ServiceMonitor (and metrics are on).
pub fn wants_service_monitor(agent: &Agent) -> bool {
    let metrics = &agent.resource.spec.metrics;
    metrics.enabled && metrics.service_monitor.enabled
}

/// A headless Service over the probe pods' metrics port, for the ServiceMonitor to select.
/// When the monitor lives in another namespace, the Service says which
/// ([`annotations::SERVICE_MONITOR_NAMESPACE`]), for the monitor to be found again.
pub fn metrics_service(agent: &Agent) -> Service {
    let mut metadata = agent.namespaced_meta(agent.metrics_service_name());
    let monitor_namespace = agent.service_monitor_namespace();
    if monitor_namespace != agent.namespace {
        metadata.annotations = Some(BTreeMap::from([(
            annotations::SERVICE_MONITOR_NAMESPACE.into(),
            monitor_namespace.to_owned(),
        )]));
    }
    Service {
        metadata,
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(agent.selector_labels()),
            ports: Some(vec![ServicePort {
                name: Some(METRICS_PORT_NAME.into()),
                port: agent.resource.spec.metrics.port,
                target_port: Some(IntOrString::String(METRICS_PORT_NAME.into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Group, version and plural of the Prometheus Operator's ServiceMonitor.
pub const SERVICE_MONITOR_GROUP: &str = "monitoring.coreos.com";
pub const SERVICE_MONITOR_VERSION: &str = "v1";
pub const SERVICE_MONITOR_PLURAL: &str = "servicemonitors";

/// Name of the agent's ServiceMonitor, in [`Agent::service_monitor_namespace`].
pub fn service_monitor_name_of(agent: &Agent) -> String {
    service_monitor_name(
        agent.namespace,
        agent.name,
        agent.service_monitor_namespace(),
    )
}

/// The ServiceMonitor (seed chart `metrics.serviceMonitor`), as JSON: its CRD belongs to the
/// Prometheus Operator, so there is no type for it here. It selects [`metrics_service`], with
/// the spec's extra labels (the operator's win). Beside the agent it is owned by it; in another
/// namespace, where an owner reference cannot point, it names the agent in
/// [`annotations::OWNER`] instead and the operator deletes it itself.
pub fn service_monitor(agent: &Agent) -> serde_json::Value {
    let settings = &agent.resource.spec.metrics.service_monitor;
    let mut selector = agent.selector_labels();
    selector.insert(labels::APP_COMPONENT.into(), labels::PROBE_COMPONENT.into());
    let monitor_namespace = agent.service_monitor_namespace();
    let mut metadata = agent.namespaced_meta(service_monitor_name_of(agent));
    if !settings.labels.is_empty() {
        let mut merged = settings.labels.clone();
        merged.extend(agent.labels());
        metadata.labels = Some(merged);
    }
    if monitor_namespace != agent.namespace {
        metadata.namespace = Some(monitor_namespace.to_owned());
        metadata.owner_references = None;
        metadata.annotations = Some(BTreeMap::from([(annotations::OWNER.into(), agent.key())]));
    }
    json!({
        "apiVersion": format!("{SERVICE_MONITOR_GROUP}/{SERVICE_MONITOR_VERSION}"),
        "kind": "ServiceMonitor",
        "metadata": metadata,
        "spec": {
            "selector": {"matchLabels": selector},
            "namespaceSelector": {"matchNames": [agent.namespace]},
            "endpoints": [{
                "port": METRICS_PORT_NAME,
                "path": paths::METRICS,
                "interval": agent.resource.spec.metrics.service_monitor.interval,
            }],
        },
    })
}

/// The Prometheus Operator's ServiceMonitors in `namespace`.
pub(super) fn service_monitors(ctx: &Context, namespace: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(
        SERVICE_MONITOR_GROUP,
        SERVICE_MONITOR_VERSION,
        "ServiceMonitor",
    );
    let monitor_type = ApiResource::from_gvk_with_plural(&gvk, SERVICE_MONITOR_PLURAL);
    Api::namespaced_with(ctx.client.clone(), namespace, &monitor_type)
}

/// Deletes the ServiceMonitor the agent `namespace/name` (`uid`) has in `monitor_namespace`, if
/// it made one there: owned by it beside it, annotated with it elsewhere. A cluster without the
/// ServiceMonitor CRD has none to delete.
pub(super) async fn delete_service_monitor(
    ctx: &Context,
    (namespace, name, uid): (&str, &str, &str),
    monitor_namespace: &str,
) -> Result<bool> {
    let monitors = service_monitors(ctx, monitor_namespace);
    let monitor_name = service_monitor_name(namespace, name, monitor_namespace);
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
pub(super) fn previous_monitor_namespace(
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
pub(super) async fn reconcile(agent: &Agent<'_>, ctx: &Context) -> Result<()> {
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), agent.namespace);
    let service_name = agent.metrics_service_name();
    let uid = agent.resource.metadata.uid.as_deref().unwrap_or_default();
    let owner = (agent.namespace, agent.name, uid);
    // The Service and the monitor are made together; one GET tells whether there is a monitor,
    // and where.
    let service = services.get_opt(&service_name).await?;
    let previous = previous_monitor_namespace(service.as_ref(), agent.namespace, uid);

    if !wants_service_monitor(agent) {
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
    server_side_apply(&services, &service_name, &metrics_service(agent)).await?;
    let params = PatchParams::apply(names::FIELD_MANAGER).force();
    let monitor = service_monitor(agent);
    let monitor_name = service_monitor_name_of(agent);
    match service_monitors(ctx, monitor_namespace)
        .patch(&monitor_name, &params, &Patch::Apply(&monitor))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(response)) if response.code == 404 => {
            ctx.events
                .publish(
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
