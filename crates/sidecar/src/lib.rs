//! `agentmesh-sidecar`: the MCP proxy injected into every agent pod. It judges each MCP call of
//! its agent against the policy the operator serves (or the `AGENTMESH_POLICY` preset until the
//! operator answers), filters tool, prompt and resource lists, and reports what it decided to
//! the operator in batches signed with the identity's key.
//!
//! The rules live in the pure crates (`agentmesh-trust` decides, `agentmesh-identity` signs);
//! this crate is the adapter: HTTP in and out, the operator's config, metrics and health.

pub mod config;
pub mod health;
pub mod jsonrpc;
pub mod metrics;
pub mod operator;
pub mod peers;
pub mod policy;
pub mod proxy;
pub mod sse;

use std::sync::Arc;
use std::time::Duration;

use agentmesh_api::settings::Settings;
use agentmesh_identity::SigningKey;
use agentmesh_identity::keyfile::{KeyLoadError, private_key_from_env_value};
use agentmesh_runtime::shutdown_signal;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use config::Config;

pub use agentmesh_api::convert::now;

/// The service name of the sidecar's spans.
pub const SERVICE: &str = "agentmesh-sidecar";

/// Logs, and with `AGENTMESH_OTEL_ENABLED=true` traces: see [`agentmesh_runtime::traces`].
/// Keep what it returns until the process exits.
pub fn init_logging(
    settings: &Settings,
) -> Result<Option<agentmesh_runtime::traces::Traces>, String> {
    agentmesh_runtime::traces::init_from_settings(settings, SERVICE)
}

/// Loads the key named by `AGENTMESH_AGENT_PRIVATE_KEY`: the PEM itself, or a file path. A
/// path that does not exist yet (a Secret volume still being projected) is waited for; any
/// other error stops start-up naming the variable or the file.
async fn load_key(value: Option<String>) -> anyhow::Result<SigningKey> {
    let Some(value) = value else {
        anyhow::bail!(
            "{} is not set and there is no trust API to fetch the key from: the sidecar needs its identity's private key (PEM, or the path of a file holding it)",
            agentmesh_api::names::env::AGENT_PRIVATE_KEY
        );
    };
    let mut waited = false;
    loop {
        match private_key_from_env_value(&value) {
            Ok(key) => return Ok(key),
            Err(KeyLoadError::Read { path, source })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                if !waited {
                    tracing::warn!(path = %path.display(), "waiting for the private key file");
                    waited = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

async fn serve_metrics(
    listener: TcpListener,
    registry: Arc<prometheus_client::registry::Registry>,
) {
    agentmesh_runtime::serve(
        "metrics",
        listener,
        agentmesh_runtime::Plain,
        agentmesh_runtime::Limits::default(),
        move |request: hyper::Request<hyper::body::Incoming>, _peer| {
            let registry = registry.clone();
            async move {
                let response = match request.uri().path() {
                    agentmesh_api::names::paths::METRICS => hyper::Response::builder()
                        .header(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )
                        .body(proxy::full_body(metrics::encode(&registry))),
                    _ => hyper::Response::builder()
                        .status(404)
                        .body(proxy::full_body("not found: try /metrics")),
                };
                response.expect("valid response")
            }
        },
        shutdown_signal(),
    )
    .await;
}

/// Runs the sidecar until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    for note in config.notes() {
        tracing::warn!("{note}");
    }
    let governor = Arc::new(policy::Governor::initial(
        &config.settings,
        config.flags.policy_file.as_deref(),
    )?);
    let (metrics, mut registry) = metrics::Metrics::new();
    if let Some(spans) = agentmesh_runtime::traces::metrics("agentmesh_sidecar") {
        registry.register_collector(Box::new(spans));
    }
    metrics.trust_score.set(i64::from(governor.current().score));
    let health = health::Health::new(config.flags.healthy_file.clone(), governor.clone());

    let proxy_listener = TcpListener::bind(config.flags.proxy_addr)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "AGENTMESH_SIDECAR_PROXY_ADDR={}: {e}",
                config.flags.proxy_addr
            )
        })?;
    let metrics_listener = TcpListener::bind(config.flags.metrics_addr)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "AGENTMESH_SIDECAR_METRICS_ADDR={}: {e}",
                config.flags.metrics_addr
            )
        })?;
    tracing::info!(
        proxy = %proxy_listener.local_addr()?,
        metrics = %metrics_listener.local_addr()?,
        identity = ?config.identity,
        policy = %governor.current().policy_label,
        "agentmesh-sidecar listening"
    );
    tokio::spawn(serve_metrics(metrics_listener, Arc::new(registry)));

    let api = config.trust_api_url.clone().map(|url| {
        operator::TrustApi::new(
            url,
            config.flags.token_file.clone(),
            config.trust_api_tls.clone(),
        )
    });
    let outbox = api
        .as_ref()
        .map(|_| operator::Outbox::new(config.flags.report_queue, metrics.clone()));
    if let Some(api) = &api {
        tokio::spawn(operator::follow_config(
            api.clone(),
            governor.clone(),
            metrics.clone(),
        ));
    }

    let session_ttl = if config.settings.cache_enabled {
        Duration::from_secs(config.settings.cache_ttl_seconds)
    } else {
        Duration::ZERO
    };
    let proxy = Arc::new(proxy::Proxy::new(proxy::ProxyOptions {
        governor: governor.clone(),
        metrics: metrics.clone(),
        outbox: outbox.clone(),
        upstreams: config.upstreams.clone(),
        health: health.clone(),
        upstream_timeout: Duration::from_secs(config.flags.upstream_timeout_seconds),
        namespace: config
            .identity
            .as_deref()
            .and_then(|i| i.split_once('/'))
            .map(|(ns, _)| ns.to_owned())
            .or_else(|| config.pod_namespace.clone())
            .unwrap_or_else(|| "default".into()),
        session_ttl,
        inbound_upstream: config.inbound_upstream.clone(),
    }));
    let stop_reports = Arc::new(Notify::new());
    let key_value = config.settings.agent_private_key.clone();
    let key_task = {
        let health = health.clone();
        let peers = proxy.peers.clone();
        let (api, outbox, metrics, stop) = (
            api.clone(),
            outbox.clone(),
            metrics.clone(),
            stop_reports.clone(),
        );
        let identity = config.identity.clone();
        let interval = config.report_interval();
        tokio::spawn(async move {
            // A key of the identity's own is the pod's (the variable); one the operator made
            // is asked of the trust API, never written in the pod.
            let key = match (&key_value, &api) {
                (None, Some(api)) => operator::fetch_key(api, identity.as_deref()).await?,
                _ => load_key(key_value).await?,
            };
            tracing::info!(did = %agentmesh_identity::keys::Did::from_public_key(&key.verifying_key()), "key loaded");
            peers.set_key(key.clone());
            health.key_loaded()?;
            let reporter = match (api, outbox, identity) {
                (Some(api), Some(outbox), Some(identity)) => Some(tokio::spawn(
                    operator::report_forever(api, identity, key, outbox, interval, metrics, stop),
                )),
                _ => None,
            };
            anyhow::Ok(reporter)
        })
    };

    let drain = Duration::from_secs(config.flags.drain_seconds);
    let serving = tokio::spawn(proxy::serve(
        proxy_listener,
        proxy,
        shutdown_signal(),
        drain,
    ));
    // A key that cannot be loaded stops the sidecar; otherwise it serves until a signal.
    let reporter = tokio::select! {
        loaded = key_task => match loaded? {
            Ok(reporter) => reporter,
            Err(error) => return Err(error),
        },
        _ = shutdown_signal() => None,
    };
    serving.await?;
    health.stopping();
    stop_reports.notify_one();
    if let Some(reporter) = reporter {
        let _ = tokio::time::timeout(Duration::from_secs(5), reporter).await;
    }
    tracing::info!("agentmesh-sidecar stopped");
    Ok(())
}
