//! Freshness and replay of sidecar report batches, per identity.
//!
//! A batch is accepted only when its `sentAtMs` is within [`MAX_SKEW_MS`] of the operator's
//! clock and its `batchId` was not accepted for the identity before. Ids are remembered only
//! while a replay could still be fresh: an id whose `sentAtMs` is older than the skew window
//! would be refused as stale anyway, so it is forgotten. Memory is bounded: at most
//! [`MAX_REMEMBERED`] ids per identity; beyond that new batches are refused (never an old id
//! evicted early, which would open a replay).

use std::collections::HashMap;

use crate::Timestamp;

/// Largest distance between a batch's `sentAtMs` and the operator's clock.
pub const MAX_SKEW_MS: i64 = 60_000;
/// Most batch ids remembered per identity (the batches of 2 minutes: 68 per second).
pub const MAX_REMEMBERED: usize = 8192;

/// Why a batch was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("sentAtMs is {skew_ms} ms away from the operator's clock (limit {MAX_SKEW_MS})")]
    Stale { skew_ms: i64 },
    #[error("batch {0} was already accepted for this identity")]
    Replayed(String),
    #[error("more than {MAX_REMEMBERED} batches within two minutes for this identity; retry later")]
    TooMany,
}

/// The batch ids accepted for one identity and still fresh.
#[derive(Clone, Debug, Default)]
pub struct ReplayGuard {
    /// batch id → its `sentAtMs`.
    seen: HashMap<String, i64>,
}

impl ReplayGuard {
    /// Accepts (and remembers) the batch, or says why not. Nothing is remembered on refusal.
    pub fn accept(
        &mut self,
        batch_id: &str,
        sent_at_ms: i64,
        now: Timestamp,
    ) -> Result<(), ReplayError> {
        let now_ms = now.as_millis();
        let skew_ms = sent_at_ms.saturating_sub(now_ms);
        if skew_ms.saturating_abs() > MAX_SKEW_MS {
            return Err(ReplayError::Stale { skew_ms });
        }
        if self.seen.contains_key(batch_id) {
            return Err(ReplayError::Replayed(batch_id.to_owned()));
        }
        let oldest_fresh = now_ms.saturating_sub(MAX_SKEW_MS);
        self.seen.retain(|_, sent| *sent >= oldest_fresh);
        if self.seen.len() >= MAX_REMEMBERED {
            return Err(ReplayError::TooMany);
        }
        self.seen.insert(batch_id.to_owned(), sent_at_ms);
        Ok(())
    }

    pub fn remembered(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp::from_secs(1_800_000_000);

    fn ms() -> i64 {
        NOW.as_millis()
    }

    #[test]
    fn a_batch_is_accepted_once() {
        let mut guard = ReplayGuard::default();
        assert_eq!(guard.accept("a", ms(), NOW), Ok(()));
        assert_eq!(
            guard.accept("a", ms(), NOW.plus_millis(1000)),
            Err(ReplayError::Replayed("a".into()))
        );
        // Another id at the same instant is another batch.
        assert_eq!(guard.accept("b", ms(), NOW), Ok(()));
    }

    #[test]
    fn stale_and_future_batches_are_refused_and_not_remembered() {
        let mut guard = ReplayGuard::default();
        assert_eq!(
            guard.accept("old", ms() - MAX_SKEW_MS - 1, NOW),
            Err(ReplayError::Stale {
                skew_ms: -MAX_SKEW_MS - 1
            })
        );
        assert_eq!(
            guard.accept("future", ms() + MAX_SKEW_MS + 1, NOW),
            Err(ReplayError::Stale {
                skew_ms: MAX_SKEW_MS + 1
            })
        );
        assert_eq!(guard.accept("edge", ms() - MAX_SKEW_MS, NOW), Ok(()));
        assert_eq!(guard.remembered(), 1);
        // Extreme values never overflow.
        assert!(matches!(
            guard.accept("min", i64::MIN, NOW),
            Err(ReplayError::Stale { .. })
        ));
        assert!(matches!(
            guard.accept("max", i64::MAX, NOW),
            Err(ReplayError::Stale { .. })
        ));
    }

    #[test]
    fn an_id_is_forgotten_only_once_a_replay_would_be_stale() {
        let mut guard = ReplayGuard::default();
        assert_eq!(guard.accept("a", ms(), NOW), Ok(()));
        // 60 s later the same batch is still fresh: refused as a replay.
        let later = NOW.plus_millis(MAX_SKEW_MS);
        assert_eq!(
            guard.accept("a", ms(), later),
            Err(ReplayError::Replayed("a".into()))
        );
        // Past the window it is refused as stale, and no longer takes memory.
        let much_later = NOW.plus_millis(MAX_SKEW_MS + 1);
        assert!(matches!(
            guard.accept("a", ms(), much_later),
            Err(ReplayError::Stale { .. })
        ));
        assert_eq!(
            guard.accept("b", much_later.as_millis(), much_later),
            Ok(())
        );
        assert_eq!(guard.remembered(), 1);
    }

    #[test]
    fn memory_is_bounded_without_evicting_fresh_ids() {
        let mut guard = ReplayGuard::default();
        for i in 0..MAX_REMEMBERED {
            assert_eq!(guard.accept(&i.to_string(), ms(), NOW), Ok(()));
        }
        assert_eq!(
            guard.accept("one more", ms(), NOW),
            Err(ReplayError::TooMany)
        );
        // Every remembered id is still refused.
        assert_eq!(
            guard.accept("0", ms(), NOW),
            Err(ReplayError::Replayed("0".into()))
        );
        // Once they age out, there is room again.
        let later = NOW.plus_millis(MAX_SKEW_MS + 1);
        assert_eq!(guard.accept("one more", later.as_millis(), later), Ok(()));
        assert_eq!(guard.remembered(), 1);
    }
}
