//! What the operator knows of the cluster: one watch per kind, shared by whoever reads it.
//!
//! - AgentIdentities: watched from start-up on every replica (the webhook resolves identities
//!   with it); the leader's trust engine, trust API and AgentIdentity reconciler read the same
//!   store, and the reconciler is driven by its changes ([`Shared::changes`]).
//! - TrustPolicies, pods and the operator's key Secrets: watched once this replica leads (only
//!   the leader needs them).
//!
//! Objects are decoded with [`DeserializeGuard`]: one that does not decode (a CRD served at a
//! version whose schema this build does not know, a field edited by hand) is logged, counted
//! and left out, and every other object is still seen; without it, the whole watch would fail
//! on every relist.

mod pods;

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use agentmesh_api::identity::AgentIdentity;
use agentmesh_api::policy::TrustPolicy;
use futures::{Stream, StreamExt, stream};
use k8s_openapi::api::core::v1::Secret;
use kube::Resource;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{self, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;

use crate::metrics::Metrics;

pub(crate) use pods::info as pod_info;
pub use pods::{PodIndex, PodInfo};

/// Changes kept for a slow reader of a shared watch before it lags (and is given every
/// object again).
const CHANGES_BUFFER: usize = 1024;

/// One kind's store and the stream of its changes, fed by one watch.
pub struct Shared<K: Resource + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    pub store: Store<K>,
    changes: broadcast::Sender<Arc<K>>,
}

impl<K: Resource + 'static> Clone for Shared<K>
where
    K::DynamicType: Eq + Hash + Clone,
{
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            changes: self.changes.clone(),
        }
    }
}

impl<K> Shared<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Default,
{
    /// Starts the watch of `api` (for as long as the process runs); returns at once.
    pub fn start(api: kube::Api<DeserializeGuard<K>>, metrics: Arc<Metrics>) -> Self {
        Self::start_with(api, watcher::Config::default(), metrics)
    }

    /// [`Shared::start`] with a watch configuration (a label selector).
    pub fn start_with(
        api: kube::Api<DeserializeGuard<K>>,
        config: watcher::Config,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (store, writer) = reflector::store_shared(CHANGES_BUFFER);
        let subscriber = writer.subscribe().expect("shared stores have subscribers");
        let (changes, _) = broadcast::channel(CHANGES_BUFFER);
        // Read at once, whether anyone listens or not, so the watch never waits on a reader.
        let forward = changes.clone();
        tokio::spawn(subscriber.for_each(move |object| {
            let _ = forward.send(object);
            async {}
        }));
        tokio::spawn(drain(guarded(api, config, writer, metrics)));
        Self { store, changes }
    }

    /// Every object now, then every change: the trigger of a controller on this watch. A
    /// reader that falls behind is given every object again.
    pub fn changes(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        let receiver = self.changes.subscribe();
        let store = self.store.clone();
        let now = self.store.state();
        stream::iter(now).chain(
            stream::unfold((receiver, store), |(mut receiver, store)| async move {
                let batch = match receiver.recv().await {
                    Ok(object) => vec![object],
                    Err(broadcast::error::RecvError::Lagged(_)) => store.state(),
                    Err(broadcast::error::RecvError::Closed) => return None,
                };
                Some((stream::iter(batch), (receiver, store)))
            })
            .flatten(),
        )
    }
}

/// The AgentIdentities, TrustPolicies and pods of the watched namespaces.
#[derive(Clone)]
pub struct Indexes {
    pub identities: Shared<AgentIdentity>,
    pub policies: Shared<TrustPolicy>,
    pub pods: PodIndex,
    /// The Secrets of the operator's own namespace it made
    /// (`app.kubernetes.io/managed-by=meshlogic-operator`): the identities' keys (and its
    /// certificate). It may read no Secret elsewhere.
    pub key_secrets: Shared<Secret>,
}

impl Indexes {
    /// The AgentIdentity index, started on every replica (the webhook reads it).
    pub fn identities(
        client: &kube::Client,
        watch_namespace: Option<&str>,
        metrics: Arc<Metrics>,
    ) -> Shared<AgentIdentity> {
        Shared::start(api(client, watch_namespace), metrics)
    }

    /// Adds the leader's watches (TrustPolicies, pods, the key Secrets of `home`, its own
    /// namespace) on `tasks`; returns once every index is filled.
    pub async fn lead(
        identities: Shared<AgentIdentity>,
        client: &kube::Client,
        watch_namespace: Option<&str>,
        home: &str,
        metrics: Arc<Metrics>,
        tasks: &mut tokio::task::JoinSet<()>,
    ) -> Self {
        let policies = Shared::start(api(client, watch_namespace), metrics.clone());
        let key_secrets = Shared::start_with(
            kube::Api::namespaced(client.clone(), home),
            watcher::Config::default().labels(&format!(
                "{}={}",
                agentmesh_api::names::labels::APP_MANAGED_BY,
                agentmesh_api::names::labels::MANAGED_BY_VALUE
            )),
            metrics,
        );
        let pods = PodIndex::default();
        tasks.spawn(pods.clone().run(api(client, watch_namespace)));
        let _ = identities.store.wait_until_ready().await;
        let _ = policies.store.wait_until_ready().await;
        let _ = key_secrets.store.wait_until_ready().await;
        pods.wait_until_ready().await;
        Self {
            identities,
            policies,
            pods,
            key_secrets,
        }
    }

    /// The objects of `namespace` in `store`.
    pub fn in_namespace<K>(store: &Store<K>, namespace: &str) -> Vec<Arc<K>>
    where
        K: Resource + Clone + 'static,
        K::DynamicType: Eq + Hash + Clone,
    {
        store
            .state()
            .into_iter()
            .filter(|object| object.meta().namespace.as_deref() == Some(namespace))
            .collect()
    }
}

/// An API for `K` over the watched namespaces (all, or one).
pub fn api<K>(client: &kube::Client, watch_namespace: Option<&str>) -> kube::Api<K>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match watch_namespace {
        Some(namespace) => kube::Api::namespaced(client.clone(), namespace),
        None => kube::Api::all(client.clone()),
    }
}

/// Watches `api` into `writer`, leaving out (and logging, and counting) objects that do not
/// decode.
fn guarded<K>(
    api: kube::Api<DeserializeGuard<K>>,
    config: watcher::Config,
    writer: Writer<K>,
    metrics: Arc<Metrics>,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Default,
{
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    watcher(api, config.any_semantic())
        .default_backoff()
        .map(move |event| event.map(|event| decoded(event, &kind, &metrics)))
        .filter_map(|event| async move {
            match event {
                Ok(Some(event)) => Some(Ok(event)),
                Ok(None) => None,
                Err(error) => Some(Err(error)),
            }
        })
        .reflect_shared(writer)
        .applied_objects()
}

/// The event with its object decoded; `None` for an object that does not decode.
fn decoded<K: Resource>(
    event: watcher::Event<DeserializeGuard<K>>,
    kind: &str,
    metrics: &Metrics,
) -> Option<watcher::Event<K>> {
    let skip = |object: DeserializeGuard<K>| match object.0 {
        Ok(object) => Some(object),
        Err(invalid) => {
            let name = invalid.metadata.name.as_deref().unwrap_or_default();
            let namespace = invalid.metadata.namespace.as_deref().unwrap_or_default();
            tracing::warn!(
                kind,
                object = %format!("{namespace}/{name}"),
                error = %invalid.error,
                "skipping an object that does not decode"
            );
            metrics.undecodable_object(kind);
            None
        }
    };
    Some(match event {
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitDone => watcher::Event::InitDone,
        watcher::Event::InitApply(object) => watcher::Event::InitApply(skip(object)?),
        watcher::Event::Apply(object) => watcher::Event::Apply(skip(object)?),
        watcher::Event::Delete(object) => watcher::Event::Delete(skip(object)?),
    })
}

async fn drain<S, T, E>(stream: S)
where
    S: Stream<Item = Result<T, E>>,
    E: std::fmt::Display,
{
    futures::pin_mut!(stream);
    while let Some(item) = stream.next().await {
        if let Err(error) = item {
            tracing::warn!(%error, "watch error");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(json: serde_json::Value) -> DeserializeGuard<AgentIdentity> {
        serde_json::from_value(json).expect("a guard always decodes")
    }

    fn identity(name: &str, spec: serde_json::Value) -> DeserializeGuard<AgentIdentity> {
        guard(serde_json::json!({
            "apiVersion": "agentmesh.io/v1alpha1",
            "kind": "AgentIdentity",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": spec,
        }))
    }

    #[test]
    fn an_object_that_does_not_decode_is_left_out_and_counted_and_the_rest_go_on() {
        let (metrics, registry) = Metrics::new();
        let good = identity("good", serde_json::json!({"capabilities": ["read:docs"]}));
        let bad = identity("bad", serde_json::json!({"capabilities": "not-a-list"}));
        assert!(bad.0.is_err(), "the fixture must not decode");

        let kept = decoded(watcher::Event::InitApply(good), "AgentIdentity", &metrics);
        assert!(
            matches!(kept, Some(watcher::Event::InitApply(i)) if i.metadata.name.as_deref() == Some("good"))
        );
        assert!(
            decoded(
                watcher::Event::InitApply(bad.clone()),
                "AgentIdentity",
                &metrics
            )
            .is_none()
        );
        assert!(decoded(watcher::Event::Apply(bad), "AgentIdentity", &metrics).is_none());
        // Markers of the watch pass through whatever the objects were.
        assert!(matches!(
            decoded::<AgentIdentity>(watcher::Event::InitDone, "AgentIdentity", &metrics),
            Some(watcher::Event::InitDone)
        ));
        let text = crate::metrics::encode(&registry);
        assert!(
            text.contains("meshlogic_operator_undecodable_objects_total{kind=\"AgentIdentity\"} 2"),
            "{text}"
        );
    }
}
