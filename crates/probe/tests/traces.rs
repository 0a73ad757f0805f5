//! The probe's spans reach a real collector (Jaeger, scripts/jaeger.sh): each report send is a
//! span of `meshlogic-probe`.

mod common;

use std::time::{Duration, Instant};

use agentmesh_runtime::testing::Jaeger;
use agentmesh_runtime::traces::{self, TraceConfig};
use common::{TrustServer, config, require_root};
use tracing_subscriber::layer::SubscriberExt as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_sends_are_spans_in_the_collector() {
    if !require_root() {
        return;
    }
    let jaeger = Jaeger::start();
    // What the probe's main does with AGENTMESH_OTEL_ENABLED=true (one test in this binary).
    let traces = traces::start(&TraceConfig {
        endpoint: jaeger.endpoint(),
        service: "meshlogic-probe",
    })
    .unwrap();
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(traces.layer("meshlogic-probe")),
    )
    .unwrap();
    let server = TrustServer::start().await;
    let probe = meshlogic_probe::run::start(config(&server, serde_json::json!({})))
        .await
        .unwrap();
    let start = Instant::now();
    while server.batches().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(30), "no report sent");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let operations = tokio::task::spawn_blocking(move || jaeger.operations("meshlogic-probe"))
        .await
        .unwrap();
    assert!(
        operations.iter().any(|o| o == "report send"),
        "{operations:?}"
    );
    assert!(traces.counters.exported() >= 1);
    probe.shutdown();
}
