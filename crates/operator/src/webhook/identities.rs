//! Where the webhook finds a pod's AgentIdentity: the shared index, else the API; missing
//! ones created when `auto_create_identities` is on.
//!
//! Creating is the one thing an AdmissionReview makes the operator do, and the review's body
//! is whatever its sender wrote (anyone who reaches the port can post one). So an identity is
//! created only in a namespace that really is labelled `agentmesh-inject: enabled` (read from
//! the API, not from the review), and at most [`CREATIONS_PER_SECOND`] per second (burst
//! [`CREATIONS_BURST`]) per replica; beyond that the pod is refused with 429, which the
//! ReplicaSet controller (or kubectl's user) retries.

use super::inject::Key;
use crate::context::Context;
use agentmesh_api::identity::{AgentIdentity, AgentIdentitySpec};
use agentmesh_api::names::{FIELD_MANAGER, labels};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use std::collections::HashMap;

use governor::DefaultDirectRateLimiter;

/// Identities created per second at most, per replica, once the burst is spent.
pub const CREATIONS_PER_SECOND: u32 = 5;
/// Identities created at once at most, per replica.
pub const CREATIONS_BURST: u32 = 20;

/// Where AgentIdentities are looked up, and whether missing ones are created.
pub struct Identities {
    /// Every AgentIdentity of the watched namespaces, kept by a reflector.
    store: Option<Store<AgentIdentity>>,
    /// For what the store does not (yet) hold, and for creating.
    client: Option<kube::Client>,
    /// Fixed answers, for tests and benchmarks: (namespace, name) → key source and the
    /// ServiceAccount the identity admits.
    fixed: HashMap<(String, String), (Key, String)>,
    auto_create: bool,
    /// The one namespace this operator serves, when it serves one (`MESHLOGIC_WATCH_NAMESPACE`).
    watch_namespace: Option<String>,
    creations: DefaultDirectRateLimiter,
}

fn creation_limiter() -> DefaultDirectRateLimiter {
    super::rate_limiter(CREATIONS_PER_SECOND, CREATIONS_BURST)
}

/// Whether a namespace's labels turn injection on.
fn injection_enabled(labels: Option<&std::collections::BTreeMap<String, String>>) -> bool {
    labels
        .and_then(|l| l.get(labels::INJECT_NAMESPACE))
        .is_some_and(|v| v == labels::INJECT_ENABLED)
}

/// What became of a pod's identity.
#[derive(Debug, PartialEq, Eq)]
pub enum Resolved {
    /// It exists: where its key comes from, and the ServiceAccount its pods must run as.
    Found { key: Key, service_account: String },
    /// Created just now (or would have been, on a dry run).
    Created,
    /// Missing and not created (auto-creation off): the pod waits for its key Secret.
    Missing,
    /// Missing, and the namespace is not labelled for injection: a review the API server
    /// would not have sent. Nothing is created.
    NamespaceNotEnabled,
    /// Missing, and more identities were created lately than the bound allows.
    RateLimited,
}

fn found(identity: &AgentIdentity) -> Resolved {
    Resolved::Found {
        key: if identity.spec.public_key.is_some() {
            Key::UserSupplied
        } else {
            Key::Managed
        },
        service_account: identity.service_account().to_owned(),
    }
}

impl Identities {
    /// Fixed identities only, no API: for tests and benchmarks.
    pub fn fixed(fixed: HashMap<(String, String), (Key, String)>, auto_create: bool) -> Self {
        Self {
            store: None,
            client: None,
            fixed,
            auto_create,
            watch_namespace: None,
            creations: creation_limiter(),
        }
    }

    /// Identities from the shared index ([`crate::index`]), and the API for what it does not
    /// hold yet.
    pub fn watched(ctx: &Context, store: Store<AgentIdentity>) -> Self {
        Self {
            store: Some(store),
            client: Some(ctx.client.clone()),
            fixed: HashMap::new(),
            auto_create: ctx.config.args.auto_create_identities,
            watch_namespace: ctx.config.args.watch_namespace.clone(),
            creations: creation_limiter(),
        }
    }

    /// The identity `name` of `namespace`, created (when auto-creation is on) for pods of the
    /// ServiceAccount `service_account` when missing.
    pub async fn resolve(
        &self,
        namespace: &str,
        name: &str,
        service_account: &str,
        dry_run: bool,
    ) -> Result<Resolved, kube::Error> {
        if let Some((key, service_account)) =
            self.fixed.get(&(namespace.to_owned(), name.to_owned()))
        {
            return Ok(Resolved::Found {
                key: key.clone(),
                service_account: service_account.clone(),
            });
        }
        if let Some(identity) = self
            .store
            .as_ref()
            .and_then(|store| store.get(&ObjectRef::new(name).within(namespace)))
        {
            return Ok(found(&identity));
        }
        let Some(client) = &self.client else {
            return Ok(if !self.auto_create {
                Resolved::Missing
            } else if self.creations.check().is_err() {
                Resolved::RateLimited
            } else {
                Resolved::Created
            });
        };
        let api: Api<AgentIdentity> = Api::namespaced(client.clone(), namespace);
        if let Some(identity) = api.get_opt(name).await? {
            return Ok(found(&identity));
        }
        if !self.auto_create {
            return Ok(Resolved::Missing);
        }
        // The review says which namespace; the API says whether it asked for injection (and
        // an operator serving one namespace creates nothing elsewhere).
        let served = self
            .watch_namespace
            .as_deref()
            .is_none_or(|watched| watched == namespace);
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        let labelled = served
            && namespaces
                .get_opt(namespace)
                .await?
                .is_some_and(|n| injection_enabled(n.metadata.labels.as_ref()));
        if !labelled {
            return Ok(Resolved::NamespaceNotEnabled);
        }
        if dry_run {
            return Ok(Resolved::Created);
        }
        if self.creations.check().is_err() {
            return Ok(Resolved::RateLimited);
        }
        let identity = AgentIdentity {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                labels: Some(
                    [
                        (labels::APP_MANAGED_BY.to_owned(), FIELD_MANAGER.to_owned()),
                        (
                            labels::APP_PART_OF.to_owned(),
                            labels::PART_OF_VALUE.to_owned(),
                        ),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            // Bound to the account of the pod that asked for it: the first claimant of a new
            // name; a pod of another account can be this identity only if the owner says so.
            spec: AgentIdentitySpec {
                service_account_name: (service_account != name).then(|| service_account.to_owned()),
                ..Default::default()
            },
            status: None,
        };
        match api.create(&PostParams::default(), &identity).await {
            Ok(_) => Ok(Resolved::Created),
            // Another replica, or another pod of the same identity, was first.
            Err(kube::Error::Api(status)) if status.code == 409 => match api.get_opt(name).await? {
                Some(identity) => Ok(found(&identity)),
                None => Ok(Resolved::Created),
            },
            Err(error) => Err(error),
        }
    }
}
