//! `agentmesh-sidecar`: see the crate documentation.

use agentmesh_sidecar::config::Config;

#[tokio::main]
async fn main() {
    let config = match Config::load() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("agentmesh-sidecar: {error}");
            std::process::exit(2);
        }
    };
    agentmesh_sidecar::init_logging(&config.settings);
    if let Err(error) = agentmesh_sidecar::run(config).await {
        tracing::error!("{error:#}");
        eprintln!("agentmesh-sidecar: {error:#}");
        std::process::exit(1);
    }
}
