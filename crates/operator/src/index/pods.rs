//! Pods by UID: probes report cgroups' pod UIDs, sidecars authenticate with their pod's token.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;

/// What the engine needs of a pod.
#[derive(Clone, Debug, PartialEq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub node: Option<String>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone)]
pub struct PodIndex {
    pods: Arc<RwLock<HashMap<String, PodInfo>>>,
    ready: watch::Sender<bool>,
}

impl Default for PodIndex {
    fn default() -> Self {
        Self {
            pods: Arc::default(),
            ready: watch::channel(false).0,
        }
    }
}

impl PodIndex {
    pub fn get(&self, uid: &str) -> Option<PodInfo> {
        self.pods.read().expect("pod index lock").get(uid).cloned()
    }

    /// UIDs and pods on `node`.
    pub fn on_node(&self, node: &str) -> Vec<(String, PodInfo)> {
        let pods = self.pods.read().expect("pod index lock");
        pods.iter()
            .filter(|(_, p)| p.node.as_deref() == Some(node))
            .map(|(u, p)| (u.clone(), p.clone()))
            .collect()
    }

    pub async fn wait_until_ready(&self) {
        let mut ready = self.ready.subscribe();
        let _ = ready.wait_for(|r| *r).await;
    }

    /// Follows the pods of `api` for ever.
    pub async fn run(self, api: kube::Api<Pod>) {
        let stream = watcher(api, watcher::Config::default().any_semantic()).default_backoff();
        futures::pin_mut!(stream);
        let mut fresh: Option<HashMap<String, PodInfo>> = None;
        while let Some(event) = stream.next().await {
            let event = match event {
                Ok(event) => event,
                Err(error) => {
                    tracing::warn!(%error, "pod watch error");
                    continue;
                }
            };
            match event {
                watcher::Event::Init => fresh = Some(HashMap::new()),
                watcher::Event::InitApply(pod) => {
                    if let (Some(map), Some((uid, info))) = (fresh.as_mut(), info(&pod)) {
                        map.insert(uid, info);
                    }
                }
                watcher::Event::InitDone => {
                    if let Some(map) = fresh.take() {
                        *self.pods.write().expect("pod index lock") = map;
                    }
                    self.ready.send_replace(true);
                }
                watcher::Event::Apply(pod) => {
                    if let Some((uid, info)) = info(&pod) {
                        self.pods.write().expect("pod index lock").insert(uid, info);
                    }
                }
                watcher::Event::Delete(pod) => {
                    if let Some(uid) = pod.uid() {
                        self.pods.write().expect("pod index lock").remove(&uid);
                    }
                }
            }
        }
    }
}

fn info(pod: &Pod) -> Option<(String, PodInfo)> {
    Some((
        pod.uid()?,
        PodInfo {
            namespace: pod.namespace()?,
            name: pod.name_any(),
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            labels: pod.labels().clone(),
        },
    ))
}
