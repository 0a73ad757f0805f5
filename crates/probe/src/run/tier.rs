//! The safety tier in force: the one requested, lowered rather than failing when the node
//! cannot give it. Pure: what the node gave is passed in.

use std::path::Path;

use crate::config::Tier;

/// What became of the kernel programs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelOutcome<'a> {
    /// Tier 1 was asked for: nothing was loaded.
    NotWanted,
    /// No kernel BTF at this path: CO-RE programs cannot be relocated.
    NoBtf(&'a Path),
    /// Loading or attaching failed.
    Failed(String),
    /// Loaded and attached; tier 3 enforcement too, or why not.
    Loaded { blocking: Result<(), String> },
}

/// Whether the requested tier needs the kernel programs.
pub fn wants_kernel(requested: Tier) -> bool {
    requested >= Tier::ReadOnly
}

/// The tier in force and, when lower than the one requested, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierDecision {
    pub tier: Tier,
    pub reason: Option<String>,
}

pub fn decide(requested: Tier, kernel: &KernelOutcome<'_>) -> TierDecision {
    let lowered = |tier, reason: String| TierDecision {
        tier,
        reason: Some(reason),
    };
    match kernel {
        KernelOutcome::NotWanted => TierDecision {
            tier: requested,
            reason: None,
        },
        KernelOutcome::NoBtf(path) => lowered(
            Tier::UserMode,
            format!(
                "no kernel BTF at {}: CO-RE programs cannot be loaded",
                path.display()
            ),
        ),
        KernelOutcome::Failed(error) => lowered(Tier::UserMode, error.clone()),
        KernelOutcome::Loaded { blocking: Err(why) } if requested == Tier::Blocking => {
            lowered(Tier::ReadOnly, format!("tier 3 unavailable: {why}"))
        }
        KernelOutcome::Loaded { .. } => TierDecision {
            tier: requested,
            reason: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(tier: Tier) -> TierDecision {
        TierDecision { tier, reason: None }
    }

    #[test]
    fn only_tiers_2_and_3_load_the_kernel_programs() {
        assert!(!wants_kernel(Tier::UserMode));
        assert!(wants_kernel(Tier::ReadOnly) && wants_kernel(Tier::Blocking));
        assert_eq!(
            decide(Tier::UserMode, &KernelOutcome::NotWanted),
            kept(Tier::UserMode)
        );
    }

    #[test]
    fn loaded_programs_keep_the_tier_asked_for() {
        let loaded = KernelOutcome::Loaded { blocking: Ok(()) };
        assert_eq!(decide(Tier::Blocking, &loaded), kept(Tier::Blocking));
        assert_eq!(decide(Tier::ReadOnly, &loaded), kept(Tier::ReadOnly));
        // Below tier 3 nobody asked for enforcement: its absence lowers nothing.
        let read_only = KernelOutcome::Loaded {
            blocking: Err("safety tier 3 not requested".into()),
        };
        assert_eq!(decide(Tier::ReadOnly, &read_only), kept(Tier::ReadOnly));
    }

    #[test]
    fn tier_3_without_enforcement_falls_to_tier_2_saying_why() {
        let loaded = KernelOutcome::Loaded {
            blocking: Err("cgroup/connect4 refused".into()),
        };
        let decision = decide(Tier::Blocking, &loaded);
        assert_eq!(decision.tier, Tier::ReadOnly);
        assert_eq!(
            decision.reason.as_deref(),
            Some("tier 3 unavailable: cgroup/connect4 refused")
        );
    }

    #[test]
    fn no_btf_or_a_failed_load_falls_to_user_mode_saying_why() {
        for requested in [Tier::ReadOnly, Tier::Blocking] {
            let decision = decide(requested, &KernelOutcome::NoBtf(Path::new("/no/btf")));
            assert_eq!(decision.tier, Tier::UserMode);
            assert_eq!(
                decision.reason.as_deref(),
                Some("no kernel BTF at /no/btf: CO-RE programs cannot be loaded")
            );
            let failed = KernelOutcome::Failed("BPF load failed: EPERM".into());
            assert_eq!(
                decide(requested, &failed),
                TierDecision {
                    tier: Tier::UserMode,
                    reason: Some("BPF load failed: EPERM".into())
                }
            );
        }
    }
}
