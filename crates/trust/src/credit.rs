//! The cap on positive credit from sidecar outcomes.
//!
//! A sidecar's signed reports are believed (the operator checks the identity's signature), but
//! a busy — or subverted — sidecar could still post any number of compliant outcomes and lift
//! its identity's score past every penalty it earned. So the positive points that sidecar
//! outcomes add to one identity are limited per interval by a token bucket ([`CreditBudget`]);
//! negative signals (denied calls, failed handshakes, anomalies) are never capped.
//!
//! **The values** ([`SIDECAR_CREDIT_POINTS`] per [`SIDECAR_CREDIT_INTERVAL_MS`]: 10 points per
//! hour), from the signal weights of [`crate::score`]:
//! - 10 points is 10 compliant calls (+1 each) or 5 successful handshakes (+2 each): any agent
//!   with real traffic reaches it within the hour, so the cap, not the traffic volume, sets how
//!   fast trust is regained.
//! - It is 5 times the default decay (2 points/hour), so a compliant agent still climbs a net
//!   8 points/hour: from the quarantine threshold (300) back to `standard` (500) in 25 hours,
//!   to `trusted` (700) in 50.
//! - The penalties dwarf it: a violation (−50) takes 5 hours of credit to repay, a failed
//!   handshake (−25) 2.5 hours, a denied call (−10) one hour. A flood of "allow" outcomes
//!   cannot wash out a penalty between two status writes.
//! - The bucket holds at most one interval's credit, so an agent idle for a day gets no more
//!   than 10 points from a burst.
//!
//! **Exactness.** The bucket is integer: one point is `interval_ms` units and it refills
//! `points` units per millisecond, so refilling in many small steps equals one step over the
//! same time. Time is an input; an earlier `now` than the last one refills nothing.

use agentmesh_identity::Timestamp;

/// Positive points sidecar outcomes may add to one identity per [`SIDECAR_CREDIT_INTERVAL_MS`].
pub const SIDECAR_CREDIT_POINTS: i32 = 10;
/// One hour.
pub const SIDECAR_CREDIT_INTERVAL_MS: i64 = 3_600_000;

/// At most `points` positive points per `interval_ms`, refilled continuously.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CreditCap {
    pub points: i32,
    pub interval_ms: i64,
}

impl Default for CreditCap {
    /// The sidecar cap: 10 points per hour (see the module docs for why).
    fn default() -> Self {
        Self {
            points: SIDECAR_CREDIT_POINTS,
            interval_ms: SIDECAR_CREDIT_INTERVAL_MS,
        }
    }
}

impl CreditCap {
    /// Whether the cap grants anything at all (a zero or negative setting grants nothing).
    fn grants(&self) -> bool {
        self.points > 0 && self.interval_ms > 0
    }

    fn capacity_units(&self) -> i64 {
        i64::from(self.points).saturating_mul(self.interval_ms)
    }
}

/// One identity's remaining credit under a [`CreditCap`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CreditBudget {
    /// `interval_ms` units per point.
    units: i64,
    refilled_until: Timestamp,
}

impl CreditBudget {
    /// A full bucket at `now`: a whole interval's credit.
    pub fn full(cap: &CreditCap, now: Timestamp) -> Self {
        Self {
            units: if cap.grants() {
                cap.capacity_units()
            } else {
                0
            },
            refilled_until: now,
        }
    }

    fn refill(&mut self, cap: &CreditCap, now: Timestamp) {
        let elapsed = now.millis_since(self.refilled_until);
        if elapsed <= 0 {
            return;
        }
        self.refilled_until = now;
        if !cap.grants() {
            self.units = 0;
            return;
        }
        let added = elapsed.saturating_mul(i64::from(cap.points));
        self.units = self.units.saturating_add(added).min(cap.capacity_units());
    }

    /// Whole points available at `now`.
    pub fn available(&self, cap: &CreditCap, now: Timestamp) -> i32 {
        let mut copy = *self;
        copy.refill(cap, now);
        if cap.grants() {
            i32::try_from(copy.units / cap.interval_ms).unwrap_or(i32::MAX)
        } else {
            0
        }
    }

    /// Takes up to `wanted` points at `now`; returns the points granted (0 ..= `wanted`; 0 for a
    /// zero or negative `wanted`).
    pub fn take(&mut self, cap: &CreditCap, wanted: i32, now: Timestamp) -> i32 {
        self.refill(cap, now);
        if wanted <= 0 || !cap.grants() {
            return 0;
        }
        let available = self.units / cap.interval_ms;
        let granted = i64::from(wanted).min(available);
        self.units -= granted * cap.interval_ms;
        // granted <= wanted, an i32.
        granted as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::{Signal, TrustConfig, TrustState};
    use proptest::prelude::*;

    const T0: Timestamp = Timestamp::from_secs(1_800_000_000);
    const HOUR: i64 = 3_600_000;

    #[test]
    fn the_default_is_ten_points_an_hour() {
        let cap = CreditCap::default();
        let mut budget = CreditBudget::full(&cap, T0);
        assert_eq!(budget.available(&cap, T0), 10);
        let granted: i32 = (0..100).map(|_| budget.take(&cap, 1, T0)).sum();
        assert_eq!(granted, 10);
        assert_eq!(budget.take(&cap, 1, T0.plus_millis(1)), 0);
        // One point refills every 6 minutes.
        assert_eq!(budget.take(&cap, 5, T0.plus_millis(HOUR / 10 - 1)), 0);
        assert_eq!(budget.take(&cap, 5, T0.plus_millis(HOUR / 10)), 1);
        // An idle day refills one interval's worth, no more.
        assert_eq!(budget.available(&cap, T0.plus_millis(24 * HOUR)), 10);
    }

    #[test]
    fn time_going_backwards_refills_nothing() {
        let cap = CreditCap::default();
        let mut budget = CreditBudget::full(&cap, T0.plus_millis(HOUR));
        assert_eq!(budget.take(&cap, 10, T0.plus_millis(HOUR)), 10);
        assert_eq!(budget.take(&cap, 1, T0), 0);
        assert_eq!(budget.take(&cap, 1, T0.plus_millis(HOUR)), 0);
    }

    #[test]
    fn a_zero_cap_grants_nothing_and_never_panics() {
        for cap in [
            CreditCap {
                points: 0,
                interval_ms: HOUR,
            },
            CreditCap {
                points: 10,
                interval_ms: 0,
            },
            CreditCap {
                points: -5,
                interval_ms: -1,
            },
        ] {
            let mut budget = CreditBudget::full(&cap, T0);
            assert_eq!(budget.take(&cap, 5, T0.plus_millis(HOUR)), 0, "{cap:?}");
            assert_eq!(budget.available(&cap, T0.plus_millis(HOUR)), 0, "{cap:?}");
        }
    }

    #[test]
    fn capped_application_caps_rewards_and_never_penalties() {
        let config = TrustConfig::default();
        let cap = CreditCap::default();
        let mut budget = CreditBudget::full(&cap, T0);
        let mut state = TrustState::at(500, T0);
        for _ in 0..1000 {
            state.apply_capped(&config, Signal::CompliantActivity, &cap, &mut budget, T0);
        }
        assert_eq!(state.score(), 510);
        let applied = state.apply_capped(&config, Signal::Violation, &cap, &mut budget, T0);
        assert_eq!(applied, -50);
        assert_eq!(state.score(), 460);
        let applied =
            state.apply_capped(&config, Signal::HandshakeSucceeded, &cap, &mut budget, T0);
        assert_eq!(applied, 0);
        assert_eq!(state.score(), 460);
    }

    fn signal() -> impl Strategy<Value = Signal> {
        prop_oneof![
            Just(Signal::CompliantActivity),
            Just(Signal::HandshakeSucceeded),
            Just(Signal::HandshakeFailed),
            Just(Signal::DeniedCall),
            (0..200i32).prop_map(|penalty| Signal::Anomaly { penalty }),
        ]
    }

    fn cap() -> impl Strategy<Value = CreditCap> {
        (1..50i32, 1..10 * HOUR).prop_map(|(points, interval_ms)| CreditCap {
            points,
            interval_ms,
        })
    }

    proptest! {
        /// Over any stretch of time T from a full bucket, at most points × (1 + T / interval)
        /// are granted, whatever is asked when.
        #[test]
        fn never_more_than_the_bucket_and_its_refill(cap in cap(), asks in proptest::collection::vec((0..HOUR, 0..20i32), 0..200)) {
            let mut budget = CreditBudget::full(&cap, T0);
            let mut t = T0;
            let mut total: i64 = 0;
            for (dt, wanted) in asks {
                t = t.plus_millis(dt);
                let granted = budget.take(&cap, wanted, t);
                prop_assert!((0..=wanted.max(0)).contains(&granted));
                total += i64::from(granted);
                let elapsed = t.millis_since(T0);
                let bound = i64::from(cap.points) + i64::from(cap.points) * elapsed / cap.interval_ms;
                prop_assert!(total <= bound, "granted {} > bound {} after {} ms", total, bound, elapsed);
            }
        }

        /// The cap is not a permanent block: one idle interval makes the whole credit available.
        #[test]
        fn an_idle_interval_restores_the_whole_credit(cap in cap(), asks in proptest::collection::vec((0..HOUR, 0..20i32), 0..50)) {
            let mut budget = CreditBudget::full(&cap, T0);
            let mut t = T0;
            for (dt, wanted) in asks {
                t = t.plus_millis(dt);
                budget.take(&cap, wanted, t);
            }
            prop_assert_eq!(budget.available(&cap, t.plus_millis(cap.interval_ms)), cap.points);
        }

        /// Penalties are applied in full, exactly as without a cap; rewards never exceed the cap.
        #[test]
        fn penalties_are_never_capped(signals in proptest::collection::vec((0..HOUR, signal()), 0..100)) {
            let config = TrustConfig::new(800, 0.0, 100, 300, Default::default()).unwrap();
            let cap = CreditCap::default();
            let mut budget = CreditBudget::full(&cap, T0);
            let mut capped = TrustState::at(500, T0);
            let mut t = T0;
            let mut rewards = 0i64;
            let mut penalties = 0i64;
            for (dt, signal) in signals {
                t = t.plus_millis(dt);
                let before = capped.score();
                let applied = capped.apply_capped(&config, signal, &cap, &mut budget, t);
                // Without decay, the score moves by exactly what was applied (clamped).
                prop_assert_eq!(capped.score(), (before + applied).clamp(0, 1000));
                let full = config.delta(signal);
                if full < 0 {
                    prop_assert_eq!(applied, full);
                    penalties += i64::from(full);
                } else {
                    prop_assert!((0..=full).contains(&applied));
                    rewards += i64::from(applied);
                }
            }
            let elapsed = t.millis_since(T0);
            prop_assert!(rewards <= 10 + 10 * elapsed / HOUR);
            prop_assert!(penalties <= 0);
        }
    }
}
