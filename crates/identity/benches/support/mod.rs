//! What the criterion benches of the workspace share: where criterion keeps its estimates (so
//! a bench can print ratios of two measurements of the same run) and the run's settings.
//! `crates/trust/benches/trust.rs` includes this file too.

use std::path::PathBuf;

use criterion::Criterion;

pub fn criterion_home() -> PathBuf {
    std::env::var_os("CRITERION_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .map_or_else(|| PathBuf::from("target"), PathBuf::from)
                .join("criterion")
        })
}

/// Mean time in nanoseconds of `group/id` in this run, from criterion's estimates.
pub fn mean_ns(group: &str, id: &str) -> Option<f64> {
    let path = criterion_home()
        .join(group)
        .join(id)
        .join("new/estimates.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    json["mean"]["point_estimate"].as_f64()
}

/// Short, stable runs: 1 s warm-up, 3 s of 30 samples.
pub fn criterion() -> Criterion {
    Criterion::default()
        .output_directory(&criterion_home())
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3))
        .sample_size(30)
        .configure_from_args()
}
