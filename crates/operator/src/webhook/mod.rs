//! The sidecar-injection webhook: pods created in namespaces labelled `agentmesh-inject:
//! enabled` get the `agentmesh-sidecar` container.
//!
//! - `inject`: what is injected (pure, golden-tested);
//! - `review`: the AdmissionReview decoder and answers (pure, fuzzed);
//! - `server`: HTTPS (hyper over tokio-rustls), certificate read at every handshake;
//! - `certs`: the serving certificate (self-managed CA, or cert-manager) and the
//!   MutatingWebhookConfiguration's `caBundle`, written by the leader only;
//! - `config`: the MutatingWebhookConfiguration itself.
//!
//! Every replica serves the webhook; only the leader writes the Secret and the configuration.

pub mod certs;
pub mod config;
mod identities;
pub mod inject;
pub mod review;
pub mod server;

use std::sync::Arc;
use std::time::Duration;

use agentmesh_api::identity::AgentIdentity;
use anyhow::Context as _;
use hyper::body::Bytes;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::runtime::events::EventType;
use kube::runtime::reflector::Store;
use tokio::net::TcpListener;

use crate::context::Context;
use crate::metrics::{Metrics, ReasonLabels};
use inject::{Key, Settings, Skip};
use review::{Answer, BadRequest, Decoded, PodRequest};

pub use identities::{CREATIONS_BURST, CREATIONS_PER_SECOND, Identities, Resolved};

/// Answers AdmissionReviews: decides, injects, counts and explains.
pub struct Injector {
    pub settings: Settings,
    identities: Identities,
    metrics: Arc<Metrics>,
    /// For Events; none in tests and benchmarks.
    ctx: Option<Arc<Context>>,
    /// Bounds the Events published about admissions: their text comes from the review, which
    /// anyone reaching the port can write.
    events: governor::DefaultDirectRateLimiter,
}

/// A bound of `per_second` a second after a burst of `burst` (both at least 1).
fn rate_limiter(per_second: u32, burst: u32) -> governor::DefaultDirectRateLimiter {
    let at_least_one = |n: u32| std::num::NonZeroU32::new(n.max(1)).expect("at least 1");
    governor::RateLimiter::direct(
        governor::Quota::per_second(at_least_one(per_second)).allow_burst(at_least_one(burst)),
    )
}

/// Admission Events published per second at most, per replica (burst [`EVENTS_BURST`]).
pub const EVENTS_PER_SECOND: u32 = 10;
/// Admission Events published at once at most, per replica.
pub const EVENTS_BURST: u32 = 50;

/// An Event to publish about an admission.
struct Note {
    type_: EventType,
    reason: &'static str,
    /// Also what Events are aggregated by (with the object and the reason).
    action: &'static str,
    text: String,
}

impl Injector {
    pub fn new(
        settings: Settings,
        identities: Identities,
        metrics: Arc<Metrics>,
        ctx: Option<Arc<Context>>,
    ) -> Self {
        Self {
            settings,
            identities,
            metrics,
            ctx,
            events: rate_limiter(EVENTS_PER_SECOND, EVENTS_BURST),
        }
    }

    fn count(&self, reason: &str) {
        self.metrics
            .admissions
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// The answer to an AdmissionReview request body.
    pub async fn review_body(&self, body: &[u8]) -> Result<Vec<u8>, BadRequest> {
        match review::decode(body)? {
            Decoded::Answered { uid, answer } => {
                self.count(match answer {
                    Answer::Deny { .. } => "refused",
                    _ => "not_applicable",
                });
                Ok(review::encode(&uid, &answer))
            }
            Decoded::Pod(request) => {
                let (answer, reason, note) = self.decide(&request).await;
                self.count(reason);
                tracing::debug!(
                    namespace = %request.namespace,
                    pod = %pod_name(&request.pod),
                    reason,
                    dry_run = request.dry_run,
                    "webhook: admission"
                );
                if let Some(note) = note
                    && !request.dry_run
                {
                    self.publish(&request, note);
                }
                Ok(review::encode(&request.uid, &answer))
            }
        }
    }

    /// The answer, its metric label and maybe an Event.
    async fn decide(&self, request: &PodRequest) -> (Answer, &'static str, Option<Note>) {
        let pod = &request.pod;
        let Some(spec) = pod.spec.as_ref() else {
            return (
                Answer::Deny {
                    code: 400,
                    message: "the pod has no spec".into(),
                },
                "refused",
                None,
            );
        };
        let skipped = |skip: Skip| {
            let note = Note {
                type_: EventType::Normal,
                reason: "InjectionSkipped",
                action: skip.label(),
                text: format!(
                    "pod {}: sidecar not injected ({}): {}",
                    pod_name(pod),
                    skip.label(),
                    skip.explain()
                ),
            };
            (Answer::Allow, skip.label(), Some(note))
        };
        if let Some(skip) = inject::skip_reason(pod, &request.namespace, &self.settings) {
            return skipped(skip);
        }
        if inject::already_injected(pod) {
            // A re-invocation (another admission plugin changed the pod after us) or a
            // hand-made sidecar: only containers added since lack the proxy URL.
            let ops = inject::proxy_env_ops(spec);
            if !ops.is_empty() {
                return (Answer::Patch(ops), "proxy_env_added", None);
            }
            if inject::has_status_annotation(pod) {
                // Our own earlier pass: routine, counted but not worth an Event.
                return (Answer::Allow, Skip::AlreadyInjected.label(), None);
            }
            return skipped(Skip::AlreadyInjected);
        }
        let identity = inject::identity_of(pod);
        let account = inject::service_account_of(pod);
        let (key, note) = match self
            .identities
            .resolve(&request.namespace, &identity, &account, request.dry_run)
            .await
        {
            // A pod of another account names the identity: it would get that identity's key.
            Ok(Resolved::Found {
                service_account, ..
            }) if service_account != account => {
                return (
                    Answer::Deny {
                        code: 403,
                        message: format!(
                            "AgentMesh: the pod runs as ServiceAccount {account:?}, but AgentIdentity {}/{identity} admits only pods of ServiceAccount {service_account:?} (its spec.serviceAccountName, by default its own name)",
                            request.namespace
                        ),
                    },
                    "wrong_service_account",
                    None,
                );
            }
            Ok(Resolved::Found { key, .. }) => (key, None),
            Ok(Resolved::Created) => (
                Key::Managed,
                Some(Note {
                    type_: EventType::Normal,
                    reason: "IdentityCreated",
                    action: "CreateIdentity",
                    text: format!(
                        "pod {}: created AgentIdentity {identity}; the sidecar fetches its key once the operator has made it",
                        pod_name(pod),
                    ),
                }),
            ),
            Ok(Resolved::Missing) => (
                Key::Managed,
                Some(Note {
                    type_: EventType::Warning,
                    reason: "IdentityMissing",
                    action: "Inject",
                    text: format!(
                        "pod {}: no AgentIdentity {identity} and auto-creation is off; its sidecar waits for one",
                        pod_name(pod),
                    ),
                }),
            ),
            // No Event either: the review may be forged, and an Event is an object too.
            Ok(Resolved::NamespaceNotEnabled) => {
                return (Answer::Allow, Skip::NamespaceNotEnabled.label(), None);
            }
            Ok(Resolved::RateLimited) => {
                return (
                    Answer::Deny {
                        code: 429,
                        message: format!(
                            "AgentMesh: more than {} AgentIdentities created per second; the pod's identity {identity} is not created yet: retry",
                            identities::CREATIONS_PER_SECOND
                        ),
                    },
                    "identity_rate_limited",
                    None,
                );
            }
            Err(error) => {
                tracing::warn!(%error, namespace = %request.namespace, %identity, "webhook: AgentIdentity lookup failed");
                return (
                    Answer::Deny {
                        code: 500,
                        // The API's error stays in the log: the review's sender is not
                        // authenticated.
                        message: format!(
                            "AgentMesh: cannot look up AgentIdentity {}/{identity}; retry",
                            request.namespace
                        ),
                    },
                    "identity_error",
                    None,
                );
            }
        };
        if let Err(message) = inject::inbound_port(pod) {
            return (
                Answer::Deny {
                    code: 400,
                    message: format!("AgentMesh: {message}"),
                },
                "bad_annotation",
                None,
            );
        }
        let ca = self.ctx.as_ref().and_then(|ctx| ctx.certs.bundle());
        let ca = ca.as_deref().map(|pem| String::from_utf8_lossy(pem));
        let ops = inject::patch(pod, spec, &self.settings, &identity, &key, ca.as_deref());
        (Answer::Patch(ops), "injected", note)
    }

    /// Publishes an Event in the pod's namespace, in the background. The pod has no name or
    /// UID yet at admission, so the Event is about its controller (the ReplicaSet, Job, …)
    /// when it has one, else about its namespace.
    fn publish(&self, request: &PodRequest, note: Note) {
        let Some(ctx) = self.ctx.clone() else {
            return;
        };
        if self.events.check().is_err() {
            tracing::debug!(
                reason = note.reason,
                "webhook: admission Event dropped (over the bound)"
            );
            return;
        }
        let reference = event_reference(&request.pod, &request.namespace);
        tokio::spawn(async move {
            ctx.events
                .publish(&reference, note.type_, note.reason, note.action, note.text)
                .await;
        });
    }
}

/// The name of a pod under admission: its name, else its `generateName` with `*`.
fn pod_name(pod: &Pod) -> String {
    match (&pod.metadata.name, &pod.metadata.generate_name) {
        (Some(name), _) if !name.is_empty() => name.clone(),
        (_, Some(prefix)) => format!("{prefix}*"),
        _ => "(unnamed)".into(),
    }
}

/// The object an admission Event is about: the pod's controller, else its namespace (both in
/// the pod's namespace, so `kubectl get events -n <namespace>` shows it).
pub fn event_reference(pod: &Pod, namespace: &str) -> ObjectReference {
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|owner| owner.controller == Some(true));
    match owner {
        Some(owner) => ObjectReference {
            api_version: Some(owner.api_version.clone()),
            kind: Some(owner.kind.clone()),
            name: Some(owner.name.clone()),
            namespace: Some(namespace.to_owned()),
            uid: Some(owner.uid.clone()),
            ..Default::default()
        },
        None => ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Namespace".into()),
            name: Some(namespace.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..Default::default()
        },
    }
}

impl server::Reviewer for Injector {
    async fn review(&self, body: Bytes) -> Result<Vec<u8>, BadRequest> {
        self.review_body(&body).await
    }

    fn refused(&self, reason: &'static str) {
        self.count(reason);
    }
}

/// Whether the API server runs native sidecars (Kubernetes ≥ 1.29).
pub fn supports_native_sidecars(major: &str, minor: &str) -> bool {
    let number = |text: &str| -> Option<u32> {
        text.trim_end_matches(|c: char| !c.is_ascii_digit())
            .parse()
            .ok()
    };
    match (number(major), number(minor)) {
        (Some(major), Some(minor)) => major > 1 || (major == 1 && minor >= 29),
        _ => false,
    }
}

/// Starts, on this replica, the loop that keeps the serving certificate of the webhook and the
/// trust API in `ctx.certs` (writing it, and the webhook configuration when the webhook is
/// enabled, on the leader).
pub fn start_certificates(ctx: &Arc<Context>) {
    let args = &ctx.config.args;
    let source = match args.webhook_certs {
        crate::config::CertSource::SelfManaged => certs::Source::SelfManaged {
            serving_lifetime: Duration::from_secs(args.webhook_cert_seconds),
            ca_lifetime: Duration::from_secs(args.webhook_ca_seconds),
            sans: certs::sans(
                &args.webhook_service,
                &args.namespace,
                &[
                    args.webhook_url.as_deref().unwrap_or_default(),
                    &args.trust_api_url,
                ],
            ),
        },
        crate::config::CertSource::CertManager => certs::Source::CertManager,
    };
    let options = config::Options {
        operator_namespace: args.namespace.clone(),
        watch_namespace: args.watch_namespace.clone(),
        url: args.webhook_url.clone(),
        service: args.webhook_service.clone(),
        failure_policy: args.webhook_failure_policy,
        timeout_seconds: args.webhook_timeout_seconds,
        creates_identities: args.auto_create_identities,
        cert_manager_certificate: (args.webhook_certs == crate::config::CertSource::CertManager)
            .then(|| {
                format!(
                    "{}/{}",
                    args.namespace, args.webhook_cert_manager_certificate
                )
            }),
        namespace_selector: args.webhook_namespace_selector.clone(),
        owner_cluster_role: args.owner_cluster_role.clone(),
    };
    let manager = certs::Manager {
        ctx: ctx.clone(),
        store: ctx.certs.clone(),
        refresh: certs::refresh_interval(&source),
        source,
        secret_name: args.webhook_secret.clone(),
        options,
        apply_webhook: args.webhook_enabled,
    };
    tokio::spawn(manager.run());
}

/// Binds the webhook's port and starts, on this replica, the HTTPS server and the
/// AgentIdentity cache (the certificate is [`start_certificates`]').
pub async fn start(
    ctx: Arc<Context>,
    identities: Store<AgentIdentity>,
    servers: &mut tokio::task::JoinSet<()>,
) -> anyhow::Result<()> {
    let args = &ctx.config.args;
    let version = ctx
        .client
        .apiserver_version()
        .await
        .context("reading the API server's version")?;
    let native_sidecar = supports_native_sidecars(&version.major, &version.minor);
    let settings = Settings {
        image: args.sidecar_image.clone(),
        native_sidecar,
        resources: inject::Resources {
            requests_cpu: args.sidecar_cpu_request.clone(),
            requests_memory: args.sidecar_memory_request.clone(),
            limits_cpu: args.sidecar_cpu_limit.clone(),
            limits_memory: args.sidecar_memory_limit.clone(),
        },
        trust_api_url: args.trust_api_url.clone(),
        operator_namespace: args.namespace.clone(),
        sidecar_env: Settings::seed_env(|name| std::env::var(name).ok()),
    };

    let listener = TcpListener::bind(args.webhook_addr)
        .await
        .with_context(|| format!("binding the webhook to {}", args.webhook_addr))?;
    tracing::info!(
        addr = %args.webhook_addr,
        native_sidecar,
        server_version = %version.git_version,
        configuration = %format!("agentmesh-sidecar-injector-{}", args.namespace),
        "webhook starting"
    );
    let client_auth = args
        .webhook_client_ca_file
        .as_ref()
        .map(|ca| server::ClientAuth {
            roots: ca.certificates.clone(),
            names: args.webhook_client_names.clone(),
        });
    if let Some(ca) = &args.webhook_client_ca_file {
        tracing::info!(
            ca = %ca.path.display(),
            names = ?args.webhook_client_names,
            "the webhook requires the API server's client certificate"
        );
    }
    let acceptor = server::acceptor(ctx.certs.clone(), client_auth.as_ref())?;
    let injector = Arc::new(Injector::new(
        settings,
        Identities::watched(&ctx, identities),
        ctx.metrics.clone(),
        Some(ctx.clone()),
    ));
    servers.spawn(server::serve(
        listener,
        acceptor,
        client_auth,
        injector,
        crate::runtime::shutdown_signal(),
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_sidecars_from_1_29() {
        assert!(supports_native_sidecars("1", "34"));
        assert!(supports_native_sidecars("1", "29+"));
        assert!(!supports_native_sidecars("1", "28"));
        assert!(!supports_native_sidecars("1", ""));
        assert!(supports_native_sidecars("2", "0"));
    }
}
