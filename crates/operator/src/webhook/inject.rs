//! What gets injected into a pod: pure (a pod and settings in, RFC 6902 JSON patch operations
//! out), no I/O, golden-tested (`tests/golden.rs`) and fuzzed (`fuzz/fuzz_targets/admission_review.rs`
//! includes this file).
//!
//! The sidecar is the seed deployment guide's `agentmesh-sidecar` container: ports `proxy` 8081
//! and `metrics` 9091, the `agentmesh-config` ConfigMap as environment, the identity's key
//! Secret as a read-only file named by `AGENTMESH_AGENT_PRIVATE_KEY`, the seed's security
//! context, resources and probes, and the `agentmesh-health` emptyDir at `/var/run/agentmesh`
//! plus an emptyDir at `/tmp`.
//!
//! **The key file.** The Secret `<identity>-agentmesh-key` is a volume (`agentmesh-key`, item
//! `private-key`, mode 0400) mounted read-only into the sidecar only, at
//! `/var/run/secrets/agentmesh`; the agent containers do not mount it, so they cannot read it.
//! The kubelet writes Secret files owned by root; with a pod `fsGroup` it changes their group
//! to the fsGroup and adds group read (0400 becomes 0440), and gives every container of the
//! pod the fsGroup as a supplementary group. The sidecar runs as uid 1000, not root, so it
//! reads the file through that group: a pod without `fsGroup` gets `fsGroup: 1000` (with
//! `fsGroupChangePolicy: OnRootMismatch`, so large volumes are not re-chowned at every
//! start); a pod with its own `fsGroup` keeps it. The file is never world-readable.

use std::collections::BTreeMap;

use agentmesh_api::names::{
    NEVER_INJECTED_NAMESPACES, annotations, env, labels, objects, paths, ports,
};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use serde_json::{Value, json};

/// The sidecar's health volume (seed: `agentmesh-health`, an emptyDir at `/var/run/agentmesh`).
pub const HEALTH_VOLUME: &str = "agentmesh-health";
/// The sidecar's writable `/tmp` (its root filesystem is read-only). The seed calls it `tmp`;
/// it is prefixed here because agent pods often have a volume called `tmp` of their own, and two
/// volumes of one name make the pod invalid.
pub const TMP_VOLUME: &str = "agentmesh-tmp";
/// The identity's key Secret, mounted into the sidecar only.
pub const KEY_VOLUME: &str = "agentmesh-key";
/// Where the key Secret is mounted in the sidecar (read-only).
pub const KEY_DIR: &str = "/var/run/secrets/agentmesh";
/// The private key file: the value of `AGENTMESH_AGENT_PRIVATE_KEY` in the sidecar.
pub const KEY_PATH: &str = "/var/run/secrets/agentmesh/private-key";
/// Mode of the key file as requested (0400); the kubelet adds group read for the fsGroup.
pub const KEY_FILE_MODE: i32 = 0o400;
/// The sidecar's uid, and the fsGroup given to pods that have none.
pub const SIDECAR_UID: i64 = 1000;
/// Version of the layout recorded in the `agentmesh.io/sidecar-status` annotation (2: the key
/// is a file, no longer an environment variable).
pub const STATUS_VERSION: u32 = 2;
/// Environment variables set in the sidecar besides the seed's (for the sidecar, a later issue).
pub const ENV_IDENTITY: &str = "AGENTMESH_IDENTITY";
pub const ENV_TRUST_API_URL: &str = "AGENTMESH_TRUST_API_URL";
/// Set from the pod annotation `agentmesh.io/inbound-port`: where the sidecar forwards the
/// calls of other agents once their proof is checked.
pub const ENV_INBOUND_UPSTREAM: &str = "AGENTMESH_INBOUND_UPSTREAM";

/// The pod's `agentmesh.io/inbound-port`: `Ok(None)` when absent, an error naming the
/// annotation when it is not a port.
pub fn inbound_port(pod: &Pod) -> Result<Option<u16>, String> {
    let Some(value) = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(annotations::INBOUND_PORT))
    else {
        return Ok(None);
    };
    match value.trim().parse::<u16>() {
        Ok(port) if port > 0 => Ok(Some(port)),
        _ => Err(format!(
            "annotation {}: {value:?} is not a port (1-65535)",
            annotations::INBOUND_PORT
        )),
    }
}

/// Resources of the sidecar container, as Kubernetes quantities.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resources {
    pub requests_cpu: String,
    pub requests_memory: String,
    pub limits_cpu: String,
    pub limits_memory: String,
}

impl Default for Resources {
    /// The seed's: 100m/128Mi requests, 500m/512Mi limits.
    fn default() -> Self {
        Self {
            requests_cpu: "100m".into(),
            requests_memory: "128Mi".into(),
            limits_cpu: "500m".into(),
            limits_memory: "512Mi".into(),
        }
    }
}

/// What the injector needs to know besides the pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub image: String,
    /// Inject as a native sidecar (an init container with `restartPolicy: Always`, Kubernetes
    /// ≥ 1.29) rather than as a regular container.
    pub native_sidecar: bool,
    pub resources: Resources,
    /// Where the sidecar reaches the operator's trust API.
    pub trust_api_url: String,
    /// The operator's own namespace: never injected.
    pub operator_namespace: String,
}

impl Settings {
    /// The seed's values; what the golden tests use.
    pub fn seed(operator_namespace: &str, native_sidecar: bool) -> Self {
        Self {
            image: objects::SIDECAR_IMAGE.into(),
            native_sidecar,
            resources: Resources::default(),
            trust_api_url: format!("http://agentmesh.{operator_namespace}.svc:8080"),
            operator_namespace: operator_namespace.into(),
        }
    }
}

/// Why a pod was not injected; [`Skip::label`] is the metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Skip {
    /// `agentmesh.io/inject: "false"`.
    OptedOut,
    /// `hostNetwork: true`: the sidecar's ports would be the node's.
    HostNetwork,
    /// The pod already has the sidecar (injected before, or added by hand).
    AlreadyInjected,
    /// The operator's own namespace.
    OperatorNamespace,
    /// `kube-system` (and any other of `NEVER_INJECTED_NAMESPACES`).
    SystemNamespace,
}

impl Skip {
    pub fn label(self) -> &'static str {
        match self {
            Self::OptedOut => "opted_out",
            Self::HostNetwork => "host_network",
            Self::AlreadyInjected => "already_injected",
            Self::OperatorNamespace => "operator_namespace",
            Self::SystemNamespace => "system_namespace",
        }
    }

    pub fn explain(self) -> &'static str {
        match self {
            Self::OptedOut => "the pod opts out with the annotation agentmesh.io/inject: \"false\"",
            Self::HostNetwork => {
                "the pod uses hostNetwork; the sidecar's ports 8081 and 9091 would be the node's"
            }
            Self::AlreadyInjected => "the pod already has the agentmesh-sidecar container",
            Self::OperatorNamespace => "pods of the operator's own namespace are never injected",
            Self::SystemNamespace => "pods of kube-system are never injected",
        }
    }
}

/// Where the sidecar's private key comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    /// The operator manages the key pair: its Secret (`<identity>-agentmesh-key`) must exist
    /// before the sidecar starts (the kubelet waits for it).
    Managed,
    /// The AgentIdentity brings its own `spec.publicKey`: the operator creates no Secret. The
    /// user may provide the private key in a Secret of the same name; it is optional.
    UserSupplied,
}

/// The pod's AgentIdentity: its `agentmesh.io/identity` label, else its ServiceAccount's name
/// (`default` when unset: the ServiceAccount admission plugin sets it before webhooks run).
pub fn identity_of(pod: &Pod) -> String {
    if let Some(identity) = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(labels::IDENTITY))
        .filter(|identity| !identity.is_empty())
    {
        return identity.clone();
    }
    pod.spec
        .as_ref()
        .and_then(|spec| spec.service_account_name.clone())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "default".into())
}

/// Why `pod` in `namespace` must not be injected at all, if it must not.
pub fn skip_reason(pod: &Pod, namespace: &str, settings: &Settings) -> Option<Skip> {
    if NEVER_INJECTED_NAMESPACES.contains(&namespace) {
        return Some(Skip::SystemNamespace);
    }
    if namespace == settings.operator_namespace {
        return Some(Skip::OperatorNamespace);
    }
    let opted_out = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|annotations| annotations.get(annotations::INJECT))
        .is_some_and(|value| value.trim().eq_ignore_ascii_case("false"));
    if opted_out {
        return Some(Skip::OptedOut);
    }
    if pod
        .spec
        .as_ref()
        .and_then(|spec| spec.host_network)
        .unwrap_or(false)
    {
        return Some(Skip::HostNetwork);
    }
    None
}

/// Whether the pod carries the injector's `agentmesh.io/sidecar-status` annotation.
pub fn has_status_annotation(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|annotations| annotations.contains_key(annotations::SIDECAR_STATUS))
}

/// Whether the pod already has the sidecar: the status annotation, or a container of that name.
pub fn already_injected(pod: &Pod) -> bool {
    has_status_annotation(pod)
        || pod.spec.as_ref().is_some_and(|spec| {
            spec.containers
                .iter()
                .chain(spec.init_containers.iter().flatten())
                .any(|container| container.name == objects::SIDECAR_CONTAINER)
        })
}

/// A JSON pointer segment (RFC 6901): `~` and `/` escaped.
fn pointer_segment(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

fn has_env(container: &Container, name: &str) -> bool {
    container
        .env
        .iter()
        .flatten()
        .any(|variable| variable.name == name)
}

/// Operations adding `AGENTMESH_PROXY_URL` to every agent container that lacks it. Alone, this
/// is what a re-invocation of an injected pod gets (another webhook may have added a container).
pub fn proxy_env_ops(spec: &PodSpec) -> Vec<Value> {
    let variable = json!({"name": env::PROXY_URL, "value": objects::PROXY_URL});
    spec.containers
        .iter()
        .enumerate()
        .filter(|(_, container)| {
            container.name != objects::SIDECAR_CONTAINER && !has_env(container, env::PROXY_URL)
        })
        .map(|(index, container)| match container.env {
            None => json!({"op": "add", "path": format!("/spec/containers/{index}/env"), "value": [variable]}),
            Some(_) => json!({"op": "add", "path": format!("/spec/containers/{index}/env/-"), "value": variable}),
        })
        .collect()
}

/// Names of the agent containers, in order (every container but the sidecar).
fn agent_containers(spec: &PodSpec) -> Vec<&str> {
    spec.containers
        .iter()
        .map(|container| container.name.as_str())
        .filter(|name| *name != objects::SIDECAR_CONTAINER)
        .collect()
}

/// The sidecar container.
pub fn sidecar_container(settings: &Settings, identity: &str, inbound_port: Option<u16>) -> Value {
    let resources = &settings.resources;
    let mut container = json!({
        "name": objects::SIDECAR_CONTAINER,
        "image": settings.image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [
            {"name": "proxy", "containerPort": ports::SIDECAR_PROXY, "protocol": "TCP"},
            {"name": "metrics", "containerPort": ports::SIDECAR_METRICS, "protocol": "TCP"},
        ],
        "envFrom": [{"configMapRef": {"name": objects::CONFIG_MAP, "optional": true}}],
        "env": [
            {"name": env::AGENT_PRIVATE_KEY, "value": KEY_PATH},
            {"name": ENV_IDENTITY, "value": identity},
            {"name": ENV_TRUST_API_URL, "value": settings.trust_api_url},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        ],
        "resources": {
            "requests": {"cpu": resources.requests_cpu, "memory": resources.requests_memory},
            "limits": {"cpu": resources.limits_cpu, "memory": resources.limits_memory},
        },
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": SIDECAR_UID,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "livenessProbe": {
            "exec": {"command": ["cat", paths::SIDECAR_HEALTHY_FILE]},
            "initialDelaySeconds": 10,
            "periodSeconds": 15,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {"path": paths::HEALTH, "port": "proxy"},
            "initialDelaySeconds": 5,
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "volumeMounts": [
            {"name": HEALTH_VOLUME, "mountPath": paths::SIDECAR_HEALTH_DIR},
            {"name": TMP_VOLUME, "mountPath": "/tmp"},
            {"name": KEY_VOLUME, "mountPath": KEY_DIR, "readOnly": true},
        ],
    });
    if settings.native_sidecar {
        container["restartPolicy"] = "Always".into();
    }
    if let (Some(port), Some(env)) = (inbound_port, container["env"].as_array_mut()) {
        env.push(
            json!({"name": ENV_INBOUND_UPSTREAM, "value": format!("http://127.0.0.1:{port}")}),
        );
    }
    container
}

/// The key Secret's volume. With [`Key::Managed`] the kubelet waits for the Secret the
/// AgentIdentity reconciler makes; with [`Key::UserSupplied`] it is optional.
pub fn key_volume(identity: &str, key: &Key) -> Value {
    let mut secret = json!({
        "secretName": objects::key_secret_name(identity),
        "items": [{"key": objects::PRIVATE_KEY_KEY, "path": objects::PRIVATE_KEY_KEY, "mode": KEY_FILE_MODE}],
        "defaultMode": KEY_FILE_MODE,
    });
    if *key == Key::UserSupplied {
        secret["optional"] = true.into();
    }
    json!({"name": KEY_VOLUME, "secret": secret})
}

/// The pod's `fsGroup`, and whether the injector adds it (the pod has none).
fn fs_group(spec: &PodSpec) -> (i64, bool) {
    match spec.security_context.as_ref().and_then(|sc| sc.fs_group) {
        Some(group) => (group, false),
        None => (SIDECAR_UID, true),
    }
}

/// The value of the `agentmesh.io/sidecar-status` annotation: what was injected.
pub fn status_annotation(settings: &Settings, identity: &str, key: &Key, spec: &PodSpec) -> String {
    let (fs_group, fs_group_added) = fs_group(spec);
    json!({
        "version": STATUS_VERSION,
        "container": objects::SIDECAR_CONTAINER,
        "mode": if settings.native_sidecar { "native-sidecar" } else { "container" },
        "image": settings.image,
        "identity": identity,
        "keySecret": objects::key_secret_name(identity),
        "keySource": match key { Key::Managed => "operator", Key::UserSupplied => "user" },
        "volumes": [HEALTH_VOLUME, TMP_VOLUME, KEY_VOLUME],
        "keyPath": KEY_PATH,
        "fsGroup": fs_group,
        "fsGroupAdded": fs_group_added,
        "proxyEnv": agent_containers(spec),
    })
    .to_string()
}

/// The JSON patch that injects the sidecar into `pod` as `identity`. The caller has checked
/// [`skip_reason`] and [`already_injected`]; `spec` is the pod's spec.
pub fn patch(
    pod: &Pod,
    spec: &PodSpec,
    settings: &Settings,
    identity: &str,
    key: &Key,
) -> Vec<Value> {
    let mut ops = Vec::with_capacity(12);

    // Annotations: what was injected, and Prometheus scraping of the sidecar unless the pod
    // already declares its own scraping (any prometheus.io/* annotation).
    let mut new_annotations: BTreeMap<&str, String> = BTreeMap::new();
    new_annotations.insert(
        annotations::SIDECAR_STATUS,
        status_annotation(settings, identity, key, spec),
    );
    let existing = pod.metadata.annotations.as_ref();
    let scraped = existing.is_some_and(|annotations| {
        annotations
            .keys()
            .any(|key| key.starts_with("prometheus.io/"))
    });
    if !scraped {
        new_annotations.insert(annotations::PROMETHEUS_SCRAPE, "true".into());
        new_annotations.insert(
            annotations::PROMETHEUS_PORT,
            ports::SIDECAR_METRICS.to_string(),
        );
        new_annotations.insert(annotations::PROMETHEUS_PATH, paths::METRICS.into());
    }
    match existing {
        None => ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": new_annotations})),
        Some(_) => ops.extend(new_annotations.into_iter().map(|(key, value)| {
            json!({"op": "add", "path": format!("/metadata/annotations/{}", pointer_segment(key)), "value": value})
        })),
    }

    // The identity label, so that the AgentIdentity's default selector matches the pod.
    match pod.metadata.labels.as_ref() {
        None => ops.push(
            json!({"op": "add", "path": "/metadata/labels", "value": {labels::IDENTITY: identity}}),
        ),
        Some(existing) if !existing.contains_key(labels::IDENTITY) => ops.push(json!({
            "op": "add",
            "path": format!("/metadata/labels/{}", pointer_segment(labels::IDENTITY)),
            "value": identity,
        })),
        Some(_) => {}
    }

    // Volumes.
    let volumes = [
        json!({"name": HEALTH_VOLUME, "emptyDir": {}}),
        json!({"name": TMP_VOLUME, "emptyDir": {}}),
        key_volume(identity, key),
    ];
    match spec.volumes {
        None => ops.push(json!({"op": "add", "path": "/spec/volumes", "value": volumes})),
        Some(_) => ops.extend(
            volumes
                .into_iter()
                .map(|volume| json!({"op": "add", "path": "/spec/volumes/-", "value": volume})),
        ),
    }

    // The sidecar: first of the init containers when native (so that it runs before the other
    // init containers and for the whole life of the pod), else last of the containers (so that
    // `kubectl logs` and `kubectl exec` still default to the agent).
    // The fsGroup through which the sidecar (uid 1000) reads the root-owned key file.
    if fs_group(spec).1 {
        match spec.security_context.as_ref() {
            None => ops.push(
                json!({"op": "add", "path": "/spec/securityContext", "value": {
                    "fsGroup": SIDECAR_UID,
                    "fsGroupChangePolicy": "OnRootMismatch",
                }}),
            ),
            Some(context) => {
                ops.push(json!({"op": "add", "path": "/spec/securityContext/fsGroup", "value": SIDECAR_UID}));
                if context.fs_group_change_policy.is_none() {
                    ops.push(json!({"op": "add", "path": "/spec/securityContext/fsGroupChangePolicy", "value": "OnRootMismatch"}));
                }
            }
        }
    }

    let sidecar = sidecar_container(settings, identity, inbound_port(pod).ok().flatten());
    if settings.native_sidecar {
        match spec.init_containers {
            None => {
                ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": [sidecar]}))
            }
            Some(_) => {
                ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": sidecar}))
            }
        }
    } else {
        ops.push(json!({"op": "add", "path": "/spec/containers/-", "value": sidecar}));
    }

    ops.extend(proxy_env_ops(spec));
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inbound_port_annotation_is_a_port_or_an_error_naming_it() {
        let pod = |value: &str| {
            let mut pod = Pod::default();
            pod.metadata.annotations = Some(BTreeMap::from([(
                annotations::INBOUND_PORT.to_owned(),
                value.to_owned(),
            )]));
            pod
        };
        assert_eq!(inbound_port(&Pod::default()), Ok(None));
        assert_eq!(inbound_port(&pod("3000")), Ok(Some(3000)));
        for bad in ["0", "70000", "http", "-1", ""] {
            let error = inbound_port(&pod(bad)).unwrap_err();
            assert!(
                error.starts_with("annotation agentmesh.io/inbound-port:"),
                "{error}"
            );
        }
        let container = sidecar_container(&Settings::seed("agentmesh", true), "a", Some(3000));
        assert!(
            container["env"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["name"] == ENV_INBOUND_UPSTREAM && e["value"] == "http://127.0.0.1:3000")
        );
    }

    fn pod(value: Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn the_identity_is_the_label_else_the_service_account() {
        let labelled = pod(json!({
            "metadata": {"labels": {"agentmesh.io/identity": "researcher"}},
            "spec": {"serviceAccountName": "sa", "containers": []}
        }));
        assert_eq!(identity_of(&labelled), "researcher");
        let by_sa = pod(json!({"spec": {"serviceAccountName": "sa", "containers": []}}));
        assert_eq!(identity_of(&by_sa), "sa");
        assert_eq!(identity_of(&pod(json!({}))), "default");
    }

    #[test]
    fn namespaces_come_before_the_pod_in_the_skip_order() {
        let settings = Settings::seed("agentmesh", true);
        let opted_out = pod(json!({"metadata": {"annotations": {"agentmesh.io/inject": "false"}}}));
        assert_eq!(
            skip_reason(&opted_out, "kube-system", &settings),
            Some(Skip::SystemNamespace)
        );
        assert_eq!(
            skip_reason(&opted_out, "agentmesh", &settings),
            Some(Skip::OperatorNamespace)
        );
        assert_eq!(
            skip_reason(&opted_out, "team", &settings),
            Some(Skip::OptedOut)
        );
        let opted_in = pod(json!({"metadata": {"annotations": {"agentmesh.io/inject": "true"}}}));
        assert_eq!(skip_reason(&opted_in, "team", &settings), None);
    }

    #[test]
    fn pointer_segments_are_escaped() {
        assert_eq!(
            pointer_segment("agentmesh.io/identity"),
            "agentmesh.io~1identity"
        );
        assert_eq!(pointer_segment("a~b"), "a~0b");
    }
}
