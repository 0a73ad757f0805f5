//! Rate limits as token buckets, exact in integers, time as input.
//!
//! A limit of `requests` per `period` is a bucket of `requests × period_ms` units that refills
//! `requests` units per millisecond; a call costs `period_ms` units. It starts full, so a burst
//! of `requests` calls is allowed, then one call per `period / requests` on average.

use agentmesh_identity::Timestamp;

use super::spec::RateLimitSpec;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    pub requests: i64,
    pub period_ms: i64,
}

impl Limit {
    pub fn from_spec(spec: RateLimitSpec) -> Option<Self> {
        (spec.requests > 0 && spec.period_seconds > 0).then(|| Self {
            requests: i64::from(spec.requests),
            period_ms: i64::from(spec.period_seconds) * 1000,
        })
    }

    fn capacity(&self) -> i64 {
        self.requests * self.period_ms
    }
}

/// One bucket's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bucket {
    units: i64,
    updated: Timestamp,
}

impl Bucket {
    pub fn full(limit: &Limit, now: Timestamp) -> Self {
        Self {
            units: limit.capacity(),
            updated: now,
        }
    }

    fn refill(&mut self, limit: &Limit, now: Timestamp) {
        let elapsed = now.millis_since(self.updated);
        if elapsed > 0 {
            self.units = self
                .units
                .saturating_add(elapsed.saturating_mul(limit.requests))
                .min(limit.capacity());
            self.updated = now;
        }
    }

    /// Whether a call is allowed now (refills, does not spend).
    #[inline]
    pub fn has_room(&mut self, limit: &Limit, now: Timestamp) -> bool {
        self.refill(limit, now);
        self.units >= limit.period_ms
    }

    /// Spend one call; call only after [`Bucket::has_room`] said yes.
    #[inline]
    pub fn spend(&mut self, limit: &Limit) {
        self.units -= limit.period_ms;
    }
}

/// One identity's rate-limit state under one policy: the global bucket and one per tool rule
/// with a limit. Made by [`crate::Policy::new_rate_state`]; 24 bytes per bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateState {
    pub(crate) global: Option<Bucket>,
    pub(crate) per_rule: Vec<Option<Bucket>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_steady_rate() {
        let limit = Limit::from_spec(RateLimitSpec {
            requests: 3,
            period_seconds: 60,
        })
        .unwrap();
        let t0 = Timestamp::from_secs(1000);
        let mut b = Bucket::full(&limit, t0);
        for _ in 0..3 {
            assert!(b.has_room(&limit, t0));
            b.spend(&limit);
        }
        assert!(!b.has_room(&limit, t0));
        assert!(!b.has_room(&limit, t0.plus_millis(19_999)));
        assert!(b.has_room(&limit, t0.plus_millis(20_000)));
        b.spend(&limit);
        assert!(!b.has_room(&limit, t0.plus_millis(20_000)));
        // Never more than a full bucket, however long the pause.
        let later = t0.plus_millis(10_000_000);
        for _ in 0..3 {
            assert!(b.has_room(&limit, later));
            b.spend(&limit);
        }
        assert!(!b.has_room(&limit, later));
    }
}
