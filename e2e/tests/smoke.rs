//! Smoke tests against the real API server: the CRDs install, print, explain and validate as
//! the contract says, and the API server calls a loopback HTTPS webhook on pod creation.

use std::sync::Arc;
use std::time::Duration;

use agentmesh_e2e::webhook::WebhookServer;
use agentmesh_e2e::{
    TestNamespace, cluster, example_header, example_in_namespace, repo_root, yaml_files,
};
use serde_json::{Value, json};

const CRDS: [&str; 3] = [
    "agentidentities.agentmesh.io",
    "trustpolicies.agentmesh.io",
    "meshlogicagents.agentmesh.io",
];

#[test]
fn crds_are_accepted_structural_and_established() {
    let cluster = cluster();
    cluster.ensure_crds();
    for crd in CRDS {
        let conditions =
            cluster.kubectl_ok(&["get", "crd", crd, "-o", "jsonpath={.status.conditions}"]);
        let conditions: Vec<Value> = serde_json::from_str(&conditions).unwrap();
        let status = |type_: &str| {
            conditions
                .iter()
                .find(|c| c["type"] == type_)
                .map(|c| c["status"].as_str().unwrap().to_owned())
        };
        assert_eq!(
            status("Established").as_deref(),
            Some("True"),
            "{crd}: {conditions:?}"
        );
        assert_eq!(
            status("NamesAccepted").as_deref(),
            Some("True"),
            "{crd}: {conditions:?}"
        );
        assert_eq!(
            status("NonStructuralSchema"),
            None,
            "{crd} is not structural: {conditions:?}"
        );
    }
}

/// Applies every example into a fresh namespace.
fn apply_examples(namespace: &TestNamespace) {
    for path in yaml_files(&repo_root().join("examples")) {
        let yaml = example_in_namespace(&path, &namespace.name).unwrap();
        cluster().apply(&namespace.name, &yaml);
    }
}

/// The header line and the row of `name` in `kubectl get` output, split on runs of spaces.
fn table(output: &str, name: &str) -> (Vec<String>, Vec<String>) {
    let split = |line: &str| {
        line.split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let mut lines = output.lines();
    let header = split(lines.next().expect("a header line"));
    let row = lines
        .map(split)
        .find(|row| {
            row.first()
                .is_some_and(|first| first == name || first.ends_with(&format!("/{name}")))
        })
        .unwrap_or_else(|| panic!("no row for {name} in:\n{output}"));
    (header, row)
}

#[test]
fn kubectl_get_prints_the_printer_columns() {
    let cluster = cluster();
    cluster.ensure_crds();
    let namespace = TestNamespace::create("columns", &[]);
    apply_examples(&namespace);
    let ns = namespace.name.as_str();

    let (header, row) = table(
        &cluster.kubectl_ok(&["get", "trustpolicies", "-n", ns]),
        "research-standard",
    );
    assert_eq!(
        header,
        ["NAME", "MODE", "MIN-SCORE", "AGENTS", "VIOLATIONS", "AGE"]
    );
    assert_eq!(&row[1..3], ["enforce", "300"]);

    // Status is the operator's to write; before it runs, the status columns are empty.
    let (header, _) = table(
        &cluster.kubectl_ok(&["get", "agentidentities", "-n", ns]),
        "research-agent",
    );
    assert_eq!(header, ["NAME", "DID", "SCORE", "TIER", "PODS", "AGE"]);

    let (header, row) = table(
        &cluster.kubectl_ok(&["get", "mla", "-n", ns]),
        "meshlogic-agent",
    );
    assert_eq!(header, ["NAME", "TIER", "DESIRED", "READY", "AGE"]);
    assert_eq!(row[1], "2");

    // Short names and the category.
    cluster.kubectl_ok(&["get", "agentid,tp,mla", "-n", ns]);
    let all = cluster.kubectl_ok(&["get", "agentmesh", "-n", ns, "-o", "name"]);
    for expected in [
        "agentidentity.agentmesh.io/research-agent",
        "agentidentity.agentmesh.io/summarizer",
        "trustpolicy.agentmesh.io/research-standard",
        "meshlogicagent.agentmesh.io/meshlogic-agent",
    ] {
        assert!(
            all.lines().any(|line| line == expected),
            "`kubectl get agentmesh` lacks {expected}:\n{all}"
        );
    }
}

#[test]
fn the_api_server_applies_the_schema_defaults() {
    let cluster = cluster();
    cluster.ensure_crds();
    let namespace = TestNamespace::create("defaults", &[]);
    let yaml = format!(
        "apiVersion: agentmesh.io/v1alpha1\nkind: MeshLogicAgent\nmetadata:\n  name: minimal\n  namespace: {}\nspec:\n  customerId: acme\n",
        namespace.name
    );
    cluster.apply(&namespace.name, &yaml);
    let stored =
        cluster.kubectl_ok(&["get", "mla", "minimal", "-n", &namespace.name, "-o", "json"]);
    let spec = serde_json::from_str::<Value>(&stored).unwrap()["spec"].clone();
    assert_eq!(spec["safetyTier"], 2);
    assert_eq!(spec["region"], "ap-southeast-2");
    assert_eq!(spec["ebpf"]["ringBufferSize"], 1048576);
    assert_eq!(spec["ebpf"]["mutePaths"], json!(["/proc", "/sys", "/dev"]));
    assert_eq!(spec["privacy"]["epsilon"].as_f64(), Some(1.0));
    assert_eq!(spec["privacy"]["enableNoise"], true);
    assert_eq!(
        spec["resources"]["limits"],
        json!({"cpu": "500m", "memory": "256Mi"})
    );
}

#[test]
fn kubectl_explain_shows_the_descriptions() {
    let cluster = cluster();
    cluster.ensure_crds();
    // Explain reads the published OpenAPI, which can lag the CRD by a moment.
    let mut last = String::new();
    for _ in 0..50 {
        let output = cluster.kubectl(&["explain", "agentidentity.spec"]);
        last = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() && last.contains("capabilities") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for expected in [
        "capabilities",
        "What the agent may do",
        "delegation",
        "publicKey",
        "selector",
    ] {
        assert!(
            last.contains(expected),
            "`kubectl explain agentidentity.spec` lacks {expected:?}:\n{last}"
        );
    }
    let nested = cluster.kubectl_ok(&["explain", "meshlogicagent.spec.ebpf.ringBufferSize"]);
    assert!(nested.contains("power of two"), "{nested}");
}

#[test]
fn invalid_resources_are_refused_naming_the_field() {
    let cluster = cluster();
    cluster.ensure_crds();
    let namespace = TestNamespace::create("invalid", &[]);
    let files = yaml_files(&repo_root().join("examples/invalid"));
    assert!(
        files.len() >= 8,
        "expected the invalid examples, found {}",
        files.len()
    );
    for path in files {
        let field = example_header(&path, "expect-error").expect("an expect-error header");
        let yaml = example_in_namespace(&path, &namespace.name).unwrap();
        let output =
            cluster.kubectl_with_input(&["apply", "-n", &namespace.name, "-f", "-"], Some(&yaml));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{} was accepted", path.display());
        assert!(
            stderr.contains(&field),
            "{}: the error does not name {field}:\n{stderr}",
            path.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_calls_a_loopback_https_webhook_on_pod_creation() {
    let server = WebhookServer::start(Arc::new(|review: &Value| {
        (review["request"]["kind"]["kind"] == "Pod").then(|| {
            json!([{"op": "add", "path": "/metadata/annotations", "value": {"agentmesh.io/e2e-webhook": "called"}}])
        })
    }))
    .await
    .unwrap();
    let namespace = tokio::task::spawn_blocking(|| {
        TestNamespace::create("webhook", &[("agentmesh-e2e-webhook", "on")])
    })
    .await
    .unwrap();
    let config_name = namespace.name.clone();
    let webhook = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": config_name},
        "webhooks": [{
            "name": "e2e.agentmesh.io",
            "clientConfig": {"url": format!("https://{}/mutate", server.addr), "caBundle": server.ca_bundle()},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace.name}},
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "failurePolicy": "Fail",
            "timeoutSeconds": 5,
        }]
    });
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "agent", "namespace": namespace.name},
        "spec": {"nodeSelector": agentmesh_e2e::fake_nodes(), "tolerations": agentmesh_e2e::fake_node_tolerations(), "containers": [{"name": "agent", "image": "registry.invalid/agent:1"}]}
    });
    let ns = namespace.name.clone();
    let stored = tokio::task::spawn_blocking(move || {
        let cluster = agentmesh_e2e::cluster();
        cluster.apply(&ns, &webhook.to_string()); // cluster-scoped: -n is ignored
        // The API server picks up a new webhook configuration within a moment; until then a
        // pod would be created without the call. Retry with fresh pods until one is mutated.
        let mut last = Value::Null;
        for attempt in 0..50 {
            let mut pod = pod.clone();
            pod["metadata"]["name"] = format!("agent-{attempt}").into();
            cluster.apply(&ns, &pod.to_string());
            last = serde_json::from_str(&cluster.kubectl_ok(&[
                "get",
                "pod",
                &format!("agent-{attempt}"),
                "-n",
                &ns,
                "-o",
                "json",
            ]))
            .unwrap();
            if last["metadata"]["annotations"]["agentmesh.io/e2e-webhook"] == "called" {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        cluster.kubectl(&["delete", "mutatingwebhookconfiguration", &config_name]);
        last
    })
    .await
    .unwrap();

    assert_eq!(
        stored["metadata"]["annotations"]["agentmesh.io/e2e-webhook"], "called",
        "stored pod: {stored}"
    );
    let seen = server.seen.lock().unwrap();
    let review = seen
        .iter()
        .find(|r| r["request"]["kind"]["kind"] == "Pod")
        .expect("a Pod review reached the server");
    assert_eq!(review["kind"], "AdmissionReview");
    assert_eq!(review["request"]["operation"], "CREATE");
    assert_eq!(review["request"]["namespace"], namespace.name.as_str());
}
