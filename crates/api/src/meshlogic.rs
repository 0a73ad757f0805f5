//! `MeshLogicAgent`: the node probe DaemonSet, configured with the seed chart's values.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::DaemonSetUpdateStrategy;
use k8s_openapi::api::core::v1::{
    Affinity, Container, EnvVar, PodSecurityContext, ResourceRequirements, Toleration, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Conditions, PATH_PATTERN, conditions_schema};
use crate::names;
pub use crate::settings::LogLevel;

/// Smallest ring buffer libbpf accepts here: one page.
pub const RING_BUFFER_MIN: i64 = 4096;
/// Largest ring buffer accepted: 1 GiB.
pub const RING_BUFFER_MAX: i64 = 1 << 30;

/// The MeshLogic eBPF behavioural probe on a set of nodes.
// Each printcolumn(...) repeats `type_ = "..."`, which clippy takes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "agentmesh.io",
    version = "v1alpha1",
    kind = "MeshLogicAgent",
    plural = "meshlogicagents",
    singular = "meshlogicagent",
    shortname = "mla",
    category = "agentmesh",
    namespaced,
    status = "MeshLogicAgentStatus",
    derive = "PartialEq",
    doc = "The MeshLogic eBPF behavioural probe, run as a DaemonSet on the selected nodes: what it observes (process, file, network), at which safety tier, with what privacy noise on telemetry.",
    printcolumn(
        name = "TIER",
        type_ = "integer",
        json_path = ".spec.safetyTier",
        description = "Requested safety tier"
    ),
    printcolumn(
        name = "DESIRED",
        type_ = "integer",
        json_path = ".status.desiredNodes",
        description = "Nodes that should run the probe"
    ),
    printcolumn(
        name = "READY",
        type_ = "integer",
        json_path = ".status.readyNodes",
        description = "Nodes where the probe is ready"
    ),
    printcolumn(
        name = "AGE",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MeshLogicAgentSpec {
    /// Your MeshLogic customer ID (seed chart `agent.customerId`, required).
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9._-]+$"))]
    pub customer_id: String,

    /// Safety tier: 1 user-mode (no BPF, `/proc` and cgroups polled), 2 read-only eBPF, 3
    /// controlled blocking (tier 2 plus in-kernel enforcement of deny decisions). A node that
    /// cannot load BPF falls back to tier 1 and says so in status.
    #[serde(default = "default_safety_tier")]
    #[schemars(range(min = 1, max = 3))]
    pub safety_tier: i32,

    /// AWS region for telemetry.
    #[serde(default = "default_region")]
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[a-z]{2}(-[a-z]+)+-[0-9]+$")
    )]
    pub region: String,

    /// Probe container image.
    #[serde(default)]
    pub image: ImageSettings,

    /// Which kernel events are observed, and how.
    #[serde(default)]
    pub ebpf: EbpfSettings,

    /// Where the node's cgroup v2 hierarchy is and how the kubelet lays out pod cgroups.
    #[serde(default)]
    pub cgroup: CgroupSettings,

    /// Differential privacy of the telemetry that leaves the cluster.
    #[serde(default)]
    pub privacy: PrivacySettings,

    /// Prometheus metrics of the probe.
    #[serde(default)]
    pub metrics: MetricsSettings,

    /// Where aggregated, noised telemetry is sent.
    #[serde(default)]
    pub telemetry: TelemetrySettings,

    /// AWS authentication for telemetry: IRSA or a credentials Secret.
    #[serde(default)]
    pub aws: AwsSettings,

    /// The probe's ServiceAccount.
    #[serde(default)]
    pub service_account: ServiceAccountSettings,

    /// Seconds between behaviour reports to the operator.
    #[serde(default = "default_report_interval")]
    #[schemars(range(min = 1, max = 3600))]
    pub report_interval_seconds: i32,

    /// Resources of the probe container. Default: requests 100m CPU and 128Mi memory, limits
    /// 500m CPU and 256Mi memory.
    #[serde(default = "default_resources")]
    pub resources: ResourceRequirements,

    /// Run the probe only on nodes with these labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations of the probe pods, e.g. to run on tainted nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub tolerations: Vec<Toleration>,

    /// More settings of the probe pods and their DaemonSet: labels, annotations, security
    /// context, extra capabilities, affinity, priority class, host network and PID namespace,
    /// extra volumes, environment and init containers, update strategy.
    #[serde(default, skip_serializing_if = "is_default")]
    pub pod: ProbePodSettings,

    /// Log level and format of the probe. When absent the probe logs at `info` in text, as
    /// before this field existed; when present its fields default to `info` and JSON (the seed
    /// chart's values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logging: Option<LoggingSettings>,

    /// Liveness and readiness probes of the probe container (`/health` and `/ready` on the
    /// metrics port).
    #[serde(default, skip_serializing_if = "is_default")]
    pub health: HealthSettings,
}

impl MeshLogicAgentSpec {
    /// A spec with the seed chart's defaults and the given customer ID.
    pub fn with_customer_id(customer_id: impl Into<String>) -> Self {
        Self {
            customer_id: customer_id.into(),
            safety_tier: default_safety_tier(),
            region: default_region(),
            image: ImageSettings::default(),
            ebpf: EbpfSettings::default(),
            cgroup: CgroupSettings::default(),
            privacy: PrivacySettings::default(),
            metrics: MetricsSettings::default(),
            telemetry: TelemetrySettings::default(),
            aws: AwsSettings::default(),
            service_account: ServiceAccountSettings::default(),
            report_interval_seconds: default_report_interval(),
            resources: default_resources(),
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            pod: ProbePodSettings::default(),
            logging: None,
            health: HealthSettings::default(),
        }
    }
}

/// Whether `value` is its type's default: such fields are left out when the spec is
/// serialized, so that the probe's configuration file (and the hash that rolls the DaemonSet)
/// stays the same for agents that do not use them.
fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

fn default_safety_tier() -> i32 {
    2
}
fn default_region() -> String {
    "ap-southeast-2".into()
}
fn default_report_interval() -> i32 {
    10
}

/// The seed chart's resources: requests 100m / 128Mi, limits 500m / 256Mi.
pub fn default_resources() -> ResourceRequirements {
    let quantities = |cpu: &str, memory: &str| {
        BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.into())),
            ("memory".to_string(), Quantity(memory.into())),
        ])
    };
    ResourceRequirements {
        requests: Some(quantities("100m", "128Mi")),
        limits: Some(quantities("500m", "256Mi")),
        ..Default::default()
    }
}

/// Probe image.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageSettings {
    /// Image repository.
    #[serde(default = "default_image_repository")]
    #[schemars(length(min = 1, max = 255))]
    pub repository: String,
    /// Image tag. Defaults to the operator's own version (the chart's appVersion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub tag: Option<String>,
    /// Image pull policy.
    #[serde(default)]
    pub pull_policy: PullPolicy,
    /// Names of image pull Secrets in the probe's namespace.
    #[serde(default = "default_pull_secrets")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253)))]
    pub pull_secrets: Vec<String>,
}

impl Default for ImageSettings {
    fn default() -> Self {
        Self {
            repository: default_image_repository(),
            tag: None,
            pull_policy: PullPolicy::default(),
            pull_secrets: default_pull_secrets(),
        }
    }
}

fn default_image_repository() -> String {
    names::objects::PROBE_IMAGE_REPOSITORY.into()
}
fn default_pull_secrets() -> Vec<String> {
    vec![names::objects::PROBE_PULL_SECRET.into()]
}

/// Kubernetes image pull policy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

/// Kernel observation settings (seed chart `ebpf.*`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EbpfSettings {
    /// Observe process exec and exit.
    #[serde(default = "default_true")]
    pub enable_process: bool,
    /// Observe file opens (`openat`, `openat2`).
    #[serde(default = "default_true")]
    pub enable_file: bool,
    /// Observe outbound connects (IPv4 and IPv6).
    #[serde(default = "default_true")]
    pub enable_network: bool,
    /// Size in bytes of the ring buffer that carries events from the kernel: a power of two
    /// from 4096 (one page) to 1073741824 (1 GiB).
    #[serde(default = "default_ring_buffer_size")]
    #[schemars(range(min = 4096, max = 1073741824))]
    #[x_kube(validation = Rule::new("self in [4096, 8192, 16384, 32768, 65536, 131072, 262144, 524288, 1048576, 2097152, 4194304, 8388608, 16777216, 33554432, 67108864, 134217728, 268435456, 536870912, 1073741824]").message("ringBufferSize must be a power of two between 4096 and 1073741824"))]
    pub ring_buffer_size: i64,
    /// Path prefixes whose events are dropped in the kernel, never reaching user space.
    #[serde(default = "default_mute_paths")]
    #[schemars(
        length(max = 64),
        inner(regex(pattern = PATH_PATTERN), length(min = 1, max = 128)),
        extend("x-kubernetes-list-type" = "set")
    )]
    pub mute_paths: Vec<String>,
    /// Run the probe container privileged, as the seed chart does, instead of with only the
    /// capabilities it needs (BPF, PERFMON, NET_ADMIN, SYS_PTRACE, DAC_READ_SEARCH). Needed on
    /// kernels before 5.8, which have no CAP_BPF or CAP_PERFMON: without it such a node falls
    /// back to tier 1 and says so in status.
    #[serde(default)]
    pub privileged: bool,
}

impl Default for EbpfSettings {
    fn default() -> Self {
        Self {
            enable_process: true,
            enable_file: true,
            enable_network: true,
            ring_buffer_size: default_ring_buffer_size(),
            mute_paths: default_mute_paths(),
            privileged: false,
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_ring_buffer_size() -> i64 {
    1_048_576
}
fn default_mute_paths() -> Vec<String> {
    ["/proc", "/sys", "/dev"].map(String::from).to_vec()
}

/// The node's cgroup v2 hierarchy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CgroupSettings {
    /// Mount point of the cgroup v2 hierarchy on the node. When it is cgroup v1 (a hybrid
    /// host), the probe uses `<root>/unified` if that is cgroup v2, so the default
    /// `/sys/fs/cgroup` works on both.
    #[serde(default = "default_cgroup_root")]
    #[schemars(regex(pattern = PATH_PATTERN), length(min = 1, max = 255))]
    pub root: String,
    /// Layout of pod cgroups: the kubelet's `cgroupfs` or `systemd` driver, or `auto` to
    /// recognise both.
    #[serde(default)]
    pub driver: CgroupDriver,
}

impl Default for CgroupSettings {
    fn default() -> Self {
        Self {
            root: default_cgroup_root(),
            driver: CgroupDriver::default(),
        }
    }
}

fn default_cgroup_root() -> String {
    names::paths::CGROUP_ROOT.into()
}

/// Kubelet cgroup driver.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum CgroupDriver {
    #[default]
    Auto,
    Cgroupfs,
    Systemd,
}

/// Where the probe observes file opens (README, "The node probe": "File hook").
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum FileHook {
    /// fexit of the kernel's open functions (`do_filp_open`, `do_handle_open`): only opens
    /// pay. Needs fexit (x86-64 from 5.5, arm64 from 6.0) and a kernel not locked down.
    #[serde(rename = "fexit")]
    Fexit,
    /// The raw `sys_exit` tracepoint: every system call of the node pays a little.
    #[serde(rename = "sys_exit")]
    SysExit,
}

impl FileHook {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fexit => "fexit",
            Self::SysExit => "sys_exit",
        }
    }
}

impl std::fmt::Display for FileHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Differential privacy of telemetry (seed chart `privacy.*`). Noise is added only to the
/// aggregates that leave the cluster, never to the counts used for trust.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrivacySettings {
    /// Privacy budget ε per reporting window; Laplace noise of scale sensitivity/ε. Smaller is
    /// more private. Must be greater than 0.
    #[serde(default = "default_epsilon")]
    #[schemars(range(min = 0.0, max = 100.0), extend("exclusiveMinimum" = true))]
    pub epsilon: f64,
    /// Add noise to telemetry.
    #[serde(default = "default_true")]
    pub enable_noise: bool,
}

impl Default for PrivacySettings {
    fn default() -> Self {
        Self {
            epsilon: default_epsilon(),
            enable_noise: true,
        }
    }
}

fn default_epsilon() -> f64 {
    1.0
}

/// Prometheus metrics (seed chart `metrics.*`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricsSettings {
    /// Serve `/metrics`.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Port of `/metrics` and the health endpoint.
    #[serde(default = "default_metrics_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// A Prometheus Operator ServiceMonitor for the probe.
    #[serde(default)]
    pub service_monitor: ServiceMonitorSettings,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            port: default_metrics_port(),
            service_monitor: ServiceMonitorSettings::default(),
        }
    }
}

fn default_metrics_port() -> i32 {
    i32::from(names::ports::PROBE_METRICS)
}

/// ServiceMonitor settings. Off by default because it needs the Prometheus Operator's CRDs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMonitorSettings {
    /// Create a ServiceMonitor.
    #[serde(default)]
    pub enabled: bool,
    /// Scrape interval, a Prometheus duration such as `30s`.
    #[serde(default = "default_scrape_interval")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"), length(max = 16))]
    pub interval: String,
    /// Namespace of the ServiceMonitor, e.g. the one the Prometheus Operator watches. Default:
    /// the MeshLogicAgent's. In another namespace the monitor cannot be owned by the agent: the
    /// operator deletes it itself when it is turned off, moved, or the agent is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub namespace: Option<String>,
    /// Extra labels of the ServiceMonitor, e.g. `release: prometheus` for a Prometheus that
    /// selects monitors by label. The operator's own labels win on a conflict.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub labels: BTreeMap<String, String>,
}

impl Default for ServiceMonitorSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            interval: default_scrape_interval(),
            namespace: None,
            labels: BTreeMap::new(),
        }
    }
}

fn default_scrape_interval() -> String {
    "30s".into()
}

/// Telemetry sink.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.sink != 'http' || has(self.endpoint)").message("telemetry.endpoint is required when telemetry.sink is http").field_path(".endpoint"))]
pub struct TelemetrySettings {
    /// Where telemetry goes: `none`, `dynamodb` (in `region`, with the AWS credentials) or
    /// `http` (POST of JSON to `endpoint`).
    #[serde(default)]
    pub sink: TelemetrySink,
    /// URL of the `http` sink, or an endpoint override for `dynamodb`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^https?://"))]
    pub endpoint: Option<String>,
    /// DynamoDB table of the `dynamodb` sink.
    #[serde(default = "default_table")]
    #[schemars(length(min = 3, max = 255))]
    pub table: String,
    /// Seconds between telemetry exports.
    #[serde(default = "default_telemetry_interval")]
    #[schemars(range(min = 10, max = 86_400))]
    pub interval_seconds: i32,
    /// Most telemetry records sent in one export: at most 25, DynamoDB `BatchWriteItem`'s limit
    /// of items per request. Records not delivered wait for the next export, oldest first.
    #[serde(
        default = "default_telemetry_batch_size",
        skip_serializing_if = "is_default_telemetry_batch_size"
    )]
    #[schemars(range(min = 1, max = 25), extend("default" = 25))]
    pub batch_size: i32,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            sink: TelemetrySink::default(),
            endpoint: None,
            table: default_table(),
            interval_seconds: default_telemetry_interval(),
            batch_size: default_telemetry_batch_size(),
        }
    }
}

/// DynamoDB `BatchWriteItem`'s limit of items per request.
pub const TELEMETRY_BATCH_MAX: i32 = 25;

fn default_telemetry_batch_size() -> i32 {
    TELEMETRY_BATCH_MAX
}
fn is_default_telemetry_batch_size(size: &i32) -> bool {
    *size == default_telemetry_batch_size()
}

fn default_table() -> String {
    "meshlogic-telemetry".into()
}
fn default_telemetry_interval() -> i32 {
    60
}

/// Telemetry sink kinds.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum TelemetrySink {
    #[default]
    None,
    Dynamodb,
    Http,
}

/// AWS authentication (seed chart `aws.*`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.useIRSA || has(self.credentialsSecret)").message("aws.credentialsSecret is required when aws.useIRSA is false").field_path(".credentialsSecret"))]
pub struct AwsSettings {
    /// Use IAM Roles for Service Accounts: annotate `serviceAccount` with
    /// `eks.amazonaws.com/role-arn`.
    #[serde(default = "default_true", rename = "useIRSA")]
    pub use_irsa: bool,
    /// Secret with the access key ID and secret access key (under `accessKeyIdKey` and
    /// `secretAccessKeyKey`), when IRSA is not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub credentials_secret: Option<String>,
    /// Key of the access key ID in `credentialsSecret`.
    #[serde(
        default = "default_access_key_id_key",
        skip_serializing_if = "is_default_access_key_id_key"
    )]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[-._a-zA-Z0-9]+$"),
        extend("default" = "aws-access-key-id")
    )]
    pub access_key_id_key: String,
    /// Key of the secret access key in `credentialsSecret`.
    #[serde(
        default = "default_secret_access_key_key",
        skip_serializing_if = "is_default_secret_access_key_key"
    )]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[-._a-zA-Z0-9]+$"),
        extend("default" = "aws-secret-access-key")
    )]
    pub secret_access_key_key: String,
}

impl Default for AwsSettings {
    fn default() -> Self {
        Self {
            use_irsa: true,
            credentials_secret: None,
            access_key_id_key: default_access_key_id_key(),
            secret_access_key_key: default_secret_access_key_key(),
        }
    }
}

fn default_access_key_id_key() -> String {
    names::probe_env::AWS_ACCESS_KEY_ID_KEY.into()
}
fn is_default_access_key_id_key(key: &String) -> bool {
    key == names::probe_env::AWS_ACCESS_KEY_ID_KEY
}
fn default_secret_access_key_key() -> String {
    names::probe_env::AWS_SECRET_ACCESS_KEY_KEY.into()
}
fn is_default_secret_access_key_key(key: &String) -> bool {
    key == names::probe_env::AWS_SECRET_ACCESS_KEY_KEY
}

/// The probe's ServiceAccount (seed chart `serviceAccount.*`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.create) || self.create || has(self.name)").message("serviceAccount.name is required when serviceAccount.create is false").field_path(".name"))]
pub struct ServiceAccountSettings {
    /// Create the ServiceAccount (and keep it as the spec says). When false the operator
    /// uses the existing ServiceAccount `name`, never creates nor changes it, and still binds
    /// the probe's RBAC to it.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    #[schemars(extend("default" = true))]
    pub create: bool,
    /// Name of the ServiceAccount: required when `create` is false; when `create` is true the
    /// operator creates it under this name. Default: `<agent name>-probe`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: Option<String>,
    /// Annotations on the ServiceAccount, e.g. `eks.amazonaws.com/role-arn` for IRSA. Not used
    /// when `create` is false: annotate your own ServiceAccount.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Default for ServiceAccountSettings {
    fn default() -> Self {
        Self {
            create: true,
            name: None,
            annotations: BTreeMap::new(),
        }
    }
}

fn is_true(value: &bool) -> bool {
    *value
}

/// Settings of the probe pods and their DaemonSet beyond what the operator sets (seed chart
/// `podAnnotations`, `podLabels`, `securityContext`, `affinity`, ...). Every default renders
/// the pods as the operator always has.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProbePodSettings {
    /// Annotations added to the probe pods. The operator's own (`agentmesh.io/inject`,
    /// `agentmesh.io/config-hash`, `prometheus.io/*`) win on a conflict.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub annotations: BTreeMap<String, String>,
    /// Labels added to the probe pods. The operator's own labels win on a conflict: the
    /// DaemonSet's selector labels (`app.kubernetes.io/name`, `app.kubernetes.io/instance`)
    /// can never be overridden.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub labels: BTreeMap<String, String>,
    /// Security context of the probe pods. Default: none at the pod level (the probe
    /// container has its own, from `ebpf.privileged` and `capabilities`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<PodSecurityContext>,
    /// Linux capabilities added to the probe container beyond the operator's (BPF, PERFMON,
    /// NET_ADMIN, SYS_PTRACE, DAC_READ_SEARCH), e.g. `SYS_ADMIN`. Duplicates are dropped.
    /// Ignored with `ebpf.privileged`, which grants every capability.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 32),
        inner(regex(pattern = r"^[A-Z][A-Z0-9_]*$"), length(min = 1, max = 64))
    )]
    pub capabilities: Vec<String>,
    /// Affinity of the probe pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// PriorityClass of the probe pods, e.g. `system-node-critical`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub priority_class_name: Option<String>,
    /// Run the probe pods in the node's network namespace. Their DNS policy is then
    /// `ClusterFirstWithHostNet`, so that the operator's trust API Service still resolves. The
    /// metrics port is then opened on the node itself.
    #[serde(default, skip_serializing_if = "is_false")]
    pub host_network: bool,
    /// Run the probe pods in the node's PID namespace (default), so that the probe sees every
    /// process of the node in its own `/proc` too.
    #[serde(
        default = "default_true",
        rename = "hostPID",
        skip_serializing_if = "is_true"
    )]
    #[schemars(extend("default" = true))]
    pub host_pid: bool,
    /// Volumes added to the probe pods, after the operator's (`config`, `btf`, `bpffs`,
    /// `cgroup`, `host-proc`: names a CEL rule refuses here).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(reserved_volume_rule()).message(Message::Message(reserved_volume_message())))]
    pub extra_volumes: Vec<Volume>,
    /// Volume mounts added to the probe container, after the operator's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub extra_volume_mounts: Vec<VolumeMount>,
    /// Environment variables added to the probe container, after the operator's. Naming one of
    /// the operator's own variables (NODE_NAME, MESHLOGIC_PROBE_CONFIG, MESHLOGIC_TRUST_API,
    /// MESHLOGIC_PROC_ROOT, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    /// AGENTMESH_LOG_LEVEL, AGENTMESH_LOG_FORMAT) is refused by a CEL rule: set those through
    /// their fields (`region`, `aws`, `logging`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new(reserved_env_rule()).message(Message::Message(reserved_env_message())))]
    pub extra_env: Vec<EnvVar>,
    /// Init containers of the probe pods, run before the probe starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub init_containers: Vec<Container>,
    /// Update strategy of the probe DaemonSet. Default: Kubernetes' (`RollingUpdate`, one
    /// node at a time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_strategy: Option<DaemonSetUpdateStrategy>,
}

impl Default for ProbePodSettings {
    fn default() -> Self {
        Self {
            annotations: BTreeMap::new(),
            labels: BTreeMap::new(),
            security_context: None,
            capabilities: Vec::new(),
            affinity: None,
            priority_class_name: None,
            host_network: false,
            host_pid: true,
            extra_volumes: Vec::new(),
            extra_volume_mounts: Vec::new(),
            extra_env: Vec::new(),
            init_containers: Vec::new(),
            update_strategy: None,
        }
    }
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// Names of the volumes the operator gives the probe pods.
pub const PROBE_VOLUMES: [&str; 5] = ["config", "btf", "bpffs", "cgroup", "host-proc"];

/// `['A', 'B']`: a CEL list of string literals (the names here need no escaping).
fn cel_list(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|name| format!("'{name}'")).collect();
    format!("[{}]", quoted.join(", "))
}

/// The CEL rule of `pod.extraEnv`: none of the operator's own variables.
fn reserved_env_rule() -> String {
    format!(
        "self.all(e, !(e.name in {}))",
        cel_list(&names::probe_env::OPERATOR_SET)
    )
}

fn reserved_env_message() -> String {
    format!(
        "pod.extraEnv must not set the operator's own variables ({}): use region, aws and logging",
        names::probe_env::OPERATOR_SET.join(", ")
    )
}

/// The CEL rule of `pod.extraVolumes`: none of the operator's volume names.
fn reserved_volume_rule() -> String {
    format!("self.all(v, !(v.name in {}))", cel_list(&PROBE_VOLUMES))
}

fn reserved_volume_message() -> String {
    format!(
        "pod.extraVolumes must not reuse the operator's volume names ({})",
        PROBE_VOLUMES.join(", ")
    )
}

/// Log settings of the probe (seed chart `logging.*`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoggingSettings {
    /// Least severe level logged.
    #[serde(default)]
    pub level: LogLevel,
    /// Log JSON objects, one a line; false logs human-readable text.
    #[serde(default = "default_true")]
    pub json_format: bool,
}

impl Default for LoggingSettings {
    fn default() -> Self {
        Self {
            level: LogLevel::default(),
            json_format: true,
        }
    }
}

/// Liveness and readiness probes of the probe container (seed chart `health.*`). Each of
/// `initialDelaySeconds` and `periodSeconds`, when set, applies to both probes; unset, each
/// probe keeps its own default.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthSettings {
    /// Give the probe container liveness (`/health`) and readiness (`/ready`) probes.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Seconds before the first check. Default: 10 for liveness, 2 for readiness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub initial_delay_seconds: Option<i32>,
    /// Seconds between checks. Default: 20 for liveness, 10 for readiness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub period_seconds: Option<i32>,
    /// Seconds a check may take.
    #[serde(default = "default_health_timeout")]
    #[schemars(range(min = 1, max = 600))]
    pub timeout_seconds: i32,
    /// Failed checks in a row before the container is restarted (liveness) or marked not
    /// ready (readiness).
    #[serde(default = "default_health_failure_threshold")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_threshold: i32,
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            initial_delay_seconds: None,
            period_seconds: None,
            timeout_seconds: default_health_timeout(),
            failure_threshold: default_health_failure_threshold(),
        }
    }
}

fn default_health_timeout() -> i32 {
    2
}
fn default_health_failure_threshold() -> i32 {
    3
}

/// Observed state of a MeshLogicAgent, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeshLogicAgentStatus {
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Nodes that should run the probe.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub desired_nodes: i32,
    /// Nodes where the probe is ready.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub ready_nodes: i32,
    /// Nodes running the current configuration.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub updated_nodes: i32,
    /// The tier in force on each node that has reported, with the reason when it differs from
    /// the requested tier.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 5000),
        extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["node"])
    )]
    pub nodes: Vec<NodeProbeStatus>,
    /// `Available`, `Progressing`, `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(transform = conditions_schema)]
    pub conditions: Conditions,
}

/// What the probe on one node reports about itself.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeProbeStatus {
    /// Node name.
    #[schemars(length(min = 1, max = 253))]
    pub node: String,
    /// Safety tier in force on the node.
    #[schemars(range(min = 1, max = 3))]
    pub tier: i32,
    /// Why the tier in force differs from the requested one (e.g. no BTF, BPF load refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub reason: Option<String>,
    /// BPF programs loaded.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub programs_loaded: i32,
    /// Where file opens are observed (tiers 2 and 3 with `ebpf.enableFile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_hook: Option<FileHook>,
    /// Last report received from the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_report_at: Option<Time>,
}
