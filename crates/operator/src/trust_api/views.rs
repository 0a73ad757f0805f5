//! What probes and sidecars long-poll: a node's enforcement set, an identity's sidecar
//! configuration.

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use super::auth::Refusal;
use crate::engine::Engine;
use crate::runtime::http::{self, Body};

use super::{LONG_POLL, Server, query};

impl Server {
    pub(super) async fn enforcement(&self, request: Request<Incoming>) -> Response<Body> {
        let result = async {
            let caller = self.caller(&request).await?;
            self.auth.may_report(&self.ctx, &caller).await?;
            let query = query(request.uri().query());
            let node = query.get("node").cloned().ok_or_else(|| {
                Refusal::new(StatusCode::BAD_REQUEST, "malformed", "?node= is required")
            })?;
            // A probe reads its own node's set only: which pods are quarantined elsewhere is
            // none of its business.
            super::reports::own_node(&caller, &node, "?node=")?;
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

    pub(super) async fn sidecar_config(&self, request: Request<Incoming>) -> Response<Body> {
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
