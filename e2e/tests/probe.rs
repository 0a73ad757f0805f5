//! The probe and the operator end to end, on the real kernel and the real API server: a process
//! in a cgroup laid out like the kubelet's for a pod execs a binary that the pod's policy
//! alerts on; the probe sees it in the kernel, reports it with its MeshLogicAgent's
//! ServiceAccount token, and the operator lowers the pod's AgentIdentity score. The node's tier
//! reaches the MeshLogicAgent's status. Needs root and a BPF-capable kernel (as CI has).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use agentmesh_e2e::operator::{OperatorProcess, free_port};
use agentmesh_e2e::{TestNamespace, cluster};
use serde_json::{Value, json};

const NODE: &str = "kwok-node-0";

fn probe_binary() -> PathBuf {
    let operator = agentmesh_e2e::operator::operator_binary();
    operator.with_file_name("meshlogic-probe")
}

/// Removes the test's pod cgroup (and its parents it created) and stops the probe.
struct Cleanup {
    probe: Option<Child>,
    cgroups: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut probe) = self.probe.take() {
            let _ = probe.kill();
            let _ = probe.wait();
        }
        for dir in &self.cgroups {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

#[test]
fn behaviour_in_a_pod_cgroup_lowers_that_pods_identity_score() {
    assert_eq!(
        unsafe_geteuid(),
        0,
        "this test needs root and a BPF-capable kernel"
    );
    cluster().ensure_crds();
    let namespace = TestNamespace::create("probe", &[]);
    let ns = namespace.name.as_str();
    let mut operator = OperatorProcess::start(
        ns,
        "op",
        &[
            ("MESHLOGIC_LEASE_SECONDS", "3"),
            ("MESHLOGIC_STATUS_INTERVAL_SECONDS", "1"),
        ],
    );
    let apply = |object: Value| cluster().apply(ns, &object.to_string());

    // The probe under test is the host process below, playing the kwok node with a token
    // bound to that node. The MeshLogicAgent's DaemonSet goes to the fake nodes only: a probe
    // pod on the real node would see the same exec in the same kernel (the operator would
    // refuse its report of a kwok node's pod, but that would be another test).
    apply(
        json!({"apiVersion": "agentmesh.io/v1alpha1", "kind": "MeshLogicAgent", "metadata": {"name": "mla"},
        "spec": {"customerId": "e2e", "nodeSelector": agentmesh_e2e::fake_nodes(),
                 "tolerations": agentmesh_e2e::fake_node_tolerations()}}),
    );
    apply(
        json!({"apiVersion": "agentmesh.io/v1alpha1", "kind": "TrustPolicy", "metadata": {"name": "policy"},
        "spec": {"trust": {"decayRate": 0}, "behavior": {"exec": [{"path": "/usr/bin/env", "action": "alert", "penalty": 200}]}}}),
    );
    apply(
        json!({"apiVersion": "agentmesh.io/v1alpha1", "kind": "AgentIdentity", "metadata": {"name": "agent"}, "spec": {}}),
    );
    cluster().service_account(ns, "agent");
    apply(
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "agent-0", "labels": {"agentmesh.io/identity": "agent"}},
        "spec": {"nodeName": NODE, "serviceAccountName": "agent", "containers": [{"name": "agent", "image": "registry.invalid/agent:1"}]}}),
    );
    let uid = cluster()
        .get("pod", "agent-0", Some(ns))
        .expect("it exists")["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned();
    operator.wait_until(
        Duration::from_secs(60),
        "the probe's ServiceAccount and a score of 800",
        |_| {
            cluster()
                .kubectl(&["get", "serviceaccount", "mla-probe", "-n", ns])
                .status
                .success()
                && cluster()
                    .get("agentidentity", "agent", Some(ns))
                    .expect("it exists")["status"]["trustScore"]
                    == 800
        },
    );

    // The pod's cgroup as the kubelet's cgroupfs driver lays it out.
    let root = agentmesh_e2e::cgroup2_root();
    let kubepods = root.join("kubepods");
    let burstable = kubepods.join("burstable");
    let pod_dir = burstable.join(format!("pod{uid}"));
    let container = pod_dir.join("e2e-container");
    let mut cleanup = Cleanup {
        probe: None,
        cgroups: Vec::new(),
    };
    for dir in [&kubepods, &burstable, &pod_dir, &container] {
        if !dir.exists() {
            std::fs::create_dir(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
            cleanup.cgroups.insert(0, dir.clone());
        }
    }

    // The probe, as its DaemonSet would run it: the MeshLogicAgent's config and token.
    let work = std::env::temp_dir().join(format!("agentmesh-e2e-{ns}"));
    std::fs::create_dir_all(&work).unwrap();
    let config = work.join("config.json");
    let spec = json!({"customerId": "e2e", "reportIntervalSeconds": 1, "cgroup": {"root": root}});
    std::fs::write(
        &config,
        json!({"agent": format!("{ns}/mla"), "spec": spec}).to_string(),
    )
    .unwrap();
    let token = work.join("token");
    std::fs::write(&token, cluster().node_token(ns, "mla-probe", NODE)).unwrap();
    let log = work.join("probe.log");
    let probe = Command::new(probe_binary())
        .args(["--config", config.to_str().unwrap(), "--node-name", NODE])
        .args(["--trust-api", &format!("https://{}", operator.trust_api)])
        .env("MESHLOGIC_TRUST_API_CA", operator.ca_bundle())
        .args(["--token-file", token.to_str().unwrap()])
        .args(["--kubeconfig", cluster().kubeconfig.to_str().unwrap()])
        .args(["--cgroup-root", root.to_str().unwrap()])
        .args(["--metrics-addr", &format!("127.0.0.1:{}", free_port())])
        .env("AGENTMESH_LOG_FORMAT", "text")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(work.join("probe.err")).unwrap())
        .spawn()
        .expect("starting meshlogic-probe (built by make e2e)");
    cleanup.probe = Some(probe);

    // Run the alerted binary from inside the pod's cgroup until the score moves (the probe
    // starts watching the pod within a second of seeing it).
    let procs = container.join("cgroup.procs");
    let script = format!("echo $$ > {} && exec /usr/bin/env true", procs.display());
    let mut agent = Value::Null;
    operator.wait_until(
        Duration::from_secs(60),
        "the exec to lower the score to 600",
        |_| {
            let status = Command::new("sh").args(["-c", &script]).status().unwrap();
            assert!(status.success());
            agent = cluster()
                .get("agentidentity", "agent", Some(ns))
                .expect("it exists");
            agent["status"]["trustScore"] == 600
        },
    );
    let anomaly = &agent["status"]["behavior"]["recentAnomalies"][0];
    assert_eq!(anomaly["kind"], "ruleMatch", "{agent}");
    assert!(
        anomaly["detail"].as_str().unwrap().contains("/usr/bin/env"),
        "{anomaly}"
    );
    assert_eq!(anomaly["pod"], "agent-0");
    assert_eq!(agent["status"]["tier"], "standard");

    // The node's tier reaches the MeshLogicAgent (its reconciler looks again every 30 s).
    operator.wait_until(
        Duration::from_secs(45),
        "the node's tier in MeshLogicAgent status",
        |_| {
            let mla = cluster()
                .get("meshlogicagent", "mla", Some(ns))
                .expect("it exists");
            mla["status"]["nodes"]
                .as_array()
                .is_some_and(|nodes| nodes.iter().any(|n| n["node"] == NODE && n["tier"] == 2))
        },
    );
    // Delete the MeshLogicAgent while the operator runs, so its finalizer completes.
    cluster().kubectl_ok(&[
        "delete",
        "meshlogicagent",
        "mla",
        "-n",
        ns,
        "--wait=true",
        "--timeout=60s",
    ]);
    drop(cleanup);
}

fn unsafe_geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe extern "C" {
        fn geteuid() -> u32;
    }
    unsafe { geteuid() }
}
