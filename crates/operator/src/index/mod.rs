//! What the operator knows of the cluster: one watch per kind, read by the trust engine, the
//! trust API and the reconcilers.

mod pods;

use agentmesh_api::identity::AgentIdentity;
use agentmesh_api::policy::TrustPolicy;
use futures::StreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};

pub use pods::{PodIndex, PodInfo};

/// The AgentIdentities, TrustPolicies and pods of the watched namespaces.
#[derive(Clone)]
pub struct Indexes {
    pub identities: Store<AgentIdentity>,
    pub policies: Store<TrustPolicy>,
    pub pods: PodIndex,
}

impl Indexes {
    /// Starts the watches on `tasks`; returns once every index is filled.
    pub async fn start(
        client: &kube::Client,
        watch_namespace: Option<&str>,
        tasks: &mut tokio::task::JoinSet<()>,
    ) -> Self {
        let (identities, identity_writer) = reflector::store();
        let (policies, policy_writer) = reflector::store();
        let config = watcher::Config::default().any_semantic();
        let identity_stream = reflector::reflector(
            identity_writer,
            watcher(api(client, watch_namespace), config.clone()),
        );
        let policy_stream =
            reflector::reflector(policy_writer, watcher(api(client, watch_namespace), config));
        tasks.spawn(drain(identity_stream.default_backoff()));
        tasks.spawn(drain(policy_stream.default_backoff()));
        let pods = PodIndex::default();
        tasks.spawn(pods.clone().run(api(client, watch_namespace)));

        let _ = identities.wait_until_ready().await;
        let _ = policies.wait_until_ready().await;
        pods.wait_until_ready().await;
        Self {
            identities,
            policies,
            pods,
        }
    }
}

/// An API for `K` over the watched namespaces (all, or one).
pub fn api<K>(client: &kube::Client, watch_namespace: Option<&str>) -> kube::Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match watch_namespace {
        Some(namespace) => kube::Api::namespaced(client.clone(), namespace),
        None => kube::Api::all(client.clone()),
    }
}

async fn drain<S, T, E>(stream: S)
where
    S: futures::Stream<Item = Result<T, E>>,
    E: std::fmt::Display,
{
    futures::pin_mut!(stream);
    while let Some(item) = stream.next().await {
        if let Err(error) = item {
            tracing::warn!(%error, "watch error");
        }
    }
}
