//! The trust API on port 8080: `/health`, `/ready`, and the endpoints of probes and sidecars
//! (`agentmesh_api::wire`). Only the leader ingests and answers the long-polls; the others
//! pass those calls on to it (`forward`), and answer 503 with `Retry-After` when they cannot
//! (no leader yet, or it does not answer), so a client retries and lands on the leader.
//!
//! One port, two transports ([`agentmesh_runtime::TlsOrPlain`]): TLS with the operator's
//! serving certificate (the webhook's, signed by its CA, valid for the Service's names and the
//! host of `MESHLOGIC_TRUST_API_URL`), and plain HTTP for `/health` and `/ready` only — the
//! kubelet's probes and the seed's `curl http://localhost:8080/health`. Everything else, every
//! call that carries a token or an enforcement set, is refused over plain HTTP (403).

mod auth;
mod forward;
mod reports;
mod views;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use agentmesh_api::names::paths;
use agentmesh_api::wire::{self};
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
    /// Every AgentIdentity, on every replica: which identity a pod is bound to.
    identities: kube::runtime::reflector::Store<agentmesh_api::identity::AgentIdentity>,
    auth: Authenticator,
    forwarder: Forwarder,
}

/// Serves the trust API on `listener` (TLS with `acceptor`, or plain for health) until SIGTERM.
pub async fn serve(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    ctx: Arc<Context>,
    engine: Arc<OnceLock<Arc<Engine>>>,
    identities: kube::runtime::reflector::Store<agentmesh_api::identity::AgentIdentity>,
) {
    let auth = Authenticator::new(auth::review_ttl(&ctx.config.settings));
    let server = Arc::new(Server {
        ctx,
        engine,
        identities,
        auth,
        forwarder: Forwarder::default(),
    });
    agentmesh_runtime::serve(
        "trust-api",
        listener,
        agentmesh_runtime::TlsOrPlain(acceptor),
        agentmesh_runtime::Limits::default(),
        move |request, _peer| server.clone().route(request),
        crate::runtime::shutdown_signal(),
    )
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
        let over_tls = request
            .extensions()
            .get::<agentmesh_runtime::OverTls>()
            .is_some_and(|tls| tls.0);
        let response = if !over_tls && path != paths::HEALTH && path != paths::READY {
            self.refuse(Refusal::new(
                StatusCode::FORBIDDEN,
                "plain_http",
                "the trust API answers over TLS only (https://); plain HTTP serves /health and /ready",
            ))
        } else if leader_only && !self.ctx.is_leader() && Forwarder::may_forward(&request) {
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
            wire::SIDECAR_KEY_PATH,
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
            (&Method::GET, wire::SIDECAR_KEY_PATH) => self.sidecar_key(request).await,
            (
                _,
                paths::HEALTH
                | paths::READY
                | wire::ENFORCEMENT_PATH
                | wire::SIDECAR_CONFIG_PATH
                | wire::SIDECAR_KEY_PATH,
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

    /// Counts `count` refusals for `reason` (`meshlogic_operator_reports_refused_total`).
    fn count_refused(&self, reason: &str, count: u64) {
        self.ctx
            .metrics
            .reports_refused
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc_by(count);
    }

    fn refuse(&self, refusal: Refusal) -> Response<Body> {
        self.count_refused(refusal.reason, 1);
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

    /// Who sent the request, from its bearer token.
    async fn caller(&self, request: &Request<Incoming>) -> Result<Caller, Refusal> {
        let header = request
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok());
        self.auth.authenticate(&self.ctx, header).await
    }
}

/// The request's query pairs, percent-decoded as the probe and the sidecar encode them.
fn query(query: Option<&str>) -> std::collections::HashMap<String, String> {
    wire::parse_query(query.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    /// A `since` the probe had to percent-encode is the version it was, not its encoding:
    /// otherwise the long-poll never sees it unchanged and answers at once, every time.
    #[test]
    fn the_query_is_read_as_clients_encode_it() {
        let sent = agentmesh_api::wire::encode_query(&[("node", "node-1"), ("since", "v 1/2")]);
        let query = super::query(Some(&sent));
        assert_eq!(query["node"], "node-1");
        assert_eq!(query["since"], "v 1/2");
        assert!(super::query(None).is_empty());
    }
}
