//! One MeshLogicAgent, checked once (name, namespace, owner reference), and the names and
//! labels of everything made for it. The objects themselves are built, as pure functions of the
//! agent and the operator's settings, in [`super::rbac`], [`super::daemon_set`] and
//! [`super::monitoring`]; the reconciler applies them.

use std::collections::BTreeMap;

use agentmesh_api::MeshLogicAgent;
use agentmesh_api::names::{annotations, labels};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Name of the probe container.
pub const CONTAINER: &str = "meshlogic-agent";
/// Name of the container port of `/metrics` and the health endpoints.
pub const METRICS_PORT_NAME: &str = "metrics";

/// What the built objects need from the operator's own configuration.
#[derive(Clone, Debug)]
pub struct OperatorSettings {
    /// Image tag when the MeshLogicAgent names none (the operator's version).
    pub default_image_tag: String,
    /// URL at which probes reach the trust API.
    pub trust_api_url: String,
    /// The CA bundle (PEM) probes check the trust API's certificate with.
    pub trust_api_ca: String,
    /// The operator's namespace, where MeshLogicAgents are always honoured.
    pub operator_namespace: String,
    /// Other namespaces whose MeshLogicAgents are honoured (`*`: any).
    pub agent_namespaces: Vec<String>,
    /// Image repositories a probe may run (`*`: any).
    pub probe_images: Vec<String>,
    /// The ClusterRole the probes are bound to.
    pub probe_cluster_role: String,
    /// Where the operator sends its traces (`AGENTMESH_OTEL_ENDPOINT`, when
    /// `AGENTMESH_OTEL_ENABLED`): the probes send theirs there too.
    pub otel_endpoint: Option<String>,
}

/// Why a MeshLogicAgent is not acted on: its `Degraded` reason and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

impl OperatorSettings {
    /// The operator's namespace, then the listed ones, each once.
    fn honoured_namespaces(&self) -> Vec<&str> {
        let mut namespaces = vec![self.operator_namespace.as_str()];
        for namespace in &self.agent_namespaces {
            if !namespaces.contains(&namespace.as_str()) {
                namespaces.push(namespace);
            }
        }
        namespaces
    }

    /// Whether the operator refuses to act on `agent`: whoever may create a MeshLogicAgent
    /// chooses the image, capabilities, tolerations and ServiceAccount annotations of a pod on
    /// every node, so only the namespaces and images the operator is told of are honoured.
    pub fn refusal(&self, agent: &Agent) -> Option<Refusal> {
        let listed = |list: &[String], item: &str| list.iter().any(|e| e == "*" || e == item);
        if agent.namespace != self.operator_namespace
            && !listed(&self.agent_namespaces, agent.namespace)
        {
            return Some(Refusal {
                reason: "NamespaceNotAllowed",
                message: format!(
                    "the operator honours MeshLogicAgents only in {} (MESHLOGIC_AGENT_NAMESPACES)",
                    self.honoured_namespaces().join(", ")
                ),
            });
        }
        let repository = &agent.resource.spec.image.repository;
        if !listed(&self.probe_images, repository) {
            return Some(Refusal {
                reason: "ImageNotAllowed",
                message: format!(
                    "image repository {repository:?} is not one the operator may run on nodes: {} (MESHLOGIC_PROBE_IMAGES)",
                    self.probe_images.join(", ")
                ),
            });
        }
        None
    }
}

/// The identity of one MeshLogicAgent, checked once: name, namespace, and the owner reference
/// its namespaced objects carry.
#[derive(Clone, Debug)]
pub struct Agent<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub resource: &'a MeshLogicAgent,
    owner: OwnerReference,
}

impl<'a> Agent<'a> {
    pub fn new(resource: &'a MeshLogicAgent) -> Result<Self> {
        let name = resource
            .metadata
            .name
            .as_deref()
            .ok_or_else(|| Error::Invalid("MeshLogicAgent without a name".into()))?;
        let namespace = resource
            .metadata
            .namespace
            .as_deref()
            .ok_or(Error::NoNamespace("MeshLogicAgent"))?;
        let owner = resource.controller_owner_ref(&()).ok_or_else(|| {
            Error::Invalid(format!("MeshLogicAgent {namespace}/{name} has no uid yet"))
        })?;
        Ok(Self {
            name,
            namespace,
            resource,
            owner,
        })
    }

    /// `namespace/name`, as probes name their agent in reports.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Name of the DaemonSet, and of the ServiceAccount unless `serviceAccount.name` says
    /// otherwise.
    pub fn probe_name(&self) -> String {
        format!("{}-probe", self.name)
    }

    /// Name of the probe's ServiceAccount: `serviceAccount.name`, else [`Self::probe_name`].
    pub fn service_account_name(&self) -> String {
        self.resource
            .spec
            .service_account
            .name
            .clone()
            .unwrap_or_else(|| self.probe_name())
    }

    /// Namespace of the ServiceMonitor: `metrics.serviceMonitor.namespace`, else the agent's.
    pub fn service_monitor_namespace(&self) -> &str {
        self.resource
            .spec
            .metrics
            .service_monitor
            .namespace
            .as_deref()
            .unwrap_or(self.namespace)
    }

    /// Name of the headless Service of the probes' `/metrics` (for a ServiceMonitor).
    pub fn metrics_service_name(&self) -> String {
        metrics_service_name(self.name)
    }

    /// Name of the ConfigMap.
    pub fn config_map_name(&self) -> String {
        format!("{}-probe-config", self.name)
    }

    /// Name of the ClusterRole and ClusterRoleBinding: cluster-wide, so it names the
    /// namespace too. A namespace holds no `:`, so two agents never share one.
    pub fn cluster_rbac_name(&self) -> String {
        cluster_rbac_name(self.namespace, self.name)
    }

    /// Labels of every object made for this agent.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut all = self.selector_labels();
        all.insert(labels::APP_PART_OF.into(), labels::PART_OF_VALUE.into());
        all.insert(
            labels::APP_MANAGED_BY.into(),
            labels::MANAGED_BY_VALUE.into(),
        );
        all.insert(labels::APP_COMPONENT.into(), labels::PROBE_COMPONENT.into());
        all
    }

    /// The DaemonSet's selector (immutable once created): the seed's name label and the
    /// instance.
    pub fn selector_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (labels::APP_NAME.into(), labels::PROBE_APP_NAME.into()),
            (labels::APP_INSTANCE.into(), label_value(self.name)),
        ])
    }

    pub(super) fn namespaced_meta(&self, name: String) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.to_owned()),
            labels: Some(self.labels()),
            owner_references: Some(vec![self.owner.clone()]),
            ..Default::default()
        }
    }

    pub(super) fn cluster_meta(&self) -> ObjectMeta {
        ObjectMeta {
            name: Some(self.cluster_rbac_name()),
            labels: Some(self.labels()),
            annotations: Some(BTreeMap::from([(annotations::OWNER.into(), self.key())])),
            ..Default::default()
        }
    }
}

/// Name of the ClusterRoleBinding of the agent `namespace/name`.
pub fn cluster_rbac_name(namespace: &str, name: &str) -> String {
    format!("meshlogic-probe:{namespace}:{name}")
}

/// Name of the metrics Service of the agent `name`.
pub fn metrics_service_name(name: &str) -> String {
    format!("{name}-probe-metrics")
}

/// Name of the ServiceMonitor of the agent `namespace/name` when it lives in `monitor_namespace`:
/// `<name>-probe` beside the agent; elsewhere `<namespace>.<name>-probe`, so that agents of two
/// namespaces never share one (a namespace holds no `.`), shortened with a hash past 253
/// characters.
pub fn service_monitor_name(namespace: &str, name: &str, monitor_namespace: &str) -> String {
    if monitor_namespace == namespace {
        return format!("{name}-probe");
    }
    let full = format!("{namespace}.{name}-probe");
    if full.len() <= 253 {
        return full;
    }
    let digest = hex(&Sha256::digest(full.as_bytes()));
    let prefix: String = full.chars().take(240).collect();
    format!("{}-{}", prefix.trim_end_matches(['-', '.']), &digest[..10])
}

/// A label value for `name`: itself when it fits in 63 characters, else a prefix and a hash,
/// so that every name gets a distinct, valid value.
pub fn label_value(name: &str) -> String {
    if name.len() <= 63 {
        return name.to_owned();
    }
    let digest = hex(&Sha256::digest(name.as_bytes()));
    let prefix: String = name.chars().take(52).collect();
    format!(
        "{}-{}",
        prefix.trim_end_matches(['-', '.', '_']),
        &digest[..10]
    )
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
