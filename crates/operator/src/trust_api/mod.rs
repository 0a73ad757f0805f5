//! The trust API on port 8080: `/health`, `/ready`, and the endpoints of probes and sidecars
//! (`agentmesh_api::wire`). Only the leader ingests and answers the long-polls; the others
//! pass those calls on to it (`forward`), and answer 503 with `Retry-After` when they cannot
//! (no leader yet, or it does not answer), so a client retries and lands on the leader.

mod auth;
mod forward;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use agentmesh_api::meshlogic::NodeProbeStatus;
use agentmesh_api::names::paths;
use agentmesh_api::wire::{self, ReportBatch, ReportSource};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use tokio::net::TcpListener;

use crate::context::Context;
use crate::engine::Engine;
use crate::metrics::{ReasonLabels, RequestLabels};
use crate::runtime::http::{self, Body};
use auth::{Authenticator, Caller, Refusal};
use forward::Forwarder;

/// Largest report body accepted.
const MAX_BODY: usize = 4 << 20;
/// Longest a long-poll waits for a change before answering with the unchanged view.
const LONG_POLL: Duration = Duration::from_secs(30);

struct Server {
    ctx: Arc<Context>,
    /// The trust engine, once this replica leads.
    engine: Arc<OnceLock<Arc<Engine>>>,
    auth: Authenticator,
    forwarder: Forwarder,
}

pub async fn serve(listener: TcpListener, ctx: Arc<Context>, engine: Arc<OnceLock<Arc<Engine>>>) {
    let server = Arc::new(Server {
        ctx,
        engine,
        auth: Authenticator::default(),
        forwarder: Forwarder::default(),
    });
    http::serve("trust-api", listener, move |request| {
        server.clone().route(request)
    })
    .await;
}

impl Server {
    async fn route(self: Arc<Self>, request: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let path = request.uri().path().to_owned();
        let leader_only = [
            wire::REPORTS_PATH,
            wire::ENFORCEMENT_PATH,
            wire::SIDECAR_CONFIG_PATH,
        ]
        .contains(&path.as_str());
        let response = if leader_only && !self.ctx.is_leader() && Forwarder::may_forward(&request) {
            match self.forwarder.forward(&self.ctx, request, MAX_BODY).await {
                Ok(response) => response,
                Err(error) => {
                    tracing::warn!(%error, path, "could not pass a call on to the leader");
                    let message =
                        format!("this replica does not lead and cannot reach the leader ({error})");
                    self.refuse(Refusal::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not_leader",
                        message + "; retry",
                    ))
                }
            }
        } else {
            self.answer(request, &path).await
        };
        // Unknown paths share one label, so that scanners cannot grow the metric without bound.
        let known = [
            paths::HEALTH,
            paths::READY,
            wire::REPORTS_PATH,
            wire::ENFORCEMENT_PATH,
            wire::SIDECAR_CONFIG_PATH,
        ];
        let label = if known.contains(&path.as_str()) {
            path
        } else {
            "other".into()
        };
        self.ctx
            .metrics
            .api_request_duration
            .get_or_create(&RequestLabels {
                path: label,
                code: response.status().as_u16(),
            })
            .observe(started.elapsed().as_secs_f64());
        response
    }

    /// The answer of this replica itself.
    async fn answer(&self, request: Request<Incoming>, path: &str) -> Response<Body> {
        match (request.method(), path) {
            (&Method::GET, paths::HEALTH) => {
                http::json(StatusCode::OK, &json!({"status": "healthy"}))
            }
            (&Method::GET, paths::READY) => match self.ctx.not_ready() {
                None => http::json(
                    StatusCode::OK,
                    &json!({
                        "status": "ready",
                        "leader": self.ctx.is_leader(),
                        "storage": self.ctx.storage.report(),
                    }),
                ),
                Some(reason) => http::json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"status": "not ready", "reason": reason}),
                ),
            },
            (&Method::POST, wire::REPORTS_PATH) => self.reports(request).await,
            (&Method::GET, wire::ENFORCEMENT_PATH) => self.enforcement(request).await,
            (&Method::GET, wire::SIDECAR_CONFIG_PATH) => self.sidecar_config(request).await,
            (
                _,
                paths::HEALTH | paths::READY | wire::ENFORCEMENT_PATH | wire::SIDECAR_CONFIG_PATH,
            ) => http::error(StatusCode::METHOD_NOT_ALLOWED, "GET only"),
            (_, wire::REPORTS_PATH) => http::error(StatusCode::METHOD_NOT_ALLOWED, "POST only"),
            _ => http::error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
        }
    }

    /// The engine, when this replica leads.
    fn engine(&self) -> Result<Arc<Engine>, Refusal> {
        match self.engine.get() {
            Some(engine) if self.ctx.is_leader() => Ok(engine.clone()),
            _ => Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_leader",
                "this replica does not lead; retry",
            )),
        }
    }

    fn refuse(&self, refusal: Refusal) -> Response<Body> {
        self.ctx
            .metrics
            .reports_refused
            .get_or_create(&ReasonLabels {
                reason: refusal.reason.into(),
            })
            .inc();
        let mut response = http::error(refusal.status, &refusal.message);
        if refusal.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert("retry-after", hyper::header::HeaderValue::from_static("1"));
        }
        if refusal.status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert("retry-after", hyper::header::HeaderValue::from_static("5"));
        }
        response
    }

    async fn reports(&self, request: Request<Incoming>) -> Response<Body> {
        match self.try_reports(request).await {
            Ok(response) => response,
            Err(refusal) => self.refuse(refusal),
        }
    }

    /// Who sent the request, from its bearer token.
    async fn caller(&self, request: &Request<Incoming>) -> Result<Caller, Refusal> {
        let header = request
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok());
        self.auth.authenticate(&self.ctx, header).await
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
                self.ctx.probes.record(
                    agent,
                    NodeProbeStatus {
                        node: node.clone(),
                        tier: i32::from(*tier),
                        reason: fallback_reason.clone(),
                        programs_loaded: i32::try_from(*programs_loaded).unwrap_or(i32::MAX),
                        last_report_at: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                            k8s_openapi::jiff::Timestamp::now(),
                        )),
                    },
                );
                engine.ingest_pods(&batch.pods)
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
                    unknown_pods: 0,
                }
            }
        };
        self.ctx.metrics.reports_accepted.inc();
        Ok(http::json(
            StatusCode::ACCEPTED,
            &serde_json::to_value(ack).expect("ack serializes"),
        ))
    }

    async fn enforcement(&self, request: Request<Incoming>) -> Response<Body> {
        let result = async {
            let caller = self.caller(&request).await?;
            self.auth.may_report(&self.ctx, &caller).await?;
            let query = query(request.uri().query());
            let node = query.get("node").cloned().ok_or_else(|| {
                Refusal::new(StatusCode::BAD_REQUEST, "malformed", "?node= is required")
            })?;
            let since = query.get("since").cloned().unwrap_or_default();
            let engine = self.engine()?;
            let set = long_poll(
                &engine,
                &since,
                |e| Some(e.enforcement_for(&node)),
                |s| s.version.clone(),
            )
            .await;
            Ok(http::json(
                StatusCode::OK,
                &serde_json::to_value(set).expect("serializes"),
            ))
        }
        .await;
        result.unwrap_or_else(|refusal| self.refuse(refusal))
    }

    async fn sidecar_config(&self, request: Request<Incoming>) -> Response<Body> {
        let result = async {
            let caller = self.caller(&request).await?;
            let engine = self.engine()?;
            let uid = caller.pod_uid.clone().ok_or_else(|| {
                Refusal::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "a pod-bound ServiceAccount token is required",
                )
            })?;
            let (identity, pod) = engine.identity_of_pod(&uid).ok_or_else(|| {
                Refusal::new(
                    StatusCode::NOT_FOUND,
                    "unknown_pod",
                    "the calling pod has no AgentIdentity",
                )
            })?;
            let k = crate::engine::key(
                &pod.namespace,
                &kube::ResourceExt::name_any(identity.as_ref()),
            );
            let since = query(request.uri().query())
                .get("since")
                .cloned()
                .unwrap_or_default();
            let config = long_poll(
                &engine,
                &since,
                |e| e.sidecar_config(&k),
                |c| c.version.clone(),
            )
            .await;
            match config {
                Some(config) => Ok(http::json(
                    StatusCode::OK,
                    &serde_json::to_value(config).expect("serializes"),
                )),
                None => Err(Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not_ready",
                    "the identity has no score yet; retry",
                )),
            }
        }
        .await;
        result.unwrap_or_else(|refusal| self.refuse(refusal))
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
/// (the engine ticks every second) for up to [`LONG_POLL`].
async fn long_poll<T>(
    engine: &Engine,
    since: &str,
    view: impl Fn(&Engine) -> Option<T>,
    version: impl Fn(&T) -> String,
) -> Option<T> {
    let deadline = tokio::time::Instant::now() + LONG_POLL;
    loop {
        let notified = engine.changed.notified();
        let current = view(engine);
        let changed = current.as_ref().is_some_and(|v| version(v) != since);
        if changed || since.is_empty() || tokio::time::Instant::now() >= deadline {
            return current;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return view(engine);
        }
    }
}

fn query(query: Option<&str>) -> std::collections::HashMap<String, String> {
    query
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

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
