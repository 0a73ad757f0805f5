//! What probes and sidecars read: a node's enforcement set and an identity's sidecar
//! configuration (long-polled), and a sidecar's key.

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use std::sync::Arc;

use agentmesh_api::identity::AgentIdentity;

use super::auth::Refusal;
use crate::engine::Engine;
use crate::index::PodInfo;
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
            let (engine, identity, pod) = self.calling_pod(&request).await?;
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

impl Server {
    /// The pod of the request's token (a projected, pod-bound one of the pod's own
    /// ServiceAccount) and the AgentIdentity the operator binds it to, from the leader's
    /// engine.
    async fn calling_pod(
        &self,
        request: &Request<Incoming>,
    ) -> Result<(Arc<Engine>, Arc<AgentIdentity>, PodInfo), Refusal> {
        let caller = self.caller(request).await?;
        let engine = self.engine()?;
        let uid = caller.pod_uid.clone().ok_or_else(not_pod_bound)?;
        let (identity, pod) = engine.identity_of_pod(&uid).ok_or_else(unknown_pod)?;
        own_account(&caller, &pod)?;
        Ok((engine, identity, pod))
    }

    /// The pod of the request's token, read from the API (so that any replica answers, also
    /// while the leader changes hands), and the AgentIdentity it is bound to, from this
    /// replica's index: the same rule as [`Self::calling_pod`].
    async fn bound_pod(
        &self,
        request: &Request<Incoming>,
    ) -> Result<(Arc<AgentIdentity>, PodInfo), Refusal> {
        use k8s_openapi::api::core::v1::Pod;
        let caller = self.caller(request).await?;
        let uid = caller.pod_uid.clone().ok_or_else(not_pod_bound)?;
        let name = caller.pod_name().ok_or_else(not_pod_bound)?;
        let namespace = caller
            .username
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
            .map(|(namespace, _)| namespace)
            .ok_or_else(not_pod_bound)?;
        let pods: kube::Api<Pod> = kube::Api::namespaced(self.ctx.client.clone(), namespace);
        let pod = pods
            .get_opt(name)
            .await
            .map_err(|error| {
                tracing::warn!(%error, namespace, name, "cannot read a calling pod");
                Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "retry")
            })?
            .as_ref()
            .and_then(crate::index::pod_info)
            // The pod of that name now, not one deleted and made again.
            .filter(|(current, _)| *current == uid)
            .map(|(_, pod)| pod)
            .ok_or_else(unknown_pod)?;
        own_account(&caller, &pod)?;
        let identity = pod
            .bound_identity(&crate::index::Indexes::in_namespace(
                &self.identities,
                &pod.namespace,
            ))
            .ok_or_else(unknown_pod)?;
        Ok((identity, pod))
    }

    /// `GET /v1/sidecar/key`: the private key the operator made for the identity the calling
    /// pod is bound to (by the same rule as everything else: the pod's ServiceAccount and
    /// selector, [`crate::index::PodInfo::is_of`]). The caller is the pod of its projected,
    /// pod-bound token, so a pod can fetch its own identity's key and no other.
    pub(super) async fn sidecar_key(&self, request: Request<Incoming>) -> Response<Body> {
        use agentmesh_api::names::objects;
        use k8s_openapi::api::core::v1::Secret;
        use kube::ResourceExt;
        let result = async {
            let (identity, pod) = self.bound_pod(&request).await?;
            let reference = format!("{}/{}", pod.namespace, identity.name_any());
            if identity.spec.public_key.is_some() {
                return Err(Refusal::new(
                    StatusCode::NOT_FOUND,
                    "own_key",
                    format!(
                        "AgentIdentity {reference} brings its own key (spec.publicKey): the operator holds no private key for it; give the sidecar AGENTMESH_AGENT_PRIVATE_KEY"
                    ),
                ));
            }
            let name = objects::key_secret_name(&pod.namespace, &identity.name_any());
            let secrets: kube::Api<Secret> =
                kube::Api::namespaced(self.ctx.client.clone(), &self.ctx.config.args.namespace);
            let secret = secrets.get_opt(&name).await.map_err(|error| {
                tracing::warn!(%error, secret = name, "cannot read a key Secret");
                Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not_ready",
                    "the key cannot be read now; retry",
                )
            })?;
            let key = secret
                .as_ref()
                .and_then(|secret| {
                    crate::controllers::agent_identity::key::private_key_of(secret, &identity)
                })
                .ok_or_else(|| {
                    Refusal::new(
                        StatusCode::NOT_FOUND,
                        "no_key",
                        format!("AgentIdentity {reference} has no key yet; retry"),
                    )
                })?;
            let answer = agentmesh_api::wire::SidecarKey {
                identity: reference,
                did: agentmesh_identity::keys::Did::from_public_key(&key.verifying_key())
                    .to_string(),
                private_key: agentmesh_identity::keys::private_key_to_pem(&key).map_err(
                    |_| Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "retry"),
                )?,
            };
            let mut response = http::json(
                StatusCode::OK,
                &serde_json::to_value(&answer).expect("serializes"),
            );
            response.headers_mut().insert(
                hyper::header::CACHE_CONTROL,
                hyper::header::HeaderValue::from_static("no-store"),
            );
            Ok(response)
        }
        .await;
        result.unwrap_or_else(|refusal| self.refuse(refusal))
    }
}

/// The caller's token is bound to no pod.
fn not_pod_bound() -> Refusal {
    Refusal::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        "a pod-bound ServiceAccount token is required",
    )
}

/// The caller's pod is not known, or bound to no AgentIdentity.
fn unknown_pod() -> Refusal {
    Refusal::new(
        StatusCode::NOT_FOUND,
        "unknown_pod",
        "the calling pod has no AgentIdentity (yet); retry",
    )
}

/// The token's account must be the pod's (the API server issued it for that pod).
fn own_account(caller: &super::auth::Caller, pod: &PodInfo) -> Result<(), Refusal> {
    let account = format!(
        "system:serviceaccount:{}:{}",
        pod.namespace, pod.service_account
    );
    if caller.username == account {
        Ok(())
    } else {
        Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the token is not of the pod's ServiceAccount",
        ))
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
