//! `agentmesh policy check`: one decision, offline, with its explanation.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use agentmesh_api::policy::TrustPolicy;
use agentmesh_api::{AgentIdentity, convert};
use agentmesh_trust::policy::{FileAccess, PeerRef};
use agentmesh_trust::{Decision, Effect, Tier, Timestamp};
use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::json;

use crate::output::{Format, print_json};

/// Exit status of `policy check` when the decision is `deny`.
pub const DENY_EXIT: u8 = 2;

#[derive(clap::Subcommand)]
pub enum PolicyCommand {
    /// Decide one call or event for an identity under a policy, offline, and explain why.
    /// Exits 0 on allow (or would-deny in shadow mode), 2 on deny.
    Check {
        /// A TrustPolicy YAML (as in examples/trustpolicy.yaml).
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        /// An AgentIdentity YAML; its status.trustScore is the score unless --score is given.
        #[arg(long, value_name = "FILE")]
        identity: PathBuf,
        /// What to decide, JSON: {"tool":"fetch_url"}, {"exec":"/bin/sh"},
        /// {"file":"/etc/passwd","access":"write"}, {"connect":"10.0.0.1","port":443},
        /// {"peer":"summarizer"|"ns/name"|"did:mesh:…","peerScore":600}.
        #[arg(long, value_name = "JSON")]
        call: String,
        /// Score to decide at. Default: the identity's status.trustScore, else the policy's
        /// initial score.
        #[arg(long, value_parser = clap::value_parser!(i32).range(0..=1000))]
        score: Option<i32>,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Call {
    tool: Option<String>,
    exec: Option<String>,
    file: Option<String>,
    #[serde(default)]
    access: Option<String>,
    connect: Option<IpAddr>,
    port: Option<u16>,
    peer: Option<String>,
    peer_score: Option<i32>,
}

fn read_yaml<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_saphyr::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

pub fn run(command: PolicyCommand) -> anyhow::Result<ExitCode> {
    let PolicyCommand::Check {
        policy,
        identity,
        call,
        score,
        output,
    } = command;
    let resource: TrustPolicy = read_yaml(&policy)?;
    let agent: AgentIdentity = read_yaml(&identity)?;
    let compiled = convert::compile_policy(&resource.spec)
        .with_context(|| format!("policy {}", policy.display()))?;
    let call: Call = serde_json::from_str(&call)
        .context("--call is not a JSON call such as {\"tool\":\"fetch_url\"}")?;
    let status = agent.status.clone().unwrap_or_default();
    let score = score
        .or(status.trust_score)
        .unwrap_or(compiled.trust().initial_score);
    let namespace = resource
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let now = Timestamp::from_secs(0);

    let (subject, decision): (String, Decision<'_>) = match &call {
        Call {
            tool: Some(tool),
            exec: None,
            file: None,
            connect: None,
            peer: None,
            ..
        } => {
            let mut rate = compiled.new_rate_state(now);
            (
                format!("tool:{tool}"),
                compiled.decide_tool(tool, score, &mut rate, now),
            )
        }
        Call {
            exec: Some(path),
            tool: None,
            file: None,
            connect: None,
            peer: None,
            ..
        } => (format!("exec:{path}"), compiled.decide_exec(path, score)),
        Call {
            file: Some(path),
            tool: None,
            exec: None,
            connect: None,
            peer: None,
            access,
            ..
        } => {
            let access = match access.as_deref() {
                None | Some("any") => FileAccess::Any,
                Some("read") => FileAccess::Read,
                Some("write") => FileAccess::Write,
                Some(other) => bail!("access must be read, write or any, not {other:?}"),
            };
            (
                format!("file:{path}"),
                compiled.decide_file(path, access, score),
            )
        }
        Call {
            connect: Some(ip),
            tool: None,
            exec: None,
            file: None,
            peer: None,
            port,
            ..
        } => {
            let port = port.context("a connect call needs \"port\"")?;
            (
                format!("connect:{ip}:{port}"),
                compiled.decide_connect(*ip, port, score),
            )
        }
        Call {
            peer: Some(peer),
            tool: None,
            exec: None,
            file: None,
            connect: None,
            peer_score,
            ..
        } => {
            let peer_score = peer_score.context("a peer call needs \"peerScore\"")?;
            let peer_ref = if peer.starts_with("did:") {
                PeerRef {
                    did: peer,
                    namespace: None,
                    name: None,
                }
            } else if let Some((ns, name)) = peer.split_once('/') {
                PeerRef {
                    did: "",
                    namespace: Some(ns),
                    name: Some(name),
                }
            } else {
                PeerRef {
                    did: "",
                    namespace: Some(&namespace),
                    name: Some(peer),
                }
            };
            (
                format!("peer:{peer}"),
                compiled.decide_peer(peer_ref, peer_score, &namespace),
            )
        }
        _ => bail!("--call names exactly one of tool, exec, file, connect, peer"),
    };

    let tier = Tier::of(score);
    let quarantined = score < compiled.trust().min_threshold;
    let name = agent.metadata.name.clone().unwrap_or_default();
    let policy_name = resource.metadata.name.clone().unwrap_or_default();
    match output {
        Format::Text => {
            println!("{decision}");
            println!(
                "identity {name}{}: score {score} ({}){}",
                status
                    .did
                    .as_deref()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default(),
                tier.as_str(),
                if quarantined { ", quarantined" } else { "" }
            );
            println!(
                "policy {namespace}/{policy_name}: mode {}, preset {}, version {}",
                match compiled.mode() {
                    agentmesh_trust::policy::Mode::Enforce => "enforce",
                    agentmesh_trust::policy::Mode::Shadow => "shadow",
                },
                decision.preset.as_str(),
                compiled.version()
            );
        }
        Format::Json => print_json(&json!({
            "subject": subject,
            "effect": decision.effect,
            "rule": decision.rule(),
            "explanation": decision.to_string(),
            "penalty": decision.penalty,
            "identity": name,
            "did": status.did,
            "score": score,
            "tier": tier.as_str(),
            "quarantined": quarantined,
            "policy": format!("{namespace}/{policy_name}"),
            "mode": decision.mode,
            "preset": decision.preset.as_str(),
            "policyVersion": compiled.version(),
        }))?,
    }
    Ok(if decision.effect == Effect::Deny {
        ExitCode::from(DENY_EXIT)
    } else {
        ExitCode::SUCCESS
    })
}
