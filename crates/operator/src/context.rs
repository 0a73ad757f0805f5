//! What every reconciler and server of the operator shares.

use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::watch;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::probes::ProbeRegistry;

pub struct Context {
    pub client: kube::Client,
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub probes: ProbeRegistry,
    /// The trust engine, once this replica leads.
    pub engine: std::sync::OnceLock<Arc<crate::engine::Engine>>,
    recorder: Recorder,
    leading: watch::Receiver<bool>,
}

impl Context {
    pub fn new(
        client: kube::Client,
        config: Config,
        metrics: Arc<Metrics>,
        leading: watch::Receiver<bool>,
    ) -> Self {
        let reporter = Reporter {
            controller: agentmesh_api::names::FIELD_MANAGER.into(),
            instance: Some(config.args.holder_identity()),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            config,
            metrics,
            probes: ProbeRegistry::default(),
            engine: std::sync::OnceLock::new(),
            leading,
        }
    }

    /// An API for `K` over the watched namespaces (all, or `--watch-namespace`).
    pub fn watched_api<K>(&self) -> kube::Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match &self.config.args.watch_namespace {
            Some(namespace) => kube::Api::namespaced(self.client.clone(), namespace),
            None => kube::Api::all(self.client.clone()),
        }
    }

    /// Whether this replica leads: only the leader writes status and ingests reports.
    pub fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }

    /// Publishes a Kubernetes Event about `object`; a failure is logged, never fatal.
    pub async fn event(
        &self,
        object: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, object).await {
            tracing::warn!(%error, reason, "could not publish an Event");
        }
    }
}
