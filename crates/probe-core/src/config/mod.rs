//! Start-up configuration: the MeshLogicAgent file written by the operator plus flags and
//! environment variables. Parsed once into [`ProbeConfig`]; every bad value is an error that
//! names its field, flag or variable.
//!
//! The file (a ConfigMap key mounted into the pod) is JSON:
//!
//! ```json
//! {"agent": "meshlogic/meshlogic-agent", "spec": { ...MeshLogicAgentSpec, camelCase... }}
//! ```
//!
//! `spec` is exactly the MeshLogicAgent's spec as the operator serializes it; fields left out
//! take the CRD's defaults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use agentmesh_api::MeshLogicAgentSpec;
use agentmesh_api::meshlogic::{
    CgroupDriver, FileHook, RING_BUFFER_MAX, RING_BUFFER_MIN, TELEMETRY_BATCH_MAX, TelemetrySink,
};
use serde::Deserialize;

/// The trust-API token: a projected ServiceAccount token of the trust API's audience, which
/// the operator mounts into the probe container (its API-server token stays where Kubernetes
/// mounts it, for the pod watch).
pub const DEFAULT_TOKEN_FILE: &str = agentmesh_api::names::paths::TRUST_API_TOKEN_FILE;

/// A configuration error: what is wrong, naming the field, flag or variable.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

fn bad(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        message: message.into(),
    }
}

/// The probe's configuration file.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// `namespace/name` of the MeshLogicAgent.
    pub agent: String,
    pub spec: MeshLogicAgentSpec,
}

/// Settings that come from flags or environment, not from the MeshLogicAgent.
#[derive(Debug, Clone)]
pub struct Overrides {
    pub node_name: String,
    pub trust_api: String,
    /// The operator's CA bundle (PEM): required with an `https://` trust API.
    pub trust_api_ca: Option<String>,
    pub token_file: PathBuf,
    pub cgroup_root: Option<PathBuf>,
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub btf_path: PathBuf,
    pub proc_root: PathBuf,
    pub report_queue: usize,
    pub kube: KubeAccess,
    pub file_hook: FileHookChoice,
}

/// Which hook observes file opens (`--file-hook`, `MESHLOGIC_FILE_HOOK`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FileHookChoice {
    /// fexit where it attaches and fires here, else the `sys_exit` tracepoint.
    #[default]
    Auto,
    /// This hook only: a kernel that refuses it gets tier 1, with the reason.
    Only(FileHook),
}

impl std::str::FromStr for FileHookChoice {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "auto" => Ok(Self::Auto),
            "fexit" => Ok(Self::Only(FileHook::Fexit)),
            "sys_exit" => Ok(Self::Only(FileHook::SysExit)),
            other => Err(format!(
                "MESHLOGIC_FILE_HOOK {other:?}: expected auto, fexit or sys_exit"
            )),
        }
    }
}

/// How the probe reaches the API server to learn the names of the pods on its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeAccess {
    /// In-cluster config or `KUBECONFIG`, whichever kube finds.
    Infer,
    /// A kubeconfig file.
    Kubeconfig(PathBuf),
    /// No API server: reports carry pod UIDs only.
    Disabled,
}

/// The safety tier a probe is asked for (the tier in force may be lower: see `run`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    UserMode = 1,
    ReadOnly = 2,
    Blocking = 3,
}

impl Tier {
    pub fn number(self) -> u8 {
        self as u8
    }
}

/// Everything the probe needs, validated.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    pub agent: String,
    pub node_name: String,
    pub requested_tier: Tier,
    pub enable_process: bool,
    pub enable_file: bool,
    pub enable_network: bool,
    pub ring_buffer_size: u32,
    pub mute_paths: Vec<String>,
    pub cgroup_root: PathBuf,
    pub cgroup_driver: CgroupDriver,
    pub epsilon: f64,
    pub enable_noise: bool,
    pub metrics_enabled: bool,
    pub metrics_addr: std::net::SocketAddr,
    pub telemetry_sink: TelemetrySink,
    pub telemetry_endpoint: Option<String>,
    /// DynamoDB table of the `dynamodb` sink (`spec.telemetry.table`).
    pub telemetry_table: String,
    /// `spec.customerId`: written with every telemetry item.
    pub customer_id: String,
    /// `spec.region`: the AWS region of the `dynamodb` sink.
    pub region: String,
    pub telemetry_interval: Duration,
    /// Most telemetry records sent in one export (`spec.telemetry.batchSize`).
    pub telemetry_batch_size: usize,
    pub report_interval: Duration,
    pub trust_api: String,
    /// The CA bundle (PEM) the trust API's certificate is checked with.
    pub trust_api_ca: Option<String>,
    pub token_file: PathBuf,
    pub btf_path: PathBuf,
    pub proc_root: PathBuf,
    pub report_queue: usize,
    pub kube: KubeAccess,
    /// Only tasks under a watched pod cgroup are observed (always on outside benchmarks).
    pub filter_pods: bool,
    /// Skip opens of the container runtime setting containers up (see
    /// [`crate::kernel::KernelOptions::skip_runtime_opens`]); always on but in tests.
    pub skip_runtime_opens: bool,
    /// Which hook observes file opens.
    pub file_hook: FileHookChoice,
    /// A fault for tests, never set otherwise: the probe's fexit program is aimed at a
    /// function whose arguments it cannot read, so the kernel's verifier refuses it after the
    /// empty pair fired — the path where `auto` loads the probe again with `sys_exit`.
    pub inject_fexit_load_failure: bool,
}

impl ProbeConfig {
    /// Reads and validates the configuration file, then applies the overrides.
    pub fn load(path: &Path, overrides: Overrides) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            bad(
                "--config",
                format!("cannot read {}: {error}", path.display()),
            )
        })?;
        Self::from_json(&text, overrides)
    }

    pub fn from_json(text: &str, overrides: Overrides) -> Result<Self, ConfigError> {
        let deserializer = &mut serde_json::Deserializer::from_str(text);
        let file: ConfigFile = serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let path = error.path().to_string();
            // "." is the file itself; "" an unknown top-level field named "".
            let field = if path == "." || path.is_empty() {
                "config file".to_string()
            } else {
                path
            };
            bad(field, error.into_inner().to_string())
        })?;
        Self::from_file(file, overrides)
    }

    pub fn from_file(file: ConfigFile, overrides: Overrides) -> Result<Self, ConfigError> {
        let ConfigFile { agent, spec } = file;
        match agent.split_once('/') {
            Some((ns, name)) if is_dns_label(ns) && is_dns_subdomain(name) => {}
            _ => {
                return Err(bad(
                    "agent",
                    format!("must be namespace/name, got {agent:?}"),
                ));
            }
        }
        if overrides.node_name.is_empty() {
            return Err(bad("NODE_NAME (--node-name)", "must not be empty"));
        }
        let https = overrides.trust_api.starts_with("https://");
        if !(https || overrides.trust_api.starts_with("http://")) {
            return Err(bad(
                "MESHLOGIC_TRUST_API (--trust-api)",
                format!(
                    "must be an https:// (or, outside a cluster, http://) URL, got {:?}",
                    overrides.trust_api
                ),
            ));
        }
        let trust_api_ca = overrides
            .trust_api_ca
            .clone()
            .filter(|ca| !ca.trim().is_empty());
        if https && trust_api_ca.is_none() {
            return Err(bad(
                "MESHLOGIC_TRUST_API_CA",
                "must hold the operator's CA bundle (PEM) with an https:// trust API",
            ));
        }
        let requested_tier = match spec.safety_tier {
            1 => Tier::UserMode,
            2 => Tier::ReadOnly,
            3 => Tier::Blocking,
            other => {
                return Err(bad(
                    "spec.safetyTier",
                    format!("must be 1, 2 or 3, got {other}"),
                ));
            }
        };
        let size = spec.ebpf.ring_buffer_size;
        if !(RING_BUFFER_MIN..=RING_BUFFER_MAX).contains(&size) || size.count_ones() != 1 {
            return Err(bad(
                "spec.ebpf.ringBufferSize",
                format!(
                    "must be a power of two from {RING_BUFFER_MIN} to {RING_BUFFER_MAX}, got {size}"
                ),
            ));
        }
        if spec.ebpf.mute_paths.len() > 64 {
            return Err(bad("spec.ebpf.mutePaths", "at most 64 paths"));
        }
        for (i, path) in spec.ebpf.mute_paths.iter().enumerate() {
            if !path.starts_with('/') || path.len() > 128 || path.contains('\0') {
                return Err(bad(
                    format!("spec.ebpf.mutePaths[{i}]"),
                    format!("must be an absolute path of at most 128 bytes, got {path:?}"),
                ));
            }
        }
        let cgroup_root = match overrides.cgroup_root {
            Some(root) => root,
            None => PathBuf::from(&spec.cgroup.root),
        };
        if !cgroup_root.is_absolute() {
            return Err(bad(
                "spec.cgroup.root (--cgroup-root)",
                format!("must be an absolute path, got {}", cgroup_root.display()),
            ));
        }
        let epsilon = spec.privacy.epsilon;
        if !(epsilon.is_finite() && epsilon > 0.0 && epsilon <= 100.0) {
            return Err(bad(
                "spec.privacy.epsilon",
                format!("must be > 0 and <= 100, got {epsilon}"),
            ));
        }
        let port = u16::try_from(spec.metrics.port)
            .ok()
            .filter(|port| *port > 0)
            .ok_or_else(|| {
                bad(
                    "spec.metrics.port",
                    format!("must be 1-65535, got {}", spec.metrics.port),
                )
            })?;
        if !(1..=3600).contains(&spec.report_interval_seconds) {
            return Err(bad(
                "spec.reportIntervalSeconds",
                format!("must be 1-3600, got {}", spec.report_interval_seconds),
            ));
        }
        if !(10..=86_400).contains(&spec.telemetry.interval_seconds) {
            return Err(bad(
                "spec.telemetry.intervalSeconds",
                format!("must be 10-86400, got {}", spec.telemetry.interval_seconds),
            ));
        }
        let batch_size = spec.telemetry.batch_size;
        if !(1..=TELEMETRY_BATCH_MAX).contains(&batch_size) {
            return Err(bad(
                "spec.telemetry.batchSize",
                format!("must be 1-{TELEMETRY_BATCH_MAX}, got {batch_size}"),
            ));
        }
        if spec.telemetry.sink == TelemetrySink::Http {
            match &spec.telemetry.endpoint {
                Some(url) if url.starts_with("http://") => {}
                Some(url) => {
                    return Err(bad(
                        "spec.telemetry.endpoint",
                        format!("this probe sends telemetry over http:// only, got {url:?}"),
                    ));
                }
                None => {
                    return Err(bad(
                        "spec.telemetry.endpoint",
                        "required when spec.telemetry.sink is http",
                    ));
                }
            }
        }
        if overrides.report_queue == 0 {
            return Err(bad("--report-queue", "must be at least 1"));
        }
        Ok(Self {
            agent,
            node_name: overrides.node_name,
            requested_tier,
            enable_process: spec.ebpf.enable_process,
            enable_file: spec.ebpf.enable_file,
            enable_network: spec.ebpf.enable_network,
            ring_buffer_size: size as u32,
            mute_paths: spec.ebpf.mute_paths.clone(),
            cgroup_root,
            cgroup_driver: spec.cgroup.driver,
            epsilon,
            enable_noise: spec.privacy.enable_noise,
            metrics_enabled: spec.metrics.enabled,
            metrics_addr: overrides
                .metrics_addr
                .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], port))),
            telemetry_sink: spec.telemetry.sink,
            telemetry_endpoint: spec.telemetry.endpoint.clone(),
            telemetry_table: spec.telemetry.table.clone(),
            customer_id: spec.customer_id.clone(),
            region: spec.region.clone(),
            telemetry_interval: Duration::from_secs(spec.telemetry.interval_seconds as u64),
            telemetry_batch_size: batch_size as usize,
            report_interval: Duration::from_secs(spec.report_interval_seconds as u64),
            trust_api: overrides.trust_api.trim_end_matches('/').to_string(),
            trust_api_ca,
            token_file: overrides.token_file,
            btf_path: overrides.btf_path,
            proc_root: overrides.proc_root,
            report_queue: overrides.report_queue,
            kube: overrides.kube,
            filter_pods: true,
            skip_runtime_opens: true,
            file_hook: overrides.file_hook,
            inject_fexit_load_failure: false,
        })
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests;
