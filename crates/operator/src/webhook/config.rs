//! The MutatingWebhookConfiguration, as the operator applies it (server-side apply, field
//! manager `meshlogic-operator`). Pure: the object is built here, written by `certs.rs`.

use agentmesh_api::names::{FIELD_MANAGER, NEVER_INJECTED_NAMESPACES, annotations, labels};
use base64::Engine;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
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
#[derive(Clone, Debug, PartialEq)]
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
    /// More conditions on the namespaces, ANDed with the injection label and the exclusions.
    pub namespace_selector: Option<LabelSelector>,
    /// A ClusterRole that owns the configuration (a Helm installation's); else the Namespace.
    pub owner_cluster_role: Option<String>,
}

/// The object that owns what the operator makes for its installation: deleting it
/// garbage-collects them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub name: String,
    pub uid: String,
}

impl Owner {
    pub fn reference(&self) -> Value {
        json!({"apiVersion": self.api_version, "kind": self.kind, "name": self.name, "uid": self.uid})
    }
}

impl Options {
    /// `agentmesh-sidecar-injector-<operator namespace>`: one per installation.
    pub fn config_name(&self) -> String {
        format!("agentmesh-sidecar-injector-{}", self.operator_namespace)
    }
}

/// The MutatingWebhookConfiguration to apply. `ca_bundle` is the PEM of the CAs the API server
/// must trust (self-managed certificates); `owner` is the operator's Namespace or the
/// installation's ClusterRole, so that deleting the installation garbage-collects the
/// configuration.
pub fn desired(options: &Options, ca_bundle: Option<&[u8]>, owner: Option<&Owner>) -> Value {
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
    let mut match_labels = serde_json::Map::new();
    if let Some(extra) = &options.namespace_selector {
        for (key, value) in extra.match_labels.iter().flatten() {
            match_labels.insert(key.clone(), value.clone().into());
        }
        for expression in extra.match_expressions.iter().flatten() {
            expressions.push(serde_json::to_value(expression).unwrap_or_default());
        }
    }
    // The injection label last: an extra selector can narrow it, never replace it.
    match_labels.insert(
        labels::INJECT_NAMESPACE.into(),
        labels::INJECT_ENABLED.into(),
    );

    let mut metadata = json!({
        "name": options.config_name(),
        "labels": {
            labels::APP_NAME: labels::OPERATOR_APP_NAME,
            labels::APP_PART_OF: labels::PART_OF_VALUE,
            labels::APP_MANAGED_BY: FIELD_MANAGER,
            labels::APP_INSTANCE: options.operator_namespace,
        },
    });
    if let Some(owner) = owner {
        metadata["ownerReferences"] = json!([owner.reference()]);
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
                "matchLabels": match_labels,
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
            namespace_selector: None,
            owner_cluster_role: None,
        }
    }

    fn namespace_owner() -> Owner {
        Owner {
            api_version: "v1",
            kind: "Namespace",
            name: "agentmesh".into(),
            uid: "uid-1".into(),
        }
    }

    #[test]
    fn the_configuration_selects_labelled_namespaces_but_never_its_own_or_kube_system() {
        let config = desired(&options(), Some(b"PEM"), Some(&namespace_owner()));
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
    fn an_extra_namespace_selector_narrows_the_injection_label_but_cannot_replace_it() {
        let mut options = options();
        options.namespace_selector = Some(
            serde_json::from_value(json!({
                "matchLabels": {"team": "ml", "agentmesh-inject": "disabled"},
                "matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["dev"]}],
            }))
            .unwrap(),
        );
        let owner = Owner {
            api_version: "rbac.authorization.k8s.io/v1",
            kind: "ClusterRole",
            name: "agentmesh-operator".into(),
            uid: "uid-2".into(),
        };
        let config = desired(&options, None, Some(&owner));
        let selector = &config["webhooks"][0]["namespaceSelector"];
        assert_eq!(
            selector["matchLabels"],
            json!({"team": "ml", "agentmesh-inject": "enabled"})
        );
        assert_eq!(selector["matchExpressions"][0]["operator"], "NotIn");
        assert_eq!(
            selector["matchExpressions"][1],
            json!({"key": "env", "operator": "NotIn", "values": ["dev"]})
        );
        assert_eq!(
            config["metadata"]["ownerReferences"],
            json!([{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                    "name": "agentmesh-operator", "uid": "uid-2"}])
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
