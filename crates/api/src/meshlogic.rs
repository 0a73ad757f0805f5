//! `MeshLogicAgent`: the node probe DaemonSet, configured with the seed chart's values.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Conditions, PATH_PATTERN, conditions_schema};
use crate::names;

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
        }
    }
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
    /// Mount point of the cgroup v2 hierarchy on the node (`/sys/fs/cgroup`, or
    /// `/sys/fs/cgroup/unified` on hybrid hosts).
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
}

impl Default for ServiceMonitorSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            interval: default_scrape_interval(),
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
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            sink: TelemetrySink::default(),
            endpoint: None,
            table: default_table(),
            interval_seconds: default_telemetry_interval(),
        }
    }
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
    /// Secret with keys `aws-access-key-id` and `aws-secret-access-key`, when IRSA is not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub credentials_secret: Option<String>,
}

impl Default for AwsSettings {
    fn default() -> Self {
        Self {
            use_irsa: true,
            credentials_secret: None,
        }
    }
}

/// The probe's ServiceAccount.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountSettings {
    /// Annotations on the ServiceAccount, e.g. `eks.amazonaws.com/role-arn` for IRSA.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
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
    /// Last report received from the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_report_at: Option<Time>,
}
