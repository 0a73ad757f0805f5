//! Start-up configuration: the seed's `AGENTMESH_*` variables (every one read, a bad value
//! stops start-up naming the variable), what the injection webhook sets for the sidecar
//! (`AGENTMESH_IDENTITY`, `AGENTMESH_TRUST_API_URL`, `AGENTMESH_TRUST_API_CA`, `POD_NAME`,
//! `POD_NAMESPACE`), and the
//! sidecar's own flags, each with an environment fallback.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use agentmesh_api::settings::{Settings, StorageBackend};
use clap::Parser;

/// Environment variables the webhook sets for the sidecar.
pub mod env {
    pub const IDENTITY: &str = "AGENTMESH_IDENTITY";
    pub const TRUST_API_URL: &str = "AGENTMESH_TRUST_API_URL";
    /// The operator's CA bundle (PEM), required with an `https://` trust API.
    pub const TRUST_API_CA: &str = "AGENTMESH_TRUST_API_CA";
    pub const POD_NAME: &str = "POD_NAME";
    pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
    pub const UPSTREAMS: &str = "AGENTMESH_UPSTREAMS";
    pub const INBOUND_UPSTREAM: &str = "AGENTMESH_INBOUND_UPSTREAM";
}

/// The sidecar's flags (each also read from its variable).
#[derive(Parser, Debug, Clone)]
#[command(
    name = "agentmesh-sidecar",
    version,
    about = "The AgentMesh MCP proxy: judges every MCP call of its agent against the policy, filters lists, reports signed outcomes to the operator"
)]
pub struct Flags {
    /// Address of the MCP proxy and `/health`.
    #[arg(
        long,
        env = "AGENTMESH_SIDECAR_PROXY_ADDR",
        default_value = "0.0.0.0:8081"
    )]
    pub proxy_addr: SocketAddr,
    /// Address of `/metrics`.
    #[arg(
        long,
        env = "AGENTMESH_SIDECAR_METRICS_ADDR",
        default_value = "0.0.0.0:9091"
    )]
    pub metrics_addr: SocketAddr,
    /// File kept present while the sidecar holds its key and a policy (the liveness probe).
    #[arg(
        long,
        env = "AGENTMESH_SIDECAR_HEALTHY_FILE",
        default_value = agentmesh_api::names::paths::SIDECAR_HEALTHY_FILE
    )]
    pub healthy_file: PathBuf,
    /// The pod's ServiceAccount token for the trust API (a projected token of its audience,
    /// which the injector mounts), re-read for each request to the trust API.
    #[arg(
        long,
        env = "AGENTMESH_SIDECAR_TOKEN_FILE",
        default_value = agentmesh_api::names::paths::TRUST_API_TOKEN_FILE
    )]
    pub token_file: PathBuf,
    /// A TrustPolicy spec (YAML or JSON) enforced until the operator's policy arrives, instead
    /// of the `AGENTMESH_POLICY` preset: for pods without an operator, and for tests.
    #[arg(long, env = "AGENTMESH_SIDECAR_POLICY_FILE")]
    pub policy_file: Option<PathBuf>,
    /// Seconds between two report batches.
    #[arg(
        long,
        env = "AGENTMESH_SIDECAR_REPORT_INTERVAL_SECONDS",
        default_value_t = 2.0
    )]
    pub report_interval_seconds: f64,
    /// Outcomes kept while the operator cannot be reached (the oldest are dropped, counted).
    #[arg(long, env = "AGENTMESH_SIDECAR_REPORT_QUEUE", default_value_t = 10_000)]
    pub report_queue: usize,
    /// Seconds in-flight calls get to finish after SIGTERM.
    #[arg(long, env = "AGENTMESH_SIDECAR_DRAIN_SECONDS", default_value_t = 20)]
    pub drain_seconds: u64,
    /// Seconds an upstream gets to start answering a call.
    #[arg(
        long,
        env = "AGENTMESH_SIDECAR_UPSTREAM_TIMEOUT_SECONDS",
        default_value_t = 60
    )]
    pub upstream_timeout_seconds: u64,
}

/// An upstream declared without the operator (`AGENTMESH_UPSTREAMS=name=url,...`), for
/// hand-written pods; the governing TrustPolicy's `mcpServers` add to and override these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticUpstream {
    pub name: String,
    pub url: String,
}

/// Everything read at start-up.
#[derive(Clone, Debug)]
pub struct Config {
    pub settings: Settings,
    pub flags: Flags,
    /// `namespace/name` of the AgentIdentity, when known (`AGENTMESH_IDENTITY` + `POD_NAMESPACE`).
    pub identity: Option<String>,
    /// The operator's trust API; without it the sidecar enforces the `AGENTMESH_POLICY` preset
    /// alone and reports nothing.
    pub trust_api_url: Option<String>,
    /// TLS to an `https://` trust API: the operator's CA bundle as the only roots.
    pub trust_api_tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
    pub upstreams: Vec<StaticUpstream>,
    /// This agent's own MCP server, for requests from other agents (`/inbound/...`), e.g.
    /// `http://127.0.0.1:3000`.
    pub inbound_upstream: Option<String>,
}

/// A configuration error: names the variable.
#[derive(Debug, thiserror::Error)]
#[error("{variable}={value:?}: {expected}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub value: String,
    pub expected: String,
}

impl Config {
    /// Reads the process environment and the flags.
    pub fn load() -> anyhow::Result<Self> {
        let flags = Flags::parse();
        let settings = Settings::from_env()?;
        Ok(Self::from_parts(settings, flags, |name| {
            std::env::var(name).ok()
        })?)
    }

    pub fn from_parts(
        settings: Settings,
        flags: Flags,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let non_empty = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        if !(0.05..=3600.0).contains(&flags.report_interval_seconds) {
            return Err(ConfigError {
                variable: "AGENTMESH_SIDECAR_REPORT_INTERVAL_SECONDS",
                value: flags.report_interval_seconds.to_string(),
                expected: "seconds between 0.05 and 3600".into(),
            });
        }
        let pod_namespace = non_empty(env::POD_NAMESPACE);
        let identity = match non_empty(env::IDENTITY) {
            Some(name) if name.contains('/') => Some(name),
            Some(name) => match &pod_namespace {
                Some(namespace) => Some(format!("{namespace}/{name}")),
                None => {
                    return Err(ConfigError {
                        variable: env::POD_NAMESPACE,
                        value: String::new(),
                        expected: format!(
                            "the pod's namespace (fieldRef metadata.namespace) when {} names an identity without its namespace",
                            env::IDENTITY
                        ),
                    });
                }
            },
            None => None,
        };
        let trust_api_url = match non_empty(env::TRUST_API_URL) {
            Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                Some(url.trim_end_matches('/').to_owned())
            }
            Some(url) => {
                return Err(ConfigError {
                    variable: env::TRUST_API_URL,
                    value: url,
                    expected: "an http:// or https:// URL of the operator's trust API".into(),
                });
            }
            None => None,
        };
        let trust_api_tls = match (&trust_api_url, non_empty(env::TRUST_API_CA)) {
            (Some(url), Some(pem)) if url.starts_with("https://") => Some(
                agentmesh_runtime::client::tls_config(pem.as_bytes()).map_err(|problem| {
                    ConfigError {
                        variable: env::TRUST_API_CA,
                        value: format!("<{} bytes>", pem.len()),
                        expected: format!("the operator's CA bundle (PEM): {problem}"),
                    }
                })?,
            ),
            (Some(url), None) if url.starts_with("https://") => {
                return Err(ConfigError {
                    variable: env::TRUST_API_CA,
                    value: String::new(),
                    expected: format!(
                        "the operator's CA bundle (PEM), required with an https:// {}",
                        env::TRUST_API_URL
                    ),
                });
            }
            _ => None,
        };
        if trust_api_url.is_some() && identity.is_none() {
            return Err(ConfigError {
                variable: env::IDENTITY,
                value: String::new(),
                expected: format!(
                    "the AgentIdentity this sidecar acts for, required with {}",
                    env::TRUST_API_URL
                ),
            });
        }
        let upstreams = match non_empty(env::UPSTREAMS) {
            Some(text) => parse_upstreams(&text)?,
            None => Vec::new(),
        };
        let inbound_upstream = match non_empty(env::INBOUND_UPSTREAM) {
            Some(url) if url.starts_with("http://") => Some(url.trim_end_matches('/').to_owned()),
            Some(url) => {
                return Err(ConfigError {
                    variable: env::INBOUND_UPSTREAM,
                    value: url,
                    expected:
                        "the http:// URL of this agent's own MCP server, e.g. http://127.0.0.1:3000"
                            .into(),
                });
            }
            None => None,
        };
        Ok(Self {
            inbound_upstream,
            settings,
            flags,
            identity,
            trust_api_url,
            trust_api_tls,
            pod_name: non_empty(env::POD_NAME),
            pod_namespace,
            upstreams,
        })
    }

    pub fn report_interval(&self) -> Duration {
        Duration::from_secs_f64(self.flags.report_interval_seconds)
    }

    /// What the sidecar does not use of the seed's variables, said once at start-up rather
    /// than silently ignored.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.settings.storage_backend != StorageBackend::Memory {
            notes.push(
                "AGENTMESH_STORAGE_BACKEND: the sidecar keeps no audit store; its decisions go to the operator, which stores them"
                    .into(),
            );
        }
        notes
    }
}

/// `name=url[,name=url...]`.
pub fn parse_upstreams(text: &str) -> Result<Vec<StaticUpstream>, ConfigError> {
    let bad = |expected: &str| ConfigError {
        variable: env::UPSTREAMS,
        value: text.to_owned(),
        expected: expected.to_owned(),
    };
    let mut upstreams: Vec<StaticUpstream> = Vec::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (name, url) = item
            .split_once('=')
            .ok_or_else(|| bad("comma-separated name=url pairs"))?;
        let valid_name = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid_name {
            return Err(bad("names that are DNS labels (a-z, 0-9, -)"));
        }
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(bad("http:// or https:// URLs"));
        }
        if upstreams.iter().any(|u| u.name == name) {
            return Err(bad("each name once"));
        }
        upstreams.push(StaticUpstream {
            name: name.to_owned(),
            url: url.trim_end_matches('/').to_owned(),
        });
    }
    Ok(upstreams)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> Flags {
        Flags::parse_from(["agentmesh-sidecar"])
    }

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let settings = Settings::from_lookup(|_| None).unwrap();
        Config::from_parts(settings, flags(), |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn the_webhook_variables_name_the_identity() {
        let c = config(&[
            (env::IDENTITY, "researcher"),
            (env::POD_NAMESPACE, "agents"),
            (env::TRUST_API_URL, "http://agentmesh.agentmesh.svc:8080/"),
        ])
        .unwrap();
        assert_eq!(c.identity.as_deref(), Some("agents/researcher"));
        assert_eq!(
            c.trust_api_url.as_deref(),
            Some("http://agentmesh.agentmesh.svc:8080")
        );
        assert_eq!(c.flags.proxy_addr.port(), 8081);
        assert_eq!(c.flags.metrics_addr.port(), 9091);
    }

    #[test]
    fn bad_values_name_their_variable() {
        let e = config(&[
            (env::TRUST_API_URL, "agentmesh:8080"),
            (env::IDENTITY, "a/b"),
        ])
        .unwrap_err();
        assert_eq!(e.variable, env::TRUST_API_URL);
        let e = config(&[(env::TRUST_API_URL, "http://x:8080")]).unwrap_err();
        assert_eq!(e.variable, env::IDENTITY);
        let e = config(&[(env::IDENTITY, "researcher")]).unwrap_err();
        assert_eq!(e.variable, env::POD_NAMESPACE);
        let e = config(&[(env::UPSTREAMS, "Search=http://x")]).unwrap_err();
        assert_eq!(e.variable, env::UPSTREAMS);
        let e = config(&[(env::UPSTREAMS, "search=ftp://x")]).unwrap_err();
        assert!(e.to_string().starts_with("AGENTMESH_UPSTREAMS="), "{e}");
        // TLS to the trust API needs the operator's CA, and a CA that parses.
        let https = (env::TRUST_API_URL, "https://agentmesh.agentmesh.svc:8080");
        let e = config(&[https, (env::IDENTITY, "a/b")]).unwrap_err();
        assert_eq!(e.variable, env::TRUST_API_CA);
        let e = config(&[https, (env::IDENTITY, "a/b"), (env::TRUST_API_CA, "junk")]).unwrap_err();
        assert_eq!(e.variable, env::TRUST_API_CA);
        assert!(e.to_string().contains("no certificate"), "{e}");
    }

    #[test]
    fn an_https_trust_api_is_checked_against_the_operators_ca() {
        let (ca, _) = meshlogic_webhook_certs::new_ca(Duration::from_secs(3600)).unwrap();
        let c = config(&[
            (env::TRUST_API_URL, "https://agentmesh.agentmesh.svc:8080"),
            (env::IDENTITY, "a/b"),
            (env::TRUST_API_CA, &ca),
        ])
        .unwrap();
        assert!(c.trust_api_tls.is_some());
    }

    #[test]
    fn upstreams_parse() {
        let u =
            parse_upstreams("search=http://127.0.0.1:3001/, files=https://files:443/base").unwrap();
        assert_eq!(u[0].url, "http://127.0.0.1:3001");
        assert_eq!(u[1].name, "files");
        assert!(parse_upstreams("a=http://x,a=http://y").is_err());
    }
}
