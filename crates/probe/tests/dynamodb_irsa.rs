//! The `dynamodb` telemetry sink with IRSA: no keys, a web-identity token file and a role ARN
//! (what EKS's pod identity webhook sets), exchanged with STS's AssumeRoleWithWebIdentity —
//! both DynamoDB and STS played by moto (see `aws/`).

mod aws;
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws::{Faults, Moto, TABLE, fault_proxy};
use common::{Layout, TestPod, TrustServer, config, require_root};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_reaches_dynamodb_with_irsa() {
    if !require_root() {
        return;
    }
    let moto = Moto::start();
    moto.create_table().await;
    let faults = Arc::new(Faults::default());
    let endpoint = fault_proxy(moto.url.clone(), faults.clone()).await;
    let token = std::env::temp_dir().join(format!("meshlogic-irsa-token-{}", std::process::id()));
    // A projected ServiceAccount token's shape; moto does not check its signature.
    std::fs::write(
        &token,
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6bWVzaGxvZ2ljOm1lc2hsb2dpYy1hZ2VudCJ9.c2ln",
    )
    .unwrap();
    // SAFETY: set before any thread of this test reads the environment; one test per binary.
    unsafe {
        std::env::remove_var("AWS_ACCESS_KEY_ID");
        std::env::remove_var("AWS_SECRET_ACCESS_KEY");
        std::env::set_var(
            "AWS_ROLE_ARN",
            "arn:aws:iam::123456789012:role/meshlogic-agent",
        );
        std::env::set_var("AWS_WEB_IDENTITY_TOKEN_FILE", &token);
        std::env::set_var("AWS_ROLE_SESSION_NAME", "meshlogic-probe");
        // STS is moto too (through the proxy, which records the call).
        std::env::set_var("AWS_ENDPOINT_URL_STS", &endpoint);
    }

    let server = TrustServer::start().await;
    let spec = json!({
        "region": "ap-southeast-2",
        "aws": {"useIRSA": true},
        "telemetry": {"sink": "dynamodb", "endpoint": endpoint, "table": TABLE},
    });
    let mut config = config(&server, spec);
    config.telemetry_interval = Duration::from_secs(1);
    let probe = meshlogic_probe::run::start(config).await.unwrap();
    let pod = TestPod::new(Layout::Cgroupfs);
    common::wait_watched(&probe, &[&pod]).await;

    let start = Instant::now();
    while moto.items().await.len() < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no telemetry items; requests: {:?}",
            faults.seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let seen = faults.seen.lock().unwrap().clone();
    let assumed = seen
        .iter()
        .position(|t| t == "AssumeRoleWithWebIdentity")
        .unwrap_or_else(|| panic!("no AssumeRoleWithWebIdentity: {seen:?}"));
    let first_write = seen
        .iter()
        .position(|t| t.ends_with("BatchWriteItem"))
        .unwrap();
    assert!(assumed < first_write, "{seen:?}");
    probe.shutdown();
}
