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
    /// The webhook's serving certificate, once the webhook runs on this replica.
    pub webhook_certs: std::sync::OnceLock<Arc<crate::webhook::server::CertStore>>,
    /// The audit store's connection, as last checked.
    pub storage: Arc<crate::storage::Health>,
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
            storage: Arc::new(crate::storage::Health::new(crate::storage::Remote::of(
                &config,
            ))),
            events: crate::events::Events::new(client.clone(), config.args.holder_identity()),
            client,
            config,
            metrics,
            probes: ProbeRegistry::default(),
            webhook_certs: std::sync::OnceLock::new(),
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

    /// Why this replica must not get traffic yet, if it must not: a webhook without its
    /// serving certificate would fail every TLS handshake the API server starts.
    pub fn not_ready(&self) -> Option<&'static str> {
        match self.webhook_certs.get() {
            Some(store) if !store.is_loaded() => {
                Some("the webhook's serving certificate is not loaded yet")
            }
            _ => None,
        }
    }

    /// Whether this replica leads: only the leader writes status and ingests reports.
    pub fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }
}
