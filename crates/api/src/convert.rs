//! From the custom resources to the pure trust core: a `TrustPolicySpec` into a compiled
//! [`agentmesh_trust::Policy`], the CRD's delegation links into
//! [`agentmesh_identity::DelegationLink`]s, and scores and times both ways.
//!
//! The schema catches most mistakes at admission; what it cannot (a CIDR that CEL accepts but
//! is out of range here, a rate limit, an allow rule with a penalty when the CEL rules were
//! bypassed) is refused by [`compile_policy`] with an error naming the field.

use agentmesh_identity::delegation::DelegationLink;
use agentmesh_identity::keys::Did;
use agentmesh_identity::{KeyError, Timestamp};
use agentmesh_trust::policy::{self as tp, PolicySpec};
use agentmesh_trust::{Policy, PolicyError, Tier, standing};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::common::TrustTier;
use crate::identity::{
    AgentIdentityStatus, AnomalyKind, AnomalyRecord, Decision, DecisionRecord, SignedDelegationLink,
};
use crate::policy as crd;

/// Why a resource could not be converted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConvertError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("{field}: {source}")]
    Did { field: String, source: KeyError },
    #[error("{field}: instant out of range")]
    Time { field: String },
    #[error("{field}: missing")]
    Missing { field: String },
}

/// The current time as the trust model's timestamp (the binaries' clock; the pure crates take
/// time as an input).
pub fn now() -> Timestamp {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default();
    Timestamp::from_millis(millis)
}

/// The policy a preset name stands for under the seed's settings: the preset, shadow mode from
/// `AGENTMESH_GOVERNANCE_SHADOW_MODE`, and the `AGENTMESH_TRUST_*` and delegation settings. The
/// operator's default policy (`AGENTMESH_GOVERNANCE_DEFAULT_POLICY`) and the sidecar's policy
/// before the operator answers (`AGENTMESH_POLICY`) are both made here.
pub fn preset_policy_spec(
    settings: &crate::settings::Settings,
    preset: crate::settings::PresetName,
) -> crd::TrustPolicySpec {
    use crate::settings::PresetName;
    crd::TrustPolicySpec {
        mode: if settings.shadow_mode {
            crd::PolicyMode::Shadow
        } else {
            crd::PolicyMode::Enforce
        },
        preset: match preset {
            PresetName::Standard => crd::Preset::Standard,
            PresetName::Strict => crd::Preset::Strict,
            PresetName::Permissive => crd::Preset::Permissive,
        },
        trust: crd::TrustSettings {
            initial_score: settings.trust_initial_score,
            decay_rate: settings.trust_decay_rate,
            decay_floor: settings.trust_decay_floor,
            min_threshold: settings.trust_min_threshold,
            ..crd::TrustSettings::default()
        },
        delegation: crd::DelegationSettings {
            max_depth: settings.delegation_max_depth as i32,
        },
        ..crd::TrustPolicySpec::default()
    }
}

/// The trust crate's policy model for a `TrustPolicySpec` (the selector aside).
pub fn policy_spec(spec: &crd::TrustPolicySpec) -> PolicySpec {
    let rate = |r: &crd::RateLimit| tp::RateLimitSpec {
        requests: r.requests,
        period_seconds: r.period_seconds,
    };
    let action = |a: crd::BehaviorAction| match a {
        crd::BehaviorAction::Allow => tp::BehaviorAction::Allow,
        crd::BehaviorAction::Alert => tp::BehaviorAction::Alert,
        crd::BehaviorAction::Deny => tp::BehaviorAction::Deny,
    };
    let t = &spec.trust;
    let w = &t.signals;
    let a = &spec.behavior.anomalies;
    PolicySpec {
        mode: match spec.mode {
            crd::PolicyMode::Enforce => tp::Mode::Enforce,
            crd::PolicyMode::Shadow => tp::Mode::Shadow,
        },
        preset: match spec.preset {
            crd::Preset::Standard => tp::Preset::Standard,
            crd::Preset::Strict => tp::Preset::Strict,
            crd::Preset::Permissive => tp::Preset::Permissive,
        },
        trust: tp::TrustSpec {
            initial_score: t.initial_score,
            decay_rate: t.decay_rate,
            decay_floor: t.decay_floor,
            min_threshold: t.min_threshold,
            signals: agentmesh_trust::score::SignalWeights {
                compliant_activity: w.compliant_activity,
                successful_handshake: w.successful_handshake,
                failed_handshake: w.failed_handshake,
                denied_call: w.denied_call,
                violation: w.violation,
            },
        },
        max_delegation_depth: spec.delegation.max_depth,
        tools: tp::ToolSpec {
            allow: spec.tools.allow.clone(),
            deny: spec.tools.deny.clone(),
            rules: spec
                .tools
                .rules
                .iter()
                .map(|r| tp::ToolRuleSpec {
                    tool: r.tool.clone(),
                    min_score: r.min_score,
                    rate_limit: r.rate_limit.as_ref().map(rate),
                })
                .collect(),
            rate_limit: spec.tools.rate_limit.as_ref().map(rate),
        },
        allowed_peers: spec.allowed_peers.clone(),
        min_peer_score: spec.min_peer_score,
        behavior: tp::BehaviorSpec {
            exec: spec
                .behavior
                .exec
                .iter()
                .map(|r| tp::ExecRuleSpec {
                    path: r.path.clone(),
                    action: action(r.action),
                    penalty: r.penalty,
                })
                .collect(),
            files: spec
                .behavior
                .files
                .iter()
                .map(|r| tp::FileRuleSpec {
                    path_prefix: r.path_prefix.clone(),
                    access: match r.access {
                        crd::FileAccess::Read => tp::FileAccess::Read,
                        crd::FileAccess::Write => tp::FileAccess::Write,
                        crd::FileAccess::Any => tp::FileAccess::Any,
                    },
                    action: action(r.action),
                    penalty: r.penalty,
                })
                .collect(),
            network: spec
                .behavior
                .network
                .iter()
                .map(|r| tp::NetworkRuleSpec {
                    cidr: r.cidr.clone(),
                    ports: r.ports.clone(),
                    action: action(r.action),
                    penalty: r.penalty,
                })
                .collect(),
            anomalies: tp::AnomalySpec {
                new_executable: a.new_executable,
                new_destination: a.new_destination,
                sensitive_write: a.sensitive_write,
                unobserved: a.unobserved,
                sensitive_paths: a.sensitive_paths.clone(),
                learning_period_seconds: a.learning_period_seconds,
            },
        },
        quarantine: tp::QuarantineSpec {
            deny_tools: spec.quarantine.deny_tools,
            block_network: spec.quarantine.block_network,
        },
    }
}

/// Check and compile a `TrustPolicySpec`.
pub fn compile_policy(spec: &crd::TrustPolicySpec) -> Result<Policy, ConvertError> {
    Ok(Policy::compile(policy_spec(spec))?)
}

pub fn tier(tier: Tier) -> TrustTier {
    match tier {
        Tier::Verified => TrustTier::Verified,
        Tier::Trusted => TrustTier::Trusted,
        Tier::Standard => TrustTier::Standard,
        Tier::Probationary => TrustTier::Probationary,
        Tier::Untrusted => TrustTier::Untrusted,
    }
}

/// The trust model's tier of a CRD tier.
pub fn tier_of(tier: TrustTier) -> Tier {
    match tier {
        TrustTier::Verified => Tier::Verified,
        TrustTier::Trusted => Tier::Trusted,
        TrustTier::Standard => Tier::Standard,
        TrustTier::Probationary => Tier::Probationary,
        TrustTier::Untrusted => Tier::Untrusted,
    }
}

pub fn timestamp(time: &Time) -> Timestamp {
    Timestamp::from_millis(time.0.as_millisecond())
}

pub fn time(timestamp: Timestamp, field: &str) -> Result<Time, ConvertError> {
    k8s_openapi::jiff::Timestamp::from_millisecond(timestamp.as_millis())
        .map(Time)
        .map_err(|_| ConvertError::Time {
            field: field.into(),
        })
}

/// A trust-rule anomaly as AgentIdentity status records it (`None`: a time out of range).
pub fn anomaly_record(note: &standing::AnomalyNote) -> Option<AnomalyRecord> {
    use standing::AnomalyKind as Rule;
    Some(AnomalyRecord {
        observed_at: time(note.at, "observedAt").ok()?,
        kind: match note.kind {
            Rule::NewExecutable => AnomalyKind::NewExecutable,
            Rule::NewDestination => AnomalyKind::NewDestination,
            Rule::SensitiveWrite => AnomalyKind::SensitiveWrite,
            Rule::RuleMatch => AnomalyKind::RuleMatch,
            Rule::ToolChanged => AnomalyKind::ToolChanged,
            Rule::Unobserved => AnomalyKind::Unobserved,
        },
        detail: note.detail.clone(),
        penalty: note.penalty,
        pod: note.pod.clone(),
    })
}

/// An anomaly recorded in status, for the trust rule.
pub fn anomaly_note(record: &AnomalyRecord) -> standing::AnomalyNote {
    use standing::AnomalyKind as Rule;
    standing::AnomalyNote {
        at: timestamp(&record.observed_at),
        kind: match record.kind {
            AnomalyKind::NewExecutable => Rule::NewExecutable,
            AnomalyKind::NewDestination => Rule::NewDestination,
            AnomalyKind::SensitiveWrite => Rule::SensitiveWrite,
            AnomalyKind::RuleMatch => Rule::RuleMatch,
            AnomalyKind::ToolChanged => Rule::ToolChanged,
            AnomalyKind::Unobserved => Rule::Unobserved,
        },
        detail: record.detail.clone(),
        penalty: record.penalty,
        pod: record.pod.clone(),
    }
}

/// A trust-rule decision as AgentIdentity status records it (`None`: a time out of range).
pub fn decision_record(note: &standing::DecisionNote) -> Option<DecisionRecord> {
    use standing::Verdict;
    Some(DecisionRecord {
        at: time(note.at, "lastDecision.at").ok()?,
        decision: match note.verdict {
            Verdict::Allow => Decision::Allow,
            Verdict::Deny => Decision::Deny,
            Verdict::WouldDeny => Decision::WouldDeny,
            Verdict::Anomaly => Decision::Anomaly,
            Verdict::Blocked => Decision::Blocked,
        },
        subject: note.subject.clone(),
        reason: note.reason.clone(),
    })
}

/// The last decision recorded in status, for the trust rule.
pub fn decision_note(record: &DecisionRecord) -> standing::DecisionNote {
    use standing::Verdict;
    standing::DecisionNote {
        at: timestamp(&record.at),
        verdict: match record.decision {
            Decision::Allow => Verdict::Allow,
            Decision::Deny => Verdict::Deny,
            Decision::WouldDeny => Verdict::WouldDeny,
            Decision::Anomaly => Verdict::Anomaly,
            Decision::Blocked => Verdict::Blocked,
        },
        subject: record.subject.clone(),
        reason: record.reason.clone(),
    }
}

/// What the engine's status fields say now, for the trust rule's write cadence.
pub fn stored_standing(status: &AgentIdentityStatus) -> standing::Stored {
    standing::Stored {
        score: status.trust_score,
        tier: status.tier.map(tier_of),
        quarantined: status.quarantined,
        has_score_time: status.score_updated_at.is_some(),
    }
}

/// The persisted score in an AgentIdentity status, if both fields are set.
pub fn persisted_score(status: &AgentIdentityStatus) -> Option<agentmesh_trust::PersistedScore> {
    Some(agentmesh_trust::PersistedScore {
        trust_score: status.trust_score?,
        score_updated_at: timestamp(status.score_updated_at.as_ref()?),
    })
}

/// A CRD delegation link as the identity crate's link (DIDs checked).
pub fn delegation_link(
    link: &SignedDelegationLink,
    index: usize,
) -> Result<DelegationLink, ConvertError> {
    let did = |text: &str, name: &str| {
        Did::parse(text).map_err(|source| ConvertError::Did {
            field: format!("status.delegationChain[{index}].{name}"),
            source,
        })
    };
    Ok(DelegationLink {
        issuer: did(&link.issuer, "issuer")?,
        subject: did(&link.subject, "subject")?,
        capabilities: link.capabilities.clone(),
        issued_at: link
            .issued_at
            .as_ref()
            .map(timestamp)
            .ok_or_else(|| ConvertError::Missing {
                field: format!("status.delegationChain[{index}].issuedAt"),
            })?,
        expires_at: link.expires_at.as_ref().map(timestamp),
        signature: link.signature.clone(),
    })
}

/// The identity crate's link in the CRD's shape.
pub fn signed_delegation_link(
    link: &DelegationLink,
    index: usize,
) -> Result<SignedDelegationLink, ConvertError> {
    Ok(SignedDelegationLink {
        issuer: link.issuer.to_string(),
        subject: link.subject.to_string(),
        capabilities: link.capabilities.clone(),
        issued_at: Some(time(
            link.issued_at,
            &format!("status.delegationChain[{index}].issuedAt"),
        )?),
        expires_at: link
            .expires_at
            .map(|t| time(t, &format!("status.delegationChain[{index}].expiresAt")))
            .transpose()?,
        signature: link.signature.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::TrustPolicy;

    fn example() -> TrustPolicy {
        // The running test's manifest directory, not the one compiled in (see e2e's repo_root).
        let manifest = std::env::var("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
        let text =
            std::fs::read_to_string(format!("{manifest}/../../examples/trustpolicy.yaml")).unwrap();
        serde_saphyr::from_str(&text).unwrap()
    }

    #[test]
    fn the_example_policy_compiles_and_decides() {
        let policy = compile_policy(&example().spec).unwrap();
        let now = Timestamp::from_secs(1_800_000_000);
        let mut rate = policy.new_rate_state(now);
        assert!(
            policy
                .decide_tool("fetch_url", 600, &mut rate, now)
                .effect
                .is_allowed()
        );
        assert_eq!(
            policy.decide_tool("fetch_url", 499, &mut rate, now).rule(),
            "tools.rules[0].minScore"
        );
        assert_eq!(
            policy.decide_tool("shell_run", 900, &mut rate, now).rule(),
            "tools.deny[0]"
        );
        assert_eq!(policy.max_delegation_depth(), 3);
    }

    #[test]
    fn defaults_agree_with_the_trust_crate() {
        // An empty spec takes the CRD's serde defaults; they must be the trust crate's.
        let from_crd: crd::TrustPolicySpec = serde_json::from_str("{}").unwrap();
        assert_eq!(policy_spec(&from_crd), PolicySpec::default());
        assert_eq!(
            crate::names::env::AGENT_PRIVATE_KEY,
            agentmesh_identity::keyfile::agentmesh_env_name()
        );
    }

    #[test]
    fn what_the_schema_cannot_catch_is_refused_with_the_field() {
        let mut spec = example().spec;
        spec.behavior.network[0].cidr = "10.96.0.0/40".into();
        let err = compile_policy(&spec).unwrap_err();
        assert!(
            err.to_string().contains("spec.behavior.network[0].cidr"),
            "{err}"
        );
        let mut spec = example().spec;
        spec.behavior.exec[0].penalty = 5; // an allow rule with a penalty (CEL bypassed)
        assert!(
            compile_policy(&spec)
                .unwrap_err()
                .to_string()
                .contains("spec.behavior.exec[0].penalty")
        );
    }

    #[test]
    fn delegation_links_map_both_ways() {
        let key = agentmesh_identity::SigningKey::from_bytes(&[5; 32]);
        let subject = Did::from_public_key(
            &agentmesh_identity::SigningKey::from_bytes(&[6; 32]).verifying_key(),
        );
        let grants = agentmesh_identity::capability::parse_all(&["read:*"]).unwrap();
        let link = DelegationLink::create(
            &key,
            &grants,
            subject,
            vec!["read:documents".into()],
            Timestamp::from_secs(1_800_000_000),
            Some(Timestamp::from_secs(1_900_000_000)),
        )
        .unwrap();
        let crd_link = signed_delegation_link(&link, 0).unwrap();
        let json = serde_json::to_value(&crd_link).unwrap();
        assert_eq!(json, serde_json::to_value(&link).unwrap());
        assert_eq!(delegation_link(&crd_link, 0).unwrap(), link);
    }
}
