//! `make bench-operator`: the trust API's report ingestion under load, against the real API
//! server.
//!
//! - Baseline: a bare HTTPS server on loopback (rustls, a certificate of its own CA) that reads
//!   each request and answers 202, driven by the same client in the same run: the trust API
//!   answers reports over TLS only, so both pay a TLS handshake per request. Ratio = operator
//!   batches/s ÷ baseline requests/s.
//! - Status writes: signed sidecar reports (each batch signed with the identity's key from its
//!   Secret, a fresh batch id each) of one denied call (-1, the policy's weight) per identity every
//!   `SIDECAR_PERIOD`, so every report changes a score and the score stays inside one tier
//!   (positive credit is capped, so scores can no longer swing both ways); the trust engine's
//!   status writes per identity per 5 s (goal ≤ 1).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agentmesh_e2e::operator::{OperatorProcess, http_get, trust_roots};
use agentmesh_e2e::{TestNamespace, cluster};
use base64::Engine;
use serde_json::json;

const IDENTITIES: usize = 20;
const CLIENTS: usize = 4;
const SECONDS: u64 = 20;
/// Each identity's reports come this far apart: 5 score changes per identity per second.
const SIDECAR_PERIOD: Duration = Duration::from_millis(200);

fn main() {
    cluster().ensure_crds();
    let namespace = TestNamespace::create("bench", &[]);
    let ns = namespace.name.clone();
    let mut operator = OperatorProcess::start(
        &ns,
        "bench",
        &[("AGENTMESH_LOG_LEVEL", "warn"), ("RUST_LOG", "warn")],
    );
    operator.wait_until(Duration::from_secs(30), "leadership", |o| o.is_leader());

    // A policy whose denied calls cost one point; starting at 850, 20 s of reports stay within
    // the `trusted` tier (700-899), so no write is forced by a tier change.
    let policy = json!({"apiVersion": "agentmesh.io/v1alpha1", "kind": "TrustPolicy", "metadata": {"name": "bench"},
        "spec": {"trust": {"decayRate": 0, "initialScore": 850, "signals": {"compliantActivity": 1, "deniedCall": 1}}}});
    cluster().apply(&ns, &policy.to_string());
    // Identities, a pod each, and a reporter allowed to post.
    let mut uids = Vec::new();
    for i in 0..IDENTITIES {
        // The pods run as `default`, which each identity admits.
        let identity = json!({"apiVersion": "agentmesh.io/v1alpha1", "kind": "AgentIdentity", "metadata": {"name": format!("agent-{i}")}, "spec": {"serviceAccountName": "default"}});
        cluster().apply(&ns, &identity.to_string());
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("agent-{i}"), "labels": {"agentmesh.io/identity": format!("agent-{i}")}},
            "spec": {"nodeName": "kwok-node-0", "tolerations": agentmesh_e2e::fake_node_tolerations(),
                     "containers": [{"name": "agent", "image": "registry.invalid/agent:1"}]}});
        cluster().apply(&ns, &pod.to_string());
        let uid = cluster().kubectl_ok(&[
            "get",
            "pod",
            &format!("agent-{i}"),
            "-n",
            &ns,
            "-o",
            "jsonpath={.metadata.uid}",
        ]);
        uids.push(uid);
    }
    cluster().kubectl_ok(&["create", "serviceaccount", "probe", "-n", &ns]);
    let role = format!("{ns}-reports");
    for object in [
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": role}, "rules": [{"apiGroups": ["agentmesh.io"], "resources": ["reports"], "verbs": ["create"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": role}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role}, "subjects": [{"kind": "ServiceAccount", "name": "probe", "namespace": ns}]}),
    ] {
        cluster().apply(&ns, &object.to_string());
    }
    // The probe of the MeshLogicAgent `probe` on kwok-node-0, whose pods the reports name: the
    // operator counts a probe's reports only for its own agent and its own node's pods.
    let agent = json!({"apiVersion": "agentmesh.io/v1alpha1", "kind": "MeshLogicAgent", "metadata": {"name": "probe"},
        "spec": {"customerId": "bench", "serviceAccount": {"create": false, "name": "probe"},
                 "nodeSelector": agentmesh_e2e::fake_nodes(), "tolerations": agentmesh_e2e::fake_node_tolerations()}});
    cluster().apply(&ns, &agent.to_string());
    let token = cluster().node_token(&ns, "probe", "kwok-node-0");
    // Every identity scored before the clock starts.
    operator.wait_until(
        Duration::from_secs(60),
        "every identity to have a score",
        |_| {
            let out = cluster().kubectl_ok(&[
                "get",
                "agentidentities",
                "-n",
                &ns,
                "-o",
                "jsonpath={.items[*].status.trustScore}",
            ]);
            out.split_whitespace().count() == IDENTITIES
        },
    );

    let pods: Vec<_> = uids
        .iter()
        .map(|uid| json!({"podUid": uid, "windowStartMs": 0, "windowEndMs": 1000, "counts": {"execs": 3, "exits": 3, "fileOpens": 40, "connects": 2}}))
        .collect();
    let body = json!({"source": {"kind": "probe", "node": "kwok-node-0", "agent": format!("{ns}/probe"), "tier": 2, "programsLoaded": 7, "ringBufferDrops": 0}, "pods": pods}).to_string();

    let (baseline, baseline_tls) = bare_server();
    let same = vec![vec![(token.clone(), body.clone())]; CLIENTS];
    let (baseline_rate, _) = drive(baseline, &baseline_tls, &same);
    operator.ca_bundle();
    let operator_tls = trust_roots();
    let (operator_rate, refused) = drive(operator.trust_api, &operator_tls, &same);

    // Sidecar reports: one pod-bound token and the key of each identity.
    let mut sidecars = Vec::new();
    for (i, uid) in uids.iter().enumerate() {
        let pod = format!("agent-{i}");
        let bound = cluster().token(&ns, "default", Some((&pod, uid)));
        let pem = cluster().kubectl_ok(&[
            "get",
            "secret",
            &agentmesh_api::names::objects::key_secret_name(&ns, &format!("agent-{i}")),
            "-n",
            &ns,
            "-o",
            "jsonpath={.data.private-key}",
        ]);
        let pem = String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(pem.trim())
                .expect("the key is base64"),
        )
        .unwrap();
        let key = agentmesh_identity::keys::private_key_from_pem(&pem).expect("a key");
        sidecars.push((format!("{ns}/agent-{i}"), bound, key));
    }
    let writes_before = status_writes(&operator);
    let (sidecar_rate, sidecar_refused) =
        drive_sidecars(operator.trust_api, &operator_tls, &sidecars);
    let writes = status_writes(&operator) - writes_before;
    let per_identity_per_5s = writes as f64 / IDENTITIES as f64 / (SECONDS as f64 / 5.0);

    println!(
        "ingest: {operator_rate:.0} batches/s = {:.0} pod reports/s ({refused} refused), {CLIENTS} clients, {SECONDS} s",
        operator_rate * IDENTITIES as f64
    );
    println!("baseline (bare HTTPS server, same client): {baseline_rate:.0} requests/s");
    println!(
        "ingest ratio = {:.3} (operator batches/s ÷ baseline requests/s)",
        operator_rate / baseline_rate
    );
    println!(
        "sidecar reports: {sidecar_rate:.0}/s ({sidecar_refused} refused) = {:.0} score changes per identity per s",
        sidecar_rate / IDENTITIES as f64
    );
    println!(
        "status writes: {writes} for {IDENTITIES} identities in {SECONDS} s = {per_identity_per_5s:.2} per identity per 5 s"
    );
    // N writes of one identity at least 5 s apart span at least 5(N-1) s, so the exact test of
    // "at most one write per identity per 5 s" over a window of T s is (N-1) / (T/5) <= 1.
    let spacing =
        (writes as f64 - IDENTITIES as f64).max(0.0) / IDENTITIES as f64 / (SECONDS as f64 / 5.0);
    println!(
        "status-writes ratio = {spacing:.3} ((writes - identities) per identity per 5 s; goal <= 1)"
    );
    assert_eq!(
        refused + sidecar_refused,
        0,
        "reports were refused during the run"
    );
}

/// Each client thread sends its own (token, body) requests in turn for `SECONDS`;
/// requests/s and the non-2xx count.
fn drive(
    addr: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    per_client: &[Vec<(String, String)>],
) -> (f64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let (done, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let format = |(token, body): &(String, String)| {
        format!(
            "POST /v1/reports HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let started = Instant::now();
    let threads: Vec<_> = per_client
        .iter()
        .map(|requests| {
            let requests: Vec<String> = requests.iter().map(format).collect();
            let (stop, done, refused) = (stop.clone(), done.clone(), refused.clone());
            let tls = tls.clone();
            std::thread::spawn(move || {
                let mut next = 0;
                while !stop.load(Ordering::Relaxed) {
                    let request = &requests[next % requests.len()];
                    next += 1;
                    let response = exchange(addr, &tls, request);
                    if response.starts_with(b"HTTP/1.1 2") || response.starts_with(b"HTTP/1.0 2") {
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(SECONDS));
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().unwrap();
    }
    (
        done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64(),
        refused.load(Ordering::Relaxed),
    )
}

/// Every `SIDECAR_PERIOD`, one freshly signed report of a denied call per identity, for
/// `SECONDS`; reports/s and the non-2xx count.
fn drive_sidecars(
    addr: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    sidecars: &[(String, String, agentmesh_identity::SigningKey)],
) -> (f64, u64) {
    let (mut done, mut refused) = (0u64, 0u64);
    let started = Instant::now();
    let mut round = 0u32;
    while started.elapsed() < Duration::from_secs(SECONDS) {
        for (identity, token, key) in sidecars {
            let mut id = [0u8; 16];
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut id);
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64;
            let body = json!({"source": {"kind": "sidecar", "identity": identity,
                    "batchId": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id), "sentAtMs": now_ms},
                "outcomes": [{"kind": "toolCall", "tool": "search", "effect": "deny", "rule": "bench", "atMs": now_ms}]})
            .to_string();
            let signature = agentmesh_identity::report::sign_report(key, body.as_bytes());
            let request = format!(
                "POST /v1/reports HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n{}: {signature}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                agentmesh_api::wire::REPORT_SIGNATURE_HEADER,
                body.len()
            );
            let response = exchange(addr, tls, &request);
            if response.starts_with(b"HTTP/1.1 2") || response.starts_with(b"HTTP/1.0 2") {
                done += 1;
            } else {
                refused += 1;
                if refused == 1 {
                    eprintln!("refused: {}", String::from_utf8_lossy(&response));
                }
            }
        }
        round += 1;
        let next = SIDECAR_PERIOD * round;
        if let Some(wait) = next.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    (done as f64 / started.elapsed().as_secs_f64(), refused)
}

/// One request on a new TLS connection to 127.0.0.1 (the name both certificates carry); the
/// whole response (a server may close without close_notify after an HTTP/1.0 answer).
fn exchange(addr: SocketAddr, tls: &Arc<rustls::ClientConfig>, request: &str) -> Vec<u8> {
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let connection = rustls::ClientConnection::new(tls.clone(), name).expect("a TLS client");
    let mut stream =
        rustls::StreamOwned::new(connection, TcpStream::connect(addr).expect("connect"));
    stream.write_all(request.as_bytes()).expect("send");
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    response
}

/// A bare HTTP/1.0 server over TLS (a certificate of a CA of its own, for 127.0.0.1): reads the
/// request (headers and body) and answers 202. Its address, and TLS that trusts its CA.
fn bare_server() -> (SocketAddr, Arc<rustls::ClientConfig>) {
    use rustls::pki_types::pem::PemObject;
    let (ca, ca_key) = meshlogic_webhook_certs::new_ca(Duration::from_secs(3600)).unwrap();
    let (cert, key) = meshlogic_webhook_certs::issue(
        &ca,
        &ca_key,
        &["127.0.0.1".to_owned()],
        Duration::from_secs(3600),
    )
    .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                rustls::pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
                rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    );
    let mut roots = rustls::RootCertStore::empty();
    for certificate in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(certificate.unwrap()).unwrap();
    }
    let client = Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let server = server.clone();
            std::thread::spawn(move || {
                let Ok(connection) = rustls::ServerConnection::new(server) else {
                    return;
                };
                let mut stream = rustls::StreamOwned::new(connection, stream);
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 16384];
                loop {
                    let Ok(n) = stream.read(&mut chunk) else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buffer);
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if body.len() >= length {
                            break;
                        }
                    }
                }
                let body = r#"{"accepted":1,"unknownPods":0}"#;
                let response = format!(
                    "HTTP/1.0 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes());
                stream.conn.send_close_notify();
                let _ = stream.flush();
            });
        }
    });
    (addr, client)
}

fn status_writes(operator: &OperatorProcess) -> u64 {
    let metrics = http_get(operator.metrics, "/metrics").expect("metrics");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("meshlogic_operator_status_writes_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}
