//! Which policy governs which identity, each policy compiled once per generation, and the
//! violations counted against each policy until its status shows them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentmesh_api::identity::AgentIdentity;
use agentmesh_api::policy::{TrustPolicy, ViolationRecord};
use agentmesh_trust::standing::Violation;
use agentmesh_trust::{Policy, Timestamp};
use kube::ResourceExt;

use super::key;
use crate::governance::{self, Governance};

pub(super) struct Policies {
    /// Namespace → who governs whom.
    governance: HashMap<String, Governance>,
    /// Policy key → (generation, compiled).
    compiled: HashMap<String, (Option<i64>, Arc<Policy>)>,
    default_policy: Arc<Policy>,
    violations: HashMap<String, ViolationTally>,
}

/// Violations of one policy: the count in status plus what was added since.
#[derive(Clone, Debug, Default)]
struct ViolationTally {
    count: i64,
    last: Option<ViolationRecord>,
    dirty: bool,
    written_at: Option<Instant>,
}

/// A TrustPolicy's violation fields, due to be written.
pub struct ViolationWrite {
    /// `namespace/name`.
    pub policy: String,
    pub count: i64,
    pub last: Option<ViolationRecord>,
}

impl Policies {
    pub(super) fn new(default_policy: Policy) -> Self {
        Self {
            governance: HashMap::new(),
            compiled: HashMap::new(),
            default_policy: Arc::new(default_policy),
            violations: HashMap::new(),
        }
    }

    /// Decides again who governs whom, and compiles what changed.
    pub(super) fn refresh(
        &mut self,
        policies: &[Arc<TrustPolicy>],
        identities: &[Arc<AgentIdentity>],
    ) {
        type NamespaceObjects<'a> = (Vec<Arc<TrustPolicy>>, Vec<Arc<AgentIdentity>>);
        let mut by_namespace: BTreeMap<String, NamespaceObjects> = BTreeMap::new();
        for policy in policies {
            by_namespace
                .entry(policy.namespace().unwrap_or_default())
                .or_default()
                .0
                .push(policy.clone());
        }
        for identity in identities {
            by_namespace
                .entry(identity.namespace().unwrap_or_default())
                .or_default()
                .1
                .push(identity.clone());
        }
        self.governance = by_namespace
            .iter()
            .map(|(ns, (policies, identities))| {
                (ns.clone(), governance::evaluate(policies, identities))
            })
            .collect();
        let mut compiled = HashMap::new();
        for policy in policies {
            let k = key(&policy.namespace().unwrap_or_default(), &policy.name_any());
            let generation = policy.metadata.generation;
            let reuse = self
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
            self.violations.entry(k).or_insert_with(|| ViolationTally {
                count: policy.status.as_ref().map_or(0, |s| s.violations),
                last: policy
                    .status
                    .as_ref()
                    .and_then(|s| s.last_violation.clone()),
                ..Default::default()
            });
        }
        self.compiled = compiled;
    }

    /// The TrustPolicy (`namespace/name`) governing identity `k`, if one does.
    pub(super) fn governing_name(&self, k: &str) -> Option<String> {
        let (namespace, name) = k.split_once('/')?;
        let policy = self.governance.get(namespace)?.governed_by.get(name)?;
        Some(key(namespace, policy))
    }

    /// The compiled policy governing identity `k` (the default preset when none does).
    pub(super) fn policy_for(&self, k: &str) -> Arc<Policy> {
        self.governing_name(k)
            .and_then(|p| self.compiled.get(&p).map(|(_, policy)| policy.clone()))
            .unwrap_or_else(|| self.default_policy.clone())
    }

    /// Counts violations by `identity` against `policy` (none when no policy governs it).
    pub(super) fn record_violations(
        &mut self,
        policy: Option<String>,
        identity: &str,
        violations: &[Violation],
        now: Timestamp,
    ) {
        let Some(policy) = policy else { return };
        let Some(last) = violations.last() else {
            return;
        };
        let tally = self.violations.entry(policy).or_default();
        tally.count = tally.count.saturating_add(violations.len() as i64);
        tally.dirty = true;
        tally.last = agentmesh_api::convert::time(now, "lastViolation.observedAt")
            .ok()
            .map(|observed_at| ViolationRecord {
                observed_at,
                identity: identity.to_owned(),
                rule: last.rule.clone(),
                detail: last.detail.clone(),
                shadow: last.shadow,
            });
    }

    /// The violation counts due to be written: changed, and not written for `interval`.
    pub(super) fn due_writes(&mut self, interval: Duration) -> Vec<ViolationWrite> {
        self.violations
            .iter_mut()
            .filter(|(_, t)| t.dirty && t.written_at.is_none_or(|at| at.elapsed() >= interval))
            .map(|(k, t)| {
                t.dirty = false;
                t.written_at = Some(Instant::now());
                ViolationWrite {
                    policy: k.clone(),
                    count: t.count,
                    last: t.last.clone(),
                }
            })
            .collect()
    }
}
