//! The AgentIdentity reconciler: the key Secret, DID and public key, the delegation chain
//! (signed with the parent's key, verified link by link), the pods matched, and the conditions
//! `KeyReady` and `DelegationValid`. Score fields and `Trusted`/`Quarantined` belong to the
//! trust engine (its own field manager).

use std::sync::Arc;
use std::time::Duration;

use agentmesh_api::common::find_condition;
use agentmesh_api::identity::{AgentIdentity, AgentIdentityStatus, SignedDelegationLink};
use agentmesh_api::names::conditions as types;
use agentmesh_identity::keys;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::Api;
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde::Serialize;

mod chain;
pub(crate) mod key;

use super::Reconcilers;
use crate::conditions::condition;
use crate::error::{Error, Result};
use crate::index::{Indexes, PodIndex, PodInfo};

const CONTROLLER: &str = "agentidentity";

pub async fn run(shared: Arc<Reconcilers>) {
    let identities = &shared.indexes.identities;
    // A pod that changes changes how many pods the identities matching it match: those it is
    // labelled with, and those whose selector selects it.
    let store = identities.store.clone();
    let pods = shared
        .indexes
        .pods
        .changes()
        .flat_map(move |pod| futures::stream::iter(matching(&store, &pod)));
    // A parent whose spec (its `delegates`) or key changed: its children verify again now, so a
    // withdrawn consent revokes their links at once rather than at their next requeue. Status
    // writes that change neither (scores) wake no one.
    let store = identities.store.clone();
    let mut parents = super::ChangeFilter::new(store.clone());
    let children = identities.changes().flat_map(move |parent| {
        let did = parent.status.as_ref().and_then(|s| s.did.clone());
        let changed = parents.changed(&*parent, (parent.metadata.generation, did));
        futures::stream::iter(if changed {
            children_of(&store, &parent)
        } else {
            Vec::new()
        })
    });
    let controller = Controller::for_shared_stream(identities.changes(), identities.store.clone())
        // Key Secrets live in the operator's namespace, so no owner reference: their
        // annotations name the identity.
        .watches_shared_stream(shared.indexes.key_secrets.changes(), |secret| {
            key::made_for(&secret)
                .map(|(namespace, name, _)| ObjectRef::new(name).within(namespace))
        })
        .reconcile_on(pods)
        .reconcile_on(children);
    tokio::join!(
        super::run(CONTROLLER, controller, reconcile, shared.clone()),
        sweep_orphans(shared.clone()),
    );
}

/// Deletes the key Secrets (in the operator's namespace) of AgentIdentities that no longer
/// exist: what an owner reference did while the Secrets lived beside their identities. Every
/// `MESHLOGIC_KEY_SWEEP_SECONDS`; a Secret younger than twice that is left alone (the index may
/// not show its identity yet).
async fn sweep_orphans(shared: Arc<Reconcilers>) {
    let ctx = &shared.ctx;
    let home = ctx.config.args.namespace.as_str();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), home);
    let every = Duration::from_secs(ctx.config.args.key_sweep_seconds);
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let now = k8s_openapi::jiff::Timestamp::now();
        let identities = &shared.indexes.identities.store;
        for secret in shared.indexes.key_secrets.store.state() {
            let Some((namespace, name, uid)) =
                orphan_candidate(&secret, now, every * 2, |ns, n| {
                    identities
                        .get(&ObjectRef::new(n).within(ns))
                        .and_then(|i| i.metadata.uid.clone())
                })
            else {
                continue;
            };
            // The index may lag: the API has the last word.
            let api = Api::<AgentIdentity>::namespaced(ctx.client.clone(), namespace);
            match api.get_opt(name).await {
                Ok(Some(identity)) if identity.metadata.uid.as_deref() == Some(uid) => continue,
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, namespace, name, "cannot check the identity of a key Secret");
                    continue;
                }
            }
            let secret_name = secret.name_any();
            let params =
                kube::api::DeleteParams {
                    preconditions: secret.metadata.uid.clone().map(|uid| {
                        kube::api::Preconditions {
                            uid: Some(uid),
                            resource_version: None,
                        }
                    }),
                    ..Default::default()
                };
            match secrets.delete(&secret_name, &params).await {
                Ok(_) => tracing::info!(
                    secret = %secret_name,
                    identity = %format!("{namespace}/{name}"),
                    "deleted the key Secret of a deleted AgentIdentity"
                ),
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(error) => {
                    tracing::warn!(%error, secret = %secret_name, "cannot delete an orphaned key Secret")
                }
            }
        }
    }
}

/// The identity (`namespace`, `name`, UID) of a key Secret older than `grace` when
/// `uid_of` (the index) has no identity of that name with that UID: a candidate for deletion.
/// Secrets that name no identity (the webhook's certificate) are never candidates.
fn orphan_candidate(
    secret: &Secret,
    now: k8s_openapi::jiff::Timestamp,
    grace: Duration,
    uid_of: impl Fn(&str, &str) -> Option<String>,
) -> Option<(&str, &str, &str)> {
    let (namespace, name, uid) = key::made_for(secret)?;
    let created = secret.metadata.creation_timestamp.as_ref()?.0;
    let grace = k8s_openapi::jiff::SignedDuration::try_from(grace).ok()?;
    if now.duration_since(created) < grace {
        return None;
    }
    (uid_of(namespace, name).as_deref() != Some(uid)).then_some((namespace, name, uid))
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
    let generation = identity.metadata.generation;
    let current = identity.status.clone().unwrap_or_default();

    let key = key::ensure(identity, &namespace, ctx, &indexes.key_secrets.store)
        .await?
        .and_then(|key| {
            // A key of one's choice may be another identity's (public keys are public): the
            // older identity keeps it, and the newer one gets none, so that a DID is never two
            // identities' (the registry would hand one's score and capabilities to the other).
            match identity.spec.public_key.as_ref().and_then(|_| {
                key::older_holder(identity, &key.public_key, &indexes.identities.store.state())
            }) {
                Some(holder) => Err((
                    "DuplicateKey",
                    format!(
                        "spec.publicKey is already the key of AgentIdentity {holder}: each identity needs its own key"
                    ),
                )),
                None => Ok(key),
            }
        });
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
        Err((reason, message)) => condition(
            &current.conditions,
            types::KEY_READY,
            false,
            reason,
            message.clone(),
            generation,
        ),
    };

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
        // Only a delegated identity reads the others of its namespace (a scan of the index).
        (Some(_), Ok(own)) => match chain::build(
            identity,
            &own.did,
            &Indexes::in_namespace(&indexes.identities.store, &namespace),
            ctx,
            &indexes.key_secrets.store,
            chain::max_depth(engine, identity),
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
    let desired = Owned {
        observed_generation: generation,
        did,
        public_key,
        key_secret_name: secret,
        delegation_depth: Some(
            identity
                .spec
                .delegation
                .as_ref()
                .map_or(0, |_| chain.len() as i32),
        ),
        delegation_chain: chain,
        pods_matched,
        conditions: vec![key_condition, delegation_condition.clone()],
    };
    let api = Api::<AgentIdentity>::namespaced(ctx.client.clone(), &namespace);
    if super::apply_status(
        &api,
        identity,
        Some(&Owned::of(&current)),
        &desired,
        &ctx.status_writes,
    )
    .await?
    {
        let was_valid = current
            .conditions
            .iter()
            .find(|c| c.type_ == types::DELEGATION_VALID)
            .map(|c| c.status == "True");
        if identity.spec.delegation.is_some()
            && delegation_condition.status == "False"
            && was_valid != Some(false)
        {
            ctx.events
                .publish(
                    &identity.object_ref(&()),
                    EventType::Warning,
                    &delegation_condition.reason,
                    "VerifyDelegation",
                    delegation_condition.message.clone(),
                )
                .await;
        }
    }
    // A delegated identity depends on its parent's status and its link expires, neither of
    // which touches this object: look again soon. Others change only with what triggers them
    // (the identity, its Secret, its pods); a slow resync covers the rest.
    Ok(Action::requeue(if identity.spec.delegation.is_some() {
        Duration::from_secs(30)
    } else {
        Duration::from_secs(300)
    }))
}

/// The status fields this reconciler owns, compared typed with what status holds.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
struct Owned {
    observed_generation: Option<i64>,
    did: Option<String>,
    public_key: Option<String>,
    key_secret_name: Option<String>,
    delegation_depth: Option<i32>,
    delegation_chain: Vec<SignedDelegationLink>,
    pods_matched: i32,
    /// `KeyReady`, `DelegationValid`.
    conditions: Vec<Condition>,
}

impl Owned {
    fn of(status: &AgentIdentityStatus) -> Self {
        Self {
            observed_generation: status.observed_generation,
            did: status.did.clone(),
            public_key: status.public_key.clone(),
            key_secret_name: status.key_secret_name.clone(),
            delegation_depth: status.delegation_depth,
            delegation_chain: status.delegation_chain.clone(),
            pods_matched: status.pods_matched,
            conditions: [types::KEY_READY, types::DELEGATION_VALID]
                .iter()
                .filter_map(|type_| find_condition(&status.conditions, type_).cloned())
                .collect(),
        }
    }
}

/// The identities in the pod's namespace that count it: by their selector, else by the pod's
/// `agentmesh.io/identity` label.
fn matching(identities: &Store<AgentIdentity>, pod: &PodInfo) -> Vec<ObjectRef<AgentIdentity>> {
    Indexes::in_namespace(identities, &pod.namespace)
        .iter()
        .filter(|identity| pod.is_of(identity))
        .map(|identity| ObjectRef::from_obj(&**identity))
        .collect()
}

/// The identities of the parent's namespace that name it as their delegation parent.
fn children_of(
    identities: &Store<AgentIdentity>,
    parent: &AgentIdentity,
) -> Vec<ObjectRef<AgentIdentity>> {
    let (Some(namespace), name) = (parent.namespace(), parent.name_any()) else {
        return Vec::new();
    };
    Indexes::in_namespace(identities, &namespace)
        .iter()
        .filter(|i| i.spec.delegation.as_ref().is_some_and(|d| d.parent == name))
        .map(|i| ObjectRef::from_obj(&**i))
        .collect()
}

/// Running pods of the identity: its selector, else the `agentmesh.io/identity` label.
fn count_pods(identity: &AgentIdentity, namespace: &str, pods: &PodIndex) -> Result<i32> {
    if let Some(selector) = &identity.spec.selector {
        kube::core::Selector::try_from(selector.clone())
            .map_err(|e| Error::Invalid(format!("spec.selector: {e}")))?;
    }
    Ok(pods.count_in(namespace, |pod| pod.running && pod.is_of(identity)) as i32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentmesh_api::names::annotations::{IDENTITY, IDENTITY_UID};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::{SignedDuration, Timestamp};

    const GRACE: Duration = Duration::from_secs(60);

    fn key_secret(created: Timestamp, annotations: &[(&str, &str)]) -> Secret {
        let mut secret = Secret::default();
        secret.metadata.creation_timestamp = Some(Time(created));
        secret.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        secret
    }

    /// A key Secret goes when its identity is gone or was made again (another UID), never
    /// while young, and never when it names no identity (the webhook's certificate).
    #[test]
    fn only_old_key_secrets_of_identities_gone_are_swept() {
        let now = Timestamp::from_second(10_000).unwrap();
        let old = now - SignedDuration::from_secs(120);
        let young = now - SignedDuration::from_secs(5);
        let made_for = [(IDENTITY, "ns/agent"), (IDENTITY_UID, "uid-1")];
        let present = |_: &str, _: &str| Some("uid-1".to_owned());
        let gone = |_: &str, _: &str| None;
        let remade = |_: &str, _: &str| Some("uid-2".to_owned());

        let secret = key_secret(old, &made_for);
        assert_eq!(orphan_candidate(&secret, now, GRACE, present), None);
        assert_eq!(
            orphan_candidate(&secret, now, GRACE, gone),
            Some(("ns", "agent", "uid-1"))
        );
        assert_eq!(
            orphan_candidate(&secret, now, GRACE, remade),
            Some(("ns", "agent", "uid-1"))
        );
        assert_eq!(
            orphan_candidate(&key_secret(young, &made_for), now, GRACE, gone),
            None
        );
        assert_eq!(
            orphan_candidate(&key_secret(old, &[]), now, GRACE, gone),
            None
        );
    }
}
