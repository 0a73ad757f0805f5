//! Pods by UID: probes report cgroups' pod UIDs, sidecars authenticate with their pod's token.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::{broadcast, watch};

/// What the engine needs of a pod.
#[derive(Clone, Debug, PartialEq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub node: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Neither being deleted nor finished (`Succeeded`, `Failed`).
    pub running: bool,
}

impl PodInfo {
    /// Whether `identity` counts this pod as one of its own: by its selector, else by the pod's
    /// `agentmesh.io/identity` label. (Pods in other namespaces never are.)
    /// Allocates nothing: it runs for every identity of a namespace on each pod change.
    pub fn is_of(&self, identity: &agentmesh_api::identity::AgentIdentity) -> bool {
        identity.metadata.namespace.as_deref() == Some(self.namespace.as_str())
            && match &identity.spec.selector {
                Some(selector) => crate::governance::selects(Some(selector), &self.labels),
                None => {
                    self.labels
                        .get(agentmesh_api::names::labels::IDENTITY)
                        .map(String::as_str)
                        == identity.metadata.name.as_deref()
                }
            }
    }
}

#[derive(Clone)]
pub struct PodIndex {
    pods: Arc<RwLock<HashMap<String, PodInfo>>>,
    ready: watch::Sender<bool>,
    /// Pods that changed what the index keeps of them (before and after), for whoever listens.
    changes: broadcast::Sender<PodInfo>,
}

impl Default for PodIndex {
    fn default() -> Self {
        Self {
            pods: Arc::default(),
            ready: watch::channel(false).0,
            changes: broadcast::channel(1024).0,
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

    /// How many pods of `namespace` satisfy `predicate`.
    pub fn count_in(&self, namespace: &str, predicate: impl Fn(&PodInfo) -> bool) -> usize {
        let pods = self.pods.read().expect("pod index lock");
        pods.values()
            .filter(|p| p.namespace == namespace && predicate(p))
            .count()
    }

    /// Pods as they change (each change once as it was and once as it is). A reader that
    /// falls behind misses changes: fine for triggers of reconcilers that also resync.
    pub fn changes(&self) -> impl futures::Stream<Item = PodInfo> + Send + 'static {
        futures::stream::unfold(self.changes.subscribe(), |mut receiver| async move {
            loop {
                match receiver.recv().await {
                    Ok(pod) => return Some((pod, receiver)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
    }

    fn changed(&self, before: Option<PodInfo>, after: Option<&PodInfo>) {
        if before.as_ref() == after {
            return;
        }
        for pod in before.into_iter().chain(after.cloned()) {
            let _ = self.changes.send(pod);
        }
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
                        let before = self
                            .pods
                            .write()
                            .expect("pod index lock")
                            .insert(uid, info.clone());
                        self.changed(before, Some(&info));
                    }
                }
                watcher::Event::Delete(pod) => {
                    if let Some(uid) = pod.uid() {
                        let before = self.pods.write().expect("pod index lock").remove(&uid);
                        self.changed(before, None);
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
            running: pod.metadata.deletion_timestamp.is_none()
                && !matches!(
                    pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                ),
        },
    ))
}

#[cfg(test)]
mod tests {
    use agentmesh_api::identity::AgentIdentity;

    use super::*;

    fn identity(namespace: &str, name: &str, selector: Option<&str>) -> AgentIdentity {
        let mut spec = serde_json::json!({});
        if let Some(team) = selector {
            spec["selector"] = serde_json::json!({"matchLabels": {"team": team}});
        }
        let mut identity = AgentIdentity::new(name, serde_json::from_value(spec).unwrap());
        identity.metadata.namespace = Some(namespace.into());
        identity
    }

    fn pod(namespace: &str, labels: &[(&str, &str)]) -> PodInfo {
        PodInfo {
            namespace: namespace.into(),
            name: "p".into(),
            node: None,
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            running: true,
        }
    }

    #[test]
    fn a_pod_is_of_an_identity_only_by_its_exact_label_or_the_selector_in_its_namespace() {
        let label = agentmesh_api::names::labels::IDENTITY;
        let agent = identity("team-a", "agent", None);
        assert!(pod("team-a", &[(label, "agent")]).is_of(&agent));
        // Forged: the same label from another namespace, spelling variants, no label.
        assert!(!pod("team-b", &[(label, "agent")]).is_of(&agent));
        for variant in ["Agent", "agent ", "agent-", "agen", ""] {
            assert!(
                !pod("team-a", &[(label, variant)]).is_of(&agent),
                "{variant:?}"
            );
        }
        assert!(!pod("team-a", &[]).is_of(&agent));
        // An identity with a selector counts the pods it selects, not those naming it.
        let selecting = identity("team-a", "selecting", Some("x"));
        assert!(pod("team-a", &[("team", "x")]).is_of(&selecting));
        assert!(!pod("team-a", &[(label, "selecting")]).is_of(&selecting));
        assert!(!pod("team-b", &[("team", "x")]).is_of(&selecting));
    }
}
