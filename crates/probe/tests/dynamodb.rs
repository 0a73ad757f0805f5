//! The `dynamodb` telemetry sink against moto (DynamoDB's stand-in, see `aws/`), with the keys
//! of a credentials Secret: the noised records become items keyed by customer, node and
//! window; throttled requests and unprocessed items are retried and nothing is lost or written
//! twice.

mod aws;
mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use aws::{Faults, Moto, TABLE, fault_proxy, number};
use common::{Layout, TestPod, TrustServer, config, require_root};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noised_telemetry_reaches_dynamodb_with_secret_keys_through_throttling() {
    if !require_root() {
        return;
    }
    // What the operator sets from `aws.credentialsSecret` (this test binary's own process).
    // SAFETY: set before any thread of this test reads the environment; one test per binary.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "AKIDSECRETKEYS");
        std::env::set_var(
            "AWS_SECRET_ACCESS_KEY",
            "secret-from-the-credentials-secret",
        );
        std::env::remove_var("AWS_ROLE_ARN");
        std::env::remove_var("AWS_WEB_IDENTITY_TOKEN_FILE");
    }
    let moto = Moto::start();
    moto.create_table().await;
    let faults = Arc::new(Faults::default());
    faults.throttle.store(2, Ordering::SeqCst);
    faults.leave_unprocessed.store(1, Ordering::SeqCst);
    let endpoint = fault_proxy(moto.url.clone(), faults.clone()).await;

    let server = TrustServer::start().await;
    let spec = json!({
        "region": "ap-southeast-2",
        "privacy": {"epsilon": 0.5, "enableNoise": true},
        "telemetry": {"sink": "dynamodb", "endpoint": endpoint, "table": TABLE, "batchSize": 3},
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

    let start = Instant::now();
    let items = loop {
        let items = moto.items().await;
        let quiet = items
            .iter()
            .filter(|i| number(i, "windowStartMs") >= quiet_from)
            .count();
        if items.len() >= 10 && quiet >= 5 {
            break items;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} items; requests: {:?}",
            items.len(),
            faults.seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(
        faults.throttled.load(Ordering::SeqCst),
        2,
        "throttled twice"
    );
    assert_eq!(faults.unprocessed.load(Ordering::SeqCst), 1);
    for item in &items {
        assert_eq!(item["pk"].as_s().unwrap(), "test#test-node");
        assert_eq!(item["customerId"].as_s().unwrap(), "test");
        assert_eq!(item["agent"].as_s().unwrap(), "meshlogic/test-agent");
        assert_eq!(item["noise"].as_bool().unwrap(), &true);
        assert_eq!(item["epsilon"].as_n().unwrap(), "0.5");
        assert_eq!(item["noiseScale"].as_n().unwrap(), "8.0");
    }
    // Nothing lost while throttled: the windows follow one another without a gap (each
    // starts where the previous one ended), and none is there twice (the sort key is unique).
    for pair in items.windows(2) {
        assert_eq!(
            number(&pair[0], "windowEndMs"),
            number(&pair[1], "windowStartMs"),
            "a window is missing between {:?} and {:?}",
            pair[0]["sk"],
            pair[1]["sk"]
        );
    }
    // Noised (see `common::released_zeros`).
    let zeros = common::released_zeros(
        items.iter().map(|i| {
            let counts = i["counts"].as_m().unwrap();
            let count = |name: &str| counts[name].as_n().unwrap().parse::<u64>().unwrap();
            let released = [
                count("execs"),
                count("exits"),
                count("fileOpens"),
                count("connects"),
            ];
            (number(i, "windowStartMs"), released)
        }),
        quiet_from,
    );
    assert!(
        zeros.noised > 0,
        "no noise visible in {zeros:?}: {items:#?}"
    );
    // The exact count of the pod's opens went to the trust API only.
    let exact = common::Merged::of(&server.pod_windows(&pod.uid)).file_opens;
    assert!(exact >= 200, "{exact}");
    let metrics = common::get(probe.listen_addr, "/metrics").await;
    let metric = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing"))
            .parse()
            .unwrap()
    };
    assert!(metric("meshlogic_probe_telemetry_retries_total") >= 1.0);
    assert!(metric("meshlogic_probe_telemetry_exports_total") >= items.len() as f64);
    assert_eq!(metric("meshlogic_probe_telemetry_drops_total"), 0.0);
    // ε is spent per released window, delivered or not.
    assert!(
        metric("meshlogic_probe_privacy_epsilon_spent_total") >= 0.5 * items.len() as f64 - 1e-9
    );
    probe.shutdown();
}
