//! The reconcilers, one per kind: [`agent_identity`], [`trust_policy`], [`meshlogic_agent`].
//! They run on the leader only, read the shared [`Indexes`] and the trust [`Engine`], and are
//! all run by [`run`]: one span and one timing per reconcile, errors counted by label and
//! retried with a per-object backoff, a graceful stop on SIGTERM.

pub mod agent_identity;
pub mod meshlogic_agent;
pub mod trust_policy;

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::Instrument;

use crate::context::Context;
use crate::engine::Engine;
use crate::error::Error;
use crate::index::Indexes;

/// What the reconcilers share.
pub struct Reconcilers {
    pub ctx: Arc<Context>,
    pub engine: Arc<Engine>,
    pub indexes: Indexes,
}

/// How long a reconcile request waits for more of the same object (trailing edge): a new
/// AgentIdentity, its pod and its key Secret arrive within milliseconds of each other and are
/// then reconciled once rather than up to three times (`make bench-scale`: about 2,000 status
/// writes fewer for 5,000 identities). Short, so that a change still takes effect at once to a
/// person, and no object here changes often enough to be held back by it.
const DEBOUNCE: Duration = Duration::from_millis(500);

/// Starts every reconciler on `tasks`; they run until aborted or SIGTERM.
pub fn start(shared: Arc<Reconcilers>, tasks: &mut tokio::task::JoinSet<()>) {
    tasks.spawn(agent_identity::run(shared.clone()));
    tasks.spawn(trust_policy::run(shared.clone()));
    tasks.spawn(meshlogic_agent::run(shared));
}

/// Runs `controller` until SIGTERM, its requests debounced ([`DEBOUNCE`]): each reconcile of
/// an object in a span named after the controller and the object, timed and counted
/// (`reconcile_*` metrics, label `name`); an error is counted by its label and the object
/// retried after a delay that doubles with each consecutive failure of that object (1 s up to
/// 5 min, each plus up to as much again at random), from 1 s again once it succeeds. `Ok`
/// actions are the reconciler's own.
pub async fn run<K, F, Fut>(
    name: &'static str,
    controller: Controller<K>,
    reconcile: F,
    shared: Arc<Reconcilers>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Debug + Unpin + Default,
    F: Fn(Arc<K>, Arc<Reconcilers>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, Error>> + Send + 'static,
{
    let backoff = Arc::new(Backoff::default());
    let on_success = backoff.clone();
    let reconcile = Arc::new(reconcile);
    controller
        .with_config(kube::runtime::controller::Config::default().debounce(DEBOUNCE))
        .shutdown_on_signal()
        .run(
            move |object: Arc<K>, shared: Arc<Reconcilers>| {
                let reconcile = reconcile.clone();
                let backoff = on_success.clone();
                let object_key = key_of(&*object);
                let span =
                    tracing::info_span!("reconcile", controller = name, object = %object_key);
                async move {
                    let started = Instant::now();
                    let metrics = shared.ctx.metrics.clone();
                    let result = reconcile(object, shared).await;
                    metrics.observe_reconcile(name, started.elapsed());
                    if result.is_ok() {
                        backoff.succeeded(&object_key);
                    }
                    result
                }
                .instrument(span)
            },
            move |object: Arc<K>, error: &Error, shared: Arc<Reconcilers>| {
                shared
                    .ctx
                    .metrics
                    .reconcile_error(name, error.metric_label());
                let object_key = key_of(&*object);
                let delay = backoff.failed(&object_key);
                tracing::warn!(
                    controller = name,
                    object = %object_key,
                    %error,
                    retry_in = ?delay,
                    "reconcile failed; retrying"
                );
                Action::requeue(delay)
            },
            shared,
        )
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(%object, "reconciled"),
                Err(error) => tracing::debug!(%error, "reconcile stream"),
            }
        })
        .await;
}

/// Writes `desired`, the status fields a reconciler owns, to `object`'s status with server-side
/// apply under the operator's field manager, unless `current` (the same fields as `object`'s
/// status holds them) already equals it, or this same status was written already from this same
/// version of `object` (see [`StatusWrites`]); whether it wrote. Conditions keep their
/// transition time while their status holds ([`crate::conditions::condition`]), so an unchanged
/// status compares equal and is never rewritten: a reconciler is not woken by its own writes.
pub async fn apply_status<K, S>(
    api: &kube::Api<K>,
    object: &K,
    current: Option<&S>,
    desired: &S,
    writes: &StatusWrites,
) -> Result<bool, Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    S: serde::Serialize + PartialEq,
{
    if current == Some(desired) {
        // Written and seen (or never needed): nothing to remember.
        if let Some(uid) = &object.meta().uid {
            writes.forget(uid);
        }
        return Ok(false);
    }
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": desired,
    });
    let write = StatusWrite::of(object, &patch);
    if let Some(write) = &write
        && writes.done(write)
    {
        return Ok(false);
    }
    api.patch_status(
        &object.name_any(),
        &kube::api::PatchParams::apply(agentmesh_api::names::FIELD_MANAGER).force(),
        &kube::api::Patch::Apply(&patch),
    )
    .await?;
    if let Some(write) = write {
        writes.record(write);
    }
    Ok(true)
}

/// The status writes of the reconcilers, each remembered with the version of the object it was
/// decided from, until the object is seen at another version or with that status (so only
/// writes the index has not caught up with are kept).
///
/// A reconcile reads its object from the shared index, which learns of a write only when the
/// watch delivers it. Until then, another trigger of the same object (its pod, its key Secret)
/// finds the object as it was, decides the same status, and without this would write it again:
/// `make bench-scale` showed the AgentIdentity reconciler writing most statuses twice, 0.8 of
/// the 2.6 status writes per new identity.
#[derive(Default)]
pub struct StatusWrites {
    /// By object UID: the resourceVersion decided from, and a hash of the status written.
    last: Mutex<HashMap<String, (String, u64)>>,
}

/// One status write: to which object, from which version of it, what.
struct StatusWrite {
    uid: String,
    version: String,
    status: u64,
}

impl StatusWrite {
    /// `None` for an object without a UID or resourceVersion (not from the API server).
    fn of<K: Resource>(object: &K, patch: &serde_json::Value) -> Option<Self> {
        let meta = object.meta();
        let mut hasher = std::hash::DefaultHasher::new();
        patch.to_string().hash(&mut hasher);
        Some(Self {
            uid: meta.uid.clone()?,
            version: meta.resource_version.clone()?,
            status: std::hash::Hasher::finish(&hasher),
        })
    }
}

impl StatusWrites {
    /// Whether `write` was made already (same object, same version decided from, same status).
    /// An entry for an older version of the object is forgotten.
    fn done(&self, write: &StatusWrite) -> bool {
        let mut last = self.last.lock().expect("status writes lock");
        match last.get(&write.uid) {
            Some((version, status)) if *version == write.version => *status == write.status,
            Some(_) => {
                last.remove(&write.uid);
                false
            }
            None => false,
        }
    }

    fn forget(&self, uid: &str) {
        self.last.lock().expect("status writes lock").remove(uid);
    }

    fn record(&self, write: StatusWrite) {
        self.last
            .lock()
            .expect("status writes lock")
            .insert(write.uid, (write.version, write.status));
    }
}

/// A trigger filter: lets an object through when the state it is judged by (its generation,
/// say) differs from the last one seen for it. Objects gone from the index are forgotten once
/// the memory holds twice as many as the index, so it stays bounded by the objects alive.
pub struct ChangeFilter<K, S>
where
    K: Resource + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    store: kube::runtime::reflector::Store<K>,
    seen: HashMap<String, S>,
}

impl<K, S> ChangeFilter<K, S>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
    S: PartialEq,
{
    pub fn new(store: kube::runtime::reflector::Store<K>) -> Self {
        Self {
            store,
            seen: HashMap::new(),
        }
    }

    /// Whether `object`'s state is new; records it.
    pub fn changed(&mut self, object: &K, state: S) -> bool {
        let Some(uid) = object.meta().uid.clone() else {
            return true;
        };
        if self.seen.get(&uid) == Some(&state) {
            return false;
        }
        self.seen.insert(uid, state);
        if self.seen.len() > 2 * self.store.len() + 64 {
            let alive: std::collections::HashSet<String> = self
                .store
                .state()
                .iter()
                .filter_map(|o| o.meta().uid.clone())
                .collect();
            self.seen.retain(|uid, _| alive.contains(uid));
        }
        true
    }

    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.seen.len()
    }
}

fn key_of<K: Resource>(object: &K) -> String {
    match object.namespace() {
        Some(namespace) => format!("{namespace}/{}", object.name_any()),
        None => object.name_any(),
    }
}

/// Consecutive failures per object.
#[derive(Default)]
struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

/// The most failures counted per object: the delay is at its cap long before.
const MAX_COUNTED_FAILURES: u32 = 16;

impl Backoff {
    /// Counts a failure of `object`; the delay before its retry.
    fn failed(&self, object: &str) -> Duration {
        let mut failures = self.failures.lock().expect("backoff lock");
        let count = failures.entry(object.to_owned()).or_default();
        *count = (*count + 1).min(MAX_COUNTED_FAILURES);
        retry_delay(*count)
    }

    fn succeeded(&self, object: &str) {
        self.failures.lock().expect("backoff lock").remove(object);
    }
}

/// The delay after `failures` consecutive failures (≥ 1): 1 s doubling up to 5 min, each plus
/// up to as much again at random (retries of many objects do not come back together).
fn retry_delay(failures: u32) -> Duration {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(300))
        .with_jitter()
        .without_max_times()
        .build()
        .nth(failures.saturating_sub(1) as usize)
        .unwrap_or(Duration::from_secs(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(uid: &str, version: &str) -> agentmesh_api::identity::AgentIdentity {
        let mut identity =
            agentmesh_api::identity::AgentIdentity::new("a", serde_json::from_str("{}").unwrap());
        identity.metadata.uid = Some(uid.into());
        identity.metadata.resource_version = Some(version.into());
        identity
    }

    #[test]
    fn a_status_written_from_a_version_is_not_written_again_from_that_version() {
        let writes = StatusWrites::default();
        let status = |pods: i32| serde_json::json!({"status": {"podsMatched": pods}});
        let write = |uid: &str, version: &str, pods: i32| {
            StatusWrite::of(&identity(uid, version), &status(pods)).unwrap()
        };
        assert!(!writes.done(&write("u1", "10", 1)));
        writes.record(write("u1", "10", 1));
        // The index has not seen the write: same version, same decision: skipped.
        assert!(writes.done(&write("u1", "10", 1)));
        // Another decision from that version, another object: written.
        assert!(!writes.done(&write("u1", "10", 2)));
        assert!(!writes.done(&write("u2", "10", 1)));
        // The object moved on (our write seen, or someone else's): decided afresh, and the
        // entry is forgotten, so even the old version would be written again.
        assert!(!writes.done(&write("u1", "11", 1)));
        assert!(!writes.done(&write("u1", "10", 1)));
        // Objects that are not from the API server are not tracked.
        let mut unsaved = identity("u3", "1");
        unsaved.metadata.uid = None;
        assert!(StatusWrite::of(&unsaved, &status(1)).is_none());
    }

    #[test]
    fn retries_back_off_per_object_and_reset_on_success() {
        let backoff = Backoff::default();
        let first = backoff.failed("ns/a");
        assert!(first >= Duration::from_secs(1) && first < Duration::from_secs(3));
        for _ in 0..10 {
            backoff.failed("ns/a");
        }
        let later = backoff.failed("ns/a");
        assert!(later >= Duration::from_secs(300), "{later:?}");
        // Another object starts from the beginning.
        assert!(backoff.failed("ns/b") < Duration::from_secs(3));
        backoff.succeeded("ns/a");
        assert!(backoff.failed("ns/a") < Duration::from_secs(3));
    }

    #[test]
    fn a_change_filter_lets_through_new_states_and_forgets_objects_gone() {
        let (store, mut writer) = kube::runtime::reflector::store();
        let alive = identity("alive", "1");
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(alive.clone()));
        let mut filter = ChangeFilter::new(store);
        assert!(filter.changed(&alive, 1));
        assert!(!filter.changed(&alive, 1));
        assert!(filter.changed(&alive, 2));
        // Objects seen once and deleted since: the memory stays within twice the index.
        for i in 0..1000 {
            assert!(filter.changed(&identity(&format!("gone-{i}"), "1"), 1));
        }
        assert!(filter.remembered() <= 2 + 64, "{}", filter.remembered());
        // The living object is remembered through the pruning.
        assert!(!filter.changed(&alive, 2));
    }
}
