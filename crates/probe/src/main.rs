//! `meshlogic-probe --config FILE`: see the crate documentation and README ("The node probe").

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use agentmesh_api::names::paths;
use clap::Parser;
use meshlogic_probe::config::{
    DEFAULT_TOKEN_FILE, FileHookChoice, KubeAccess, Overrides, ProbeConfig,
};

/// The AgentMesh node probe (MeshLogic agent).
#[derive(Parser, Debug)]
#[command(name = "meshlogic-probe", version)]
struct Args {
    /// The probe configuration file: {"agent":"<namespace>/<name>","spec":{MeshLogicAgent spec}}.
    #[arg(long, env = "MESHLOGIC_PROBE_CONFIG")]
    config: PathBuf,
    /// Name of this node (the DaemonSet sets it from spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// Base URL of the operator's trust API, e.g. https://agentmesh.agentmesh.svc:8080.
    #[arg(long, env = "MESHLOGIC_TRUST_API")]
    trust_api: String,
    /// The operator's CA bundle (PEM): the only roots the trust API's certificate is checked
    /// with. Required with an https:// trust API.
    #[arg(long, env = "MESHLOGIC_TRUST_API_CA", hide_env_values = true)]
    trust_api_ca: Option<String>,
    /// File holding the bearer token sent to the trust API (re-read for every request).
    #[arg(long, env = "MESHLOGIC_TOKEN_FILE", default_value = DEFAULT_TOKEN_FILE)]
    token_file: PathBuf,
    /// Kubeconfig used to learn the names of the pods on this node; without it the in-cluster
    /// config or $KUBECONFIG is tried.
    #[arg(long, env = "MESHLOGIC_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Do not talk to the API server: reports carry pod UIDs only.
    #[arg(long, env = "MESHLOGIC_NO_KUBE", conflicts_with = "kubeconfig")]
    no_kube: bool,
    /// cgroup v2 mount point; overrides spec.cgroup.root.
    #[arg(long, env = "MESHLOGIC_CGROUP_ROOT")]
    cgroup_root: Option<PathBuf>,
    /// Address of /metrics and /health; overrides 0.0.0.0:<spec.metrics.port>.
    #[arg(long, env = "MESHLOGIC_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Kernel BTF the CO-RE programs are relocated against.
    #[arg(long, env = "MESHLOGIC_BTF_PATH", default_value = paths::KERNEL_BTF)]
    btf_path: PathBuf,
    /// procfs mount read at tier 1.
    #[arg(long, env = "MESHLOGIC_PROC_ROOT", default_value = "/proc")]
    proc_root: PathBuf,
    /// Report batches kept while the trust API is unreachable; the oldest are dropped beyond.
    #[arg(long, env = "MESHLOGIC_REPORT_QUEUE", default_value_t = 64)]
    report_queue: usize,
    /// Where file opens are observed: auto (fexit where the kernel allows it, else sys_exit),
    /// fexit or sys_exit (that hook or tier 1).
    #[arg(long, env = "MESHLOGIC_FILE_HOOK", default_value = "auto")]
    file_hook: FileHookChoice,
}

/// Logs as every AgentMesh component logs ([`agentmesh_runtime::logging`]), and with
/// `AGENTMESH_OTEL_ENABLED=true` exports traces to `AGENTMESH_OTEL_ENDPOINT` (the operator
/// passes its own settings on); a bad value stops start-up naming the variable.
fn init_logging() -> Result<Option<agentmesh_runtime::traces::Traces>, String> {
    use agentmesh_api::settings::Settings;
    let lookup = |name: &str| std::env::var(name).ok();
    let (level, format) = Settings::logging_from_lookup(lookup).map_err(|e| e.to_string())?;
    let (enabled, endpoint) = Settings::otel_from_lookup(lookup).map_err(|e| e.to_string())?;
    agentmesh_runtime::traces::init(level, format, enabled, &endpoint, "meshlogic-probe")
}

fn main() -> ExitCode {
    let args = Args::parse();
    let _traces = match init_logging() {
        Ok(traces) => traces,
        Err(message) => {
            eprintln!("meshlogic-probe: {message}");
            return ExitCode::from(2);
        }
    };
    meshlogic_probe::kernel::libbpf_log::to_tracing();
    let kube = if args.no_kube {
        KubeAccess::Disabled
    } else if let Some(path) = args.kubeconfig {
        KubeAccess::Kubeconfig(path)
    } else {
        KubeAccess::Infer
    };
    let overrides = Overrides {
        node_name: args.node_name,
        trust_api: args.trust_api,
        trust_api_ca: args.trust_api_ca,
        token_file: args.token_file,
        cgroup_root: args.cgroup_root,
        metrics_addr: args.metrics_addr,
        btf_path: args.btf_path,
        proc_root: args.proc_root,
        report_queue: args.report_queue,
        kube,
        file_hook: args.file_hook,
    };
    let config = match ProbeConfig::load(&args.config, overrides) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("meshlogic-probe: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("meshlogic-probe: tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let probe = match meshlogic_probe::run::start(config).await {
            Ok(probe) => probe,
            Err(error) => {
                eprintln!("meshlogic-probe: {error}");
                return ExitCode::from(2);
            }
        };
        tracing::info!(addr = %probe.listen_addr, tier = probe.status.tier(), "serving /metrics and /health");
        agentmesh_runtime::shutdown_signal().await;
        tracing::info!("shutting down");
        probe.shutdown();
        ExitCode::SUCCESS
    })
}
