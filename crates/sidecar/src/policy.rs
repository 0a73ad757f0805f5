//! What the sidecar enforces: the governing policy, the identity's live score and quarantine
//! from the operator's config (`/v1/sidecar/config`), or the `AGENTMESH_POLICY` preset until the
//! operator first answers. Decisions come from the pure trust core (`agentmesh_trust`); this
//! module keeps the state they need: the policy in force, the rate-limit buckets, and the
//! fingerprints of the tools seen so far.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use agentmesh_api::policy::{McpServer, TrustPolicySpec};
use agentmesh_api::settings::Settings;
use agentmesh_api::wire::{RegistryEntry, SidecarConfig};
use agentmesh_identity::registry::MemoryRegistry;
use agentmesh_trust::policy::{CallKind, Mode, RateState};
use agentmesh_trust::{Effect, Policy, Timestamp, canonical_name};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Where the policy in force comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// `AGENTMESH_POLICY`, before the operator answers (or without an operator).
    Preset(&'static str),
    /// `--policy-file`, likewise.
    File,
    /// The operator's config of this version.
    Operator { version: String },
}

/// The policy in force and the identity's live state.
#[derive(Debug)]
pub struct Current {
    pub policy: Arc<Policy>,
    /// `namespace/name` of the governing TrustPolicy, or `preset:<name>`.
    pub policy_label: Arc<str>,
    pub score: i32,
    pub quarantined: bool,
    pub source: Source,
    pub servers: Vec<McpServer>,
    /// Identities the operator knows: peers' DIDs, keys and scores, looked up by DID for
    /// handshakes and proofs (never taken from what a peer says).
    pub registry: MemoryRegistry,
    pub peers: Vec<RegistryEntry>,
    pub registry_size: usize,
}

impl Current {
    /// The registry entry of a DID.
    pub fn peer(&self, did: &str) -> Option<&RegistryEntry> {
        self.peers.iter().find(|p| p.did.as_deref() == Some(did))
    }

    /// The registry entry of an AgentIdentity `name` (in `namespace`) or `namespace/name`.
    pub fn peer_named(&self, reference: &str, namespace: &str) -> Option<&RegistryEntry> {
        let (ns, name) = reference.split_once('/').unwrap_or((namespace, reference));
        self.peers
            .iter()
            .find(|p| p.namespace == ns && p.name == name)
    }
}

/// A decision, ready to answer and report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub effect: Effect,
    /// The rule that decided (`tools.deny[0]`, `preset:standard`, ...).
    pub rule: String,
    /// The decision explained (`deny by tools.deny[0]: tool matches deny pattern "run_shell"`).
    pub explanation: String,
    pub policy: Arc<str>,
    pub score: i32,
    pub rate_limited: bool,
}

/// The policy state shared by every request.
pub struct Governor {
    current: RwLock<Arc<Current>>,
    rate: Mutex<RateState>,
    /// (server, canonical tool name) → sha256 of the tool's description and input schema.
    fingerprints: Mutex<HashMap<(String, String), [u8; 32]>>,
}

/// Most tool fingerprints remembered (a server listing ever-new tools cannot grow memory).
const MAX_FINGERPRINTS: usize = 65_536;

impl Governor {
    /// The `AGENTMESH_POLICY` preset under the seed's settings.
    pub fn from_preset(settings: &Settings) -> Result<Self, agentmesh_api::convert::ConvertError> {
        let spec = agentmesh_api::convert::preset_policy_spec(settings, settings.policy);
        Self::from_spec(
            &spec,
            format!("preset:{}", settings.policy.as_str()).into(),
            Source::Preset(settings.policy.as_str()),
        )
    }

    /// A policy from a TrustPolicy spec (the `--policy-file`).
    pub fn from_spec(
        spec: &TrustPolicySpec,
        label: Arc<str>,
        source: Source,
    ) -> Result<Self, agentmesh_api::convert::ConvertError> {
        let policy = agentmesh_api::convert::compile_policy(spec)?;
        let rate = policy.new_rate_state(crate::now());
        Ok(Self {
            current: RwLock::new(Arc::new(Current {
                score: policy.trust().initial_score,
                policy: Arc::new(policy),
                policy_label: label,
                quarantined: false,
                source,
                servers: spec.mcp_servers.clone(),
                registry: MemoryRegistry::new(),
                peers: Vec::new(),
                registry_size: 0,
            })),
            rate: Mutex::new(rate),
            fingerprints: Mutex::new(HashMap::new()),
        })
    }

    /// The policy in force before the operator answers: the `--policy-file`, else the
    /// `AGENTMESH_POLICY` preset.
    pub fn initial(
        settings: &Settings,
        policy_file: Option<&std::path::Path>,
    ) -> anyhow::Result<Self> {
        let Some(path) = policy_file else {
            return Self::from_preset(settings)
                .map_err(|e| anyhow::anyhow!("{}: {e}", agentmesh_api::names::env::POLICY));
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!("AGENTMESH_SIDECAR_POLICY_FILE={}: {e}", path.display())
        })?;
        let spec: TrustPolicySpec = serde_saphyr::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "AGENTMESH_SIDECAR_POLICY_FILE={}: not a TrustPolicy spec: {e}",
                path.display()
            )
        })?;
        Self::from_spec(
            &spec,
            format!("file:{}", path.display()).into(),
            Source::File,
        )
        .map_err(|e| anyhow::anyhow!("AGENTMESH_SIDECAR_POLICY_FILE={}: {e}", path.display()))
    }

    pub fn current(&self) -> Arc<Current> {
        self.current.read().expect("policy lock").clone()
    }

    /// Applies the operator's config. A policy that does not compile keeps the one in force
    /// (the operator only serves policies it accepted, so this is a version skew).
    pub fn apply(
        &self,
        config: &SidecarConfig,
    ) -> Result<(), agentmesh_api::convert::ConvertError> {
        let previous = self.current();
        let policy = if previous.source
            == (Source::Operator {
                version: config.version.clone(),
            }) {
            previous.policy.clone()
        } else {
            Arc::new(agentmesh_api::convert::compile_policy(&config.policy)?)
        };
        if policy.version() != previous.policy.version() {
            *self.rate.lock().expect("rate lock") = policy.new_rate_state(crate::now());
        }
        let policy_label = config
            .policy_name
            .clone()
            .unwrap_or_else(|| format!("preset:{}", policy.spec().preset.as_str()))
            .into();
        let next = Current {
            policy,
            policy_label,
            score: config.identity.score,
            quarantined: config.identity.quarantined,
            source: Source::Operator {
                version: config.version.clone(),
            },
            servers: config.policy.mcp_servers.clone(),
            registry: registry_of(&config.peers),
            peers: config.peers.clone(),
            registry_size: config.peers.len(),
        };
        *self.current.write().expect("policy lock") = Arc::new(next);
        Ok(())
    }

    /// Decides a call; an allowed call spends rate-limit room.
    pub fn decide(&self, kind: CallKind, name: &str, now: Timestamp) -> Verdict {
        let current = self.current();
        let mut rate = self.rate.lock().expect("rate lock");
        let decision = current
            .policy
            .decide_call(kind, name, current.score, &mut rate, now);
        verdict(&current, &decision)
    }

    /// Whether a listed item stays visible: the same rules, without spending rate-limit room
    /// (a tool that is only rate limited right now stays listed).
    pub fn visible(&self, current: &Current, kind: CallKind, name: &str, now: Timestamp) -> bool {
        let mut rate = current.policy.new_rate_state(now);
        current
            .policy
            .decide_call(kind, name, current.score, &mut rate, now)
            .effect
            .is_allowed()
    }

    /// Remembers a listed tool's description and input schema; `true` when they differ from
    /// what this server listed for this tool before (an anomaly: a tool that changes what it
    /// says it does after it was first seen is the "rug pull" of MCP). Each change counts once.
    pub fn tool_changed(&self, server: &str, tool: &Value) -> bool {
        let Some(name) = tool.get("name").and_then(Value::as_str) else {
            return false;
        };
        let mut hasher = Sha256::new();
        for field in ["description", "inputSchema"] {
            hasher.update(field.as_bytes());
            hasher.update(
                serde_json::to_vec(tool.get(field).unwrap_or(&Value::Null)).unwrap_or_default(),
            );
        }
        let fingerprint: [u8; 32] = hasher.finalize().into();
        let key = (server.to_owned(), canonical_name(name).into_owned());
        let mut seen = self.fingerprints.lock().expect("fingerprints lock");
        match seen.get_mut(&key) {
            // Each change is reported once: the new definition is what later lists compare to.
            Some(known) if *known != fingerprint => {
                *known = fingerprint;
                true
            }
            Some(_) => false,
            None => {
                if seen.len() < MAX_FINGERPRINTS {
                    seen.insert(key, fingerprint);
                }
                false
            }
        }
    }
}

/// The registry of the operator's peers: each entry with a valid key, under the DID its key
/// gives (an entry whose DID does not match its key is left out).
fn registry_of(peers: &[RegistryEntry]) -> MemoryRegistry {
    let mut registry = MemoryRegistry::new();
    for peer in peers {
        let Some(key) = peer
            .public_key
            .as_deref()
            .and_then(|k| agentmesh_identity::keys::public_key_from_text(k).ok())
        else {
            continue;
        };
        if peer.did.as_deref()
            == Some(agentmesh_identity::keys::Did::from_public_key(&key).as_str())
        {
            registry.insert(key, peer.score);
        }
    }
    registry
}

fn verdict(current: &Current, decision: &agentmesh_trust::Decision<'_>) -> Verdict {
    Verdict {
        effect: decision.effect,
        rule: decision.rule(),
        // Only a call that is not simply allowed is explained (in its error and its log line).
        explanation: if decision.effect == Effect::Allow {
            String::new()
        } else {
            decision.to_string()
        },
        policy: current.policy_label.clone(),
        score: current.score,
        rate_limited: matches!(
            decision.reason,
            agentmesh_trust::policy::Reason::RateLimited { .. }
        ),
    }
}

impl Verdict {
    pub fn denied(&self) -> bool {
        self.effect == Effect::Deny
    }

    /// `data` of the `-32001` error: `{"agentmesh": {blocked, policy, rule, trust_score}}`.
    pub fn error_data(&self) -> Value {
        serde_json::json!({"agentmesh": {
            "blocked": true,
            "policy": &*self.policy,
            "rule": self.rule,
            "trust_score": self.score,
            "reason": self.explanation,
        }})
    }

    pub fn is_shadow(&self) -> bool {
        self.effect == Effect::WouldDeny
    }
}

/// `enforce` or `shadow`, for metrics.
pub fn mode_label(mode: Mode) -> &'static str {
    match mode {
        Mode::Enforce => "enforce",
        Mode::Shadow => "shadow",
    }
}
