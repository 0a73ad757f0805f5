//! The objects a MeshLogicAgent turns into, as pure functions of the resource and the
//! operator's settings: ServiceAccount, ClusterRole and ClusterRoleBinding, ConfigMap and
//! DaemonSet. No I/O here; the reconciler applies what these build.

use std::collections::BTreeMap;

use agentmesh_api::MeshLogicAgent;
use agentmesh_api::meshlogic::{HealthSettings, PullPolicy};
use agentmesh_api::names::{self, annotations, labels, paths, probe_env};
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, HostPathVolumeSource, LocalObjectReference, ObjectFieldSelector, PodSpec,
    PodTemplateSpec, Probe, SeccompProfile, SecretKeySelector, SecurityContext, Service,
    ServiceAccount, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use serde_json::json;
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

    fn namespaced_meta(&self, name: String) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.to_owned()),
            labels: Some(self.labels()),
            owner_references: Some(vec![self.owner.clone()]),
            ..Default::default()
        }
    }

    fn cluster_meta(&self) -> ObjectMeta {
        ObjectMeta {
            name: Some(self.cluster_rbac_name()),
            labels: Some(self.labels()),
            annotations: Some(BTreeMap::from([(annotations::OWNER.into(), self.key())])),
            ..Default::default()
        }
    }
}

/// Name of the ClusterRole and ClusterRoleBinding of the agent `namespace/name`.
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether the operator makes the probe's ServiceAccount (`serviceAccount.create`), rather than
/// use an existing one.
pub fn creates_service_account(agent: &Agent) -> bool {
    agent.resource.spec.service_account.create
}

/// The probe's ServiceAccount, with the spec's annotations (IRSA's role ARN among them). Made
/// only when [`creates_service_account`].
pub fn service_account(agent: &Agent) -> ServiceAccount {
    let spec_annotations = &agent.resource.spec.service_account.annotations;
    let mut meta = agent.namespaced_meta(agent.service_account_name());
    if !spec_annotations.is_empty() {
        meta.annotations = Some(spec_annotations.clone());
    }
    ServiceAccount {
        metadata: meta,
        ..Default::default()
    }
}

/// What the probe may do, and nothing more: read pods (it keeps those of its node, by field
/// selector, to name the pods it reports on) and post reports, which the trust API authorizes
/// with a SubjectAccessReview for `create` on `reports` in `agentmesh.io`.
pub fn cluster_role(agent: &Agent) -> ClusterRole {
    ClusterRole {
        metadata: agent.cluster_meta(),
        rules: Some(vec![
            PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["pods".into()]),
                verbs: ["get", "list", "watch"].map(String::from).to_vec(),
                ..Default::default()
            },
            PolicyRule {
                api_groups: Some(vec![names::GROUP.into()]),
                resources: Some(vec!["reports".into()]),
                verbs: vec!["create".into()],
                ..Default::default()
            },
        ]),
        ..Default::default()
    }
}

/// Binds [`cluster_role`] to the probe's ServiceAccount, made by the operator or not.
pub fn cluster_role_binding(agent: &Agent) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: agent.cluster_meta(),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: agent.cluster_rbac_name(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: agent.service_account_name(),
            namespace: Some(agent.namespace.to_owned()),
            ..Default::default()
        }]),
    }
}

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

/// The probe's configuration file: `{"agent": "<namespace>/<name>", "spec": <the spec>}`, the
/// format `meshlogic-probe --config` reads. Deterministic: the same spec gives the same bytes.
pub fn config_json(agent: &Agent) -> Result<String> {
    Ok(serde_json::to_string(&json!({
        "agent": agent.key(),
        "spec": agent.resource.spec,
    }))?)
}

/// The ConfigMap holding [`config_json`] under [`paths::PROBE_CONFIG_KEY`].
pub fn config_map(agent: &Agent, config: &str) -> ConfigMap {
    ConfigMap {
        metadata: agent.namespaced_meta(agent.config_map_name()),
        data: Some(BTreeMap::from([(
            paths::PROBE_CONFIG_KEY.into(),
            config.to_owned(),
        )])),
        ..Default::default()
    }
}

/// The probe image: the spec's repository, and its tag or else the operator's.
pub fn image(agent: &Agent, settings: &OperatorSettings) -> String {
    let image = &agent.resource.spec.image;
    let tag = image.tag.as_deref().unwrap_or(&settings.default_image_tag);
    format!("{}:{tag}", image.repository)
}

fn pull_policy(policy: PullPolicy) -> &'static str {
    match policy {
        PullPolicy::Always => "Always",
        PullPolicy::IfNotPresent => "IfNotPresent",
        PullPolicy::Never => "Never",
    }
}

fn env_value(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn env_from(name: &str, source: EnvVarSource) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(source),
        ..Default::default()
    }
}

fn secret_key(secret: &str, key: &str) -> EnvVarSource {
    EnvVarSource {
        secret_key_ref: Some(SecretKeySelector {
            name: secret.into(),
            key: key.into(),
            optional: Some(false),
        }),
        ..Default::default()
    }
}

fn env(agent: &Agent, settings: &OperatorSettings) -> Vec<EnvVar> {
    let spec = &agent.resource.spec;
    let mut env = vec![
        env_from(
            probe_env::NODE_NAME,
            EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "spec.nodeName".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
        env_value(probe_env::CONFIG, paths::PROBE_CONFIG_FILE),
        env_value(probe_env::TRUST_API, settings.trust_api_url.as_str()),
        env_value(probe_env::PROC_ROOT, paths::PROBE_HOST_PROC),
        env_value(probe_env::AWS_REGION, spec.region.as_str()),
    ];
    // With IRSA, the ServiceAccount's annotation gives the pod its role; otherwise the keys
    // come from the seed's credentials Secret.
    if !spec.aws.use_irsa
        && let Some(secret) = &spec.aws.credentials_secret
    {
        env.push(env_from(
            probe_env::AWS_ACCESS_KEY_ID,
            secret_key(secret, &spec.aws.access_key_id_key),
        ));
        env.push(env_from(
            probe_env::AWS_SECRET_ACCESS_KEY,
            secret_key(secret, &spec.aws.secret_access_key_key),
        ));
    }
    // Without `logging` the probe keeps its own defaults (info, text), as it always has.
    if let Some(logging) = &spec.logging {
        env.push(env_value(
            probe_env::LOG_LEVEL,
            logging.level.as_directive(),
        ));
        let format = if logging.json_format { "json" } else { "text" };
        env.push(env_value(probe_env::LOG_FORMAT, format));
    }
    // After the operator's; the CRD refuses extra variables that name one of them.
    env.extend(spec.pod.extra_env.iter().cloned());
    env
}

fn host_path(name: &str, path: &str, type_: Option<&str>) -> Volume {
    Volume {
        name: name.into(),
        host_path: Some(HostPathVolumeSource {
            path: path.into(),
            type_: type_.map(str::to_owned),
        }),
        ..Default::default()
    }
}

/// What the probe needs from the kernel, and nothing more (unless `ebpf.privileged`):
/// - `BPF`: load programs and create maps;
/// - `PERFMON`: attach tracepoints and read kernel memory from tracing programs;
/// - `NET_ADMIN`: load and attach the cgroup `connect4`/`connect6` programs;
/// - `SYS_PTRACE`: read other processes' `/proc/<pid>` entries (exe, cgroup) on the host;
/// - `DAC_READ_SEARCH`: read the host's cgroup tree and `/proc` whatever their modes.
pub const PROBE_CAPABILITIES: [&str; 5] = [
    "BPF",
    "PERFMON",
    "NET_ADMIN",
    "SYS_PTRACE",
    "DAC_READ_SEARCH",
];

/// The probe container's security context: privileged, or [`PROBE_CAPABILITIES`] and then
/// the spec's `pod.capabilities`, each once.
fn security_context(privileged: bool, extra_capabilities: &[String]) -> SecurityContext {
    if privileged {
        return SecurityContext {
            privileged: Some(true),
            ..Default::default()
        };
    }
    let mut add: Vec<String> = PROBE_CAPABILITIES.iter().map(|c| (*c).into()).collect();
    for capability in extra_capabilities {
        if !add.contains(capability) {
            add.push(capability.clone());
        }
    }
    SecurityContext {
        privileged: Some(false),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            add: Some(add),
            drop: Some(vec!["ALL".into()]),
        }),
        // The runtime's default profile allows bpf() and perf_event_open() to holders of
        // CAP_BPF and CAP_PERFMON, and refuses the rest of what it refuses.
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..Default::default()
    }
}

/// Volumes and their mounts: the configuration, and what BPF and the tier 1 fallback read
/// on the node, then the spec's extra ones. BTF has no type check: a node without it must
/// still start the probe, which then falls back to tier 1 and says so.
fn volumes(agent: &Agent) -> (Vec<Volume>, Vec<VolumeMount>) {
    let spec = &agent.resource.spec;
    let cgroup_root = spec.cgroup.root.as_str();
    let mut volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: agent.config_map_name(),
                ..Default::default()
            }),
            ..Default::default()
        },
        host_path("btf", paths::KERNEL_BTF_DIR, None),
        host_path("bpffs", paths::BPF_FS, Some("DirectoryOrCreate")),
        host_path("cgroup", cgroup_root, Some("Directory")),
        host_path("host-proc", "/proc", Some("Directory")),
    ];
    let mut mounts = vec![
        mount("config", paths::PROBE_CONFIG_DIR, true),
        mount("btf", paths::KERNEL_BTF_DIR, true),
        mount("bpffs", paths::BPF_FS, false),
        mount("cgroup", cgroup_root, true),
        mount("host-proc", paths::PROBE_HOST_PROC, true),
    ];
    volumes.extend(spec.pod.extra_volumes.iter().cloned());
    mounts.extend(spec.pod.extra_volume_mounts.iter().cloned());
    (volumes, mounts)
}

/// An HTTP check of `path` on the metrics port, timed by `health`: its initial delay and
/// period when set, else this check's own defaults.
fn http_probe(
    path: &str,
    health: &HealthSettings,
    default_initial_delay: i32,
    default_period: i32,
) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(METRICS_PORT_NAME.into()),
            ..Default::default()
        }),
        initial_delay_seconds: Some(
            health
                .initial_delay_seconds
                .unwrap_or(default_initial_delay),
        ),
        period_seconds: Some(health.period_seconds.unwrap_or(default_period)),
        timeout_seconds: Some(health.timeout_seconds),
        failure_threshold: Some(health.failure_threshold),
        ..Default::default()
    }
}

/// Liveness (`/health`, answered while the process serves) and readiness (`/ready`, once the
/// probe observes) checks, unless `health.enabled` is false.
fn health_probes(health: &HealthSettings) -> (Option<Probe>, Option<Probe>) {
    if !health.enabled {
        return (None, None);
    }
    (
        Some(http_probe(paths::HEALTH, health, 10, 20)),
        Some(http_probe(paths::READY, health, 2, 10)),
    )
}

/// The pod template without the configuration hash.
fn pod_template(agent: &Agent, settings: &OperatorSettings) -> PodTemplateSpec {
    let spec = &agent.resource.spec;
    let pod = &spec.pod;
    let (volumes, volume_mounts) = volumes(agent);
    // The spec's annotations first, so that the operator's own overwrite them. The probe is
    // node infrastructure, not an agent: never give it a sidecar, whatever the namespace's
    // label says.
    let mut pod_annotations = pod.annotations.clone();
    pod_annotations.insert(annotations::INJECT.to_owned(), "false".to_owned());
    if spec.metrics.enabled {
        pod_annotations.insert(annotations::PROMETHEUS_SCRAPE.into(), "true".into());
        pod_annotations.insert(
            annotations::PROMETHEUS_PORT.into(),
            spec.metrics.port.to_string(),
        );
        pod_annotations.insert(annotations::PROMETHEUS_PATH.into(), paths::METRICS.into());
    }
    let (liveness_probe, readiness_probe) = health_probes(&spec.health);
    let container = Container {
        name: CONTAINER.into(),
        image: Some(image(agent, settings)),
        image_pull_policy: Some(pull_policy(spec.image.pull_policy).into()),
        env: Some(env(agent, settings)),
        ports: Some(vec![ContainerPort {
            name: Some(METRICS_PORT_NAME.into()),
            container_port: spec.metrics.port,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        liveness_probe,
        readiness_probe,
        resources: Some(spec.resources.clone()),
        security_context: Some(security_context(spec.ebpf.privileged, &pod.capabilities)),
        volume_mounts: Some(volume_mounts),
        ..Default::default()
    };
    let pull_secrets: Vec<LocalObjectReference> = spec
        .image
        .pull_secrets
        .iter()
        .map(|name| LocalObjectReference { name: name.clone() })
        .collect();
    // The spec's labels first, so that the operator's own, the selector's among them,
    // overwrite them.
    let mut pod_labels = pod.labels.clone();
    pod_labels.extend(agent.labels());
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels),
            annotations: Some(pod_annotations),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            service_account_name: Some(agent.service_account_name()),
            host_pid: Some(pod.host_pid),
            // In the node's network namespace the pod would otherwise get the node's resolver,
            // which does not know the trust API's Service name.
            host_network: pod.host_network.then_some(true),
            dns_policy: pod
                .host_network
                .then(|| "ClusterFirstWithHostNet".to_owned()),
            security_context: pod.security_context.clone(),
            affinity: pod.affinity.clone(),
            priority_class_name: pod.priority_class_name.clone(),
            init_containers: (!pod.init_containers.is_empty()).then(|| pod.init_containers.clone()),
            containers: vec![container],
            volumes: Some(volumes),
            image_pull_secrets: (!pull_secrets.is_empty()).then_some(pull_secrets),
            node_selector: (!spec.node_selector.is_empty()).then(|| spec.node_selector.clone()),
            tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
            ..Default::default()
        }),
    }
}

/// Hash of the configuration file and of the pod template built from it: any change of
/// either changes it, and nothing else does.
pub fn config_hash(config: &str, template: &PodTemplateSpec) -> Result<String> {
    let mut hasher = Sha256::new();
    hasher.update(config.as_bytes());
    hasher.update([0]);
    hasher.update(serde_json::to_vec(template)?);
    Ok(hex(&hasher.finalize())[..32].to_owned())
}

/// The probe DaemonSet, its pod template annotated with [`config_hash`] so that a change of
/// configuration rolls it.
pub fn daemon_set(agent: &Agent, settings: &OperatorSettings, config: &str) -> Result<DaemonSet> {
    let mut template = pod_template(agent, settings);
    let hash = config_hash(config, &template)?;
    template
        .metadata
        .get_or_insert_with(Default::default)
        .annotations
        .get_or_insert_with(Default::default)
        .insert(annotations::CONFIG_HASH.into(), hash);
    Ok(DaemonSet {
        metadata: agent.namespaced_meta(agent.probe_name()),
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(agent.selector_labels()),
                ..Default::default()
            },
            template,
            update_strategy: agent.resource.spec.pod.update_strategy.clone(),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The configuration hash a DaemonSet's pod template carries, if any.
pub fn template_hash(daemon_set: &DaemonSet) -> Option<&str> {
    daemon_set
        .spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(annotations::CONFIG_HASH)
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentmesh_api::MeshLogicAgentSpec;
    use agentmesh_api::meshlogic::{LogLevel, LoggingSettings};
    use k8s_openapi::api::apps::v1::{DaemonSetUpdateStrategy, RollingUpdateDaemonSet};
    use k8s_openapi::api::core::v1::{
        Affinity, EmptyDirVolumeSource, NodeAffinity, NodeSelector, PodSecurityContext,
    };

    fn settings() -> OperatorSettings {
        OperatorSettings {
            default_image_tag: "0.1.0".into(),
            trust_api_url: "http://agentmesh.agentmesh.svc:8080".into(),
        }
    }

    fn resource(spec: MeshLogicAgentSpec) -> MeshLogicAgent {
        let mut mla = MeshLogicAgent::new("probe-a", spec);
        mla.metadata.namespace = Some("meshlogic".into());
        mla.metadata.uid = Some("6b2f5c1e-0000-4000-8000-000000000001".into());
        mla
    }

    fn default_resource() -> MeshLogicAgent {
        resource(MeshLogicAgentSpec::with_customer_id("acme"))
    }

    fn built(mla: &MeshLogicAgent) -> DaemonSet {
        let agent = Agent::new(mla).unwrap();
        let config = config_json(&agent).unwrap();
        daemon_set(&agent, &settings(), &config).unwrap()
    }

    fn template_annotations(ds: &DaemonSet) -> &BTreeMap<String, String> {
        let template = &ds.spec.as_ref().unwrap().template;
        template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()
    }

    fn pod_spec(ds: &DaemonSet) -> &PodSpec {
        ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
    }

    fn hash_of(mla: &MeshLogicAgent) -> String {
        template_hash(&built(mla)).unwrap().to_owned()
    }

    #[test]
    fn an_agent_needs_a_namespace_and_a_uid() {
        let mut mla = default_resource();
        mla.metadata.namespace = None;
        assert!(matches!(Agent::new(&mla), Err(Error::NoNamespace(_))));
        let mut mla = default_resource();
        mla.metadata.uid = None;
        assert!(matches!(Agent::new(&mla), Err(Error::Invalid(_))));
    }

    #[test]
    fn names_derive_from_the_agent() {
        let mla = default_resource();
        let agent = Agent::new(&mla).unwrap();
        assert_eq!(agent.probe_name(), "probe-a-probe");
        assert_eq!(agent.config_map_name(), "probe-a-probe-config");
        assert_eq!(
            agent.cluster_rbac_name(),
            "meshlogic-probe:meshlogic:probe-a"
        );
        assert_eq!(agent.key(), "meshlogic/probe-a");
        // Namespaces hold no `:`, so the cluster-wide name is unambiguous.
        assert_ne!(cluster_rbac_name("a-b", "c"), cluster_rbac_name("a", "b-c"));
    }

    #[test]
    fn every_object_carries_the_seed_labels_and_namespaced_ones_are_owned() {
        let mla = default_resource();
        let agent = Agent::new(&mla).unwrap();
        let config = config_json(&agent).unwrap();
        let ds = daemon_set(&agent, &settings(), &config).unwrap();
        let metas = [
            service_account(&agent).metadata,
            config_map(&agent, &config).metadata,
            ds.metadata.clone(),
            cluster_role(&agent).metadata,
            cluster_role_binding(&agent).metadata,
        ];
        for meta in &metas {
            let labels = meta.labels.as_ref().unwrap();
            assert_eq!(labels["app.kubernetes.io/name"], "meshlogic-agent");
            assert_eq!(labels["app.kubernetes.io/instance"], "probe-a");
            assert_eq!(labels["app.kubernetes.io/part-of"], "agentmesh");
            assert_eq!(labels["app.kubernetes.io/managed-by"], "meshlogic-operator");
        }
        for meta in &metas[..3] {
            let owners = meta.owner_references.as_ref().unwrap();
            assert_eq!(owners.len(), 1);
            assert_eq!(owners[0].kind, "MeshLogicAgent");
            assert_eq!(owners[0].name, "probe-a");
            assert_eq!(owners[0].uid, "6b2f5c1e-0000-4000-8000-000000000001");
            assert_eq!(owners[0].controller, Some(true));
            assert_eq!(meta.namespace.as_deref(), Some("meshlogic"));
        }
        for meta in &metas[3..] {
            assert!(
                meta.owner_references.is_none(),
                "cluster objects cannot be owned"
            );
            assert!(meta.namespace.is_none());
            assert_eq!(
                meta.annotations.as_ref().unwrap()["agentmesh.io/owner"],
                "meshlogic/probe-a"
            );
        }
        // The pods carry the labels the seed's `kubectl logs -l` uses, and the selector
        // matches them.
        let spec = ds.spec.as_ref().unwrap();
        let pod_labels = spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap();
        for (key, value) in spec.selector.match_labels.as_ref().unwrap() {
            assert_eq!(pod_labels.get(key), Some(value));
        }
        assert_eq!(pod_labels["app.kubernetes.io/name"], "meshlogic-agent");
    }

    #[test]
    fn long_names_get_valid_distinct_label_values() {
        let long_a = format!("{}-a", "x".repeat(100));
        let long_b = format!("{}-b", "x".repeat(100));
        let (a, b) = (label_value(&long_a), label_value(&long_b));
        assert!(a.len() <= 63 && b.len() <= 63, "{a} {b}");
        assert_ne!(a, b);
        assert_eq!(label_value("short"), "short");
    }

    #[test]
    fn rbac_grants_exactly_pod_reads_and_report_creation() {
        let mla = default_resource();
        let agent = Agent::new(&mla).unwrap();
        let role = cluster_role(&agent);
        let rules = role.rules.unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].api_groups, Some(vec![String::new()]));
        assert_eq!(rules[0].resources, Some(vec!["pods".to_string()]));
        assert_eq!(rules[0].verbs, ["get", "list", "watch"]);
        assert_eq!(rules[1].api_groups, Some(vec!["agentmesh.io".to_string()]));
        assert_eq!(rules[1].resources, Some(vec!["reports".to_string()]));
        assert_eq!(rules[1].verbs, ["create"]);
        for rule in &rules {
            assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        }
        let binding = cluster_role_binding(&agent);
        assert_eq!(binding.role_ref.kind, "ClusterRole");
        assert_eq!(binding.role_ref.name, agent.cluster_rbac_name());
        let subjects = binding.subjects.unwrap();
        assert_eq!(subjects.len(), 1);
        assert_eq!(subjects[0].kind, "ServiceAccount");
        assert_eq!(subjects[0].name, "probe-a-probe");
        assert_eq!(subjects[0].namespace.as_deref(), Some("meshlogic"));
    }

    #[test]
    fn the_config_file_is_the_agent_and_its_spec() {
        let mut spec = MeshLogicAgentSpec::with_customer_id("acme");
        spec.safety_tier = 3;
        let mla = resource(spec.clone());
        let agent = Agent::new(&mla).unwrap();
        let config = config_json(&agent).unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&config).unwrap();
        assert_eq!(parsed["agent"], "meshlogic/probe-a");
        assert_eq!(parsed["spec"]["safetyTier"], 3);
        assert_eq!(parsed["spec"]["customerId"], "acme");
        assert_eq!(parsed.as_object().unwrap().len(), 2);
        let back: MeshLogicAgentSpec = serde_json::from_value(parsed["spec"].clone()).unwrap();
        assert_eq!(back, spec);
        let map = config_map(&agent, &config);
        assert_eq!(map.data.unwrap()["config.json"], config);
    }

    #[test]
    fn the_pod_has_the_seed_posture_and_the_mounts_bpf_needs() {
        let ds = built(&default_resource());
        let pod = pod_spec(&ds);
        assert_eq!(pod.host_pid, Some(true));
        assert_eq!(pod.service_account_name.as_deref(), Some("probe-a-probe"));
        assert_eq!(pod.containers.len(), 1);
        let container = &pod.containers[0];
        let security = container.security_context.as_ref().unwrap();
        assert_eq!(security.privileged, Some(false));
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert_eq!(
            security.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
            Some("RuntimeDefault")
        );
        let capabilities = security.capabilities.as_ref().unwrap();
        assert_eq!(capabilities.drop.as_deref(), Some(&["ALL".to_owned()][..]));
        assert_eq!(
            capabilities.add.as_deref().unwrap(),
            [
                "BPF",
                "PERFMON",
                "NET_ADMIN",
                "SYS_PTRACE",
                "DAC_READ_SEARCH"
            ]
        );
        let mounts: BTreeMap<&str, (&str, Option<bool>)> = container
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| (m.mount_path.as_str(), (m.name.as_str(), m.read_only)))
            .collect();
        assert_eq!(mounts["/sys/kernel/btf"], ("btf", Some(true)));
        assert_eq!(mounts["/sys/fs/bpf"], ("bpffs", Some(false)));
        assert_eq!(mounts["/sys/fs/cgroup"], ("cgroup", Some(true)));
        assert_eq!(mounts["/host/proc"], ("host-proc", Some(true)));
        assert_eq!(mounts["/etc/meshlogic"], ("config", Some(true)));
        let volumes: BTreeMap<&str, &Volume> = pod
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .map(|v| (v.name.as_str(), v))
            .collect();
        let host = |name: &str| volumes[name].host_path.as_ref().unwrap().path.clone();
        assert_eq!(host("btf"), "/sys/kernel/btf");
        assert_eq!(host("bpffs"), "/sys/fs/bpf");
        assert_eq!(host("cgroup"), "/sys/fs/cgroup");
        assert_eq!(host("host-proc"), "/proc");
        assert_eq!(
            volumes["config"].config_map.as_ref().unwrap().name,
            "probe-a-probe-config"
        );
        // Every mount has its volume.
        for (_, (name, _)) in mounts {
            assert!(volumes.contains_key(name), "{name}");
        }
    }

    #[test]
    fn probe_pods_opt_out_of_sidecar_injection() {
        let ds = built(&default_resource());
        assert_eq!(template_annotations(&ds)["agentmesh.io/inject"], "false");
    }

    #[test]
    fn ebpf_privileged_runs_the_probe_privileged_as_the_seed_chart_does() {
        let mut resource = default_resource();
        resource.spec.ebpf.privileged = true;
        let ds = built(&resource);
        let security = pod_spec(&ds).containers[0]
            .security_context
            .clone()
            .unwrap();
        assert_eq!(security.privileged, Some(true));
        assert_eq!(security.capabilities, None);
        // And it rolls the DaemonSet.
        assert_ne!(
            template_hash(&ds),
            template_hash(&built(&default_resource()))
        );
    }

    #[test]
    fn the_cgroup_root_comes_from_the_spec() {
        let mut spec = MeshLogicAgentSpec::with_customer_id("acme");
        spec.cgroup.root = "/sys/fs/cgroup/unified".into();
        let ds = built(&resource(spec));
        let pod = pod_spec(&ds);
        let volume = pod
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == "cgroup")
            .unwrap();
        assert_eq!(
            volume.host_path.as_ref().unwrap().path,
            "/sys/fs/cgroup/unified"
        );
        let mount = pod.containers[0]
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.name == "cgroup")
            .unwrap();
        assert_eq!(mount.mount_path, "/sys/fs/cgroup/unified");
    }

    fn env_map(container: &Container) -> BTreeMap<String, EnvVar> {
        container
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| (e.name.clone(), e.clone()))
            .collect()
    }

    #[test]
    fn the_container_gets_what_the_probe_reads() {
        let ds = built(&default_resource());
        let container = &pod_spec(&ds).containers[0];
        let env = env_map(container);
        assert_eq!(
            env["NODE_NAME"]
                .value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "spec.nodeName"
        );
        assert_eq!(
            env["MESHLOGIC_PROBE_CONFIG"].value.as_deref(),
            Some("/etc/meshlogic/config.json")
        );
        assert_eq!(
            env["MESHLOGIC_TRUST_API"].value.as_deref(),
            Some("http://agentmesh.agentmesh.svc:8080")
        );
        assert_eq!(
            env["MESHLOGIC_PROC_ROOT"].value.as_deref(),
            Some("/host/proc")
        );
        assert_eq!(env["AWS_REGION"].value.as_deref(), Some("ap-southeast-2"));
        assert!(
            !env.contains_key("AWS_ACCESS_KEY_ID"),
            "IRSA is the default"
        );
        assert_eq!(
            container.image.as_deref(),
            Some("registry.meshlogic.ai/meshlogic/agent:0.1.0")
        );
        assert_eq!(container.image_pull_policy.as_deref(), Some("IfNotPresent"));
        assert_eq!(
            pod_spec(&ds).image_pull_secrets,
            Some(vec![LocalObjectReference {
                name: "meshlogic-registry".into()
            }])
        );
        let port = &container.ports.as_ref().unwrap()[0];
        assert_eq!(
            (port.name.as_deref(), port.container_port),
            (Some("metrics"), 9090)
        );
        let probe_path = |probe: &Option<Probe>| {
            let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
            (get.path.clone().unwrap(), get.port.clone())
        };
        let metrics_port = IntOrString::String("metrics".into());
        assert_eq!(
            probe_path(&container.liveness_probe),
            ("/health".into(), metrics_port.clone())
        );
        assert_eq!(
            probe_path(&container.readiness_probe),
            ("/ready".into(), metrics_port)
        );
        let annotations = template_annotations(&ds);
        assert_eq!(annotations["prometheus.io/scrape"], "true");
        assert_eq!(annotations["prometheus.io/port"], "9090");
        assert_eq!(annotations["prometheus.io/path"], "/metrics");
    }

    #[test]
    fn resources_default_to_the_seed_values_and_follow_the_spec() {
        let ds = built(&default_resource());
        let resources = pod_spec(&ds).containers[0].resources.clone().unwrap();
        let get = |map: &Option<
            BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
        >,
                   key: &str| map.as_ref().unwrap()[key].0.clone();
        assert_eq!(get(&resources.requests, "cpu"), "100m");
        assert_eq!(get(&resources.requests, "memory"), "128Mi");
        assert_eq!(get(&resources.limits, "cpu"), "500m");
        assert_eq!(get(&resources.limits, "memory"), "256Mi");

        // A spec parsed without `resources` gets the same defaults.
        let spec: MeshLogicAgentSpec =
            serde_json::from_value(json!({"customerId": "acme"})).unwrap();
        let ds = built(&resource(spec));
        assert_eq!(pod_spec(&ds).containers[0].resources, Some(resources));

        let mut spec = MeshLogicAgentSpec::with_customer_id("acme");
        spec.resources.limits.as_mut().unwrap().insert(
            "memory".into(),
            k8s_openapi::apimachinery::pkg::api::resource::Quantity("1Gi".into()),
        );
        let ds = built(&resource(spec));
        let resources = pod_spec(&ds).containers[0].resources.clone().unwrap();
        assert_eq!(get(&resources.limits, "memory"), "1Gi");
    }

    #[test]
    fn spec_settings_reach_the_pod() {
        let mut spec = MeshLogicAgentSpec::with_customer_id("acme");
        spec.image.repository = "example.com/probe".into();
        spec.image.tag = Some("2.0".into());
        spec.image.pull_policy = PullPolicy::Always;
        spec.image.pull_secrets = vec![];
        spec.metrics.port = 9200;
        spec.metrics.enabled = false;
        spec.region = "eu-west-1".into();
        spec.node_selector = BTreeMap::from([("kubernetes.io/os".into(), "linux".into())]);
        spec.tolerations = vec![k8s_openapi::api::core::v1::Toleration {
            operator: Some("Exists".into()),
            ..Default::default()
        }];
        spec.aws.use_irsa = false;
        spec.aws.credentials_secret = Some("aws-credentials".into());
        let ds = built(&resource(spec));
        let pod = pod_spec(&ds);
        let container = &pod.containers[0];
        assert_eq!(container.image.as_deref(), Some("example.com/probe:2.0"));
        assert_eq!(container.image_pull_policy.as_deref(), Some("Always"));
        assert_eq!(pod.image_pull_secrets, None);
        assert_eq!(container.ports.as_ref().unwrap()[0].container_port, 9200);
        assert_eq!(
            pod.node_selector.as_ref().unwrap()["kubernetes.io/os"],
            "linux"
        );
        assert_eq!(pod.tolerations.as_ref().unwrap().len(), 1);
        let env = env_map(container);
        assert_eq!(env["AWS_REGION"].value.as_deref(), Some("eu-west-1"));
        for (var, key) in [
            ("AWS_ACCESS_KEY_ID", "aws-access-key-id"),
            ("AWS_SECRET_ACCESS_KEY", "aws-secret-access-key"),
        ] {
            let selector = env[var]
                .value_from
                .as_ref()
                .unwrap()
                .secret_key_ref
                .clone()
                .unwrap();
            assert_eq!(
                (selector.name.as_str(), selector.key.as_str()),
                ("aws-credentials", key)
            );
        }
        let annotations = ds
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap();
        let annotations = annotations.annotations.as_ref().unwrap();
        assert!(!annotations.contains_key("prometheus.io/scrape"));
        assert!(annotations.contains_key("agentmesh.io/config-hash"));
    }

    #[test]
    fn a_service_monitor_selects_the_metrics_service_of_the_probe_pods() {
        let mut spec = MeshLogicAgentSpec::with_customer_id("acme");
        assert!(!wants_service_monitor(
            &Agent::new(&resource(spec.clone())).unwrap()
        ));
        spec.metrics.service_monitor.enabled = true;
        spec.metrics.service_monitor.interval = "15s".into();
        spec.metrics.port = 9200;
        let mla = resource(spec.clone());
        let agent = Agent::new(&mla).unwrap();
        assert!(wants_service_monitor(&agent));
        let service = metrics_service(&agent);
        assert_eq!(
            service.metadata.name.as_deref(),
            Some("probe-a-probe-metrics")
        );
        assert_eq!(service.metadata.owner_references.as_ref().unwrap().len(), 1);
        let service_spec = service.spec.as_ref().unwrap();
        assert_eq!(service_spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(service_spec.selector, Some(agent.selector_labels()));
        let port = &service_spec.ports.as_ref().unwrap()[0];
        assert_eq!((port.name.as_deref(), port.port), (Some("metrics"), 9200));
        let monitor = service_monitor(&agent);
        assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
        assert_eq!(
            monitor["metadata"]["ownerReferences"][0]["kind"],
            "MeshLogicAgent"
        );
        assert_eq!(monitor["spec"]["endpoints"][0]["interval"], "15s");
        assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
        // The monitor's selector matches the Service's labels.
        let service_labels = service.metadata.labels.as_ref().unwrap();
        for (key, value) in monitor["spec"]["selector"]["matchLabels"]
            .as_object()
            .unwrap()
        {
            assert_eq!(service_labels.get(key).map(String::as_str), value.as_str());
        }
        // Metrics off: no monitor, whatever serviceMonitor says.
        spec.metrics.enabled = false;
        assert!(!wants_service_monitor(
            &Agent::new(&resource(spec)).unwrap()
        ));
    }

    #[test]
    fn irsa_annotations_go_on_the_service_account() {
        let mut spec = MeshLogicAgentSpec::with_customer_id("acme");
        spec.service_account.annotations = BTreeMap::from([(
            "eks.amazonaws.com/role-arn".into(),
            "arn:aws:iam::123456789012:role/meshlogic-agent".into(),
        )]);
        let mla = resource(spec);
        let sa = service_account(&Agent::new(&mla).unwrap());
        assert_eq!(sa.metadata.name.as_deref(), Some("probe-a-probe"));
        assert_eq!(
            sa.metadata.annotations.unwrap()["eks.amazonaws.com/role-arn"],
            "arn:aws:iam::123456789012:role/meshlogic-agent"
        );
        let plain = default_resource();
        assert!(
            service_account(&Agent::new(&plain).unwrap())
                .metadata
                .annotations
                .is_none()
        );
    }

    #[test]
    fn the_hash_changes_with_the_spec_and_only_with_it() {
        let base = hash_of(&default_resource());
        assert_eq!(base.len(), 32);
        // Same spec, other metadata that is not configuration: same hash.
        let mut again = default_resource();
        again.metadata.generation = Some(7);
        again.metadata.resource_version = Some("12345".into());
        again.metadata.labels = Some(BTreeMap::from([("team".into(), "x".into())]));
        assert_eq!(hash_of(&again), base);

        let changes: [fn(&mut MeshLogicAgentSpec); 14] = [
            |s| s.safety_tier = 3,
            |s| s.ebpf.mute_paths.push("/tmp".into()),
            |s| s.privacy.epsilon = 0.5,
            |s| s.customer_id = "other".into(),
            |s| s.image.tag = Some("9.9.9".into()),
            |s| s.region = "us-east-1".into(),
            |s| s.pod.host_network = true,
            |s| s.pod.capabilities = vec!["SYS_ADMIN".into()],
            |s| s.pod.labels = BTreeMap::from([("team".into(), "x".into())]),
            |s| s.logging = Some(LoggingSettings::default()),
            |s| s.health.enabled = false,
            |s| s.telemetry.batch_size = 10,
            |s| s.aws.access_key_id_key = "id".into(),
            |s| s.service_account.name = Some("mine".into()),
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut spec = MeshLogicAgentSpec::with_customer_id("acme");
            change(&mut spec);
            assert_ne!(hash_of(&resource(spec)), base, "change {i} kept the hash");
        }

        // The operator's own settings that reach the pod count too.
        let mla = default_resource();
        let agent = Agent::new(&mla).unwrap();
        let config = config_json(&agent).unwrap();
        let mut other = settings();
        other.trust_api_url = "http://elsewhere:8080".into();
        let moved = daemon_set(&agent, &other, &config).unwrap();
        assert_ne!(template_hash(&moved).unwrap(), base);
    }

    /// Every object an agent with an all-defaults spec renders, as JSON.
    fn rendered_defaults(mla: &MeshLogicAgent) -> serde_json::Value {
        let agent = Agent::new(mla).unwrap();
        let config = config_json(&agent).unwrap();
        json!({
            "serviceAccount": service_account(&agent),
            "clusterRole": cluster_role(&agent),
            "clusterRoleBinding": cluster_role_binding(&agent),
            "configMap": config_map(&agent, &config),
            "daemonSet": daemon_set(&agent, &settings(), &config).unwrap(),
            "metricsService": metrics_service(&agent),
            "serviceMonitor": service_monitor(&agent),
        })
    }

    #[test]
    fn an_all_defaults_spec_renders_byte_for_byte_as_before_the_pod_keys() {
        // Pinned from the code before `pod`, `logging`, `health`, `telemetry.batchSize`, the
        // AWS key names, `serviceMonitor.namespace`/`labels` and `serviceAccount.create`/`name`
        // existed, with the image repository of then (its default has changed since). Same
        // bytes: same ConfigMap, same configuration hash, no probe pod rolled by an upgrade.
        // Re-pinned once since, on purpose: the probe container's RuntimeDefault seccomp
        // profile changes the pod template and so its configuration hash (an upgrade rolls the
        // probe once); a diff of the two renderings showed nothing else changed.
        let mut mla = default_resource();
        mla.spec.image.repository = "registry.meshlogic.ai/meshlogic-agent".into();
        let rendered = serde_json::to_vec(&rendered_defaults(&mla)).unwrap();
        assert_eq!(
            hex(&Sha256::digest(&rendered)),
            PINNED_DEFAULTS_SHA256,
            "{}",
            String::from_utf8_lossy(&rendered)
        );
        // And the spec written into the configuration file names none of the new keys.
        let config: serde_json::Value =
            serde_json::from_str(&config_json(&Agent::new(&mla).unwrap()).unwrap()).unwrap();
        for key in ["pod", "logging", "health"] {
            assert!(config["spec"].get(key).is_none(), "{key}");
        }
        assert!(config["spec"]["telemetry"].get("batchSize").is_none());
        assert_eq!(config["spec"]["serviceAccount"], json!({}));
    }

    const PINNED_DEFAULTS_SHA256: &str =
        "6b73f83fcfe4140f11da54b9f5988d630fb8306dd267e5685c581783ab2d06c8";

    fn spec_with(change: impl FnOnce(&mut MeshLogicAgentSpec)) -> MeshLogicAgent {
        let mut spec = MeshLogicAgentSpec::with_customer_id("acme");
        change(&mut spec);
        resource(spec)
    }

    fn template_labels(ds: &DaemonSet) -> &BTreeMap<String, String> {
        let template = &ds.spec.as_ref().unwrap().template;
        template.metadata.as_ref().unwrap().labels.as_ref().unwrap()
    }

    #[test]
    fn pod_labels_and_annotations_are_added_and_the_operators_win() {
        let ds = built(&spec_with(|s| {
            s.pod.labels = BTreeMap::from([
                ("team".into(), "security".into()),
                ("app.kubernetes.io/name".into(), "hijacked".into()),
                ("app.kubernetes.io/instance".into(), "hijacked".into()),
            ]);
            s.pod.annotations = BTreeMap::from([
                ("example.com/owner".into(), "sec".into()),
                ("agentmesh.io/inject".into(), "true".into()),
                ("agentmesh.io/config-hash".into(), "mine".into()),
            ]);
        }));
        let labels = template_labels(&ds);
        assert_eq!(labels["team"], "security");
        assert_eq!(labels["app.kubernetes.io/name"], "meshlogic-agent");
        assert_eq!(labels["app.kubernetes.io/instance"], "probe-a");
        // The selector still matches the pods.
        for (key, value) in ds
            .spec
            .as_ref()
            .unwrap()
            .selector
            .match_labels
            .as_ref()
            .unwrap()
        {
            assert_eq!(labels.get(key), Some(value));
        }
        let annotations = template_annotations(&ds);
        assert_eq!(annotations["example.com/owner"], "sec");
        assert_eq!(annotations["agentmesh.io/inject"], "false");
        assert_ne!(annotations["agentmesh.io/config-hash"], "mine");
        // The DaemonSet itself keeps the operator's labels only.
        assert!(!ds.metadata.labels.as_ref().unwrap().contains_key("team"));
    }

    #[test]
    fn pod_security_context_affinity_priority_init_containers_and_update_strategy_are_rendered() {
        let affinity = Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: vec![Default::default()],
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let security = PodSecurityContext {
            run_as_user: Some(0),
            seccomp_profile: Some(k8s_openapi::api::core::v1::SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let init = Container {
            name: "wait-for-bpffs".into(),
            image: Some("busybox:1.36".into()),
            ..Default::default()
        };
        let strategy = DaemonSetUpdateStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateDaemonSet {
                max_unavailable: Some(IntOrString::String("25%".into())),
                ..Default::default()
            }),
        };
        let ds = built(&spec_with(|s| {
            s.pod.affinity = Some(affinity.clone());
            s.pod.security_context = Some(security.clone());
            s.pod.priority_class_name = Some("system-node-critical".into());
            s.pod.init_containers = vec![init.clone()];
            s.pod.update_strategy = Some(strategy.clone());
        }));
        let pod = pod_spec(&ds);
        assert_eq!(pod.affinity.as_ref(), Some(&affinity));
        assert_eq!(pod.security_context.as_ref(), Some(&security));
        assert_eq!(
            pod.priority_class_name.as_deref(),
            Some("system-node-critical")
        );
        assert_eq!(pod.init_containers.as_deref(), Some(&[init][..]));
        assert_eq!(pod.containers.len(), 1);
        assert_eq!(
            ds.spec.as_ref().unwrap().update_strategy.as_ref(),
            Some(&strategy)
        );

        // None of them by default.
        let ds = built(&default_resource());
        let pod = pod_spec(&ds);
        assert!(pod.affinity.is_none() && pod.security_context.is_none());
        assert!(pod.priority_class_name.is_none() && pod.init_containers.is_none());
        assert!(ds.spec.as_ref().unwrap().update_strategy.is_none());
    }

    fn added_capabilities(ds: &DaemonSet) -> Option<Vec<String>> {
        let security = pod_spec(ds).containers[0].security_context.clone()?;
        security.capabilities?.add
    }

    #[test]
    fn extra_capabilities_are_added_once_after_the_operators() {
        let ds = built(&spec_with(|s| {
            s.pod.capabilities = ["SYS_ADMIN", "BPF", "SYS_RESOURCE", "SYS_ADMIN"]
                .map(String::from)
                .to_vec();
        }));
        assert_eq!(
            added_capabilities(&ds).unwrap(),
            [
                "BPF",
                "PERFMON",
                "NET_ADMIN",
                "SYS_PTRACE",
                "DAC_READ_SEARCH",
                "SYS_ADMIN",
                "SYS_RESOURCE"
            ]
        );
        // Privileged already has every capability.
        let ds = built(&spec_with(|s| {
            s.pod.capabilities = vec!["SYS_ADMIN".into()];
            s.ebpf.privileged = true;
        }));
        assert_eq!(added_capabilities(&ds), None);
    }

    #[test]
    fn host_network_brings_the_dns_policy_that_still_resolves_services() {
        let ds = built(&default_resource());
        let pod = pod_spec(&ds);
        assert_eq!((pod.host_network, pod.dns_policy.as_deref()), (None, None));
        assert_eq!(pod.host_pid, Some(true));

        let ds = built(&spec_with(|s| {
            s.pod.host_network = true;
            s.pod.host_pid = false;
        }));
        let pod = pod_spec(&ds);
        assert_eq!(pod.host_network, Some(true));
        assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
        assert_eq!(pod.host_pid, Some(false));
    }

    #[test]
    fn extra_volumes_mounts_and_env_come_after_the_operators() {
        let ds = built(&spec_with(|s| {
            s.pod.extra_volumes = vec![Volume {
                name: "scratch".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            }];
            s.pod.extra_volume_mounts = vec![mount("scratch", "/scratch", false)];
            s.pod.extra_env = vec![env_value("MESHLOGIC_REPORT_QUEUE", "128")];
        }));
        let pod = pod_spec(&ds);
        let volumes: Vec<&str> = pod
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(
            volumes,
            ["config", "btf", "bpffs", "cgroup", "host-proc", "scratch"]
        );
        let container = &pod.containers[0];
        let mounts = container.volume_mounts.as_ref().unwrap();
        assert_eq!(mounts.last().unwrap().mount_path, "/scratch");
        assert_eq!(mounts.len(), 6);
        let env = container.env.as_ref().unwrap();
        assert_eq!(env.last().unwrap().name, "MESHLOGIC_REPORT_QUEUE");
        assert_eq!(env.len(), 6);
    }

    #[test]
    fn the_extra_env_rule_reserves_exactly_what_the_operator_sets() {
        // Everything on: the AWS Secret and logging add their variables.
        let ds = built(&spec_with(|s| {
            s.aws.use_irsa = false;
            s.aws.credentials_secret = Some("aws".into());
            s.logging = Some(LoggingSettings::default());
        }));
        let mut set: Vec<String> = pod_spec(&ds).containers[0]
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| e.name.clone())
            .collect();
        set.sort();
        let mut reserved: Vec<String> = probe_env::OPERATOR_SET
            .iter()
            .map(|n| n.to_string())
            .collect();
        reserved.sort();
        assert_eq!(set, reserved);
    }

    #[test]
    fn logging_sets_the_probe_log_variables_only_when_given() {
        let env = env_map(&pod_spec(&built(&default_resource())).containers[0]);
        assert!(!env.contains_key("AGENTMESH_LOG_LEVEL"));
        assert!(!env.contains_key("AGENTMESH_LOG_FORMAT"));

        let env = env_map(
            &pod_spec(&built(&spec_with(|s| {
                s.logging = Some(LoggingSettings::default())
            })))
            .containers[0],
        );
        assert_eq!(env["AGENTMESH_LOG_LEVEL"].value.as_deref(), Some("info"));
        assert_eq!(env["AGENTMESH_LOG_FORMAT"].value.as_deref(), Some("json"));

        let env = env_map(
            &pod_spec(&built(&spec_with(|s| {
                s.logging = Some(LoggingSettings {
                    level: LogLevel::Debug,
                    json_format: false,
                })
            })))
            .containers[0],
        );
        assert_eq!(env["AGENTMESH_LOG_LEVEL"].value.as_deref(), Some("debug"));
        assert_eq!(env["AGENTMESH_LOG_FORMAT"].value.as_deref(), Some("text"));
    }

    fn timing(probe: &Option<Probe>) -> [Option<i32>; 4] {
        let probe = probe.as_ref().unwrap();
        [
            probe.initial_delay_seconds,
            probe.period_seconds,
            probe.timeout_seconds,
            probe.failure_threshold,
        ]
    }

    #[test]
    fn health_settings_time_both_checks_or_remove_them() {
        let ds = built(&default_resource());
        let container = &pod_spec(&ds).containers[0];
        assert_eq!(
            timing(&container.liveness_probe),
            [Some(10), Some(20), Some(2), Some(3)]
        );
        assert_eq!(
            timing(&container.readiness_probe),
            [Some(2), Some(10), Some(2), Some(3)]
        );

        let ds = built(&spec_with(|s| {
            s.health.initial_delay_seconds = Some(30);
            s.health.timeout_seconds = 5;
            s.health.failure_threshold = 6;
        }));
        let container = &pod_spec(&ds).containers[0];
        assert_eq!(
            timing(&container.liveness_probe),
            [Some(30), Some(20), Some(5), Some(6)]
        );
        assert_eq!(
            timing(&container.readiness_probe),
            [Some(30), Some(10), Some(5), Some(6)]
        );
        let ds = built(&spec_with(|s| s.health.period_seconds = Some(15)));
        let container = &pod_spec(&ds).containers[0];
        assert_eq!(timing(&container.liveness_probe)[1], Some(15));
        assert_eq!(timing(&container.readiness_probe)[1], Some(15));

        let ds = built(&spec_with(|s| s.health.enabled = false));
        let container = &pod_spec(&ds).containers[0];
        assert!(container.liveness_probe.is_none() && container.readiness_probe.is_none());
    }

    #[test]
    fn the_aws_secret_keys_come_from_the_spec() {
        let ds = built(&spec_with(|s| {
            s.aws.use_irsa = false;
            s.aws.credentials_secret = Some("aws".into());
            s.aws.access_key_id_key = "AWS_ACCESS_KEY_ID".into();
            s.aws.secret_access_key_key = "AWS_SECRET_ACCESS_KEY".into();
        }));
        let env = env_map(&pod_spec(&ds).containers[0]);
        for var in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
            let selector = env[var]
                .value_from
                .as_ref()
                .unwrap()
                .secret_key_ref
                .clone()
                .unwrap();
            assert_eq!(
                (selector.name.as_str(), selector.key.as_str()),
                ("aws", var)
            );
        }
    }

    #[test]
    fn a_service_monitor_in_another_namespace_is_annotated_not_owned() {
        let mla = spec_with(|s| {
            s.metrics.service_monitor.enabled = true;
            s.metrics.service_monitor.namespace = Some("monitoring".into());
            s.metrics.service_monitor.labels = BTreeMap::from([
                ("release".into(), "prometheus".into()),
                ("app.kubernetes.io/managed-by".into(), "helm".into()),
            ]);
        });
        let agent = Agent::new(&mla).unwrap();
        assert_eq!(agent.service_monitor_namespace(), "monitoring");
        let monitor = service_monitor(&agent);
        let metadata = &monitor["metadata"];
        assert_eq!(metadata["namespace"], "monitoring");
        assert_eq!(metadata["name"], "meshlogic.probe-a-probe");
        assert!(metadata.get("ownerReferences").is_none(), "{metadata}");
        assert_eq!(
            metadata["annotations"]["agentmesh.io/owner"],
            "meshlogic/probe-a"
        );
        assert_eq!(metadata["labels"]["release"], "prometheus");
        assert_eq!(
            metadata["labels"]["app.kubernetes.io/managed-by"],
            "meshlogic-operator"
        );
        // It still selects the Service beside the agent.
        assert_eq!(
            monitor["spec"]["namespaceSelector"]["matchNames"],
            json!(["meshlogic"])
        );
        // The Service remembers where the monitor went.
        let service = metrics_service(&agent);
        assert_eq!(
            service.metadata.annotations.unwrap()["agentmesh.io/service-monitor-namespace"],
            "monitoring"
        );

        // Beside the agent, by default: owned, no annotations.
        let mla = spec_with(|s| s.metrics.service_monitor.enabled = true);
        let agent = Agent::new(&mla).unwrap();
        let monitor = service_monitor(&agent);
        assert_eq!(monitor["metadata"]["namespace"], "meshlogic");
        assert_eq!(monitor["metadata"]["name"], "probe-a-probe");
        assert!(monitor["metadata"].get("annotations").is_none());
        assert!(metrics_service(&agent).metadata.annotations.is_none());
    }

    #[test]
    fn service_monitor_names_never_collide_across_namespaces() {
        assert_eq!(service_monitor_name("a", "b", "a"), "b-probe");
        assert_ne!(
            service_monitor_name("a-b", "c", "monitoring"),
            service_monitor_name("a", "b-c", "monitoring")
        );
        let long = service_monitor_name("ns", &"x".repeat(253), "monitoring");
        assert!(long.len() <= 253, "{}", long.len());
        assert_ne!(
            long,
            service_monitor_name("ns", &"x".repeat(252), "monitoring")
        );
    }

    #[test]
    fn an_existing_service_account_is_used_and_bound_not_made() {
        let mla = spec_with(|s| {
            s.service_account.create = false;
            s.service_account.name = Some("node-agents".into());
        });
        let agent = Agent::new(&mla).unwrap();
        assert!(!creates_service_account(&agent));
        assert_eq!(agent.service_account_name(), "node-agents");
        let config = config_json(&agent).unwrap();
        let ds = daemon_set(&agent, &settings(), &config).unwrap();
        assert_eq!(
            pod_spec(&ds).service_account_name.as_deref(),
            Some("node-agents")
        );
        let subjects = cluster_role_binding(&agent).subjects.unwrap();
        assert_eq!(
            (subjects[0].name.as_str(), subjects[0].namespace.as_deref()),
            ("node-agents", Some("meshlogic"))
        );

        // Made under another name when `create` stays true.
        let mla = spec_with(|s| s.service_account.name = Some("node-agents".into()));
        let agent = Agent::new(&mla).unwrap();
        assert!(creates_service_account(&agent));
        assert_eq!(
            service_account(&agent).metadata.name.as_deref(),
            Some("node-agents")
        );
        assert!(creates_service_account(
            &Agent::new(&default_resource()).unwrap()
        ));
    }
}
