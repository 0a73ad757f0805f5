//! The trust engine (leader only): applies the model of `agentmesh-trust` to the reports of
//! probes and sidecars and to the passing of time, and writes score, tier and quarantine into
//! AgentIdentity status.
//!
//! - State is rebuilt from status when the engine starts (`trustScore` + `scoreUpdatedAt`;
//!   violations from TrustPolicy status), so a restart or a new leader continues where the
//!   previous one stopped.
//! - Status is written with server-side apply under its own field manager
//!   ([`STATUS_MANAGER`]), so the AgentIdentity reconciler and the engine each own their
//!   fields and conditions. One identity is written at most once per status interval (5 s),
//!   at once when its tier or quarantine changes, whatever the report rate.
//! - Probes and sidecars long-poll for what concerns them; every tick (1 s) wakes them and
//!   they answer when their view's version changed.
//! - Sidecar batches (signature checked by the trust API) are fresh and used once
//!   ([`agentmesh_trust::replay`]); the positive credit they give is capped per identity
//!   ([`agentmesh_trust::credit`]); each of their decisions is an entry of the audit hash chain
//!   ([`agentmesh_trust::audit`]), kept in memory for the retention period.
//! - What a report does to trust is decided by [`agentmesh_trust::standing`]; the engine
//!   schedules, looks objects up, converts, counts and writes.

mod baselines;
mod ingest;
mod policies;
pub mod status;
mod view;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use agentmesh_api::identity::AgentIdentity;
use agentmesh_api::policy::TrustPolicy;
use agentmesh_api::wire::Destination;
use agentmesh_trust::{Policy, Standing, Timestamp, TrustState};
use futures::StreamExt;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::Notify;

use agentmesh_api::settings::Settings;

use crate::config::Config;
use crate::index::{Indexes, PodIndex, PodInfo};
use crate::metrics::Metrics;
pub use ingest::{SidecarBatch, SidecarRefusal};
pub use status::StatusWriter;

/// Field manager of the engine's status fields.
pub const STATUS_MANAGER: &str = "meshlogic-operator-trust";
/// Status writes in flight at once.
const CONCURRENT_WRITES: usize = 16;

/// `namespace/name`.
pub fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// The current time as the trust model's timestamp.
pub fn now() -> Timestamp {
    agentmesh_api::convert::now()
}

/// The settings the engine reads.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub settings: Settings,
    /// Least time between two status writes of one identity (tier changes excepted).
    pub status_interval: Duration,
    /// The trust API's URL as pods reach it (a quarantined pod may still reach it).
    pub trust_api_url: String,
}

impl EngineConfig {
    pub fn of(config: &Config) -> Self {
        Self {
            settings: config.settings.clone(),
            status_interval: config.args.status_interval(),
            trust_api_url: config.args.trust_api_url.clone(),
        }
    }
}

pub struct Engine {
    config: EngineConfig,
    metrics: Arc<Metrics>,
    writer: StatusWriter,
    /// Where every decision's audit record goes.
    audit: Arc<crate::storage::Audit>,
    pub identities: Store<AgentIdentity>,
    pub policies: Store<TrustPolicy>,
    pub pods: PodIndex,
    state: Mutex<State>,
    /// Woken on every tick: long-polls recompute their view.
    pub changed: Notify,
    /// Where a quarantined pod may still connect besides its own sidecar: the trust API's
    /// addresses and the cluster's DNS servers ([`view::refresh_quarantine_exits`]).
    quarantine_exits: RwLock<Vec<Destination>>,
}

struct State {
    standings: HashMap<String, Standing>,
    /// What the audit store keeps of behaviour baselines ([`baselines`]).
    baselines: baselines::Kept,
    policies: policies::Policies,
}

impl State {
    /// The standing of identity `k`, continued from its status (or new) when missing.
    fn standing(
        &mut self,
        k: &str,
        identity: &AgentIdentity,
        policy: &Policy,
        now: Timestamp,
    ) -> &mut Standing {
        if !self.standings.contains_key(k) {
            let status = identity.status.as_ref();
            let trust = match status.and_then(agentmesh_api::convert::persisted_score) {
                Some(persisted) => TrustState::from_persisted(persisted),
                None => {
                    let parent = identity.spec.delegation.as_ref().and_then(|d| {
                        let parent_key = key(&identity.namespace().unwrap_or_default(), &d.parent);
                        self.standings.get(&parent_key).map(|s| s.trust().score())
                    });
                    TrustState::new(policy.trust(), parent, now)
                }
            };
            let recent = status
                .and_then(|s| s.behavior.as_ref())
                .map(|b| {
                    b.recent_anomalies
                        .iter()
                        .map(agentmesh_api::convert::anomaly_note)
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            let last_decision = status
                .and_then(|s| s.last_decision.as_ref())
                .map(agentmesh_api::convert::decision_note);
            let standing = Standing::new(trust, recent, last_decision, now);
            let standing = match self.baselines.restore(k, identity) {
                Some(baseline) => standing.with_baseline(baseline),
                None => standing,
            };
            self.standings.insert(k.to_owned(), standing);
        }
        self.standings.get_mut(k).expect("inserted above")
    }
}

impl Engine {
    /// The engine over `indexes`; [`Engine::run`] starts its tick.
    pub fn new(
        config: EngineConfig,
        indexes: &Indexes,
        writer: StatusWriter,
        metrics: Arc<Metrics>,
        audit: Arc<crate::storage::Audit>,
    ) -> Arc<Self> {
        let default_policy = crate::governance::default_policy(&config.settings);
        Arc::new(Self {
            state: Mutex::new(State {
                standings: HashMap::new(),
                policies: policies::Policies::new(default_policy),
                baselines: baselines::Kept::default(),
            }),
            config,
            metrics,
            audit,
            writer,
            identities: indexes.identities.store.clone(),
            policies: indexes.policies.store.clone(),
            pods: indexes.pods.clone(),
            changed: Notify::new(),
            quarantine_exits: RwLock::new(Vec::new()),
        })
    }

    /// Starts the engine's tick and the refresh of quarantine exits on `tasks`.
    pub fn run(self: &Arc<Self>, tasks: &mut tokio::task::JoinSet<()>) {
        tasks.spawn(self.clone().tick_forever());
        tasks.spawn(self.clone().save_baselines_forever());
        tasks.spawn(view::refresh_quarantine_exits(self.clone()));
    }

    async fn tick_forever(self: Arc<Self>) {
        let mut interval = tokio::time::interval(Duration::from_secs(1));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            self.tick().await;
        }
    }

    /// One tick: refresh governance, decay every score, write the statuses that are due.
    pub async fn tick(&self) {
        let now = now();
        let interval_ms =
            i64::try_from(self.config.status_interval.as_millis()).unwrap_or(i64::MAX);
        let (identity_writes, policy_writes) = {
            let mut state = self.state.lock().expect("engine lock");
            let identities = self.identities.state();
            state.policies.refresh(&self.policies.state(), &identities);
            let live: HashSet<String> = identities
                .iter()
                .map(|i| key(&i.namespace().unwrap_or_default(), &i.name_any()))
                .collect();
            state.standings.retain(|k, _| live.contains(k));
            state.baselines.forget_gone(&live);
            let mut writes = Vec::new();
            let mut changes = Vec::new();
            for identity in &identities {
                let namespace = identity.namespace().unwrap_or_default();
                let k = key(&namespace, &identity.name_any());
                let policy = state.policies.policy_for(&k);
                let standing = state.standing(&k, identity, &policy, now);
                standing.advance(policy.trust(), now);
                let labels = crate::metrics::IdentityLabels {
                    namespace,
                    identity: identity.name_any(),
                };
                self.metrics
                    .trust_score
                    .get_or_create(&labels)
                    .set(i64::from(standing.trust().score()));
                let stored = identity
                    .status
                    .as_ref()
                    .map(agentmesh_api::convert::stored_standing);
                if let Some(update) =
                    standing.status_due(&k, &policy, stored.as_ref(), interval_ms, now)
                {
                    if let Some(record) = update.quarantine_change.clone() {
                        changes.push(record);
                    }
                    writes.push(status::IdentityWrite::new(identity, update));
                }
            }
            let policy_writes = state.policies.due_writes(self.config.status_interval);
            self.metrics.registry_size.set(identities.len() as i64);
            self.metrics.audit_entries.inc_by(changes.len() as u64);
            self.audit.record(changes);
            (writes, policy_writes)
        };
        // Many identities appear at once (an apply of thousands, a new leader): write side by
        // side, a bounded number at a time.
        futures::stream::iter(identity_writes)
            .for_each_concurrent(CONCURRENT_WRITES, |write| self.writer.identity(write))
            .await;
        futures::stream::iter(policy_writes)
            .for_each_concurrent(CONCURRENT_WRITES, |write| {
                self.writer.policy_violations(write)
            })
            .await;
        self.changed.notify_waiters();
    }

    /// The identity of the pod with this UID, and the pod.
    pub fn identity_of_pod(&self, uid: &str) -> Option<(Arc<AgentIdentity>, PodInfo)> {
        let pod = self.pods.get(uid)?;
        let identity = pod.bound_identity(&self.identities.state())?;
        Some((identity, pod))
    }

    /// The AgentIdentity `namespace/name` from the store.
    pub fn identity(&self, k: &str) -> Option<Arc<AgentIdentity>> {
        let (namespace, name) = k.split_once('/')?;
        self.identities.get(&ObjectRef::new(name).within(namespace))
    }

    /// Score, tier and quarantine of `k` as the engine knows them now.
    pub fn live(&self, k: &str) -> Option<(i32, agentmesh_trust::Tier, bool)> {
        let state = self.state.lock().expect("engine lock");
        let standing = state.standings.get(k)?;
        let policy = state.policies.policy_for(k);
        let trust = standing.trust();
        Some((
            trust.score(),
            trust.tier(),
            trust.is_quarantined(policy.trust()),
        ))
    }

    /// The compiled policy governing `k` and its name (`None`: the default preset).
    pub fn policy_of(&self, k: &str) -> (Arc<Policy>, Option<String>) {
        let state = self.state.lock().expect("engine lock");
        (
            state.policies.policy_for(k),
            state.policies.governing_name(k),
        )
    }
}
