//! Differential privacy of the telemetry that leaves the node.
//!
//! What is released: once per telemetry window (`spec.telemetry.intervalSeconds`), the node's
//! total counts of execs, exits, file opens and connects over the watched pods. The exact
//! per-pod counts sent to the operator's trust API stay inside the cluster and are never noised.
//!
//! Mechanism and accounting (event-level privacy): two neighbouring inputs differ by one event,
//! which changes one of the four counts by 1, so each count has sensitivity 1. Each count gets
//! Laplace noise of scale `4 / ε` (ε split evenly over the four counts, sensitivity 1 each), so
//! one release costs ε by sequential composition: the ε of `spec.privacy.epsilon` is spent per
//! window. Over k windows the basic composition bound is k·ε; the running total is the
//! `meshlogic_probe_privacy_epsilon_spent_total` metric. Rounding and clamping at zero are
//! post-processing and cost nothing. With `enableNoise: false` the exact counts leave the node:
//! no privacy guarantee, no ε accounted.

use agentmesh_api::wire::BehaviorCounts;
use rand::Rng;
use serde::Serialize;

/// Counts in one release.
pub const RELEASED_COUNTS: f64 = 4.0;
/// Change of one count caused by one event.
pub const SENSITIVITY: f64 = 1.0;

/// One sample of Laplace(0, scale), by inverse transform.
pub fn laplace<R: Rng + ?Sized>(scale: f64, rng: &mut R) -> f64 {
    // u uniform in (-1/2, 1/2); the open interval keeps ln away from 0.
    let mut u: f64 = rng.random::<f64>() - 0.5;
    while u.abs() >= 0.5 {
        u = rng.random::<f64>() - 0.5;
    }
    -scale * u.signum() * (1.0 - 2.0 * u.abs()).ln()
}

/// Noise scale of each count for a budget of `epsilon` per release.
pub fn scale(epsilon: f64) -> f64 {
    SENSITIVITY * RELEASED_COUNTS / epsilon
}

/// Telemetry counts as released.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReleasedCounts {
    pub execs: u64,
    pub exits: u64,
    pub file_opens: u64,
    pub connects: u64,
}

/// The counts to release and the ε this release spends (0 without noise: nothing to account,
/// nothing guaranteed).
pub fn release<R: Rng + ?Sized>(
    exact: &BehaviorCounts,
    noise: bool,
    epsilon: f64,
    rng: &mut R,
) -> (ReleasedCounts, f64) {
    if !noise {
        let counts = ReleasedCounts {
            execs: exact.execs,
            exits: exact.exits,
            file_opens: exact.file_opens,
            connects: exact.connects,
        };
        return (counts, 0.0);
    }
    let scale = scale(epsilon);
    let mut noised = |count: u64| (count as f64 + laplace(scale, rng)).round().max(0.0) as u64;
    let counts = ReleasedCounts {
        execs: noised(exact.execs),
        exits: noised(exact.exits),
        file_opens: noised(exact.file_opens),
        connects: noised(exact.connects),
    };
    (counts, epsilon)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn laplace_samples_have_the_right_spread() {
        let mut rng = StdRng::seed_from_u64(7);
        let scale = 4.0;
        let n = 200_000;
        let samples: Vec<f64> = (0..n).map(|_| laplace(scale, &mut rng)).collect();
        let mean = samples.iter().sum::<f64>() / n as f64;
        let mean_abs = samples.iter().map(|x| x.abs()).sum::<f64>() / n as f64;
        // E[X] = 0 and E|X| = scale for Laplace(0, scale).
        assert!(mean.abs() < 0.05, "mean {mean}");
        assert!((mean_abs - scale).abs() < 0.05, "mean |x| {mean_abs}");
        // P(|X| > scale * ln 20) = 1/20.
        let tail = samples
            .iter()
            .filter(|x| x.abs() > scale * 20f64.ln())
            .count() as f64
            / n as f64;
        assert!((tail - 0.05).abs() < 0.005, "tail {tail}");
    }

    #[test]
    fn a_release_spends_epsilon_only_with_noise() {
        let mut rng = StdRng::seed_from_u64(1);
        let exact = BehaviorCounts {
            execs: 1000,
            exits: 1000,
            file_opens: 5000,
            connects: 10,
        };
        let (noised, spent) = release(&exact, true, 0.5, &mut rng);
        assert_eq!(spent, 0.5);
        assert_ne!(
            noised.file_opens, 5000,
            "noise of scale 8 is almost never exactly 0"
        );
        assert!(noised.file_opens.abs_diff(5000) < 200);
        let (exact_release, spent) = release(&exact, false, 0.5, &mut rng);
        assert_eq!(spent, 0.0);
        assert_eq!(exact_release.file_opens, 5000);
        assert_eq!(scale(1.0), 4.0);
    }
}
