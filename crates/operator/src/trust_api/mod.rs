//! The trust API on port 8080: `/health`, `/ready`, and the endpoints of probes and sidecars
//! (`agentmesh_api::wire`). Only the leader ingests and answers the long-polls; the others
//! answer 503 with `Retry-After`, so a client retries and lands on the leader.

mod auth;

use std::sync::Arc;
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
use crate::http::{self, Body};
use crate::metrics::{ReasonLabels, RequestLabels};
use auth::{Authenticator, Caller, Refusal};

/// Largest report body accepted.
const MAX_BODY: usize = 4 << 20;
/// Longest a long-poll waits for a change before answering with the unchanged view.
const LONG_POLL: Duration = Duration::from_secs(30);

struct Server {
    ctx: Arc<Context>,
    auth: Authenticator,
}

pub async fn serve(listener: TcpListener, ctx: Arc<Context>) {
    let server = Arc::new(Server {
        ctx,
        auth: Authenticator::default(),
    });
    http::serve(listener, move |request| server.clone().route(request)).await;
}

impl Server {
    async fn route(self: Arc<Self>, request: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let path = request.uri().path().to_owned();
        let response = match (request.method(), path.as_str()) {
            (&Method::GET, paths::HEALTH) => {
                http::json(StatusCode::OK, &json!({"status": "healthy"}))
            }
            (&Method::GET, paths::READY) => http::json(
                StatusCode::OK,
                &json!({"status": "ready", "leader": self.ctx.is_leader()}),
            ),
            (&Method::POST, wire::REPORTS_PATH) => self.reports(request).await,
            (&Method::GET, wire::ENFORCEMENT_PATH) => self.enforcement(request).await,
            (&Method::GET, wire::SIDECAR_CONFIG_PATH) => self.sidecar_config(request).await,
            (
                _,
                paths::HEALTH | paths::READY | wire::ENFORCEMENT_PATH | wire::SIDECAR_CONFIG_PATH,
            ) => http::error(StatusCode::METHOD_NOT_ALLOWED, "GET only"),
            (_, wire::REPORTS_PATH) => http::error(StatusCode::METHOD_NOT_ALLOWED, "POST only"),
            _ => http::error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
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

    /// The engine, when this replica leads.
    fn engine(&self) -> Result<Arc<Engine>, Refusal> {
        match self.ctx.engine.get() {
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
            ReportSource::Sidecar { identity, .. } => {
                // A sidecar reports for the identity of the pod its token is bound to, only.
                let pod_identity = caller
                    .pod_uid
                    .as_deref()
                    .and_then(|uid| engine.identity_of_pod(uid))
                    .map(|(identity, pod)| {
                        crate::engine::key(
                            &pod.namespace,
                            &kube::ResourceExt::name_any(identity.as_ref()),
                        )
                    });
                if pod_identity.as_deref() != Some(identity.as_str()) {
                    return Err(Refusal::new(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        format!(
                            "{} is not a pod of AgentIdentity {identity}",
                            caller.username
                        ),
                    ));
                }
                engine.ingest_outcomes(identity, &batch.outcomes);
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
