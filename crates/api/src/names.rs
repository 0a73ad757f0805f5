//! Every name that users see and that more than one component uses: API group, labels,
//! annotations, ports, paths, environment variables, metric names and condition types.
//!
//! The values come from the product contract and its two seed documents (the MeshLogic agent's
//! Helm chart README and the AgentMesh Kubernetes deployment guide). They are promises to users;
//! change one only together with the documentation that makes it.

/// API group of the AgentMesh custom resources.
pub const GROUP: &str = "agentmesh.io";
/// The one served and stored version of the custom resources.
pub const VERSION: &str = "v1alpha1";
/// `kubectl get agentmesh` lists every AgentMesh resource through this category.
pub const CATEGORY: &str = "agentmesh";

/// Field manager for every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "meshlogic-operator";

/// Finalizer on a MeshLogicAgent: its cluster-scoped RBAC (ClusterRole and ClusterRoleBinding
/// of its probes) cannot be owned by a namespaced object, so the operator deletes it first.
pub const MESHLOGIC_FINALIZER: &str = "agentmesh.io/probe-rbac";

pub mod labels {
    //! Labels read or written by AgentMesh.

    /// Namespace label that turns sidecar injection on for the pods created there.
    pub const INJECT_NAMESPACE: &str = "agentmesh-inject";
    /// The value of [`INJECT_NAMESPACE`] that enables injection.
    pub const INJECT_ENABLED: &str = "enabled";
    /// Pod label naming the pod's AgentIdentity; also the default identity selector.
    pub const IDENTITY: &str = "agentmesh.io/identity";

    pub const APP_NAME: &str = "app.kubernetes.io/name";
    pub const APP_COMPONENT: &str = "app.kubernetes.io/component";
    pub const APP_INSTANCE: &str = "app.kubernetes.io/instance";
    pub const APP_PART_OF: &str = "app.kubernetes.io/part-of";
    pub const APP_MANAGED_BY: &str = "app.kubernetes.io/managed-by";

    /// `app.kubernetes.io/part-of` value on everything AgentMesh creates.
    pub const PART_OF_VALUE: &str = "agentmesh";
    /// `app.kubernetes.io/name` of the probe pods; the seed chart's troubleshooting commands
    /// select on it (`-l app.kubernetes.io/name=meshlogic-agent`).
    pub const PROBE_APP_NAME: &str = "meshlogic-agent";
    /// `app.kubernetes.io/name` of the operator's own objects (seed deployment guide).
    pub const OPERATOR_APP_NAME: &str = "agentmesh";
    /// `app.kubernetes.io/managed-by` value on every object the operator creates.
    pub const MANAGED_BY_VALUE: &str = "meshlogic-operator";
    /// `app.kubernetes.io/component` of the probe's objects.
    pub const PROBE_COMPONENT: &str = "probe";
}

pub mod annotations {
    //! Annotations read or written by AgentMesh.

    /// Pod annotation to opt out of injection: `agentmesh.io/inject: "false"`.
    pub const INJECT: &str = "agentmesh.io/inject";
    /// Pod annotation: the port of the agent's own MCP server on the pod's loopback, for calls
    /// from other agents; the injector sets the sidecar's `AGENTMESH_INBOUND_UPSTREAM` from it.
    pub const INBOUND_PORT: &str = "agentmesh.io/inbound-port";
    /// On a key Secret (in the operator's namespace): `<namespace>/<name>` of the
    /// AgentIdentity it was made for (an annotation: a name may be longer than a label value).
    pub const IDENTITY: &str = "agentmesh.io/identity";
    /// On a key Secret: the UID of the AgentIdentity it was made for (a namesake made again
    /// later does not inherit it).
    pub const IDENTITY_UID: &str = "agentmesh.io/identity-uid";
    /// Written by the injector: what it injected (JSON), so that a second pass injects nothing.
    pub const SIDECAR_STATUS: &str = "agentmesh.io/sidecar-status";
    /// ServiceAccount annotation used by IRSA (seed chart, "Using IRSA").
    pub const IRSA_ROLE_ARN: &str = "eks.amazonaws.com/role-arn";
    /// Pod template annotation holding the hash of the probe configuration, so that a change
    /// of configuration rolls the DaemonSet.
    pub const CONFIG_HASH: &str = "agentmesh.io/config-hash";
    pub const PROMETHEUS_SCRAPE: &str = "prometheus.io/scrape";
    pub const PROMETHEUS_PORT: &str = "prometheus.io/port";
    pub const PROMETHEUS_PATH: &str = "prometheus.io/path";
    /// On objects made for a namespaced resource that cannot own them (cluster-scoped ones, or
    /// ones in another namespace): `namespace/name` of that resource.
    pub const OWNER: &str = "agentmesh.io/owner";
    /// On a MeshLogicAgent's metrics Service, when its ServiceMonitor lives in another namespace
    /// (`metrics.serviceMonitor.namespace`): that namespace, so that the monitor is found and
    /// removed when the namespace changes, the monitor is turned off or the agent goes.
    pub const SERVICE_MONITOR_NAMESPACE: &str = "agentmesh.io/service-monitor-namespace";
}

pub mod ports {
    //! Ports from the seed's port reference.

    /// Operator: AgentMesh trust API, `/health` and `/ready`.
    pub const TRUST_API: u16 = 8080;
    /// Operator: Prometheus metrics.
    pub const OPERATOR_METRICS: u16 = 9090;
    /// Operator: the mutating admission webhook (TLS).
    pub const WEBHOOK: u16 = 8443;
    /// Sidecar: MCP proxy for agent traffic, and `/health`.
    pub const SIDECAR_PROXY: u16 = 8081;
    /// Sidecar: Prometheus metrics.
    pub const SIDECAR_METRICS: u16 = 9091;
    /// Probe: Prometheus metrics (seed chart `metrics.port`).
    pub const PROBE_METRICS: u16 = 9090;
}

pub mod paths {
    //! HTTP paths and files.

    pub const HEALTH: &str = "/health";
    pub const READY: &str = "/ready";
    pub const METRICS: &str = "/metrics";
    /// Directory of the sidecar's health volume.
    pub const SIDECAR_HEALTH_DIR: &str = "/var/run/agentmesh";
    /// File whose presence is the sidecar's liveness (`cat /var/run/agentmesh/healthy`).
    pub const SIDECAR_HEALTHY_FILE: &str = "/var/run/agentmesh/healthy";
    /// Where the kernel publishes BTF; tier 2 and 3 need it.
    pub const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";
    /// Default cgroup v2 root on a node.
    pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
    /// Directory of the probe's configuration volume (the MeshLogicAgent's ConfigMap).
    pub const PROBE_CONFIG_DIR: &str = "/etc/meshlogic";
    /// Key of the probe's configuration file in its ConfigMap, and the file's name in
    /// [`PROBE_CONFIG_DIR`]: JSON `{"agent": "<namespace>/<name>", "spec": <the spec>}`.
    pub const PROBE_CONFIG_KEY: &str = "config.json";
    /// Where the probe's configuration file is mounted.
    pub const PROBE_CONFIG_FILE: &str = "/etc/meshlogic/config.json";
    /// Where the node's `/proc` is mounted in the probe container (hostPID shows every
    /// process in the container's own `/proc` too; this one is the host's, whatever the
    /// runtime does to `/proc`).
    pub const PROBE_HOST_PROC: &str = "/host/proc";
    /// Directory of the kernel's BTF files.
    pub const KERNEL_BTF_DIR: &str = "/sys/kernel/btf";
    /// The BPF filesystem.
    pub const BPF_FS: &str = "/sys/fs/bpf";
    /// Where the probe and the sidecar find their trust-API token: a projected ServiceAccount
    /// token of audience [`super::objects::TRUST_API_AUDIENCE`], mounted in their container
    /// only.
    pub const TRUST_API_TOKEN_DIR: &str = "/var/run/secrets/agentmesh.io/trust-api";
    pub const TRUST_API_TOKEN_FILE: &str = "/var/run/secrets/agentmesh.io/trust-api/token";
}

pub mod objects {
    //! Names of Kubernetes objects and keys from the seeds.

    /// Name of the injected container.
    pub const SIDECAR_CONTAINER: &str = "agentmesh-sidecar";
    /// ConfigMap holding the `AGENTMESH_*` settings (seed deployment guide).
    pub const CONFIG_MAP: &str = "agentmesh-config";
    /// The seed's Secret of agent keys.
    pub const AGENT_KEYS_SECRET: &str = "agentmesh-agent-keys";
    /// Key of the PEM private key inside an identity's Secret.
    pub const PRIVATE_KEY_KEY: &str = "private-key";
    /// Key of the public key inside an identity's Secret.
    pub const PUBLIC_KEY_KEY: &str = "public-key";
    /// The seed chart's image pull secret for the probe image.
    pub const PROBE_PULL_SECRET: &str = "meshlogic-registry";
    /// Default image of the probe (seed chart `image.repository`, tag = appVersion).
    pub const PROBE_IMAGE_REPOSITORY: &str = "registry.meshlogic.ai/meshlogic/agent";
    /// Default image of the sidecar (seed deployment guide).
    pub const SIDECAR_IMAGE: &str = "agentmesh/sidecar:1.0.0-alpha1";
    /// The audience of the tokens the trust API accepts: a ServiceAccount token for the API
    /// server (what every pod has mounted) is refused there, so a token stolen from any pod
    /// cannot report, and one for the trust API is good for nothing else.
    pub const TRUST_API_AUDIENCE: &str = "agentmesh.io/trust-api";
    /// Lifetime requested for projected trust-API tokens (the kubelet renews them at 80%).
    pub const TRUST_API_TOKEN_SECONDS: i64 = 3600;
    /// Value of `AGENTMESH_PROXY_URL` set in agent containers.
    pub const PROXY_URL: &str = "http://localhost:8081";

    /// Name of the Secret holding the key pair the operator made for the AgentIdentity
    /// `identity` of `namespace` (when it brings no public key). It lives in the operator's own
    /// namespace, the only one where the operator may touch Secrets:
    /// `agentmesh-key.<namespace>.<identity>` (a namespace has no dot, so no two identities
    /// share one), or, past the 253 characters of a name, the identity's name cut and followed
    /// by a hash of the whole.
    pub fn key_secret_name(namespace: &str, identity: &str) -> String {
        const MAX: usize = 253;
        let name = format!("agentmesh-key.{namespace}.{identity}");
        if name.len() <= MAX {
            return name;
        }
        use sha2::Digest;
        let digest = sha2::Sha256::digest(name.as_bytes());
        let hash: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        // Cut on a character boundary (names are ASCII), and end on an alphanumeric.
        let keep = MAX - hash.len() - 1;
        let head = name[..keep].trim_end_matches(['.', '-']);
        format!("{head}-{hash}")
    }

    /// Name of the Secret, in the pod's namespace, that the injector mounts (optionally) for an
    /// AgentIdentity that brings its own public key: its owner puts the private key there.
    /// The operator never reads it.
    pub fn own_key_secret_name(identity: &str) -> String {
        format!("{identity}-agentmesh-key")
    }
}

pub mod env {
    //! The seed's environment variables. All are read; a bad value stops start-up.

    pub const STORAGE_BACKEND: &str = "AGENTMESH_STORAGE_BACKEND";
    pub const CACHE_ENABLED: &str = "AGENTMESH_CACHE_ENABLED";
    pub const CACHE_TTL: &str = "AGENTMESH_CACHE_TTL";
    pub const REDIS_HOST: &str = "AGENTMESH_REDIS_HOST";
    pub const REDIS_PORT: &str = "AGENTMESH_REDIS_PORT";
    pub const TRUST_INITIAL_SCORE: &str = "AGENTMESH_TRUST_INITIAL_SCORE";
    pub const TRUST_DECAY_RATE: &str = "AGENTMESH_TRUST_DECAY_RATE";
    pub const TRUST_DECAY_FLOOR: &str = "AGENTMESH_TRUST_DECAY_FLOOR";
    pub const TRUST_MIN_THRESHOLD: &str = "AGENTMESH_TRUST_MIN_THRESHOLD";
    pub const DELEGATION_MAX_DEPTH: &str = "AGENTMESH_DELEGATION_MAX_DEPTH";
    pub const GOVERNANCE_DEFAULT_POLICY: &str = "AGENTMESH_GOVERNANCE_DEFAULT_POLICY";
    pub const GOVERNANCE_SHADOW_MODE: &str = "AGENTMESH_GOVERNANCE_SHADOW_MODE";
    pub const GOVERNANCE_AUDIT_RETENTION_DAYS: &str = "AGENTMESH_GOVERNANCE_AUDIT_RETENTION_DAYS";
    pub const LOG_LEVEL: &str = "AGENTMESH_LOG_LEVEL";
    pub const LOG_FORMAT: &str = "AGENTMESH_LOG_FORMAT";
    pub const OTEL_ENABLED: &str = "AGENTMESH_OTEL_ENABLED";
    pub const OTEL_ENDPOINT: &str = "AGENTMESH_OTEL_ENDPOINT";
    pub const POLICY: &str = "AGENTMESH_POLICY";
    pub const AGENT_PRIVATE_KEY: &str = "AGENTMESH_AGENT_PRIVATE_KEY";
    pub const PROXY_URL: &str = "AGENTMESH_PROXY_URL";

    /// Every variable of the seed, in the order of its ConfigMap.
    pub const ALL: [&str; 20] = [
        STORAGE_BACKEND,
        CACHE_ENABLED,
        CACHE_TTL,
        REDIS_HOST,
        REDIS_PORT,
        TRUST_INITIAL_SCORE,
        TRUST_DECAY_RATE,
        TRUST_DECAY_FLOOR,
        TRUST_MIN_THRESHOLD,
        DELEGATION_MAX_DEPTH,
        GOVERNANCE_DEFAULT_POLICY,
        GOVERNANCE_SHADOW_MODE,
        GOVERNANCE_AUDIT_RETENTION_DAYS,
        LOG_LEVEL,
        LOG_FORMAT,
        OTEL_ENABLED,
        OTEL_ENDPOINT,
        POLICY,
        AGENT_PRIVATE_KEY,
        PROXY_URL,
    ];
}

pub mod probe_env {
    //! Environment variables of the node probe (`meshlogic-probe`), set by the operator in its
    //! DaemonSet.

    /// Path of the configuration file.
    pub const CONFIG: &str = "MESHLOGIC_PROBE_CONFIG";
    /// The node the probe runs on (from the pod's `spec.nodeName`).
    pub const NODE_NAME: &str = "NODE_NAME";
    /// URL of the operator's trust API.
    pub const TRUST_API: &str = "MESHLOGIC_TRUST_API";
    /// The operator's CA bundle (PEM): the roots the probe checks the trust API's certificate
    /// with.
    pub const TRUST_API_CA: &str = "MESHLOGIC_TRUST_API_CA";
    /// Where the host's `/proc` is.
    pub const PROC_ROOT: &str = "MESHLOGIC_PROC_ROOT";
    /// AWS region of telemetry (seed chart `agent.region`).
    pub const AWS_REGION: &str = "AWS_REGION";
    pub const AWS_ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
    pub const AWS_SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
    /// Default keys of the seed's AWS credentials Secret (`aws.credentialsSecret`), changed by
    /// `aws.accessKeyIdKey` and `aws.secretAccessKeyKey`.
    pub const AWS_ACCESS_KEY_ID_KEY: &str = "aws-access-key-id";
    pub const AWS_SECRET_ACCESS_KEY_KEY: &str = "aws-secret-access-key";
    /// Log level and format (`spec.logging`): the names every AgentMesh binary reads.
    pub const LOG_LEVEL: &str = super::env::LOG_LEVEL;
    pub const LOG_FORMAT: &str = super::env::LOG_FORMAT;

    /// Every variable the operator may set on the probe container: `spec.pod.extraEnv` may name
    /// none of them (a CEL rule of the CRD refuses it).
    pub const OPERATOR_SET: [&str; 10] = [
        NODE_NAME,
        CONFIG,
        TRUST_API,
        TRUST_API_CA,
        PROC_ROOT,
        AWS_REGION,
        AWS_ACCESS_KEY_ID,
        AWS_SECRET_ACCESS_KEY,
        LOG_LEVEL,
        LOG_FORMAT,
    ];
}

pub mod metrics {
    //! Metric names promised by the seed deployment guide ("Key Metrics").

    pub const HANDSHAKE_TOTAL: &str = "agentmesh_handshake_total";
    pub const TRUST_SCORE_GAUGE: &str = "agentmesh_trust_score_gauge";
    pub const POLICY_VIOLATION_COUNT: &str = "agentmesh_policy_violation_count";
    pub const REGISTRY_SIZE: &str = "agentmesh_registry_size";
    pub const API_REQUEST_DURATION_SECONDS: &str = "agentmesh_api_request_duration_seconds";
}

pub mod conditions {
    //! Condition types written into status, per kind.

    // AgentIdentity
    pub const KEY_READY: &str = "KeyReady";
    pub const TRUSTED: &str = "Trusted";
    pub const QUARANTINED: &str = "Quarantined";
    pub const DELEGATION_VALID: &str = "DelegationValid";
    // TrustPolicy
    pub const ACCEPTED: &str = "Accepted";
    // MeshLogicAgent
    pub const AVAILABLE: &str = "Available";
    pub const PROGRESSING: &str = "Progressing";
    pub const DEGRADED: &str = "Degraded";
}

/// Namespaces that are never injected, whatever their labels say.
pub const NEVER_INJECTED_NAMESPACES: [&str; 1] = ["kube-system"];

#[cfg(test)]
mod tests {
    use super::objects::key_secret_name;
    use proptest::prelude::*;

    /// A DNS-1123 subdomain as the API server checks a Secret's name (no length per label).
    fn is_subdomain(name: &str) -> bool {
        name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            })
    }

    #[test]
    fn a_key_secret_is_named_after_its_namespace_and_identity() {
        assert_eq!(
            key_secret_name("agents", "researcher"),
            "agentmesh-key.agents.researcher"
        );
        // Distinct identities, distinct names, also when a name has a dot.
        assert_ne!(key_secret_name("ab", "c"), key_secret_name("a", "bc"));
        assert_ne!(key_secret_name("a", "b.c"), key_secret_name("a", "b-c"));
        // At the limit: cut, with a hash of the whole.
        let long = "x".repeat(253);
        let name = key_secret_name("agents", &long);
        assert_eq!(name.len(), 253, "{name}");
        assert_ne!(name, key_secret_name("agents", &"x".repeat(252)));
    }

    proptest! {
        /// Any namespace and identity name the API server accepts give a valid Secret name,
        /// and two identities never share one.
        #[test]
        fn key_secret_names_are_valid_and_distinct(
            ns in "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?",
            a in "[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?",
            b in "[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?",
        ) {
            let (name_a, name_b) = (key_secret_name(&ns, &a), key_secret_name(&ns, &b));
            prop_assume!(a.split('.').all(|l| !l.is_empty() && !l.starts_with('-') && !l.ends_with('-')));
            prop_assert!(is_subdomain(&name_a), "{name_a}");
            if a != b {
                prop_assert_ne!(name_a, name_b);
            }
        }
    }
}
