//! What every reconciler and server of the operator shares.

use std::sync::Arc;

use tokio::sync::watch;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::probes::ProbeRegistry;

pub struct Context {
    pub client: kube::Client,
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub probes: ProbeRegistry,
    /// The serving certificate of the webhook and of the trust API's TLS side, and the CA
    /// bundle their clients trust (kept current by [`crate::webhook::certs::Manager`]).
    pub certs: Arc<crate::webhook::server::CertStore>,
    /// The audit log's writer, its store and the store's state.
    pub storage: Arc<crate::storage::Audit>,
    pub events: crate::events::Events,
    /// The reconcilers' last status writes ([`crate::controllers::apply_status`]).
    pub status_writes: crate::controllers::StatusWrites,
    leading: watch::Receiver<bool>,
}

impl Context {
    pub fn new(
        client: kube::Client,
        config: Config,
        metrics: Arc<Metrics>,
        leading: watch::Receiver<bool>,
    ) -> Self {
        Self {
            storage: Arc::new(crate::storage::Audit::new(&config, metrics.clone())),
            events: crate::events::Events::new(client.clone(), config.args.holder_identity()),
            client,
            config,
            metrics,
            probes: ProbeRegistry::default(),
            certs: Arc::default(),
            status_writes: Default::default(),
            leading,
        }
    }

    /// An API for `K` over the watched namespaces (all, or `--watch-namespace`).
    pub fn watched_api<K>(&self) -> kube::Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        crate::index::api(&self.client, self.config.args.watch_namespace.as_deref())
    }

    /// Why this replica must not get traffic yet, if it must not: without its serving
    /// certificate it would fail every TLS handshake (the API server's to the webhook, probes'
    /// and sidecars' to the trust API).
    pub fn not_ready(&self) -> Option<&'static str> {
        (!self.certs.is_loaded()).then_some("the serving certificate is not loaded yet")
    }

    /// Whether this replica leads: only the leader writes status and ingests reports.
    pub fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }
}
