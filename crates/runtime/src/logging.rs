//! Logs: `tracing` to stderr, JSON (the seed's `AGENTMESH_LOG_FORMAT: "json"`, and the default)
//! or text, at `AGENTMESH_LOG_LEVEL` (`RUST_LOG` refines it when set). The operator, the
//! sidecar and the probe all start logging here, so one variable means one thing everywhere.

use agentmesh_api::settings::{LogFormat, LogLevel};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Call once, first thing in `main`.
pub fn init(level: LogLevel, format: LogFormat) {
    let filter = EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| EnvFilter::new(level.as_directive()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
        LogFormat::Text => builder.init(),
    }
}
