//! The delegation chain of an identity: root → … → parent → this identity, the last link signed
//! with the parent's key, and the whole chain verified as a peer would verify it.
//!
//! The operator holds the parents' keys, so it signs only with consent: a parent signs a link
//! for an identity only when its `spec.delegates` names that identity, and the verification
//! checks every link's consent again from the registry (a withdrawn name revokes the link).

use std::sync::Arc;

use agentmesh_api::identity::{AgentIdentity, SignedDelegationLink};
use agentmesh_api::names::objects;
use agentmesh_identity::SigningKey;
use agentmesh_identity::capability::{self, Capability};
use agentmesh_identity::delegation::{self, DelegationLink};
use agentmesh_identity::keys::{self, Did};
use agentmesh_identity::registry::MemoryRegistry;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::Store;

use crate::context::Context;
use crate::engine::Engine;

/// The delegation depth allowed by the policy governing `identity`.
pub(super) fn max_depth(engine: &Engine, identity: &AgentIdentity) -> usize {
    let k = crate::engine::key(
        &identity.namespace().unwrap_or_default(),
        &identity.name_any(),
    );
    engine.policy_of(&k).0.max_delegation_depth()
}

/// Builds the chain root → … → parent → this identity, signing the last link with the
/// parent's key, and verifies it link by link. Errors: (condition reason, message).
pub(super) async fn build(
    identity: &AgentIdentity,
    own_did: &Did,
    identities: &[Arc<AgentIdentity>],
    ctx: &Context,
    secrets: &Store<Secret>,
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
    // Consent first: without it the parent's key signs nothing for this identity.
    if !parent
        .spec
        .delegates
        .iter()
        .any(|d| *d == identity.name_any())
    {
        return Err((
            "NotConsented",
            format!(
                "AgentIdentity {} does not list {} in spec.delegates",
                delegation.parent,
                identity.name_any()
            ),
        ));
    }
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
    let signing = parent_signing_key(parent, &namespace, ctx, secrets).await?;
    let expires_at = delegation
        .expires_at
        .as_ref()
        .map(agentmesh_api::convert::timestamp);
    let issued_at = reissued_at(
        identity,
        &parent_did,
        own_did,
        &delegation.capabilities,
        expires_at,
    )
    .unwrap_or_else(crate::engine::now);
    let link = DelegationLink::create(
        &signing,
        &parent_grants,
        own_did.clone(),
        delegation.capabilities.clone(),
        issued_at,
        expires_at,
    )
    .map_err(|e| {
        (
            reason_of(&e),
            format!("link {} → {}: {e}", delegation.parent, identity.name_any()),
        )
    })?;
    links.push(link);

    // Verify the whole chain as a peer would: keys and consent from the registry, never from
    // the links.
    let registry = registry_of(identities, (&identity.name_any(), own_did));
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

/// The registry of the namespace's identities: each key in force and whom it consents to
/// delegate to (`spec.delegates`, names resolved to DIDs). `own` is the identity being
/// reconciled, whose DID its status may not hold yet (a new identity).
fn registry_of(identities: &[Arc<AgentIdentity>], own: (&str, &Did)) -> MemoryRegistry {
    let did_of = |identity: &AgentIdentity| {
        if identity.name_any() == own.0 {
            return Some(own.1.clone());
        }
        identity
            .status
            .as_ref()
            .and_then(|s| s.did.as_deref())
            .and_then(|d| Did::parse(d).ok())
    };
    let mut registry = MemoryRegistry::new();
    for other in identities {
        if let Some(key) = other
            .status
            .as_ref()
            .and_then(|s| s.public_key.as_deref())
            .and_then(|k| keys::public_key_from_text(k).ok())
        {
            let did = registry.insert(
                key,
                other
                    .status
                    .as_ref()
                    .and_then(|s| s.trust_score)
                    .unwrap_or(0),
            );
            for name in &other.spec.delegates {
                if let Some(delegate) = identities.iter().find(|i| i.name_any() == *name)
                    && let Some(delegate_did) = did_of(delegate)
                {
                    registry.allow_delegation(&did, delegate_did);
                }
            }
        }
    }
    registry
}

/// The issue time of the link this identity already holds, when the parent would sign the same
/// link again: the link, and its time, stay as they are while nothing in them changes.
fn reissued_at(
    identity: &AgentIdentity,
    issuer: &Did,
    subject: &Did,
    capabilities: &[String],
    expires_at: Option<agentmesh_identity::Timestamp>,
) -> Option<agentmesh_identity::Timestamp> {
    let held = identity.status.as_ref()?.delegation_chain.last()?;
    let index = identity.status.as_ref()?.delegation_chain.len() - 1;
    let held = agentmesh_api::convert::delegation_link(held, index).ok()?;
    let floor = |t: Option<agentmesh_identity::Timestamp>| t.map(|t| t.as_secs_floor());
    (held.issuer == *issuer
        && held.subject == *subject
        && held.capabilities == capabilities
        && floor(held.expires_at) == floor(expires_at))
    .then_some(held.issued_at)
}

async fn parent_signing_key(
    parent: &AgentIdentity,
    namespace: &str,
    ctx: &Context,
    secrets: &Store<Secret>,
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
    let name = objects::key_secret_name(namespace, &parent.name_any());
    let home = ctx.config.args.namespace.as_str();
    let api = Api::<Secret>::namespaced(ctx.client.clone(), home);
    let secret = super::key::find(secrets, &api, home, &name)
        .await
        .map_err(|e| ("ParentNotReady", e.to_string()))?
        .ok_or((
            "ParentNotReady",
            format!("the parent's key Secret {name} does not exist yet"),
        ))?;
    if !super::key::owned_by(&secret, parent) {
        return Err((
            "ParentKeyNotManaged",
            format!("the parent's key Secret {name} was not made by the operator for it"),
        ));
    }
    keys::private_key_from_pem(&super::key::private_key_pem(&secret))
        .map_err(|e| ("ParentNotReady", format!("Secret {name}: {e}")))
}

fn reason_of(error: &delegation::DelegationError) -> &'static str {
    use delegation::DelegationError as E;
    match error {
        E::Widened { .. } => "CapabilitiesWidened",
        E::DepthExceeded { .. } => "DepthExceeded",
        E::Expired { .. } => "Expired",
        E::Cycle { .. } => "Cycle",
        E::NotConsented { .. } => "NotConsented",
        _ => "InvalidChain",
    }
}
