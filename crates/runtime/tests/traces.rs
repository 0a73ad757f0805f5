//! Traces against a real collector, Jaeger (scripts/jaeger.sh builds it), on loopback: a span
//! whose caller sent a `traceparent` joins the caller's trace, its context goes on to the next
//! hop, and Jaeger's query API shows it; a collector nobody listens on never holds the caller
//! up, and what is lost is counted.

use std::time::{Duration, Instant};

use agentmesh_runtime::testing::{Jaeger, free_port};
use agentmesh_runtime::traces::{self, TraceConfig};
use tracing_subscriber::layer::SubscriberExt as _;

#[test]
fn a_span_joins_the_callers_trace_passes_it_on_and_reaches_jaeger() {
    let jaeger = Jaeger::start();
    let traces = traces::start(&TraceConfig {
        endpoint: jaeger.endpoint(),
        service: "agentmesh-test",
    })
    .unwrap();
    let subscriber = tracing_subscriber::registry().with(traces.layer("agentmesh-test"));
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut incoming = hyper::HeaderMap::new();
    incoming.insert(
        "traceparent",
        format!("00-{trace_id}-{caller_span}-01").parse().unwrap(),
    );
    let mut outgoing = hyper::HeaderMap::new();
    tracing::subscriber::with_default(subscriber, || {
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        let span = tracing::info_span!("request", path = "/mcp");
        let _ = span.set_parent(traces::extract(&incoming));
        let _entered = span.enter();
        tracing::info_span!("upstream").in_scope(|| traces::inject(&mut outgoing));
    });
    let next = outgoing["traceparent"].to_str().unwrap().to_owned();
    assert!(next.starts_with(&format!("00-{trace_id}-")), "{next}");
    assert!(
        !next.contains(caller_span),
        "the next hop's parent is our span: {next}"
    );
    let counters = traces.counters.clone();
    drop(traces); // sends what is queued

    let trace = jaeger.wait_trace(trace_id, 2);
    assert_eq!(counters.exported(), 2);
    let spans = trace["spans"].as_array().unwrap();
    let request = spans
        .iter()
        .find(|s| s["operationName"] == "request")
        .unwrap();
    // Its parent is the caller's span.
    assert_eq!(request["references"][0]["spanID"], caller_span);
    let service = &trace["processes"][request["processID"].as_str().unwrap()]["serviceName"];
    assert_eq!(service, "agentmesh-test");
    // The upstream span is the request's child, and the next hop's parent.
    let upstream = spans
        .iter()
        .find(|s| s["operationName"] == "upstream")
        .unwrap();
    assert_eq!(upstream["references"][0]["spanID"], request["spanID"]);
    assert!(next.contains(upstream["spanID"].as_str().unwrap()));
}

/// Emits `total` spans through `traces`; returns how long that took.
fn emit(traces: &traces::Traces, total: usize) -> Duration {
    let subscriber = tracing_subscriber::registry().with(traces.layer("agentmesh-test"));
    let started = Instant::now();
    tracing::subscriber::with_default(subscriber, || {
        for i in 0..total {
            tracing::info_span!("work", i).in_scope(|| {});
        }
    });
    started.elapsed()
}

fn wait_accounted(counters: &traces::SpanCounters, total: usize) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while counters.dropped() + counters.failed() < total as u64 {
        assert!(
            Instant::now() < deadline,
            "dropped {} + failed {} of {total}",
            counters.dropped(),
            counters.failed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(counters.exported(), 0);
    assert_eq!(counters.dropped() + counters.failed(), total as u64);
}

#[test]
fn spans_for_a_collector_nobody_listens_on_are_counted_as_failed() {
    let traces = traces::start(&TraceConfig {
        endpoint: format!("http://127.0.0.1:{}", free_port()),
        service: "agentmesh-test",
    })
    .unwrap();
    let took = emit(&traces, 100);
    assert!(took < Duration::from_secs(1), "100 spans took {took:?}");
    wait_accounted(&traces.counters, 100);
    assert_eq!(traces.counters.failed(), 100);
}

#[test]
fn a_collector_that_never_answers_never_holds_spans_up_and_the_overflow_is_dropped() {
    // Accepts connections (the kernel's backlog) and never speaks: every export waits for its
    // timeout.
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let traces = traces::start(&TraceConfig {
        endpoint: format!("http://{}", black_hole.local_addr().unwrap()),
        service: "agentmesh-test",
    })
    .unwrap();
    let total = traces::QUEUE * 2;
    let took = emit(&traces, total);
    assert!(
        took < Duration::from_secs(2),
        "{total} spans took {took:?} with a collector that never answers"
    );
    assert!(traces.counters.dropped() > 0, "nothing dropped");
    wait_accounted(&traces.counters, total);
}
