//! How the probe retries what it sends to the operator (reports, enforcement polls):
//! exponential backoff with jitter, so that the probes of a cluster that lost the trust API
//! together do not come back in step.

use std::time::Duration;

use backon::ExponentialBuilder;

/// Retries wait from `initial`, doubling up to `max`; each wait is stretched by a random
/// jitter of up to its own length. They go on until the operation succeeds.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The schedule of waits, for `backon`'s `Retryable::retry`.
    pub fn schedule(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.initial)
            .with_max_delay(self.max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(30),
        }
    }
}

#[cfg(test)]
mod tests {
    use backon::BackoffBuilder;

    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_ceiling_with_jitter_and_never_gives_up() {
        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let delays: Vec<Duration> = backoff.schedule().build().take(40).collect();
        assert_eq!(delays.len(), 40, "retries forever");
        let floors = [100, 200, 400, 800, 1000, 1000];
        for (delay, floor) in delays
            .iter()
            .zip(floors.iter().chain(std::iter::repeat(&1000)))
        {
            let floor = Duration::from_millis(*floor);
            assert!(
                *delay >= floor && *delay < floor * 2,
                "{delay:?} not in [{floor:?}, {:?})",
                floor * 2
            );
        }
    }
}
