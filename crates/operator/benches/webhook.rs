//! `make bench-webhook`: the injection webhook's admission handling.
//!
//! 1. Handler latency (p50, p99): decode an AdmissionReview of the seed's agent pod, decide,
//!    build the patch, encode the answer — in process, no network.
//! 2. Reviews per second and latency over TLS keep-alive (the operator's own server: hyper over
//!    tokio-rustls, certificate resolved per handshake), against a bare rustls echo server on
//!    the same stack that answers every request with its body, measured in the same run. The
//!    ratios say what the injector costs on top of TLS + HTTP.
//!
//! Goals: handler ≤ 50 µs p50; ≥ 5k reviews/s on 2 cores.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use meshlogic_operator::metrics::Metrics;
use meshlogic_operator::webhook::inject::{Key, Settings};
use meshlogic_operator::webhook::review::BadRequest;
use meshlogic_operator::webhook::server::{self, CertStore, Reviewer};
use meshlogic_operator::webhook::{Identities, Injector, certs};
use serde_json::{Value, json};

const CONNECTIONS: usize = 4;
const SECONDS: u64 = 3;

fn review_body() -> Vec<u8> {
    // The running bench's manifest directory, not the one compiled in (see e2e's repo_root).
    let manifest = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    let path = format!("{manifest}/tests/golden/seed-agent.yaml");
    let case: Value = serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "00000000-0000-0000-0000-000000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": case["namespace"],
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": case["pod"],
            "dryRun": false,
        }
    }))
    .unwrap()
}

fn injector() -> Injector {
    let mut fixed = HashMap::new();
    fixed.insert(
        ("my-app".to_owned(), "my-agent".to_owned()),
        (Key::Managed, "my-agent".to_owned()),
    );
    let (metrics, _registry) = Metrics::new();
    Injector::new(
        Settings::seed("agentmesh", true),
        Identities::fixed(fixed, false),
        metrics,
        None,
    )
}

struct Echo;

impl Reviewer for Echo {
    async fn review(&self, body: Bytes) -> Result<Vec<u8>, BadRequest> {
        Ok(body.to_vec())
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Starts `reviewer` behind the operator's TLS server; returns its port and the CA's PEM.
async fn serve_on<R: Reviewer>(reviewer: R) -> (u16, String) {
    let (ca, ca_key) = certs::new_ca(Duration::from_secs(3600)).unwrap();
    let (cert, key) = certs::issue(
        &ca,
        &ca_key,
        &["127.0.0.1".into()],
        Duration::from_secs(3600),
    )
    .unwrap();
    let store = Arc::new(CertStore::default());
    store.set_pem(cert.as_bytes(), key.as_bytes()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(server::serve(
        listener,
        server::acceptor(store, None).unwrap(),
        None,
        Arc::new(reviewer),
        std::future::pending(),
    ));
    (port, ca)
}

/// `CONNECTIONS` keep-alive clients posting `body` for `SECONDS`: (reviews/s, latencies).
async fn load(port: u16, ca: &str, body: &[u8]) -> (f64, Vec<Duration>) {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(server::provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let body = Bytes::from(body.to_vec());
    let deadline = Instant::now() + Duration::from_secs(SECONDS);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let (connector, body) = (connector.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            tcp.set_nodelay(true).unwrap();
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let tls = connector.connect(name, tcp).await.unwrap();
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                    .await
                    .unwrap();
            tokio::spawn(connection);
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let request = hyper::Request::post("/inject")
                    .header("host", "127.0.0.1")
                    .header("content-type", "application/json")
                    .body(Full::new(body.clone()))
                    .unwrap();
                let sent = Instant::now();
                let response = sender.send_request(request).await.unwrap();
                assert_eq!(response.status(), 200);
                let answer = response.into_body().collect().await.unwrap().to_bytes();
                latencies.push(sent.elapsed());
                assert!(!answer.is_empty());
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    all.sort_unstable();
    (rate, all)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let body = review_body();

        // 1. The handler alone.
        let injector = injector();
        let answer = injector.review_body(&body).await.unwrap();
        assert!(String::from_utf8_lossy(&answer).contains("\"patch\""), "the bench pod is injected");
        for _ in 0..2_000 {
            injector.review_body(&body).await.unwrap();
        }
        let mut handler = Vec::with_capacity(50_000);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(SECONDS) {
            let t = Instant::now();
            let answer = injector.review_body(&body).await.unwrap();
            handler.push(t.elapsed());
            std::hint::black_box(answer);
        }
        handler.sort_unstable();
        let (h50, h99) = (percentile(&handler, 0.50), percentile(&handler, 0.99));
        println!(
            "handler (decode + decide + patch + encode, {} B review): p50 {:.1} µs, p99 {:.1} µs over {} reviews (goal p50 <= 50 µs)",
            body.len(),
            micros(h50),
            micros(h99),
            handler.len()
        );

        // 2. Over TLS keep-alive: the webhook, then the bare echo baseline, same stack.
        let (port, ca) = serve_on(injector).await;
        let (webhook_rate, webhook) = load(port, &ca, &body).await;
        let (port, ca) = serve_on(Echo).await;
        let (echo_rate, echo) = load(port, &ca, &body).await;
        let (w50, w99) = (percentile(&webhook, 0.50), percentile(&webhook, 0.99));
        let (e50, e99) = (percentile(&echo, 0.50), percentile(&echo, 0.99));
        println!(
            "webhook over TLS keep-alive ({CONNECTIONS} connections): {webhook_rate:.0} reviews/s, p50 {:.1} µs, p99 {:.1} µs (goal >= 5000 reviews/s)",
            micros(w50),
            micros(w99)
        );
        println!(
            "bare rustls echo server ({CONNECTIONS} connections):      {echo_rate:.0} requests/s, p50 {:.1} µs, p99 {:.1} µs",
            micros(e50),
            micros(e99)
        );
        println!("webhook vs echo throughput: ratio = {:.2} (1.0 = the injector costs nothing)", webhook_rate / echo_rate);
        println!("webhook vs echo p50 latency: ratio = {:.2}", micros(w50) / micros(e50));
        println!("webhook vs echo p99 latency: ratio = {:.2}", micros(w99) / micros(e99));
        println!(
            "handler p50 vs echo round trip p50: ratio = {:.3}",
            micros(h50) / micros(e50)
        );
    });
}
