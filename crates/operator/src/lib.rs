//! `meshlogic-operator`: reconciles `AgentIdentity`, `TrustPolicy` and `MeshLogicAgent`,
//! ingests reports from probes and sidecars, computes trust with `agentmesh-trust` and writes
//! it back into status.
//!
//! Every replica serves `/health`, `/ready` and `/metrics`. One replica, elected with a Lease,
//! runs the reconcilers, ingests reports and writes status; when it loses the Lease it exits,
//! so that nothing it started goes on acting as leader, and its restart joins as a candidate.

pub mod conditions;
pub mod config;
pub mod context;
pub mod controllers;
pub mod engine;
pub mod error;
pub mod events;
pub mod governance;
pub mod index;
pub mod metrics;
pub mod probes;
pub mod runtime;
pub mod storage;
pub mod trust_api;
pub mod webhook;

use std::sync::{Arc, OnceLock};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::context::Context;
use crate::runtime::{crd_check, http, leader, logging, shutdown_signal};

/// Runs the operator until a termination signal, or until leadership is lost.
pub async fn run() -> anyhow::Result<()> {
    let config = Config::load()?;
    // Kept to the end of `run`: dropping it sends the spans still queued.
    let _traces = logging::init(&config.settings)?;
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    crd_check::ensure_installed(&client).await?;

    let (metrics, mut registry) = metrics::Metrics::new();
    if let Some(spans) = agentmesh_runtime::traces::metrics("meshlogic_operator") {
        registry.register_collector(Box::new(spans));
    }
    let (leading_tx, leading_rx) = watch::channel(false);
    let ctx = Arc::new(Context::new(
        client.clone(),
        config.clone(),
        metrics.clone(),
        leading_rx.clone(),
    ));

    let trust_listener = TcpListener::bind(config.args.trust_api_addr)
        .await
        .with_context(|| format!("binding the trust API to {}", config.args.trust_api_addr))?;
    let metrics_listener = TcpListener::bind(config.args.metrics_addr)
        .await
        .with_context(|| format!("binding /metrics to {}", config.args.metrics_addr))?;
    tracing::info!(
        trust_api = %config.args.trust_api_addr,
        metrics = %config.args.metrics_addr,
        identity = %config.args.holder_identity(),
        "meshlogic-operator starting"
    );
    let registry = Arc::new(registry);
    let mut servers = tokio::task::JoinSet::new();
    servers.spawn(http::serve("metrics", metrics_listener, move |_request| {
        let body = metrics::encode(&registry);
        async move {
            http::text(
                hyper::StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                body,
            )
        }
    }));
    // Every replica loads the serving certificate (the webhook's, and the trust API's TLS);
    // only the leader writes it.
    webhook::start_certificates(&ctx);
    // Every replica keeps the AgentIdentities (the webhook and the trust API's key hand-out
    // read them).
    let identities = index::Indexes::identities(
        &client,
        config.args.watch_namespace.as_deref(),
        metrics.clone(),
    );
    let engine_slot = Arc::new(OnceLock::new());
    servers.spawn(trust_api::serve(
        trust_listener,
        webhook::server::acceptor(ctx.certs.clone(), None)?,
        ctx.clone(),
        engine_slot.clone(),
        identities.store.clone(),
    ));
    tokio::spawn(ctx.storage.clone().run());
    // Every replica serves the webhook; only the leader writes its certificate and configuration.
    if config.args.webhook_enabled {
        webhook::start(ctx.clone(), identities.store.clone(), &mut servers).await?;
    } else {
        tracing::info!("sidecar injection disabled (MESHLOGIC_WEBHOOK_ENABLED=false)");
    }

    let elector = leader::LeaderElector::new(
        client,
        &config.args.namespace,
        &config.args.leader_lease,
        &config.args.holder_identity(),
        config.args.lease_duration(),
    );
    tokio::spawn(elector.run(leading_tx));

    let mut leading = leading_rx;
    tokio::select! {
        _ = shutdown_signal() => {
            drain(servers).await;
            return Ok(());
        }
        changed = leading.wait_for(|leads| *leads) => { changed?; }
    }
    metrics.is_leader.set(1);
    ctx.storage.set_leading(true);
    tracing::info!("leading: starting the reconcilers");
    let mut controllers = tokio::task::JoinSet::new();
    let indexes = index::Indexes::lead(
        identities,
        &ctx.client,
        config.args.watch_namespace.as_deref(),
        &config.args.namespace,
        metrics.clone(),
        &mut controllers,
    )
    .await;
    let writer = engine::StatusWriter::new(ctx.client.clone(), metrics.clone(), ctx.events.clone());
    let engine = engine::Engine::new(
        engine::EngineConfig::of(&config),
        &indexes,
        writer,
        metrics.clone(),
        ctx.storage.clone(),
    );
    engine.load_baselines().await;
    engine.run(&mut controllers);
    let _ = engine_slot.set(engine.clone());
    controllers::start(
        Arc::new(controllers::Reconcilers {
            ctx: ctx.clone(),
            engine,
            indexes,
        }),
        &mut controllers,
    );

    tokio::select! {
        _ = shutdown_signal() => {
            tracing::info!("terminating");
            controllers.abort_all();
            ctx.storage.drain(AUDIT_DRAIN).await;
            drain(servers).await;
            Ok(())
        }
        _ = leading.wait_for(|leads| !*leads) => {
            controllers.abort_all();
            ctx.storage.set_leading(false);
            ctx.storage.drain(AUDIT_DRAIN).await;
            anyhow::bail!("lost leadership; exiting so that a fresh start rejoins as a candidate")
        }
    }
}

/// Longest the audit records still pending may take to be written before the process exits.
const AUDIT_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits for the servers to finish what is in flight (each stops on SIGTERM and drains), at
/// most their drain period.
async fn drain(mut servers: tokio::task::JoinSet<()>) {
    let period = agentmesh_runtime::Limits::default().drain + std::time::Duration::from_secs(1);
    let _ = tokio::time::timeout(period, async {
        while servers.join_next().await.is_some() {}
    })
    .await;
}
