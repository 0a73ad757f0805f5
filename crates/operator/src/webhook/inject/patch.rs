//! The JSON patch that adds the sidecar, its key volume and the proxy variables to a pod.

use agentmesh_api::names::{annotations, env, labels, objects, paths, ports};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use serde_json::{Value, json};
use std::collections::BTreeMap;

use super::*;

/// A JSON pointer segment (RFC 6901): `~` and `/` escaped.
pub(super) fn pointer_segment(segment: &str) -> String {
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

/// The sidecar container. `trust_api_ca` is the operator's CA bundle (PEM), set as
/// [`ENV_TRUST_API_CA`]: the only roots the sidecar trusts the trust API's certificate with.
pub fn sidecar_container(
    settings: &Settings,
    identity: &str,
    key: &Key,
    inbound_port: Option<u16>,
    trust_api_ca: Option<&str>,
) -> Value {
    let resources = &settings.resources;
    let mut container = json!({
        "name": objects::SIDECAR_CONTAINER,
        "image": settings.image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [
            {"name": "proxy", "containerPort": ports::SIDECAR_PROXY, "protocol": "TCP"},
            {"name": "metrics", "containerPort": ports::SIDECAR_METRICS, "protocol": "TCP"},
        ],
        "env": [
            {"name": ENV_IDENTITY, "value": identity},
            {"name": ENV_TRUST_API_URL, "value": settings.trust_api_url},
            {"name": ENV_TOKEN_FILE, "value": paths::TRUST_API_TOKEN_FILE},
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
            {"name": TOKEN_VOLUME, "mountPath": paths::TRUST_API_TOKEN_DIR, "readOnly": true},
            {"name": NO_API_TOKEN_VOLUME, "mountPath": API_TOKEN_DIR, "readOnly": true},
        ],
    });
    if settings.native_sidecar {
        container["restartPolicy"] = "Always".into();
    }
    // A key of the identity's own: the file its owner may put in the pod's namespace. A key
    // the operator made is fetched from the trust API at start, and is never in the pod spec.
    if *key == Key::UserSupplied {
        if let Some(env) = container["env"].as_array_mut() {
            env.insert(
                0,
                json!({"name": env::AGENT_PRIVATE_KEY, "value": KEY_PATH}),
            );
        }
        if let Some(mounts) = container["volumeMounts"].as_array_mut() {
            mounts.insert(
                2,
                json!({"name": KEY_VOLUME, "mountPath": KEY_DIR, "readOnly": true}),
            );
        }
    }
    if let Some(env) = container["env"].as_array_mut() {
        env.extend(
            (settings.sidecar_env.iter())
                .map(|(name, value)| json!({"name": name, "value": value})),
        );
    }
    if let (Some(ca), Some(env)) = (trust_api_ca, container["env"].as_array_mut()) {
        env.push(json!({"name": ENV_TRUST_API_CA, "value": ca}));
    }
    if let (Some(port), Some(env)) = (inbound_port, container["env"].as_array_mut()) {
        env.push(
            json!({"name": ENV_INBOUND_UPSTREAM, "value": format!("http://127.0.0.1:{port}")}),
        );
    }
    container
}

/// The volume of the Secret (in the pod's namespace, made by the identity's owner, optional)
/// holding the private key of an identity that brings its own key; none for a key the
/// operator made (the sidecar fetches that one from the trust API).
pub fn key_volume(identity: &str, key: &Key) -> Option<Value> {
    (*key == Key::UserSupplied).then(|| {
        json!({"name": KEY_VOLUME, "secret": {
            "secretName": objects::own_key_secret_name(identity),
            "items": [{"key": objects::PRIVATE_KEY_KEY, "path": objects::PRIVATE_KEY_KEY, "mode": KEY_FILE_MODE}],
            "defaultMode": KEY_FILE_MODE,
            "optional": true,
        }})
    })
}

/// The sidecar's trust-API token ([`TOKEN_VOLUME`]): the kubelet requests it for the pod's
/// ServiceAccount, bound to the pod, and renews it.
pub fn token_volume() -> Value {
    json!({"name": TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": {
        "audience": objects::TRUST_API_AUDIENCE,
        "expirationSeconds": objects::TRUST_API_TOKEN_SECONDS,
        "path": "token",
    }}]}})
}

/// The pod's `fsGroup`, and whether the injector adds it: only when a key file is mounted
/// (the identity brings its own key) and the pod has none.
fn fs_group(spec: &PodSpec, key: &Key) -> (Option<i64>, bool) {
    match spec.security_context.as_ref().and_then(|sc| sc.fs_group) {
        Some(group) => (Some(group), false),
        None if *key == Key::UserSupplied => (Some(SIDECAR_UID), true),
        None => (None, false),
    }
}

/// The value of the `agentmesh.io/sidecar-status` annotation: what was injected.
pub fn status_annotation(settings: &Settings, identity: &str, key: &Key, spec: &PodSpec) -> String {
    let (fs_group, fs_group_added) = fs_group(spec, key);
    let volumes: Vec<&str> = [HEALTH_VOLUME, TMP_VOLUME]
        .into_iter()
        .chain((*key == Key::UserSupplied).then_some(KEY_VOLUME))
        .chain([TOKEN_VOLUME, NO_API_TOKEN_VOLUME])
        .collect();
    let mut status = json!({
        "version": STATUS_VERSION,
        "container": objects::SIDECAR_CONTAINER,
        "mode": if settings.native_sidecar { "native-sidecar" } else { "container" },
        "image": settings.image,
        "identity": identity,
        "keySource": match key { Key::Managed => "operator", Key::UserSupplied => "user" },
        "volumes": volumes,
        "fsGroup": fs_group,
        "fsGroupAdded": fs_group_added,
        "proxyEnv": agent_containers(spec),
    });
    if *key == Key::UserSupplied {
        status["keySecret"] = objects::own_key_secret_name(identity).into();
        status["keyPath"] = KEY_PATH.into();
    }
    status.to_string()
}

/// The JSON patch that injects the sidecar into `pod` as `identity`. The caller has checked
/// [`skip_reason`] and [`already_injected`]; `spec` is the pod's spec.
pub fn patch(
    pod: &Pod,
    spec: &PodSpec,
    settings: &Settings,
    identity: &str,
    key: &Key,
    trust_api_ca: Option<&str>,
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
    let volumes: Vec<Value> = [
        json!({"name": HEALTH_VOLUME, "emptyDir": {}}),
        json!({"name": TMP_VOLUME, "emptyDir": {}}),
    ]
    .into_iter()
    .chain(key_volume(identity, key))
    .chain([
        token_volume(),
        // No sizeLimit: nothing can write to it (mounted read-only, in the sidecar only), and
        // the kubelet counts an empty directory as 4 KiB, so a limit of 1 KiB had it evict
        // every injected pod at its next storage check.
        json!({"name": NO_API_TOKEN_VOLUME, "emptyDir": {}}),
    ])
    .collect();
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
    if fs_group(spec, key).1 {
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

    let sidecar = sidecar_container(
        settings,
        identity,
        key,
        inbound_port(pod).ok().flatten(),
        trust_api_ca,
    );
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
