//! The MutatingWebhookConfiguration, as the operator applies it (server-side apply, field
//! manager `meshlogic-operator`). Pure: the object is built here, written by `certs.rs`.

use agentmesh_api::names::{FIELD_MANAGER, NEVER_INJECTED_NAMESPACES, annotations, labels};
use base64::Engine;
use serde_json::{Value, json};

use super::server::PATH;
use crate::config::FailurePolicy;

/// Name of the single webhook inside the configuration.
pub const WEBHOOK_NAME: &str = "inject.agentmesh.io";
/// Namespace label every namespace carries (Kubernetes ≥ 1.21).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// cert-manager's CA injector fills `caBundle` from this Certificate (`<namespace>/<name>`).
pub const CERT_MANAGER_INJECT_CA_FROM: &str = "cert-manager.io/inject-ca-from";

/// Everything the configuration depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The operator's namespace: part of the configuration's name (unique per installation),
    /// never injected.
    pub operator_namespace: String,
    /// When the operator watches one namespace, only that namespace is injected.
    pub watch_namespace: Option<String>,
    /// `clientConfig.url` when set (a webhook outside the cluster, or the local e2e cluster);
    /// otherwise `clientConfig.service`.
    pub url: Option<String>,
    /// The Service in front of the operator's replicas (port 8443).
    pub service: String,
    pub failure_policy: FailurePolicy,
    pub timeout_seconds: u8,
    /// The webhook creates AgentIdentities (not on dry runs): `sideEffects: NoneOnDryRun`;
    /// otherwise `None`.
    pub creates_identities: bool,
    /// cert-manager mode: the Certificate (`<namespace>/<name>`) whose CA cert-manager
    /// injects; the operator then leaves `caBundle` alone.
    pub cert_manager_certificate: Option<String>,
}

impl Options {
    /// `agentmesh-sidecar-injector-<operator namespace>`: one per installation.
    pub fn config_name(&self) -> String {
        format!("agentmesh-sidecar-injector-{}", self.operator_namespace)
    }
}

/// The MutatingWebhookConfiguration to apply. `ca_bundle` is the PEM of the CAs the API server
/// must trust (self-managed certificates); `owner_uid` is the UID of the operator's Namespace,
/// so that deleting the installation's namespace garbage-collects the configuration.
pub fn desired(options: &Options, ca_bundle: Option<&[u8]>, owner_uid: Option<&str>) -> Value {
    let mut client_config = match &options.url {
        Some(url) => json!({"url": url}),
        None => json!({"service": {
            "name": options.service,
            "namespace": options.operator_namespace,
            "port": agentmesh_api::names::ports::WEBHOOK,
            "path": PATH,
        }}),
    };
    if options.cert_manager_certificate.is_none()
        && let Some(bundle) = ca_bundle
    {
        client_config["caBundle"] = base64::engine::general_purpose::STANDARD
            .encode(bundle)
            .into();
    }

    let mut excluded: Vec<&str> = NEVER_INJECTED_NAMESPACES.to_vec();
    excluded.push(&options.operator_namespace);
    let mut expressions = vec![json!({
        "key": NAMESPACE_NAME_LABEL, "operator": "NotIn", "values": excluded,
    })];
    if let Some(watched) = &options.watch_namespace {
        expressions
            .push(json!({"key": NAMESPACE_NAME_LABEL, "operator": "In", "values": [watched]}));
    }

    let mut metadata = json!({
        "name": options.config_name(),
        "labels": {
            labels::APP_NAME: labels::OPERATOR_APP_NAME,
            labels::APP_PART_OF: labels::PART_OF_VALUE,
            labels::APP_MANAGED_BY: FIELD_MANAGER,
            labels::APP_INSTANCE: options.operator_namespace,
        },
    });
    if let Some(uid) = owner_uid {
        metadata["ownerReferences"] = json!([{
            "apiVersion": "v1", "kind": "Namespace", "name": options.operator_namespace, "uid": uid,
        }]);
    }
    if let Some(certificate) = &options.cert_manager_certificate {
        metadata["annotations"] = json!({ CERT_MANAGER_INJECT_CA_FROM: certificate });
    }

    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": metadata,
        "webhooks": [{
            "name": WEBHOOK_NAME,
            "admissionReviewVersions": ["v1"],
            "clientConfig": client_config,
            "rules": [{
                "operations": ["CREATE"],
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "resources": ["pods"],
                "scope": "Namespaced",
            }],
            "namespaceSelector": {
                "matchLabels": {labels::INJECT_NAMESPACE: labels::INJECT_ENABLED},
                "matchExpressions": expressions,
            },
            // Pods labelled `agentmesh.io/inject: "false"` are not even sent; the annotation
            // of the same name is honoured by the webhook itself (with an Event).
            "objectSelector": {"matchExpressions": [{
                "key": annotations::INJECT, "operator": "NotIn", "values": ["false"],
            }]},
            "sideEffects": if options.creates_identities { "NoneOnDryRun" } else { "None" },
            "timeoutSeconds": options.timeout_seconds,
            "reinvocationPolicy": "IfNeeded",
            "matchPolicy": "Equivalent",
            "failurePolicy": match options.failure_policy {
                FailurePolicy::Fail => "Fail",
                FailurePolicy::Ignore => "Ignore",
            },
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> Options {
        Options {
            operator_namespace: "agentmesh".into(),
            watch_namespace: None,
            url: None,
            service: "agentmesh".into(),
            failure_policy: FailurePolicy::Fail,
            timeout_seconds: 10,
            creates_identities: true,
            cert_manager_certificate: None,
        }
    }

    #[test]
    fn the_configuration_selects_labelled_namespaces_but_never_its_own_or_kube_system() {
        let config = desired(&options(), Some(b"PEM"), Some("uid-1"));
        let webhook = &config["webhooks"][0];
        assert_eq!(
            config["metadata"]["name"],
            "agentmesh-sidecar-injector-agentmesh"
        );
        assert_eq!(config["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        assert_eq!(
            webhook["namespaceSelector"]["matchLabels"]["agentmesh-inject"],
            "enabled"
        );
        assert_eq!(
            webhook["namespaceSelector"]["matchExpressions"][0]["values"],
            json!(["kube-system", "agentmesh"])
        );
        assert_eq!(webhook["clientConfig"]["service"]["port"], 8443);
        assert_eq!(webhook["clientConfig"]["service"]["path"], "/inject");
        assert_eq!(webhook["clientConfig"]["caBundle"], "UEVN");
        assert_eq!(webhook["failurePolicy"], "Fail");
        assert_eq!(webhook["reinvocationPolicy"], "IfNeeded");
        assert_eq!(webhook["sideEffects"], "NoneOnDryRun");
        assert_eq!(
            webhook["objectSelector"]["matchExpressions"][0]["key"],
            "agentmesh.io/inject"
        );
    }

    #[test]
    fn a_scoped_operator_injects_only_its_namespace_through_its_url() {
        let mut options = options();
        options.watch_namespace = Some("team".into());
        options.url = Some("https://127.0.0.1:1234/inject".into());
        options.failure_policy = FailurePolicy::Ignore;
        options.creates_identities = false;
        let config = desired(&options, None, None);
        let webhook = &config["webhooks"][0];
        assert_eq!(
            webhook["namespaceSelector"]["matchExpressions"][1],
            json!({"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team"]})
        );
        assert_eq!(
            webhook["clientConfig"],
            json!({"url": "https://127.0.0.1:1234/inject"})
        );
        assert_eq!(webhook["failurePolicy"], "Ignore");
        assert_eq!(webhook["sideEffects"], "None");
        assert!(config["metadata"].get("ownerReferences").is_none());
    }

    #[test]
    fn in_cert_manager_mode_the_ca_bundle_is_left_to_cert_manager() {
        let mut options = options();
        options.cert_manager_certificate = Some("agentmesh/agentmesh-webhook".into());
        let config = desired(&options, Some(b"PEM"), None);
        assert_eq!(
            config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
            "agentmesh/agentmesh-webhook"
        );
        assert!(
            config["webhooks"][0]["clientConfig"]
                .get("caBundle")
                .is_none()
        );
    }
}
