//! The product as users run it, on the local cluster's real node (e2e/cluster/node.sh): every
//! component is a pod the kubelet starts from the images of `make images`.
//!
//! - the operator as its Deployment (`deploy/agentmesh.yaml`, rendered from the chart: two replicas, its ServiceAccount
//!   and ClusterRole, the `agentmesh` Service; the API server calls the webhook through it);
//! - a pod created in a labelled namespace gets the sidecar, which the kubelet starts as a
//!   native sidecar with the identity's key file mounted, and answers `/health`;
//! - a MeshLogicAgent's DaemonSet runs the probe on the node, which reports tier 2 and attributes
//!   an exec, an open and a connect done in another pod's container (`kubectl exec`) to that pod:
//!   its AgentIdentity's score drops by the policy's penalties;
//! - the agent (a shell in its container) calls the official TypeScript SDK's reference MCP
//!   server, itself a pod behind a Service, through its sidecar; a quarantine set through the
//!   operator makes the sidecar deny the same call within seconds;
//! - deleting the leader pod hands the Lease to the other replica, which goes on writing status.
//!
//! One test, in order: the steps share the installed operator, and this binary must remove it
//! before the next test binary runs its own operators (the in-cluster webhook and reconcilers
//! would otherwise act on their namespaces too).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use agentmesh_e2e::operator::http_request;
use agentmesh_e2e::{TestNamespace, cluster, pod_ready, repo_root};

fn wait<T>(timeout: Duration, what: &str, check: impl FnMut() -> Option<T>) -> T {
    agentmesh_e2e::wait_until("node", timeout, what, check)
}
use serde_json::{Value, json};

const OPERATOR_NAMESPACE: &str = "agentmesh";
const TOOLS_IMAGE: &str = "agentmesh.local/e2e-tools:1";
const WEBHOOK_CONFIGURATION: &str = "agentmesh-sidecar-injector-agentmesh";
const LEASE: &str = "meshlogic-operator-leader";
/// @modelcontextprotocol/server-everything (the official TypeScript SDK's reference server) on
/// Node.js, as an image (`make images`).
const MCP_SERVER_IMAGE: &str = "agentmesh.local/e2e-mcp-everything:1";

/// The agent: a shell in the agent's container speaking MCP (Streamable HTTP, 2025-06-18) to its
/// sidecar on localhost:8081 with busybox's nc — initialize, take the session, initialized, then
/// `tools/call echo`. Prints the last raw HTTP response. (busybox's nc stops at the end of its
/// input, so the request is written by `-e`'s program, which then copies the answer out.)
const AGENT_CALL: &str = r#"
post() {
  n=$(printf %s "$1" | wc -c)
  head="POST /servers/everything/mcp HTTP/1.1\r\nHost: localhost:8081\r\nContent-Type: application/json"
  head="$head\r\nAccept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2025-06-18"
  head="$head\r\nContent-Length: $n\r\nConnection: close"
  if [ -n "$2" ]; then head="$head\r\nMcp-Session-Id: $2"; fi
  HEAD="$head" BODY="$1" nc -w 10 127.0.0.1 8081 \
    -e /bin/busybox sh -c 'printf "$HEAD\r\n\r\n%s" "$BODY"; cat >&2' 2>&1
}
init='{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"busybox-agent","version":"1"}}}'
sid=$(post "$init" "" | tr -d '\r' | sed -n 's/^[Mm][Cc][Pp]-[Ss][Ee][Ss][Ss][Ii][Oo][Nn]-[Ii][Dd]: *//p')
post '{"jsonrpc":"2.0","method":"notifications/initialized"}' "$sid" >/dev/null
post '{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hi from a pod"}}}' "$sid"
"#;

/// The real nodes: those kwok does not fake.
fn real_nodes() -> Vec<String> {
    cluster()
        .kubectl_ok(&["get", "nodes", "-l", "type!=kwok", "-o", "name"])
        .lines()
        .map(|line| line.trim_start_matches("node/").to_owned())
        .collect()
}

/// Removes what the test installed cluster-wide, even when it fails half-way.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let manifest = repo_root().join("deploy/agentmesh.yaml");
        let _ = cluster().kubectl(&[
            "delete",
            "-f",
            manifest.to_str().unwrap(),
            "--ignore-not-found",
            "--wait=true",
            "--timeout=60s",
        ]);
        let _ = cluster().kubectl(&[
            "delete",
            "mutatingwebhookconfiguration",
            WEBHOOK_CONFIGURATION,
            "--ignore-not-found",
        ]);
    }
}

fn pod(namespace: &str, name: &str) -> Value {
    cluster()
        .get("pod", name, Some(namespace))
        .unwrap_or_else(|| panic!("pod {namespace}/{name} exists"))
}

fn lease_holder() -> Option<String> {
    cluster().get("lease", LEASE, Some(OPERATOR_NAMESPACE))?["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_owned)
}

fn score(namespace: &str, identity: &str) -> Option<i64> {
    cluster().get("agentidentity", identity, Some(namespace))?["status"]["trustScore"].as_i64()
}

#[test]
fn the_operator_sidecar_and_probe_run_as_pods_on_the_real_node() {
    let nodes = real_nodes();
    assert!(
        !nodes.is_empty(),
        "this test needs a real node (make cluster-up starts one; kwok's nodes run nothing)"
    );
    let cluster = cluster();
    cluster.ensure_crds();
    let _installed = Installed;
    // The test's namespace (dropped before the installation: its objects' finalizers need the
    // operator).
    let namespace = TestNamespace::create("node", &[("agentmesh-inject", "enabled")]);
    let ns = namespace.name.as_str();

    // ---------------------------------------------------------------- the operator's Deployment
    let manifest = repo_root().join("deploy/agentmesh.yaml");
    cluster.kubectl_ok(&["apply", "-f", manifest.to_str().unwrap()]);
    // MeshLogicAgents are honoured in `meshlogic` (the manifest's) and this test's namespace.
    cluster.kubectl_ok(&[
        "set",
        "env",
        "deployment/agentmesh-server",
        "-n",
        OPERATOR_NAMESPACE,
        &format!("MESHLOGIC_AGENT_NAMESPACES=meshlogic,{ns}"),
    ]);
    cluster.kubectl_ok(&[
        "rollout",
        "status",
        "deployment/agentmesh-server",
        "-n",
        OPERATOR_NAMESPACE,
        "--timeout=180s",
    ]);
    // `rollout status` returns once the new pods are ready; the old ones may still be
    // terminating: the replicas are the pods not being deleted.
    let operators: Vec<Value> = wait(
        Duration::from_secs(90),
        "two operator replicas, the old ones gone",
        || {
            let pods: Vec<Value> = serde_json::from_str::<Value>(&cluster.kubectl_ok(&[
                "get",
                "pods",
                "-n",
                OPERATOR_NAMESPACE,
                "-l",
                "app.kubernetes.io/name=agentmesh",
                "-o",
                "json",
            ]))
            .ok()?["items"]
                .as_array()?
                .iter()
                .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                .cloned()
                .collect();
            (pods.len() == 2 && pods.iter().all(pod_ready)).then_some(pods)
        },
    );
    for operator in &operators {
        assert!(pod_ready(operator), "{operator}");
        assert!(
            nodes
                .iter()
                .any(|n| operator["spec"]["nodeName"] == n.as_str()),
            "an operator pod runs on the real node: {}",
            operator["spec"]["nodeName"]
        );
        // Started non-root: the kubelet refuses a container that runAsNonRoot forbids.
        assert_eq!(operator["status"]["containerStatuses"][0]["started"], true);
    }
    let webhook = wait(
        Duration::from_secs(60),
        "the webhook configuration with a caBundle, pointing at the Service",
        || {
            let config =
                cluster.get("mutatingwebhookconfiguration", WEBHOOK_CONFIGURATION, None)?;
            let hook = config["webhooks"][0].clone();
            let has_ca = hook["clientConfig"]["caBundle"]
                .as_str()
                .is_some_and(|ca| !ca.is_empty());
            has_ca.then_some(hook)
        },
    );
    assert_eq!(
        webhook["clientConfig"]["service"]["name"], "agentmesh",
        "{webhook}"
    );
    assert_eq!(
        webhook["clientConfig"]["service"]["namespace"],
        OPERATOR_NAMESPACE
    );

    // ---------------------------------------------------------------- an injected pod
    let apply = |object: Value| cluster.apply(ns, &object.to_string());
    // Penalties for what the agent will do below, seen by the probe in the kernel.
    apply(json!({
        "apiVersion": "agentmesh.io/v1alpha1", "kind": "TrustPolicy", "metadata": {"name": "policy"},
        "spec": {"trust": {"decayRate": 0},
            "mcpServers": [{"name": "everything", "url": format!("http://everything.{ns}.svc:3001")}],
            "behavior": {
            "exec": [{"path": "/bin/env", "action": "alert", "penalty": 200}],
            "files": [{"pathPrefix": "/etc/agentmesh-e2e", "access": "any", "action": "alert", "penalty": 50}],
            "network": [{"cidr": "10.96.0.1/32", "ports": [443], "action": "alert", "penalty": 50}],
        }}
    }));
    // The MCP server: a pod of its own (opted out of injection) behind a Service.
    apply(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "everything", "labels": {"app": "everything"},
                     "annotations": {"agentmesh.io/inject": "false"}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "server", "image": MCP_SERVER_IMAGE, "imagePullPolicy": "Never",
                            "ports": [{"containerPort": 3001}]}],
        }
    }));
    apply(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "everything"},
        "spec": {"selector": {"app": "everything"}, "ports": [{"port": 3001, "targetPort": 3001}]}
    }));
    apply(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "agent", "labels": {"agentmesh.io/identity": "agent"}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "agent", "image": TOOLS_IMAGE, "imagePullPolicy": "Never"}],
        }
    }));
    let agent = wait(
        Duration::from_secs(120),
        "the injected pod Ready (its sidecar started and healthy)",
        || {
            let agent = pod(ns, "agent");
            pod_ready(&agent).then_some(agent)
        },
    );
    let sidecar = agent["spec"]["initContainers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "agentmesh-sidecar"))
        .unwrap_or_else(|| panic!("no sidecar injected: {}", agent["spec"]));
    assert_eq!(sidecar["restartPolicy"], "Always", "a native sidecar");
    let status = agent["status"]["initContainerStatuses"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "agentmesh-sidecar"))
        .unwrap_or_else(|| panic!("no sidecar status: {}", agent["status"]));
    assert_eq!(status["started"], true, "{status}");
    assert_eq!(status["ready"], true, "{status}");
    assert!(status["state"]["running"].is_object(), "{status}");
    // No key in the pod: the sidecar fetched the identity's key from the trust API (it is
    // healthy only once it holds a key, so Ready above already says it has one), and the key
    // it holds is the identity's (its DID in the sidecar's log).
    assert!(
        !sidecar["volumeMounts"]
            .to_string()
            .contains("\"/var/run/secrets/agentmesh\""),
        "a key mount: {sidecar}"
    );
    let did = wait(Duration::from_secs(30), "the identity's DID", || {
        cluster.get("agentidentity", "agent", Some(ns))?["status"]["did"]
            .as_str()
            .map(str::to_owned)
    });
    let log = cluster.kubectl_ok(&["logs", "-n", ns, "agent", "-c", "agentmesh-sidecar"]);
    // How the fetch went (each refusal the sidecar met before it had the key).
    for line in log
        .lines()
        .filter(|l| l.contains("waiting for the identity's key"))
    {
        eprintln!("node: sidecar: {line}");
    }
    assert!(
        log.lines()
            .any(|l| l.contains("key loaded") && l.contains(&did)),
        "the sidecar loaded no key of {did}:\n{log}"
    );
    // A shell script run in the agent's container: its output.
    let in_agent = |script: &str| {
        cluster.kubectl_ok(&[
            "exec",
            "-n",
            ns,
            "agent",
            "-c",
            "agent",
            "--",
            "/bin/busybox",
            "sh",
            "-c",
            script,
        ])
    };
    let pod_ip = agent["status"]["podIP"].as_str().unwrap().to_owned();
    let health: SocketAddr = format!("{pod_ip}:8081").parse().unwrap();
    let (code, body) = http_request(health, "GET", "/health", None, None).expect("an answer");
    assert_eq!(code, 200, "{body}");

    // The in-cluster operator (its leader) created the identity and scores it.
    let before = wait(
        Duration::from_secs(60),
        "the pod's AgentIdentity scored",
        || score(ns, "agent"),
    );

    // ---------------------------------------------------------------- the probe's DaemonSet
    apply(json!({
        "apiVersion": "agentmesh.io/v1alpha1", "kind": "MeshLogicAgent", "metadata": {"name": "mla"},
        "spec": {
            "customerId": "e2e", "reportIntervalSeconds": 1,
            "cgroup": {"root": agentmesh_e2e::cgroup2_root()},
            "nodeSelector": {"agentmesh.io/local-node": "true"},
        }
    }));
    wait(
        Duration::from_secs(120),
        "the probe pod Ready and the node at tier 2 in MeshLogicAgent status, with its file hook",
        || {
            let mla = cluster.get("meshlogicagent", "mla", Some(ns))?;
            // The file hook the probe found (sys_exit on this machine, whose kernel refuses
            // fexit; fexit elsewhere) made it through the report and the CRD's schema.
            let tier2 = mla["status"]["nodes"].as_array()?.iter().any(|n| {
                nodes.iter().any(|name| n["node"] == name.as_str())
                    && n["tier"] == 2
                    && (n["fileHook"] == "sys_exit" || n["fileHook"] == "fexit")
            });
            (tier2 && mla["status"]["readyNodes"] == 1).then_some(())
        },
    );
    // Inside the agent's container: an exec of /bin/env, an open under /etc/agentmesh-e2e and a
    // connect to the API server's Service address, until the score has moved by all three
    // penalties. The probe watches the pod within a second of seeing it, so the script runs
    // again only while the score has not moved for 5 s since its last run: every run that the
    // probe sees costs 300 points, and a second one seen would quarantine the agent (800 - 600
    // is below the threshold of 300) before the MCP call below.
    let script = "cp /bin/busybox /bin/env 2>/dev/null; /bin/env true; \
                  mkdir -p /etc/agentmesh-e2e && echo x > /etc/agentmesh-e2e/secret; \
                  cat /etc/agentmesh-e2e/secret >/dev/null; \
                  nc -w 1 10.96.0.1 443 </dev/null >/dev/null 2>&1; true";
    let mut last = (before, None::<Instant>);
    let identity = wait(
        Duration::from_secs(90),
        "the exec, open and connect in the agent's container to cost 300 points",
        || {
            let (score_then, ran_at) = last;
            if ran_at.is_none_or(|at| at.elapsed() > Duration::from_secs(5)) {
                in_agent(script);
                last = (score_then, Some(Instant::now()));
            }
            let identity = cluster.get("agentidentity", "agent", Some(ns))?;
            let score = identity["status"]["trustScore"].as_i64()?;
            if score != last.0 {
                // Seen: wait for the rest of this run's penalties before running it again.
                last = (score, Some(Instant::now()));
            }
            (score <= before - 300).then_some(identity)
        },
    );
    let anomalies = identity["status"]["behavior"]["recentAnomalies"]
        .as_array()
        .unwrap_or_else(|| panic!("no anomalies: {identity}"));
    for expected in ["/bin/env", "/etc/agentmesh-e2e", "10.96.0.1"] {
        assert!(
            anomalies.iter().any(|a| a["pod"] == "agent"
                && a["detail"].as_str().is_some_and(|d| d.contains(expected))),
            "no anomaly for {expected} attributed to pod agent: {anomalies:?}"
        );
    }

    // ---------------------------------------------------------------- MCP through the sidecar
    wait(Duration::from_secs(60), "the MCP server pod Ready", || {
        pod_ready(&pod(ns, "everything")).then_some(())
    });
    let call = || in_agent(AGENT_CALL);
    let answer = call();
    assert!(
        answer.contains("Echo: hi from a pod"),
        "the call went through the sidecar to the server pod: {answer}\nsidecar log:\n{}",
        cluster.kubectl_ok(&[
            "logs",
            "-n",
            ns,
            "agent",
            "-c",
            "agentmesh-sidecar",
            "--tail=40"
        ])
    );
    // Every replica answers the sidecar: the one that does not lead passes the call on to the
    // leader. Asked directly, with the agent pod's own bound token, it answers with the
    // agent's policy (the MCP server above included).
    let leader = wait(Duration::from_secs(30), "a lease holder", lease_holder);
    let follower = operators
        .iter()
        .find(|o| o["metadata"]["name"] != leader.as_str())
        .expect("two replicas");
    let follower_ip = follower["status"]["podIP"].as_str().unwrap();
    let agent_uid = agent["metadata"]["uid"].as_str().unwrap();
    let token = cluster.token(ns, "default", Some(("agent", agent_uid)));
    let follower: SocketAddr = format!("{follower_ip}:8080").parse().unwrap();
    let (code, config) =
        http_request(follower, "GET", "/v1/sidecar/config", Some(&token), None).expect("an answer");
    assert_eq!(code, 200, "the replica that does not lead: {config}");
    assert!(config.contains("everything"), "{config}");
    // Passing a call on never vouches for it: the leader checks the caller's token itself. A
    // forged token, and a valid token not bound to a pod, are refused through the follower.
    let (code, answer) = http_request(follower, "GET", "/v1/sidecar/config", Some("forged"), None)
        .expect("an answer");
    assert_eq!(code, 401, "a forged token through the follower: {answer}");
    let unbound = cluster.token(ns, "default", None);
    let (code, answer) = http_request(follower, "GET", "/v1/sidecar/config", Some(&unbound), None)
        .expect("an answer");
    assert_eq!(
        code, 403,
        "a token bound to no pod through the follower: {answer}"
    );

    // Quarantine: the threshold above the score. The sidecar learns it from the operator's
    // config long-poll (through the Service, by its DNS name) and denies the same call.
    let patched = Instant::now();
    cluster.kubectl_ok(&[
        "patch",
        "trustpolicy",
        "policy",
        "-n",
        ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"trust":{"minThreshold":900,"initialScore":950}}}"#,
    ]);
    let denied = wait(
        Duration::from_secs(30),
        "the quarantined agent's call denied by its sidecar",
        || {
            let answer = call();
            answer.contains("quarantine.denyTools").then_some(answer)
        },
    );
    assert!(denied.contains("-32001"), "{denied}");
    assert!(!denied.contains("Echo: hi from a pod"), "{denied}");
    eprintln!(
        "node: quarantine denied {:.1?} after the TrustPolicy patch",
        patched.elapsed()
    );

    // ---------------------------------------------------------------- leader handover
    assert!(
        operators
            .iter()
            .any(|o| o["metadata"]["name"] == leader.as_str()),
        "the leader {leader} is one of the operator pods"
    );
    cluster.kubectl_ok(&[
        "delete",
        "pod",
        &leader,
        "-n",
        OPERATOR_NAMESPACE,
        "--wait=false",
    ]);
    let new_leader = wait(
        Duration::from_secs(90),
        "another replica to take the Lease",
        || lease_holder().filter(|holder| *holder != leader),
    );
    eprintln!("node: leader {leader} deleted, {new_leader} leads");
    // The new leader reconciles: a new identity gets its status.
    apply(json!({
        "apiVersion": "agentmesh.io/v1alpha1", "kind": "AgentIdentity",
        "metadata": {"name": "after-handover"}, "spec": {}
    }));
    wait(
        Duration::from_secs(60),
        "the new leader to score a new identity",
        || score(ns, "after-handover"),
    );
    // The kubelet ran the sidecar's liveness probe (the seed's `cat <healthy file>`) all along
    // without a failure: the image's /bin/cat is the sidecar binary itself.
    let events = cluster.kubectl_ok(&[
        "get",
        "events",
        "-n",
        ns,
        "--field-selector",
        "involvedObject.name=agent,reason=Unhealthy",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(
        events.trim().is_empty(),
        "probe failures of the agent pod: {events}"
    );
    let status = pod(ns, "agent")["status"]["initContainerStatuses"][0].clone();
    if status["restartCount"] != 0 {
        // What ended it, and what it said before: the kubelet's record and the earlier logs.
        let previous = cluster.kubectl(&[
            "logs",
            "agent",
            "-n",
            ns,
            "-c",
            "agentmesh-sidecar",
            "--previous",
            "--tail=60",
        ]);
        panic!(
            "the sidecar was restarted: {}\nits previous logs:\n{}{}",
            status["lastState"],
            String::from_utf8_lossy(&previous.stdout),
            String::from_utf8_lossy(&previous.stderr)
        );
    }
    cluster.kubectl_ok(&[
        "delete",
        "meshlogicagent",
        "mla",
        "-n",
        ns,
        "--wait=true",
        "--timeout=60s",
    ]);
}
