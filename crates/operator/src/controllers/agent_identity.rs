//! The AgentIdentity reconciler: the key Secret, DID and public key, the delegation chain
//! (signed with the parent's key, verified link by link), the pods matched, and the conditions
//! `KeyReady` and `DelegationValid`. Score fields and `Trusted`/`Quarantined` belong to the
//! trust engine (its own field manager).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_api::identity::{AgentIdentity, SignedDelegationLink};
use agentmesh_api::names::{self, conditions as types, objects};
use agentmesh_identity::capability::{self, Capability};
use agentmesh_identity::delegation::{self, DelegationLink};
use agentmesh_identity::keys::{self, Did};
use agentmesh_identity::registry::MemoryRegistry;
use agentmesh_identity::{SigningKey, VerifyingKey};
use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::core::SelectorExt;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::Reconcilers;
use crate::conditions::condition;
use crate::context::Context;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::index::{Indexes, PodIndex};

const CONTROLLER: &str = "agentidentity";

pub async fn run(shared: Arc<Reconcilers>) {
    let ctx = &shared.ctx;
    let identities = &shared.indexes.identities;
    // A pod labelled with an identity's name changes how many pods it matches.
    let pods = shared.indexes.pods.changes().filter_map(|pod| async move {
        let name = pod.labels.get(names::labels::IDENTITY)?;
        Some(ObjectRef::new(name).within(&pod.namespace))
    });
    let controller = Controller::for_shared_stream(identities.changes(), identities.store.clone())
        .owns(
            ctx.watched_api::<Secret>(),
            // Only the key Secrets this operator made, not every Secret some tool manages.
            watcher::Config::default().labels(&format!(
                "{}={}",
                names::labels::APP_MANAGED_BY,
                names::labels::MANAGED_BY_VALUE
            )),
        )
        .reconcile_on(pods);
    super::run(CONTROLLER, controller, reconcile, shared.clone()).await;
}

async fn reconcile(identity: Arc<AgentIdentity>, shared: Arc<Reconcilers>) -> Result<Action> {
    reconcile_inner(&identity, &shared).await
}

async fn reconcile_inner(identity: &AgentIdentity, shared: &Reconcilers) -> Result<Action> {
    let Reconcilers {
        ctx,
        engine,
        indexes,
    } = shared;
    let namespace = identity
        .namespace()
        .ok_or(Error::NoNamespace("AgentIdentity"))?;
    let name = identity.name_any();
    let generation = identity.metadata.generation;
    let current = identity.status.clone().unwrap_or_default();

    let key = ensure_key(identity, &namespace, ctx).await?;
    let key_condition = match &key {
        Ok(key) => condition(
            &current.conditions,
            types::KEY_READY,
            true,
            if key.secret.is_some() {
                "SecretReady"
            } else {
                "OwnKey"
            },
            match &key.secret {
                Some(secret) => format!("private key in Secret {secret}"),
                None => "the agent holds its own private key (spec.publicKey)".into(),
            },
            generation,
        ),
        Err(message) => condition(
            &current.conditions,
            types::KEY_READY,
            false,
            "InvalidKey",
            message.clone(),
            generation,
        ),
    };

    let identities = Indexes::in_namespace(&indexes.identities.store, &namespace);
    let (chain, delegation_condition) = match (&identity.spec.delegation, &key) {
        (None, _) => (
            Vec::new(),
            condition(
                &current.conditions,
                types::DELEGATION_VALID,
                true,
                "NoDelegation",
                "not delegated".into(),
                generation,
            ),
        ),
        (Some(_), Err(_)) => (
            Vec::new(),
            condition(
                &current.conditions,
                types::DELEGATION_VALID,
                false,
                "KeyNotReady",
                "the identity has no valid key".into(),
                generation,
            ),
        ),
        (Some(_), Ok(own)) => match delegation_chain(
            identity,
            &own.did,
            &identities,
            ctx,
            max_depth(engine, identity),
        )
        .await
        {
            Ok(chain) => {
                let message = format!(
                    "verified chain of {} link(s) from {}",
                    chain.len(),
                    chain[0].issuer
                );
                (
                    chain,
                    condition(
                        &current.conditions,
                        types::DELEGATION_VALID,
                        true,
                        "ChainVerified",
                        message,
                        generation,
                    ),
                )
            }
            Err((reason, message)) => (
                Vec::new(),
                condition(
                    &current.conditions,
                    types::DELEGATION_VALID,
                    false,
                    reason,
                    message,
                    generation,
                ),
            ),
        },
    };

    let pods_matched = count_pods(identity, &namespace, &indexes.pods)?;
    let (did, public_key, secret) = match &key {
        Ok(key) => (
            Some(key.did.to_string()),
            Some(keys::public_key_to_text(&key.public_key)),
            key.secret.clone(),
        ),
        Err(_) => (None, None, None),
    };
    let desired = json!({
        "observedGeneration": generation,
        "did": did,
        "publicKey": public_key,
        "keySecretName": secret,
        "delegationDepth": identity.spec.delegation.as_ref().map(|_| chain.len() as i32).unwrap_or(0),
        "delegationChain": chain,
        "podsMatched": pods_matched,
    });
    let unchanged = serde_json::to_value(&current).ok().is_some_and(|now| {
        desired
            .as_object()
            .expect("object")
            .iter()
            .all(|(k, v)| match (now.get(k), v) {
                (None, serde_json::Value::Null) => true,
                (None, serde_json::Value::Array(a)) => a.is_empty(),
                (Some(have), want) => have == want,
                _ => false,
            })
    }) && same_condition(&current.conditions, &key_condition)
        && same_condition(&current.conditions, &delegation_condition);
    if !unchanged {
        let mut status = desired;
        status["conditions"] = json!([key_condition, delegation_condition]);
        let patch = json!({"apiVersion": "agentmesh.io/v1alpha1", "kind": "AgentIdentity", "status": status});
        Api::<AgentIdentity>::namespaced(ctx.client.clone(), &namespace)
            .patch_status(
                &name,
                &PatchParams::apply(names::FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
        let was_valid = current
            .conditions
            .iter()
            .find(|c| c.type_ == types::DELEGATION_VALID)
            .map(|c| c.status == "True");
        if identity.spec.delegation.is_some()
            && delegation_condition.status == "False"
            && was_valid != Some(false)
        {
            ctx.event(
                &identity.object_ref(&()),
                EventType::Warning,
                &delegation_condition.reason,
                "VerifyDelegation",
                delegation_condition.message.clone(),
            )
            .await;
        }
    }
    // Delegations expire and pods come and go without touching this object: look again soon.
    Ok(Action::requeue(Duration::from_secs(30)))
}

fn same_condition(current: &[Condition], wanted: &Condition) -> bool {
    current.iter().any(|c| {
        c.type_ == wanted.type_
            && c.status == wanted.status
            && c.reason == wanted.reason
            && c.message == wanted.message
            && c.observed_generation == wanted.observed_generation
    })
}

/// The identity's key in force.
struct Key {
    did: Did,
    public_key: VerifyingKey,
    /// The Secret holding the private key, when the operator manages it.
    secret: Option<String>,
}

/// The key of `identity`: its own public key, or the one in its Secret, created when missing.
/// `Ok(Err(message))`: the identity's own key is not valid.
async fn ensure_key(
    identity: &AgentIdentity,
    namespace: &str,
    ctx: &Context,
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
    if let Some(secret) = api.get_opt(&secret_name).await? {
        return Ok(
            match keys::private_key_from_pem(&private_key_pem(&secret)) {
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
            },
        );
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
            ctx.event(
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
        Err(kube::Error::Api(e)) if e.code == 409 => Err(Error::Invalid(format!(
            "Secret {secret_name} appeared concurrently; retrying"
        ))),
        Err(error) => Err(error.into()),
    }
}

/// The delegation depth allowed by the policy governing `identity`.
fn max_depth(engine: &Engine, identity: &AgentIdentity) -> usize {
    let k = crate::engine::key(
        &identity.namespace().unwrap_or_default(),
        &identity.name_any(),
    );
    engine.policy_of(&k).0.max_delegation_depth()
}

/// Builds the chain root → … → parent → this identity, signing the last link with the
/// parent's key, and verifies it link by link. Errors: (condition reason, message).
async fn delegation_chain(
    identity: &AgentIdentity,
    own_did: &Did,
    identities: &[Arc<AgentIdentity>],
    ctx: &Context,
    max_depth: usize,
) -> std::result::Result<Vec<SignedDelegationLink>, (&'static str, String)> {
    let delegation = identity
        .spec
        .delegation
        .as_ref()
        .expect("called for delegated identities");
    let namespace = identity.namespace().unwrap_or_default();
    let parent = identities
        .iter()
        .find(|i| i.name_any() == delegation.parent)
        .ok_or((
            "ParentNotFound",
            format!("AgentIdentity {} does not exist", delegation.parent),
        ))?;
    let parent_status = parent.status.clone().unwrap_or_default();
    let parent_did = parent_status
        .did
        .as_deref()
        .and_then(|d| Did::parse(d).ok())
        .ok_or((
            "ParentNotReady",
            format!("AgentIdentity {} has no DID yet", delegation.parent),
        ))?;
    // What the parent may delegate: its own capabilities, or what its chain granted it.
    let (mut links, root_did, parent_grants) = match &parent.spec.delegation {
        None => (
            Vec::new(),
            parent_did.clone(),
            parent.spec.capabilities.clone(),
        ),
        Some(parent_delegation) => {
            let links: Vec<DelegationLink> = parent_status
                .delegation_chain
                .iter()
                .enumerate()
                .map(|(i, l)| agentmesh_api::convert::delegation_link(l, i))
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| ("ParentChainInvalid", e.to_string()))?;
            let root = links.first().map(|l| l.issuer.clone()).ok_or((
                "ParentChainInvalid",
                format!(
                    "the parent {} has no verified delegation chain",
                    delegation.parent
                ),
            ))?;
            (links, root, parent_delegation.capabilities.clone())
        }
    };
    let parent_grants =
        capability::parse_all(&parent_grants).map_err(|e| ("InvalidCapability", e.to_string()))?;
    let signing = parent_signing_key(parent, &namespace, ctx).await?;
    let expires_at = delegation
        .expires_at
        .as_ref()
        .map(agentmesh_api::convert::timestamp);
    let link = DelegationLink::create(
        &signing,
        &parent_grants,
        own_did.clone(),
        delegation.capabilities.clone(),
        expires_at,
    )
    .map_err(|e| {
        (
            reason_of(&e),
            format!("link {} → {}: {e}", delegation.parent, identity.name_any()),
        )
    })?;
    links.push(link);

    // Verify the whole chain as a peer would: keys from the registry, never from the links.
    let mut registry = MemoryRegistry::new();
    for other in identities {
        if let Some(key) = other
            .status
            .as_ref()
            .and_then(|s| s.public_key.as_deref())
            .and_then(|k| keys::public_key_from_text(k).ok())
        {
            registry.insert(
                key,
                other
                    .status
                    .as_ref()
                    .and_then(|s| s.trust_score)
                    .unwrap_or(0),
            );
        }
    }
    let root = identities
        .iter()
        .find(|i| i.status.as_ref().and_then(|s| s.did.as_deref()) == Some(root_did.as_str()));
    let root_grants: Vec<Capability> = root
        .map(|r| capability::parse_all(&r.spec.capabilities))
        .transpose()
        .map_err(|e| ("InvalidCapability", e.to_string()))?
        .ok_or((
            "RootNotFound",
            format!("no AgentIdentity has the root DID {root_did}"),
        ))?;
    delegation::verify_chain(
        &links,
        &root_did,
        &root_grants,
        &registry,
        crate::engine::now(),
        max_depth,
    )
    .map_err(|e| (reason_of(&e), e.to_string()))?;
    links
        .iter()
        .enumerate()
        .map(|(i, l)| {
            agentmesh_api::convert::signed_delegation_link(l, i)
                .map_err(|e| ("Invalid", e.to_string()))
        })
        .collect()
}

async fn parent_signing_key(
    parent: &AgentIdentity,
    namespace: &str,
    ctx: &Context,
) -> std::result::Result<SigningKey, (&'static str, String)> {
    if parent.spec.public_key.is_some() {
        return Err((
            "ParentKeyNotManaged",
            format!(
                "the parent {} holds its own key: the operator cannot sign for it",
                parent.name_any()
            ),
        ));
    }
    let name = objects::key_secret_name(&parent.name_any());
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), namespace)
        .get_opt(&name)
        .await
        .map_err(|e| ("ParentNotReady", e.to_string()))?
        .ok_or((
            "ParentNotReady",
            format!("the parent's key Secret {name} does not exist yet"),
        ))?;
    keys::private_key_from_pem(&private_key_pem(&secret))
        .map_err(|e| ("ParentNotReady", format!("Secret {name}: {e}")))
}

/// The PEM under `private-key` in a key Secret (empty when absent, which then fails to parse).
fn private_key_pem(secret: &Secret) -> String {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(objects::PRIVATE_KEY_KEY))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .unwrap_or_default()
}

fn reason_of(error: &delegation::DelegationError) -> &'static str {
    use delegation::DelegationError as E;
    match error {
        E::Widened { .. } => "CapabilitiesWidened",
        E::DepthExceeded { .. } => "DepthExceeded",
        E::Expired { .. } => "Expired",
        E::Cycle { .. } => "Cycle",
        _ => "InvalidChain",
    }
}

/// Running pods of the identity: its selector, else the `agentmesh.io/identity` label.
fn count_pods(identity: &AgentIdentity, namespace: &str, pods: &PodIndex) -> Result<i32> {
    let selector = identity
        .spec
        .selector
        .as_ref()
        .map(|selector| {
            kube::core::Selector::try_from(selector.clone())
                .map_err(|e| Error::Invalid(format!("spec.selector: {e}")))
        })
        .transpose()?;
    let name = identity.name_any();
    let running = pods
        .in_namespace(namespace)
        .iter()
        .filter(|pod| pod.running)
        .filter(|pod| match &selector {
            Some(selector) => selector.matches(&pod.labels),
            None => pod.labels.get(names::labels::IDENTITY) == Some(&name),
        })
        .count();
    Ok(running as i32)
}
