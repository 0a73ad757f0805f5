//! The Kubernetes side of `agentmesh trust status`, kept thin: a client from the kubeconfig, one
//! list, a watch, and errors that name the cluster or the missing CRD.

use std::path::Path;

use agentmesh_api::AgentIdentity;
use anyhow::{Context, anyhow};
use futures::Stream;
use kube::api::ListParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Config};

/// The CustomResourceDefinition `trust status` reads.
const CRD: &str = "agentidentities.agentmesh.io";

/// A client and what the kubeconfig says about the cluster.
pub struct Cluster {
    client: Client,
    pub url: String,
    /// The kubeconfig context's namespace (`default` when it names none).
    pub default_namespace: String,
}

/// The cluster of `kubeconfig` (else `KUBECONFIG`, `~/.kube/config`, or the pod's service
/// account, as kubectl) in `context` (else the current one).
pub async fn connect(kubeconfig: Option<&Path>, context: Option<&str>) -> anyhow::Result<Cluster> {
    let options = KubeConfigOptions {
        context: context.map(str::to_owned),
        ..KubeConfigOptions::default()
    };
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(file, &options)
                .await
                .with_context(|| format!("loading kubeconfig {}", path.display()))?
        }
        None if context.is_some() => Config::from_kubeconfig(&options)
            .await
            .context("loading the kubeconfig (KUBECONFIG or ~/.kube/config)")?,
        None => Config::infer().await.context(
            "no cluster to talk to: no kubeconfig (KUBECONFIG, ~/.kube/config) and not in a pod",
        )?,
    };
    let url = config.cluster_url.to_string();
    let default_namespace = config.default_namespace.clone();
    let client = Client::try_from(config)
        .with_context(|| format!("making a client for the cluster at {url}"))?;
    Ok(Cluster {
        client,
        url,
        default_namespace,
    })
}

impl Cluster {
    /// AgentIdentities of `namespace`, or of all namespaces.
    pub fn api(&self, namespace: Option<&str>) -> Api<AgentIdentity> {
        match namespace {
            Some(namespace) => Api::namespaced(self.client.clone(), namespace),
            None => Api::all(self.client.clone()),
        }
    }

    pub async fn list(&self, api: &Api<AgentIdentity>) -> anyhow::Result<Vec<AgentIdentity>> {
        match api.list(&ListParams::default()).await {
            Ok(list) => Ok(list.items),
            Err(err) => Err(self.explain(err)),
        }
    }

    fn explain(&self, err: kube::Error) -> anyhow::Error {
        let url = &self.url;
        match err {
            kube::Error::Api(status) if status.code == 404 => anyhow!(
                "the cluster at {url} does not serve {CRD} (the CRD is not installed): install it with \
                 `agentmesh crds | kubectl apply -f -` or the agentmesh Helm chart"
            ),
            kube::Error::Api(status) => anyhow!(
                "the cluster at {url} refused to list AgentIdentities: {} ({} {})",
                status.message,
                status.code,
                status.reason
            ),
            kube::Error::SerdeError(err) => anyhow!(err).context(format!(
                "reading the AgentIdentities of the cluster at {url} (does {CRD} match this agentmesh?)"
            )),
            other => anyhow!(other).context(format!("cannot reach the cluster at {url}")),
        }
    }
}

/// Changes to the AgentIdentities of `api`, starting with a list of them; after an error the
/// watch resumes, with kube's default backoff.
pub fn watch(
    api: Api<AgentIdentity>,
) -> impl Stream<Item = Result<watcher::Event<AgentIdentity>, watcher::Error>> {
    watcher(api, watcher::Config::default()).default_backoff()
}
