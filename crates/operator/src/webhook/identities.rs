//! Where the webhook finds a pod's AgentIdentity: the shared index, else the API; missing
//! ones created when `auto_create_identities` is on.

use super::inject::Key;
use crate::context::Context;
use agentmesh_api::identity::{AgentIdentity, AgentIdentitySpec};
use agentmesh_api::names::{FIELD_MANAGER, labels};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use std::collections::HashMap;

/// Where AgentIdentities are looked up, and whether missing ones are created.
pub struct Identities {
    /// Every AgentIdentity of the watched namespaces, kept by a reflector.
    store: Option<Store<AgentIdentity>>,
    /// For what the store does not (yet) hold, and for creating.
    client: Option<kube::Client>,
    /// Fixed answers, for tests and benchmarks: (namespace, name) → key source.
    fixed: HashMap<(String, String), Key>,
    auto_create: bool,
}

/// What became of a pod's identity.
#[derive(Debug, PartialEq, Eq)]
pub enum Resolved {
    Found(Key),
    /// Created just now (or would have been, on a dry run).
    Created,
    /// Missing and not created (auto-creation off): the pod waits for its key Secret.
    Missing,
}

fn key_of(identity: &AgentIdentity) -> Key {
    if identity.spec.public_key.is_some() {
        Key::UserSupplied
    } else {
        Key::Managed
    }
}

impl Identities {
    /// Fixed identities only, no API: for tests and benchmarks.
    pub fn fixed(fixed: HashMap<(String, String), Key>, auto_create: bool) -> Self {
        Self {
            store: None,
            client: None,
            fixed,
            auto_create,
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
        }
    }

    pub async fn resolve(
        &self,
        namespace: &str,
        name: &str,
        dry_run: bool,
    ) -> Result<Resolved, kube::Error> {
        if let Some(key) = self.fixed.get(&(namespace.to_owned(), name.to_owned())) {
            return Ok(Resolved::Found(key.clone()));
        }
        if let Some(found) = self
            .store
            .as_ref()
            .and_then(|store| store.get(&ObjectRef::new(name).within(namespace)))
        {
            return Ok(Resolved::Found(key_of(&found)));
        }
        let Some(client) = &self.client else {
            return Ok(if self.auto_create {
                Resolved::Created
            } else {
                Resolved::Missing
            });
        };
        let api: Api<AgentIdentity> = Api::namespaced(client.clone(), namespace);
        if let Some(found) = api.get_opt(name).await? {
            return Ok(Resolved::Found(key_of(&found)));
        }
        if !self.auto_create {
            return Ok(Resolved::Missing);
        }
        if dry_run {
            return Ok(Resolved::Created);
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
            spec: AgentIdentitySpec::default(),
            status: None,
        };
        match api.create(&PostParams::default(), &identity).await {
            Ok(_) => Ok(Resolved::Created),
            // Another replica, or another pod of the same identity, was first.
            Err(kube::Error::Api(status)) if status.code == 409 => match api.get_opt(name).await? {
                Some(found) => Ok(Resolved::Found(key_of(&found))),
                None => Ok(Resolved::Created),
            },
            Err(error) => Err(error),
        }
    }
}
