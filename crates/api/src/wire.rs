//! The operator's trust API (port 8080) as seen on the wire: what probes and sidecars send, and
//! what they are told. JSON, `camelCase`. Every request carries
//! `Authorization: Bearer <ServiceAccount token>`, checked by the operator with a TokenReview.
//!
//! The probe is a sensor: it reports what each pod did in a window (counts and first-seen
//! items). The operator is the judge: it maps pods to identities, keeps each identity's
//! baseline, applies the policies' behaviour rules and turns the result into trust signals.
//! Enforcement decisions flow back to the probes for safety tier 3.

use std::net::IpAddr;

pub use agentmesh_trust::policy::{Cidr, CidrError};
use serde::{Deserialize, Serialize};

/// `POST`: a [`ReportBatch`]. Answers 202 with a [`ReportAck`].
pub const REPORTS_PATH: &str = "/v1/reports";
/// Header of a sidecar's report batch: the identity's Ed25519 signature over the exact request
/// body bytes (`agentmesh_identity::report::sign_report`), standard padded base64. Required
/// for [`ReportSource::Sidecar`] batches; the operator verifies it with the AgentIdentity's
/// `status.publicKey`.
pub const REPORT_SIGNATURE_HEADER: &str = "x-agentmesh-signature";
/// Length of a sidecar batch id: 16 random bytes in base64url without padding.
pub const BATCH_ID_LEN: usize = 22;
/// `GET ?since=<version>`: the calling sidecar's [`SidecarConfig`], long-polled like
/// [`ENFORCEMENT_PATH`]. The caller is the pod whose ServiceAccount token it presents.
pub const SIDECAR_CONFIG_PATH: &str = "/v1/sidecar/config";
/// `GET`: the calling sidecar's [`SidecarKey`], the private key the operator made for the
/// identity its pod is bound to (over TLS only; the caller is the pod whose projected,
/// pod-bound token it presents). 404 while the pod or the identity's key is not known yet.
pub const SIDECAR_KEY_PATH: &str = "/v1/sidecar/key";
/// `GET ?node=<name>&since=<version>`: the node's [`EnforcementSet`]. Long-polls up to 30 s
/// when `since` equals the current version, so a change arrives within a second.
pub const ENFORCEMENT_PATH: &str = "/v1/enforcement";

/// The answer of [`SIDECAR_KEY_PATH`].
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SidecarKey {
    /// `namespace/name` of the AgentIdentity.
    pub identity: String,
    /// Its DID (`did:mesh:…`), for the sidecar to check the key against.
    pub did: String,
    /// The private key, PKCS#8 PEM.
    pub private_key: String,
}

impl std::fmt::Debug for SidecarKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SidecarKey")
            .field("identity", &self.identity)
            .field("did", &self.did)
            .field("private_key", &"<redacted>")
            .finish()
    }
}

/// What one reporter sends in one request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReportBatch {
    pub source: ReportSource,
    /// Probe reports: what each pod on the node did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<PodBehavior>,
    /// Sidecar reports: the outcomes of the MCP calls and handshakes it handled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outcomes: Vec<Outcome>,
}

/// Something a sidecar decided or observed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Outcome {
    /// An MCP call (`tools/call`, `prompts/get` or `resources/read`) and the policy's decision
    /// on it.
    #[serde(rename_all = "camelCase")]
    ToolCall {
        /// The JSON-RPC method; `None` means `tools/call`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        method: Option<String>,
        /// The tool, prompt or resource named by the call.
        tool: String,
        /// `allow`, `deny` or `would-deny`.
        effect: String,
        /// The rule that decided.
        rule: String,
        at_ms: i64,
    },
    /// A mutual handshake with a peer.
    #[serde(rename_all = "camelCase")]
    Handshake {
        peer_did: String,
        succeeded: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        at_ms: i64,
    },
    /// A tool of an upstream MCP server whose description or input schema changed after the
    /// sidecar first saw it: a behaviour anomaly (a "rug pull").
    #[serde(rename_all = "camelCase")]
    ToolChanged {
        /// The upstream server, as the sidecar names it.
        server: String,
        tool: String,
        at_ms: i64,
    },
}

/// What a sidecar needs to enforce policy and check peers: its identity's live state, the
/// policy that governs it and the registry of peers (keys and scores from AgentIdentity status,
/// never from what a peer claims).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SidecarConfig {
    /// Changes whenever the content changes; pass it back as `since`.
    pub version: String,
    pub identity: RegistryEntry,
    /// `namespace/name` of the governing TrustPolicy; `None`: the operator's default preset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_name: Option<String>,
    /// The governing policy's spec (or the default preset's, as a spec).
    pub policy: crate::policy::TrustPolicySpec,
    /// Every identity the operator knows, this one included.
    pub peers: Vec<RegistryEntry>,
}

/// One identity as the registry knows it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RegistryEntry {
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub did: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    pub score: i32,
    pub tier: crate::common::TrustTier,
    pub quarantined: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// Set when the identity declares a delegation that the operator could not verify (a
    /// widened capability, an expired or too deep chain, …): the reason. Peers refuse it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegation_refused: Option<String>,
}

/// Who reports.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum ReportSource {
    /// The node probe of a MeshLogicAgent.
    #[serde(rename_all = "camelCase")]
    Probe {
        /// Node the probe runs on.
        node: String,
        /// `namespace/name` of the MeshLogicAgent the probe belongs to.
        agent: String,
        /// Safety tier in force on the node (1-3).
        tier: u8,
        /// Why the tier in force is lower than the requested one, when it is.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fallback_reason: Option<String>,
        /// BPF programs loaded and attached.
        programs_loaded: u32,
        /// Where file opens are observed, when they are.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file_hook: Option<crate::meshlogic::FileHook>,
        /// Events lost to a full ring buffer since the probe started.
        ring_buffer_drops: u64,
    },
    /// The sidecar of an agent pod; the pod is the one whose token authenticates the request,
    /// and the batch is signed with the identity's key ([`REPORT_SIGNATURE_HEADER`]).
    #[serde(rename_all = "camelCase")]
    Sidecar {
        /// `namespace/name` of the AgentIdentity the sidecar acts for.
        identity: String,
        /// 16 random bytes, base64url without padding ([`BATCH_ID_LEN`] characters): a batch is
        /// accepted once per identity.
        batch_id: String,
        /// When the sidecar sent the batch, Unix milliseconds: refused when more than 60 s
        /// away from the operator's clock.
        sent_at_ms: i64,
    },
}

/// What one pod did during one window, as seen by the probe on its node.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodBehavior {
    /// Pod UID, from the pod's cgroup.
    pub pod_uid: String,
    /// `namespace/name` of the pod, when the probe knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The pod's `agentmesh.io/identity` label, when it has one: a hint only; the operator
    /// decides which AgentIdentity the pod is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Window start and end, Unix milliseconds.
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    /// Exact event counts of the window (never noised: they feed trust inside the cluster).
    pub counts: BehaviorCounts,
    /// Executables run in the window, each once, at most [`MAX_ITEMS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub executables: Vec<String>,
    /// Files opened for writing in the window, each once, at most [`MAX_ITEMS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub written_paths: Vec<String>,
    /// Files opened read-only in the window, each once, at most [`MAX_ITEMS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_paths: Vec<String>,
    /// Outbound connection destinations in the window, each once, at most [`MAX_ITEMS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destinations: Vec<Destination>,
    /// Connects and execs refused in the kernel (tier 3) in the window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocked: Vec<BlockedAction>,
    /// Items beyond [`MAX_ITEMS`] that were not listed (counted, never silent).
    #[serde(default)]
    pub items_truncated: u64,
    /// Events of the pod the kernel lost in the window to a full ring buffer: what they were is
    /// unknown. The operator counts a window with lost or unlisted items as an anomaly.
    #[serde(default)]
    pub events_dropped: u64,
}

/// Most distinct items of one list in one [`PodBehavior`].
pub const MAX_ITEMS: usize = 256;

/// Event counts of a window.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BehaviorCounts {
    pub execs: u64,
    pub exits: u64,
    pub file_opens: u64,
    pub connects: u64,
}

/// An outbound connection destination.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    pub ip: IpAddr,
    pub port: u16,
}

/// Something the kernel refused at tier 3.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum BlockedAction {
    Connect { ip: IpAddr, port: u16 },
    Exec { path: String },
}

/// The operator's answer to a report batch.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReportAck {
    /// Pods whose report was applied.
    pub accepted: u32,
    /// Pods the operator does not know (not found, or no identity): ignored.
    pub unknown_pods: u32,
    /// Pods on another node than the reporting probe's (its token's node): refused, since a
    /// probe speaks only for the pods of its own node.
    #[serde(default)]
    pub foreign_pods: u32,
}

/// What the probe on one node must enforce at tier 3. Replaces the previous set whole.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EnforcementSet {
    /// Changes whenever the content changes; pass it back as `since` to wait for the next one.
    pub version: String,
    /// Per-pod decisions; pods not listed are not enforced on.
    #[serde(default)]
    pub pods: Vec<PodEnforcement>,
}

/// Enforcement for one pod.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodEnforcement {
    pub pod_uid: String,
    /// The pod's identity is quarantined and its policy blocks the network: refuse every
    /// outbound connect except to the operator's trust API (`allowedDestinations`).
    #[serde(default)]
    pub quarantined: bool,
    /// Connects refused: destination network and ports (empty ports: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denied_networks: Vec<DeniedNetwork>,
    /// Executables killed at exec: absolute paths, or prefixes ending in `*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denied_executables: Vec<String>,
    /// Destinations always allowed, even when quarantined (the trust API, DNS).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_destinations: Vec<Destination>,
}

/// A network refused to a pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DeniedNetwork {
    /// CIDR, IPv4 or IPv6, as the policy wrote it; read it with [`DeniedNetwork::network`].
    pub cidr: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
}

impl DeniedNetwork {
    /// The network, parsed as the trust rules parse it (one [`Cidr`] type for the policy, the
    /// wire and the kernel maps): a text the policy refuses is refused here too.
    pub fn network(&self) -> Result<Cidr, CidrError> {
        self.cidr.parse()
    }
}

/// The query string of a long-poll (`node=…&since=…`): each name and value percent-encoded,
/// RFC 3986 unreserved characters as they are. [`parse_query`] reads it back.
pub fn encode_query(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        percent_encode(name, &mut out);
        out.push('=');
        percent_encode(value, &mut out);
    }
    out
}

fn percent_encode(text: &str, out: &mut String) {
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
}

/// The `name=value` pairs of a query string, percent-decoded (a `%` not followed by two hex
/// digits stays as it is; bytes that are not UTF-8 become U+FFFD). A pair without `=` is
/// ignored; of a repeated name, the last value counts.
pub fn parse_query(query: &str) -> std::collections::HashMap<String, String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(name, value)| (percent_decode(name), percent_decode(value)))
        .collect()
}

fn percent_decode(text: &str) -> String {
    let hex = |byte: u8| char::from(byte).to_digit(16);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| Some((hex(*bytes.get(i + 1)?)?, hex(*bytes.get(i + 2)?)?)))
            .flatten();
        match escaped {
            Some((high, low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_reads_back_what_was_encoded() {
        let query = encode_query(&[("node", "node-1"), ("since", "v 1/2&x=ü")]);
        assert_eq!(query, "node=node-1&since=v%201%2F2%26x%3D%C3%BC");
        let pairs = parse_query(&query);
        assert_eq!(pairs["node"], "node-1");
        assert_eq!(pairs["since"], "v 1/2&x=ü");
        assert_eq!(pairs.len(), 2);
    }

    #[test]
    fn a_query_is_read_leniently() {
        let pairs = parse_query("a=%&b=%4&c=%zz1&d=%FF&flag&e=1&e=2&=x&f=");
        assert_eq!(pairs["a"], "%");
        assert_eq!(pairs["b"], "%4");
        assert_eq!(pairs["c"], "%zz1");
        assert_eq!(pairs["d"], "\u{fffd}");
        assert_eq!(pairs["e"], "2");
        assert_eq!(pairs[""], "x");
        assert_eq!(pairs["f"], "");
        assert!(!pairs.contains_key("flag"));
        assert!(parse_query("").is_empty());
    }

    #[test]
    fn a_batch_round_trips_in_camel_case() {
        let batch = ReportBatch {
            source: ReportSource::Probe {
                node: "node-1".into(),
                agent: "meshlogic/meshlogic-agent".into(),
                tier: 2,
                fallback_reason: None,
                programs_loaded: 7,
                file_hook: Some(crate::meshlogic::FileHook::SysExit),
                ring_buffer_drops: 0,
            },
            pods: vec![PodBehavior {
                pod_uid: "0b6c1f8e-3f6a-4d38-9d0e-3f2d1c0a9b11".into(),
                window_start_ms: 1,
                window_end_ms: 2,
                counts: BehaviorCounts {
                    execs: 3,
                    ..Default::default()
                },
                destinations: vec![Destination {
                    ip: "10.0.0.1".parse().unwrap(),
                    port: 443,
                }],
                blocked: vec![BlockedAction::Exec {
                    path: "/usr/bin/curl".into(),
                }],
                ..Default::default()
            }],
            outcomes: vec![],
        };
        let json = serde_json::to_value(&batch).unwrap();
        assert_eq!(json["source"]["kind"], "probe");
        assert_eq!(json["source"]["programsLoaded"], 7);
        assert_eq!(json["source"]["fileHook"], "sys_exit");
        assert_eq!(
            json["pods"][0]["podUid"],
            "0b6c1f8e-3f6a-4d38-9d0e-3f2d1c0a9b11"
        );
        assert_eq!(json["pods"][0]["blocked"][0]["kind"], "exec");
        assert_eq!(serde_json::from_value::<ReportBatch>(json).unwrap(), batch);
    }

    #[test]
    fn a_sidecar_batch_round_trips_in_camel_case() {
        let batch = ReportBatch {
            source: ReportSource::Sidecar {
                identity: "team/agent".into(),
                batch_id: "AAECAwQFBgcICQoLDA0ODw".into(),
                sent_at_ms: 1_800_000_000_000,
            },
            pods: vec![],
            outcomes: vec![
                Outcome::ToolCall {
                    method: None,
                    tool: "fetch_url".into(),
                    effect: "allow".into(),
                    rule: "tools.allow[0]".into(),
                    at_ms: 1,
                },
                Outcome::ToolCall {
                    method: Some("prompts/get".into()),
                    tool: "summarize".into(),
                    effect: "deny".into(),
                    rule: "preset:strict".into(),
                    at_ms: 2,
                },
                Outcome::Handshake {
                    peer_did: "did:mesh:00112233445566778899aabbccddeeff".into(),
                    succeeded: false,
                    reason: Some("expired".into()),
                    at_ms: 3,
                },
                Outcome::ToolChanged {
                    server: "github".into(),
                    tool: "create_issue".into(),
                    at_ms: 4,
                },
            ],
        };
        let json = serde_json::to_value(&batch).unwrap();
        assert_eq!(
            json["source"],
            serde_json::json!({"kind": "sidecar", "identity": "team/agent",
                "batchId": "AAECAwQFBgcICQoLDA0ODw", "sentAtMs": 1_800_000_000_000_i64})
        );
        assert_eq!(json["outcomes"][0]["kind"], "toolCall");
        // `None` is not written: tools/call, as older sidecars sent it.
        assert!(json["outcomes"][0].get("method").is_none());
        assert_eq!(json["outcomes"][1]["method"], "prompts/get");
        assert_eq!(
            json["outcomes"][2]["peerDid"],
            "did:mesh:00112233445566778899aabbccddeeff"
        );
        assert_eq!(
            json["outcomes"][3],
            serde_json::json!({"kind": "toolChanged", "server": "github", "tool": "create_issue", "atMs": 4})
        );
        assert_eq!(serde_json::from_value::<ReportBatch>(json).unwrap(), batch);
    }

    #[test]
    fn a_sidecar_batch_without_its_batch_id_or_time_is_refused() {
        for source in [
            serde_json::json!({"kind": "sidecar", "identity": "team/agent"}),
            serde_json::json!({"kind": "sidecar", "identity": "team/agent", "batchId": "AAECAwQFBgcICQoLDA0ODw"}),
            serde_json::json!({"kind": "sidecar", "identity": "team/agent", "sentAtMs": 1}),
        ] {
            let batch = serde_json::json!({"source": source, "outcomes": []});
            assert!(
                serde_json::from_value::<ReportBatch>(batch.clone()).is_err(),
                "{batch}"
            );
        }
    }
}
