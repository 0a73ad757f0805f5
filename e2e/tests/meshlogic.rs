//! The MeshLogicAgent reconciler against a real API server: an agent becomes a ServiceAccount,
//! least-privilege cluster RBAC, a ConfigMap and a probe DaemonSet (whose pods kwok runs on
//! its two fake nodes); editing it rolls the DaemonSet; deleting it removes everything.

use std::time::{Duration, Instant};

use agentmesh_e2e::operator::OperatorProcess;
use agentmesh_e2e::{TestNamespace, cluster, condition};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(90);

/// Polls `probe` until it returns something; panics with the operator's logs after `timeout`.
fn eventually<T>(
    operator: &mut OperatorProcess,
    what: &str,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = probe() {
            return value;
        }
        if !operator.is_running() || start.elapsed() > TIMEOUT {
            panic!(
                "timed out waiting for {what} (operator running: {}):\n{}",
                operator.is_running(),
                operator.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Deletes the agent when a test ends, while its operator still runs (declared after the
/// operator, so dropped before it): the agent's finalizer needs the operator, and a namespace
/// cannot go while an object in it waits on a finalizer.
struct AgentCleanup {
    namespace: String,
    name: String,
}

impl Drop for AgentCleanup {
    fn drop(&mut self) {
        let _ = cluster().kubectl(&[
            "delete",
            "mla",
            &self.name,
            "-n",
            &self.namespace,
            "--ignore-not-found",
            "--timeout=30s",
        ]);
    }
}

fn agent_yaml(namespace: &str, name: &str) -> String {
    json!({
        "apiVersion": "agentmesh.io/v1alpha1",
        "kind": "MeshLogicAgent",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "customerId": "acme-e2e",
            "safetyTier": 2,
            "image": {"tag": "e2e"},
            // Fake pods on kwok's nodes: this test is about the objects and the status
            // roll-up; the probe as a real pod is tests/node.rs.
            "nodeSelector": agentmesh_e2e::fake_nodes(), "tolerations": agentmesh_e2e::fake_node_tolerations(),
            "ebpf": {"mutePaths": ["/proc", "/sys", "/dev"]},
            "serviceAccount": {"annotations": {
                "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/meshlogic-agent"
            }},
        }
    })
    .to_string()
}

fn rbac_name(namespace: &str, name: &str) -> String {
    format!("meshlogic-probe:{namespace}:{name}")
}

/// Starts an operator for a fresh namespace and applies an agent; waits for its DaemonSet.
/// A namespace with an operator and the MeshLogicAgent `name`, once its DaemonSet exists. The
/// guard deletes the agent while the operator still runs (its finalizer needs the operator):
/// bind it last so that it drops first.
fn start(prefix: &str, name: &str) -> (TestNamespace, OperatorProcess, AgentCleanup) {
    let cluster = cluster();
    cluster.ensure_crds();
    let namespace = TestNamespace::create(prefix, &[]);
    let mut operator = OperatorProcess::start(&namespace.name, "op-1", &[]);
    cluster.apply(&namespace.name, &agent_yaml(&namespace.name, name));
    let cleanup = AgentCleanup {
        namespace: namespace.name.clone(),
        name: name.to_string(),
    };
    let ns = namespace.name.clone();
    eventually(&mut operator, "the probe DaemonSet", || {
        agentmesh_e2e::cluster().get("daemonset", &format!("{name}-probe"), Some(&ns))
    });
    (namespace, operator, cleanup)
}

fn assert_owned_by(object: &Value, agent: &Value) {
    let owners = object["metadata"]["ownerReferences"]
        .as_array()
        .unwrap_or_else(|| panic!("no ownerReferences: {object}"));
    assert_eq!(owners.len(), 1, "{object}");
    let owner = &owners[0];
    assert_eq!(owner["apiVersion"], "agentmesh.io/v1alpha1");
    assert_eq!(owner["kind"], "MeshLogicAgent");
    assert_eq!(owner["name"], agent["metadata"]["name"]);
    assert_eq!(owner["uid"], agent["metadata"]["uid"]);
    assert_eq!(owner["controller"], true);
}

fn assert_labels(object: &Value, name: &str) {
    let labels = &object["metadata"]["labels"];
    assert_eq!(
        labels["app.kubernetes.io/name"], "meshlogic-agent",
        "{object}"
    );
    assert_eq!(labels["app.kubernetes.io/instance"], name, "{object}");
    assert_eq!(labels["app.kubernetes.io/part-of"], "agentmesh", "{object}");
    assert_eq!(
        labels["app.kubernetes.io/managed-by"], "meshlogic-operator",
        "{object}"
    );
}

/// A SubjectAccessReview for the probe's ServiceAccount, as the trust API makes one (cluster
/// wide, no namespace).
fn probe_may(namespace: &str, name: &str, verb: &str, group: &str, resource: &str) -> bool {
    let review = json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": format!("system:serviceaccount:{namespace}:{name}-probe"),
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{namespace}"), "system:authenticated"],
            "resourceAttributes": {"verb": verb, "group": group, "resource": resource},
        }
    });
    let args = ["create", "-f", "-", "-o", "json"];
    let output = cluster().kubectl_with_input(&args, Some(&review.to_string()));
    assert!(
        output.status.success(),
        "SubjectAccessReview: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
    answer["status"]["allowed"] == true
}

#[test]
fn a_meshlogicagent_becomes_a_probe_daemonset_with_least_privilege_rbac_and_its_config() {
    let name = "probe-a";
    let (namespace, mut operator, _cleanup) = start("mla-create", name);
    let ns = namespace.name.as_str();
    let agent = agentmesh_e2e::cluster().get("mla", name, Some(ns)).unwrap();
    assert!(
        agent["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == "agentmesh.io/probe-rbac")),
        "no finalizer: {agent}"
    );

    // ServiceAccount, with the IRSA annotation.
    let account = eventually(&mut operator, "the ServiceAccount", || {
        agentmesh_e2e::cluster().get("serviceaccount", "probe-a-probe", Some(ns))
    });
    assert_owned_by(&account, &agent);
    assert_labels(&account, name);
    assert_eq!(
        account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"],
        "arn:aws:iam::123456789012:role/meshlogic-agent"
    );

    // ConfigMap: the probe's configuration file.
    let config_map = eventually(&mut operator, "the ConfigMap", || {
        agentmesh_e2e::cluster().get("configmap", "probe-a-probe-config", Some(ns))
    });
    assert_owned_by(&config_map, &agent);
    assert_labels(&config_map, name);
    let file: Value =
        serde_json::from_str(config_map["data"]["config.json"].as_str().unwrap()).unwrap();
    assert_eq!(file["agent"], format!("{ns}/{name}"));
    assert_eq!(file["spec"]["customerId"], "acme-e2e");
    assert_eq!(file["spec"]["safetyTier"], 2);
    assert_eq!(file["spec"]["ebpf"]["ringBufferSize"], 1048576);

    // Cluster RBAC: the ServiceAccount bound to the installation's probe ClusterRole (exactly
    // pod reads and report creation); no ClusterRole is made for the agent.
    let binding = eventually(&mut operator, "the ClusterRoleBinding", || {
        agentmesh_e2e::cluster().get("clusterrolebinding", &rbac_name(ns, name), None)
    });
    assert_labels(&binding, name);
    assert_eq!(binding["roleRef"]["kind"], "ClusterRole");
    assert_eq!(
        binding["roleRef"]["name"],
        agentmesh_e2e::E2E_PROBE_CLUSTER_ROLE
    );
    assert!(
        agentmesh_e2e::cluster()
            .get("clusterrole", &rbac_name(ns, name), None)
            .is_none()
    );
    let role = agentmesh_e2e::cluster()
        .get("clusterrole", agentmesh_e2e::E2E_PROBE_CLUSTER_ROLE, None)
        .expect("the probes' ClusterRole");
    assert_eq!(
        role["rules"],
        json!([
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["agentmesh.io"], "resources": ["reports"], "verbs": ["create"]},
        ])
    );
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "probe-a-probe", "namespace": ns}])
    );
    // What the API server's authorizer makes of it: the trust API asks it the first question.
    // RBAC's caches take a moment to see new bindings, so the grants are awaited first.
    for (verb, group, resource) in [
        ("create", "agentmesh.io", "reports"),
        ("get", "", "pods"),
        ("list", "", "pods"),
        ("watch", "", "pods"),
    ] {
        eventually(
            &mut operator,
            &format!("the probe may {verb} {resource}"),
            || probe_may(ns, name, verb, group, resource).then_some(()),
        );
    }
    for (verb, group, resource) in [
        ("delete", "", "pods"),
        ("get", "", "secrets"),
        ("update", "agentmesh.io", "reports"),
        ("create", "agentmesh.io", "meshlogicagents"),
        ("create", "", "reports"),
    ] {
        assert!(
            !probe_may(ns, name, verb, group, resource),
            "the probe may {verb} {resource} in group {group:?}"
        );
    }

    // DaemonSet: the seed's posture.
    let daemon_set = agentmesh_e2e::cluster()
        .get("daemonset", "probe-a-probe", Some(ns))
        .unwrap();
    assert_owned_by(&daemon_set, &agent);
    assert_labels(&daemon_set, name);
    let template = &daemon_set["spec"]["template"];
    assert_eq!(
        template["metadata"]["labels"]["app.kubernetes.io/name"],
        "meshlogic-agent"
    );
    let hash = template["metadata"]["annotations"]["agentmesh.io/config-hash"]
        .as_str()
        .unwrap();
    assert_eq!(hash.len(), 32);
    assert_eq!(
        template["metadata"]["annotations"]["prometheus.io/port"],
        "9090"
    );
    let pod = &template["spec"];
    assert_eq!(pod["hostPID"], true);
    assert_eq!(pod["serviceAccountName"], "probe-a-probe");
    assert_eq!(
        pod["imagePullSecrets"],
        json!([{"name": "meshlogic-registry"}])
    );
    let container = &pod["containers"][0];
    // Not privileged: only the capabilities the probe needs (`ebpf.privileged` restores the
    // seed's privileged posture).
    assert_eq!(container["securityContext"]["privileged"], false);
    assert_eq!(
        container["securityContext"]["capabilities"],
        json!({"add": ["BPF", "PERFMON", "NET_ADMIN", "SYS_PTRACE", "DAC_READ_SEARCH"], "drop": ["ALL"]})
    );
    assert_eq!(
        container["image"],
        "registry.meshlogic.ai/meshlogic/agent:e2e"
    );
    assert_eq!(
        container["resources"],
        json!({"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}})
    );
    assert_eq!(container["ports"][0]["containerPort"], 9090);
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/health");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/ready");
    let env = container["env"].as_array().unwrap();
    let env_var = |key: &str| {
        env.iter()
            .find(|e| e["name"] == key)
            .unwrap_or_else(|| panic!("no {key} in {env:?}"))
            .clone()
    };
    assert_eq!(
        env_var("NODE_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    assert_eq!(
        env_var("MESHLOGIC_TRUST_API")["value"],
        format!("https://{}", operator.trust_api)
    );
    // The probe trusts the operator's CA, as the operator's certificate Secret holds it.
    assert_eq!(
        env_var("MESHLOGIC_TRUST_API_CA")["value"],
        operator.ca_bundle().as_str()
    );
    assert_eq!(
        env_var("MESHLOGIC_PROBE_CONFIG")["value"],
        "/etc/meshlogic/config.json"
    );
    assert_eq!(env_var("AWS_REGION")["value"], "ap-southeast-2");
    let mounts: Vec<(String, String)> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_owned(),
                m["mountPath"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let host_paths: Vec<(String, String)> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| {
            Some((
                v["name"].as_str()?.to_owned(),
                v["hostPath"]["path"].as_str()?.to_owned(),
            ))
        })
        .collect();
    for (host, mounted) in [
        ("/sys/kernel/btf", "/sys/kernel/btf"),
        ("/sys/fs/cgroup", "/sys/fs/cgroup"),
        ("/proc", "/host/proc"),
    ] {
        let (volume, _) = host_paths
            .iter()
            .find(|(_, path)| path == host)
            .unwrap_or_else(|| panic!("no hostPath {host}: {host_paths:?}"));
        assert!(
            mounts.contains(&(volume.clone(), mounted.to_owned())),
            "{volume} not mounted at {mounted}: {mounts:?}"
        );
    }
    assert!(
        !host_paths.iter().any(|(_, path)| path == "/sys/fs/bpf"),
        "the node's bpffs is mounted, yet the probe pins nothing: {host_paths:?}"
    );
    assert!(mounts.contains(&("config".into(), "/etc/meshlogic".into())));

    // Status: kwok runs the probe pods on its two fake nodes.
    let agent = eventually(&mut operator, "status: 2 of 2 nodes ready", || {
        let agent = agentmesh_e2e::cluster().get("mla", name, Some(ns))?;
        let status = &agent["status"];
        let ready = status["desiredNodes"] == 2
            && status["readyNodes"] == 2
            && condition(&agent, "Available")?["status"] == "True"
            && condition(&agent, "Progressing")?["status"] == "False";
        ready.then_some(agent)
    });
    assert_eq!(
        agent["status"]["observedGeneration"],
        agent["metadata"]["generation"]
    );
    assert_eq!(condition(&agent, "Degraded").unwrap()["status"], "False");
    assert_eq!(agent["status"]["updatedNodes"], 2);
    let pods = cluster().kubectl_ok(&[
        "get",
        "pods",
        "-n",
        ns,
        "-l",
        "app.kubernetes.io/name=meshlogic-agent",
        "-o",
        "name",
    ]);
    assert_eq!(pods.lines().count(), 2, "{pods}");
    let columns = cluster().kubectl_ok(&["get", "mla", name, "-n", ns, "--no-headers"]);
    let columns: Vec<&str> = columns.split_whitespace().collect();
    assert_eq!(
        &columns[..4],
        [name, "2", "2", "2"],
        "NAME TIER DESIRED READY"
    );

    // Settled, RBAC deleted by hand comes back at once: it is watched, not only resynchronised
    // every 30 s.
    cluster().kubectl_ok(&["delete", "clusterrolebinding", &rbac_name(ns, name)]);
    let deleted = Instant::now();
    eventually(&mut operator, "the ClusterRoleBinding to come back", || {
        agentmesh_e2e::cluster().get("clusterrolebinding", &rbac_name(ns, name), None)
    });
    assert!(
        deleted.elapsed() < Duration::from_secs(15),
        "the ClusterRoleBinding took {:?} to come back",
        deleted.elapsed()
    );
}

#[test]
fn editing_a_meshlogicagent_rolls_its_daemonset_and_nothing_else_does() {
    let name = "probe-b";
    let (namespace, mut operator, _cleanup) = start("mla-edit", name);
    let ns = namespace.name.as_str();
    let ds_name = format!("{name}-probe");
    let hash_of = |ds: &Value| {
        ds["spec"]["template"]["metadata"]["annotations"]["agentmesh.io/config-hash"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    // Settled: status written for the first generation and the first rollout done.
    eventually(&mut operator, "the first rollout", || {
        let agent = agentmesh_e2e::cluster().get("mla", name, Some(ns))?;
        (agent["status"]["updatedNodes"] == 2
            && condition(&agent, "Progressing")?["status"] == "False")
            .then_some(())
    });
    let before = agentmesh_e2e::cluster()
        .get("daemonset", &ds_name, Some(ns))
        .unwrap();
    let generation = before["metadata"]["generation"].as_i64().unwrap();

    // A change that is not configuration (a label) triggers a reconcile but no roll.
    cluster().kubectl_ok(&["label", "mla", name, "-n", ns, "team=e2e"]);
    std::thread::sleep(Duration::from_secs(3));
    let unchanged = agentmesh_e2e::cluster()
        .get("daemonset", &ds_name, Some(ns))
        .unwrap();
    assert_eq!(unchanged["metadata"]["generation"], generation);
    assert_eq!(hash_of(&unchanged), hash_of(&before));

    // A change of configuration rolls the DaemonSet and rewrites the ConfigMap.
    cluster().kubectl_ok(&[
        "patch",
        "mla",
        name,
        "-n",
        ns,
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"safetyTier":3,"ebpf":{"mutePaths":["/proc","/sys","/dev","/tmp"]}}}"#,
    ]);
    let after = eventually(&mut operator, "a new pod template", || {
        let ds = agentmesh_e2e::cluster().get("daemonset", &ds_name, Some(ns))?;
        (hash_of(&ds) != hash_of(&before)).then_some(ds)
    });
    assert!(after["metadata"]["generation"].as_i64().unwrap() > generation);
    eventually(&mut operator, "a ConfigChanged Event", || {
        cluster()
            .has_events(
                ns,
                &format!("reason=ConfigChanged,involvedObject.name={name}"),
            )
            .then_some(())
    });
    let config_map = agentmesh_e2e::cluster()
        .get("configmap", &format!("{name}-probe-config"), Some(ns))
        .unwrap();
    let file: Value =
        serde_json::from_str(config_map["data"]["config.json"].as_str().unwrap()).unwrap();
    assert_eq!(file["spec"]["safetyTier"], 3);
    assert_eq!(
        file["spec"]["ebpf"]["mutePaths"],
        json!(["/proc", "/sys", "/dev", "/tmp"])
    );

    // The rollout completes on both nodes and status follows the new generation.
    let agent = eventually(&mut operator, "the second rollout in status", || {
        let agent = agentmesh_e2e::cluster().get("mla", name, Some(ns))?;
        (agent["status"]["observedGeneration"] == agent["metadata"]["generation"]
            && agent["status"]["updatedNodes"] == 2
            && agent["status"]["readyNodes"] == 2
            && condition(&agent, "Progressing")?["status"] == "False")
            .then_some(agent)
    });
    assert_eq!(condition(&agent, "Available").unwrap()["status"], "True");
    let pods: Value = serde_json::from_str(&cluster().kubectl_ok(&[
        "get",
        "pods",
        "-n",
        ns,
        "-l",
        "app.kubernetes.io/name=meshlogic-agent",
        "-o",
        "json",
    ]))
    .unwrap();
    let new_hash = hash_of(&after);
    let current = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            p["metadata"]["annotations"]["agentmesh.io/config-hash"] == new_hash.as_str()
                && p["metadata"]["deletionTimestamp"].is_null()
        })
        .count();
    assert_eq!(current, 2, "pods on the new configuration: {pods}");
}

#[test]
fn deleting_a_meshlogicagent_removes_everything_it_made() {
    let name = "probe-c";
    let (namespace, mut operator, _cleanup) = start("mla-delete", name);
    let ns = namespace.name.as_str();
    let rbac = rbac_name(ns, name);
    eventually(&mut operator, "everything created", || {
        (agentmesh_e2e::cluster()
            .get("serviceaccount", &format!("{name}-probe"), Some(ns))
            .is_some()
            && agentmesh_e2e::cluster()
                .get("configmap", &format!("{name}-probe-config"), Some(ns))
                .is_some()
            && agentmesh_e2e::cluster()
                .get("clusterrolebinding", &rbac, None)
                .is_some())
        .then_some(())
    });

    cluster().kubectl_ok(&["delete", "mla", name, "-n", ns, "--wait=false"]);
    eventually(&mut operator, "the MeshLogicAgent to go", || {
        agentmesh_e2e::cluster()
            .get("mla", name, Some(ns))
            .is_none()
            .then_some(())
    });
    // Cluster-scoped: removed by the operator before it let the agent go.
    assert!(
        agentmesh_e2e::cluster()
            .get("clusterrolebinding", &rbac, None)
            .is_none()
    );
    // Namespaced: removed by the garbage collector, through their owner reference.
    for (kind, object) in [
        ("daemonset", format!("{name}-probe")),
        ("configmap", format!("{name}-probe-config")),
        ("serviceaccount", format!("{name}-probe")),
    ] {
        eventually(&mut operator, &format!("{kind} {object} to go"), || {
            agentmesh_e2e::cluster()
                .get(kind, &object, Some(ns))
                .is_none()
                .then_some(())
        });
    }
    assert!(operator.logs().contains("cleaned up cluster-scoped RBAC"));
}

/// Whoever may create a MeshLogicAgent chooses what runs with kernel capabilities on every
/// node (image, capabilities, tolerations, ServiceAccount annotations). The operator honours
/// agents only in its own namespace and those of `MESHLOGIC_AGENT_NAMESPACES`, and runs only the
/// repositories of `MESHLOGIC_PROBE_IMAGES`: a tenant's agent gets nothing made, and an agent
/// switched to another image loses its DaemonSet and cluster RBAC until it is switched back.
#[test]
fn a_meshlogicagent_outside_the_allowed_namespaces_or_images_gets_nothing() {
    let name = "probe-x";
    let (namespace, mut operator, _cleanup) = start("mla-refused", name);
    let ns = namespace.name.as_str();
    let rbac = rbac_name(ns, name);
    let degraded_reason = |namespace: &str| {
        let agent = agentmesh_e2e::cluster().get("mla", name, Some(namespace))?;
        let degraded = condition(&agent, "Degraded")?;
        (degraded["status"] == "True").then(|| degraded["reason"].as_str().unwrap().to_owned())
    };

    // Another image repository: the DaemonSet and the cluster RBAC go.
    set_image(ns, name, "evil.example/root");
    let reason = eventually(&mut operator, "Degraded=True", || degraded_reason(ns));
    assert_eq!(reason, "ImageNotAllowed");
    eventually(&mut operator, "the DaemonSet and RBAC to go", || {
        let c = agentmesh_e2e::cluster();
        (c.get("daemonset", &format!("{name}-probe"), Some(ns))
            .is_none()
            && c.get("clusterrolebinding", &rbac, None).is_none())
        .then_some(())
    });
    let events = cluster().kubectl_ok(&[
        "get",
        "events",
        "-n",
        ns,
        "--field-selector",
        "reason=ImageNotAllowed",
        "-o",
        "name",
    ]);
    assert!(!events.trim().is_empty(), "no ImageNotAllowed Event");
    // Back to the allowed repository: made again.
    set_image(ns, name, "registry.meshlogic.ai/meshlogic/agent");
    eventually(&mut operator, "the DaemonSet again", || {
        agentmesh_e2e::cluster().get("daemonset", &format!("{name}-probe"), Some(ns))
    });

    // A tenant's namespace, watched by an operator of another namespace that is told of
    // `meshlogic` only: nothing is made there.
    let ops = TestNamespace::create("mla-ops", &[]);
    let tenant = TestNamespace::create("mla-tenant", &[]);
    let mut other = OperatorProcess::start_binary(
        &agentmesh_e2e::operator::operator_binary(),
        &ops.name,
        Some(&tenant.name),
        "op-1",
        &[("MESHLOGIC_AGENT_NAMESPACES", "meshlogic")],
    );
    cluster().apply(&tenant.name, &agent_yaml(&tenant.name, name));
    let _tenant_cleanup = AgentCleanup {
        namespace: tenant.name.clone(),
        name: name.to_string(),
    };
    let reason = eventually(
        &mut other,
        "Degraded=True in the tenant's namespace",
        || degraded_reason(&tenant.name),
    );
    assert_eq!(reason, "NamespaceNotAllowed");
    let c = agentmesh_e2e::cluster();
    assert!(
        c.get("daemonset", &format!("{name}-probe"), Some(&tenant.name))
            .is_none()
    );
    assert!(
        c.get("clusterrolebinding", &rbac_name(&tenant.name, name), None)
            .is_none()
    );
    assert!(
        c.get("clusterrole", &rbac_name(&tenant.name, name), None)
            .is_none()
    );
}

/// Sets the image repository of the MeshLogicAgent `name`.
fn set_image(namespace: &str, name: &str, repository: &str) {
    let patch = json!({"spec": {"image": {"repository": repository}}}).to_string();
    cluster().kubectl_ok(&[
        "patch",
        "mla",
        name,
        "-n",
        namespace,
        "--type=merge",
        "-p",
        &patch,
    ]);
}

/// Deletes cluster-scoped objects when dropped.
struct ClusterObjects(Vec<(&'static str, String)>);

impl Drop for ClusterObjects {
    fn drop(&mut self) {
        for (kind, name) in &self.0 {
            let _ = cluster().kubectl(&["delete", kind, name, "--ignore-not-found"]);
        }
    }
}

/// A kubeconfig for the cluster under test that authenticates with `token`.
fn kubeconfig_with_token(namespace: &str, token: &str) -> std::path::PathBuf {
    let raw: Value = serde_json::from_str(&cluster().kubectl_ok(&[
        "config",
        "view",
        "--raw",
        "--minify",
        "--flatten",
        "-o",
        "json",
    ]))
    .unwrap();
    let server = &raw["clusters"][0]["cluster"];
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": {
            "server": server["server"],
            "certificate-authority-data": server["certificate-authority-data"],
        }}],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "e2e", "user": "operator", "namespace": namespace}}],
        "current-context": "operator",
    });
    let path = std::env::temp_dir().join(format!("agentmesh-e2e-{namespace}-operator.kubeconfig"));
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

#[test]
fn the_operator_needs_only_the_rbac_it_documents() {
    let cluster = cluster();
    cluster.ensure_crds();
    let namespace = TestNamespace::create("mla-rbac", &[]);
    let ns = namespace.name.as_str();
    let name = "probe-d";
    let role_name = format!("e2e-operator-{ns}");
    let probe_role = format!("e2e-probe-{ns}");
    let _operator_rbac = ClusterObjects(vec![
        ("clusterrolebinding", role_name.clone()),
        ("clusterrole", role_name.clone()),
        ("clusterrole", probe_role.clone()),
    ]);
    // Exactly the documented ClusterRoles (deploy/operator-rbac.yaml), nothing more: the
    // operator's, whose one `bind` names the probes' ClusterRole (here under this test's name
    // for it), and the probes'.
    let (documented, probe) = agentmesh_e2e::documented_cluster_roles();
    let chart_probe_role = probe["metadata"]["name"].as_str().unwrap();
    let mut rules = documented["rules"].clone();
    let chart_operator_role = documented["metadata"]["name"].as_str().unwrap();
    for rule in rules.as_array_mut().unwrap() {
        if rule["verbs"] == json!(["bind"]) {
            assert_eq!(rule["resourceNames"], json!([chart_probe_role]), "{rule}");
            rule["resourceNames"] = json!([probe_role]);
        } else if rule["resources"] == json!(["mutatingwebhookconfigurations"])
            && rule.get("resourceNames").is_some()
        {
            // The chart names its release namespace's; the operator here runs in `ns`.
            let name = rule["resourceNames"][0].as_str().unwrap();
            assert!(name.starts_with("agentmesh-sidecar-injector-"), "{rule}");
            rule["resourceNames"] = json!([format!("agentmesh-sidecar-injector-{ns}")]);
        } else if rule["resources"] == json!(["clusterroles"]) {
            assert_eq!(
                rule["resourceNames"],
                json!([chart_operator_role]),
                "{rule}"
            );
            rule["resourceNames"] = json!([role_name]);
        }
    }
    let rbac = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "operator", "namespace": ns}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": role_name}, "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": role_name},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name},
         "subjects": [{"kind": "ServiceAccount", "name": "operator", "namespace": ns}]},
        agentmesh_e2e::probe_cluster_role(&probe_role),
        // Its Secrets: in its own namespace, and nowhere else.
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "operator", "namespace": ns},
         "rules": agentmesh_e2e::documented_operator_role_rules()},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "operator", "namespace": ns},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "operator"},
         "subjects": [{"kind": "ServiceAccount", "name": "operator", "namespace": ns}]},
    ]});
    cluster.apply(ns, &rbac.to_string());
    let token = cluster.kubectl_ok(&["create", "token", "operator", "-n", ns, "--duration=1h"]);
    let kubeconfig = kubeconfig_with_token(ns, token.trim());
    let mut operator = OperatorProcess::start(
        ns,
        "op-1",
        &[
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
            ("MESHLOGIC_PROBE_CLUSTER_ROLE", &probe_role),
            // As the chart runs it: its own ClusterRole owns the webhook configuration.
            ("MESHLOGIC_OWNER_CLUSTER_ROLE", &role_name),
        ],
    );
    // It may make no ClusterRole, and bind no other one.
    let may = |args: &[&str]| {
        let mut all = vec!["auth", "can-i"];
        all.extend_from_slice(args);
        let as_operator = format!("system:serviceaccount:{ns}:operator");
        all.extend(["--as", &as_operator]);
        cluster.kubectl(&all).status.success()
    };
    assert!(!may(&["create", "clusterroles"]));
    assert!(!may(&["bind", "clusterroles/cluster-admin"]));
    assert!(may(&["bind", &format!("clusterroles/{probe_role}")]));
    assert!(!may(&["get", "clusterroles/cluster-admin"]));
    // It may read and write the Secrets of its own namespace, and of no other.
    assert!(may(&["create", "secrets", "-n", ns]));
    assert!(may(&["get", "secrets", "-n", ns]));
    for elsewhere in ["default", "kube-system"] {
        for verb in ["get", "list", "create", "watch"] {
            assert!(
                !may(&[verb, "secrets", "-n", elsewhere]),
                "{verb} secrets in {elsewhere}"
            );
        }
    }
    assert!(!may(&["list", "secrets", "--all-namespaces"]));
    // It may change its own webhook configuration, and no other.
    let own_webhook = format!("mutatingwebhookconfigurations/agentmesh-sidecar-injector-{ns}");
    assert!(may(&["patch", &own_webhook]));
    assert!(!may(&[
        "patch",
        "mutatingwebhookconfigurations/istio-sidecar-injector"
    ]));
    let _cleanup = AgentCleanup {
        namespace: ns.to_string(),
        name: name.to_string(),
    };
    cluster.apply(ns, &agent_yaml(ns, name));
    eventually(&mut operator, "status: 2 of 2 nodes ready", || {
        let agent = agentmesh_e2e::cluster().get("mla", name, Some(ns))?;
        (agent["status"]["readyNodes"] == 2 && condition(&agent, "Available")?["status"] == "True")
            .then_some(())
    });
    eventually(
        &mut operator,
        "the webhook configuration owned by the ClusterRole",
        || {
            let config = agentmesh_e2e::cluster().get(
                "mutatingwebhookconfiguration",
                &format!("agentmesh-sidecar-injector-{ns}"),
                None,
            )?;
            (config["metadata"]["ownerReferences"][0]["name"] == role_name.as_str()).then_some(())
        },
    );
    let binding = agentmesh_e2e::cluster()
        .get("clusterrolebinding", &rbac_name(ns, name), None)
        .expect("the probe's ClusterRoleBinding");
    assert_eq!(binding["roleRef"]["name"], probe_role);
    eventually(&mut operator, "a Created Event", || {
        cluster
            .has_events(ns, &format!("reason=Created,involvedObject.name={name}"))
            .then_some(())
    });
    // A refusal (another image) with these rights too: its DaemonSet and binding go.
    set_image(ns, name, "evil.example/root");
    eventually(
        &mut operator,
        "the refused agent's DaemonSet and binding gone",
        || {
            let c = agentmesh_e2e::cluster();
            (c.get("daemonset", &format!("{name}-probe"), Some(ns))
                .is_none()
                && c.get("clusterrolebinding", &rbac_name(ns, name), None)
                    .is_none())
            .then_some(())
        },
    );
    cluster.kubectl_ok(&["delete", "mla", name, "-n", ns, "--wait=false"]);
    eventually(&mut operator, "the MeshLogicAgent to go", || {
        agentmesh_e2e::cluster()
            .get("mla", name, Some(ns))
            .is_none()
            .then_some(())
    });
    assert!(
        agentmesh_e2e::cluster()
            .get("clusterrolebinding", &rbac_name(ns, name), None)
            .is_none()
    );
    let logs = operator.logs();
    assert!(
        !logs.contains("forbidden") && !logs.contains("Forbidden"),
        "the operator was refused something:\n{logs}"
    );
}

/// Makes sure the cluster serves `monitoring.coreos.com/v1` ServiceMonitors: creates a minimal
/// CRD when there is none, and never touches an existing one (a real Prometheus Operator's).
fn ensure_service_monitor_crd() {
    let crd = "servicemonitors.monitoring.coreos.com";
    if agentmesh_e2e::cluster().get("crd", crd, None).is_none() {
        let manifest = json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": crd, "labels": {"agentmesh.io/e2e": "true"}},
            "spec": {
                "group": "monitoring.coreos.com",
                "names": {"kind": "ServiceMonitor", "listKind": "ServiceMonitorList", "plural": "servicemonitors", "singular": "servicemonitor"},
                "scope": "Namespaced",
                "versions": [{"name": "v1", "served": true, "storage": true, "schema": {
                    "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
                }}],
            }
        });
        let args = ["create", "-f", "-"];
        let output = cluster().kubectl_with_input(&args, Some(&manifest.to_string()));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() || stderr.contains("AlreadyExists"),
            "creating the ServiceMonitor CRD: {stderr}"
        );
    }
    cluster().wait_established(&[&format!("crd/{crd}")]);
}

#[test]
fn a_service_monitor_is_made_when_asked_and_removed_when_not() {
    ensure_service_monitor_crd();
    let name = "probe-e";
    let (namespace, mut operator, _cleanup) = start("mla-monitor", name);
    let ns = namespace.name.as_str();
    let service = format!("{name}-probe-metrics");
    let monitor = format!("{name}-probe");
    // Off by default: status written means the whole pass ran, and made neither.
    eventually(&mut operator, "the first status", || {
        agentmesh_e2e::cluster().get("mla", name, Some(ns))?["status"]["observedGeneration"]
            .as_i64()
            .map(|_| ())
    });
    assert!(
        agentmesh_e2e::cluster()
            .get("service", &service, Some(ns))
            .is_none()
    );
    assert!(
        agentmesh_e2e::cluster()
            .get("servicemonitor", &monitor, Some(ns))
            .is_none()
    );

    let patch = |enabled: bool| {
        cluster().kubectl_ok(&[
            "patch",
            "mla",
            name,
            "-n",
            ns,
            "--type",
            "merge",
            "-p",
            &json!({"spec": {"metrics": {"serviceMonitor": {"enabled": enabled, "interval": "15s"}}}})
                .to_string(),
        ]);
    };
    patch(true);
    let made = eventually(&mut operator, "the ServiceMonitor", || {
        agentmesh_e2e::cluster().get("servicemonitor", &monitor, Some(ns))
    });
    let agent = agentmesh_e2e::cluster().get("mla", name, Some(ns)).unwrap();
    assert_owned_by(&made, &agent);
    assert_eq!(made["spec"]["endpoints"][0]["interval"], "15s");
    assert_eq!(made["spec"]["endpoints"][0]["port"], "metrics");
    let svc = agentmesh_e2e::cluster()
        .get("service", &service, Some(ns))
        .expect("the metrics Service");
    assert_owned_by(&svc, &agent);
    assert_eq!(svc["spec"]["clusterIP"], "None");
    assert_eq!(svc["spec"]["ports"][0]["port"], 9090);
    for (key, value) in made["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&svc["metadata"]["labels"][key], value, "label {key}");
    }
    for (key, value) in svc["spec"]["selector"].as_object().unwrap() {
        let template = agentmesh_e2e::cluster()
            .get("daemonset", &monitor, Some(ns))
            .unwrap();
        assert_eq!(
            &template["spec"]["template"]["metadata"]["labels"][key], value,
            "the Service does not select the probe pods on {key}"
        );
    }

    patch(false);
    eventually(
        &mut operator,
        "the ServiceMonitor and Service to go",
        || {
            (agentmesh_e2e::cluster()
                .get("servicemonitor", &monitor, Some(ns))
                .is_none()
                && agentmesh_e2e::cluster()
                    .get("service", &service, Some(ns))
                    .is_none())
            .then_some(())
        },
    );
}

#[test]
fn a_service_monitor_in_another_namespace_follows_the_spec_and_goes_with_the_agent() {
    ensure_service_monitor_crd();
    let name = "probe-f";
    let (namespace, mut operator, _cleanup) = start("mla-monitor-ns", name);
    let monitoring = TestNamespace::create("mla-monitoring", &[]);
    let (ns, other) = (namespace.name.as_str(), monitoring.name.as_str());
    let local = format!("{name}-probe");
    let remote = format!("{ns}.{name}-probe");
    let monitor_in = |namespace: &str, monitor: &str| {
        agentmesh_e2e::cluster().get("servicemonitor", monitor, Some(namespace))
    };
    let patch = |monitor: Value| {
        cluster().kubectl_ok(&[
            "patch",
            "mla",
            name,
            "-n",
            ns,
            "--type",
            "merge",
            "-p",
            &json!({"spec": {"metrics": {"serviceMonitor": monitor}}}).to_string(),
        ]);
    };

    patch(json!({"enabled": true, "namespace": other, "labels": {"release": "prometheus"}}));
    let made = eventually(
        &mut operator,
        "the ServiceMonitor in the other namespace",
        || monitor_in(other, &remote),
    );
    // No owner reference can point across namespaces: the owner is named instead.
    assert!(made["metadata"]["ownerReferences"].is_null(), "{made}");
    assert_eq!(
        made["metadata"]["annotations"]["agentmesh.io/owner"],
        format!("{ns}/{name}")
    );
    assert_eq!(made["metadata"]["labels"]["release"], "prometheus");
    assert_labels(&made, name);
    assert_eq!(made["spec"]["namespaceSelector"]["matchNames"], json!([ns]));
    assert!(monitor_in(ns, &local).is_none());

    // Back beside the agent: the remote one goes.
    patch(json!({"namespace": null}));
    eventually(&mut operator, "the ServiceMonitor to move back", || {
        (monitor_in(ns, &local).is_some() && monitor_in(other, &remote).is_none()).then_some(())
    });
    // And out again: the local one goes.
    patch(json!({"namespace": other}));
    eventually(
        &mut operator,
        "the ServiceMonitor to move out again",
        || (monitor_in(ns, &local).is_none() && monitor_in(other, &remote).is_some()).then_some(()),
    );

    // Deleting the agent deletes it, in the finalizer.
    cluster().kubectl_ok(&["delete", "mla", name, "-n", ns, "--wait=false"]);
    eventually(&mut operator, "the MeshLogicAgent to go", || {
        agentmesh_e2e::cluster()
            .get("mla", name, Some(ns))
            .is_none()
            .then_some(())
    });
    assert!(monitor_in(other, &remote).is_none());
}

#[test]
fn an_existing_service_account_is_bound_and_left_alone() {
    let name = "probe-g";
    let (namespace, mut operator, _cleanup) = start("mla-own-sa", name);
    let ns = namespace.name.as_str();
    cluster().apply(
        ns,
        &json!({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "node-agents", "namespace": ns, "labels": {"team": "security"}},
        })
        .to_string(),
    );
    cluster().kubectl_ok(&[
        "patch",
        "mla",
        name,
        "-n",
        ns,
        "--type",
        "merge",
        "-p",
        &json!({"spec": {"serviceAccount": {"create": false, "name": "node-agents"}}}).to_string(),
    ]);
    eventually(
        &mut operator,
        "the DaemonSet on the existing ServiceAccount",
        || {
            let daemon_set =
                agentmesh_e2e::cluster().get("daemonset", &format!("{name}-probe"), Some(ns))?;
            (daemon_set["spec"]["template"]["spec"]["serviceAccountName"] == "node-agents")
                .then_some(())
        },
    );
    let binding = agentmesh_e2e::cluster()
        .get("clusterrolebinding", &rbac_name(ns, name), None)
        .expect("the ClusterRoleBinding");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "node-agents", "namespace": ns}])
    );
    // The existing one is untouched. (The one the operator made before stays, owned, until the
    // agent goes: the operator may not delete ServiceAccounts.)
    let account = agentmesh_e2e::cluster()
        .get("serviceaccount", "node-agents", Some(ns))
        .expect("the existing ServiceAccount");
    assert!(
        account["metadata"]["ownerReferences"].is_null(),
        "{account}"
    );
    assert_eq!(account["metadata"]["labels"], json!({"team": "security"}));
}
