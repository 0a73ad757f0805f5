//! The sidecar-injection webhook on the real API server: the operator runs as a host process
//! (its own namespace for its Lease and certificate Secret, scoped with
//! `MESHLOGIC_WATCH_NAMESPACE` to the application namespace of the test), registers its
//! MutatingWebhookConfiguration with `clientConfig.url` on loopback, and the API server calls
//! it for every pod created in the labelled namespace.

use std::time::{Duration, Instant};

use agentmesh_e2e::operator::OperatorProcess;
use agentmesh_e2e::{TestNamespace, cluster};
use serde_json::{Value, json};

/// The operator's namespace and the application namespace it watches.
struct Installation {
    operator: OperatorProcess,
    ops: TestNamespace,
    app: TestNamespace,
}

impl Installation {
    /// Starts an operator for a fresh application namespace, labelled for injection with
    /// `kubectl label namespace`, and waits until the API server calls the webhook.
    fn start(prefix: &str, env: &[(&str, &str)]) -> Self {
        let cluster = cluster();
        cluster.ensure_crds();
        let ops = TestNamespace::create(&format!("{prefix}-ops"), &[]);
        let app = TestNamespace::create(prefix, &[]);
        cluster.kubectl_ok(&["label", "namespace", &app.name, "agentmesh-inject=enabled"]);
        let mut all_env = vec![("POD_NAMESPACE", ops.name.as_str())];
        all_env.push(("MESHLOGIC_WATCH_NAMESPACE", app.name.as_str()));
        all_env.push(("MESHLOGIC_AGENT_NAMESPACES", app.name.as_str()));
        all_env.extend_from_slice(env);
        let mut operator = OperatorProcess::start(&ops.name, "op-0", &all_env);
        let config = config_name(&ops.name);
        operator.wait_until(Duration::from_secs(60), "the webhook configuration", |_| {
            cluster
                .kubectl(&[
                    "get",
                    "mutatingwebhookconfiguration",
                    &config,
                    "-o",
                    "jsonpath={.webhooks[0].clientConfig.caBundle}",
                ])
                .stdout
                .len()
                > 100
        });
        let installation = Self { operator, ops, app };
        // The API server picks a new configuration up within moments: probe with throw-away pods.
        installation.wait_injecting();
        installation
    }

    fn wait_injecting(&self) {
        let start = Instant::now();
        for attempt in 0.. {
            let name = format!("probe-{attempt}");
            let output = cluster().kubectl_with_input(
                &["apply", "-n", &self.app.name, "-f", "-"],
                Some(&pod(&name, &[]).to_string()),
            );
            if output.status.success()
                && is_injected(
                    &agentmesh_e2e::cluster()
                        .get("pod", &name, Some(&self.app.name))
                        .expect("the pod exists"),
                )
            {
                let _ = cluster().kubectl(&[
                    "delete",
                    "pod",
                    &name,
                    "-n",
                    &self.app.name,
                    "--wait=false",
                ]);
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the API server never injected a probe pod: {}\n{}",
                String::from_utf8_lossy(&output.stderr),
                self.operator.logs()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for Installation {
    fn drop(&mut self) {
        // The configuration is owned by the operator's Namespace (garbage-collected with it);
        // deleting it here frees the API server from calling a dead webhook at once.
        let _ = cluster().kubectl(&[
            "delete",
            "mutatingwebhookconfiguration",
            &config_name(&self.ops.name),
            "--wait=false",
        ]);
    }
}

fn config_name(operator_namespace: &str) -> String {
    format!("agentmesh-sidecar-injector-{operator_namespace}")
}

fn pod(name: &str, annotations: &[(&str, &str)]) -> Value {
    let annotations: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations},
        // A fake pod: it only has to be admitted, so it goes to a kwok node, not the real one.
        "spec": {"nodeSelector": agentmesh_e2e::fake_nodes(), "tolerations": agentmesh_e2e::fake_node_tolerations(), "containers": [{"name": "agent", "image": "registry.invalid/agent:1"}]}
    })
}

fn sidecar(pod: &Value) -> Option<&Value> {
    pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .chain(pod["spec"]["containers"].as_array())
        .flatten()
        .find(|c| c["name"] == "agentmesh-sidecar")
}

fn is_injected(pod: &Value) -> bool {
    sidecar(pod).is_some()
}

fn env<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
}

fn events(namespace: &str) -> Vec<Value> {
    let list: Value = serde_json::from_str(&cluster().kubectl_ok(&[
        "get",
        "events.events.k8s.io",
        "-n",
        namespace,
        "-o",
        "json",
    ]))
    .unwrap();
    list["items"].as_array().cloned().unwrap_or_default()
}

#[test]
fn a_deployment_in_a_labelled_namespace_gets_the_sidecar_and_an_unlabelled_one_does_not() {
    let install = Installation::start("inject", &[]);
    let app = &install.app.name;
    let cluster = cluster();
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "my-agent", "labels": {"app.kubernetes.io/name": "my-agent"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app.kubernetes.io/name": "my-agent"}},
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": "my-agent", "agentmesh.io/identity": "my-agent"}},
                "spec": {"nodeSelector": agentmesh_e2e::fake_nodes(), "tolerations": agentmesh_e2e::fake_node_tolerations(), "containers": [{"name": "agent", "image": "my-company/my-agent:v1.0.0"}]}
            }
        }
    });
    cluster.apply(app, &deployment.to_string());
    let mut pods = Vec::new();
    install
        .app
        .wait_for(Duration::from_secs(60), "the Deployment's 2 pods", || {
            let list: Value = serde_json::from_str(&cluster.kubectl_ok(&[
                "get",
                "pods",
                "-n",
                app,
                "-l",
                "app.kubernetes.io/name=my-agent",
                "-o",
                "json",
            ]))
            .unwrap();
            pods = list["items"].as_array().cloned().unwrap_or_default();
            pods.len() == 2
        });
    for pod in &pods {
        let name = pod["metadata"]["name"].as_str().unwrap();
        let sidecar = sidecar(pod).unwrap_or_else(|| panic!("{name} has no sidecar: {pod}"));
        // Native sidecar on 1.34: an init container that keeps running.
        assert_eq!(
            pod["spec"]["initContainers"][0]["name"], "agentmesh-sidecar",
            "{pod}"
        );
        assert_eq!(sidecar["restartPolicy"], "Always");
        assert_eq!(sidecar["image"], "agentmesh/sidecar:1.0.0-alpha1");
        let ports: Vec<(Value, Value)> = sidecar["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["name"].clone(), p["containerPort"].clone()))
            .collect();
        assert_eq!(
            ports,
            [
                (json!("proxy"), json!(8081)),
                (json!("metrics"), json!(9091))
            ]
        );
        // The key the operator made is nowhere in the pod: no variable, no volume, no fsGroup
        // added for one (the sidecar fetches it from the trust API).
        assert!(
            env(sidecar, "AGENTMESH_AGENT_PRIVATE_KEY").is_none(),
            "{sidecar}"
        );
        let volumes = pod["spec"]["volumes"].to_string();
        assert!(!volumes.contains("agentmesh-key"), "{volumes}");
        assert!(pod["spec"]["securityContext"]["fsGroup"].is_null(), "{pod}");
        // The sidecar holds no Kubernetes API token (the API server's ServiceAccount admission
        // mounts one into every container that has nothing at its path, also after the
        // webhook); the agent keeps its own.
        let token_mounts = |container: &Value| -> Vec<Value> {
            (container["volumeMounts"].as_array().into_iter().flatten())
                .filter(|m| m["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount")
                .map(|m| m["name"].clone())
                .collect()
        };
        assert_eq!(
            token_mounts(sidecar),
            [json!("agentmesh-no-api-token")],
            "{sidecar}"
        );
        for agent in pod["spec"]["containers"].as_array().unwrap() {
            let mounts = token_mounts(agent);
            assert!(
                mounts.len() == 1 && mounts[0].as_str().unwrap().starts_with("kube-api-access-"),
                "the agent lost its API token: {agent}"
            );
        }
        // Configured by the operator's settings, not by a ConfigMap of the pod's namespace.
        assert!(sidecar["envFrom"].is_null(), "{sidecar}");
        assert_eq!(sidecar["securityContext"]["runAsNonRoot"], true);
        assert_eq!(sidecar["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(
            sidecar["securityContext"]["allowPrivilegeEscalation"],
            false
        );
        assert_eq!(
            sidecar["securityContext"]["capabilities"]["drop"],
            json!(["ALL"])
        );
        assert_eq!(
            sidecar["resources"]["requests"],
            json!({"cpu": "100m", "memory": "128Mi"})
        );
        assert_eq!(
            sidecar["resources"]["limits"],
            json!({"cpu": "500m", "memory": "512Mi"})
        );
        assert_eq!(
            sidecar["livenessProbe"]["exec"]["command"],
            json!(["cat", "/var/run/agentmesh/healthy"])
        );
        assert_eq!(sidecar["readinessProbe"]["httpGet"]["path"], "/health");
        assert_eq!(sidecar["readinessProbe"]["httpGet"]["port"], "proxy");
        let volumes: Vec<&str> = pod["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert!(
            volumes.contains(&"agentmesh-health") && volumes.contains(&"agentmesh-tmp"),
            "{volumes:?}"
        );
        let agent = &pod["spec"]["containers"][0];
        assert_eq!(
            env(agent, "AGENTMESH_PROXY_URL").unwrap()["value"],
            "http://localhost:8081"
        );
        let status: Value = serde_json::from_str(
            pod["metadata"]["annotations"]["agentmesh.io/sidecar-status"]
                .as_str()
                .expect("the status annotation"),
        )
        .unwrap();
        assert_eq!(status["identity"], "my-agent");
        assert_eq!(status["mode"], "native-sidecar");
        assert_eq!(pod["metadata"]["annotations"]["prometheus.io/port"], "9091");
    }
    // The identity did not exist: the operator created it, bound to the account of the pods
    // that asked for it (they run as `default`).
    let created = cluster
        .get("agentidentity", "my-agent", Some(app))
        .expect("created");
    assert_eq!(
        created["spec"]["serviceAccountName"], "default",
        "{created}"
    );

    // The attack: a pod of another account labels itself with the identity to get its key
    // mounted. Refused at admission, naming both accounts; nothing is created.
    cluster.service_account(app, "intruder");
    let mut thief = pod("thief", &[]);
    thief["metadata"]["labels"] = json!({"agentmesh.io/identity": "my-agent"});
    thief["spec"]["serviceAccountName"] = json!("intruder");
    let refused =
        cluster.kubectl_with_input(&["apply", "-n", app, "-f", "-"], Some(&thief.to_string()));
    assert!(
        !refused.status.success(),
        "another account's pod got the identity"
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("\"intruder\"")
            && stderr.contains("admits only pods of ServiceAccount \"default\""),
        "{stderr}"
    );
    assert!(cluster.get("pod", "thief", Some(app)).is_none());

    // Without the label, the namespace is left alone (the API server's namespace cache lags a
    // label change by a moment: retry with fresh pods until one is created untouched).
    cluster.kubectl_ok(&["label", "namespace", app, "agentmesh-inject-"]);
    let start = Instant::now();
    for attempt in 0.. {
        let name = format!("unlabelled-{attempt}");
        cluster.apply(app, &pod(&name, &[]).to_string());
        if !is_injected(
            &agentmesh_e2e::cluster()
                .get("pod", &name, Some(app))
                .expect("the pod exists"),
        ) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the unlabelled namespace is still injected"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn opted_out_and_host_network_pods_are_skipped_with_an_event() {
    let install = Installation::start("skip", &[]);
    let app = &install.app.name;
    let cluster = cluster();
    cluster.apply(
        app,
        &pod("opted-out", &[("agentmesh.io/inject", "false")]).to_string(),
    );
    let mut host = pod("host-net", &[]);
    host["spec"]["hostNetwork"] = true.into();
    cluster.apply(app, &host.to_string());
    assert!(!is_injected(
        &agentmesh_e2e::cluster()
            .get("pod", "opted-out", Some(app))
            .expect("the pod exists")
    ));
    assert!(!is_injected(
        &agentmesh_e2e::cluster()
            .get("pod", "host-net", Some(app))
            .expect("the pod exists")
    ));
    let start = Instant::now();
    loop {
        let all = events(app);
        let notes: Vec<String> = all
            .iter()
            .filter(|e| e["reason"] == "InjectionSkipped")
            .map(|e| e["note"].as_str().unwrap_or_default().to_owned())
            .collect();
        if notes
            .iter()
            .any(|n| n.contains("opted-out") && n.contains("opted_out"))
            && notes
                .iter()
                .any(|n| n.contains("host-net") && n.contains("host_network"))
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no skip Events; events: {all:#?}\noperator:\n{}",
            install.operator.logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // The inbound-port annotation sets where the sidecar forwards other agents' calls; a value
    // that is not a port refuses the pod, naming the annotation.
    cluster.apply(
        app,
        &pod("summarizer", &[("agentmesh.io/inbound-port", "3000")]).to_string(),
    );
    let summarizer = cluster
        .get("pod", "summarizer", Some(app))
        .expect("the pod exists");
    assert_eq!(
        env(
            sidecar(&summarizer).expect("injected"),
            "AGENTMESH_INBOUND_UPSTREAM"
        )
        .and_then(|e| e["value"].as_str()),
        Some("http://127.0.0.1:3000")
    );
    let refused = cluster.kubectl_with_input(
        &["apply", "-n", app, "-f", "-"],
        Some(&pod("bad-port", &[("agentmesh.io/inbound-port", "http")]).to_string()),
    );
    assert!(!refused.status.success(), "a bad inbound port is refused");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("agentmesh.io/inbound-port") && stderr.contains("not a port"),
        "{stderr}"
    );
    // The skips are counted by reason.
    let metrics = agentmesh_e2e::operator::http_get(install.operator.metrics, "/metrics").unwrap();
    for reason in ["opted_out", "host_network", "injected", "bad_annotation"] {
        assert!(
            metrics.contains(&format!(
                "meshlogic_operator_admissions_total{{reason=\"{reason}\"}}"
            )),
            "no {reason} in:\n{metrics}"
        );
    }
}

#[test]
fn with_the_operator_stopped_pod_creation_follows_the_failure_policy() {
    // Default: Fail. No pod of an injected namespace is created without its sidecar.
    let mut install = Installation::start("fail", &[]);
    let policy = cluster().kubectl_ok(&[
        "get",
        "mutatingwebhookconfiguration",
        &config_name(&install.ops.name),
        "-o",
        "jsonpath={.webhooks[0].failurePolicy}",
    ]);
    assert_eq!(policy, "Fail");
    install.operator.kill();
    let output = cluster().kubectl_with_input(
        &["apply", "-n", &install.app.name, "-f", "-"],
        Some(&pod("while-down", &[]).to_string()),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "created without the webhook");
    assert!(stderr.contains("inject.agentmesh.io"), "{stderr}");

    // Ignore: created, without the sidecar.
    let mut install =
        Installation::start("ignore", &[("MESHLOGIC_WEBHOOK_FAILURE_POLICY", "ignore")]);
    install.operator.kill();
    cluster().apply(&install.app.name, &pod("while-down", &[]).to_string());
    assert!(!is_injected(
        &agentmesh_e2e::cluster()
            .get("pod", "while-down", Some(&install.app.name))
            .expect("the pod exists")
    ));
}

/// Posts an AdmissionReview straight to the operator's webhook port, as anyone who reaches the
/// port can (no client certificate, the server's certificate not checked): a pod of namespace
/// `namespace` naming the identity `identity`. The decoded response.
fn forge(operator: &OperatorProcess, namespace: &str, identity: &str) -> Value {
    try_forge(operator, namespace, identity, &[]).unwrap_or_else(|error| panic!("{error}"))
}

/// [`forge`] with more curl arguments (a client certificate); the response, or why there is
/// none (curl's exit status and message).
fn try_forge(
    operator: &OperatorProcess,
    namespace: &str,
    identity: &str,
    curl_args: &[&str],
) -> Result<Value, String> {
    let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "f0f0f0f0-0000-0000-0000-000000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace, "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("{identity}-pod"), "labels": {"agentmesh.io/identity": identity}},
                "spec": {"serviceAccountName": identity, "containers": [{"name": "a", "image": "x"}]}},
            "dryRun": false}});
    let mut child = std::process::Command::new("curl")
        .args([
            "-sSk",
            "--max-time",
            "10",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
        ])
        .args(curl_args)
        .args([
            "--data-binary",
            "@-",
            &format!("https://{}/inject", operator.webhook),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("curl");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(review.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    if !output.status.success() {
        return Err(format!(
            "curl {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let answer: Value = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&output.stdout)))?;
    Ok(answer["response"].clone())
}

/// The API server's client certificate required (`MESHLOGIC_WEBHOOK_CLIENT_CA_FILE`, the local
/// cluster's API server presents one from its admission configuration): pods are still admitted
/// and injected, and a forged review is refused at the handshake — without a certificate, with
/// the cluster CA's admin certificate, with a certificate of the right CA but another name.
/// Nothing is created, and each refusal is counted.
#[test]
fn with_the_api_servers_certificate_required_a_forged_review_is_refused_at_the_handshake() {
    let pki = cluster().pki().expect(
        "the local cluster's PKI (this test needs the API server's webhook client certificate)",
    );
    let ca = pki.join("webhook-client-ca.crt");
    let install = Installation::start(
        "mtls",
        &[
            ("MESHLOGIC_WEBHOOK_CLIENT_CA_FILE", ca.to_str().unwrap()),
            (
                "MESHLOGIC_WEBHOOK_CLIENT_NAMES",
                "kube-apiserver-webhook-client",
            ),
        ],
    );
    // Installation::start waited for an injected pod: the API server's certificate passes.
    let app = &install.app.name;
    let file = |name: &str| pki.join(name).to_str().unwrap().to_owned();
    let (admin_crt, admin_key) = (file("admin.crt"), file("admin.key"));
    // A certificate of the right CA for another name (what a stolen CA key would not need, but a
    // CA shared with other clients would allow).
    let dir = std::env::temp_dir().join(format!("mtls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (other_crt, other_key) = (dir.join("other.crt"), dir.join("other.key"));
    let openssl = |args: &[&str]| {
        let output = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl");
        assert!(output.status.success(), "openssl {args:?}: {output:?}");
    };
    let csr = dir.join("other.csr");
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=system:node:evil",
        "-keyout",
        other_key.to_str().unwrap(),
        "-out",
        csr.to_str().unwrap(),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        csr.to_str().unwrap(),
        "-days",
        "1",
        "-CA",
        &file("webhook-client-ca.crt"),
        "-CAkey",
        &file("webhook-client-ca.key"),
        "-CAcreateserial",
        "-CAserial",
        dir.join("ca.srl").to_str().unwrap(),
        "-out",
        other_crt.to_str().unwrap(),
    ]);
    let attempts: [(&str, Vec<&str>); 3] = [
        ("no certificate", vec![]),
        (
            "the admin certificate",
            vec!["--cert", &admin_crt, "--key", &admin_key],
        ),
        (
            "the right CA, another name",
            vec![
                "--cert",
                other_crt.to_str().unwrap(),
                "--key",
                other_key.to_str().unwrap(),
            ],
        ),
    ];
    for (i, (attack, args)) in attempts.iter().enumerate() {
        let answer = try_forge(&install.operator, app, &format!("planted-{i}"), args);
        assert!(answer.is_err(), "{attack}: answered {answer:?}");
    }
    // The API server's own certificate, for contrast: the same forged body is reviewed.
    let answer = try_forge(
        &install.operator,
        app,
        "reviewed",
        &[
            "--cert",
            &file("webhook-client.crt"),
            "--key",
            &file("webhook-client.key"),
        ],
    )
    .expect("the API server's certificate is served");
    assert!(answer["uid"].is_string(), "{answer}");
    let refused = install
        .operator
        .metric("meshlogic_operator_admissions_total{reason=\"client_certificate\"}")
        .unwrap_or(0.0);
    assert_eq!(refused, 3.0, "{}", install.operator.metrics_text());
    std::thread::sleep(Duration::from_secs(1));
    let identities = cluster().kubectl_ok(&["get", "agentidentities", "-n", app, "-o", "name"]);
    assert!(!identities.contains("planted"), "{identities}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The attack: post forged AdmissionReviews to the webhook port to have the operator create
/// AgentIdentities (and key Secrets) with names of one's choice in any namespace. Nothing is
/// created in a namespace outside the operator's or not labelled for injection, and in a
/// labelled one creation is bounded (then 429).
#[test]
fn forged_admission_reviews_create_nothing_unasked_and_little_at_all() {
    let install = Installation::start("forged", &[]);
    let app = &install.app.name;
    let cluster = cluster();
    let other = TestNamespace::create("forged-other", &[]);

    // Another namespace, outside the operator's and unlabelled.
    let answer = forge(&install.operator, &other.name, "planted");
    assert_eq!(answer["allowed"], true, "{answer}");
    assert!(answer["patch"].is_null(), "{answer}");
    // The operator's own namespace, unlabelled a moment ago.
    cluster.kubectl_ok(&["label", "namespace", app, "agentmesh-inject-"]);
    let answer = forge(&install.operator, app, "planted");
    assert_eq!(answer["allowed"], true, "{answer}");
    assert!(answer["patch"].is_null(), "{answer}");
    std::thread::sleep(Duration::from_secs(1));
    for namespace in [other.name.as_str(), app] {
        assert!(
            cluster
                .get("agentidentity", "planted", Some(namespace))
                .is_none(),
            "a forged review created an identity in {namespace}"
        );
    }

    // Labelled: a flood of new names is cut at the burst (plus what the rate adds meanwhile).
    // The reviews are sent all at once: one after the other, each curl taking over 200 ms on a
    // loaded machine, they would come no faster than the rate refills.
    cluster.kubectl_ok(&["label", "namespace", app, "agentmesh-inject=enabled"]);
    let started = Instant::now();
    let codes: Vec<i64> = std::thread::scope(|scope| {
        let flood: Vec<_> = (0..60)
            .map(|i| {
                let operator = &install.operator;
                scope.spawn(move || forge(operator, app, &format!("flood-{i}")))
            })
            .collect();
        flood
            .into_iter()
            .map(|sender| {
                let answer = sender.join().expect("a forging thread");
                if answer["allowed"] == true {
                    200
                } else {
                    answer["status"]["code"].as_i64().unwrap_or(0)
                }
            })
            .collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    assert!(codes.iter().all(|c| [200, 429].contains(c)), "{codes:?}");
    let created = codes.iter().filter(|c| **c == 200).count();
    let allowed = 20 + (elapsed * 5.0).ceil() as usize;
    assert!(
        created <= allowed,
        "{created} created in {elapsed:.1} s: {codes:?}"
    );
    assert!(codes.contains(&429), "{codes:?}");
    let identities = cluster.kubectl_ok(&["get", "agentidentities", "-n", app, "-o", "name"]);
    let flooded = identities.lines().filter(|l| l.contains("flood-")).count();
    assert_eq!(flooded, created, "{identities}");
}

/// The slow-loris: with `failurePolicy: Fail`, a webhook whose connections are all held by an
/// attacker would stall every pod creation of the namespace. 3,000 connections held open (three
/// times the cap; half silent, half a TLS record never finished) and pods are still admitted
/// with their sidecar, each within seconds.
#[test]
fn a_slow_loris_on_the_webhook_does_not_stall_pod_creation() {
    use std::io::Write;
    let install = Installation::start("loris", &[]);
    let app = &install.app.name;
    let mut held = Vec::new();
    for i in 0..3000 {
        let mut stream = std::net::TcpStream::connect(install.operator.webhook).expect("connect");
        if i % 2 == 0 {
            // The start of a TLS ClientHello record, never finished.
            stream
                .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
                .unwrap();
        }
        held.push(stream);
    }
    for i in 0..3 {
        let started = Instant::now();
        let name = format!("under-siege-{i}");
        cluster().apply(app, &pod(&name, &[]).to_string());
        let created = cluster().get("pod", &name, Some(app)).expect("created");
        assert!(is_injected(&created), "{created}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "admission took {:?} with {} connections held",
            started.elapsed(),
            held.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_during_a_stream_of_pod_creations_loses_none() {
    use k8s_openapi::api::core::v1::{Pod, Secret};
    // A 12-second serving certificate: renewed every ~8 s.
    let install = tokio::task::spawn_blocking(|| {
        Installation::start("rotate", &[("MESHLOGIC_WEBHOOK_CERT_SECONDS", "12")])
    })
    .await
    .unwrap();
    let client = cluster().client().await.unwrap();
    let pods: kube::Api<Pod> = kube::Api::namespaced(client.clone(), &install.app.name);
    let secrets: kube::Api<Secret> = kube::Api::namespaced(client.clone(), &install.ops.name);
    let serving = || async {
        secrets
            .get("agentmesh-webhook-tls")
            .await
            .unwrap()
            .data
            .unwrap()["tls.crt"]
            .0
            .clone()
    };
    let mut certificates = vec![serving().await];
    let start = Instant::now();
    let mut created = 0;
    while start.elapsed() < Duration::from_secs(30) {
        let pod: Pod = serde_json::from_value(pod(&format!("stream-{created}"), &[])).unwrap();
        let stored = pods
            .create(&Default::default(), &pod)
            .await
            .unwrap_or_else(|e| panic!("pod {created} refused during rotation: {e}"));
        let spec = stored.spec.unwrap();
        assert!(
            spec.init_containers
                .iter()
                .flatten()
                .any(|c| c.name == "agentmesh-sidecar"),
            "pod {created} created without the sidecar"
        );
        created += 1;
        let current = serving().await;
        if *certificates.last().unwrap() != current {
            certificates.push(current);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(created > 30, "only {created} pods in 30 s");
    assert!(
        certificates.len() >= 3,
        "the certificate rotated {} times in 30 s",
        certificates.len() - 1
    );
    eprintln!(
        "{created} pods injected across {} serving certificates",
        certificates.len()
    );

    // A lost Secret: the leader makes a new CA, and caBundle follows.
    let config = config_name(&install.ops.name);
    let bundle = || {
        cluster().kubectl_ok(&[
            "get",
            "mutatingwebhookconfiguration",
            &config,
            "-o",
            "jsonpath={.webhooks[0].clientConfig.caBundle}",
        ])
    };
    let before = bundle();
    secrets
        .delete("agentmesh-webhook-tls", &Default::default())
        .await
        .unwrap();
    let wait = Instant::now();
    while bundle() == before {
        assert!(
            wait.elapsed() < Duration::from_secs(30),
            "caBundle was not updated"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::task::spawn_blocking(move || install.wait_injecting())
        .await
        .unwrap();
}

/// A connection flood held by a process of its own (`e2e/tools/hold_connections.py`: the
/// test's file descriptor limit is 20000); ends when dropped.
struct Flood {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl Flood {
    /// `count` connections to `addr`, established before this returns.
    fn hold(addr: std::net::SocketAddr, count: usize) -> Self {
        use std::io::BufRead;
        let script = agentmesh_e2e::repo_root().join("e2e/tools/hold_connections.py");
        let mut child = std::process::Command::new("python3")
            .arg(script)
            .args([
                addr.ip().to_string(),
                addr.port().to_string(),
                count.to_string(),
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().and_then(Result::ok);
        assert_eq!(
            first.as_deref(),
            Some(format!("held {count}").as_str()),
            "the flood on {addr} did not establish its connections"
        );
        Self { child, lines }
    }

    /// Ends the flood; how many of its connections the server had closed.
    fn end(mut self) -> u64 {
        drop(self.child.stdin.take());
        let last = self.lines.next().and_then(Result::ok).unwrap_or_default();
        let _ = self.child.wait();
        last.strip_prefix("closed ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("the flood ended with {last:?}"))
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The load test: 10,000 connections held open on the webhook and 10,000 on the trust API
/// while pods are admitted and a probe posts reports. No admission fails (each pod gets its
/// sidecar within seconds) and no report is lost (each is accepted and counted).
#[test]
fn ten_thousand_connections_held_on_each_server_lose_no_admission_and_no_report() {
    const HELD: usize = 10_000;
    let install = Installation::start("load", &[]);
    let app = install.app.name.as_str();
    let cluster = cluster();
    // A probe on kwok-node-0 that may post reports for the MeshLogicAgent `probe`, and an
    // agent pod on that node.
    cluster.service_account(app, "probe");
    let role = format!("{app}-probe-reports");
    let _role = ClusterScoped(vec![
        ("clusterrole", role.clone()),
        ("clusterrolebinding", role.clone()),
    ]);
    cluster.apply(
        app,
        &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": role},
            "rules": [{"apiGroups": ["agentmesh.io"], "resources": ["reports"], "verbs": ["create"]}]})
        .to_string(),
    );
    cluster.apply(
        app,
        &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": role},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": "probe", "namespace": app}]})
        .to_string(),
    );
    cluster.apply(
        app,
        &json!({"apiVersion": "agentmesh.io/v1alpha1", "kind": "MeshLogicAgent", "metadata": {"name": "probe"},
            "spec": {"customerId": "e2e", "serviceAccount": {"create": false, "name": "probe"},
                     "nodeSelector": agentmesh_e2e::fake_nodes(), "tolerations": agentmesh_e2e::fake_node_tolerations()}})
        .to_string(),
    );
    let token = cluster.node_token(app, "probe", "kwok-node-0");
    cluster.service_account(app, "loaded");
    cluster.apply(
        app,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "loaded-0", "labels": {"agentmesh.io/identity": "loaded"}},
            "spec": {"nodeName": "kwok-node-0", "serviceAccountName": "loaded", "tolerations": agentmesh_e2e::fake_node_tolerations(),
                     "containers": [{"name": "agent", "image": "registry.invalid/agent:1"}]}})
        .to_string(),
    );
    let uid = cluster.get("pod", "loaded-0", Some(app)).unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned();
    let report = json!({
        "source": {"kind": "probe", "node": "kwok-node-0", "agent": format!("{app}/probe"), "tier": 2, "programsLoaded": 7, "ringBufferDrops": 0},
        "pods": [{"podUid": uid, "windowStartMs": 0, "windowEndMs": 1000,
                  "counts": {"execs": 1, "exits": 0, "fileOpens": 0, "connects": 0},
                  "executables": ["/usr/bin/true"]}]
    })
    .to_string();
    let post = || {
        agentmesh_e2e::operator::http_request(
            install.operator.trust_api,
            "POST",
            "/v1/reports",
            Some(&token),
            Some(&report),
        )
    };
    // Until the operator knows the agent, the identity and its pod: one report accepted.
    let started = Instant::now();
    loop {
        if let Some((202, ack)) = post()
            && serde_json::from_str::<Value>(&ack).unwrap()["accepted"] == 1
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no report accepted before the flood: {:?}\n{}",
            post(),
            install.operator.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let accepted_before = install
        .operator
        .metric("meshlogic_operator_reports_accepted_total")
        .unwrap();

    let webhook_flood = Flood::hold(install.operator.webhook, HELD);
    let api_flood = Flood::hold(install.operator.trust_api, HELD);
    const ROUNDS: usize = 10;
    let mut slowest = Duration::ZERO;
    for i in 0..ROUNDS {
        let started = Instant::now();
        let name = format!("under-load-{i}");
        cluster.apply(app, &pod(&name, &[]).to_string());
        let created = cluster.get("pod", &name, Some(app)).expect("created");
        assert!(is_injected(&created), "{created}");
        let answer = post();
        let Some((202, ack)) = &answer else {
            panic!("report {i} under load: {answer:?}");
        };
        let ack: Value = serde_json::from_str(ack).unwrap();
        assert_eq!(ack["accepted"], 1, "{ack}");
        slowest = slowest.max(started.elapsed());
    }
    let closed = (webhook_flood.end(), api_flood.end());
    let accepted = install
        .operator
        .metric("meshlogic_operator_reports_accepted_total")
        .unwrap()
        - accepted_before;
    assert_eq!(accepted, ROUNDS as f64);
    assert!(
        slowest < Duration::from_secs(10),
        "a round (pod admitted, report accepted) took {slowest:?}"
    );
    eprintln!(
        "load: {HELD} connections held on each server; {ROUNDS} pods admitted and {ROUNDS} reports \
         accepted, slowest round {slowest:?}; the servers closed {} (webhook) and {} (trust API) \
         of the held connections",
        closed.0, closed.1
    );
}

/// Cluster-scoped objects deleted when dropped.
struct ClusterScoped(Vec<(&'static str, String)>);

impl Drop for ClusterScoped {
    fn drop(&mut self) {
        for (kind, name) in &self.0 {
            let _ = cluster().kubectl(&["delete", kind, name, "--ignore-not-found"]);
        }
    }
}
