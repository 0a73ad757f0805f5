//! What an identity did in one reporting window: the counts AgentIdentity status shows in
//! `behavior`. Counts come from the network (probe reports carry `u64`s) and are summed over
//! many reports, so every addition saturates: a huge or hostile count pins a field at
//! `i64::MAX` instead of wrapping to a negative number, which the CRD's schema (minimum 0) would
//! refuse, and with it the whole status write.

use serde::{Deserialize, Serialize};

/// Counts of one window; every field is at least 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WindowCounts {
    /// Processes executed (probe).
    pub execs: i64,
    /// Files opened (probe).
    pub file_opens: i64,
    /// Outbound connections attempted (probe).
    pub connects: i64,
    /// MCP calls decided by the sidecar.
    pub tool_calls: i64,
    /// Calls the policy denied.
    pub denied_calls: i64,
    /// Policy violations: denied calls, failed handshakes, refusals in the kernel, rule matches
    /// that are not `allow`.
    pub violations: i64,
    /// Behaviour anomalies.
    pub anomalies: i64,
}

/// `count` as an `i64`, `i64::MAX` when it does not fit.
fn clamp(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

impl WindowCounts {
    /// Adds a probe report's counts for one pod.
    pub fn add_probe(&mut self, execs: u64, file_opens: u64, connects: u64) {
        self.execs = self.execs.saturating_add(clamp(execs));
        self.file_opens = self.file_opens.saturating_add(clamp(file_opens));
        self.connects = self.connects.saturating_add(clamp(connects));
    }

    /// One MCP call decided by the sidecar; `denied` when the policy denied it (or would have).
    pub fn tool_call(&mut self, denied: bool) {
        self.tool_calls = self.tool_calls.saturating_add(1);
        if denied {
            self.denied_calls = self.denied_calls.saturating_add(1);
            self.violation();
        }
    }

    /// One policy violation.
    pub fn violation(&mut self) {
        self.violations = self.violations.saturating_add(1);
    }

    /// One behaviour anomaly.
    pub fn anomaly(&mut self) {
        self.anomalies = self.anomalies.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_huge_count_saturates_instead_of_wrapping() {
        let mut counts = WindowCounts::default();
        counts.add_probe(u64::MAX, 1 << 63, 3);
        assert_eq!(counts.execs, i64::MAX);
        assert_eq!(counts.file_opens, i64::MAX, "2^63 does not fit an i64");
        assert_eq!(counts.connects, 3);
        counts.add_probe(5, 5, 5);
        assert_eq!(
            (counts.execs, counts.file_opens, counts.connects),
            (i64::MAX, i64::MAX, 8)
        );
    }

    #[test]
    fn a_denied_call_is_a_call_and_a_violation() {
        let mut counts = WindowCounts::default();
        counts.tool_call(false);
        counts.tool_call(true);
        counts.violation();
        counts.anomaly();
        assert_eq!(
            counts,
            WindowCounts {
                tool_calls: 2,
                denied_calls: 1,
                violations: 2,
                anomalies: 1,
                ..WindowCounts::default()
            }
        );
    }

    #[test]
    fn status_field_names_are_the_crds() {
        let json = serde_json::to_value(WindowCounts::default()).unwrap();
        let mut keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "anomalies",
                "connects",
                "deniedCalls",
                "execs",
                "fileOpens",
                "toolCalls",
                "violations"
            ]
        );
    }

    proptest! {
        /// Whatever reports arrive, no count is ever negative, and each is the exact sum while
        /// the sum fits.
        #[test]
        fn counts_never_go_negative_and_are_exact_while_they_fit(
            reports in proptest::collection::vec((any::<u64>(), 0u64..1 << 40, any::<u32>()), 0..50),
        ) {
            let mut counts = WindowCounts::default();
            let mut exact: (u128, u128, u128) = (0, 0, 0);
            for (execs, opens, connects) in &reports {
                counts.add_probe(*execs, *opens, u64::from(*connects));
                exact.0 += u128::from(*execs);
                exact.1 += u128::from(*opens);
                exact.2 += u128::from(*connects);
            }
            let expect = |sum: u128| i64::try_from(sum).unwrap_or(i64::MAX);
            prop_assert!(counts.execs >= 0 && counts.file_opens >= 0 && counts.connects >= 0);
            prop_assert_eq!(counts.execs, expect(exact.0));
            prop_assert_eq!(counts.file_opens, expect(exact.1));
            prop_assert_eq!(counts.connects, expect(exact.2));
        }
    }
}
