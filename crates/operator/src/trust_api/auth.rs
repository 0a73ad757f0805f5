//! Who is calling: a ServiceAccount token for the trust API's audience
//! ([`TRUST_API_AUDIENCE`]) checked with a TokenReview, then, for probes, a
//! SubjectAccessReview for `create` on `reports.agentmesh.io`.
//!
//! Both reviews' outcomes are cached for [`review_ttl`]: `AGENTMESH_CACHE_TTL`, at most
//! [`MAX_REVIEW_TTL`] (a revoked token or a removed RoleBinding must not keep working for the
//! seed's five minutes), and not at all with `AGENTMESH_CACHE_ENABLED=false` (every request
//! reviewed: two API requests per report).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use agentmesh_api::names::objects::TRUST_API_AUDIENCE;
use hyper::StatusCode;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};

use crate::context::Context;

/// The longest a review's outcome is believed.
pub const MAX_REVIEW_TTL: Duration = Duration::from_secs(60);
const CACHE_MAX: usize = 4096;

/// How long a review's outcome is believed under these settings.
pub fn review_ttl(settings: &agentmesh_api::settings::Settings) -> Duration {
    if settings.cache_enabled {
        Duration::from_secs(settings.cache_ttl_seconds).min(MAX_REVIEW_TTL)
    } else {
        Duration::ZERO
    }
}
/// `user.extra` key of the pod a bound ServiceAccount token was issued for.
const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";
/// `user.extra` key of that pod's name.
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
/// What an unauthenticated caller is told: nothing of why (the API server's reasons stay in
/// the operator's log).
const NOT_ACCEPTED: &str = "the bearer token was not accepted";
/// `user.extra` key of the node that pod runs on (Kubernetes ≥ 1.30, `ServiceAccountTokenPodNodeInfo`).
const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// An authenticated caller.
#[derive(Clone, Debug)]
pub struct Caller {
    pub username: String,
    pub groups: Vec<String>,
    /// The pod the token is bound to, for a pod's projected token.
    pub pod_uid: Option<String>,
    /// The node of that pod, written into the token by the API server when it issued it.
    pub node: Option<String>,
    extra: BTreeMap<String, Vec<String>>,
}

impl Caller {
    /// The name of the pod the token is bound to, for a pod's projected token.
    pub fn pod_name(&self) -> Option<&str> {
        self.extra
            .get(POD_NAME_EXTRA)
            .and_then(|v| v.first())
            .map(String::as_str)
    }
}

/// Why a request is refused: the HTTP status and the metric reason.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub reason: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            reason,
            message: message.into(),
        }
    }
}

type CachedReview = (Result<Caller, String>, Instant);

#[derive(Default)]
pub struct Authenticator {
    /// sha256(token) → the review's outcome and when it was made.
    cache: Mutex<HashMap<[u8; 32], CachedReview>>,
    allowed: Mutex<HashMap<String, (bool, Instant)>>,
    /// [`review_ttl`]; zero: nothing is cached.
    ttl: Duration,
}

impl Authenticator {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            ..Self::default()
        }
    }

    /// The caller of a request with this `Authorization` header.
    pub async fn authenticate(
        &self,
        ctx: &Context,
        header: Option<&str>,
    ) -> Result<Caller, Refusal> {
        let token = header
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Refusal::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "a ServiceAccount bearer token is required",
                )
            })?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some((result, at)) = self.cache.lock().expect("auth cache").get(&digest)
            && at.elapsed() < self.ttl
        {
            return result.clone().map_err(|_| {
                Refusal::new(StatusCode::UNAUTHORIZED, "unauthenticated", NOT_ACCEPTED)
            });
        }
        let result = review_token(ctx, token).await?;
        if !self.ttl.is_zero() {
            let mut cache = self.cache.lock().expect("auth cache");
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
            cache.insert(digest, (result.clone(), Instant::now()));
        }
        result.map_err(|detail| {
            tracing::debug!(%detail, "trust API: a token was refused");
            Refusal::new(StatusCode::UNAUTHORIZED, "unauthenticated", NOT_ACCEPTED)
        })
    }

    /// Whether `caller` may post reports (`create` on `reports.agentmesh.io`).
    pub async fn may_report(&self, ctx: &Context, caller: &Caller) -> Result<(), Refusal> {
        if let Some((allowed, at)) = self
            .allowed
            .lock()
            .expect("authz cache")
            .get(&caller.username)
            && at.elapsed() < self.ttl
        {
            return if *allowed {
                Ok(())
            } else {
                Err(forbidden(caller))
            };
        }
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(caller.username.clone()),
                groups: Some(caller.groups.clone()),
                extra: Some(caller.extra.clone()),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(agentmesh_api::names::GROUP.into()),
                    resource: Some("reports".into()),
                    verb: Some("create".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(ctx.client.clone());
        let allowed = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| {
                Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "authz_unavailable",
                    format!("SubjectAccessReview failed: {e}"),
                )
            })?
            .status
            .is_some_and(|s| s.allowed);
        if !self.ttl.is_zero() {
            let mut cache = self.allowed.lock().expect("authz cache");
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
            cache.insert(caller.username.clone(), (allowed, Instant::now()));
        }
        if allowed {
            Ok(())
        } else {
            Err(forbidden(caller))
        }
    }
}

fn forbidden(caller: &Caller) -> Refusal {
    Refusal::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!("{} may not create reports.agentmesh.io", caller.username),
    )
}

/// Whether the API server found the token meant for the trust API: a TokenReview that names
/// audiences is answered with those the token is good for (none: the token is not
/// authenticated; an authenticator that ignores audiences answers none, and is not believed).
fn for_the_trust_api(audiences: Option<&[String]>) -> Result<(), String> {
    if audiences.is_some_and(|a| a.iter().any(|a| a == TRUST_API_AUDIENCE)) {
        Ok(())
    } else {
        Err(format!(
            "the token is not for the audience {TRUST_API_AUDIENCE}"
        ))
    }
}

/// `Ok(Err(message))`: the API server says the token is not valid.
async fn review_token(ctx: &Context, token: &str) -> Result<Result<Caller, String>, Refusal> {
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_owned()),
            audiences: Some(vec![TRUST_API_AUDIENCE.to_owned()]),
        },
        ..Default::default()
    };
    let api: Api<TokenReview> = Api::all(ctx.client.clone());
    let status = api
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| {
            // The caller is not authenticated yet: the API server's error is for the log.
            tracing::warn!(error = %e, "trust API: TokenReview failed");
            Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "authn_unavailable",
                "authentication is unavailable; retry",
            )
        })?
        .status
        .unwrap_or_default();
    if status.authenticated != Some(true) {
        return Ok(Err(status
            .error
            .unwrap_or_else(|| "the token is not valid".into())));
    }
    if let Err(message) = for_the_trust_api(status.audiences.as_deref()) {
        return Ok(Err(message));
    }
    let user = status.user.unwrap_or_default();
    let extra = user.extra.unwrap_or_default();
    Ok(Ok(Caller {
        username: user.username.unwrap_or_default(),
        groups: user.groups.unwrap_or_default(),
        pod_uid: extra.get(POD_UID_EXTRA).and_then(|v| v.first().cloned()),
        node: extra.get(NODE_NAME_EXTRA).and_then(|v| v.first().cloned()),
        extra,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reviews_are_cached_for_the_cache_ttl_at_most_a_minute_and_not_when_disabled() {
        let settings = |vars: &[(&str, &str)]| {
            agentmesh_api::settings::Settings::from_lookup(|name| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            })
            .unwrap()
        };
        // The seed's 300 s: capped.
        assert_eq!(
            review_ttl(&settings(&[("AGENTMESH_CACHE_TTL", "300")])),
            MAX_REVIEW_TTL
        );
        assert_eq!(
            review_ttl(&settings(&[("AGENTMESH_CACHE_TTL", "5")])),
            Duration::from_secs(5)
        );
        assert_eq!(
            review_ttl(&settings(&[
                ("AGENTMESH_CACHE_ENABLED", "false"),
                ("AGENTMESH_CACHE_TTL", "300")
            ])),
            Duration::ZERO
        );
    }

    #[test]
    fn only_a_token_for_the_trust_api_is_believed() {
        let ours = vec![TRUST_API_AUDIENCE.to_owned()];
        assert!(for_the_trust_api(Some(&ours)).is_ok());
        let both = vec![
            "https://kubernetes.default.svc".to_owned(),
            TRUST_API_AUDIENCE.to_owned(),
        ];
        assert!(for_the_trust_api(Some(&both)).is_ok());
        // The API server's audience (any pod's mounted token), none at all (an authenticator
        // that ignores audiences), a spelling variant.
        for audiences in [
            Some(vec![
                "https://kubernetes.default.svc.cluster.local".to_owned(),
            ]),
            Some(vec![]),
            None,
            Some(vec!["agentmesh.io/trust-api/".to_owned()]),
            Some(vec!["AGENTMESH.IO/TRUST-API".to_owned()]),
        ] {
            let error = for_the_trust_api(audiences.as_deref()).unwrap_err();
            assert!(error.contains(TRUST_API_AUDIENCE), "{error}");
        }
    }
}
