//! Names of the pods on this node, from a watch of the API server restricted to the node
//! (`spec.nodeName=<node>`): pod UID -> `namespace/name` and its identity label.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use agentmesh_api::names::labels;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};

use crate::config::KubeAccess;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// `namespace/name`.
    pub name: String,
    /// The pod's `agentmesh.io/identity` label.
    pub identity: Option<String>,
}

pub type PodNames = Arc<RwLock<HashMap<String, PodInfo>>>;

/// A client as `access` says; `Ok(None)` when the API server is not to be used.
pub async fn client(access: &KubeAccess) -> anyhow::Result<Option<Client>> {
    let config = match access {
        KubeAccess::Disabled => return Ok(None),
        KubeAccess::Infer => kube::Config::infer().await?,
        KubeAccess::Kubeconfig(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?
        }
    };
    Ok(Some(Client::try_from(config)?))
}

fn info(pod: &Pod) -> Option<(String, PodInfo)> {
    let meta = &pod.metadata;
    let uid = meta.uid.clone()?;
    let name = format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    );
    let identity = meta
        .labels
        .as_ref()
        .and_then(|labels| labels.get(labels::IDENTITY).cloned());
    Some((uid, PodInfo { name, identity }))
}

/// Keeps `names` equal to the pods on `node`, forever (the watcher retries with backoff).
pub async fn watch(client: Client, node: String, names: PodNames) {
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    let mut relisting: Option<HashMap<String, PodInfo>> = None;
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => relisting = Some(HashMap::new()),
            Ok(Event::InitApply(pod)) => {
                if let (Some(list), Some((uid, info))) = (relisting.as_mut(), info(&pod)) {
                    list.insert(uid, info);
                }
            }
            Ok(Event::InitDone) => {
                if let Some(list) = relisting.take() {
                    *names.write().unwrap_or_else(|e| e.into_inner()) = list;
                }
            }
            Ok(Event::Apply(pod)) => {
                if let Some((uid, info)) = info(&pod) {
                    names
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(uid, info);
                }
            }
            Ok(Event::Delete(pod)) => {
                if let Some(uid) = pod.metadata.uid {
                    names
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&uid);
                }
            }
            Err(error) => tracing::warn!(%error, "pod watch"),
        }
    }
}
