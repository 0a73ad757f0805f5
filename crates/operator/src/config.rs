//! Start-up configuration: the seed's `AGENTMESH_*` settings plus the operator's own flags.

use std::net::SocketAddr;
use std::time::Duration;

use agentmesh_api::settings::Settings;
use clap::Parser;

/// What `failurePolicy` the injection webhook is registered with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FailurePolicy {
    Fail,
    Ignore,
}

/// The operator's flags; each may also come from the environment variable named.
#[derive(Clone, Debug, Parser)]
#[command(name = "meshlogic-operator", version, about)]
pub struct Args {
    /// Namespace the operator runs in (its Lease, webhook Secret and Service live here; it is
    /// never injected).
    #[arg(long, env = "POD_NAMESPACE", default_value = "agentmesh")]
    pub namespace: String,

    /// Watch only this namespace (a namespace-scoped installation); every namespace when unset.
    #[arg(long, env = "MESHLOGIC_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,

    /// This replica's name, its identity in leader election.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,

    /// Trust API, `/health` and `/ready`.
    #[arg(long, env = "MESHLOGIC_TRUST_API_ADDR", default_value = "0.0.0.0:8080")]
    pub trust_api_addr: SocketAddr,

    /// Prometheus `/metrics`.
    #[arg(long, env = "MESHLOGIC_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,

    /// The mutating admission webhook (TLS).
    #[arg(long, env = "MESHLOGIC_WEBHOOK_ADDR", default_value = "0.0.0.0:8443")]
    pub webhook_addr: SocketAddr,

    /// Name of the Lease used for leader election.
    #[arg(
        long,
        env = "MESHLOGIC_LEADER_LEASE",
        default_value = "meshlogic-operator-leader"
    )]
    pub leader_lease: String,

    /// Seconds a leader's Lease lasts without renewal before another replica takes over.
    #[arg(long, env = "MESHLOGIC_LEASE_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=300))]
    pub lease_seconds: u64,

    /// Least time between two status writes of one identity when neither its tier nor its
    /// quarantine changed.
    #[arg(long, env = "MESHLOGIC_STATUS_INTERVAL_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub status_interval_seconds: u64,

    /// Create an AgentIdentity for an injected pod that names none that exists.
    #[arg(long, env = "MESHLOGIC_AUTO_CREATE_IDENTITIES", default_value_t = true, action = clap::ArgAction::Set)]
    pub auto_create_identities: bool,

    /// Image of the node probe (`repository:tag`), unless a MeshLogicAgent names its own.
    #[arg(long, env = "MESHLOGIC_PROBE_IMAGE_TAG", default_value = env!("CARGO_PKG_VERSION"))]
    pub probe_image_tag: String,

    /// Image of the injected sidecar.
    #[arg(long, env = "MESHLOGIC_SIDECAR_IMAGE", default_value = agentmesh_api::names::objects::SIDECAR_IMAGE)]
    pub sidecar_image: String,

    /// URL at which probes and sidecars reach this operator's trust API.
    #[arg(
        long,
        env = "MESHLOGIC_TRUST_API_URL",
        default_value = "http://agentmesh.agentmesh.svc:8080"
    )]
    pub trust_api_url: String,

    /// `failurePolicy` of the injection webhook.
    #[arg(
        long,
        env = "MESHLOGIC_WEBHOOK_FAILURE_POLICY",
        value_enum,
        default_value = "fail"
    )]
    pub webhook_failure_policy: FailurePolicy,
}

impl Args {
    pub fn lease_duration(&self) -> Duration {
        Duration::from_secs(self.lease_seconds)
    }

    pub fn status_interval(&self) -> Duration {
        Duration::from_secs(self.status_interval_seconds)
    }

    /// The leader-election identity: the pod name, else the host name and process id.
    pub fn holder_identity(&self) -> String {
        self.pod_name.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "operator".into());
            format!("{host}-{}", std::process::id())
        })
    }
}

/// Everything read at start-up.
#[derive(Clone, Debug)]
pub struct Config {
    pub args: Args,
    pub settings: Settings,
}

impl Config {
    /// Reads flags and the environment; a bad value is an error that names it.
    pub fn load() -> anyhow::Result<Self> {
        let args = Args::parse();
        let settings = Settings::from_env()?;
        if settings.otel_enabled {
            anyhow::bail!(
                "{}=true: OpenTelemetry export is not available in this version of the operator; set it to false",
                agentmesh_api::names::env::OTEL_ENABLED
            );
        }
        if settings.storage_backend != agentmesh_api::settings::StorageBackend::Memory {
            anyhow::bail!(
                "{}={:?}: only the memory backend is available in this version of the operator",
                agentmesh_api::names::env::STORAGE_BACKEND,
                settings.storage_backend
            );
        }
        Ok(Self { args, settings })
    }
}
