//! Logs and traces: see [`agentmesh_runtime::logging`] and [`agentmesh_runtime::traces`] (one
//! initialiser for every component).

use agentmesh_api::settings::Settings;
use agentmesh_runtime::traces::{TraceConfig, Traces};

/// The service name of the operator's spans.
pub const SERVICE: &str = "meshlogic-operator";

/// Starts logging, and with `AGENTMESH_OTEL_ENABLED=true` the export of spans to
/// `AGENTMESH_OTEL_ENDPOINT` (never waiting for the collector).
pub fn init(settings: &Settings) -> anyhow::Result<Option<Traces>> {
    let traces = if settings.otel_enabled {
        Some(
            agentmesh_runtime::traces::start(&TraceConfig {
                endpoint: settings.otel_endpoint.clone(),
                service: SERVICE,
            })
            .map_err(anyhow::Error::msg)?,
        )
    } else {
        None
    };
    agentmesh_runtime::logging::init_with_traces(
        settings.log_level,
        settings.log_format,
        traces.as_ref().map(|t| (t, SERVICE)),
    );
    Ok(traces)
}
