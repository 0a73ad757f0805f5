//! Harness of the end-to-end suite: a real Kubernetes API server, reached through the real
//! `kubectl` and through kube-rs.
//!
//! Which cluster: `E2E_KUBECONFIG` when set (kind, k3d, a real cluster), otherwise the local
//! control plane that `make e2e` starts (`$AGENTMESH_CACHE/cluster/kubeconfig`, see
//! `e2e/cluster/README.md`). Which kubectl: `E2E_KUBECTL`, else the one built with the local
//! control plane, else `kubectl` on `PATH`.
//!
//! Every test gets its own namespace ([`TestNamespace`]), deleted when the test ends.

pub mod operator;
pub mod webhook;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

/// Kubernetes version of the local control plane; the e2e crate's k8s-openapi feature matches.
pub const LOCAL_KUBERNETES_VERSION: &str = "v1.34.4";

/// The cluster under test.
pub struct Cluster {
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
}

fn cache_dir() -> PathBuf {
    std::env::var_os("AGENTMESH_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/agentmesh")
        })
}

/// The node selector of kwok's fake nodes (up.sh labels them `type: kwok`). Tests about objects
/// and admission put their pods there, so that the real node only runs what a test means to run.
pub fn fake_nodes() -> Value {
    serde_json::json!({"type": "kwok"})
}

/// The toleration of kwok's fake nodes' taint (`kwok.x-k8s.io/node=fake:NoSchedule`, which keeps
/// everything else, the operator's Deployment and DaemonSets included, on the real node).
pub fn fake_node_tolerations() -> Value {
    serde_json::json!([{"key": "kwok.x-k8s.io/node", "operator": "Equal", "value": "fake", "effect": "NoSchedule"}])
}

/// The cgroup v2 mount point (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on hybrid hosts).
pub fn cgroup2_root() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("/proc/self/mountinfo");
    mountinfo
        .lines()
        .filter_map(|line| line.split_once(" - "))
        .find(|(_, right)| right.starts_with("cgroup2 "))
        .map(|(left, _)| left.split_whitespace().nth(4).unwrap().into())
        .expect("a cgroup2 mount")
}

/// Root of the repository (for `crds/` and `examples/`): from the manifest directory cargo
/// gives the running test, not the one compiled in. Checkouts at different paths share the
/// cache's target directory, and cargo reuses a binary built from another one.
pub fn repo_root() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest.join("..")
}

/// The probes' ClusterRole host-process operators bind (`MESHLOGIC_PROBE_CLUSTER_ROLE`), made
/// by [`Cluster::ensure_crds`].
pub const E2E_PROBE_CLUSTER_ROLE: &str = "agentmesh-e2e-probe";

/// The ClusterRoles of `deploy/operator-rbac.yaml` (the chart's, rendered): the operator's and
/// the probes'.
pub fn documented_cluster_roles() -> (Value, Value) {
    let path = repo_root().join("deploy/operator-rbac.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let documents: Vec<Value> =
        serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let named = |suffix: &str| {
        documents
            .iter()
            .find(|d| {
                d["kind"] == "ClusterRole"
                    && d["metadata"]["name"]
                        .as_str()
                        .is_some_and(|n| n.ends_with(suffix))
            })
            .unwrap_or_else(|| panic!("{}: no ClusterRole *{suffix}", path.display()))
            .clone()
    };
    (named("-operator"), named("-probe"))
}

/// The rules of the operator's Role in its own namespace in `deploy/operator-rbac.yaml`: its
/// only rights to Secrets.
pub fn documented_operator_role_rules() -> Value {
    let path = repo_root().join("deploy/operator-rbac.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let documents: Vec<Value> =
        serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    documents
        .into_iter()
        .find(|d| d["kind"] == "Role")
        .unwrap_or_else(|| panic!("{}: no Role", path.display()))["rules"]
        .clone()
}

/// The documented probes' ClusterRole under the name `name`.
pub fn probe_cluster_role(name: &str) -> Value {
    let (_, probe) = documented_cluster_roles();
    serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": name}, "rules": probe["rules"]})
}

/// The cluster named by the environment, checked once per test binary.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let kubeconfig = std::env::var_os("E2E_KUBECONFIG")
            .map(PathBuf::from)
            .unwrap_or_else(|| cache_dir().join("cluster/kubeconfig"));
        assert!(
            kubeconfig.exists(),
            "no cluster: {} does not exist. Run the suite with `make e2e` (starts a local control \
             plane) or set E2E_KUBECONFIG to a cluster's kubeconfig.",
            kubeconfig.display()
        );
        let kubectl = std::env::var_os("E2E_KUBECTL")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let built = cache_dir().join(format!("k8s/{LOCAL_KUBERNETES_VERSION}/bin/kubectl"));
                if built.exists() {
                    built
                } else {
                    PathBuf::from("kubectl")
                }
            });
        Cluster {
            kubeconfig,
            kubectl,
        }
    })
}

impl Cluster {
    /// The local cluster's PKI directory (`up.sh` writes it next to the kubeconfig): its CAs,
    /// the admin's certificate and the API server's webhook client certificate. `None` for a
    /// cluster of `E2E_KUBECONFIG`.
    pub fn pki(&self) -> Option<PathBuf> {
        let pki = self.kubeconfig.parent()?.join("pki");
        (std::env::var_os("E2E_KUBECONFIG").is_none() && pki.join("webhook-client-ca.crt").exists())
            .then_some(pki)
    }

    /// A kube-rs client for this cluster. One per test: a client is bound to the runtime that
    /// created it, and each `#[tokio::test]` has its own.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// Runs kubectl with this cluster's kubeconfig and the given standard input.
    pub fn kubectl_with_input(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut command = Command::new(&self.kubectl);
        command
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.kubectl.display()));
        if let Some(input) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// Runs kubectl; the result, whatever it is.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_with_input(args, None)
    }

    /// Runs kubectl and returns its standard output; panics with its standard error on failure.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        checked(args, self.kubectl(args))
    }

    /// Whether the namespace has an Event matching the field selector (e.g.
    /// `reason=Created,involvedObject.name=x`).
    pub fn has_events(&self, namespace: &str, field_selector: &str) -> bool {
        let names = self.kubectl_ok(&[
            "get",
            "events",
            "-n",
            namespace,
            "--field-selector",
            field_selector,
            "-o",
            "name",
        ]);
        !names.trim().is_empty()
    }

    /// A token of the ServiceAccount `account` for the trust API (`kubectl create token
    /// --audience agentmesh.io/trust-api`, as the kubelet projects it for the probe and the
    /// sidecar), bound to the pod `(name, uid)` when one is given.
    pub fn token(&self, namespace: &str, account: &str, pod: Option<(&str, &str)>) -> String {
        self.token_for(
            namespace,
            account,
            pod,
            Some(agentmesh_api::names::objects::TRUST_API_AUDIENCE),
        )
    }

    /// [`Self::token`] for `audience`, or for the API server's when `None` (what every pod has
    /// mounted, which the trust API refuses).
    pub fn token_for(
        &self,
        namespace: &str,
        account: &str,
        pod: Option<(&str, &str)>,
        audience: Option<&str>,
    ) -> String {
        let mut args = vec!["create", "token", account, "-n", namespace];
        if let Some(audience) = audience {
            args.extend(["--audience", audience]);
        }
        if let Some((name, uid)) = pod {
            args.extend([
                "--bound-object-kind",
                "Pod",
                "--bound-object-name",
                name,
                "--bound-object-uid",
                uid,
            ]);
        }
        self.kubectl_ok(&args).trim().to_owned()
    }

    /// Makes the ServiceAccount `name` (kept when it exists): an AgentIdentity admits only the
    /// pods of its account, by default the account of its own name.
    pub fn service_account(&self, namespace: &str, name: &str) {
        let object = serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}});
        self.apply(namespace, &object.to_string());
    }

    /// A token of the ServiceAccount `account` as a probe pod on `node` holds it: bound to a pod
    /// of that account on that node (created, a stand-in that runs nothing), so that the API
    /// server writes the node into it (`authentication.kubernetes.io/node-name`).
    pub fn node_token(&self, namespace: &str, account: &str, node: &str) -> String {
        let pod = format!("{account}-token-{node}");
        let object = serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod, "annotations": {"agentmesh.io/inject": "false"}},
            "spec": {"nodeName": node, "serviceAccountName": account, "automountServiceAccountToken": false,
                     "tolerations": fake_node_tolerations(),
                     "containers": [{"name": "holder", "image": "registry.invalid/holder:1"}]}});
        self.apply(namespace, &object.to_string());
        let uid = self
            .get("pod", &pod, Some(namespace))
            .expect("the pod exists")["metadata"]["uid"]
            .as_str()
            .expect("a uid")
            .to_owned();
        self.token(namespace, account, Some((&pod, &uid)))
    }

    /// `kubectl get <kind> <name> [-n namespace] -o json`: `None` when it does not exist; any
    /// other failure panics.
    pub fn get(&self, kind: &str, name: &str, namespace: Option<&str>) -> Option<Value> {
        let mut args = vec!["get", kind, name, "-o", "json"];
        if let Some(namespace) = namespace {
            args.extend(["-n", namespace]);
        }
        let output = self.kubectl(&args);
        if output.status.success() {
            return Some(
                serde_json::from_slice(&output.stdout).expect("kubectl -o json prints JSON"),
            );
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("NotFound"), "kubectl {args:?}: {stderr}");
        None
    }

    /// `kubectl apply -f -` of the given YAML; panics on failure.
    pub fn apply(&self, namespace: &str, yaml: &str) -> String {
        let args = ["apply", "-n", namespace, "-f", "-"];
        checked(&args, self.kubectl_with_input(&args, Some(yaml)))
    }

    /// Installs (or updates) the CRDs from `crds/` and waits until they are Established.
    /// Idempotent; done once per test binary.
    pub fn ensure_crds(&self) {
        static DONE: OnceLock<()> = OnceLock::new();
        DONE.get_or_init(|| {
            let dir = repo_root().join("crds");
            let dir = dir.to_str().unwrap();
            self.kubectl_ok(&["apply", "--server-side", "--force-conflicts", "-f", dir]);
            self.wait_established(&["-f", dir]);
            // The probes' ClusterRole, as the chart makes it, under a name of the tests' own
            // (the chart's own is the charts test's to install).
            let role = probe_cluster_role(E2E_PROBE_CLUSTER_ROLE);
            self.apply("default", &role.to_string());
        });
    }

    /// `kubectl wait --for=condition=Established` on CRDs. Right after a CRD is created its
    /// status may have no conditions yet, and kubectl then fails at once (`.status.conditions
    /// accessor error`) instead of waiting: that answer is retried, for up to a minute.
    pub fn wait_established(&self, target: &[&str]) {
        let mut args = vec!["wait", "--for=condition=Established", "--timeout=60s"];
        args.extend_from_slice(target);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let output = self.kubectl(&args);
            let stderr = String::from_utf8_lossy(&output.stderr);
            if output.status.success() {
                return;
            }
            assert!(
                stderr.contains("accessor error") && Instant::now() < deadline,
                "kubectl {} failed: {stderr}",
                args.join(" ")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn checked(args: &[&str], output: Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        panic!(
            "kubectl {} failed ({}):\n{}\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr),
            stdout
        );
    }
    stdout
}

/// A namespace of its own for one test, deleted (without waiting) when dropped.
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    /// Creates `e2e-<prefix>-<suffix>` with the given labels and waits for its default
    /// ServiceAccount (pods cannot be created before it exists).
    pub fn create(prefix: &str, labels: &[(&str, &str)]) -> Self {
        let suffix = format!("{:x}", rand_suffix());
        let name = format!("e2e-{prefix}-{suffix}");
        let label_lines: String = labels
            .iter()
            .map(|(k, v)| format!("    {k}: \"{v}\"\n"))
            .collect();
        let yaml = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n    agentmesh.io/e2e: \"true\"\n{label_lines}"
        );
        let cluster = cluster();
        let args = ["apply", "-f", "-"];
        checked(&args, cluster.kubectl_with_input(&args, Some(&yaml)));
        let namespace = Self { name };
        namespace.wait_for(
            Duration::from_secs(60),
            "its default ServiceAccount",
            || {
                cluster
                    .kubectl(&["get", "serviceaccount", "default", "-n", &namespace.name])
                    .status
                    .success()
            },
        );
        namespace
    }

    /// Polls `ready` until it holds, or panics after `timeout`.
    pub fn wait_for(&self, timeout: Duration, what: &str, mut ready: impl FnMut() -> bool) {
        let start = Instant::now();
        while !ready() {
            assert!(
                start.elapsed() < timeout,
                "namespace {}: timed out waiting for {what}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let _ = cluster().kubectl(&["delete", "namespace", &self.name, "--wait=false"]);
    }
}

fn rand_suffix() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(Instant::now().elapsed().as_nanos());
    hasher.finish() as u32
}

/// Reads a YAML file and re-targets it at `namespace` (examples name their own namespace).
pub fn example_in_namespace(path: &Path, namespace: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let mut value: Value = serde_saphyr::from_str(&text)?;
    let Some(metadata) = value.get_mut("metadata").and_then(Value::as_object_mut) else {
        bail!("{} has no metadata", path.display());
    };
    metadata.insert("namespace".into(), namespace.into());
    Ok(serde_json::to_string(&value)?)
}

/// The `# key: value` header line of an example file.
pub fn example_header(path: &Path, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let prefix = format!("# {key}: ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(str::to_owned)
}

/// The condition of this type in an object's `status.conditions`.
/// Polls `check` every 500 ms until it gives a value, and returns it; after `timeout`, panics
/// naming `what`, with the cluster's pods and its 40 latest Events. `label` prefixes the log
/// line saying how long it took.
pub fn wait_until<T>(
    label: &str,
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            eprintln!("{label}: {what} after {:.1?}", start.elapsed());
            return value;
        }
        if start.elapsed() > timeout {
            let pods = cluster().kubectl(&["get", "pods", "-A", "-o", "wide"]);
            let events = cluster().kubectl(&["get", "events", "-A", "--sort-by=.lastTimestamp"]);
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}\n{}",
                String::from_utf8_lossy(&pods.stdout),
                String::from_utf8_lossy(&events.stdout)
                    .lines()
                    .rev()
                    .take(40)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Whether a pod (as JSON) is Ready and not being deleted.
pub fn pod_ready(pod: &Value) -> bool {
    pod["metadata"]["deletionTimestamp"].is_null()
        && pod["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

pub fn condition<'a>(object: &'a Value, type_: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// The `.yaml` files of a directory, sorted.
pub fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    files
}
