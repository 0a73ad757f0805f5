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

/// Why an identity has no key: the `KeyReady` condition's reason and message.
pub(super) type KeyRefusal = (&'static str, String);

/// The identity's key in force.
pub(super) struct Key {
    pub did: Did,
    pub public_key: VerifyingKey,
    /// The Secret holding the private key, when the operator manages it.
    pub secret: Option<String>,
}

/// The key of `identity`: its own public key, or the one in its Secret, created when missing.
/// `Ok(Err((reason, message)))`: the identity has no usable key (the condition's reason).
pub(super) async fn ensure(
    identity: &AgentIdentity,
    namespace: &str,
    ctx: &Context,
    secrets: &Store<Secret>,
) -> Result<Result<Key, KeyRefusal>> {
    if let Some(text) = &identity.spec.public_key {
        return Ok(match keys::public_key_from_text(text) {
            Ok(public_key) => Ok(Key {
                did: Did::from_public_key(&public_key),
                public_key,
                secret: None,
            }),
            Err(error) => Err((
                "InvalidKey",
                format!("spec.publicKey is not an Ed25519 public key: {error}"),
            )),
        });
    }
    // The operator's own namespace: it has no right to Secrets anywhere else.
    let home = ctx.config.args.namespace.as_str();
    let secret_name = objects::key_secret_name(namespace, &identity.name_any());
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), home);
    // The index of the operator's Secrets first; when it has none (a new identity, or a
    // Secret the index has not seen yet) create one, and read the API only if that conflicts:
    // one request for a new identity, not a read and then a create.
    if let Some(secret) = secrets.get(&ObjectRef::new(&secret_name).within(home)) {
        return Ok(key_in(&secret, identity, secret_name));
    }
    let signing = keys::generate(&mut rand_core::OsRng);
    let public_key = signing.verifying_key();
    let pem = keys::private_key_to_pem(&signing).map_err(|e| Error::Key(e.to_string()))?;
    let uid = identity
        .uid()
        .ok_or(Error::Invalid("the AgentIdentity has no uid".into()))?;
    // No owner reference (an owner must be in the same namespace): the annotations name the
    // identity, and the leader deletes the Secret once it is gone (`sweep_orphans`).
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(secret_name.clone()),
            namespace: Some(home.to_owned()),
            labels: Some(BTreeMap::from([
                (
                    names::labels::APP_MANAGED_BY.into(),
                    names::labels::MANAGED_BY_VALUE.into(),
                ),
                (
                    names::labels::APP_PART_OF.into(),
                    names::labels::PART_OF_VALUE.into(),
                ),
            ])),
            annotations: Some(BTreeMap::from([
                (
                    names::annotations::IDENTITY.into(),
                    format!("{namespace}/{}", identity.name_any()),
                ),
                (names::annotations::IDENTITY_UID.into(), uid),
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
            match find(secrets, &api, home, &secret_name).await? {
                Some(existing) => Ok(key_in(&existing, identity, secret_name)),
                None => Err(Error::Invalid(format!(
                    "Secret {secret_name} was deleted while being created; retrying"
                ))),
            }
        }
        Err(error) => Err(error.into()),
    }
}

/// Another identity with a better claim to `public_key`, as `namespace/name`. Claims rank, best
/// first: a key the operator made (no `spec.publicKey`: only a copy of it can collide), then a
/// key already granted (in the status), then the identity created first, then namespace and
/// name. Creation times have a resolution of one second, so two identities made the same second
/// are told apart by what the operator already granted, not by a name an attacker chooses: the
/// one granted first keeps the key and the other is refused, the same way on every reconcile.
pub(super) fn older_holder(
    identity: &AgentIdentity,
    public_key: &VerifyingKey,
    identities: &[Arc<AgentIdentity>],
) -> Option<String> {
    let text = keys::public_key_to_text(public_key);
    let granted = |i: &AgentIdentity| {
        i.status.as_ref().and_then(|s| s.public_key.as_deref()) == Some(text.as_str())
    };
    let rank = |i: &AgentIdentity| {
        (
            i.spec.public_key.is_some(),
            !granted(i),
            i.metadata.creation_timestamp.clone().map(|t| t.0),
            i.namespace().unwrap_or_default(),
            i.name_any(),
        )
    };
    let own = rank(identity);
    identities
        .iter()
        .filter(|other| other.metadata.uid != identity.metadata.uid)
        .filter(|other| other.spec.public_key.as_deref() == Some(text.as_str()) || granted(other))
        .filter(|other| rank(other) < own)
        .map(|other| {
            format!(
                "{}/{}",
                other.namespace().unwrap_or_default(),
                other.name_any()
            )
        })
        .min()
}

/// Whether `secret` is the one the operator made for `identity`: its annotations name this
/// very AgentIdentity (by UID, so not a namesake deleted and made again), and it carries the
/// operator's label.
pub(super) fn owned_by(secret: &Secret, identity: &AgentIdentity) -> bool {
    let Some(uid) = identity.metadata.uid.as_deref() else {
        return false;
    };
    let annotation = |key: &str| secret.annotations().get(key).map(String::as_str);
    let reference = format!(
        "{}/{}",
        identity.namespace().unwrap_or_default(),
        identity.name_any()
    );
    secret
        .labels()
        .get(names::labels::APP_MANAGED_BY)
        .map(String::as_str)
        == Some(names::labels::MANAGED_BY_VALUE)
        && annotation(names::annotations::IDENTITY_UID) == Some(uid)
        && annotation(names::annotations::IDENTITY) == Some(reference.as_str())
}

/// The identity (`namespace/name`) and its UID a key Secret was made for, from its
/// annotations.
pub fn made_for(secret: &Secret) -> Option<(&str, &str, &str)> {
    let annotations = secret.metadata.annotations.as_ref()?;
    let (namespace, name) = annotations
        .get(names::annotations::IDENTITY)?
        .split_once('/')?;
    let uid = annotations.get(names::annotations::IDENTITY_UID)?;
    Some((namespace, name, uid))
}

/// The key held by the key Secret `secret_name` of `identity`, or why it holds none. Only a
/// Secret the operator made for this identity is adopted: one made by anyone else (who then
/// knows its private key) would let its maker sign as the identity.
fn key_in(
    secret: &Secret,
    identity: &AgentIdentity,
    secret_name: String,
) -> Result<Key, KeyRefusal> {
    if !owned_by(secret, identity) {
        return Err((
            "SecretNotOwned",
            format!(
                "Secret {secret_name} exists but was not made by the operator for this AgentIdentity (its annotation {} is not this identity's UID): delete it to have a key made, or set spec.publicKey",
                names::annotations::IDENTITY_UID
            ),
        ));
    }
    match keys::private_key_from_pem(&private_key_pem(secret)) {
        Ok(signing) => {
            let public_key = signing.verifying_key();
            Ok(Key {
                did: Did::from_public_key(&public_key),
                public_key,
                secret: Some(secret_name),
            })
        }
        Err(error) => Err((
            "InvalidKey",
            format!(
                "Secret {secret_name} key {} is not a PKCS#8 Ed25519 key: {error}",
                objects::PRIVATE_KEY_KEY
            ),
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

/// The private key in `secret` when it is the one the operator made for `identity`: what the
/// trust API hands that identity's sidecars.
pub(crate) fn private_key_of(
    secret: &Secret,
    identity: &AgentIdentity,
) -> Option<agentmesh_identity::SigningKey> {
    owned_by(secret, identity)
        .then(|| keys::private_key_from_pem(&private_key_pem(secret)).ok())
        .flatten()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(uid: &str) -> AgentIdentity {
        let mut identity = AgentIdentity::new("agent", Default::default());
        identity.metadata.namespace = Some("ns".into());
        identity.metadata.uid = Some(uid.into());
        identity
    }

    /// A key Secret with the operator's label (when `labelled`) and these annotations.
    fn secret(labelled: bool, annotations: &[(&str, &str)]) -> Secret {
        let pem = keys::private_key_to_pem(&agentmesh_identity::SigningKey::from_bytes(&[7; 32]))
            .unwrap();
        Secret {
            metadata: ObjectMeta {
                name: Some(objects::key_secret_name("ns", "agent")),
                labels: labelled.then(|| {
                    BTreeMap::from([(
                        names::labels::APP_MANAGED_BY.to_owned(),
                        names::labels::MANAGED_BY_VALUE.to_owned(),
                    )])
                }),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(
                objects::PRIVATE_KEY_KEY.into(),
                ByteString(pem.into_bytes()),
            )])),
            ..Default::default()
        }
    }

    /// The attack: copy another identity's public key (from its status) into
    /// `spec.publicKey`, so that two identities share a DID and the registry hands one's score
    /// and capabilities to the other. The newer one is refused; the older keeps its key.
    #[test]
    fn a_key_already_held_goes_to_the_older_identity_only() {
        let key = agentmesh_identity::SigningKey::from_bytes(&[9; 32]).verifying_key();
        let text = keys::public_key_to_text(&key);
        let at = |secs: i64| {
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(secs).unwrap(),
            ))
        };
        let mut victim = identity("uid-victim");
        victim.metadata.name = Some("victim".into());
        victim.metadata.creation_timestamp = at(100);
        victim.status = Some(agentmesh_api::identity::AgentIdentityStatus {
            public_key: Some(text.clone()),
            ..Default::default()
        });
        let mut thief = identity("uid-thief");
        thief.metadata.name = Some("thief".into());
        thief.metadata.namespace = Some("other".into());
        thief.metadata.creation_timestamp = at(200);
        thief.spec.public_key = Some(text.clone());
        let all = vec![Arc::new(victim.clone()), Arc::new(thief.clone())];
        assert_eq!(
            older_holder(&thief, &key, &all).as_deref(),
            Some("ns/victim")
        );
        assert_eq!(older_holder(&victim, &key, &all), None);
        // Created the same second, in the same namespace, under a name that sorts first (the
        // e2e suite met this: `copycat` made within a second of `payments`): the key the
        // operator made for the victim stays the victim's.
        thief.metadata.creation_timestamp = at(100);
        thief.metadata.namespace = Some("ns".into());
        thief.metadata.name = Some("aaa".into());
        let all = vec![Arc::new(victim.clone()), Arc::new(thief.clone())];
        assert_eq!(older_holder(&victim, &key, &all), None);
        assert_eq!(
            older_holder(&thief, &key, &all).as_deref(),
            Some("ns/victim")
        );
        // Even created earlier than the victim.
        thief.metadata.creation_timestamp = at(50);
        let all = vec![Arc::new(victim.clone()), Arc::new(thief.clone())];
        assert_eq!(
            older_holder(&thief, &key, &all).as_deref(),
            Some("ns/victim")
        );
        // Two identities naming the same key of their own, made the same second: the one
        // granted it first keeps it, whatever the names.
        victim.spec.public_key = Some(text.clone());
        thief.metadata.creation_timestamp = at(100);
        let all = vec![Arc::new(victim.clone()), Arc::new(thief.clone())];
        assert_eq!(older_holder(&victim, &key, &all), None);
        assert_eq!(
            older_holder(&thief, &key, &all).as_deref(),
            Some("ns/victim")
        );
        // Neither granted yet: the older one, then namespace and name.
        victim.status = None;
        let all = vec![Arc::new(victim.clone()), Arc::new(thief.clone())];
        assert_eq!(older_holder(&thief, &key, &all), None);
        assert_eq!(older_holder(&victim, &key, &all).as_deref(), Some("ns/aaa"));
        thief.metadata.creation_timestamp = at(200);
        let all = vec![Arc::new(victim.clone()), Arc::new(thief.clone())];
        assert_eq!(older_holder(&victim, &key, &all), None);
        // Another key: no one.
        let other = agentmesh_identity::SigningKey::from_bytes(&[8; 32]).verifying_key();
        assert_eq!(older_holder(&thief, &other, &all), None);
    }

    /// The attack: whoever may create Secrets in the operator's namespace (an administrator
    /// of it, not a tenant: tenants have no say there) makes the identity's key Secret with a
    /// private key they know, before (or after deleting) the operator's. Adopting it would let
    /// them sign as the identity. Only the Secret made for this very identity (UID) is adopted.
    #[test]
    fn only_a_secret_made_for_the_identity_is_adopted() {
        use names::annotations::{IDENTITY, IDENTITY_UID};
        let agent = identity("uid-1");
        let own = [(IDENTITY, "ns/agent"), (IDENTITY_UID, "uid-1")];
        assert!(key_in(&secret(true, &own), &agent, "s".into()).is_ok());
        assert_eq!(
            made_for(&secret(true, &own)),
            Some(("ns", "agent", "uid-1"))
        );
        let forged: [(bool, &[(&str, &str)]); 5] = [
            (true, &[]),
            // Not labelled as the operator's.
            (false, &own),
            // A namesake identity's (deleted and made again: another UID).
            (true, &[(IDENTITY, "ns/agent"), (IDENTITY_UID, "uid-0")]),
            // The same UID string, another identity named.
            (true, &[(IDENTITY, "other/agent"), (IDENTITY_UID, "uid-1")]),
            (true, &[(IDENTITY_UID, "uid-1")]),
        ];
        for (labelled, annotations) in forged {
            let (reason, _) = key_in(&secret(labelled, annotations), &agent, "s".into())
                .err()
                .unwrap_or_else(|| panic!("adopted with {labelled} {annotations:?}"));
            assert_eq!(reason, "SecretNotOwned");
        }
    }
}
