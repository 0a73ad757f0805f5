//! What gets injected into a pod: pure (a pod and settings in, RFC 6902 JSON patch operations
//! out), no I/O, golden-tested (`tests/golden.rs`) and fuzzed (`fuzz/fuzz_targets/admission_review.rs`
//! includes this file).
//!
//! The sidecar is the seed deployment guide's `agentmesh-sidecar` container: ports `proxy` 8081
//! and `metrics` 9091, the operator's own `AGENTMESH_*` settings as values, the seed's security
//! context, resources and probes, and the `agentmesh-health` emptyDir at `/var/run/agentmesh`
//! plus an emptyDir at `/tmp`.
//!
//! **The key.** A key the operator made for the identity is not in the pod at all: it lives in
//! a Secret of the operator's own namespace (the operator has no right to Secrets anywhere
//! else), and the sidecar fetches it at start from the trust API (`GET /v1/sidecar/key`, over
//! TLS, with its pod-bound token), which hands it only to a pod the operator has bound to that
//! identity.
//!
//! **A key of the identity's own** (`spec.publicKey`): its owner may put the private key in the
//! Secret `<identity>-agentmesh-key` of the pod's namespace. It is a volume (`agentmesh-key`,
//! optional, item `private-key`, mode 0400) mounted read-only into the sidecar only, at
//! `/var/run/secrets/agentmesh`, named by `AGENTMESH_AGENT_PRIVATE_KEY`; the agent containers
//! do not mount it. The kubelet writes Secret files owned by root; with a pod `fsGroup` it
//! changes their group to the fsGroup and adds group read (0400 becomes 0440), and gives every
//! container of the pod the fsGroup as a supplementary group. The sidecar runs as uid 1000,
//! not root, so it reads the file through that group: such a pod without `fsGroup` gets
//! `fsGroup: 1000` (with `fsGroupChangePolicy: OnRootMismatch`, so large volumes are not
//! re-chowned at every start); a pod with its own `fsGroup` keeps it. The file is never
//! world-readable.

use agentmesh_api::names::{NEVER_INJECTED_NAMESPACES, annotations, labels, objects};
use k8s_openapi::api::core::v1::Pod;

/// The sidecar's health volume (seed: `agentmesh-health`, an emptyDir at `/var/run/agentmesh`).
pub const HEALTH_VOLUME: &str = "agentmesh-health";
/// The sidecar's writable `/tmp` (its root filesystem is read-only). The seed calls it `tmp`;
/// it is prefixed here because agent pods often have a volume called `tmp` of their own, and two
/// volumes of one name make the pod invalid.
pub const TMP_VOLUME: &str = "agentmesh-tmp";
/// The Secret of an identity's own key, mounted into the sidecar only.
pub const KEY_VOLUME: &str = "agentmesh-key";
/// The sidecar's trust-API token: a projected ServiceAccount token of the trust API's audience,
/// mounted into the sidecar only (the agent's containers keep what they had).
pub const TOKEN_VOLUME: &str = "agentmesh-token";
/// An empty volume mounted over the sidecar's ServiceAccount token path: the sidecar needs no
/// Kubernetes API credential (it proves itself to the trust API with [`TOKEN_VOLUME`]), and the
/// API server's ServiceAccount admission, which also runs again after this webhook, mounts the
/// pod's token only into containers that mount nothing at that path.
pub const NO_API_TOKEN_VOLUME: &str = "agentmesh-no-api-token";
/// The path the ServiceAccount admission mounts the pod's API token at.
pub const API_TOKEN_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Where the key Secret is mounted in the sidecar (read-only).
pub const KEY_DIR: &str = "/var/run/secrets/agentmesh";
/// The private key file: the value of `AGENTMESH_AGENT_PRIVATE_KEY` in the sidecar.
pub const KEY_PATH: &str = "/var/run/secrets/agentmesh/private-key";
/// Mode of the key file as requested (0400); the kubelet adds group read for the fsGroup.
pub const KEY_FILE_MODE: i32 = 0o400;
/// The sidecar's uid, and the fsGroup given to pods that have none.
pub const SIDECAR_UID: i64 = 1000;
/// Version of the layout recorded in the `agentmesh.io/sidecar-status` annotation (2: the key
/// is a file, no longer an environment variable; 3: the trust-API token volume; 4: no API
/// token in the sidecar; 5: the trust API over TLS, its CA in the sidecar's environment; 6: a
/// key the operator made comes from the trust API, no longer a Secret of the pod's namespace).
pub const STATUS_VERSION: u32 = 6;
/// Environment variables set in the sidecar besides the seed's (for the sidecar, a later issue).
pub const ENV_IDENTITY: &str = "AGENTMESH_IDENTITY";
pub const ENV_TRUST_API_URL: &str = "AGENTMESH_TRUST_API_URL";
/// The operator's CA bundle (PEM), the roots the sidecar checks the trust API's certificate
/// with: a value, as Linkerd sets its trust anchors, so nothing in the pod's namespace can
/// change it.
pub const ENV_TRUST_API_CA: &str = "AGENTMESH_TRUST_API_CA";
/// The sidecar's trust-API token file (the projected token of [`TOKEN_VOLUME`]).
pub const ENV_TOKEN_FILE: &str = "AGENTMESH_SIDECAR_TOKEN_FILE";
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
    /// The seed's `AGENTMESH_*` settings as the operator itself was given them (from the
    /// `agentmesh-config` ConfigMap of its own namespace), set in the sidecar as values: a
    /// ConfigMap of the agent's namespace, which its tenants may edit, configures nothing.
    pub sidecar_env: Vec<(String, String)>,
}

impl Settings {
    /// The seed's values; what the golden tests use.
    pub fn seed(operator_namespace: &str, native_sidecar: bool) -> Self {
        Self {
            image: objects::SIDECAR_IMAGE.into(),
            native_sidecar,
            resources: Resources::default(),
            trust_api_url: format!("https://agentmesh.{operator_namespace}.svc:8080"),
            operator_namespace: operator_namespace.into(),
            sidecar_env: Vec::new(),
        }
    }

    /// The seed's settings set in `lookup` (the operator's environment) that the sidecar
    /// reads: every `AGENTMESH_*` of the seed but the key and the proxy URL, which the injector
    /// sets itself.
    pub fn seed_env(lookup: impl Fn(&str) -> Option<String>) -> Vec<(String, String)> {
        use agentmesh_api::names::env;
        env::ALL
            .into_iter()
            .filter(|name| *name != env::AGENT_PRIVATE_KEY && *name != env::PROXY_URL)
            .filter_map(|name| Some((name.to_string(), lookup(name)?)))
            .collect()
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
    /// The pod's identity is missing and its namespace is not labelled for injection: the
    /// review did not come from the API server's namespace selector (a forged review, or a
    /// label removed a moment ago). Nothing is created, nothing injected.
    NamespaceNotEnabled,
}

impl Skip {
    pub fn label(self) -> &'static str {
        match self {
            Self::OptedOut => "opted_out",
            Self::HostNetwork => "host_network",
            Self::AlreadyInjected => "already_injected",
            Self::OperatorNamespace => "operator_namespace",
            Self::SystemNamespace => "system_namespace",
            Self::NamespaceNotEnabled => "namespace_not_enabled",
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
            Self::NamespaceNotEnabled => {
                "the namespace is not labelled agentmesh-inject=enabled; no AgentIdentity is created for it"
            }
        }
    }
}

/// Where the sidecar's private key comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    /// The operator manages the key pair (in a Secret of its own namespace): the sidecar
    /// fetches it from the trust API at start, retrying until the identity has it.
    Managed,
    /// The AgentIdentity brings its own `spec.publicKey`: the operator creates no Secret. The
    /// user may provide the private key in the Secret `<identity>-agentmesh-key` of the pod's
    /// namespace; it is optional.
    UserSupplied,
}

/// The pod's AgentIdentity: its `agentmesh.io/identity` label, else its ServiceAccount's name
/// (`default` when unset: the ServiceAccount admission plugin sets it before webhooks run).
pub fn identity_of(pod: &Pod) -> String {
    let account = service_account_of(pod);
    claimed_identity(pod.metadata.labels.as_ref(), &account).to_owned()
}

/// The identity a pod with these labels, running as `service_account`, names: its non-empty
/// `agentmesh.io/identity` label, else its ServiceAccount's name. The one rule the webhook and
/// the operator's pod index share.
pub fn claimed_identity<'a>(
    labels: Option<&'a std::collections::BTreeMap<String, String>>,
    service_account: &'a str,
) -> &'a str {
    labels
        .and_then(|labels| labels.get(labels::IDENTITY))
        .map(String::as_str)
        .filter(|identity| !identity.is_empty())
        .unwrap_or(service_account)
}

/// The pod's ServiceAccount (`default` when unset).
pub fn service_account_of(pod: &Pod) -> String {
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

mod patch;

pub use patch::*;

#[cfg(test)]
mod tests;
