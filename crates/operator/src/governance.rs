//! Which TrustPolicy governs which AgentIdentity, and which policies are refused.
//!
//! One identity is governed by one policy. Within a namespace, policies are taken oldest first
//! (creation time, then name). A policy is refused (`Accepted=False`) when:
//! - it does not compile (`Invalid`: something the schema cannot check, e.g. a bad pattern), or
//! - it selects an identity that an older accepted policy already governs with the other mode
//!   (`ConflictingMode`): enforce and shadow cannot both apply to one agent.
//!
//! An accepted policy governs the identities it selects that no older accepted policy governs;
//! an overlap with the same mode is allowed and the older policy keeps those identities (the
//! newer one's status says so). Identities no accepted policy selects get the operator's
//! default preset (`AGENTMESH_GOVERNANCE_DEFAULT_POLICY`, `AGENTMESH_GOVERNANCE_SHADOW_MODE`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use agentmesh_api::identity::AgentIdentity;
use agentmesh_api::policy::{PolicyMode, TrustPolicy};
use agentmesh_api::settings::Settings;
use agentmesh_trust::Policy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};

/// The verdict on one policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub accepted: bool,
    /// Condition reason: `Accepted`, `Overlaps`, `Invalid`, `ConflictingMode`.
    pub reason: &'static str,
    pub message: String,
    /// Names of the identities this policy governs.
    pub governs: BTreeSet<String>,
}

/// The outcome for one namespace.
#[derive(Clone, Debug, Default)]
pub struct Governance {
    /// Policy name → verdict.
    pub policies: BTreeMap<String, Verdict>,
    /// Identity name → governing policy name.
    pub governed_by: BTreeMap<String, String>,
}

/// Whether `selector` (absent: everything) selects `labels`.
pub fn selects(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    match selector {
        None => true,
        Some(selector) => match Selector::try_from(selector.clone()) {
            Ok(selector) => selector.matches(labels),
            Err(_) => false, // the API server validates selectors; an unparsable one selects nothing
        },
    }
}

/// Decides, for the policies and identities of one namespace.
pub fn evaluate(policies: &[Arc<TrustPolicy>], identities: &[Arc<AgentIdentity>]) -> Governance {
    let mut ordered: Vec<&Arc<TrustPolicy>> = policies.iter().collect();
    ordered.sort_by(|a, b| {
        let created = |p: &TrustPolicy| p.metadata.creation_timestamp.clone().map(|t| t.0);
        created(a)
            .cmp(&created(b))
            .then_with(|| a.name_any().cmp(&b.name_any()))
    });
    let mut result = Governance::default();
    let mut modes: BTreeMap<String, PolicyMode> = BTreeMap::new(); // identity → governing mode
    for policy in ordered {
        let name = policy.name_any();
        if let Err(error) = agentmesh_api::convert::compile_policy(&policy.spec) {
            result.policies.insert(
                name,
                refused("Invalid", format!("the policy does not compile: {error}")),
            );
            continue;
        }
        let selected: Vec<String> = identities
            .iter()
            .filter(|identity| selects(policy.spec.selector.as_ref(), identity.labels()))
            .map(|identity| identity.name_any())
            .collect();
        let conflict = selected.iter().find_map(|identity| {
            let mode = modes.get(identity)?;
            (*mode != policy.spec.mode)
                .then(|| (identity.clone(), result.governed_by[identity].clone()))
        });
        if let Some((identity, older)) = conflict {
            let message = format!(
                "selects AgentIdentity {identity}, which the older policy {older} governs in {} mode; one agent cannot be governed in both modes",
                mode_name(modes[&identity])
            );
            result
                .policies
                .insert(name, refused("ConflictingMode", message));
            continue;
        }
        let mut governs = BTreeSet::new();
        let mut overlapped = Vec::new();
        for identity in selected {
            match result.governed_by.get(&identity) {
                Some(older) => overlapped.push(format!("{identity} (governed by {older})")),
                None => {
                    result.governed_by.insert(identity.clone(), name.clone());
                    modes.insert(identity.clone(), policy.spec.mode);
                    governs.insert(identity);
                }
            }
        }
        let verdict = if overlapped.is_empty() {
            Verdict {
                accepted: true,
                reason: "Accepted",
                message: format!("governs {} AgentIdentities", governs.len()),
                governs,
            }
        } else {
            Verdict {
                accepted: true,
                reason: "Overlaps",
                message: format!(
                    "governs {} AgentIdentities; older policies keep {}",
                    governs.len(),
                    overlapped.join(", ")
                ),
                governs,
            }
        };
        result.policies.insert(name, verdict);
    }
    result
}

fn refused(reason: &'static str, message: String) -> Verdict {
    Verdict {
        accepted: false,
        reason,
        message,
        governs: BTreeSet::new(),
    }
}

fn mode_name(mode: PolicyMode) -> &'static str {
    match mode {
        PolicyMode::Enforce => "enforce",
        PolicyMode::Shadow => "shadow",
    }
}

/// The policy of identities that no TrustPolicy governs: the default preset, shadow mode and
/// trust settings of the operator's environment.
pub fn default_policy_spec(settings: &Settings) -> agentmesh_api::policy::TrustPolicySpec {
    agentmesh_api::convert::preset_policy_spec(settings, settings.default_policy)
}

/// The compiled default policy. The settings were checked at start-up, so it compiles.
pub fn default_policy(settings: &Settings) -> Policy {
    agentmesh_api::convert::compile_policy(&default_policy_spec(settings))
        .expect("the default policy from validated settings compiles")
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentmesh_api::identity::AgentIdentitySpec;
    use agentmesh_api::policy::TrustPolicySpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn identity(name: &str, team: &str) -> Arc<AgentIdentity> {
        let mut identity = AgentIdentity::new(name, AgentIdentitySpec::default());
        identity.metadata.labels = Some(BTreeMap::from([("team".into(), team.into())]));
        Arc::new(identity)
    }

    fn policy(name: &str, age: i64, team: Option<&str>, mode: PolicyMode) -> Arc<TrustPolicy> {
        let selector = team.map(|team| LabelSelector {
            match_labels: Some(BTreeMap::from([("team".into(), team.into())])),
            ..Default::default()
        });
        let mut policy = TrustPolicy::new(
            name,
            TrustPolicySpec {
                selector,
                mode,
                ..Default::default()
            },
        );
        let created = k8s_openapi::jiff::Timestamp::from_second(1_800_000_000 - age).unwrap();
        policy.metadata.creation_timestamp = Some(Time(created));
        Arc::new(policy)
    }

    #[test]
    fn the_oldest_policy_governs_and_a_conflicting_mode_is_refused() {
        let identities = [identity("a", "research"), identity("b", "ops")];
        let policies = [
            policy("newer-shadow", 10, Some("research"), PolicyMode::Shadow),
            policy("older-enforce", 100, None, PolicyMode::Enforce),
            policy("ops-enforce", 5, Some("ops"), PolicyMode::Enforce),
        ];
        let governance = evaluate(&policies, &identities);
        assert_eq!(governance.governed_by["a"], "older-enforce");
        assert_eq!(governance.governed_by["b"], "older-enforce");
        let refused = &governance.policies["newer-shadow"];
        assert!(!refused.accepted);
        assert_eq!(refused.reason, "ConflictingMode");
        assert!(
            refused.message.contains("older-enforce"),
            "{}",
            refused.message
        );
        let overlap = &governance.policies["ops-enforce"];
        assert!(overlap.accepted);
        assert_eq!(overlap.reason, "Overlaps");
        assert!(overlap.governs.is_empty());
    }

    #[test]
    fn a_policy_that_does_not_compile_is_refused_and_governs_nothing() {
        let mut spec = TrustPolicySpec::default();
        spec.trust.decay_floor = 900; // above the threshold: the schema refuses it too
        let mut bad = TrustPolicy::new("bad", spec);
        bad.metadata.creation_timestamp =
            Some(Time(k8s_openapi::jiff::Timestamp::from_second(1).unwrap()));
        let governance = evaluate(&[Arc::new(bad)], &[identity("a", "x")]);
        assert_eq!(governance.policies["bad"].reason, "Invalid");
        assert!(!governance.governed_by.contains_key("a"));
    }

    #[test]
    fn the_default_policy_follows_the_settings() {
        let settings = Settings::from_lookup(|name| match name {
            "AGENTMESH_GOVERNANCE_DEFAULT_POLICY" => Some("strict".into()),
            "AGENTMESH_GOVERNANCE_SHADOW_MODE" => Some("true".into()),
            "AGENTMESH_TRUST_INITIAL_SCORE" => Some("700".into()),
            _ => None,
        })
        .unwrap();
        let policy = default_policy(&settings);
        assert_eq!(policy.mode(), agentmesh_trust::policy::Mode::Shadow);
        assert_eq!(
            policy.spec().preset,
            agentmesh_trust::policy::Preset::Strict
        );
        assert_eq!(policy.trust().starting_score(None), 700);
    }
}
