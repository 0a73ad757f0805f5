//! Start-up configuration: the seed's `AGENTMESH_*` settings plus the operator's own flags.

use std::net::SocketAddr;
use std::time::Duration;

use agentmesh_api::settings::Settings;
use clap::Parser;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// What `failurePolicy` the injection webhook is registered with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FailurePolicy {
    Fail,
    Ignore,
}

/// Where the webhook's serving certificate comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CertSource {
    /// A CA and a serving certificate the operator makes, rotates and trusts (`caBundle`).
    SelfManaged,
    /// A cert-manager `Certificate` writes the Secret; its CA injector fills `caBundle`.
    CertManager,
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

    /// Seconds between two looks for key Secrets whose AgentIdentity is gone (then deleted); a
    /// Secret younger than twice this is left alone.
    #[arg(long, env = "MESHLOGIC_KEY_SWEEP_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub key_sweep_seconds: u64,

    /// Audit records held while the audit store is down or slow; beyond it new records are
    /// dropped and counted (`meshlogic_operator_audit_dropped_total`).
    #[arg(long, env = "MESHLOGIC_AUDIT_BUFFER", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub audit_buffer: u64,

    /// Create an AgentIdentity for an injected pod that names none that exists.
    #[arg(long, env = "MESHLOGIC_AUTO_CREATE_IDENTITIES", default_value_t = true, action = clap::ArgAction::Set)]
    pub auto_create_identities: bool,

    /// Image of the node probe (`repository:tag`), unless a MeshLogicAgent names its own.
    #[arg(long, env = "MESHLOGIC_PROBE_IMAGE_TAG", default_value = env!("CARGO_PKG_VERSION"))]
    pub probe_image_tag: String,

    /// Namespaces whose MeshLogicAgents the operator honours, besides its own, comma-separated
    /// (`*`: any). A MeshLogicAgent decides what runs with kernel capabilities on every node;
    /// one elsewhere gets nothing made and `Degraded=True`, reason `NamespaceNotAllowed`.
    #[arg(
        long,
        env = "MESHLOGIC_AGENT_NAMESPACES",
        value_delimiter = ',',
        default_value = "meshlogic"
    )]
    pub agent_namespaces: Vec<String>,

    /// The ClusterRole the probes' ServiceAccounts are bound to (made by the chart: `get`,
    /// `list`, `watch` on pods and `create` on reports). The operator only binds it, so it needs
    /// no right to make ClusterRoles.
    #[arg(
        long,
        env = "MESHLOGIC_PROBE_CLUSTER_ROLE",
        default_value = "agentmesh-probe"
    )]
    pub probe_cluster_role: String,

    /// Image repositories a MeshLogicAgent's probe may run, comma-separated (`*`: any); one
    /// naming another gets nothing made and `Degraded=True`, reason `ImageNotAllowed`.
    #[arg(
        long,
        env = "MESHLOGIC_PROBE_IMAGES",
        value_delimiter = ',',
        default_value = agentmesh_api::names::objects::PROBE_IMAGE_REPOSITORY
    )]
    pub probe_images: Vec<String>,

    /// Image of the injected sidecar.
    #[arg(long, env = "MESHLOGIC_SIDECAR_IMAGE", default_value = agentmesh_api::names::objects::SIDECAR_IMAGE)]
    pub sidecar_image: String,

    /// URL at which probes and sidecars reach this operator's trust API: `https://`, its host
    /// one the serving certificate is made for (the Service's names are; this host is added).
    #[arg(
        long,
        env = "MESHLOGIC_TRUST_API_URL",
        default_value = "https://agentmesh.agentmesh.svc:8080",
        value_parser = https_url
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

    /// `clientConfig.url` of the webhook (e.g. `https://127.0.0.1:8443/inject` when the API
    /// server cannot reach a Service); when unset, the Service `--webhook-service`.
    #[arg(long, env = "MESHLOGIC_WEBHOOK_URL")]
    pub webhook_url: Option<String>,

    /// Service in front of the operator's webhook port, in its namespace.
    #[arg(long, env = "MESHLOGIC_WEBHOOK_SERVICE", default_value = "agentmesh")]
    pub webhook_service: String,

    /// `timeoutSeconds` of the webhook.
    #[arg(long, env = "MESHLOGIC_WEBHOOK_TIMEOUT_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u8).range(1..=30))]
    pub webhook_timeout_seconds: u8,

    /// Where the serving certificate comes from.
    #[arg(
        long,
        env = "MESHLOGIC_WEBHOOK_CERTS",
        value_enum,
        default_value = "self-managed"
    )]
    pub webhook_certs: CertSource,

    /// Secret (in the operator's namespace) holding the serving certificate.
    #[arg(
        long,
        env = "MESHLOGIC_WEBHOOK_SECRET",
        default_value = "agentmesh-webhook-tls"
    )]
    pub webhook_secret: String,

    /// Lifetime of a self-managed serving certificate, in seconds; renewed with a third left.
    #[arg(long, env = "MESHLOGIC_WEBHOOK_CERT_SECONDS", default_value_t = 90 * 86_400, value_parser = clap::value_parser!(u64).range(10..))]
    pub webhook_cert_seconds: u64,

    /// Lifetime of the self-managed CA, in seconds; replaced with a third left.
    #[arg(long, env = "MESHLOGIC_WEBHOOK_CA_SECONDS", default_value_t = 10 * 365 * 86_400, value_parser = clap::value_parser!(u64).range(60..))]
    pub webhook_ca_seconds: u64,

    /// cert-manager mode: the Certificate (in the operator's namespace) whose CA cert-manager
    /// injects into `caBundle`.
    #[arg(
        long,
        env = "MESHLOGIC_WEBHOOK_CERT_MANAGER_CERTIFICATE",
        default_value = "agentmesh-webhook"
    )]
    pub webhook_cert_manager_certificate: String,

    /// Require the API server's client certificate on the webhook port: a PEM file of the CAs
    /// that sign it (the API server presents it when its `--admission-control-config-file`
    /// names a kubeconfig with a client certificate for this webhook). Unset: any TLS client
    /// is served, and a forged AdmissionReview is bounded only by the namespace label and the
    /// rate of identity creation.
    #[arg(long, env = "MESHLOGIC_WEBHOOK_CLIENT_CA_FILE", value_parser = client_ca)]
    pub webhook_client_ca_file: Option<ClientCa>,

    /// With `MESHLOGIC_WEBHOOK_CLIENT_CA_FILE`: the names (subject common name or DNS
    /// subjectAltName) a client certificate must carry, comma-separated; any name the CA signs
    /// when empty.
    #[arg(
        long,
        env = "MESHLOGIC_WEBHOOK_CLIENT_NAMES",
        value_delimiter = ',',
        requires = "webhook_client_ca_file"
    )]
    pub webhook_client_names: Vec<String>,

    /// CPU request of the injected sidecar.
    #[arg(long, env = "MESHLOGIC_SIDECAR_CPU_REQUEST", default_value = "100m", value_parser = quantity)]
    pub sidecar_cpu_request: String,

    /// Memory request of the injected sidecar.
    #[arg(long, env = "MESHLOGIC_SIDECAR_MEMORY_REQUEST", default_value = "128Mi", value_parser = quantity)]
    pub sidecar_memory_request: String,

    /// CPU limit of the injected sidecar.
    #[arg(long, env = "MESHLOGIC_SIDECAR_CPU_LIMIT", default_value = "500m", value_parser = quantity)]
    pub sidecar_cpu_limit: String,

    /// Serve the sidecar-injection webhook and register its MutatingWebhookConfiguration (the
    /// chart's `sidecarInjector.enabled`).
    #[arg(long, env = "MESHLOGIC_WEBHOOK_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub webhook_enabled: bool,

    /// More conditions on the namespaces the webhook is sent, as a JSON LabelSelector ANDed with
    /// the `agentmesh-inject: enabled` label (the chart's `sidecarInjector.namespaceSelector`).
    #[arg(long, env = "MESHLOGIC_WEBHOOK_NAMESPACE_SELECTOR", value_parser = label_selector)]
    pub webhook_namespace_selector: Option<LabelSelector>,

    /// A ClusterRole that owns what the operator makes for its installation (the webhook
    /// configuration and certificate Secret), so that removing the installation (`helm
    /// uninstall`) garbage-collects them. When unset, the operator's Namespace owns the webhook
    /// configuration.
    #[arg(long, env = "MESHLOGIC_OWNER_CLUSTER_ROLE")]
    pub owner_cluster_role: Option<String>,

    /// Password of the Redis audit store (`AGENTMESH_STORAGE_BACKEND=redis`), from a Secret.
    #[arg(long, env = "AGENTMESH_REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<String>,

    /// Host of the PostgreSQL audit store (`AGENTMESH_STORAGE_BACKEND=postgres`).
    #[arg(long, env = "AGENTMESH_POSTGRES_HOST")]
    pub postgres_host: Option<String>,

    /// Port of the PostgreSQL audit store.
    #[arg(long, env = "AGENTMESH_POSTGRES_PORT", default_value_t = 5432, value_parser = clap::value_parser!(u16).range(1..))]
    pub postgres_port: u16,

    /// User of the PostgreSQL audit store.
    #[arg(long, env = "AGENTMESH_POSTGRES_USER", default_value = "agentmesh")]
    pub postgres_user: String,

    /// Database of the PostgreSQL audit store.
    #[arg(long, env = "AGENTMESH_POSTGRES_DATABASE", default_value = "agentmesh")]
    pub postgres_database: String,

    /// Password of the PostgreSQL audit store, from a Secret.
    #[arg(long, env = "AGENTMESH_POSTGRES_PASSWORD", hide_env_values = true)]
    pub postgres_password: Option<String>,

    /// Memory limit of the injected sidecar.
    #[arg(long, env = "MESHLOGIC_SIDECAR_MEMORY_LIMIT", default_value = "512Mi", value_parser = quantity)]
    pub sidecar_memory_limit: String,
}

/// The CA certificates of `MESHLOGIC_WEBHOOK_CLIENT_CA_FILE`, read and parsed at start-up.
#[derive(Clone, Debug)]
pub struct ClientCa {
    pub path: std::path::PathBuf,
    pub certificates: Vec<rustls::pki_types::CertificateDer<'static>>,
}

fn client_ca(path: &str) -> Result<ClientCa, String> {
    use rustls::pki_types::pem::PemObject;
    const VAR: &str = "MESHLOGIC_WEBHOOK_CLIENT_CA_FILE";
    let pem = std::fs::read(path).map_err(|error| format!("{VAR}: cannot read {path}: {error}"))?;
    let certificates = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("{VAR}: {path} is not a PEM certificate bundle: {error}"))?;
    if certificates.is_empty() {
        return Err(format!("{VAR}: {path} holds no PEM certificate"));
    }
    let mut roots = rustls::RootCertStore::empty();
    let (_, unusable) = roots.add_parsable_certificates(certificates.iter().cloned());
    if unusable > 0 {
        return Err(format!(
            "{VAR}: {path}: {unusable} certificate(s) cannot be parsed"
        ));
    }
    Ok(ClientCa {
        path: path.into(),
        certificates,
    })
}

/// A LabelSelector in JSON (`{"matchLabels": {...}, "matchExpressions": [...]}`).
fn label_selector(text: &str) -> Result<LabelSelector, String> {
    serde_json::from_str::<LabelSelector>(text)
        .map_err(|error| format!("{text:?} is not a JSON LabelSelector: {error}"))
}

/// An `https://` URL with a host: the trust API carries tokens, so never plain HTTP.
fn https_url(text: &str) -> Result<String, String> {
    match text.strip_prefix("https://") {
        Some(_) if meshlogic_webhook_certs::url_host(text).is_some() => {
            Ok(text.trim_end_matches('/').to_owned())
        }
        Some(_) => Err(format!("MESHLOGIC_TRUST_API_URL: {text:?} has no host")),
        None => Err(format!(
            "MESHLOGIC_TRUST_API_URL: {text:?} is not an https:// URL: probes and sidecars send their tokens to it, and the trust API answers them over TLS only"
        )),
    }
}

/// A Kubernetes resource quantity (`100m`, `0.5`, `128Mi`, `1G`, `1e3`).
fn quantity(text: &str) -> Result<String, String> {
    let digits_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(digits_end);
    let number_ok = !number.is_empty()
        && number.matches('.').count() <= 1
        && number.chars().any(|c| c.is_ascii_digit());
    let suffix_ok = matches!(
        suffix,
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
    ) || (suffix.len() > 1
        && (suffix.starts_with('e') || suffix.starts_with('E'))
        && suffix[1..]
            .trim_start_matches(['+', '-'])
            .chars()
            .all(|c| c.is_ascii_digit())
        && !suffix[1..].trim_start_matches(['+', '-']).is_empty());
    if number_ok && suffix_ok {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is not a Kubernetes quantity (like 100m, 0.5, 128Mi)"
        ))
    }
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
        if settings.storage_backend == agentmesh_api::settings::StorageBackend::Postgres
            && args.postgres_host.as_deref().unwrap_or("").is_empty()
        {
            anyhow::bail!(
                "{}=postgres needs AGENTMESH_POSTGRES_HOST",
                agentmesh_api::names::env::STORAGE_BACKEND
            );
        }
        Ok(Self { args, settings })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_selectors_are_json_label_selectors() {
        let selector = label_selector(
            r#"{"matchExpressions":[{"key":"env","operator":"In","values":["prod"]}]}"#,
        )
        .unwrap();
        assert_eq!(selector.match_expressions.unwrap()[0].key, "env");
        let error = label_selector("env=prod").unwrap_err();
        assert!(error.contains("not a JSON LabelSelector"), "{error}");
    }

    /// The trust API carries tokens: a plain `http://` URL stops start-up naming the variable.
    #[test]
    fn the_trust_api_url_must_be_https() {
        assert_eq!(
            https_url("https://agentmesh.agentmesh.svc:8080/"),
            Ok("https://agentmesh.agentmesh.svc:8080".to_owned())
        );
        for bad in [
            "http://agentmesh.agentmesh.svc:8080",
            "HTTP://x",
            "agentmesh:8080",
            "https://",
        ] {
            assert!(https_url(bad).is_err(), "{bad}");
        }
        let error = Args::try_parse_from([
            "meshlogic-operator",
            "--trust-api-url",
            "http://agentmesh.agentmesh.svc:8080",
        ])
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("MESHLOGIC_TRUST_API_URL: \"http://agentmesh.agentmesh.svc:8080\" is not an https:// URL"),
            "{error}"
        );
    }

    #[test]
    fn quantities_are_checked() {
        for good in ["100m", "0.5", "128Mi", "1G", "2", "1e3"] {
            assert_eq!(quantity(good), Ok(good.to_owned()));
        }
        for bad in ["", "m", "12 Mi", "1.2.3", "abc", "10MB", "1e"] {
            assert!(quantity(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_webhook_client_ca_must_be_a_readable_pem_bundle() {
        let dir = std::env::temp_dir().join(format!("client-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let error = client_ca(missing.to_str().unwrap()).unwrap_err();
        assert!(
            error.starts_with("MESHLOGIC_WEBHOOK_CLIENT_CA_FILE: cannot read"),
            "{error}"
        );
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let error = client_ca(junk.to_str().unwrap()).unwrap_err();
        assert!(error.contains("holds no PEM certificate"), "{error}");
        let garbled = dir.join("garbled.pem");
        std::fs::write(
            &garbled,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let error = client_ca(garbled.to_str().unwrap()).unwrap_err();
        assert!(error.contains("cannot be parsed"), "{error}");

        let (ca_pem, _) = crate::webhook::certs::new_ca(Duration::from_secs(3600)).unwrap();
        let good = dir.join("ca.pem");
        std::fs::write(&good, ca_pem).unwrap();
        let ca = client_ca(good.to_str().unwrap()).unwrap();
        assert_eq!(ca.certificates.len(), 1);

        // Names without a CA are refused at start-up.
        let error = Args::try_parse_from(["meshlogic-operator", "--webhook-client-names", "a"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("--webhook-client-ca-file"), "{error}");
        let args = Args::try_parse_from([
            "meshlogic-operator",
            "--webhook-client-ca-file",
            good.to_str().unwrap(),
            "--webhook-client-names",
            "kube-apiserver,front-proxy",
        ])
        .unwrap();
        assert_eq!(args.webhook_client_names, ["kube-apiserver", "front-proxy"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
