//! The identity's key: its own public key (`spec.publicKey`), or a key pair the operator makes
//! and keeps in a Secret it owns.

use std::collections::BTreeMap;
use std::sync::Arc;

use agentmesh_api::identity::AgentIdentity;
use agentmesh_api::names::{self, objects};
use agentmesh_identity::VerifyingKey;
use agentmesh_identity::keys::{self, Did};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};

use crate::context::Context;
use crate::error::{Error, Result};

/// The identity's key in force.
pub(super) struct Key {
    pub did: Did,
    pub public_key: VerifyingKey,
    /// The Secret holding the private key, when the operator manages it.
    pub secret: Option<String>,
}

/// The key of `identity`: its own public key, or the one in its Secret, created when missing.
/// `Ok(Err(message))`: the identity's own key is not valid.
pub(super) async fn ensure(
    identity: &AgentIdentity,
    namespace: &str,
    ctx: &Context,
    secrets: &Store<Secret>,
) -> Result<Result<Key, String>> {
    if let Some(text) = &identity.spec.public_key {
        return Ok(match keys::public_key_from_text(text) {
            Ok(public_key) => Ok(Key {
                did: Did::from_public_key(&public_key),
                public_key,
                secret: None,
            }),
            Err(error) => Err(format!(
                "spec.publicKey is not an Ed25519 public key: {error}"
            )),
        });
    }
    let secret_name = objects::key_secret_name(&identity.name_any());
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    // The index of the operator's Secrets first; when it has none (a new identity, or a
    // Secret the index has not seen yet) create one, and read the API only if that conflicts:
    // one request for a new identity, not a read and then a create.
    if let Some(secret) = secrets.get(&ObjectRef::new(&secret_name).within(namespace)) {
        return Ok(key_in(&secret, secret_name));
    }
    let signing = keys::generate(&mut rand_core::OsRng);
    let public_key = signing.verifying_key();
    let pem = keys::private_key_to_pem(&signing).map_err(|e| Error::Key(e.to_string()))?;
    let owner = identity
        .controller_owner_ref(&())
        .ok_or(Error::Invalid("the AgentIdentity has no uid".into()))?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(secret_name.clone()),
            namespace: Some(namespace.to_owned()),
            owner_references: Some(vec![owner]),
            labels: Some(BTreeMap::from([
                (
                    names::labels::APP_MANAGED_BY.into(),
                    names::labels::MANAGED_BY_VALUE.into(),
                ),
                (names::labels::IDENTITY.into(), identity.name_any()),
            ])),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([
            (
                objects::PRIVATE_KEY_KEY.into(),
                ByteString(pem.into_bytes()),
            ),
            (
                objects::PUBLIC_KEY_KEY.into(),
                ByteString(keys::public_key_to_text(&public_key).into_bytes()),
            ),
        ])),
        ..Default::default()
    };
    // Create, never overwrite: a key, once issued, stays the identity's key.
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            let did = Did::from_public_key(&public_key);
            ctx.events
                .publish(
                    &identity.object_ref(&()),
                    EventType::Normal,
                    "KeyCreated",
                    "CreateKey",
                    format!("created Secret {secret_name} for {did}"),
                )
                .await;
            Ok(Ok(Key {
                did,
                public_key,
                secret: Some(secret_name),
            }))
        }
        // It exists (made by an earlier reconcile the index has not caught up with): its key.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            match find(secrets, &api, namespace, &secret_name).await? {
                Some(existing) => Ok(key_in(&existing, secret_name)),
                None => Err(Error::Invalid(format!(
                    "Secret {secret_name} was deleted while being created; retrying"
                ))),
            }
        }
        Err(error) => Err(error.into()),
    }
}

/// The key held by the key Secret `secret_name`, or why it holds none.
fn key_in(secret: &Secret, secret_name: String) -> Result<Key, String> {
    match keys::private_key_from_pem(&private_key_pem(secret)) {
        Ok(signing) => {
            let public_key = signing.verifying_key();
            Ok(Key {
                did: Did::from_public_key(&public_key),
                public_key,
                secret: Some(secret_name),
            })
        }
        Err(error) => Err(format!(
            "Secret {secret_name} key {} is not a PKCS#8 Ed25519 key: {error}",
            objects::PRIVATE_KEY_KEY
        )),
    }
}

/// The key Secret `name`: from the index of the operator's Secrets, else (just made, and the
/// index has not seen it yet) from the API.
pub(super) async fn find(
    secrets: &Store<Secret>,
    api: &Api<Secret>,
    namespace: &str,
    name: &str,
) -> Result<Option<Arc<Secret>>> {
    if let Some(secret) = secrets.get(&ObjectRef::new(name).within(namespace)) {
        return Ok(Some(secret));
    }
    Ok(api.get_opt(name).await?.map(Arc::new))
}

/// The PEM under `private-key` in a key Secret (empty when absent, which then fails to parse).
pub(super) fn private_key_pem(secret: &Secret) -> String {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(objects::PRIVATE_KEY_KEY))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .unwrap_or_default()
}
