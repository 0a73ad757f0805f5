//! Logs: `tracing` to stderr, JSON (the seed's `AGENTMESH_LOG_FORMAT: "json"`, and the default)
//! or text, at `AGENTMESH_LOG_LEVEL` (`RUST_LOG` refines it when set). The operator, the
//! sidecar and the probe all start logging here, so one variable means one thing everywhere.

use agentmesh_api::settings::{LogFormat, LogLevel};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::traces::Traces;

/// Installs the global subscriber. Call once, first thing in `main`.
pub fn init(level: LogLevel, format: LogFormat) {
    init_with_traces(level, format, None);
}

/// [`init`], and with `traces` every span also goes to OpenTelemetry as `service`.
pub fn init_with_traces(
    level: LogLevel,
    format: LogFormat,
    traces: Option<(&Traces, &'static str)>,
) {
    let filter = EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| EnvFilter::new(level.as_directive()));
    let logs = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(traces.map(|(traces, service)| traces.layer(service)))
        .init();
}
