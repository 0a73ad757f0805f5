//! `POST /v1/reports`: probes' per-pod windows and sidecars' signed batches, authenticated,
//! checked and handed to the engine.

use agentmesh_api::meshlogic::NodeProbeStatus;
use agentmesh_api::wire::{self, ReportBatch, ReportSource};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use super::auth::Refusal;
use crate::runtime::http::{self, Body};

use super::{MAX_BODY, Server};

impl Server {
    pub(super) async fn reports(&self, request: Request<Incoming>) -> Response<Body> {
        match self.try_reports(request).await {
            Ok(response) => response,
            Err(refusal) => self.refuse(refusal),
        }
    }

    async fn try_reports(&self, request: Request<Incoming>) -> Result<Response<Body>, Refusal> {
        // Leadership, then authentication, before reading the body: a request that will be
        // refused costs nothing more.
        let engine = self.engine()?;
        let caller = self.caller(&request).await?;
        // `None`: absent; `Some(None)`: present but not visible ASCII.
        let signature: Option<Option<String>> = request
            .headers()
            .get(wire::REPORT_SIGNATURE_HEADER)
            .map(|value| value.to_str().ok().map(str::to_owned));
        let body = Limited::new(request.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| {
                Refusal::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body",
                    format!("reading the body: {e}"),
                )
            })?
            .to_bytes();
        let batch: ReportBatch = serde_json::from_slice(&body).map_err(|e| {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                "malformed",
                format!("not a report batch: {e}"),
            )
        })?;
        let ack = match &batch.source {
            ReportSource::Probe {
                node,
                agent,
                tier,
                fallback_reason,
                programs_loaded,
                file_hook,
                ..
            } => {
                self.auth.may_report(&self.ctx, &caller).await?;
                if !(1..=3).contains(tier) || node.is_empty() || !agent.contains('/') {
                    return Err(Refusal::new(
                        StatusCode::BAD_REQUEST,
                        "malformed",
                        "source: node, agent (namespace/name) and tier 1-3 are required",
                    ));
                }
                // A probe speaks for its own node (its token's) and its own agent (the
                // account the agent's probes run as), whatever its body says.
                let own_node = own_node(&caller, node, "source.node")?;
                self.probe_of(agent, &caller)?;
                self.ctx.probes.record(
                    agent,
                    NodeProbeStatus {
                        node: node.clone(),
                        tier: i32::from(*tier),
                        reason: fallback_reason.clone(),
                        programs_loaded: i32::try_from(*programs_loaded).unwrap_or(i32::MAX),
                        file_hook: *file_hook,
                        last_report_at: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                            k8s_openapi::jiff::Timestamp::now(),
                        )),
                    },
                );
                let ack = engine.ingest_pods(own_node, &batch.pods);
                if ack.foreign_pods > 0 {
                    tracing::warn!(
                        caller = %caller.username, node = own_node, pods = ack.foreign_pods,
                        "a probe reported pods of another node: ignored"
                    );
                    self.count_refused("foreign_pod", u64::from(ack.foreign_pods));
                }
                ack
            }
            ReportSource::Sidecar {
                identity,
                batch_id,
                sent_at_ms,
            } => {
                // A sidecar reports for the identity of the pod its token is bound to, only.
                let bound = caller
                    .pod_uid
                    .as_deref()
                    .and_then(|uid| engine.identity_of_pod(uid));
                let pod_identity = bound.as_ref().map(|(identity, pod)| {
                    crate::engine::key(
                        &pod.namespace,
                        &kube::ResourceExt::name_any(identity.as_ref()),
                    )
                });
                let Some((registered, pod)) =
                    bound.filter(|_| pod_identity.as_deref() == Some(identity.as_str()))
                else {
                    return Err(Refusal::new(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        format!(
                            "{} is not a pod of AgentIdentity {identity}",
                            caller.username
                        ),
                    ));
                };
                // Then only what the identity's key signed counts.
                check_signature(&registered, identity, &body, signature)?;
                if !is_batch_id(batch_id) {
                    return Err(Refusal::new(
                        StatusCode::BAD_REQUEST,
                        "malformed",
                        "source.batchId must be 16 bytes in base64url without padding (22 characters)",
                    ));
                }
                let sidecar = crate::engine::SidecarBatch {
                    batch_id,
                    sent_at_ms: *sent_at_ms,
                    outcomes: &batch.outcomes,
                };
                engine
                    .ingest_sidecar(identity, &pod.name, sidecar)
                    .map_err(sidecar_refusal)?;
                wire::ReportAck {
                    accepted: 1,
                    ..Default::default()
                }
            }
        };
        self.ctx.metrics.reports_accepted.inc();
        Ok(http::json(
            StatusCode::ACCEPTED,
            &serde_json::to_value(ack).expect("ack serializes"),
        ))
    }
}

/// `node`, the node a probe says it is on (`what` names where it said so), when it is the
/// node its token is bound to: a probe runs as a pod, whose projected token names its node.
pub(super) fn own_node<'a>(
    caller: &super::auth::Caller,
    node: &'a str,
    what: &str,
) -> Result<&'a str, Refusal> {
    let bound = caller.node.as_deref().ok_or_else(|| {
        Refusal::new(
            StatusCode::FORBIDDEN,
            "node_unbound",
            format!(
                "{}: a probe's token must be the projected ServiceAccount token of its pod, which names the pod's node",
                caller.username
            ),
        )
    })?;
    if node == bound {
        Ok(node)
    } else {
        Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "foreign_node",
            format!("{what} {node:?} is not the node of the caller's token"),
        ))
    }
}

impl Server {
    /// Whether `caller` runs as the probes of the MeshLogicAgent `agent` (`namespace/name`).
    pub(super) fn probe_of(
        &self,
        agent: &str,
        caller: &super::auth::Caller,
    ) -> Result<(), Refusal> {
        use crate::probes::NotBound;
        match self.ctx.probes.check(agent, &caller.username) {
            Ok(()) => Ok(()),
            Err(NotBound::UnknownAgent) => Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unknown_agent",
                format!("MeshLogicAgent {agent} is not known (yet); retry"),
            )),
            Err(NotBound::OtherAccount { .. }) => Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "foreign_agent",
                format!(
                    "{} does not run the probes of MeshLogicAgent {agent}",
                    caller.username
                ),
            )),
        }
    }
}

/// Checks the batch's signature (the header's value) over the raw body with the identity's
/// registered public key (`status.publicKey`).
fn check_signature(
    registered: &agentmesh_api::identity::AgentIdentity,
    identity: &str,
    body: &[u8],
    signature: Option<Option<String>>,
) -> Result<(), Refusal> {
    use agentmesh_identity::report::{ReportSignatureError, verify_report};
    let public_key = registered
        .status
        .as_ref()
        .and_then(|s| s.public_key.as_deref())
        .ok_or_else(|| {
            Refusal::new(
                StatusCode::FORBIDDEN,
                "no_public_key",
                format!(
                    "AgentIdentity {identity} has no status.publicKey yet: its reports cannot be verified"
                ),
            )
        })?;
    let public_key = agentmesh_identity::keys::public_key_from_text(public_key).map_err(|e| {
        Refusal::new(
            StatusCode::FORBIDDEN,
            "no_public_key",
            format!("AgentIdentity {identity} has an unusable status.publicKey: {e}"),
        )
    })?;
    let unsigned = || {
        Refusal::new(
            StatusCode::UNAUTHORIZED,
            "unsigned",
            format!(
                "a sidecar's report batch must be signed with its identity's key in the {} header",
                wire::REPORT_SIGNATURE_HEADER
            ),
        )
    };
    let signature = match signature {
        None => return Err(unsigned()),
        Some(None) => {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "bad_signature",
                format!("the {} header is not ASCII", wire::REPORT_SIGNATURE_HEADER),
            ));
        }
        Some(Some(signature)) => signature,
    };
    match verify_report(&public_key, body, &signature) {
        Ok(()) => Ok(()),
        Err(ReportSignatureError::Missing) => Err(unsigned()),
        Err(e) => Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "bad_signature",
            format!("{e} (AgentIdentity {identity})"),
        )),
    }
}

/// 16 bytes in base64url without padding.
fn is_batch_id(id: &str) -> bool {
    use base64::Engine as _;
    id.len() == wire::BATCH_ID_LEN
        && base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(id)
            .is_ok_and(|bytes| bytes.len() == 16)
}

fn sidecar_refusal(refusal: crate::engine::SidecarRefusal) -> Refusal {
    use crate::engine::SidecarRefusal;
    use agentmesh_trust::replay::ReplayError;
    let message = refusal.to_string();
    match refusal {
        SidecarRefusal::UnknownIdentity => {
            Refusal::new(StatusCode::NOT_FOUND, "unknown_identity", message)
        }
        SidecarRefusal::Replay(ReplayError::Stale { .. }) => {
            Refusal::new(StatusCode::FORBIDDEN, "stale", message)
        }
        SidecarRefusal::Replay(ReplayError::Replayed(_)) => {
            Refusal::new(StatusCode::CONFLICT, "replayed", message)
        }
        SidecarRefusal::Replay(ReplayError::TooMany) => {
            Refusal::new(StatusCode::TOO_MANY_REQUESTS, "too_many_batches", message)
        }
    }
}

/// Answers at once when the view's version differs from `since`; otherwise waits for a change
#[cfg(test)]
mod tests {
    use super::*;
    use agentmesh_api::identity::{AgentIdentity, AgentIdentitySpec, AgentIdentityStatus};
    use agentmesh_identity::SigningKey;
    use agentmesh_identity::keys::public_key_to_text;
    use agentmesh_identity::report::sign_report;

    fn registered(key: Option<&SigningKey>) -> AgentIdentity {
        let mut identity = AgentIdentity::new("agent", AgentIdentitySpec::default());
        identity.status = Some(AgentIdentityStatus {
            public_key: key.map(|k| public_key_to_text(&k.verifying_key())),
            ..Default::default()
        });
        identity
    }

    const BODY: &[u8] = b"{\"source\":{}}";

    fn reason(result: Result<(), Refusal>) -> (u16, &'static str) {
        let refusal = result.expect_err("refused");
        (refusal.status.as_u16(), refusal.reason)
    }

    #[test]
    fn only_the_identity_key_over_the_exact_body_is_believed() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let other = SigningKey::from_bytes(&[2; 32]);
        let identity = registered(Some(&key));
        let good = sign_report(&key, BODY);
        assert!(check_signature(&identity, "ns/agent", BODY, Some(Some(good.clone()))).is_ok());
        assert_eq!(
            reason(check_signature(&identity, "ns/agent", BODY, None)),
            (401, "unsigned")
        );
        assert_eq!(
            reason(check_signature(
                &identity,
                "ns/agent",
                BODY,
                Some(Some(" ".into()))
            )),
            (401, "unsigned")
        );
        assert_eq!(
            reason(check_signature(&identity, "ns/agent", BODY, Some(None))),
            (403, "bad_signature")
        );
        assert_eq!(
            reason(check_signature(
                &identity,
                "ns/agent",
                BODY,
                Some(Some(sign_report(&other, BODY)))
            )),
            (403, "bad_signature")
        );
        assert_eq!(
            reason(check_signature(
                &identity,
                "ns/agent",
                b"{\"source\":{} }",
                Some(Some(good.clone()))
            )),
            (403, "bad_signature")
        );
        assert_eq!(
            reason(check_signature(
                &identity,
                "ns/agent",
                BODY,
                Some(Some("garbage".into()))
            )),
            (403, "bad_signature")
        );
        assert_eq!(
            reason(check_signature(
                &registered(None),
                "ns/agent",
                BODY,
                Some(Some(good.clone()))
            )),
            (403, "no_public_key")
        );
        let mut broken = registered(Some(&key));
        broken.status.as_mut().unwrap().public_key = Some("A".repeat(44));
        assert_eq!(
            reason(check_signature(&broken, "ns/agent", BODY, Some(Some(good)))),
            (403, "no_public_key")
        );
    }

    #[test]
    fn batch_ids_are_16_bytes_of_base64url() {
        assert!(is_batch_id("AAECAwQFBgcICQoLDA0ODw"));
        assert!(is_batch_id("-_-_-_-_-_-_-_-_-_-_-w"));
        for bad in [
            "",
            "AAECAwQFBgcICQoLDA0ODw==",
            "AAECAwQFBgcICQoLDA0OD",
            "AAECAwQFBgcICQoLDA0OD+",
            "AAECAwQFBgcICQoLDA0OD/",
            "AAECAwQFBgcICQoLDA0ODx", // non-canonical trailing bits
            "ÄAECAwQFBgcICQoLDA0OD",
        ] {
            assert!(!is_batch_id(bad), "{bad}");
        }
    }
}
