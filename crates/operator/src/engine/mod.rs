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
//!   ([`replay`]); the positive credit they give is capped per identity
//!   ([`agentmesh_trust::credit`]); each of their decisions is an entry of the audit hash chain
//!   ([`agentmesh_trust::audit`]), kept in memory for the retention period.

mod pods;
pub mod replay;
pub mod status;
mod view;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentmesh_api::identity::{
    AgentIdentity, AnomalyKind, AnomalyRecord, Decision as Decided, DecisionRecord,
};
use agentmesh_api::policy::TrustPolicy;
use agentmesh_api::wire::{BlockedAction, Outcome, PodBehavior, ReportAck};
use agentmesh_trust::audit::{AuditLog, AuditRecord};
use agentmesh_trust::baseline::{Anomaly, Baseline};
use agentmesh_trust::credit::{CreditBudget, CreditCap};
use agentmesh_trust::policy::spec::{BehaviorAction, FileAccess};
use agentmesh_trust::policy::{Mode, Reason};
use agentmesh_trust::{Decision, Effect, Policy, Signal, Timestamp, TrustState, WindowCounts};
use futures::StreamExt;
use kube::ResourceExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;

use crate::context::Context;
use crate::governance::{self, Governance};
pub use pods::{PodIndex, PodInfo};

/// Field manager of the engine's status fields.
pub const STATUS_MANAGER: &str = "meshlogic-operator-trust";
/// Most recent anomalies kept per identity.
const RECENT_ANOMALIES: usize = 10;
/// Most audit entries kept in memory, whatever the retention (about 40 MB).
pub const MAX_AUDIT_ENTRIES: usize = 100_000;

/// `namespace/name`.
pub fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// The current time as the trust model's timestamp.
pub fn now() -> Timestamp {
    agentmesh_api::convert::now()
}

pub struct Engine {
    ctx: Arc<Context>,
    pub identities: Store<AgentIdentity>,
    pub policies: Store<TrustPolicy>,
    pub pods: PodIndex,
    state: Mutex<State>,
    /// Woken on every tick: long-polls recompute their view.
    pub changed: Notify,
    /// Where a quarantined pod may still connect besides its own sidecar: the trust API's
    /// addresses and the cluster's DNS servers ([`view::refresh_quarantine_exits`]).
    quarantine_exits: std::sync::RwLock<Vec<agentmesh_api::wire::Destination>>,
}

struct State {
    entries: HashMap<String, Entry>,
    /// Namespace → who governs whom.
    governance: HashMap<String, Governance>,
    /// Policy key → (generation, compiled).
    compiled: HashMap<String, (Option<i64>, Arc<Policy>)>,
    default_policy: Arc<Policy>,
    violations: HashMap<String, ViolationTally>,
    /// Every sidecar decision, as a hash chain (the `memory` audit backend).
    audit: AuditLog,
}

/// The policies and identities of one namespace.
type NamespaceObjects = (Vec<Arc<TrustPolicy>>, Vec<Arc<AgentIdentity>>);

/// What the engine knows of one identity.
pub struct Entry {
    pub trust: TrustState,
    baseline: Baseline,
    window: Window,
    recent: VecDeque<AnomalyRecord>,
    /// The last decision on what the agent did, and whether status shows it yet.
    last_decision: Option<DecisionRecord>,
    decision_unwritten: bool,
    written: Option<Written>,
    /// What sidecar outcomes may still add ([`CreditCap::default`]).
    credit: CreditBudget,
    /// Sidecar batch ids accepted and still fresh.
    replay: replay::ReplayGuard,
}

/// Counts since the last status write (saturating: see [`WindowCounts`]).
#[derive(Clone, Debug)]
struct Window {
    start: Timestamp,
    counts: WindowCounts,
}

impl Window {
    fn new(start: Timestamp) -> Self {
        Self {
            start,
            counts: WindowCounts::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Written {
    score: i32,
    tier: agentmesh_trust::Tier,
    quarantined: bool,
    at: Instant,
}

/// Violations of one policy: the count in status plus what was added since.
#[derive(Clone, Debug, Default)]
struct ViolationTally {
    count: i64,
    last: Option<agentmesh_api::policy::ViolationRecord>,
    dirty: bool,
    written_at: Option<Instant>,
}

impl Engine {
    /// Starts the engine's watches and its tick; returns once the stores are filled.
    pub async fn start(ctx: Arc<Context>, tasks: &mut tokio::task::JoinSet<()>) -> Arc<Self> {
        let (identities, identity_writer) = reflector::store();
        let (policies, policy_writer) = reflector::store();
        let identity_stream = reflector::reflector(
            identity_writer,
            watcher(
                ctx.watched_api::<AgentIdentity>(),
                watcher::Config::default().any_semantic(),
            ),
        );
        let policy_stream = reflector::reflector(
            policy_writer,
            watcher(
                ctx.watched_api::<TrustPolicy>(),
                watcher::Config::default().any_semantic(),
            ),
        );
        tasks.spawn(drain(identity_stream.default_backoff()));
        tasks.spawn(drain(policy_stream.default_backoff()));
        let pods = PodIndex::default();
        tasks.spawn(pods.clone().run(ctx.clone()));

        let _ = identities.wait_until_ready().await;
        let _ = policies.wait_until_ready().await;
        pods.wait_until_ready().await;

        let engine = Arc::new(Self {
            state: Mutex::new(State {
                entries: HashMap::new(),
                governance: HashMap::new(),
                compiled: HashMap::new(),
                default_policy: Arc::new(governance::default_policy(&ctx.config.settings)),
                violations: HashMap::new(),
                audit: AuditLog::new(),
            }),
            ctx,
            identities,
            policies,
            pods,
            changed: Notify::new(),
            quarantine_exits: std::sync::RwLock::new(Vec::new()),
        });
        tasks.spawn(engine.clone().tick_forever());
        tasks.spawn(view::refresh_quarantine_exits(engine.clone()));
        engine
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
        let (identity_writes, policy_writes) = {
            let mut state = self.state.lock().expect("engine lock");
            self.refresh_governance(&mut state);
            let identities = self.identities.state();
            let live: std::collections::HashSet<String> = identities
                .iter()
                .map(|i| key(&i.namespace().unwrap_or_default(), &i.name_any()))
                .collect();
            state.entries.retain(|k, _| live.contains(k));
            let mut writes = Vec::new();
            for identity in &identities {
                let k = key(
                    &identity.namespace().unwrap_or_default(),
                    &identity.name_any(),
                );
                let policy = state.policy_for(&k);
                let entry = self.entry(&mut state, &k, identity, now);
                entry.trust.advance(policy.trust(), now);
                if let Some(write) = self.due_write(entry, identity, &policy, now) {
                    writes.push(write);
                }
            }
            let interval = self.ctx.config.args.status_interval();
            let policy_writes: Vec<_> = state
                .violations
                .iter_mut()
                .filter(|(_, t)| t.dirty && t.written_at.is_none_or(|at| at.elapsed() >= interval))
                .map(|(k, t)| {
                    t.dirty = false;
                    t.written_at = Some(Instant::now());
                    (k.clone(), t.count, t.last.clone())
                })
                .collect();
            self.ctx.metrics.registry_size.set(identities.len() as i64);
            let retention_ms =
                i64::from(self.ctx.config.settings.audit_retention_days) * 86_400_000;
            state.audit.prune_before(now.plus_millis(-retention_ms));
            state.audit.keep_newest(MAX_AUDIT_ENTRIES);
            (writes, policy_writes)
        };
        for write in identity_writes {
            status::write_identity(&self.ctx, write).await;
        }
        for (policy, count, last) in policy_writes {
            status::write_policy_violations(&self.ctx, &policy, count, last).await;
        }
        self.changed.notify_waiters();
    }

    fn refresh_governance(&self, state: &mut State) {
        let mut by_namespace: BTreeMap<String, NamespaceObjects> = BTreeMap::new();
        for policy in self.policies.state() {
            by_namespace
                .entry(policy.namespace().unwrap_or_default())
                .or_default()
                .0
                .push(policy);
        }
        for identity in self.identities.state() {
            by_namespace
                .entry(identity.namespace().unwrap_or_default())
                .or_default()
                .1
                .push(identity);
        }
        state.governance = by_namespace
            .iter()
            .map(|(ns, (policies, identities))| {
                (ns.clone(), governance::evaluate(policies, identities))
            })
            .collect();
        // Compile each governing policy once per generation.
        let mut compiled = HashMap::new();
        for policy in self.policies.state() {
            let k = key(&policy.namespace().unwrap_or_default(), &policy.name_any());
            let generation = policy.metadata.generation;
            let reuse = state
                .compiled
                .get(&k)
                .filter(|(g, _)| *g == generation)
                .cloned();
            let entry = match reuse {
                Some(entry) => Some(entry),
                None => agentmesh_api::convert::compile_policy(&policy.spec)
                    .ok()
                    .map(|p| (generation, Arc::new(p))),
            };
            if let Some(entry) = entry {
                compiled.insert(k.clone(), entry);
            }
            // Violations continue from the count in status.
            state.violations.entry(k).or_insert_with(|| ViolationTally {
                count: policy.status.as_ref().map_or(0, |s| s.violations),
                last: policy
                    .status
                    .as_ref()
                    .and_then(|s| s.last_violation.clone()),
                ..Default::default()
            });
        }
        state.compiled = compiled;
    }

    /// The entry of an identity, created from its status (or as a new identity) when missing.
    fn entry<'s>(
        &self,
        state: &'s mut State,
        k: &str,
        identity: &AgentIdentity,
        now: Timestamp,
    ) -> &'s mut Entry {
        if !state.entries.contains_key(k) {
            let policy = state.policy_for(k);
            let persisted = identity
                .status
                .as_ref()
                .and_then(agentmesh_api::convert::persisted_score);
            let trust = match persisted {
                Some(persisted) => TrustState::from_persisted(persisted),
                None => {
                    let parent = identity.spec.delegation.as_ref().and_then(|d| {
                        let parent_key = key(&identity.namespace().unwrap_or_default(), &d.parent);
                        state.entries.get(&parent_key).map(|e| e.trust.score())
                    });
                    TrustState::new(policy.trust(), parent, now)
                }
            };
            let recent = identity
                .status
                .as_ref()
                .and_then(|s| s.behavior.as_ref())
                .map(|b| b.recent_anomalies.iter().cloned().collect())
                .unwrap_or_default();
            let last_decision = identity
                .status
                .as_ref()
                .and_then(|s| s.last_decision.clone());
            state.entries.insert(
                k.to_owned(),
                Entry {
                    trust,
                    baseline: Baseline::new(),
                    window: Window::new(now),
                    recent,
                    last_decision,
                    decision_unwritten: false,
                    written: None,
                    credit: CreditBudget::full(&CreditCap::default(), now),
                    replay: replay::ReplayGuard::default(),
                },
            );
        }
        state.entries.get_mut(k).expect("inserted above")
    }

    /// The status write of `entry` if one is due now.
    fn due_write(
        &self,
        entry: &mut Entry,
        identity: &AgentIdentity,
        policy: &Policy,
        now: Timestamp,
    ) -> Option<status::IdentityWrite> {
        let score = entry.trust.score();
        let tier = entry.trust.tier();
        let quarantined = entry.trust.is_quarantined(policy.trust());
        let stored = identity.status.as_ref();
        let in_status = stored.is_some_and(|s| {
            s.trust_score == Some(score)
                && s.tier == Some(agentmesh_api::convert::tier(tier))
                && s.quarantined == quarantined
        });
        let due = match entry.written {
            // First sight (a new leader, or a new identity): write unless status already says it.
            None => !in_status || stored.is_none_or(|s| s.score_updated_at.is_none()),
            Some(written) => {
                written.tier != tier
                    || written.quarantined != quarantined
                    || ((written.score != score || entry.decision_unwritten)
                        && written.at.elapsed() >= self.ctx.config.args.status_interval())
            }
        };
        let labels = crate::metrics::IdentityLabels {
            namespace: identity.namespace().unwrap_or_default(),
            identity: identity.name_any(),
        };
        self.ctx
            .metrics
            .trust_score
            .get_or_create(&labels)
            .set(i64::from(score));
        if !due {
            if entry.written.is_none() {
                entry.written = Some(Written {
                    score,
                    tier,
                    quarantined,
                    at: Instant::now(),
                });
            }
            return None;
        }
        entry.written = Some(Written {
            score,
            tier,
            quarantined,
            at: Instant::now(),
        });
        let window = std::mem::replace(&mut entry.window, Window::new(now));
        entry.decision_unwritten = false;
        Some(status::IdentityWrite {
            namespace: identity.namespace().unwrap_or_default(),
            name: identity.name_any(),
            persisted: entry.trust.to_persisted(policy.trust()),
            tier,
            quarantined,
            threshold: policy.trust().min_threshold,
            window_start: window.start,
            window_end: now,
            counts: window.counts,
            recent: entry.recent.iter().cloned().collect(),
            last_decision: entry.last_decision.clone(),
            conditions: identity
                .status
                .as_ref()
                .map(|s| s.conditions.clone())
                .unwrap_or_default(),
        })
    }

    /// Applies a probe's per-pod reports. Pods without an identity are counted and ignored.
    pub fn ingest_pods(&self, reports: &[PodBehavior]) -> ReportAck {
        let now = now();
        let mut ack = ReportAck::default();
        let mut state = self.state.lock().expect("engine lock");
        for report in reports {
            let Some((identity, pod)) = self.identity_of_pod(&report.pod_uid) else {
                ack.unknown_pods += 1;
                continue;
            };
            ack.accepted += 1;
            let k = key(
                &identity.namespace().unwrap_or_default(),
                &identity.name_any(),
            );
            let policy = state.policy_for(&k);
            let governing = state.governing_name(&k);
            let mut violations = Vec::new();
            let entry = self.entry(&mut state, &k, &identity, now);
            apply_pod_report(entry, &policy, report, &pod.name, now, &mut violations);
            self.count_violations(&identity, &policy, violations.len());
            state.record_violations(governing, &identity.name_any(), violations, now);
        }
        ack
    }

    /// Applies a sidecar's batch for identity `k` (`namespace/name`), sent by the sidecar of
    /// `pod`, whose signature the caller has verified: refused, applying nothing, when stale or
    /// already accepted. Positive credit is capped; every decision is audited.
    pub fn ingest_sidecar(
        &self,
        k: &str,
        pod: &str,
        batch: SidecarBatch<'_>,
    ) -> Result<(), SidecarRefusal> {
        let identity = self.identity(k).ok_or(SidecarRefusal::UnknownIdentity)?;
        let now = now();
        let mut state = self.state.lock().expect("engine lock");
        let policy = state.policy_for(k);
        let governing = state.governing_name(k);
        let entry = self.entry(&mut state, k, &identity, now);
        entry
            .replay
            .accept(batch.batch_id, batch.sent_at_ms, now)
            .map_err(SidecarRefusal::Replay)?;
        let mut violations = Vec::new();
        let mut audited = Vec::new();
        let cap = CreditCap::default();
        let trust = policy.trust();
        for outcome in batch.outcomes {
            match outcome {
                Outcome::ToolCall {
                    method,
                    tool,
                    effect,
                    rule,
                    at_ms,
                } => {
                    let decided = parse_effect(effect);
                    entry.window.counts.tool_call(decided != Effect::Allow);
                    if decided == Effect::Allow {
                        let Entry {
                            trust: t, credit, ..
                        } = entry;
                        t.apply_capped(trust, Signal::CompliantActivity, &cap, credit, now);
                    } else {
                        entry.trust.apply(trust, Signal::DeniedCall, now);
                        violations.push((
                            rule.clone(),
                            format!("{} {tool}", method.as_deref().unwrap_or("tools/call")),
                            decided == Effect::WouldDeny,
                        ));
                    }
                    let detail = if decided.as_str() == effect {
                        format!("decided at {at_ms} by the sidecar of pod {pod}")
                    } else {
                        format!(
                            "decided at {at_ms} by the sidecar of pod {pod}; reported effect {effect:?} counted as deny"
                        )
                    };
                    decide(
                        entry,
                        match decided {
                            Effect::Allow => Decided::Allow,
                            Effect::WouldDeny => Decided::WouldDeny,
                            Effect::Deny => Decided::Deny,
                        },
                        call_subject(method.as_deref(), tool),
                        format!("rule {rule}"),
                        now,
                    );
                    audited.push(AuditRecord {
                        at: now,
                        identity: k.to_owned(),
                        subject: truncate(&call_subject(method.as_deref(), tool), 512),
                        effect: decided,
                        rule: truncate(rule, 512),
                        score: entry.trust.score(),
                        policy_version: policy.version().to_owned(),
                        detail: truncate(&detail, 1024),
                    });
                }
                Outcome::Handshake {
                    peer_did,
                    succeeded,
                    reason,
                    at_ms,
                } => {
                    if *succeeded {
                        let Entry {
                            trust: t, credit, ..
                        } = entry;
                        t.apply_capped(trust, Signal::HandshakeSucceeded, &cap, credit, now);
                    } else {
                        entry.window.counts.violation();
                        entry.trust.apply(trust, Signal::HandshakeFailed, now);
                        let reason = reason.clone().unwrap_or_default();
                        violations.push((
                            "handshake".into(),
                            format!("handshake with {peer_did} failed: {reason}"),
                            false,
                        ));
                    }
                    decide(
                        entry,
                        if *succeeded {
                            Decided::Allow
                        } else {
                            Decided::Deny
                        },
                        format!("handshake with {peer_did}"),
                        match reason {
                            Some(reason) => reason.clone(),
                            None if *succeeded => "both keys proven".to_owned(),
                            None => "failed".to_owned(),
                        },
                        now,
                    );
                    let detail = match reason {
                        Some(reason) => {
                            format!("handshake at {at_ms} by the sidecar of pod {pod}: {reason}")
                        }
                        None => format!("handshake at {at_ms} by the sidecar of pod {pod}"),
                    };
                    audited.push(AuditRecord {
                        at: now,
                        identity: k.to_owned(),
                        subject: truncate(&format!("peer:{peer_did}"), 512),
                        effect: if *succeeded {
                            Effect::Allow
                        } else {
                            Effect::Deny
                        },
                        rule: "handshake".into(),
                        score: entry.trust.score(),
                        policy_version: policy.version().to_owned(),
                        detail: truncate(&detail, 1024),
                    });
                }
                Outcome::ToolChanged { server, tool, .. } => {
                    // New code behind a known name: it costs what a new executable costs.
                    let penalty = policy.spec().behavior.anomalies.new_executable;
                    entry.window.counts.anomaly();
                    entry.trust.apply(trust, Signal::Anomaly { penalty }, now);
                    remember(
                        entry,
                        AnomalyKind::ToolChanged,
                        format!(
                            "tool {tool} of MCP server {server} changed its description or schema"
                        ),
                        penalty,
                        pod,
                        now,
                    );
                }
            }
        }
        let entries = audited.len() as u64;
        for record in audited {
            state.audit.append(record);
        }
        self.ctx.metrics.audit_entries.inc_by(entries);
        self.count_violations(&identity, &policy, violations.len());
        state.record_violations(governing, &identity.name_any(), violations, now);
        Ok(())
    }

    /// `agentmesh_policy_violation_count{namespace, identity, mode}` moves by `count`.
    fn count_violations(&self, identity: &AgentIdentity, policy: &Policy, count: usize) {
        if count == 0 {
            return;
        }
        let labels = crate::metrics::ViolationLabels {
            namespace: identity.namespace().unwrap_or_default(),
            identity: identity.name_any(),
            mode: match policy.mode() {
                Mode::Enforce => "enforce".into(),
                Mode::Shadow => "shadow".into(),
            },
        };
        self.ctx
            .metrics
            .policy_violations
            .get_or_create(&labels)
            .inc_by(count as u64);
    }

    /// A copy of the audit chain's entries kept now, oldest first, and its head hash.
    pub fn audit(&self) -> (Vec<agentmesh_trust::audit::AuditEntry>, String) {
        let state = self.state.lock().expect("engine lock");
        (state.audit.to_vec(), state.audit.head().to_owned())
    }

    /// The identity of the pod with this UID, and the pod.
    pub fn identity_of_pod(&self, uid: &str) -> Option<(Arc<AgentIdentity>, PodInfo)> {
        let pod = self.pods.get(uid)?;
        let identities = self.identities.state();
        let in_namespace = identities
            .iter()
            .filter(|i| i.namespace().as_deref() == Some(pod.namespace.as_str()));
        let by_label = pod.labels.get(agentmesh_api::names::labels::IDENTITY);
        let mut candidates: Vec<&Arc<AgentIdentity>> = in_namespace
            .filter(|identity| match &identity.spec.selector {
                Some(selector) => governance::selects(Some(selector), &pod.labels),
                None => by_label == Some(&identity.name_any()),
            })
            .collect();
        candidates.sort_by_key(|i| i.name_any());
        candidates
            .first()
            .map(|identity| ((*identity).clone(), pod.clone()))
    }

    /// The AgentIdentity `namespace/name` from the store.
    pub fn identity(&self, k: &str) -> Option<Arc<AgentIdentity>> {
        let (namespace, name) = k.split_once('/')?;
        self.identities.get(&ObjectRef::new(name).within(namespace))
    }

    /// Score, tier and quarantine of `k` as the engine knows them now.
    pub fn live(&self, k: &str) -> Option<(i32, agentmesh_trust::Tier, bool)> {
        let state = self.state.lock().expect("engine lock");
        let entry = state.entries.get(k)?;
        let policy = state.policy_for(k);
        Some((
            entry.trust.score(),
            entry.trust.tier(),
            entry.trust.is_quarantined(policy.trust()),
        ))
    }

    /// The compiled policy governing `k` and its name (`None`: the default preset).
    pub fn policy_of(&self, k: &str) -> (Arc<Policy>, Option<String>) {
        let state = self.state.lock().expect("engine lock");
        (state.policy_for(k), state.governing_name(k))
    }
}

impl State {
    fn governing_name(&self, k: &str) -> Option<String> {
        let (namespace, name) = k.split_once('/')?;
        let policy = self.governance.get(namespace)?.governed_by.get(name)?;
        Some(key(namespace, policy))
    }

    fn policy_for(&self, k: &str) -> Arc<Policy> {
        self.governing_name(k)
            .and_then(|p| self.compiled.get(&p).map(|(_, policy)| policy.clone()))
            .unwrap_or_else(|| self.default_policy.clone())
    }

    /// Counts violations (rule, detail, shadow) against the governing policy, if any.
    fn record_violations(
        &mut self,
        policy: Option<String>,
        identity: &str,
        violations: Vec<(String, String, bool)>,
        now: Timestamp,
    ) {
        let Some(policy) = policy else { return };
        let tally = self.violations.entry(policy).or_default();
        for (rule, detail, shadow) in violations {
            tally.count += 1;
            tally.dirty = true;
            tally.last = agentmesh_api::convert::time(now, "lastViolation.observedAt")
                .ok()
                .map(|observed_at| agentmesh_api::policy::ViolationRecord {
                    observed_at,
                    identity: identity.to_owned(),
                    rule: truncate(&rule, 512),
                    detail: truncate(&detail, 1024),
                    shadow,
                });
        }
    }
}

/// A sidecar's batch, from its `source` and `outcomes`.
#[derive(Clone, Copy, Debug)]
pub struct SidecarBatch<'a> {
    pub batch_id: &'a str,
    pub sent_at_ms: i64,
    pub outcomes: &'a [Outcome],
}

/// Why a sidecar batch was not applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SidecarRefusal {
    #[error("the AgentIdentity is not known")]
    UnknownIdentity,
    #[error(transparent)]
    Replay(replay::ReplayError),
}

/// The effect a sidecar reported; anything but `allow` and `would-deny` counts as a deny.
fn parse_effect(effect: &str) -> Effect {
    match effect {
        "allow" => Effect::Allow,
        "would-deny" => Effect::WouldDeny,
        _ => Effect::Deny,
    }
}

/// The audit subject of an MCP call: `tool:`, `prompt:` or `resource:` and the name.
fn call_subject(method: Option<&str>, name: &str) -> String {
    match method {
        None | Some("tools/call") => format!("tool:{name}"),
        Some("prompts/get") => format!("prompt:{name}"),
        Some("resources/read") => format!("resource:{name}"),
        Some(other) => format!("{other}:{name}"),
    }
}

fn truncate(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// Applies one pod's window to an identity's entry: behaviour rules first (a matched `allow`
/// is expected behaviour, never an anomaly), then the baseline.
fn apply_pod_report(
    entry: &mut Entry,
    policy: &Policy,
    report: &PodBehavior,
    pod: &str,
    now: Timestamp,
    violations: &mut Vec<(String, String, bool)>,
) {
    let counts = &report.counts;
    entry
        .window
        .counts
        .add_probe(counts.execs, counts.file_opens, counts.connects);
    let anomalies = &policy.spec().behavior.anomalies;
    let mut judge = |entry: &mut Entry,
                     decision: Decision<'_>,
                     baseline: Option<Anomaly>,
                     what: String| {
        let rule = decision.rule();
        let (matched_allow, matched) = match decision.reason {
            Reason::BehaviorRule { action, .. } => (
                action == BehaviorAction::Allow,
                action != BehaviorAction::Allow,
            ),
            _ => (false, false),
        };
        if matched {
            entry.window.counts.anomaly();
            entry.trust.apply(
                policy.trust(),
                Signal::Anomaly {
                    penalty: decision.penalty,
                },
                now,
            );
            remember(
                entry,
                AnomalyKind::RuleMatch,
                format!("{what} ({rule})"),
                decision.penalty,
                pod,
                now,
            );
            if decision.effect != Effect::Allow {
                entry.window.counts.violation();
                violations.push((rule, what.clone(), decision.effect == Effect::WouldDeny));
            }
        } else if let Some(anomaly) = baseline.filter(|_| !matched_allow) {
            entry.window.counts.anomaly();
            entry.trust.apply(
                policy.trust(),
                Signal::Anomaly {
                    penalty: anomaly.penalty,
                },
                now,
            );
            let kind = match anomaly.kind {
                agentmesh_trust::baseline::AnomalyKind::NewExecutable => AnomalyKind::NewExecutable,
                agentmesh_trust::baseline::AnomalyKind::NewDestination => {
                    AnomalyKind::NewDestination
                }
                agentmesh_trust::baseline::AnomalyKind::SensitiveWrite => {
                    AnomalyKind::SensitiveWrite
                }
            };
            remember(entry, kind, what, anomaly.penalty, pod, now);
        }
    };
    for path in &report.executables {
        let decision = policy.decide_exec(path, entry.trust.score());
        let seen = entry.baseline.observe_exec(anomalies, path, now);
        judge(entry, decision, seen, format!("exec {path}"));
    }
    for path in &report.written_paths {
        let decision = policy.decide_file(path, FileAccess::Write, entry.trust.score());
        let seen = entry
            .baseline
            .observe_file(anomalies, path, FileAccess::Write, now);
        judge(entry, decision, seen, format!("write {path}"));
    }
    for path in &report.read_paths {
        let decision = policy.decide_file(path, FileAccess::Read, entry.trust.score());
        judge(entry, decision, None, format!("read {path}"));
    }
    for destination in &report.destinations {
        let decision = policy.decide_connect(destination.ip, destination.port, entry.trust.score());
        let seen = entry
            .baseline
            .observe_connect(anomalies, destination.ip, destination.port, now);
        judge(
            entry,
            decision,
            seen,
            format!("connect {}:{}", destination.ip, destination.port),
        );
    }
    for blocked in &report.blocked {
        let what = match blocked {
            BlockedAction::Connect { ip, port } => format!("blocked connect {ip}:{port}"),
            BlockedAction::Exec { path } => format!("blocked exec {path}"),
        };
        entry.window.counts.violation();
        entry.trust.apply(policy.trust(), Signal::Violation, now);
        decide(
            entry,
            Decided::Blocked,
            what.clone(),
            "refused in the kernel (safety tier 3)".to_owned(),
            now,
        );
        violations.push(("kernel".into(), what, false));
    }
}

fn remember(
    entry: &mut Entry,
    kind: AnomalyKind,
    detail: String,
    penalty: i32,
    pod: &str,
    now: Timestamp,
) {
    let Ok(observed_at) = agentmesh_api::convert::time(now, "observedAt") else {
        return;
    };
    let kind_text = serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    decide(
        entry,
        Decided::Anomaly,
        detail.clone(),
        format!("{kind_text}, -{penalty} trust"),
        now,
    );
    entry.recent.push_front(AnomalyRecord {
        observed_at,
        kind,
        detail: truncate(&detail, 512),
        penalty,
        pod: Some(pod.to_owned()),
    });
    entry.recent.truncate(RECENT_ANOMALIES);
}

/// Records `decision` as the identity's last one; status shows it with the next write. Within
/// one second (one report: a refused handshake and the allowed call that needed it arrive
/// together), an allow does not hide a refusal or an anomaly.
fn decide(entry: &mut Entry, decision: Decided, subject: String, reason: String, now: Timestamp) {
    let Ok(at) = agentmesh_api::convert::time(now, "lastDecision.at") else {
        return;
    };
    if decision == Decided::Allow
        && entry.last_decision.as_ref().is_some_and(|last| {
            last.decision != Decided::Allow && last.at.0.as_second() == at.0.as_second()
        })
    {
        return;
    }
    entry.last_decision = Some(DecisionRecord {
        at,
        decision,
        subject: truncate(&subject, 512),
        reason: truncate(&reason, 512),
    });
    entry.decision_unwritten = true;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allow_and_would_deny_are_taken_at_their_word() {
        assert_eq!(parse_effect("allow"), Effect::Allow);
        assert_eq!(parse_effect("would-deny"), Effect::WouldDeny);
        for other in ["deny", "", "ALLOW", "allow ", "permit"] {
            assert_eq!(parse_effect(other), Effect::Deny, "{other:?}");
        }
    }

    #[test]
    fn audit_subjects_name_the_kind_of_call() {
        assert_eq!(call_subject(None, "search"), "tool:search");
        assert_eq!(call_subject(Some("tools/call"), "search"), "tool:search");
        assert_eq!(call_subject(Some("prompts/get"), "sum"), "prompt:sum");
        assert_eq!(
            call_subject(Some("resources/read"), "file:///a"),
            "resource:file:///a"
        );
        assert_eq!(call_subject(Some("x/y"), "z"), "x/y:z");
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate("ééé", 3), "é");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
