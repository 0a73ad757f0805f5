//! `agentmesh`: the AgentMesh command line.

mod crds;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "agentmesh",
    version,
    about = "AgentMesh: identity, trust and policy for AI agents on Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions, or write one file per kind.
    Crds(crds::CrdsArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crds(args) => crds::run(&args),
    }
}
