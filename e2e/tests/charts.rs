//! The Helm charts as a platform team uses them, on the local cluster's real node, with the
//! seeds' commands as written:
//!
//! - the deployment guide's `helm install agentmesh ./charts/agentmesh --namespace agentmesh
//!   --create-namespace --set redis.auth.password=… --set storage.backend=redis`: the operator's
//!   pods and the chart's Redis become Ready, and the operator logs in to that Redis with the
//!   chart's password (its `/ready` says `storage.up`);
//! - the MeshLogic README's `kubectl create namespace meshlogic` and `helm install
//!   meshlogic-agent … --namespace meshlogic --set agent.customerId=YOUR_CUSTOMER_ID`: the
//!   operator rolls the MeshLogicAgent out and the probe pod becomes Ready on the node;
//!   without `agent.customerId` the install stops, saying so;
//! - `helm template | kubectl apply --dry-run=server` of every golden scenario: the API server
//!   validates each object, the CRDs' schemas and CEL rules included;
//! - `helm upgrade` with a changed value rolls the operator (new pods with the new setting) and
//!   the probe (new tier in status);
//! - the audit chain in the chart's Redis, read as the README says (`kubectl port-forward` and
//!   `agentmesh audit`): a quarantine recorded by the leader pod and its release recorded by the
//!   next leader, once the first pod is deleted, verify as one chain, each recorded once; an
//!   entry edited there by hand is named by `agentmesh audit verify`;
//! - `helm uninstall` of both removes everything but the CRDs (kept on purpose, see the chart's
//!   README): the Deployment, the Redis, RBAC, and the objects the operator made itself (the
//!   webhook configuration and its certificate Secret, garbage-collected with the ClusterRole
//!   that owns them; the probe's cluster RBAC, removed by the MeshLogicAgent's finalizer).
//!
//! The images come from `make images` (the operator, sidecar and probe) and `scripts/images.sh
//! e2e` (the chart's default Redis image, `docker.io/library/redis:7.0.15`, built from Debian's
//! Redis 7.0.15 because Docker Hub cannot be reached here).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use agentmesh_e2e::{cluster, pod_ready as ready, repo_root};

fn wait<T>(timeout: Duration, what: &str, check: impl FnMut() -> Option<T>) -> T {
    agentmesh_e2e::wait_until("charts", timeout, what, check)
}
use serde_json::Value;

const NAMESPACE: &str = "agentmesh";
const PROBE_NAMESPACE: &str = "meshlogic";
const WEBHOOK_CONFIGURATION: &str = "agentmesh-sidecar-injector-agentmesh";
const CRDS: [&str; 3] = [
    "agentidentities.agentmesh.io",
    "trustpolicies.agentmesh.io",
    "meshlogicagents.agentmesh.io",
];

/// The chart tools of `scripts/chart-tools.sh` (built once, cached).
fn tools() -> &'static HashMap<String, String> {
    static TOOLS: std::sync::OnceLock<HashMap<String, String>> = std::sync::OnceLock::new();
    TOOLS.get_or_init(|| {
        let output = Command::new(repo_root().join("scripts/chart-tools.sh"))
            .output()
            .expect("running scripts/chart-tools.sh");
        assert!(
            output.status.success(),
            "scripts/chart-tools.sh: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.strip_prefix("export "))
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
            .collect()
    })
}

/// Runs a shell command line from the repository root, as a user would type it, with helm and
/// kubectl on the PATH and the cluster's kubeconfig.
fn sh(line: &str) -> Output {
    let helm = PathBuf::from(&tools()["HELM"]);
    let kubectl = cluster().kubectl.clone();
    // `agentmesh` too, as e2e/run.sh builds it (beside the operator's binary).
    let cli = agentmesh_e2e::operator::operator_binary();
    let path = format!(
        "{}:{}:{}:{}",
        helm.parent().unwrap().display(),
        cli.parent().unwrap().display(),
        kubectl
            .parent()
            .map_or_else(|| ".".into(), |p| p.display().to_string()),
        std::env::var("PATH").unwrap_or_default()
    );
    let home = std::env::temp_dir().join("agentmesh-e2e-helm");
    eprintln!("charts: $ {line}");
    Command::new("bash")
        .args(["-o", "pipefail", "-c", line])
        .current_dir(repo_root())
        .env("PATH", path)
        .env("KUBECONFIG", &cluster().kubeconfig)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .unwrap()
}

fn sh_ok(line: &str) -> String {
    let output = sh(line);
    assert!(
        output.status.success(),
        "`{line}` failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn list(kind: &str, namespace: &str, selector: &str) -> Vec<Value> {
    let text = cluster().kubectl_ok(&["get", kind, "-n", namespace, "-l", selector, "-o", "json"]);
    serde_json::from_str::<Value>(&text).unwrap()["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The operator's `/ready` through the API server's proxy, of `via`: `services/agentmesh` (any
/// replica) or `pods/<name>` (that one).
fn operator_ready(via: &str) -> Option<Value> {
    let output = cluster().kubectl(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/{NAMESPACE}/{via}:8080/proxy/ready"),
    ]);
    serde_json::from_slice(&output.stdout).ok()
}

/// Writes `password` into the chart's Redis Secret (the operator reads it when it starts).
fn set_redis_password(password: &str) {
    let patch = serde_json::json!({"stringData": {"redis-password": password}}).to_string();
    cluster().kubectl_ok(&[
        "patch",
        "secret",
        "agentmesh-redis",
        "-n",
        NAMESPACE,
        "--type=merge",
        "-p",
        &patch,
    ]);
}

const AUDIT_NAMESPACE: &str = "audit-e2e";

/// `kubectl port-forward` to the chart's Redis on a free local port, stopped when dropped.
struct PortForward {
    child: std::process::Child,
    port: u16,
}

impl PortForward {
    fn to_redis() -> Self {
        use std::io::BufRead;
        let mut child = Command::new(&cluster().kubectl)
            .args([
                "port-forward",
                "-n",
                NAMESPACE,
                "svc/agentmesh-redis-master",
                ":6379",
            ])
            .env("KUBECONFIG", &cluster().kubeconfig)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // `Forwarding from 127.0.0.1:43127 -> 6379`
        let mut line = String::new();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut line).unwrap();
        // kubectl writes a line per connection: keep reading, or it dies of a broken pipe.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let port = line
            .strip_prefix("Forwarding from 127.0.0.1:")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("kubectl port-forward said {line:?}"));
        Self { child, port }
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The README's way to read the chart's audit store: its Redis through a port-forward, the
/// password from the chart's Secret.
fn agentmesh_audit(port: u16, args: &str) -> Output {
    sh(&format!(
        "AGENTMESH_STORAGE_BACKEND=redis AGENTMESH_REDIS_HOST=127.0.0.1 AGENTMESH_REDIS_PORT={port} \
         AGENTMESH_REDIS_PASSWORD=\"$(kubectl get secret -n agentmesh agentmesh-redis \
           -o jsonpath='{{.data.redis-password}}' | base64 -d)\" \
         agentmesh audit {args}"
    ))
}

/// Waits until the chain holds a `decision` entry of the test's identity; returns its entries,
/// oldest first.
fn wait_audited(port: u16, decision: &str) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let output = agentmesh_audit(
            port,
            &format!("tail -n 100000 -o json --identity {AUDIT_NAMESPACE}/auditor"),
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        let entries: Vec<Value> = stdout
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect();
        if output.status.success() && count(&entries, decision) > 0 {
            return entries;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {decision} of {AUDIT_NAMESPACE}/auditor in the chart's Redis: {}\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn count(entries: &[Value], decision: &str) -> usize {
    entries.iter().filter(|e| e["decision"] == decision).count()
}

fn lease_holder() -> Option<String> {
    cluster().get("lease", "meshlogic-operator-leader", Some(NAMESPACE))?["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_owned)
}

/// Decisions of the operator's pods reach the chart's Redis, and `agentmesh audit`, run as the
/// README says, reads them: a quarantine made by one leader pod and the release made by the next
/// one, after the first was deleted, are one chain that verifies, each recorded once; an entry
/// edited in that Redis by hand is named by `verify`.
fn audit_chain_in_the_charts_redis() {
    let apply = |object: Value| cluster().apply(AUDIT_NAMESPACE, &object.to_string());
    cluster().kubectl_ok(&["create", "namespace", AUDIT_NAMESPACE]);
    // The threshold must not exceed the initial score; an existing score stays where it is.
    let policy = |min: i64| {
        serde_json::json!({"apiVersion": "agentmesh.io/v1alpha1", "kind": "TrustPolicy",
            "metadata": {"name": "audit"},
            "spec": {"trust": {"initialScore": min.max(800), "decayRate": 0, "decayFloor": 100, "minThreshold": min}}})
    };
    apply(policy(300));
    apply(
        serde_json::json!({"apiVersion": "agentmesh.io/v1alpha1", "kind": "AgentIdentity",
        "metadata": {"name": "auditor"}, "spec": {}}),
    );
    let quarantined = |want: bool| {
        move || {
            let identity = cluster().get("agentidentity", "auditor", Some(AUDIT_NAMESPACE))?;
            (identity["status"]["trustScore"].is_i64() && identity["status"]["quarantined"] == want)
                .then_some(())
        }
    };
    wait(
        Duration::from_secs(60),
        "the identity scored",
        quarantined(false),
    );

    // The threshold above the score: the leader quarantines the identity and records it.
    let first_leader = lease_holder().expect("a leader");
    apply(policy(900));
    wait(
        Duration::from_secs(60),
        "the identity quarantined",
        quarantined(true),
    );
    let forward = PortForward::to_redis();
    let entries = wait_audited(forward.port, "quarantine");
    assert_eq!(count(&entries, "release"), 0, "{entries:?}");

    // The leader pod deleted: the other replica leads and records the release.
    sh_ok(&format!("kubectl delete pod -n agentmesh {first_leader}"));
    let second_leader = wait(Duration::from_secs(90), "another pod leading", || {
        lease_holder().filter(|holder| *holder != first_leader)
    });
    apply(policy(300));
    wait(
        Duration::from_secs(60),
        "the identity released",
        quarantined(false),
    );
    let entries = wait_audited(forward.port, "release");
    // Once each: the new leader did not record the first one's quarantine again.
    assert_eq!(
        (count(&entries, "quarantine"), count(&entries, "release")),
        (1, 1),
        "{entries:?}"
    );
    let verified = agentmesh_audit(forward.port, "verify");
    let out = String::from_utf8_lossy(&verified.stdout).into_owned()
        + &String::from_utf8_lossy(&verified.stderr);
    assert!(
        verified.status.success() && out.starts_with("verified: "),
        "{out}"
    );
    eprintln!(
        "charts: quarantine by {first_leader}, release by {second_leader}: one chain in the chart's Redis ({})",
        out.trim()
    );

    // The quarantine entry edited in that Redis by hand (its score changed): verify names it.
    let seq = entries
        .iter()
        .find(|e| e["decision"] == "quarantine")
        .unwrap()["seq"]
        .as_u64()
        .unwrap();
    let redis = |args: &str| {
        sh_ok(&format!(
            "redis-cli -p {} --no-auth-warning -a \"$(kubectl get secret -n agentmesh agentmesh-redis \
               -o jsonpath='{{.data.redis-password}}' | base64 -d)\" {args}",
            forward.port
        ))
    };
    // The list holds the entries from the oldest kept, so the index is the seq minus the first.
    let first: Value = serde_json::from_str(&redis("LINDEX agentmesh:audit:entries 0")).unwrap();
    let index = seq - first["seq"].as_u64().unwrap();
    let stored = redis(&format!("LINDEX agentmesh:audit:entries {index}"));
    let edited = stored.trim().replacen("\"score\":", "\"score\":1", 1);
    assert_ne!(edited, stored.trim(), "{stored}");
    let quoted = edited.replace('\'', r"'\''");
    assert_eq!(
        redis(&format!("LSET agentmesh:audit:entries {index} '{quoted}'")).trim(),
        "OK"
    );
    let refused = agentmesh_audit(forward.port, "verify");
    let out = String::from_utf8_lossy(&refused.stdout);
    assert_eq!(refused.status.code(), Some(1), "{out}");
    assert!(
        out.starts_with(&format!("FAILED at entry seq {seq} ")),
        "{out}"
    );
    drop(forward);
    cluster().kubectl_ok(&["delete", "namespace", AUDIT_NAMESPACE, "--wait=false"]);
}

/// Renders every golden scenario of a chart and has the API server validate it (dry run).
fn dry_run_scenarios(chart: &str) {
    let dir = repo_root().join("charts").join(chart).join("tests/golden");
    let mut scenarios: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.to_string_lossy().ends_with(".values.yaml"))
        .collect();
    scenarios.sort();
    assert!(!scenarios.is_empty());
    for values in scenarios {
        let first = std::fs::read_to_string(&values).unwrap();
        let first = first.lines().next().unwrap();
        // `# release: R, namespace: N — ...`
        let release = first
            .split("release: ")
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap();
        let namespace = first
            .split("namespace: ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap();
        let relative = values.strip_prefix(repo_root()).unwrap_or(Path::new(""));
        let exists = cluster()
            .kubectl(&["get", "namespace", namespace])
            .status
            .success();
        if !exists {
            cluster().kubectl_ok(&["create", "namespace", namespace]);
        }
        // Objects of kinds whose CRDs this cluster lacks (the Prometheus Operator's, cert-manager's)
        // are checked by kubeconform in `make chart-test`; the API server checks the rest.
        let output = sh(&format!(
            "helm template {release} ./charts/{chart} --namespace {namespace} -f {} \
             | kubectl apply --server-side --force-conflicts --field-manager=dry-run \
                 --dry-run=server -f - 2>&1 \
             | grep -v -e 'no matches for kind \"ServiceMonitor\"' -e 'no matches for kind \"PrometheusRule\"' \
                       -e 'no matches for kind \"Certificate\"' -e 'no matches for kind \"Issuer\"' \
                       -e 'ensure CRDs are installed first' -e '^Warning: ' || true",
            relative.display()
        ));
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        if !exists {
            let _ = cluster().kubectl(&["delete", "namespace", namespace, "--wait=false"]);
        }
        let refused: Vec<&str> = text
            .lines()
            .filter(|line| !line.contains("(server dry run)"))
            .filter(|line| !line.trim().is_empty())
            .collect();
        assert!(
            refused.is_empty(),
            "{chart}/{}: the API server refused:\n{}",
            values.display(),
            refused.join("\n")
        );
        assert!(
            text.contains("(server dry run)"),
            "{chart}: nothing was applied: {text}"
        );
    }
}

/// checkov on the objects the operator made from the MeshLogicAgent (the meshlogic-agent chart
/// renders only that resource), with the skips its README explains.
fn checkov_on_what_the_operator_rendered() {
    let dir = tempfile_dir("checkov-probe");
    let namespaced = cluster().kubectl_ok(&[
        "get",
        "daemonsets,serviceaccounts,configmaps,services",
        "-n",
        PROBE_NAMESPACE,
        "-l",
        "app.kubernetes.io/name=meshlogic-agent",
        "-o",
        "yaml",
    ]);
    let rbac = cluster().kubectl_ok(&[
        "get",
        "clusterroles,clusterrolebindings",
        "-l",
        "app.kubernetes.io/name=meshlogic-agent",
        "-o",
        "yaml",
    ]);
    assert!(namespaced.contains("kind: DaemonSet"), "{namespaced}");
    std::fs::write(dir.join("probe.yaml"), namespaced).unwrap();
    std::fs::write(dir.join("rbac.yaml"), rbac).unwrap();
    let skips: Vec<String> =
        std::fs::read_to_string(repo_root().join("charts/meshlogic-agent/tests/checkov-skips.txt"))
            .unwrap()
            .lines()
            .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
            .collect();
    let output = Command::new(&tools()["CHECKOV"])
        .args([
            "--directory",
            dir.to_str().unwrap(),
            "--framework",
            "kubernetes",
        ])
        .args(["--quiet", "--compact", "--skip-check", &skips.join(",")])
        .env("BC_SKIP_MAPPING", "TRUE")
        .env("CKV_SKIP_PACKAGE_UPDATE_CHECK", "true")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "checkov on the probe's objects:\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
    eprintln!(
        "charts: checkov passes on the probe's DaemonSet, ServiceAccount, ConfigMap, Service and RBAC"
    );
    let _ = std::fs::remove_dir_all(dir);
}

fn tempfile_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("agentmesh-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Removes whatever a failed run left, so the next run (and the other tests) start clean.
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = sh("helm uninstall meshlogic-agent -n meshlogic --wait --timeout 60s");
        let _ = sh("helm uninstall agentmesh -n agentmesh --wait --timeout 60s");
        for namespace in [AUDIT_NAMESPACE, PROBE_NAMESPACE, NAMESPACE] {
            let _ = cluster().kubectl(&[
                "delete",
                "namespace",
                namespace,
                "--ignore-not-found",
                "--timeout=60s",
            ]);
        }
        let _ = cluster().kubectl(&[
            "delete",
            "mutatingwebhookconfiguration",
            WEBHOOK_CONFIGURATION,
            "--ignore-not-found",
        ]);
    }
}

#[test]
fn the_seeds_helm_commands_install_upgrade_and_uninstall_on_the_real_node() {
    let nodes = cluster().kubectl_ok(&["get", "nodes", "-l", "type!=kwok", "-o", "name"]);
    assert!(
        !nodes.trim().is_empty(),
        "this test needs a real node (make cluster-up starts one)"
    );
    let _cleanup = Cleanup;
    // CRDs applied earlier with `kubectl apply -f crds/` (the other tests do) are handed to the
    // release, as the chart's README says to when moving to Helm.
    for crd in CRDS {
        if cluster().get("crd", crd, None).is_some() {
            cluster().kubectl_ok(&[
                "label",
                "crd",
                crd,
                "--overwrite",
                "app.kubernetes.io/managed-by=Helm",
            ]);
            cluster().kubectl_ok(&[
                "annotate",
                "crd",
                crd,
                "--overwrite",
                "meta.helm.sh/release-name=agentmesh",
                "meta.helm.sh/release-namespace=agentmesh",
            ]);
        }
    }

    // ------------------------------------------------------- the deployment guide's command
    sh_ok(
        "helm install agentmesh ./charts/agentmesh \\
           --namespace agentmesh \\
           --create-namespace \\
           --set redis.auth.password=your-secure-password \\
           --set storage.backend=redis",
    );
    let operators = wait(
        Duration::from_secs(240),
        "the operator's two replicas Ready",
        || {
            let pods = list("pods", NAMESPACE, "app.kubernetes.io/component=server");
            (pods.len() == 2 && pods.iter().all(ready)).then_some(pods)
        },
    );
    for pod in &operators {
        assert_eq!(
            pod["spec"]["securityContext"]["runAsNonRoot"], true,
            "restricted: {pod}"
        );
    }
    wait(Duration::from_secs(120), "the chart's Redis Ready", || {
        let pods = list("pods", NAMESPACE, "app.kubernetes.io/component=redis");
        (pods.len() == 1 && pods.iter().all(ready)).then_some(())
    });
    let ready_body = wait(
        Duration::from_secs(60),
        "the operator logged in to the chart's Redis with the chart's password",
        || operator_ready("services/agentmesh").filter(|body| body["storage"]["up"] == true),
    );
    assert_eq!(ready_body["storage"]["backend"], "redis");
    assert_eq!(
        ready_body["storage"]["at"],
        "redis://agentmesh-redis-master:6379"
    );
    // The webhook configuration the operator registered, owned by the chart's ClusterRole.
    let webhook = wait(
        Duration::from_secs(60),
        "the webhook configuration with its caBundle",
        || {
            let config =
                cluster().get("mutatingwebhookconfiguration", WEBHOOK_CONFIGURATION, None)?;
            config["webhooks"][0]["clientConfig"]["caBundle"]
                .as_str()
                .filter(|ca| !ca.is_empty())?;
            Some(config)
        },
    );
    assert_eq!(
        webhook["metadata"]["ownerReferences"][0]["kind"], "ClusterRole",
        "{webhook}"
    );
    assert_eq!(
        webhook["metadata"]["ownerReferences"][0]["name"],
        "agentmesh-operator"
    );

    // A wrong password: Redis refuses it, and the operator says so in /ready and its metric
    // while staying Ready (the webhook and the trust API matter more than the audit copy).
    set_redis_password("not-the-password");
    let victim = operators[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    cluster().kubectl_ok(&["delete", "pod", &victim, "-n", NAMESPACE, "--wait=false"]);
    let (fresh, body) = wait(
        Duration::from_secs(180),
        "a new operator pod, Ready, reporting the refused Redis login",
        || {
            let pods = list("pods", NAMESPACE, "app.kubernetes.io/component=server");
            let fresh = pods.iter().find(|p| {
                ready(p)
                    && !operators
                        .iter()
                        .any(|o| o["metadata"]["name"] == p["metadata"]["name"])
            })?;
            let name = fresh["metadata"]["name"].as_str()?.to_owned();
            let body = operator_ready(&format!("pods/{name}"))?;
            (body["storage"]["up"] == false).then_some((name, body))
        },
    );
    let error = body["storage"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        error.contains("WRONGPASS") || error.to_lowercase().contains("auth"),
        "the reason names the refused login: {body}"
    );
    assert!(
        !body.to_string().contains("not-the-password"),
        "never the password: {body}"
    );
    let metrics = cluster().kubectl_ok(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/{NAMESPACE}/pods/{fresh}:9090/proxy/metrics"),
    ]);
    assert!(
        metrics
            .lines()
            .any(|l| l == "meshlogic_operator_storage_up 0"),
        "the metric says the store is down"
    );
    set_redis_password("your-secure-password");

    // ------------------------------------------------------- every rendering, validated by the API server
    dry_run_scenarios("agentmesh");

    // ------------------------------------------------------- the MeshLogic README's commands
    sh_ok("kubectl create namespace meshlogic");
    let refused = sh("helm install meshlogic-agent ./charts/meshlogic-agent --namespace meshlogic");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("agent.customerId is required"),
        "a clear message: {stderr}"
    );
    sh_ok(
        "helm install meshlogic-agent ./charts/meshlogic-agent \\
           --namespace meshlogic \\
           --set agent.customerId=YOUR_CUSTOMER_ID",
    );
    let probe = wait(
        Duration::from_secs(180),
        "the probe DaemonSet's pod Ready on the real node",
        || {
            let pods = list(
                "pods",
                PROBE_NAMESPACE,
                "app.kubernetes.io/name=meshlogic-agent",
            );
            pods.into_iter().find(ready)
        },
    );
    assert_eq!(
        probe["spec"]["containers"][0]["image"],
        "registry.meshlogic.ai/meshlogic/agent:0.1.0"
    );
    wait(
        Duration::from_secs(90),
        "the node's tier in the MeshLogicAgent's status",
        || {
            let agent =
                cluster().get("meshlogicagent", "meshlogic-agent", Some(PROBE_NAMESPACE))?;
            (agent["status"]["readyNodes"].as_i64() >= Some(1)
                && agent["status"]["nodes"][0]["tier"].as_i64().is_some())
            .then_some(())
        },
    );
    let logs = sh_ok("kubectl logs -n meshlogic -l app.kubernetes.io/name=meshlogic-agent");
    assert!(
        !logs.trim().is_empty(),
        "the README's logs command shows the probe's logs"
    );
    dry_run_scenarios("meshlogic-agent");
    checkov_on_what_the_operator_rendered();

    // ------------------------------------------------------- helm upgrade rolls
    let before: Vec<String> = list("pods", NAMESPACE, "app.kubernetes.io/component=server")
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    sh_ok(
        "helm upgrade agentmesh ./charts/agentmesh --namespace agentmesh --reuse-values \
         --set trust.minThreshold=350",
    );
    wait(
        Duration::from_secs(240),
        "new operator pods Ready with the changed setting",
        || {
            let pods = list("pods", NAMESPACE, "app.kubernetes.io/component=server");
            let fresh = pods.iter().all(|p| {
                !before.contains(&p["metadata"]["name"].as_str().unwrap_or("").to_owned())
            });
            (pods.len() == 2 && fresh && pods.iter().all(ready)).then_some(())
        },
    );
    let config = cluster()
        .get("configmap", "agentmesh-config", Some(NAMESPACE))
        .unwrap();
    assert_eq!(config["data"]["AGENTMESH_TRUST_MIN_THRESHOLD"], "350");
    wait(Duration::from_secs(60), "the new leader's /ready", || {
        operator_ready("services/agentmesh").filter(|body| body["storage"]["up"] == true)
    });

    // ------------------------------------------------------- the audit chain in the chart's Redis
    audit_chain_in_the_charts_redis();

    sh_ok(
        "helm upgrade meshlogic-agent ./charts/meshlogic-agent --namespace meshlogic \
         --reuse-values --set agent.safetyTier=1",
    );
    wait(
        Duration::from_secs(180),
        "the probe rolled to tier 1 (user mode)",
        || {
            let agent =
                cluster().get("meshlogicagent", "meshlogic-agent", Some(PROBE_NAMESPACE))?;
            (agent["spec"]["safetyTier"] == 1
                && agent["status"]["nodes"][0]["tier"] == 1
                && agent["status"]["readyNodes"].as_i64() >= Some(1))
            .then_some(())
        },
    );

    // ------------------------------------------------------- helm uninstall
    let probe_rbac: Vec<String> = cluster()
        .kubectl_ok(&[
            "get",
            "clusterrolebinding",
            "-l",
            "app.kubernetes.io/name=meshlogic-agent",
            "-o",
            "name",
        ])
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(
        !probe_rbac.is_empty(),
        "the operator bound the probe's ServiceAccount"
    );
    // To the chart's probe ClusterRole: the operator made none.
    let roles = cluster().kubectl_ok(&[
        "get",
        "clusterrole",
        "-l",
        "app.kubernetes.io/name=meshlogic-agent",
        "-o",
        "name",
    ]);
    assert!(roles.trim().is_empty(), "{roles}");
    sh_ok("helm uninstall meshlogic-agent -n meshlogic");
    wait(
        Duration::from_secs(120),
        "the probe, its DaemonSet and its cluster RBAC gone",
        || {
            let left = cluster().kubectl_ok(&[
                "get",
                "daemonsets,meshlogicagents,serviceaccounts,configmaps",
                "-n",
                PROBE_NAMESPACE,
                "-l",
                "app.kubernetes.io/name=meshlogic-agent",
                "-o",
                "name",
            ]);
            let rbac = probe_rbac
                .iter()
                .any(|name| cluster().kubectl(&["get", name]).status.success());
            (left.trim().is_empty() && !rbac).then_some(())
        },
    );
    sh_ok("kubectl delete namespace meshlogic");

    // The audit test's identity is gone: the leader sweeps its key Secret (every 30 s), which
    // the chart does not own and would otherwise be left behind.
    let key = agentmesh_api::names::objects::key_secret_name(AUDIT_NAMESPACE, "auditor");
    wait(
        Duration::from_secs(90),
        "the audit identity's key Secret swept",
        || {
            cluster()
                .get("secret", &key, Some(NAMESPACE))
                .is_none()
                .then_some(())
        },
    );
    sh_ok("helm uninstall agentmesh -n agentmesh");
    wait(
        Duration::from_secs(120),
        "the operator, its Redis, RBAC, webhook configuration and certificate Secret gone",
        || {
            let left = cluster().kubectl_ok(&[
                "get",
                "deployments,statefulsets,services,secrets,configmaps,serviceaccounts,poddisruptionbudgets",
                "-n",
                NAMESPACE,
                "-o",
                "name",
            ]);
            let left: Vec<&str> = left
                .lines()
                // Kubernetes' own: the namespace's CA bundle and default ServiceAccount.
                .filter(|name| {
                    !matches!(
                        *name,
                        "configmap/kube-root-ca.crt" | "serviceaccount/default"
                    )
                })
                .collect();
            let webhook = format!("mutatingwebhookconfiguration/{WEBHOOK_CONFIGURATION}");
            let cluster_left = [
                "clusterrole/agentmesh-operator",
                "clusterrole/agentmesh-probe",
                "clusterrolebinding/agentmesh-operator",
                webhook.as_str(),
            ]
            .into_iter()
            .filter(|name| cluster().kubectl(&["get", name]).status.success())
            .count();
            (left.is_empty() && cluster_left == 0).then_some(())
        },
    );
    for crd in CRDS {
        assert!(
            cluster().get("crd", crd, None).is_some(),
            "{crd} is kept on uninstall (crds.keep)"
        );
    }
    sh_ok("kubectl delete namespace agentmesh");
}
