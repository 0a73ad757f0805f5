//! Behaviour baselines kept in the audit store of `AGENTMESH_STORAGE_BACKEND`, so that a new
//! leader continues each identity's learning where the last one was — instead of starting every
//! learning period again, which would let a new leader learn, without penalty, behaviour the
//! old one would have called an anomaly.
//!
//! - At leading start the engine loads every saved baseline (for at most [`LOAD_FOR`] while the
//!   store does not answer; then it goes on without them, and says so in the log).
//! - Every [`SAVE_INTERVAL`] it saves the baselines that changed since their last save; what
//!   is learned in between is lost if the leader dies (at most that much learning).
//! - Keys are `<namespace>/<name>/<uid>`: an identity deleted and made again under the same
//!   name starts afresh. A gone identity's baseline is deleted; a saved one no identity takes
//!   within [`LEFTOVERS_AFTER`] of leading start too.
//! - With the `memory` backend nothing outlives the process, so nothing is saved.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use agentmesh_api::identity::AgentIdentity;
use agentmesh_trust::baseline::{Baseline, BaselineSnapshot};
use kube::ResourceExt;

use super::Engine;

/// Time between two saves of the baselines that changed.
pub const SAVE_INTERVAL: Duration = Duration::from_secs(10);
/// Longest the load at leading start waits for the store.
pub const LOAD_FOR: Duration = Duration::from_secs(15);
/// After this long leading, saved baselines no identity took are deleted.
pub const LEFTOVERS_AFTER: Duration = Duration::from_secs(600);

/// The store's key of an identity's baseline.
pub fn store_key(identity: &AgentIdentity) -> String {
    format!(
        "{}/{}/{}",
        identity.namespace().unwrap_or_default(),
        identity.name_any(),
        identity.uid().unwrap_or_default()
    )
}

/// What the engine knows of the saved baselines.
#[derive(Debug, Default)]
pub(super) struct Kept {
    /// Loaded at leading start and not yet taken by a standing: store key → baseline.
    restored: HashMap<String, Baseline>,
    /// Engine key (`namespace/name`) → its store key and the baseline's change count when it
    /// was last saved (or restored).
    saved: HashMap<String, (String, u64)>,
    /// Store keys of identities gone, to delete.
    gone: Vec<String>,
}

impl Kept {
    /// The saved baseline of `identity`, when there is one; from now on its standing's baseline
    /// is saved when it changes.
    pub(super) fn restore(&mut self, k: &str, identity: &AgentIdentity) -> Option<Baseline> {
        let key = store_key(identity);
        let baseline = self.restored.remove(&key);
        self.saved.insert(k.to_owned(), (key, 0));
        baseline
    }

    /// Identities no longer live: their baselines are to be deleted.
    pub(super) fn forget_gone(&mut self, live: &HashSet<String>) {
        let gone: Vec<String> = self
            .saved
            .keys()
            .filter(|k| !live.contains(*k))
            .cloned()
            .collect();
        for k in gone {
            if let Some((key, _)) = self.saved.remove(&k) {
                self.gone.push(key);
            }
        }
    }
}

/// The baselines of `loaded` (store key, JSON) that parse; the others are named in the log.
fn parse(loaded: Vec<(String, String)>) -> HashMap<String, Baseline> {
    loaded
        .into_iter()
        .filter_map(|(key, json)| match serde_json::from_str::<BaselineSnapshot>(&json) {
            Ok(snapshot) => Some((key, Baseline::restore(&snapshot))),
            Err(error) => {
                tracing::warn!(%key, %error, "saved baseline unreadable; that identity learns afresh");
                None
            }
        })
        .collect()
}

impl Engine {
    fn saves_baselines(&self) -> bool {
        self.audit.store().backend() != "memory"
    }

    /// Loads the saved baselines (leading start, before the first tick).
    pub async fn load_baselines(&self) {
        if !self.saves_baselines() {
            return;
        }
        let store = self.audit.store();
        let started = tokio::time::Instant::now();
        let loaded = loop {
            match store.load_baselines().await {
                Ok(loaded) => break loaded,
                Err(error) if started.elapsed() < LOAD_FOR => {
                    tracing::debug!(%error, "loading baselines; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(error) => {
                    tracing::warn!(%error, "baselines not loaded: the audit store does not answer; identities learn afresh");
                    return;
                }
            }
        };
        let restored = parse(loaded);
        tracing::info!(baselines = restored.len(), "behaviour baselines loaded");
        self.state.lock().expect("engine lock").baselines.restored = restored;
    }

    /// Saves what changed every [`SAVE_INTERVAL`]; deletes what is gone.
    pub(super) async fn save_baselines_forever(self: Arc<Self>) {
        if !self.saves_baselines() {
            return;
        }
        let started = tokio::time::Instant::now();
        let mut leftovers_done = false;
        loop {
            tokio::time::sleep(SAVE_INTERVAL).await;
            self.save_baselines_once(!leftovers_done && started.elapsed() >= LEFTOVERS_AFTER)
                .await;
            leftovers_done |= started.elapsed() >= LEFTOVERS_AFTER;
        }
    }

    /// One save pass; with `leftovers`, also deletes the saved baselines no identity took.
    pub async fn save_baselines_once(&self, leftovers: bool) {
        let (due, mut gone) = {
            let mut state = self.state.lock().expect("engine lock");
            let due: Vec<(String, String, u64, String)> = state
                .standings
                .iter()
                .filter_map(|(k, standing)| {
                    let (key, saved) = state.baselines.saved.get(k)?;
                    let changes = standing.baseline().changes();
                    (changes != *saved).then(|| {
                        let json = serde_json::to_string(&standing.baseline().snapshot())
                            .expect("snapshots serialize");
                        (k.clone(), key.clone(), changes, json)
                    })
                })
                .collect();
            let mut gone = std::mem::take(&mut state.baselines.gone);
            if leftovers {
                gone.extend(state.baselines.restored.drain().map(|(key, _)| key));
            }
            (due, gone)
        };
        let store = self.audit.store();
        let pairs: Vec<(String, String)> = due
            .iter()
            .map(|(_, key, _, json)| (key.clone(), json.clone()))
            .collect();
        match store.save_baselines(&pairs).await {
            Ok(()) => {
                let mut state = self.state.lock().expect("engine lock");
                for (k, key, changes, _) in due {
                    if let Some(saved) = state.baselines.saved.get_mut(&k)
                        && saved.0 == key
                    {
                        saved.1 = changes;
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "baselines not saved; retrying"),
        }
        if let Err(error) = store.delete_baselines(&gone).await {
            tracing::warn!(%error, "baselines of gone identities not deleted; retrying");
            let mut state = self.state.lock().expect("engine lock");
            state.baselines.gone.append(&mut gone);
        }
    }
}
