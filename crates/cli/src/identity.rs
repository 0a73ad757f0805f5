//! `agentmesh identity generate|show`.

use std::path::PathBuf;

use agentmesh_identity::keys::{self, Did};
use anyhow::Context;
use serde_json::json;

use crate::output::{Format, print_json};

#[derive(clap::Subcommand)]
pub enum IdentityCommand {
    /// Generate an Ed25519 key pair. Prints the DID and public key; with --output-key, prints
    /// the PKCS#8 PEM private key on standard output instead (DID and public key then go to
    /// standard error), ready for
    /// `kubectl create secret generic NAME --from-file=private-key=/dev/stdin`.
    Generate {
        /// Print the private key (PEM) on standard output.
        #[arg(long)]
        output_key: bool,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// Show the DID and public key of a key file: a PEM private key, or a public key in its
    /// text form (base64 of the 32 bytes).
    Show {
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
}

pub fn run(command: IdentityCommand) -> anyhow::Result<()> {
    match command {
        IdentityCommand::Generate { output_key, output } => {
            let key = keys::generate(&mut rand_core::OsRng);
            let public = key.verifying_key();
            if output_key {
                print!("{}", keys::private_key_to_pem(&key)?);
                eprintln!(
                    "did: {}\npublicKey: {}",
                    Did::from_public_key(&public),
                    keys::public_key_to_text(&public)
                );
                Ok(())
            } else {
                describe(&public, output)
            }
        }
        IdentityCommand::Show { key, output } => {
            let text = std::fs::read_to_string(&key)
                .with_context(|| format!("reading {}", key.display()))?;
            let public = if text.trim_start().starts_with("-----BEGIN") {
                keys::private_key_from_pem(&text)
                    .with_context(|| key.display().to_string())?
                    .verifying_key()
            } else {
                keys::public_key_from_text(&text).with_context(|| {
                    format!(
                        "{}: neither a PEM private key nor a base64 public key",
                        key.display()
                    )
                })?
            };
            describe(&public, output)
        }
    }
}

fn describe(public: &agentmesh_identity::VerifyingKey, output: Format) -> anyhow::Result<()> {
    let did = Did::from_public_key(public);
    let text = keys::public_key_to_text(public);
    match output {
        Format::Text => println!("did: {did}\npublicKey: {text}"),
        Format::Json => print_json(&json!({ "did": did.as_str(), "publicKey": text }))?,
    }
    Ok(())
}
