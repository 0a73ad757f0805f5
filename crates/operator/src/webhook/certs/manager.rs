//! The loop that keeps the serving certificate (the webhook's and the trust API's) and the
//! webhook configuration current.

use crate::context::Context;
use crate::webhook::config;
use crate::webhook::server::CertStore;
use anyhow::Context as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

use super::*;

/// Keeps the serving certificate and the webhook configuration up to date; runs on every
/// replica, writes only on the leader.
pub struct Manager {
    pub ctx: Arc<Context>,
    pub store: Arc<CertStore>,
    pub source: Source,
    pub secret_name: String,
    pub options: config::Options,
    pub refresh: Duration,
    /// Whether the leader applies the MutatingWebhookConfiguration (the webhook is enabled);
    /// the certificate is kept either way, for the trust API.
    pub apply_webhook: bool,
}

/// How often a replica re-reads the Secret: a tenth of the serving certificate's lifetime, at
/// most 30 s, at least 1 s.
pub fn refresh_interval(source: &Source) -> Duration {
    match source {
        Source::SelfManaged {
            serving_lifetime, ..
        } => (*serving_lifetime / 10).clamp(Duration::from_secs(1), Duration::from_secs(30)),
        Source::CertManager => Duration::from_secs(30),
    }
}

impl Manager {
    pub async fn run(self) {
        let mut applied: Option<(serde_json::Value, Instant)> = None;
        let mut owner: Option<config::Owner> = None;
        loop {
            let leader = self.ctx.is_leader();
            let ok = match self.tick(&mut applied, &mut owner).await {
                Ok(()) => true,
                Err(error) => {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "webhook certificates: retrying"
                    );
                    false
                }
            };
            // Sleep `refresh`, but look again within a second after a failure, while nothing
            // is being served yet, and as soon as this replica gains or loses leadership.
            let started = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_secs(1).min(self.refresh)).await;
                if started.elapsed() >= self.refresh
                    || !ok
                    || !self.store.is_loaded()
                    || self.ctx.is_leader() != leader
                {
                    break;
                }
            }
        }
    }

    async fn tick(
        &self,
        applied: &mut Option<(serde_json::Value, Instant)>,
        owner: &mut Option<config::Owner>,
    ) -> anyhow::Result<()> {
        let client = self.ctx.client.clone();
        let namespace = &self.options.operator_namespace;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let secret = secrets
            .get_opt(&self.secret_name)
            .await
            .with_context(|| format!("reading Secret {namespace}/{}", self.secret_name))?;
        let mut data = secret
            .as_ref()
            .and_then(|secret| secret.data.clone())
            .unwrap_or_default();
        let leader = self.ctx.is_leader();
        if leader && owner.is_none() {
            *owner = self.owner().await;
        }

        if leader
            && let Source::SelfManaged {
                serving_lifetime,
                ca_lifetime,
                sans,
            } = &self.source
        {
            let plan = plan(
                &data,
                OffsetDateTime::now_utc(),
                *serving_lifetime,
                *ca_lifetime,
                sans,
            );
            if plan != Plan::Keep {
                let new = execute(&plan, &data, *serving_lifetime, *ca_lifetime, sans)?;
                self.write(&secrets, secret.as_ref(), new.clone(), owner.as_ref())
                    .await?;
                tracing::info!(?plan, secret = %self.secret_name, "webhook certificates written");
                data = new;
            }
        }

        if leader && self.apply_webhook {
            let bundle = data.get(CA_BUNDLE).map(|bundle| bundle.0.as_slice());
            let desired = config::desired(&self.options, bundle, owner.as_ref());
            let fresh = applied.as_ref().is_some_and(|(last, at)| {
                *last == desired && at.elapsed() < Duration::from_secs(60)
            });
            if !fresh && (bundle.is_some() || self.source == Source::CertManager) {
                let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
                api.patch(
                    &self.options.config_name(),
                    &PatchParams::apply(agentmesh_api::names::FIELD_MANAGER).force(),
                    &Patch::Apply(&desired),
                )
                .await
                .context("applying the MutatingWebhookConfiguration")?;
                tracing::info!(name = %self.options.config_name(), "webhook configuration applied");
                *applied = Some((desired, Instant::now()));
            }
        }

        if let Some(bundle) = data.get(CA_BUNDLE)
            && self.store.set_bundle(&bundle.0)
        {
            tracing::info!("CA bundle loaded");
        }
        if let (Some(cert), Some(key)) = (data.get(TLS_CRT), data.get(TLS_KEY))
            && self.store.set_pem(&cert.0, &key.0)?
        {
            tracing::info!("serving certificate loaded");
        }
        Ok(())
    }

    /// The installation's ClusterRole when one is named, else the operator's Namespace; `None`
    /// (retried next round) while it cannot be read.
    async fn owner(&self) -> Option<config::Owner> {
        let client = self.ctx.client.clone();
        match &self.options.owner_cluster_role {
            Some(name) => {
                let roles: Api<ClusterRole> = Api::all(client);
                match roles.get_opt(name).await {
                    Ok(Some(role)) => role.metadata.uid.map(|uid| config::Owner {
                        api_version: "rbac.authorization.k8s.io/v1",
                        kind: "ClusterRole",
                        name: name.clone(),
                        uid,
                    }),
                    Ok(None) => {
                        tracing::warn!(%name, "the owner ClusterRole does not exist");
                        None
                    }
                    Err(error) => {
                        tracing::debug!(%error, "cannot read the owner ClusterRole");
                        None
                    }
                }
            }
            None => {
                let namespace = &self.options.operator_namespace;
                let namespaces: Api<Namespace> = Api::all(client);
                match namespaces.get_opt(namespace).await {
                    Ok(found) => found
                        .and_then(|ns| ns.metadata.uid)
                        .map(|uid| config::Owner {
                            api_version: "v1",
                            kind: "Namespace",
                            name: namespace.clone(),
                            uid,
                        }),
                    Err(error) => {
                        tracing::debug!(%error, "cannot read the operator's Namespace");
                        None
                    }
                }
            }
        }
    }

    async fn write(
        &self,
        secrets: &Api<Secret>,
        existing: Option<&Secret>,
        data: BTreeMap<String, ByteString>,
        owner: Option<&config::Owner>,
    ) -> anyhow::Result<()> {
        use agentmesh_api::names::labels;
        match existing {
            Some(existing) => {
                let mut updated = existing.clone();
                updated.data = Some(data);
                secrets
                    .replace(&self.secret_name, &PostParams::default(), &updated)
                    .await
                    .context("updating the webhook Secret (another writer? retried next round)")?;
            }
            None => {
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(self.secret_name.clone()),
                        labels: Some(
                            [
                                (labels::APP_NAME, labels::OPERATOR_APP_NAME),
                                (labels::APP_PART_OF, labels::PART_OF_VALUE),
                                (labels::APP_MANAGED_BY, agentmesh_api::names::FIELD_MANAGER),
                            ]
                            .into_iter()
                            .map(|(k, v)| (k.to_owned(), v.to_owned()))
                            .collect(),
                        ),
                        // Owned by the installation's ClusterRole, if any: the Namespace
                        // already holds the Secret.
                        owner_references: owner.filter(|o| o.kind == "ClusterRole").map(|o| {
                            vec![OwnerReference {
                                api_version: o.api_version.into(),
                                kind: o.kind.into(),
                                name: o.name.clone(),
                                uid: o.uid.clone(),
                                ..Default::default()
                            }]
                        }),
                        ..Default::default()
                    },
                    type_: Some("kubernetes.io/tls".into()),
                    data: Some(data),
                    ..Default::default()
                };
                secrets
                    .create(&PostParams::default(), &secret)
                    .await
                    .context("creating the webhook Secret")?;
            }
        }
        Ok(())
    }
}
