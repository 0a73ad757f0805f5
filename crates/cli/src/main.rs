//! `agentmesh`: the AgentMesh command line.

mod audit;
mod crds;
mod identity;
mod output;
mod policy;
mod trust;

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
    /// Read and check the audit hash chain in its store (Redis or PostgreSQL).
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Print the CustomResourceDefinitions, or write one file per kind.
    Crds(crds::CrdsArgs),
    /// Generate and inspect agent keys.
    #[command(subcommand)]
    Identity(identity::IdentityCommand),
    /// Evaluate policies offline.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Watch trust in a cluster: scores, tiers and the last decision per identity.
    #[command(subcommand)]
    Trust(trust::TrustCommand),
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    match Cli::parse().command {
        Command::Audit(command) => audit::run(command).or_else(|err| {
            eprintln!("error: {}", trust::one_line(&err));
            Ok(std::process::ExitCode::FAILURE)
        }),
        Command::Crds(args) => crds::run(&args).map(|()| std::process::ExitCode::SUCCESS),
        Command::Identity(command) => {
            identity::run(command).map(|()| std::process::ExitCode::SUCCESS)
        }
        Command::Policy(command) => policy::run(command),
        Command::Trust(command) => Ok(trust::run(command).unwrap_or_else(|err| {
            eprintln!("error: {}", trust::one_line(&err));
            std::process::ExitCode::FAILURE
        })),
    }
}
