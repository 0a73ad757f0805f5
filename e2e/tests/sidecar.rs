//! The sidecar end to end with the real operator on the real API server: the policy, the
//! registry and the live score come from `/v1/sidecar/config` (the pod's bound token); a
//! quarantine set through the operator denies within a second or two; two sidecars run the
//! mutual handshake and a replayed, moved or forged request is refused; a peer below the
//! minimum score is refused. Clients and servers are the official MCP SDKs (`e2e/mcp`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agentmesh_e2e::operator::{OperatorProcess, free_port, http_request, http_request_with};
use agentmesh_e2e::{TestNamespace, cluster, repo_root};
use agentmesh_identity::Timestamp;
use agentmesh_identity::handshake::{HandshakeConfig, Initiator};
use agentmesh_identity::keys::{Did, private_key_from_pem};
use agentmesh_identity::proof::{Covered, ProofSigner};
use agentmesh_identity::registry::MemoryRegistry;
use base64::Engine;
use serde_json::{Value, json};

const FAST: [(&str, &str); 2] = [
    ("MESHLOGIC_LEASE_SECONDS", "3"),
    ("MESHLOGIC_STATUS_INTERVAL_SECONDS", "1"),
];

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listens on 127.0.0.1:{port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn fixtures() -> PathBuf {
    let out = Command::new(repo_root().join("scripts/mcp-fixtures.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("scripts/mcp-fixtures.sh runs");
    assert!(out.status.success());
    PathBuf::from(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .trim(),
    )
}

fn sidecar_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    target.join("debug/agentmesh-sidecar")
}

fn now() -> Timestamp {
    Timestamp::from_millis(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
    )
}

fn apply(namespace: &str, object: Value) {
    cluster().apply(namespace, &object.to_string());
}

fn pod_uid(namespace: &str, name: &str) -> String {
    cluster().get("pod", name, Some(namespace)).unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn private_key_pem(namespace: &str, identity: &str) -> String {
    let secret = cluster()
        .get(
            "secret",
            &agentmesh_api::names::objects::key_secret_name(namespace, identity),
            // The operator runs in the identities' namespace in these tests.
            Some(namespace),
        )
        .expect("the key Secret");
    let encoded = secret["data"]["private-key"].as_str().unwrap();
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap(),
    )
    .unwrap()
}

struct Sidecar {
    _process: Running,
    port: u16,
    metrics_port: u16,
    log: PathBuf,
}

impl Sidecar {
    /// The sidecar of pod `pod` of identity `identity`, as the webhook would configure it, as a
    /// host process: the pod's bound token in a file, and no key (it fetches the identity's
    /// from the trust API with that token).
    fn start(
        ns: &str,
        identity: &str,
        pod: &str,
        operator: &OperatorProcess,
        inbound: Option<u16>,
        dir: &Path,
    ) -> Self {
        Self::start_with_port(ns, identity, pod, operator, inbound, dir, free_port())
    }

    fn start_with_port(
        ns: &str,
        identity: &str,
        pod: &str,
        operator: &OperatorProcess,
        inbound: Option<u16>,
        dir: &Path,
        port: u16,
    ) -> Self {
        // The pod runs as its identity's ServiceAccount (of the identity's name).
        let token = cluster().token(ns, identity, Some((pod, &pod_uid(ns, pod))));
        let token_file = dir.join(format!("{pod}.token"));
        std::fs::write(&token_file, token).unwrap();
        let metrics_port = free_port();
        let log = dir.join(format!("{pod}.log"));
        let mut command = Command::new(sidecar_binary());
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AGENTMESH_SIDECAR_PROXY_ADDR", format!("127.0.0.1:{port}"))
            .env(
                "AGENTMESH_SIDECAR_METRICS_ADDR",
                format!("127.0.0.1:{metrics_port}"),
            )
            .env(
                "AGENTMESH_SIDECAR_HEALTHY_FILE",
                dir.join(format!("{pod}.healthy")),
            )
            .env("AGENTMESH_SIDECAR_TOKEN_FILE", &token_file)
            .env("AGENTMESH_IDENTITY", identity)
            .env("POD_NAMESPACE", ns)
            .env("POD_NAME", pod)
            .env(
                "AGENTMESH_TRUST_API_URL",
                format!("https://{}", operator.trust_api),
            )
            .env("AGENTMESH_TRUST_API_CA", operator.ca_bundle())
            .env("AGENTMESH_SIDECAR_REPORT_INTERVAL_SECONDS", "0.5")
            .env("AGENTMESH_LOG_FORMAT", "text")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(inbound) = inbound {
            command.env(
                "AGENTMESH_INBOUND_UPSTREAM",
                format!("http://127.0.0.1:{inbound}"),
            );
        }
        let child = command.spawn().expect("the sidecar starts");
        wait_port(port);
        let sidecar = Self {
            _process: Running(child),
            port,
            metrics_port,
            log,
        };
        // Wait for the operator's policy (not the preset).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let health = sidecar.health();
            // ... and for the key it fetched from the trust API (healthy only with one).
            if health["policySource"].get("operator").is_some() && health["status"] == "healthy" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{pod}'s sidecar never got the operator's policy and its key: {health}\n{}",
                std::fs::read_to_string(&sidecar.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        sidecar
    }

    fn health(&self) -> Value {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        http_request(addr, "GET", "/health", None, None)
            .map(|(_, body)| serde_json::from_str(&body).unwrap_or(Value::Null))
            .unwrap_or(Value::Null)
    }

    fn metric(&self, sample: &str) -> f64 {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.metrics_port));
        http_request(addr, "GET", "/metrics", None, None)
            .map(|(_, body)| body)
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }

    /// A raw JSON-RPC POST; (status, body).
    fn post(&self, path: &str, body: &str, headers: &[(&str, &str)]) -> (u16, Value) {
        post(self.port, path, body, headers)
    }
}

fn post(port: u16, path: &str, body: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut all = vec![("Accept", "application/json, text/event-stream")];
    all.extend_from_slice(headers);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let (status, body) =
        http_request_with(addr, "POST", path, None, &all, Some(body)).unwrap_or((0, String::new()));
    // Answers may be SSE: the JSON of the last `data:` line.
    let json = body
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap_or(&body);
    let value = serde_json::from_str(json.trim()).unwrap_or(Value::String(body.clone()));
    (status, value)
}

/// A 2026-07-28 `tools/call` (stateless: no session, the headers carry the method and name).
fn call(tool: &str, id: i64) -> (String, Vec<(&'static str, String)>) {
    let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": tool, "arguments": {"message": "hi", "cmd": "id"},
                   "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                             "io.modelcontextprotocol/clientInfo": {"name": "e2e", "version": "1"},
                             "io.modelcontextprotocol/clientCapabilities": {}}}});
    (
        body.to_string(),
        vec![
            ("MCP-Protocol-Version", "2026-07-28".to_owned()),
            ("Mcp-Method", "tools/call".to_owned()),
            ("Mcp-Name", tool.to_owned()),
        ],
    )
}

fn call_through(sidecar: &Sidecar, path: &str, tool: &str, id: i64) -> (u16, Value) {
    let (body, headers) = call(tool, id);
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    sidecar.post(path, &body, &headers)
}

fn wait_identity(ns: &str, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = cluster()
            .get("agentidentity", name, Some(ns))
            .is_some_and(|o| o["status"]["did"].is_string() && o["status"]["trustScore"].is_i64());
        let secret = cluster()
            .get(
                "secret",
                &agentmesh_api::names::objects::key_secret_name(ns, name),
                Some(ns),
            )
            .is_some();
        if ready && secret {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "identity {name} never got a DID and a key"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct World {
    _namespace: TestNamespace,
    ns: String,
    operator: OperatorProcess,
    _server: Running,
    server_port: u16,
    dir: PathBuf,
}

/// A namespace with two identities (`researcher`, `summarizer`) and their pods on a kwok node,
/// an operator, the Python SDK's 2026-07-28 server, and a policy naming the server and the
/// summarizer agent as upstreams of the researcher.
fn world(prefix: &str, extra_policy: Value) -> World {
    world_with(prefix, extra_policy, &[])
}

/// [`world`] with more of the operator's environment.
fn world_with(prefix: &str, extra_policy: Value, operator_env: &[(&str, &str)]) -> World {
    cluster().ensure_crds();
    let namespace = TestNamespace::create(prefix, &[]);
    let ns = namespace.name.clone();
    let dir = std::env::temp_dir().join(format!("agentmesh-e2e-sidecar-{ns}"));
    std::fs::create_dir_all(&dir).unwrap();
    let fixtures = fixtures();
    let server_port = free_port();
    // Owned at once, so that a failure further down still stops it.
    let server = Running(
        Command::new(fixtures.join("venv/bin/python"))
            .arg(repo_root().join("e2e/mcp/server_2026.py"))
            .args(["--port", &server_port.to_string(), "--any-host"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(server_port);
    let env: Vec<(&str, &str)> = FAST.iter().chain(operator_env).copied().collect();
    let operator = OperatorProcess::start(&ns, "op", &env);
    let summarizer_port = free_port();
    let mut spec = json!({
        "trust": {"decayRate": 0},
        "mcpServers": [
            {"name": "tools", "url": format!("http://127.0.0.1:{server_port}")},
            {"name": "summarizer", "url": format!("http://127.0.0.1:{summarizer_port}/inbound"), "agent": "summarizer"},
        ],
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra_policy.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    apply(
        &ns,
        json!({"apiVersion": "agentmesh.io/v1alpha1", "kind": "TrustPolicy", "metadata": {"name": "policy"}, "spec": spec}),
    );
    for name in ["researcher", "summarizer"] {
        apply(
            &ns,
            json!({"apiVersion": "agentmesh.io/v1alpha1", "kind": "AgentIdentity", "metadata": {"name": name}, "spec": {}}),
        );
        cluster().service_account(&ns, name);
        apply(
            &ns,
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("{name}-0"), "labels": {"agentmesh.io/identity": name}},
            "spec": {"nodeName": "kwok-node-0", "serviceAccountName": name, "containers": [{"name": "agent", "image": "registry.invalid/agent:1"}]}}),
        );
    }
    for name in ["researcher", "summarizer"] {
        wait_identity(&ns, name);
    }
    std::fs::write(dir.join("summarizer.port"), summarizer_port.to_string()).unwrap();
    World {
        _namespace: namespace,
        ns,
        operator,
        _server: server,
        server_port,
        dir,
    }
}

impl World {
    fn summarizer_port(&self) -> u16 {
        std::fs::read_to_string(self.dir.join("summarizer.port"))
            .unwrap()
            .parse()
            .unwrap()
    }
}

#[test]
fn a_quarantine_set_through_the_operator_denies_within_seconds() {
    let w = world("sidecar-quarantine", json!({}));
    let researcher = Sidecar::start(
        &w.ns,
        "researcher",
        "researcher-0",
        &w.operator,
        None,
        &w.dir,
    );
    let (status, answer) = call_through(&researcher, "/servers/tools/mcp", "echo", 1);
    assert_eq!(status, 200, "{answer}");
    assert!(answer.get("result").is_some(), "echo is allowed: {answer}");
    // The standard preset denies shell-like tools, whatever the spelling.
    let (_, answer) = call_through(&researcher, "/servers/tools/mcp", "run_shell", 2);
    assert_eq!(answer["error"]["code"], -32001, "{answer}");
    // The sidecar reports the denial in a batch signed with the identity's key; the operator
    // believes it and the score falls.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let score = cluster()
            .get("agentidentity", "researcher", Some(&w.ns))
            .unwrap()["status"]["trustScore"]
            .as_i64()
            .unwrap_or(800);
        if score < 800 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the signed report never moved the score ({score})\n{}",
            std::fs::read_to_string(&researcher.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(researcher.metric("agentmesh_sidecar_reports_sent_total") >= 1.0);
    assert_eq!(
        researcher.metric("agentmesh_sidecar_report_failures_total"),
        0.0
    );

    // Raise the threshold above the score: the identity is quarantined; the sidecar learns it
    // from the config long-poll and denies every call.
    let patched = Instant::now();
    cluster().kubectl_ok(&[
        "patch",
        "trustpolicy",
        "policy",
        "-n",
        &w.ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"trust":{"minThreshold":900,"initialScore":950}}}"#,
    ]);
    let denied_after = loop {
        let (_, answer) = call_through(&researcher, "/servers/tools/mcp", "echo", 3);
        if answer["error"]["code"] == -32001 {
            assert_eq!(
                answer["error"]["data"]["agentmesh"]["rule"], "quarantine.denyTools",
                "{answer}"
            );
            break patched.elapsed();
        }
        assert!(
            patched.elapsed() < Duration::from_secs(10),
            "never denied: {answer}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("quarantine: denied {denied_after:?} after the TrustPolicy patch");
    assert!(
        denied_after < Duration::from_millis(2000),
        "denied only {denied_after:?} after the patch"
    );
    assert_eq!(researcher.health()["quarantined"], true);
}

#[test]
fn two_sidecars_handshake_and_forged_or_replayed_requests_are_refused() {
    let w = world("sidecar-peers", json!({}));
    let summarizer_port = w.summarizer_port();
    // The summarizer's sidecar listens where the policy says, in front of its own MCP server.
    let summarizer = Sidecar::start_with_port(
        &w.ns,
        "summarizer",
        "summarizer-0",
        &w.operator,
        Some(w.server_port),
        &w.dir,
        summarizer_port,
    );
    let researcher = Sidecar::start(
        &w.ns,
        "researcher",
        "researcher-0",
        &w.operator,
        None,
        &w.dir,
    );

    // Through the researcher's sidecar to the summarizer: handshake, proof, forwarded.
    let (status, direct) = post(
        w.server_port,
        "/mcp",
        &call("echo", 1).0,
        &[
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", "tools/call"),
            ("Mcp-Name", "echo"),
        ],
    );
    assert_eq!(status, 200, "{direct}");
    for id in 1..=3 {
        let (status, answer) = call_through(&researcher, "/servers/summarizer/mcp", "echo", id);
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["result"], direct["result"], "same result as direct");
    }
    assert_eq!(
        researcher.metric("agentmesh_handshake_total{status=\"success\"}"),
        1.0,
        "the session is cached"
    );
    assert_eq!(
        summarizer.metric("agentmesh_handshake_total{status=\"success\"}"),
        1.0
    );

    let ns = w.ns.as_str();
    let researcher_key = private_key_from_pem(&private_key_pem(ns, "researcher")).unwrap();
    let summarizer_did: Did = Did::parse(
        cluster()
            .get("agentidentity", "summarizer", Some(ns))
            .unwrap()["status"]["did"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let mut registry = MemoryRegistry::new();
    for name in ["researcher", "summarizer"] {
        let key = cluster().get("agentidentity", name, Some(ns)).unwrap()["status"]["publicKey"]
            .as_str()
            .unwrap()
            .to_owned();
        registry.insert(
            agentmesh_identity::keys::public_key_from_text(&key).unwrap(),
            800,
        );
    }
    let handshake = |key: &agentmesh_identity::SigningKey| {
        let (initiator, init) = Initiator::start(
            key.clone(),
            [3; 32],
            Some(summarizer_did.clone()),
            HandshakeConfig::default(),
            now(),
        );
        let (status, challenge) = post(
            summarizer_port,
            "/agentmesh/v1/handshake/init",
            &serde_json::to_string(&init).unwrap(),
            &[],
        );
        (status, challenge, initiator)
    };

    // No proof: refused before the agent sees anything.
    let (body, headers) = call("echo", 10);
    let hs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, answer) = post(summarizer_port, "/inbound/mcp", &body, &hs);
    assert_eq!(status, 401, "{answer}");
    assert_eq!(answer["error"]["code"], -32001);

    // A key the registry does not know, and a registered DID presented with another key.
    let mallory = agentmesh_identity::SigningKey::from_bytes(&[66; 32]);
    let (status, answer, _) = handshake(&mallory);
    assert_eq!(status, 403, "{answer}");
    let (_, mut swapped) = Initiator::start(
        mallory.clone(),
        [4; 32],
        None,
        HandshakeConfig::default(),
        now(),
    );
    swapped.initiator = Did::from_public_key(&researcher_key.verifying_key());
    let (status, answer) = post(
        summarizer_port,
        "/agentmesh/v1/handshake/init",
        &serde_json::to_string(&swapped).unwrap(),
        &[],
    );
    assert_eq!(status, 403, "a swapped DID is refused: {answer}");

    // A genuine handshake (the researcher's key), then: a request once, a replay, a proof moved
    // to another path.
    let (status, challenge, initiator) = handshake(&researcher_key);
    assert_eq!(status, 200, "{challenge}");
    let challenge = serde_json::from_value(challenge).unwrap();
    let (response, session) = initiator
        .on_challenge(&challenge, &registry, now())
        .unwrap();
    let (status, answer) = post(
        summarizer_port,
        "/agentmesh/v1/handshake/response",
        &serde_json::to_string(&response).unwrap(),
        &[],
    );
    assert_eq!(status, 200, "{answer}");
    let mut signer = ProofSigner::new(&session, researcher_key.clone());
    // The next proof for a POST of `body` to /inbound/mcp, as the x-agentmesh-proof header.
    let mut next_proof = || {
        let proof = signer.sign(
            Covered {
                method: "POST",
                path: "/inbound/mcp",
                body: body.as_bytes(),
            },
            now(),
        );
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(&proof).unwrap())
    };
    let header = next_proof();
    let mut with_proof = hs.clone();
    with_proof.push(("x-agentmesh-proof", header.as_str()));
    let (status, answer) = post(summarizer_port, "/inbound/mcp", &body, &with_proof);
    assert_eq!(status, 200, "{answer}");
    assert!(answer.get("result").is_some(), "{answer}");
    let (status, answer) = post(summarizer_port, "/inbound/mcp", &body, &with_proof);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["error"]["code"], -32001,
        "a replay is refused: {answer}"
    );
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already used"),
        "{answer}"
    );
    let header = next_proof();
    let mut moved = hs.clone();
    moved.push(("x-agentmesh-proof", header.as_str()));
    let (_, answer) = post(summarizer_port, "/inbound/other", &body, &moved);
    assert_eq!(
        answer["error"]["code"], -32001,
        "a moved proof is refused: {answer}"
    );
    let tampered = body.replace("\"hi\"", "\"HI\"");
    let (_, answer) = post(summarizer_port, "/inbound/mcp", &tampered, &moved);
    assert_eq!(
        answer["error"]["code"], -32001,
        "a changed body is refused: {answer}"
    );

    // A peer below the minimum score: refused by the summarizer (and by the researcher's own
    // sidecar before it even asks).
    cluster().kubectl_ok(&[
        "patch",
        "trustpolicy",
        "policy",
        "-n",
        ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"minPeerScore":900}}"#,
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, answer) = call_through(&researcher, "/servers/summarizer/mcp", "echo", 20);
        if answer["error"]["code"] == -32001 {
            assert_eq!(
                answer["error"]["data"]["agentmesh"]["rule"], "minPeerScore",
                "{answer}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a low-score peer was never refused: {answer}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(summarizer.metric("agentmesh_handshake_total{status=\"refused\"}") >= 4.0);
}

/// An identity delegated by another, asking for a capability its parent does not have: the
/// operator refuses to sign the link, and the peer's sidecar refuses its handshake (rule
/// `identity.delegation`) while the parent's own handshake goes through. Its sidecar reports the
/// failed handshake, which costs it trust, and its status names the decision.
#[test]
fn a_widened_delegation_is_refused_by_peers() {
    let w = world("sidecar-widened", json!({}));
    let ns = w.ns.as_str();
    apply(
        ns,
        json!({"apiVersion": "agentmesh.io/v1alpha1", "kind": "AgentIdentity", "metadata": {"name": "researcher"},
               "spec": {"capabilities": ["read:documents"], "delegates": ["helper"]}}),
    );
    apply(
        ns,
        json!({"apiVersion": "agentmesh.io/v1alpha1", "kind": "AgentIdentity", "metadata": {"name": "helper"},
               "spec": {"delegation": {"parent": "researcher", "capabilities": ["read:documents", "write:documents"]}}}),
    );
    cluster().service_account(ns, "helper");
    apply(
        ns,
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "helper-0", "labels": {"agentmesh.io/identity": "helper"}},
               "spec": {"nodeName": "kwok-node-0", "serviceAccountName": "helper", "containers": [{"name": "agent", "image": "registry.invalid/agent:1"}]}}),
    );
    wait_identity(ns, "helper");
    let refused = agentmesh_e2e::wait_until(
        "widened",
        Duration::from_secs(60),
        "helper's delegation refused",
        || {
            let helper = cluster().get("agentidentity", "helper", Some(ns))?;
            let condition = agentmesh_e2e::condition(&helper, "DelegationValid")?.clone();
            (condition["status"] == "False").then_some(condition)
        },
    );
    assert_eq!(refused["reason"], "CapabilitiesWidened", "{refused}");
    let start = cluster().get("agentidentity", "helper", Some(ns)).unwrap()["status"]["trustScore"]
        .as_i64()
        .unwrap();

    let summarizer = Sidecar::start_with_port(
        ns,
        "summarizer",
        "summarizer-0",
        &w.operator,
        Some(w.server_port),
        &w.dir,
        w.summarizer_port(),
    );
    let helper = Sidecar::start(ns, "helper", "helper-0", &w.operator, None, &w.dir);
    let researcher = Sidecar::start(ns, "researcher", "researcher-0", &w.operator, None, &w.dir);

    let (status, answer) = call_through(&helper, "/servers/summarizer/mcp", "echo", 1);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["error"]["code"], -32001, "{answer}");
    let reason = answer["error"]["data"]["agentmesh"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(
        reason.contains("identity.delegation") && reason.contains("CapabilitiesWidened"),
        "the peer names the refused delegation: {answer}"
    );
    assert_eq!(
        summarizer.metric("agentmesh_handshake_total{status=\"refused\"}"),
        1.0
    );
    assert_eq!(
        helper.metric("agentmesh_handshake_total{status=\"failed\"}"),
        1.0
    );
    // The parent, whose own identity is sound, is served.
    let (status, answer) = call_through(&researcher, "/servers/summarizer/mcp", "echo", 2);
    assert_eq!(status, 200, "{answer}");
    assert!(answer["result"].is_object(), "{answer}");

    // The failed handshake reaches the operator: it costs trust, and status says why.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status = cluster().get("agentidentity", "helper", Some(ns)).unwrap()["status"].clone();
        if status["lastDecision"]["decision"] == "deny" {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "helper's failed handshake never reached its status: {status:#}\nreports sent {}, failed {}\n{}",
            helper.metric("agentmesh_sidecar_reports_sent_total"),
            helper.metric("agentmesh_sidecar_report_failures_total"),
            std::fs::read_to_string(&helper.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        status["lastDecision"]["subject"]
            .as_str()
            .is_some_and(|s| s.starts_with("handshake with did:mesh:")),
        "{status}"
    );
    assert!(status["trustScore"].as_i64().unwrap() < start, "{status}");
}

/// The seed guide's ConfigMap (`agentmesh-config`), as written, but for the addresses
/// (`agentmesh-redis-master` and `otel-collector` are the cluster's Services; here Redis and
/// Jaeger run on loopback, and the test adds their addresses after these).
const SEED_CONFIG: [(&str, &str); 16] = [
    ("AGENTMESH_STORAGE_BACKEND", "redis"),
    ("AGENTMESH_CACHE_ENABLED", "true"),
    ("AGENTMESH_CACHE_TTL", "300"),
    ("AGENTMESH_TRUST_INITIAL_SCORE", "800"),
    ("AGENTMESH_TRUST_DECAY_RATE", "2.0"),
    ("AGENTMESH_TRUST_DECAY_FLOOR", "100"),
    ("AGENTMESH_TRUST_MIN_THRESHOLD", "300"),
    ("AGENTMESH_DELEGATION_MAX_DEPTH", "5"),
    ("AGENTMESH_GOVERNANCE_DEFAULT_POLICY", "standard"),
    ("AGENTMESH_GOVERNANCE_SHADOW_MODE", "false"),
    ("AGENTMESH_GOVERNANCE_AUDIT_RETENTION_DAYS", "90"),
    ("AGENTMESH_LOG_LEVEL", "INFO"),
    ("AGENTMESH_LOG_FORMAT", "json"),
    ("AGENTMESH_OTEL_ENABLED", "true"),
    ("AGENTMESH_OTEL_ENDPOINT", "http://otel-collector:4317"),
    ("AGENTMESH_POLICY", "strict"),
];

/// `agentmesh audit <args>` with the store's variables; (exit code, stdout).
fn agentmesh_audit(store_env: &[(String, String)], args: &[&str]) -> (i32, String) {
    let binary = agentmesh_e2e::operator::operator_binary().with_file_name("agentmesh");
    let output = Command::new(&binary)
        .arg("audit")
        .args(args)
        .envs(store_env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (e2e/run.sh builds it)", binary.display()));
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

/// Waits until the chain holds an entry for `identity` on `subject`; returns the entries.
fn wait_audited(store_env: &[(String, String)], identity: &str, subject: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, out) = agentmesh_audit(
            store_env,
            &["tail", "-n", "100000", "-o", "json", "--identity", identity],
        );
        let entries: Vec<Value> = out
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if code == 0 && entries.iter().any(|e| e["subject"] == subject) {
            return entries;
        }
        assert!(
            Instant::now() < deadline,
            "{subject} of {identity} never reached the audit store: {out}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn leader_of(replicas: &mut [OperatorProcess]) -> &mut OperatorProcess {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(i) = replicas.iter().position(OperatorProcess::is_leader) {
            return &mut replicas[i];
        }
        assert!(Instant::now() < deadline, "no replica leads");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn decisions_reach_redis_and_one_chain_survives_a_leader_change_and_a_restart() {
    let scratch = std::env::temp_dir().join(format!("agentmesh-e2e-audit-{}", std::process::id()));
    let redis = agentmesh_store::testing::RedisServer::start(&scratch.join("redis"));
    let store_env = agentmesh_store::testing::store_env(&redis.remote());
    let jaeger = agentmesh_runtime::testing::Jaeger::start();
    let collector = jaeger.endpoint();
    let mut env: Vec<(&str, &str)> = SEED_CONFIG.to_vec();
    env.extend(store_env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    env.push(("AGENTMESH_OTEL_ENDPOINT", collector.as_str()));
    let w = world_with("sidecar-audit", json!({}), &env);
    let identity = format!("{}/researcher", w.ns);
    let ready: Value = serde_json::from_str(&w.operator.get("/ready").unwrap()).unwrap();
    assert_eq!(ready["storage"]["backend"], "redis", "{ready}");

    // A second replica. The sidecar talks to the leader: host-process followers cannot
    // forward to it (they find the leader's pod by the Lease's holder, and these are no pods).
    let all_env: Vec<(&str, &str)> = FAST.iter().chain(&env).copied().collect();
    let mut replicas = vec![w.operator, OperatorProcess::start(&w.ns, "op-b", &all_env)];
    let leader = leader_of(&mut replicas).name.clone();
    let sidecar = {
        let leading = replicas.iter().find(|r| r.name == leader).unwrap();
        Sidecar::start(&w.ns, "researcher", "researcher-0", leading, None, &w.dir)
    };
    let (status, answer) = call_through(&sidecar, "/servers/tools/mcp", "echo", 1);
    assert_eq!(status, 200, "{answer}");
    let (_, answer) = call_through(&sidecar, "/servers/tools/mcp", "run_shell", 2);
    assert_eq!(answer["error"]["code"], -32001, "{answer}");
    let entries = wait_audited(&store_env, &identity, "tool:run_shell");
    let denied = entries
        .iter()
        .find(|e| e["subject"] == "tool:run_shell")
        .unwrap();
    assert_eq!(denied["decision"], "deny");
    assert_eq!(denied["policyVersion"].as_str().map(str::len), Some(16));

    // The leader dies; the other replica leads and continues the chain.
    drop(sidecar);
    leader_of(&mut replicas).kill();
    replicas.retain_mut(OperatorProcess::is_running);
    let survivor = leader_of(&mut replicas);
    assert_ne!(survivor.name, leader);
    let sidecar = Sidecar::start(&w.ns, "researcher", "researcher-0", survivor, None, &w.dir);
    call_through(
        &sidecar,
        "/servers/tools/mcp",
        "echo_after_leader_change",
        3,
    );
    wait_audited(&store_env, &identity, "tool:echo_after_leader_change");

    // The whole operator restarts: a new process, the old one gone.
    let restarted = OperatorProcess::start(&w.ns, "op-c", &all_env);
    replicas[0].kill();
    drop(sidecar);
    let mut replicas = vec![restarted];
    leader_of(&mut replicas);
    let sidecar = Sidecar::start(
        &w.ns,
        "researcher",
        "researcher-0",
        &replicas[0],
        None,
        &w.dir,
    );
    call_through(&sidecar, "/servers/tools/mcp", "echo_after_restart", 4);
    let entries = wait_audited(&store_env, &identity, "tool:echo_after_restart");
    let subjects: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["subject"].as_str())
        .collect();
    for subject in [
        "tool:echo",
        "tool:run_shell",
        "tool:echo_after_leader_change",
    ] {
        assert!(
            subjects.contains(&subject),
            "{subject} missing: {subjects:?}"
        );
    }

    // One chain: it verifies end to end, sequence numbers 0.. with no gap.
    let (code, out) = agentmesh_audit(&store_env, &["verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("verified: "), "{out}");
    let (_, all) = agentmesh_audit(&store_env, &["tail", "-n", "100000", "-o", "json"]);
    let seqs: Vec<u64> = all
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());

    // The operators' spans reached the collector: the reconciles, and the report ingestions
    // of the sidecar's batches.
    let operations = jaeger.operations("meshlogic-operator");
    for operation in ["reconcile", "request"] {
        assert!(
            operations.iter().any(|o| o == operation),
            "no {operation} span from the operator in Jaeger: {operations:?}"
        );
    }

    // An entry edited in Redis by hand: verify names it.
    let position = seqs.len() / 2;
    let stored = redis.cli(&["LINDEX", "agentmesh:audit:entries", &position.to_string()]);
    let edited = stored.replacen("\"score\":", "\"score\":1", 1);
    assert_eq!(
        redis.cli(&[
            "LSET",
            "agentmesh:audit:entries",
            &position.to_string(),
            &edited
        ]),
        "OK"
    );
    let (code, out) = agentmesh_audit(&store_env, &["verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with(&format!("FAILED at entry seq {position} ")),
        "{out}"
    );
}

#[test]
fn decisions_reach_postgres_and_a_row_edited_by_hand_is_named() {
    let scratch =
        std::env::temp_dir().join(format!("agentmesh-e2e-audit-pg-{}", std::process::id()));
    let postgres = agentmesh_store::testing::PostgresServer::start(&scratch);
    let store_env = agentmesh_store::testing::store_env(&postgres.remote());
    let env: Vec<(&str, &str)> = store_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let w = world_with("sidecar-audit-pg", json!({}), &env);
    let identity = format!("{}/researcher", w.ns);
    let sidecar = Sidecar::start(
        &w.ns,
        "researcher",
        "researcher-0",
        &w.operator,
        None,
        &w.dir,
    );
    call_through(&sidecar, "/servers/tools/mcp", "echo", 1);
    call_through(&sidecar, "/servers/tools/mcp", "run_shell", 2);
    wait_audited(&store_env, &identity, "tool:run_shell");
    let (code, out) = agentmesh_audit(&store_env, &["verify"]);
    assert_eq!(code, 0, "{out}");
    let seq = postgres.psql(&format!(
        "SELECT seq FROM agentmesh_audit WHERE identity = '{identity}' AND subject = 'tool:run_shell'"
    ));
    postgres.psql(&format!(
        "UPDATE agentmesh_audit SET decision = 'allow' WHERE seq = {seq}"
    ));
    let (code, out) = agentmesh_audit(&store_env, &["verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with(&format!("FAILED at entry seq {seq} ")),
        "{out}"
    );
    // The export names the events of the decisions.
    let (_, out) = agentmesh_audit(&store_env, &["export", "--identity", &identity]);
    let types: Vec<String> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|e| e["type"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        types.iter().any(|t| t == "ai.agentmesh.tool.invoked"),
        "{types:?}"
    );
}
