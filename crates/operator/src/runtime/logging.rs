//! Logs: see [`agentmesh_runtime::logging`] (one initialiser for every component).

use agentmesh_api::settings::Settings;

pub fn init(settings: &Settings) {
    agentmesh_runtime::logging::init(settings.log_level, settings.log_format);
}
