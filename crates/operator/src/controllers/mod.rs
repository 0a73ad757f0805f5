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
/// then reconciled once, not three times, each a status write (`make bench-scale`: about 5,000
/// writes fewer for 5,000 identities). Short, so that a change still takes effect at once to a
/// person, and no object here changes often enough to be held back by it.
const DEBOUNCE: Duration = Duration::from_millis(500);

/// Starts every reconciler on `tasks`; they run until aborted or SIGTERM.
pub fn start(shared: Arc<Reconcilers>, tasks: &mut tokio::task::JoinSet<()>) {
    tasks.spawn(agent_identity::run(shared.clone()));
    tasks.spawn(trust_policy::run(shared.clone()));
    tasks.spawn(meshlogic_agent::run(shared));
}

/// Runs `controller` until SIGTERM, its requests debounced ([`DEBOUNCE`]): each reconcile of an object in a span named after the
/// controller and the object, timed and counted (`reconcile_*` metrics, label `name`); an
/// error is counted by its label and the object retried after a delay that doubles with each
/// consecutive failure of that object (1 s up to 5 min, each plus up to as much again at
/// random), from 1 s again once it
/// succeeds. `Ok` actions are the reconciler's own.
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

/// Writes `desired`, the status fields a reconciler owns, with server-side apply under the
/// operator's field manager, unless `current` (the same fields as status holds them) already
/// equals it; whether it wrote. Conditions keep their transition time while their status holds
/// ([`crate::conditions::condition`]), so an unchanged status compares equal and is never
/// rewritten: a reconciler is not woken by its own writes.
pub async fn apply_status<K, S>(
    api: &kube::Api<K>,
    name: &str,
    current: Option<&S>,
    desired: &S,
) -> Result<bool, Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    S: serde::Serialize + PartialEq,
{
    if current == Some(desired) {
        return Ok(false);
    }
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": desired,
    });
    api.patch_status(
        name,
        &kube::api::PatchParams::apply(agentmesh_api::names::FIELD_MANAGER).force(),
        &kube::api::Patch::Apply(&patch),
    )
    .await?;
    Ok(true)
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
}
