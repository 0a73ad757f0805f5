//! The trust score: one documented, deterministic model.
//!
//! - The score is 0–1000. Tiers: `verified` ≥ 900, `trusted` ≥ 700, `standard` ≥ 500,
//!   `probationary` ≥ 300, `untrusted` below.
//! - A new identity starts at `initialScore` (800), or at its delegating parent's score when
//!   that is lower.
//! - Decay: the score falls linearly at `decayRate` points per hour towards `decayFloor`, never
//!   below it (a score already below the floor, after penalties, does not decay). Decay is
//!   applied only for the time since it was last applied ([`TrustState::advance`]).
//! - Signals: compliant activity (+1) and successful handshakes (+2) raise the score; failed
//!   handshakes (−25), denied calls (−10), violations (−50) and anomalies (their penalty) lower
//!   it; the result is clamped to 0–1000. Weights come from the policy. Positive credit from
//!   sidecar outcomes is capped per interval ([`TrustState::apply_capped`], [`crate::credit`]).
//! - Quarantined: score below `minThreshold` (300).
//! - Below the floor (reached only through penalties) the score is whole points.
//!
//! **Exactness.** The state is fixed-point: one point is [`UNITS_PER_POINT`] = 3.6 × 10⁹
//! units, so a decay rate in milli-points per hour (the rate is kept to 0.001 point/hour)
//! removes a whole number of units per millisecond: decaying in many small steps gives
//! exactly the same result as one step over the same time, whatever the step.
//!
//! **The reported score** is the state rounded up: a point is lost once it has fully decayed.
//!
//! **What is persisted** ([`PersistedScore`]): the integer `trustScore` and `scoreUpdatedAt`,
//! to the second. Since signals, floors and caps are whole points, the fraction of a point in
//! the state can only come from decay, so the state is rebuilt exactly by reading
//! `scoreUpdatedAt` as "the instant at which the score was exactly `trustScore`" (up to half
//! an hour before the last update, at 2 points/hour). That instant is rounded towards the
//! future, so a restart may forgo less than one second of decay and never applies any twice.

use agentmesh_identity::Timestamp;
use serde::{Deserialize, Serialize};

use crate::credit::{CreditBudget, CreditCap};
use crate::defaults;

/// Fixed-point units per score point: 3.6 × 10⁹, so that 1 milli-point per hour is exactly
/// one unit per millisecond.
pub const UNITS_PER_POINT: i64 = 3_600_000_000;
pub const MAX_SCORE: i32 = 1000;

/// Trust tier, from the score.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Tier {
    Untrusted,
    Probationary,
    Standard,
    Trusted,
    Verified,
}

impl Tier {
    pub const fn of(score: i32) -> Self {
        match score {
            900.. => Self::Verified,
            700..=899 => Self::Trusted,
            500..=699 => Self::Standard,
            300..=499 => Self::Probationary,
            _ => Self::Untrusted,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Verified => "verified",
            Self::Trusted => "trusted",
            Self::Standard => "standard",
            Self::Probationary => "probationary",
            Self::Untrusted => "untrusted",
        }
    }
}

/// Points per signal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignalWeights {
    pub compliant_activity: i32,
    pub successful_handshake: i32,
    pub failed_handshake: i32,
    pub denied_call: i32,
    pub violation: i32,
}

impl Default for SignalWeights {
    fn default() -> Self {
        Self {
            compliant_activity: defaults::COMPLIANT_ACTIVITY_REWARD,
            successful_handshake: defaults::SUCCESSFUL_HANDSHAKE_REWARD,
            failed_handshake: defaults::FAILED_HANDSHAKE_PENALTY,
            denied_call: defaults::DENIED_CALL_PENALTY,
            violation: defaults::VIOLATION_PENALTY,
        }
    }
}

/// Something that moves the score.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Signal {
    /// An allowed, compliant tool call.
    CompliantActivity,
    HandshakeSucceeded,
    HandshakeFailed,
    /// A policy violation other than a denied call (e.g. a denied behaviour).
    Violation,
    DeniedCall,
    /// Behaviour outside the baseline, or a matched behaviour rule, with its penalty.
    Anomaly {
        penalty: i32,
    },
}

/// Why trust settings were refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TrustConfigError {
    #[error("{field} must be between 0 and 1000, got {value}")]
    OutOfRange { field: &'static str, value: f64 },
    #[error("decayFloor ({floor}) must be lower than minThreshold ({threshold})")]
    FloorNotBelowThreshold { floor: i32, threshold: i32 },
    #[error("minThreshold ({threshold}) must not exceed initialScore ({initial})")]
    ThresholdAboveInitial { threshold: i32, initial: i32 },
}

/// Trust settings, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustConfig {
    pub initial_score: i32,
    /// Decay rate in milli-points per hour (2.0 points/hour = 2000).
    pub decay_milli_points_per_hour: i64,
    pub decay_floor: i32,
    pub min_threshold: i32,
    pub weights: SignalWeights,
}

impl Default for TrustConfig {
    fn default() -> Self {
        Self {
            initial_score: defaults::INITIAL_SCORE,
            decay_milli_points_per_hour: (defaults::DECAY_RATE_POINTS_PER_HOUR * 1000.0) as i64,
            decay_floor: defaults::DECAY_FLOOR,
            min_threshold: defaults::MIN_THRESHOLD,
            weights: SignalWeights::default(),
        }
    }
}

impl TrustConfig {
    /// Validate settings as the CRD states them (`decayRate` in points per hour, kept to the
    /// milli-point).
    pub fn new(
        initial_score: i32,
        decay_rate: f64,
        decay_floor: i32,
        min_threshold: i32,
        weights: SignalWeights,
    ) -> Result<Self, TrustConfigError> {
        let range = |field, value: f64| {
            if (0.0..=1000.0).contains(&value) {
                Ok(())
            } else {
                Err(TrustConfigError::OutOfRange { field, value })
            }
        };
        range("initialScore", f64::from(initial_score))?;
        range("decayRate", decay_rate)?; // also refuses NaN
        range("decayFloor", f64::from(decay_floor))?;
        range("minThreshold", f64::from(min_threshold))?;
        for (field, value) in [
            ("signals.compliantActivity", weights.compliant_activity),
            ("signals.successfulHandshake", weights.successful_handshake),
            ("signals.failedHandshake", weights.failed_handshake),
            ("signals.deniedCall", weights.denied_call),
            ("signals.violation", weights.violation),
        ] {
            range(field, f64::from(value))?;
        }
        if decay_floor >= min_threshold {
            return Err(TrustConfigError::FloorNotBelowThreshold {
                floor: decay_floor,
                threshold: min_threshold,
            });
        }
        if min_threshold > initial_score {
            return Err(TrustConfigError::ThresholdAboveInitial {
                threshold: min_threshold,
                initial: initial_score,
            });
        }
        Ok(Self {
            initial_score,
            decay_milli_points_per_hour: (decay_rate * 1000.0).round() as i64,
            decay_floor,
            min_threshold,
            weights,
        })
    }

    /// Points a signal adds (negative: removes).
    pub fn delta(&self, signal: Signal) -> i32 {
        let w = &self.weights;
        match signal {
            Signal::CompliantActivity => w.compliant_activity,
            Signal::HandshakeSucceeded => w.successful_handshake,
            Signal::HandshakeFailed => -w.failed_handshake,
            Signal::Violation => -w.violation,
            Signal::DeniedCall => -w.denied_call,
            Signal::Anomaly { penalty } => -penalty.clamp(0, MAX_SCORE),
        }
    }

    /// Score of a new identity: the initial score, capped by a delegating parent's.
    pub fn starting_score(&self, parent_score: Option<i32>) -> i32 {
        let initial = self.initial_score.clamp(0, MAX_SCORE);
        parent_score.map_or(initial, |p| initial.min(p.clamp(0, MAX_SCORE)))
    }
}

/// The score as persisted in AgentIdentity status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PersistedScore {
    /// `status.trustScore`.
    pub trust_score: i32,
    /// `status.scoreUpdatedAt`, a whole second.
    pub score_updated_at: Timestamp,
}

/// The exact state of one identity's score.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrustState {
    units: i64,
    decayed_until: Timestamp,
}

const MAX_UNITS: i64 = MAX_SCORE as i64 * UNITS_PER_POINT;

impl TrustState {
    /// A new identity's state at `now`.
    pub fn new(config: &TrustConfig, parent_score: Option<i32>, now: Timestamp) -> Self {
        Self::at(config.starting_score(parent_score), now)
    }

    /// Exactly `score` points, decay accounted up to `at`.
    pub fn at(score: i32, at: Timestamp) -> Self {
        Self {
            units: i64::from(score.clamp(0, MAX_SCORE)) * UNITS_PER_POINT,
            decayed_until: at,
        }
    }

    /// Rebuild the state from status (see the module docs).
    pub fn from_persisted(persisted: PersistedScore) -> Self {
        Self::at(persisted.trust_score, persisted.score_updated_at)
    }

    /// What to write into status.
    pub fn to_persisted(&self, config: &TrustConfig) -> PersistedScore {
        let score = self.score();
        let deficit = i64::from(score) * UNITS_PER_POINT - self.units;
        let rate = config.decay_milli_points_per_hour;
        let exact_at = if deficit == 0 || rate <= 0 {
            self.decayed_until
        } else {
            // Rounds the subtraction down, so the instant is at or after the exact one.
            self.decayed_until.plus_millis(-(deficit / rate))
        };
        PersistedScore {
            trust_score: score,
            score_updated_at: Timestamp::from_secs(exact_at.as_secs_ceil()),
        }
    }

    /// The score in whole points, rounded up.
    pub fn score(&self) -> i32 {
        // units is within 0..=MAX_UNITS, so the quotient fits.
        (self.units + UNITS_PER_POINT - 1).div_euclid(UNITS_PER_POINT) as i32
    }

    /// The exact score in milli-points, rounded down (for display and tests).
    pub fn milli_points(&self) -> i64 {
        self.units / (UNITS_PER_POINT / 1000)
    }

    pub fn tier(&self) -> Tier {
        Tier::of(self.score())
    }

    pub fn is_quarantined(&self, config: &TrustConfig) -> bool {
        self.score() < config.min_threshold
    }

    /// The instant up to which decay has been applied.
    pub fn decayed_until(&self) -> Timestamp {
        self.decayed_until
    }

    /// Apply decay for the time between the last application and `now`; an earlier `now`
    /// changes nothing, so no stretch of time is ever decayed twice.
    pub fn advance(&mut self, config: &TrustConfig, now: Timestamp) {
        let elapsed = now.millis_since(self.decayed_until);
        if elapsed <= 0 {
            return;
        }
        self.decayed_until = now;
        let floor = i64::from(config.decay_floor.clamp(0, MAX_SCORE)) * UNITS_PER_POINT;
        if self.units <= floor || config.decay_milli_points_per_hour <= 0 {
            return;
        }
        let loss = config.decay_milli_points_per_hour.saturating_mul(elapsed);
        self.units = self.units.saturating_sub(loss).max(floor);
    }

    /// Bring decay up to `now`, then apply the signal.
    pub fn apply(&mut self, config: &TrustConfig, signal: Signal, now: Timestamp) {
        self.apply_points(config, config.delta(signal), now);
    }

    /// As [`Self::apply`], with a positive signal's points limited by `budget` under `cap`
    /// ([`crate::credit`]); a negative signal is applied in full. Returns the points applied
    /// (before clamping to 0–1000).
    pub fn apply_capped(
        &mut self,
        config: &TrustConfig,
        signal: Signal,
        cap: &CreditCap,
        budget: &mut CreditBudget,
        now: Timestamp,
    ) -> i32 {
        let delta = config.delta(signal);
        let applied = if delta > 0 {
            budget.take(cap, delta, now)
        } else {
            delta
        };
        self.apply_points(config, applied, now);
        applied
    }

    fn apply_points(&mut self, config: &TrustConfig, points: i32, now: Timestamp) {
        self.advance(config, now);
        let delta = i64::from(points) * UNITS_PER_POINT;
        self.units = (self.units + delta).clamp(0, MAX_UNITS);
        // Below the floor decay does not run, so a fraction left there by earlier decay could
        // never be attributed to time again: round it up, as the reported score is.
        let floor = i64::from(config.decay_floor.clamp(0, MAX_SCORE)) * UNITS_PER_POINT;
        if self.units < floor {
            self.units = i64::from(self.score()) * UNITS_PER_POINT;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HOUR: i64 = 3_600_000;
    const T0: Timestamp = Timestamp::from_secs(1_800_000_000);

    #[test]
    fn tier_boundaries() {
        let cases = [
            (1000, Tier::Verified),
            (900, Tier::Verified),
            (899, Tier::Trusted),
            (700, Tier::Trusted),
            (699, Tier::Standard),
            (500, Tier::Standard),
            (499, Tier::Probationary),
            (300, Tier::Probationary),
            (299, Tier::Untrusted),
            (0, Tier::Untrusted),
        ];
        for (score, tier) in cases {
            assert_eq!(Tier::of(score), tier, "{score}");
        }
    }

    #[test]
    fn starts_at_initial_capped_by_parent() {
        let c = TrustConfig::default();
        assert_eq!(TrustState::new(&c, None, T0).score(), 800);
        assert_eq!(TrustState::new(&c, Some(650), T0).score(), 650);
        assert_eq!(TrustState::new(&c, Some(950), T0).score(), 800);
    }

    #[test]
    fn decays_two_points_per_hour_even_in_tiny_steps() {
        let c = TrustConfig::default();
        let mut stepped = TrustState::new(&c, None, T0);
        // Every 3 s for 10 hours: 12 000 steps of 1.67 milli-points each.
        for step in 1..=12_000 {
            stepped.advance(&c, T0.plus_millis(step * 3_000));
        }
        assert_eq!(stepped.score(), 780);
        assert_eq!(stepped.milli_points(), 780_000);
        let mut once = TrustState::new(&c, None, T0);
        once.advance(&c, T0.plus_millis(10 * HOUR));
        assert_eq!(stepped, once);
    }

    #[test]
    fn decay_stops_at_the_floor_and_not_below() {
        let c = TrustConfig::default();
        let mut s = TrustState::new(&c, None, T0);
        s.advance(&c, T0.plus_millis(1000 * HOUR));
        assert_eq!(s.score(), 100);
        let mut low = TrustState::at(50, T0);
        low.advance(&c, T0.plus_millis(HOUR));
        assert_eq!(low.score(), 50);
    }

    #[test]
    fn signals_move_the_score_and_clamp() {
        let c = TrustConfig::default();
        let mut s = TrustState::at(995, T0);
        for _ in 0..10 {
            s.apply(&c, Signal::HandshakeSucceeded, T0);
        }
        assert_eq!(s.score(), 1000);
        s.apply(&c, Signal::Violation, T0);
        s.apply(&c, Signal::DeniedCall, T0);
        s.apply(&c, Signal::HandshakeFailed, T0);
        s.apply(&c, Signal::Anomaly { penalty: 15 }, T0);
        s.apply(&c, Signal::CompliantActivity, T0);
        assert_eq!(s.score(), 1000 - 50 - 10 - 25 - 15 + 1);
        s.apply(&c, Signal::Anomaly { penalty: 5000 }, T0);
        assert_eq!(s.score(), 0);
        assert!(s.is_quarantined(&c));
    }

    #[test]
    fn persisted_state_rebuilds_exactly() {
        let c = TrustConfig::default();
        let mut s = TrustState::new(&c, None, T0);
        s.advance(&c, T0.plus_millis(HOUR / 4)); // 799.5
        s.apply(&c, Signal::CompliantActivity, T0.plus_millis(HOUR / 4)); // 800.5
        let p = s.to_persisted(&c);
        assert_eq!(p.trust_score, 801);
        // The instant at which the score was exactly 801: a quarter of an hour earlier.
        assert_eq!(p.score_updated_at, T0);
        let mut rebuilt = TrustState::from_persisted(p);
        rebuilt.advance(&c, T0.plus_millis(HOUR / 4));
        assert_eq!(rebuilt.milli_points(), s.milli_points());
    }

    #[test]
    fn config_validation() {
        let w = SignalWeights::default;
        assert!(TrustConfig::new(800, 2.0, 100, 300, w()).is_ok());
        assert!(matches!(
            TrustConfig::new(800, f64::NAN, 100, 300, w()),
            Err(TrustConfigError::OutOfRange {
                field: "decayRate",
                ..
            })
        ));
        assert!(matches!(
            TrustConfig::new(800, 2.0, 300, 300, w()),
            Err(TrustConfigError::FloorNotBelowThreshold { .. })
        ));
        assert!(matches!(
            TrustConfig::new(200, 2.0, 100, 300, w()),
            Err(TrustConfigError::ThresholdAboveInitial { .. })
        ));
        assert!(matches!(
            TrustConfig::new(1001, 2.0, 100, 300, w()),
            Err(TrustConfigError::OutOfRange { .. })
        ));
    }

    fn signal() -> impl Strategy<Value = Signal> {
        prop_oneof![
            Just(Signal::CompliantActivity),
            Just(Signal::HandshakeSucceeded),
            Just(Signal::HandshakeFailed),
            Just(Signal::Violation),
            Just(Signal::DeniedCall),
            (0..1200i32).prop_map(|penalty| Signal::Anomaly { penalty }),
        ]
    }

    fn config() -> impl Strategy<Value = TrustConfig> {
        (300..=1000i32, 0.0..50.0f64, 0..300i32).prop_map(|(initial, rate, floor)| {
            TrustConfig::new(initial, rate, floor, 300, SignalWeights::default()).unwrap()
        })
    }

    proptest! {
        #[test]
        fn score_stays_within_bounds(c in config(), events in proptest::collection::vec((0..10 * HOUR, signal()), 0..60)) {
            let mut s = TrustState::new(&c, None, T0);
            let mut t = T0;
            for (dt, sig) in events {
                t = t.plus_millis(dt);
                s.apply(&c, sig, t);
                prop_assert!((0..=1000).contains(&s.score()));
                prop_assert_eq!(s.tier(), Tier::of(s.score()));
            }
        }

        #[test]
        fn decay_never_goes_below_the_floor(c in config(), start in 0..=1000i32, dts in proptest::collection::vec(0..100 * HOUR, 1..20)) {
            let mut s = TrustState::at(start, T0);
            let mut t = T0;
            for dt in dts {
                t = t.plus_millis(dt);
                s.advance(&c, t);
                prop_assert!(s.score() >= start.min(c.decay_floor));
                prop_assert!(s.score() <= start);
            }
        }

        #[test]
        fn decay_is_never_applied_twice_for_the_same_time(c in config(), start in 0..=1000i32, cuts in proptest::collection::vec(0..HOUR, 0..30), end in 0..50 * HOUR) {
            let mut once = TrustState::at(start, T0);
            once.advance(&c, T0.plus_millis(end));
            let mut stepped = TrustState::at(start, T0);
            for cut in cuts {
                stepped.advance(&c, T0.plus_millis(cut.min(end)));
                stepped.advance(&c, T0.plus_millis(cut.min(end))); // repeated: no effect
            }
            stepped.advance(&c, T0.plus_millis(end));
            prop_assert_eq!(stepped, once);
        }

        #[test]
        fn same_ordered_signals_give_the_same_score(c in config(), parent in proptest::option::of(0..=1000i32), events in proptest::collection::vec((0..HOUR, signal()), 0..60)) {
            let replay = || {
                let mut s = TrustState::new(&c, parent, T0);
                let mut t = T0;
                for (dt, sig) in &events {
                    t = t.plus_millis(*dt);
                    s.apply(&c, *sig, t);
                }
                s
            };
            prop_assert_eq!(replay(), replay());
        }

        #[test]
        fn restart_never_decays_twice_and_loses_under_a_second(c in config(), events in proptest::collection::vec((0..HOUR, signal()), 0..30), later in 0..10 * HOUR) {
            let mut s = TrustState::new(&c, None, T0);
            let mut t = T0;
            for (dt, sig) in events {
                t = t.plus_millis(dt);
                s.apply(&c, sig, t);
            }
            let p = s.to_persisted(&c);
            prop_assert_eq!(p.trust_score, s.score());
            prop_assert_eq!(p.score_updated_at.as_millis() % 1000, 0);
            let mut rebuilt = TrustState::from_persisted(p);
            let end = t.plus_millis(later);
            s.advance(&c, end);
            rebuilt.advance(&c, end);
            // The rebuilt state has at most one second less decay, never more.
            prop_assert!(rebuilt.units >= s.units, "rebuilt {} < original {}", rebuilt.units, s.units);
            prop_assert!(rebuilt.units - s.units <= c.decay_milli_points_per_hour * 1000 + c.decay_milli_points_per_hour);
        }
    }
}
