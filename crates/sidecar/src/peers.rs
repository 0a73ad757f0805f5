//! Identity between agents. When an upstream is another agent's sidecar (a TrustPolicy
//! `mcpServers` entry with `agent`), the two sidecars run the mutual handshake of
//! `agentmesh_identity::handshake` over HTTP, then every request carries a proof bound to the
//! session, the method, the path and the body. Keys and scores always come from the registry the
//! operator sends, never from the peer.
//!
//! On the wire (all on the sidecar port, reachable from other pods):
//! - `POST /agentmesh/v1/handshake/init`: a `HandshakeInit`, answered with the signed
//!   `HandshakeChallenge` (or 403 with the reason);
//! - `POST /agentmesh/v1/handshake/response`: the initiator's signed `HandshakeResponse`,
//!   answered `{"session": <id>, "ttlSeconds": n}`;
//! - `/inbound/<path>`: a request for this sidecar's own agent, carrying
//!   `x-agentmesh-proof: <base64url of the JSON RequestProof>`; checked (session, proof, the
//!   peer still registered, `allowedPeers`, `minPeerScore` at its live score) before the agent
//!   sees anything, then forwarded to `AGENTMESH_INBOUND_UPSTREAM` with the caller named in
//!   `x-agentmesh-peer-did` / `x-agentmesh-peer-identity`.
//!
//! Sessions are cached for `AGENTMESH_CACHE_TTL` seconds (a fresh handshake for every request
//! when `AGENTMESH_CACHE_ENABLED=false`); a responder that no longer knows the session answers
//! 401 and the initiator handshakes again once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use agentmesh_identity::handshake::{
    HandshakeChallenge, HandshakeConfig, HandshakeInit, HandshakeResponse, Initiator, Responder,
};
use agentmesh_identity::keys::Did;
use agentmesh_identity::proof::{Covered, ProofSigner, ProofVerifier, RequestProof};
use agentmesh_identity::{Session, SigningKey};
use agentmesh_trust::policy::PeerRef;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use rand::RngCore;
use serde_json::{Value, json};

use agentmesh_api::wire::Outcome;

use crate::metrics::{Metrics, StatusLabels};
use crate::operator::Outbox;
use crate::policy::Current;

pub const HANDSHAKE_INIT_PATH: &str = "/agentmesh/v1/handshake/init";
pub const HANDSHAKE_RESPONSE_PATH: &str = "/agentmesh/v1/handshake/response";
pub const INBOUND_PREFIX: &str = "/inbound";
pub const PROOF_HEADER: &str = "x-agentmesh-proof";
pub const PEER_DID_HEADER: &str = "x-agentmesh-peer-did";
pub const PEER_IDENTITY_HEADER: &str = "x-agentmesh-peer-identity";

/// Most inbound sessions held at once (expired ones are dropped first).
const MAX_SESSIONS: usize = 4096;

/// Why a peer request or handshake was refused: the rule and the reason, for the JSON-RPC error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerRefusal {
    pub status: StatusCode,
    /// `identity.handshake`, `identity.proof`, `identity.session`, `identity.delegation`,
    /// `allowedPeers`, `minPeerScore`, or [`UNREACHABLE`] (no handshake took place).
    pub rule: String,
    pub reason: String,
}

impl PeerRefusal {
    fn new(status: StatusCode, rule: &str, reason: impl Into<String>) -> Self {
        Self {
            status,
            rule: rule.into(),
            reason: reason.into(),
        }
    }
}

/// The rule of a refusal because the peer's sidecar could not be reached: the handshake did not
/// take place, so it neither fails nor costs this agent trust (counted `unreachable`).
pub const UNREACHABLE: &str = "identity.unreachable";

struct InboundSession {
    verifier: ProofVerifier,
    peer: Did,
    expires: Instant,
}

struct OutboundSession {
    signer: ProofSigner,
    expires: Instant,
}

/// Both sides of identity between agents.
pub struct Peers {
    key: OnceLock<SigningKey>,
    /// The namespace of this sidecar's identity (bare names in `allowedPeers` are of it).
    namespace: String,
    ttl: Duration,
    responder: Mutex<Option<Responder>>,
    inbound: Mutex<HashMap<[u8; 32], InboundSession>>,
    outbound: tokio::sync::Mutex<HashMap<String, OutboundSession>>,
    client: Client<HttpConnector, Full<Bytes>>,
    metrics: Arc<Metrics>,
    outbox: Option<Arc<Outbox>>,
}

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

fn handshake_config(current: &Current) -> HandshakeConfig {
    HandshakeConfig {
        min_peer_score: current.policy.spec().min_peer_score,
        ..HandshakeConfig::default()
    }
}

impl Peers {
    pub fn new(
        namespace: String,
        ttl: Duration,
        client: Client<HttpConnector, Full<Bytes>>,
        metrics: Arc<Metrics>,
        outbox: Option<Arc<Outbox>>,
    ) -> Self {
        Self {
            key: OnceLock::new(),
            namespace,
            ttl,
            responder: Mutex::new(None),
            inbound: Mutex::new(HashMap::new()),
            outbound: tokio::sync::Mutex::new(HashMap::new()),
            client,
            metrics,
            outbox,
        }
    }

    /// Counts a handshake and reports it (this side's own attempts and completed responses).
    pub fn record_handshake(&self, peer: &str, outcome: Result<(), &str>) {
        self.count_handshake(if outcome.is_ok() { "success" } else { "failed" });
        if let Some(outbox) = &self.outbox {
            outbox.push(Outcome::Handshake {
                peer_did: peer.to_owned(),
                succeeded: outcome.is_ok(),
                reason: outcome.err().map(str::to_owned),
                at_ms: crate::now().as_millis(),
            });
        }
    }

    fn count_handshake(&self, status: &str) {
        self.metrics
            .handshakes
            .get_or_create(&StatusLabels {
                status: status.into(),
            })
            .inc();
    }

    /// Counts a refused inbound handshake or request. Not reported: whoever sent it, it is not
    /// this identity's doing.
    pub fn record_refusal(&self) {
        self.count_handshake("refused");
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn set_key(&self, key: SigningKey) {
        let _ = self.key.set(key);
    }

    fn key(&self) -> Result<&SigningKey, PeerRefusal> {
        self.key.get().ok_or_else(|| {
            PeerRefusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "identity.key",
                "this sidecar does not hold its key yet",
            )
        })
    }

    /// May this identity talk to `peer` at its live registry score?
    pub fn authorize(&self, current: &Current, did: &str) -> Result<(), PeerRefusal> {
        let Some(entry) = current.peer(did) else {
            return Err(PeerRefusal::new(
                StatusCode::FORBIDDEN,
                "identity.registry",
                format!("{did} is not a registered identity"),
            ));
        };
        if let Some(reason) = &entry.delegation_refused {
            return Err(PeerRefusal::new(
                StatusCode::FORBIDDEN,
                "identity.delegation",
                format!(
                    "peer {}/{}: its delegation was refused by the operator ({reason})",
                    entry.namespace, entry.name
                ),
            ));
        }
        let decision = current.policy.decide_peer(
            PeerRef {
                did,
                namespace: Some(&entry.namespace),
                name: Some(&entry.name),
            },
            entry.score,
            &self.namespace,
        );
        if decision.effect.is_allowed() {
            Ok(())
        } else {
            Err(PeerRefusal::new(
                StatusCode::FORBIDDEN,
                &decision.rule(),
                format!("peer {}/{}: {decision}", entry.namespace, entry.name),
            ))
        }
    }

    // ---- responder ----

    /// `POST /agentmesh/v1/handshake/init`.
    pub fn on_init(&self, current: &Current, body: &[u8]) -> Result<Value, PeerRefusal> {
        let key = self.key()?;
        let init: HandshakeInit = serde_json::from_slice(body).map_err(|e| {
            PeerRefusal::new(
                StatusCode::BAD_REQUEST,
                "identity.handshake",
                format!("not a handshake init: {e}"),
            )
        })?;
        self.authorize(current, init.initiator.as_str())?;
        let mut responder = self.responder.lock().expect("responder lock");
        let responder =
            responder.get_or_insert_with(|| Responder::new(key.clone(), handshake_config(current)));
        let challenge = responder
            .on_init(&init, &current.registry, random(), random(), crate::now())
            .map_err(|e| {
                PeerRefusal::new(StatusCode::FORBIDDEN, "identity.handshake", e.to_string())
            })?;
        Ok(serde_json::to_value(challenge).expect("serializes"))
    }

    /// `POST /agentmesh/v1/handshake/response`: on success, the session is held for the TTL.
    pub fn on_response(&self, current: &Current, body: &[u8]) -> Result<(Value, Did), PeerRefusal> {
        let response: HandshakeResponse = serde_json::from_slice(body).map_err(|e| {
            PeerRefusal::new(
                StatusCode::BAD_REQUEST,
                "identity.handshake",
                format!("not a handshake response: {e}"),
            )
        })?;
        let session = {
            let mut responder = self.responder.lock().expect("responder lock");
            let responder = responder.as_mut().ok_or_else(|| {
                PeerRefusal::new(
                    StatusCode::FORBIDDEN,
                    "identity.handshake",
                    "unknown challenge",
                )
            })?;
            responder
                .on_response(&response, &current.registry, crate::now())
                .map_err(|e| {
                    PeerRefusal::new(StatusCode::FORBIDDEN, "identity.handshake", e.to_string())
                })?
        };
        self.authorize(current, session.peer.as_str())?;
        let mut inbound = self.inbound.lock().expect("sessions lock");
        if inbound.len() >= MAX_SESSIONS {
            let now = Instant::now();
            inbound.retain(|_, s| s.expires > now);
            if inbound.len() >= MAX_SESSIONS {
                return Err(PeerRefusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "identity.session",
                    "too many sessions; try again later",
                ));
            }
        }
        let peer = session.peer.clone();
        inbound.insert(
            session.id,
            InboundSession {
                verifier: ProofVerifier::new(&session),
                peer: session.peer.clone(),
                expires: Instant::now() + self.ttl,
            },
        );
        Ok((
            json!({"session": STANDARD.encode(session.id), "ttlSeconds": self.ttl.as_secs()}),
            peer,
        ))
    }

    /// Checks an inbound request's proof; returns the caller's DID.
    pub fn check_inbound(
        &self,
        current: &Current,
        header: Option<&str>,
        covered: Covered<'_>,
    ) -> Result<Did, PeerRefusal> {
        let header = header.ok_or_else(|| {
            PeerRefusal::new(
                StatusCode::UNAUTHORIZED,
                "identity.proof",
                format!("no {PROOF_HEADER} header: requests from other agents carry a proof"),
            )
        })?;
        let proof: RequestProof = URL_SAFE_NO_PAD
            .decode(header.trim())
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(|| {
                PeerRefusal::new(
                    StatusCode::UNAUTHORIZED,
                    "identity.proof",
                    format!("{PROOF_HEADER} is not a proof"),
                )
            })?;
        let id: [u8; 32] = STANDARD
            .decode(&proof.session)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                PeerRefusal::new(
                    StatusCode::UNAUTHORIZED,
                    "identity.proof",
                    "malformed session id",
                )
            })?;
        let peer = {
            let mut inbound = self.inbound.lock().expect("sessions lock");
            let session = match inbound.get_mut(&id) {
                Some(s) if s.expires > Instant::now() => s,
                _ => {
                    inbound.remove(&id);
                    return Err(PeerRefusal::new(
                        StatusCode::UNAUTHORIZED,
                        "identity.session",
                        "unknown or expired session: handshake again",
                    ));
                }
            };
            session
                .verifier
                .verify(&proof, covered, crate::now())
                .map_err(|e| {
                    PeerRefusal::new(StatusCode::FORBIDDEN, "identity.proof", e.to_string())
                })?;
            session.peer.clone()
        };
        // The live registry decides, not the handshake's snapshot: a peer quarantined or removed
        // since is refused at once.
        self.authorize(current, peer.as_str())?;
        Ok(peer)
    }

    // ---- initiator ----

    /// A proof for a request to the peer `did` whose sidecar is at `origin`, handshaking first
    /// when no session is cached. `fresh` forces a new handshake.
    pub async fn proof(
        &self,
        current: &Current,
        origin: &str,
        did: &Did,
        covered: Covered<'_>,
        fresh: bool,
    ) -> Result<String, PeerRefusal> {
        self.authorize(current, did.as_str())?;
        let mut outbound = self.outbound.lock().await;
        let cached = outbound
            .get(did.as_str())
            .is_some_and(|s| s.expires > Instant::now() && !fresh);
        if !cached {
            let result = self.handshake(current, origin, did).await;
            match &result {
                Err(refusal) if refusal.rule == UNREACHABLE => self.count_handshake("unreachable"),
                _ => self.record_handshake(
                    did.as_str(),
                    result.as_ref().map(|_| ()).map_err(|r| r.reason.as_str()),
                ),
            }
            let session = result?;
            let key = self.key()?.clone();
            outbound.insert(
                did.as_str().to_owned(),
                OutboundSession {
                    signer: ProofSigner::new(&session, key),
                    expires: Instant::now() + self.ttl,
                },
            );
        }
        let session = outbound.get_mut(did.as_str()).expect("just inserted");
        let proof = session.signer.sign(covered, crate::now());
        if self.ttl.is_zero() {
            outbound.remove(did.as_str());
        }
        Ok(URL_SAFE_NO_PAD.encode(serde_json::to_vec(&proof).expect("serializes")))
    }

    async fn post_json(&self, url: String, body: Vec<u8>) -> Result<(StatusCode, Bytes), String> {
        let request = Request::post(url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(Duration::from_secs(10), self.client.request(request))
            .await
            .map_err(|_| "no answer within 10 s".to_owned())?
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    }

    /// One handshake message to the peer; its answer when it is 200.
    async fn exchange(
        &self,
        did: &Did,
        url: String,
        message: serde_json::Result<Vec<u8>>,
    ) -> Result<Bytes, PeerRefusal> {
        let refused =
            |reason: String| PeerRefusal::new(StatusCode::FORBIDDEN, "identity.handshake", reason);
        let (status, body) = self
            .post_json(url, message.expect("handshake messages serialize"))
            .await
            .map_err(|e| {
                PeerRefusal::new(
                    StatusCode::BAD_GATEWAY,
                    UNREACHABLE,
                    format!("peer {did} unreachable: {e}"),
                )
            })?;
        if status != StatusCode::OK {
            return Err(refused(format!(
                "peer {did} refused the handshake: {}",
                String::from_utf8_lossy(&body)
            )));
        }
        Ok(body)
    }

    async fn handshake(
        &self,
        current: &Current,
        origin: &str,
        did: &Did,
    ) -> Result<Session, PeerRefusal> {
        let refused =
            |reason: String| PeerRefusal::new(StatusCode::FORBIDDEN, "identity.handshake", reason);
        let key = self.key()?.clone();
        let now = crate::now();
        let (initiator, init) = Initiator::start(
            key,
            random(),
            Some(did.clone()),
            handshake_config(current),
            now,
        );
        let body = self
            .exchange(
                did,
                format!("{origin}{HANDSHAKE_INIT_PATH}"),
                serde_json::to_vec(&init),
            )
            .await?;
        let challenge: HandshakeChallenge = serde_json::from_slice(&body)
            .map_err(|e| refused(format!("peer {did} sent no challenge: {e}")))?;
        let (response, session) = initiator
            .on_challenge(&challenge, &current.registry, crate::now())
            .map_err(|e| refused(format!("peer {did}: {e}")))?;
        self.exchange(
            did,
            format!("{origin}{HANDSHAKE_RESPONSE_PATH}"),
            serde_json::to_vec(&response),
        )
        .await?;
        Ok(session)
    }

    /// Forgets the session with `did` (the peer no longer knows it).
    pub async fn forget(&self, did: &Did) {
        self.outbound.lock().await.remove(did.as_str());
    }
}
