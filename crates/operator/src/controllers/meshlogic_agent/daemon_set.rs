//! The probe's ConfigMap and DaemonSet: its configuration file, image, environment, mounts,
//! security context and health checks, and the hashes that roll the pods when they change.

use std::collections::BTreeMap;

use agentmesh_api::meshlogic::{HealthSettings, PullPolicy};
use agentmesh_api::names::{annotations, objects, paths, probe_env};
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, HostPathVolumeSource, LocalObjectReference, ObjectFieldSelector,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ProjectedVolumeSource, SeccompProfile,
    SecretKeySelector, SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount,
    VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::error::Result;

use super::agent::*;

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

pub(super) fn env_value(name: &str, value: impl Into<String>) -> EnvVar {
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
        env_value(probe_env::TRUST_API_CA, settings.trust_api_ca.as_str()),
        env_value(probe_env::PROC_ROOT, paths::PROBE_HOST_PROC),
        env_value(probe_env::AWS_REGION, spec.region.as_str()),
    ];
    // Traces go where the operator's go.
    if let Some(endpoint) = &settings.otel_endpoint {
        env.push(env_value(agentmesh_api::names::env::OTEL_ENABLED, "true"));
        env.push(env_value(
            agentmesh_api::names::env::OTEL_ENDPOINT,
            endpoint.as_str(),
        ));
    }
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

/// The probe's trust-API token volume.
const TOKEN_VOLUME: &str = "trust-api-token";

pub(super) fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..Default::default()
    }
}

/// Volumes and their mounts: the configuration, and what BPF and the tier 1 fallback read
/// on the node (all read-only; the probe pins nothing, so the node's bpffs is not mounted),
/// then the spec's extra ones. BTF has no type check: a node without it must
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
        host_path("cgroup", cgroup_root, Some("Directory")),
        host_path("host-proc", "/proc", Some("Directory")),
        // The trust-API token: its own audience, so that the probe's API-server token (for
        // the pod watch) is refused by the trust API and this one by the API server.
        Volume {
            name: TOKEN_VOLUME.into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(objects::TRUST_API_AUDIENCE.into()),
                        expiration_seconds: Some(objects::TRUST_API_TOKEN_SECONDS),
                        path: "token".into(),
                    }),
                    ..Default::default()
                }]),
                default_mode: None,
            }),
            ..Default::default()
        },
    ];
    let mut mounts = vec![
        mount("config", paths::PROBE_CONFIG_DIR, true),
        mount("btf", paths::KERNEL_BTF_DIR, true),
        mount("cgroup", cgroup_root, true),
        mount("host-proc", paths::PROBE_HOST_PROC, true),
        mount(TOKEN_VOLUME, paths::TRUST_API_TOKEN_DIR, true),
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
            // The spec's, else the runtime's default seccomp profile for the whole pod (init
            // containers the spec adds included).
            security_context: Some(pod.security_context.clone().unwrap_or_else(|| {
                PodSecurityContext {
                    seccomp_profile: Some(SeccompProfile {
                        type_: "RuntimeDefault".into(),
                        localhost_profile: None,
                    }),
                    ..Default::default()
                }
            })),
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
