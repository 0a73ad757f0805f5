//! Golden tests of the injector: each `tests/golden/<case>.yaml` (a pod, its namespace, the
//! API server's sidecar support and the state of its AgentIdentity) goes through the whole
//! AdmissionReview path; the answer (metric reason, allowed, JSON patch) must equal
//! `tests/golden/<case>.patch.json`. `UPDATE_GOLDEN=1 cargo test -p meshlogic-operator --test
//! golden` rewrites the files; otherwise a stale or missing file fails the test, as does a
//! golden file without its case.
//!
//! Besides the comparison, every patch must apply to the pod, give a pod with exactly one
//! sidecar and `AGENTMESH_PROXY_URL` in every agent container, and a second pass over the
//! patched pod must inject nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use meshlogic_operator::metrics::Metrics;
use meshlogic_operator::webhook::inject::{Key, Settings};
use meshlogic_operator::webhook::{Identities, Injector, inject, review};
use serde_json::{Value, json};

const OPERATOR_NAMESPACE: &str = "agentmesh";

fn dir() -> PathBuf {
    // The running test's manifest directory, not the one compiled in (see e2e's repo_root).
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("tests/golden")
}

struct Case {
    namespace: String,
    native: bool,
    /// `managed` (default), `user-supplied` or `missing`.
    identity: String,
    pod: Value,
}

fn read_case(path: &Path) -> Case {
    let text = std::fs::read_to_string(path).unwrap();
    let value: Value =
        serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Case {
        namespace: value["namespace"].as_str().expect("namespace").to_owned(),
        native: value["native"].as_bool().unwrap_or(true),
        identity: value["identity"].as_str().unwrap_or("managed").to_owned(),
        pod: value["pod"].clone(),
    }
}

fn admission_review(namespace: &str, pod: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "00000000-0000-0000-0000-000000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
        }
    }))
    .unwrap()
}

/// Runs one review; (metric reason, allowed, patch).
async fn run(case: &Case, pod: &Value) -> (String, bool, Vec<Value>) {
    let typed: Pod = serde_json::from_value(pod.clone()).unwrap();
    let identity = inject::identity_of(&typed);
    // The identity admits the pod's account: these cases are about what is injected (the
    // refusal of another account's pod has its own test).
    let account = inject::service_account_of(&typed);
    let mut fixed = HashMap::new();
    match case.identity.as_str() {
        "managed" => {
            fixed.insert((case.namespace.clone(), identity), (Key::Managed, account));
        }
        "user-supplied" => {
            fixed.insert(
                (case.namespace.clone(), identity),
                (Key::UserSupplied, account),
            );
        }
        "missing" => {}
        other => panic!("unknown identity state {other}"),
    }
    let (metrics, registry) = Metrics::new();
    let injector = Injector::new(
        Settings::seed(OPERATOR_NAMESPACE, case.native),
        Identities::fixed(fixed, true),
        metrics,
        None,
    );
    let body = injector
        .review_body(&admission_review(&case.namespace, pod))
        .await
        .expect("a valid review");
    let (allowed, patch) = review::decode_response(&body).expect("an AdmissionReview response");
    let exposition = meshlogic_operator::metrics::encode(&registry);
    let reasons: Vec<String> = exposition
        .lines()
        .filter(|line| {
            line.starts_with("meshlogic_operator_admissions_total{") && line.ends_with(" 1")
        })
        .filter_map(|line| line.split('"').nth(1).map(str::to_owned))
        .collect();
    assert_eq!(reasons.len(), 1, "one admission counted: {exposition}");
    (reasons[0].clone(), allowed, patch)
}

fn check_patched(name: &str, pod: &Value, patch: &[Value]) -> Value {
    let mut patched = pod.clone();
    let ops: json_patch::Patch = serde_json::from_value(Value::Array(patch.to_vec())).unwrap();
    json_patch::patch(&mut patched, &ops)
        .unwrap_or_else(|e| panic!("{name}: the patch does not apply: {e}"));
    let typed: Pod = serde_json::from_value(patched.clone()).unwrap();
    let spec = typed.spec.as_ref().unwrap();
    let sidecars = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .filter(|c| c.name == "agentmesh-sidecar")
        .count();
    assert_eq!(sidecars, 1, "{name}: one sidecar in {patched}");
    for container in spec
        .containers
        .iter()
        .filter(|c| c.name != "agentmesh-sidecar")
    {
        let count = container
            .env
            .iter()
            .flatten()
            .filter(|e| e.name == "AGENTMESH_PROXY_URL")
            .count();
        assert_eq!(
            count, 1,
            "{name}: container {} has AGENTMESH_PROXY_URL {count} times",
            container.name
        );
    }
    let mut volumes: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    let all = volumes.len();
    volumes.sort_unstable();
    volumes.dedup();
    assert_eq!(volumes.len(), all, "{name}: duplicate volume names");
    patched
}

#[tokio::test]
async fn golden_patches() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 10, "the golden cases are missing");
    let mut failures = Vec::new();
    for path in &cases {
        let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
        let case = read_case(path);
        let (reason, allowed, patch) = run(&case, &case.pod).await;
        assert!(allowed, "{name}: refused");
        let answer = json!({"reason": reason, "allowed": allowed, "patch": patch});

        if !patch.is_empty() {
            let patched = check_patched(&name, &case.pod, &patch);
            let (again, _, second) = run(&case, &patched).await;
            assert!(
                second.is_empty(),
                "{name}: a second pass patches again: {second:?}"
            );
            assert_eq!(again, "already_injected", "{name}: second pass");
        }

        let golden = dir().join(format!("{name}.patch.json"));
        let text = serde_json::to_string_pretty(&answer).unwrap() + "\n";
        if update {
            std::fs::write(&golden, text).unwrap();
            continue;
        }
        match std::fs::read_to_string(&golden) {
            Err(_) => failures.push(format!(
                "{name}: no {} (run with UPDATE_GOLDEN=1)",
                golden.display()
            )),
            Ok(expected) => {
                let expected: Value = serde_json::from_str(&expected).unwrap();
                if expected != answer {
                    failures.push(format!(
                        "{name}: stale golden file {} (run with UPDATE_GOLDEN=1 and review the diff); got:\n{text}",
                        golden.display()
                    ));
                }
            }
        }
    }
    // A golden file without its case is stale too.
    for entry in std::fs::read_dir(dir()).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_str().unwrap().to_owned();
        if let Some(stem) = file.strip_suffix(".patch.json")
            && !dir().join(format!("{stem}.yaml")).exists()
        {
            if update {
                std::fs::remove_file(&path).unwrap();
            } else {
                failures.push(format!("{file} has no case {stem}.yaml"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn settings_change_the_patch() {
    // A guard that the comparison is real: other resources give another patch.
    let case = read_case(&dir().join("minimal.yaml"));
    let (_, _, seed) = run(&case, &case.pod).await;
    let typed: Pod = serde_json::from_value(case.pod.clone()).unwrap();
    let mut settings = Settings::seed(OPERATOR_NAMESPACE, true);
    settings.resources.limits_memory = "1Gi".into();
    let spec = typed.spec.as_ref().unwrap();
    let other = inject::patch(&typed, spec, &settings, "default", &Key::Managed, None);
    assert_ne!(seed, other);
    let sidecar = other
        .iter()
        .find(|op| op["path"] == "/spec/initContainers")
        .expect("the sidecar");
    assert_eq!(sidecar["value"][0]["resources"]["limits"]["memory"], "1Gi");
    assert_eq!(sidecar["value"][0]["restartPolicy"], "Always");
}

/// The attack: a pod author labels a pod `agentmesh.io/identity: <other>` to get the other
/// identity's key mounted. A pod of another ServiceAccount than the identity admits is refused,
/// naming both accounts; the identity's own account, or the account it is bound to, passes.
#[tokio::test]
async fn a_pod_of_another_service_account_is_refused_the_identitys_key() {
    let pod = |account: &str| {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "thief", "labels": {"agentmesh.io/identity": "payments"}},
               "spec": {"serviceAccountName": account, "containers": [{"name": "a", "image": "x"}]}})
    };
    let review = |bound_to: &str, account: &str| {
        let mut fixed = HashMap::new();
        fixed.insert(
            ("team-a".to_owned(), "payments".to_owned()),
            (Key::Managed, bound_to.to_owned()),
        );
        let (metrics, registry) = Metrics::new();
        let injector = Injector::new(
            Settings::seed(OPERATOR_NAMESPACE, true),
            Identities::fixed(fixed, true),
            metrics,
            None,
        );
        let body = admission_review("team-a", &pod(account));
        async move {
            let answer = injector.review_body(&body).await.unwrap();
            let response: Value = serde_json::from_slice(&answer).unwrap();
            let exposition = meshlogic_operator::metrics::encode(&registry);
            (response["response"].clone(), exposition)
        }
    };
    for (bound_to, account) in [
        ("payments", "default"),
        ("payments", "other"),
        ("runner", "payments"),
    ] {
        let (response, exposition) = review(bound_to, account).await;
        assert_eq!(
            response["allowed"], false,
            "{bound_to}/{account}: {response}"
        );
        assert_eq!(response["status"]["code"], 403);
        let message = response["status"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("ServiceAccount \"{account}\""))
                && message.contains(&format!("ServiceAccount \"{bound_to}\"")),
            "{message}"
        );
        assert!(
            exposition.contains(
                "meshlogic_operator_admissions_total{reason=\"wrong_service_account\"} 1"
            ),
            "{exposition}"
        );
    }
    for (bound_to, account) in [("payments", "payments"), ("runner", "runner")] {
        let (response, _) = review(bound_to, account).await;
        assert_eq!(
            response["allowed"], true,
            "{bound_to}/{account}: {response}"
        );
        assert!(response["patch"].is_string(), "injected: {response}");
    }
}

/// The attack: post forged AdmissionReviews, each naming a new identity, to have the operator
/// create AgentIdentities (and key Secrets) without end. Past the burst, creation stops and the
/// pods are refused with 429 (which the ReplicaSet controller retries).
#[tokio::test]
async fn identity_creation_is_bounded() {
    let (metrics, registry) = Metrics::new();
    let injector = Injector::new(
        Settings::seed(OPERATOR_NAMESPACE, true),
        Identities::fixed(HashMap::new(), true),
        metrics,
        None,
    );
    let burst = meshlogic_operator::webhook::CREATIONS_BURST as usize;
    let mut codes = Vec::new();
    for i in 0..burst + 5 {
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
                         "metadata": {"name": format!("p{i}"), "labels": {"agentmesh.io/identity": format!("forged-{i}")}},
                         "spec": {"serviceAccountName": format!("forged-{i}"), "containers": [{"name": "a", "image": "x"}]}});
        let answer = injector
            .review_body(&admission_review("team-a", &pod))
            .await
            .unwrap();
        let response: Value = serde_json::from_slice(&answer).unwrap();
        codes.push(if response["response"]["allowed"] == true {
            200
        } else {
            response["response"]["status"]["code"].as_i64().unwrap()
        });
    }
    // A few may be created in the time the loop takes (5 a second): at most one more here.
    let created = codes.iter().filter(|c| **c == 200).count();
    assert!((burst..=burst + 1).contains(&created), "{codes:?}");
    assert!(codes[burst + 1..].iter().all(|c| *c == 429), "{codes:?}");
    let exposition = meshlogic_operator::metrics::encode(&registry);
    assert!(
        exposition
            .contains("meshlogic_operator_admissions_total{reason=\"identity_rate_limited\"}"),
        "{exposition}"
    );
}
