//! Logs and traces: see [`agentmesh_runtime::logging`] and [`agentmesh_runtime::traces`] (one
//! initialiser for every component).

use agentmesh_api::settings::Settings;
use agentmesh_runtime::traces::Traces;

/// The service name of the operator's spans.
pub const SERVICE: &str = "meshlogic-operator";

/// Starts logging, and with `AGENTMESH_OTEL_ENABLED=true` the export of spans to
/// `AGENTMESH_OTEL_ENDPOINT` (never waiting for the collector).
pub fn init(settings: &Settings) -> anyhow::Result<Option<Traces>> {
    agentmesh_runtime::traces::init_from_settings(settings, SERVICE).map_err(anyhow::Error::msg)
}
