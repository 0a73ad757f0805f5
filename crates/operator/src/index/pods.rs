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
    /// `spec.serviceAccountName` (`default` when unset, as the API server defaults it).
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    /// Neither being deleted nor finished (`Succeeded`, `Failed`).
    pub running: bool,
}

impl PodInfo {
    /// Whether `identity` counts this pod as one of its own. The pod must run as the
    /// identity's ServiceAccount (`spec.serviceAccountName`, else the identity's name) in its
    /// namespace; then it is the identity's when the identity's selector selects it, or, for
    /// an identity without selector, when the pod claims it (its `agentmesh.io/identity`
    /// label, else its ServiceAccount's name: the webhook's rule). A label alone never makes a
    /// pod another account's identity. Allocates nothing: it runs for every identity of a
    /// namespace on each pod change.
    pub fn is_of(&self, identity: &agentmesh_api::identity::AgentIdentity) -> bool {
        identity.metadata.namespace.as_deref() == Some(self.namespace.as_str())
            && self.service_account == identity.service_account()
            && match &identity.spec.selector {
                Some(selector) => crate::governance::selects(Some(selector), &self.labels),
                None => Some(self.claimed_identity()) == identity.metadata.name.as_deref(),
            }
    }

    /// The AgentIdentity among `identities` this pod is bound to ([`Self::is_of`]; the first by
    /// name when several are).
    pub fn bound_identity<'a>(
        &self,
        identities: impl IntoIterator<Item = &'a Arc<agentmesh_api::identity::AgentIdentity>>,
    ) -> Option<Arc<agentmesh_api::identity::AgentIdentity>> {
        identities
            .into_iter()
            .filter(|identity| self.is_of(identity))
            .min_by_key(|identity| identity.metadata.name.clone())
            .cloned()
    }

    /// The identity the pod names: its non-empty `agentmesh.io/identity` label, else its
    /// ServiceAccount's name.
    pub fn claimed_identity(&self) -> &str {
        crate::webhook::inject::claimed_identity(Some(&self.labels), &self.service_account)
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

/// What the index keeps of `pod`, by its UID.
pub(crate) fn info(pod: &Pod) -> Option<(String, PodInfo)> {
    Some((
        pod.uid()?,
        PodInfo {
            namespace: pod.namespace()?,
            name: pod.name_any(),
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            service_account: crate::webhook::inject::service_account_of(pod),
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
        // Of the account named by its identity label, so that the label rules are what the
        // first test exercises; the second forges the account.
        let account = labels
            .iter()
            .find(|(k, _)| *k == agentmesh_api::names::labels::IDENTITY)
            .map_or("default", |(_, v)| *v);
        pod_as(namespace, account, labels)
    }

    fn pod_as(namespace: &str, account: &str, labels: &[(&str, &str)]) -> PodInfo {
        PodInfo {
            namespace: namespace.into(),
            name: "p".into(),
            node: None,
            service_account: account.into(),
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
        // An identity with a selector counts the pods of its account it selects, not those
        // naming it.
        let selecting = identity("team-a", "selecting", Some("x"));
        assert!(pod_as("team-a", "selecting", &[("team", "x")]).is_of(&selecting));
        assert!(!pod_as("team-a", "selecting", &[(label, "selecting")]).is_of(&selecting));
        assert!(!pod_as("team-b", "selecting", &[("team", "x")]).is_of(&selecting));
    }

    /// The attack: a pod author labels a pod `agentmesh.io/identity: <other>` (or matches
    /// another identity's selector) to be that identity. Without running as the identity's
    /// ServiceAccount, the pod is nobody's.
    #[test]
    fn a_pod_is_of_an_identity_only_when_it_runs_as_the_identitys_service_account() {
        let label = agentmesh_api::names::labels::IDENTITY;
        let agent = identity("team-a", "agent", None);
        assert!(pod_as("team-a", "agent", &[(label, "agent")]).is_of(&agent));
        // No label: the account's name is the claim.
        assert!(pod_as("team-a", "agent", &[]).is_of(&agent));
        for account in ["default", "other", "Agent", "agent-x"] {
            assert!(
                !pod_as("team-a", account, &[(label, "agent")]).is_of(&agent),
                "{account}"
            );
        }
        // The account of the identity, claiming another identity by label: not this one.
        assert!(!pod_as("team-a", "agent", &[(label, "other")]).is_of(&agent));
        // A selector identity: the selected labels are not enough.
        let selecting = identity("team-a", "selecting", Some("x"));
        assert!(!pod_as("team-a", "default", &[("team", "x")]).is_of(&selecting));
        // An identity bound to another account takes that account's pods, and only those.
        let mut bound = identity("team-a", "bound", None);
        bound.spec.service_account_name = Some("runner".into());
        assert!(pod_as("team-a", "runner", &[(label, "bound")]).is_of(&bound));
        assert!(!pod_as("team-a", "bound", &[(label, "bound")]).is_of(&bound));
        assert!(!pod_as("team-a", "runner", &[]).is_of(&bound));
    }
}
