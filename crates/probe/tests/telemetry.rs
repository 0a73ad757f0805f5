//! Telemetry leaves the node noised (Laplace, scale 4/ε per count), with ε accounted per
//! window; the counts sent to the trust API stay exact.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Layout, TestPod, TrustServer, config, require_root};
use serde_json::{Value, json};

async fn sink() -> (String, Arc<Mutex<Vec<Value>>>) {
    use http_body_util::BodyExt;
    let records: Arc<Mutex<Vec<Value>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/telemetry", listener.local_addr().unwrap());
    let kept = records.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let kept = kept.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let kept = kept.clone();
                        async move {
                            let body = request.into_body().collect().await.unwrap().to_bytes();
                            kept.lock()
                                .unwrap()
                                .push(serde_json::from_slice(&body).unwrap());
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(bytes::Bytes::new()),
                            ))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, records)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_is_noised_and_epsilon_is_accounted() {
    if !require_root() {
        return;
    }
    let server = TrustServer::start().await;
    let (url, records) = sink().await;
    let spec = json!({
        "privacy": {"epsilon": 0.5, "enableNoise": true},
        "telemetry": {"sink": "http", "endpoint": url},
    });
    let mut config = config(&server, spec);
    config.telemetry_interval = Duration::from_secs(1); // the CRD's minimum is 10 s
    let probe = meshlogic_probe::run::start(config).await.unwrap();
    let pod = TestPod::new(Layout::Cgroupfs);
    common::wait_watched(&probe, &[&pod]).await;
    assert!(
        pod.run("for i in $(seq 200); do : < /etc/hostname; done")
            .success()
    );
    // Windows starting from here on hold no event of the pod (its processes are gone).
    let quiet_from = common::now_ms() + 2000;

    let start_ms = |r: &serde_json::Value| r["windowStartMs"].as_u64().unwrap();
    let start = Instant::now();
    loop {
        let (all, quiet) = {
            let records = records.lock().unwrap();
            let quiet = records.iter().filter(|r| start_ms(r) >= quiet_from).count();
            (records.len(), quiet)
        };
        if all >= 10 && quiet >= 5 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no telemetry");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let records = records.lock().unwrap().clone();
    for record in &records {
        assert_eq!(record["noise"], true);
        assert_eq!(record["epsilon"], 0.5);
        assert_eq!(record["noiseScale"], 8.0);
        assert_eq!(record["node"], "test-node");
    }
    // The exact count of the pod's opens went to the trust API...
    let exact = common::Merged::of(&server.pod_windows(&pod.uid)).file_opens;
    assert!(exact >= 200, "{exact}");
    // ...and the telemetry is noised (see `common::released_zeros`).
    let zeros = common::released_zeros(
        records.iter().map(|r| {
            let count = |name: &str| r["counts"][name].as_u64().unwrap();
            let released = [
                count("execs"),
                count("exits"),
                count("fileOpens"),
                count("connects"),
            ];
            (start_ms(r), released)
        }),
        quiet_from,
    );
    assert!(
        zeros.noised > 0,
        "no noise visible in {zeros:?}: {records:#?}"
    );
    let metrics = common::get(probe.listen_addr, "/metrics").await;
    let spent: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("meshlogic_probe_privacy_epsilon_spent_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        spent >= 0.5 * records.len() as f64 - 1e-9,
        "{spent} for {} releases",
        records.len()
    );
    probe.shutdown();
}
