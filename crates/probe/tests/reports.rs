//! Report delivery: bearer token, retries with backoff after failures, order kept.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use agentmesh_api::wire::{ReportBatch, ReportSource};
use common::TrustServer;
use meshlogic_probe::http::JsonClient;
use meshlogic_probe::metrics::Metrics;
use meshlogic_probe::report::{Backoff, ReportQueue};

fn batch(n: u32) -> ReportBatch {
    ReportBatch {
        source: ReportSource::Probe {
            node: "n".into(),
            agent: "a/b".into(),
            tier: 2,
            fallback_reason: None,
            programs_loaded: n,
            file_hook: None,
            ring_buffer_drops: 0,
        },
        pods: vec![],
        outcomes: vec![],
    }
}

#[tokio::test]
async fn failed_reports_are_retried_with_backoff_in_order() {
    let server = TrustServer::start().await;
    server.fail_next.store(3, Ordering::SeqCst);
    let token = std::env::temp_dir().join(format!("meshlogic-report-token-{}", std::process::id()));
    std::fs::write(&token, common::TOKEN).unwrap();
    let metrics = Arc::new(Metrics::new());
    let queue = Arc::new(ReportQueue::new(8, metrics.clone()));
    for n in 0..3 {
        queue.push(batch(n));
    }
    let backoff = Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(400),
    };
    let started = Instant::now();
    let sender = tokio::spawn(queue.clone().run_sender(
        JsonClient::new(Some(token)),
        server.url.clone(),
        backoff,
    ));
    while server.batches().len() < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "batches not delivered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Three failures: 50 + 100 + 200 ms of backoff at least.
    assert!(
        started.elapsed() >= Duration::from_millis(350),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.batches(), vec![batch(0), batch(1), batch(2)]);
    assert_eq!(metrics.report_failures.get(), 3);
    assert_eq!(metrics.reports_sent.get(), 3);
    assert_eq!(metrics.report_drops.get(), 0);
    assert!(queue.is_empty());
    sender.abort();
}

#[tokio::test]
async fn without_the_token_the_server_refuses_and_nothing_is_lost() {
    let server = TrustServer::start().await;
    let metrics = Arc::new(Metrics::new());
    let queue = Arc::new(ReportQueue::new(8, metrics.clone()));
    queue.push(batch(0));
    let missing = std::env::temp_dir().join("meshlogic-no-such-token");
    let backoff = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(50),
    };
    let sender = tokio::spawn(queue.clone().run_sender(
        JsonClient::new(Some(missing)),
        server.url.clone(),
        backoff,
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(metrics.report_failures.get() >= 2);
    assert_eq!(queue.len(), 1, "kept for when the token appears");
    sender.abort();
}
