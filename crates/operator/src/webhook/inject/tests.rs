use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::patch::pointer_segment;
use super::*;

#[test]
fn the_inbound_port_annotation_is_a_port_or_an_error_naming_it() {
    let pod = |value: &str| {
        let mut pod = Pod::default();
        pod.metadata.annotations = Some(BTreeMap::from([(
            annotations::INBOUND_PORT.to_owned(),
            value.to_owned(),
        )]));
        pod
    };
    assert_eq!(inbound_port(&Pod::default()), Ok(None));
    assert_eq!(inbound_port(&pod("3000")), Ok(Some(3000)));
    for bad in ["0", "70000", "http", "-1", ""] {
        let error = inbound_port(&pod(bad)).unwrap_err();
        assert!(
            error.starts_with("annotation agentmesh.io/inbound-port:"),
            "{error}"
        );
    }
    let container = sidecar_container(
        &Settings::seed("agentmesh", true),
        "a",
        &Key::Managed,
        Some(3000),
        None,
    );
    assert!(
        container["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == ENV_INBOUND_UPSTREAM && e["value"] == "http://127.0.0.1:3000")
    );
}

/// The sidecar's settings are the operator's, as values: nothing of the pod's namespace (no
/// `envFrom`), and neither the key nor the proxy URL, which the injector sets itself.
#[test]
fn the_sidecar_is_configured_by_the_operators_settings_not_the_pods_namespace() {
    let operator_env = BTreeMap::from([
        ("AGENTMESH_POLICY", "strict"),
        ("AGENTMESH_LOG_LEVEL", "DEBUG"),
        ("AGENTMESH_AGENT_PRIVATE_KEY", "-----BEGIN PRIVATE KEY-----"),
        ("AGENTMESH_PROXY_URL", "http://elsewhere"),
        ("UNRELATED", "x"),
    ]);
    let mut settings = Settings::seed("agentmesh", true);
    settings.sidecar_env = Settings::seed_env(|name| operator_env.get(name).map(|v| v.to_string()));
    assert_eq!(
        settings.sidecar_env,
        [
            ("AGENTMESH_LOG_LEVEL".to_string(), "DEBUG".to_string()),
            ("AGENTMESH_POLICY".to_string(), "strict".to_string()),
        ]
    );
    let container = sidecar_container(&settings, "a", &Key::Managed, None, Some("PEM"));
    assert!(container["envFrom"].is_null(), "{container}");
    // The trust API's CA is a value too: what the operator's certificate Secret holds.
    assert!(
        container["env"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": ENV_TRUST_API_CA, "value": "PEM"}))
    );
    let env = container["env"].as_array().unwrap();
    assert!(env.contains(&json!({"name": "AGENTMESH_POLICY", "value": "strict"})));
    let key = |container: &Value| -> Vec<Value> {
        container["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["name"] == "AGENTMESH_AGENT_PRIVATE_KEY")
            .cloned()
            .collect()
    };
    // A key the operator made is fetched from the trust API: never in the pod spec.
    assert_eq!(key(&container), Vec::<Value>::new());
    let mounts = container["volumeMounts"].to_string();
    assert!(!mounts.contains(KEY_VOLUME), "{mounts}");
    // A key of the identity's own: the file of its owner's Secret.
    let own = sidecar_container(&settings, "a", &Key::UserSupplied, None, Some("PEM"));
    assert_eq!(
        key(&own),
        [json!({"name": "AGENTMESH_AGENT_PRIVATE_KEY", "value": KEY_PATH})]
    );
    assert!(own["volumeMounts"].to_string().contains(KEY_VOLUME));
}

fn pod(value: Value) -> Pod {
    serde_json::from_value(value).unwrap()
}

#[test]
fn the_identity_is_the_label_else_the_service_account() {
    let labelled = pod(json!({
        "metadata": {"labels": {"agentmesh.io/identity": "researcher"}},
        "spec": {"serviceAccountName": "sa", "containers": []}
    }));
    assert_eq!(identity_of(&labelled), "researcher");
    let by_sa = pod(json!({"spec": {"serviceAccountName": "sa", "containers": []}}));
    assert_eq!(identity_of(&by_sa), "sa");
    assert_eq!(identity_of(&pod(json!({}))), "default");
}

#[test]
fn namespaces_come_before_the_pod_in_the_skip_order() {
    let settings = Settings::seed("agentmesh", true);
    let opted_out = pod(json!({"metadata": {"annotations": {"agentmesh.io/inject": "false"}}}));
    assert_eq!(
        skip_reason(&opted_out, "kube-system", &settings),
        Some(Skip::SystemNamespace)
    );
    assert_eq!(
        skip_reason(&opted_out, "agentmesh", &settings),
        Some(Skip::OperatorNamespace)
    );
    assert_eq!(
        skip_reason(&opted_out, "team", &settings),
        Some(Skip::OptedOut)
    );
    let opted_in = pod(json!({"metadata": {"annotations": {"agentmesh.io/inject": "true"}}}));
    assert_eq!(skip_reason(&opted_in, "team", &settings), None);
}

#[test]
fn pointer_segments_are_escaped() {
    assert_eq!(
        pointer_segment("agentmesh.io/identity"),
        "agentmesh.io~1identity"
    );
    assert_eq!(pointer_segment("a~b"), "a~0b");
}
