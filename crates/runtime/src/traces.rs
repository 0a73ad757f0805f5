//! OpenTelemetry traces (`AGENTMESH_OTEL_ENABLED`, `AGENTMESH_OTEL_ENDPOINT`): every `tracing`
//! span of a component becomes an OTLP span sent over gRPC to the collector, and the W3C trace
//! context (`traceparent`) is the process's propagator.
//!
//! A collector that cannot be reached never stops start-up or holds work up: finished spans go
//! into a bounded queue ([`QUEUE`]) that the caller never waits on; a queue that is full drops
//! the span and counts it ([`SpanCounters::dropped`]); one exporter thread, with its own
//! runtime, sends batches of at most [`BATCH`] with a [`EXPORT_TIMEOUT`], and counts what it
//! could not deliver ([`SpanCounters::failed`]). Hand-written rather than the SDK's batch
//! processor, which drops silently: the counts are what an operator of this software needs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter as _, SpanProcessor};

static COUNTERS: std::sync::OnceLock<Arc<SpanCounters>> = std::sync::OnceLock::new();

/// Whether this process exports traces ([`start`] was called).
pub fn enabled() -> bool {
    COUNTERS.get().is_some()
}

/// The metrics of this process's exporter, when it exports traces: to register in the
/// component's registry.
pub fn metrics(prefix: &'static str) -> Option<SpanMetrics> {
    COUNTERS
        .get()
        .map(|counters| SpanMetrics::new(prefix, counters.clone()))
}

/// Finished spans waiting for the exporter.
pub const QUEUE: usize = 2048;
/// Spans per export.
pub const BATCH: usize = 512;
/// Longest one export may take.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a partial batch waits.
const LINGER: Duration = Duration::from_secs(1);

/// Starts exporting when `enabled` (`AGENTMESH_OTEL_ENABLED`) to `endpoint`
/// (`AGENTMESH_OTEL_ENDPOINT`), then logging ([`crate::logging::init_with_traces`]); the
/// returned value is kept until the process exits (dropping it sends what is queued).
pub fn init(
    level: agentmesh_api::settings::LogLevel,
    format: agentmesh_api::settings::LogFormat,
    enabled: bool,
    endpoint: &str,
    service: &'static str,
) -> Result<Option<Traces>, String> {
    let traces = if enabled {
        Some(start(&TraceConfig {
            endpoint: endpoint.to_owned(),
            service,
        })?)
    } else {
        None
    };
    crate::logging::init_with_traces(level, format, traces.as_ref().map(|t| (t, service)));
    if traces.is_some() {
        tracing::info!(%endpoint, service, "OpenTelemetry traces exported over OTLP/gRPC");
    }
    Ok(traces)
}

/// [`init`] with the component's [`Settings`](agentmesh_api::settings::Settings):
/// `AGENTMESH_LOG_*` and `AGENTMESH_OTEL_*`.
pub fn init_from_settings(
    settings: &agentmesh_api::settings::Settings,
    service: &'static str,
) -> Result<Option<Traces>, String> {
    init(
        settings.log_level,
        settings.log_format,
        settings.otel_enabled,
        &settings.otel_endpoint,
        service,
    )
}

/// Where traces go and under which service name.
#[derive(Clone, Debug)]
pub struct TraceConfig {
    /// The collector's OTLP/gRPC endpoint (`http://otel-collector:4317`).
    pub endpoint: String,
    /// `service.name`: `meshlogic-operator`, `agentmesh-sidecar`, `meshlogic-probe`.
    pub service: &'static str,
}

/// What the exporter did, for the component's metrics.
#[derive(Debug, Default)]
pub struct SpanCounters {
    /// Spans the collector took.
    pub exported: AtomicU64,
    /// Spans dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Spans lost because an export failed (collector unreachable or refusing).
    pub failed: AtomicU64,
}

impl SpanCounters {
    pub fn exported(&self) -> u64 {
        self.exported.load(Ordering::Relaxed)
    }
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

/// The installed tracer provider; spans still queued are sent (for at most [`EXPORT_TIMEOUT`])
/// when it is dropped.
pub struct Traces {
    provider: SdkTracerProvider,
    pub counters: Arc<SpanCounters>,
}

impl Drop for Traces {
    fn drop(&mut self) {
        let _ = self.provider.shutdown_with_timeout(EXPORT_TIMEOUT);
    }
}

struct BoundedProcessor {
    queue: std::sync::Mutex<Option<tokio::sync::mpsc::Sender<SpanData>>>,
    counters: Arc<SpanCounters>,
    exporter: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for BoundedProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BoundedProcessor")
    }
}

impl SpanProcessor for BoundedProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        let queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let sent = queue.as_ref().is_some_and(|q| q.try_send(span).is_ok());
        if !sent {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        // Closing the queue ends the exporter thread once it has sent what is queued.
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = self
            .exporter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let deadline = std::time::Instant::now() + timeout;
            while !thread.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(())
    }
}

/// Starts the exporter and returns the tracer provider to install. Never connects here: the
/// gRPC channel connects on the first export.
pub fn start(config: &TraceConfig) -> Result<Traces, String> {
    let counters = Arc::new(SpanCounters::default());
    let (tx, mut rx) = tokio::sync::mpsc::channel::<SpanData>(QUEUE);
    let resource = Resource::builder()
        .with_service_name(config.service)
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    let endpoint = config.endpoint.clone();
    let thread_counters = counters.clone();
    let thread_resource = resource.clone();
    let thread = std::thread::Builder::new()
        .name("otlp-exporter".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("otlp exporter: no runtime: {error}");
                    return;
                }
            };
            runtime.block_on(async move {
                let mut exporter = match opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint)
                    .with_timeout(EXPORT_TIMEOUT)
                    .build()
                {
                    Ok(exporter) => exporter,
                    Err(error) => {
                        tracing::warn!(%error, "OpenTelemetry exporter not built; spans are dropped");
                        while let Some(_span) = rx.recv().await {
                            thread_counters.failed.fetch_add(1, Ordering::Relaxed);
                        }
                        return;
                    }
                };
                exporter.set_resource(&thread_resource);
                let mut batch = Vec::with_capacity(BATCH);
                loop {
                    let first = rx.recv().await;
                    let Some(first) = first else { break };
                    batch.push(first);
                    let linger = tokio::time::sleep(LINGER);
                    tokio::pin!(linger);
                    while batch.len() < BATCH {
                        tokio::select! {
                            span = rx.recv() => match span {
                                Some(span) => batch.push(span),
                                None => break,
                            },
                            _ = &mut linger => break,
                        }
                    }
                    let count = batch.len() as u64;
                    match exporter.export(std::mem::take(&mut batch)).await {
                        Ok(()) => {
                            thread_counters.exported.fetch_add(count, Ordering::Relaxed);
                        }
                        Err(error) => {
                            thread_counters.failed.fetch_add(count, Ordering::Relaxed);
                            tracing::debug!(%error, spans = count, "OpenTelemetry export failed");
                        }
                    }
                }
                let _ = exporter.shutdown();
            });
        })
        .map_err(|e| format!("starting the OTLP exporter thread: {e}"))?;
    let processor = BoundedProcessor {
        queue: std::sync::Mutex::new(Some(tx)),
        counters: counters.clone(),
        exporter: std::sync::Mutex::new(Some(thread)),
    };
    let provider = SdkTracerProvider::builder()
        .with_resource(resource)
        .with_span_processor(processor)
        .build();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let _ = COUNTERS.set(counters.clone());
    Ok(Traces { provider, counters })
}

impl Traces {
    /// The `tracing` layer that turns spans into OTLP spans.
    pub fn layer<S>(
        &self,
        service: &'static str,
    ) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        tracing_opentelemetry::layer().with_tracer(self.provider.tracer(service))
    }
}

/// The trace context of `headers` (`traceparent`, `tracestate`), to parent a request's span.
pub fn extract(headers: &hyper::HeaderMap) -> opentelemetry::Context {
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&opentelemetry_http::HeaderExtractor(headers))
    })
}

/// The trace context of a bare `traceparent` (and `tracestate`) value, as MCP carries it in a
/// message's `params._meta`.
pub fn extract_traceparent(traceparent: &str, tracestate: Option<&str>) -> opentelemetry::Context {
    let mut carrier = std::collections::HashMap::new();
    carrier.insert("traceparent".to_owned(), traceparent.to_owned());
    if let Some(state) = tracestate {
        carrier.insert("tracestate".to_owned(), state.to_owned());
    }
    opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&carrier))
}

/// The current span's `traceparent`, when traces are exported.
pub fn current_traceparent() -> Option<String> {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    if !enabled() {
        return None;
    }
    let context = tracing::Span::current().context();
    let mut carrier = std::collections::HashMap::new();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut carrier)
    });
    carrier.remove("traceparent")
}

/// Writes the current span's trace context into `headers`, for the next hop.
pub fn inject(headers: &mut hyper::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut opentelemetry_http::HeaderInjector(headers))
    });
}

/// The exporter's counters as metrics of the component's registry:
/// `<prefix>_otel_spans_exported_total`, `…_dropped_total`, `…_failed_total`.
#[derive(Debug)]
pub struct SpanMetrics {
    prefix: &'static str,
    counters: Arc<SpanCounters>,
}

impl SpanMetrics {
    pub fn new(prefix: &'static str, counters: Arc<SpanCounters>) -> Self {
        Self { prefix, counters }
    }
}

impl prometheus_client::collector::Collector for SpanMetrics {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric as _;
        use prometheus_client::metrics::counter::ConstCounter;
        for (name, help, value) in [
            (
                "otel_spans_exported",
                "Spans the OpenTelemetry collector took",
                self.counters.exported(),
            ),
            (
                "otel_spans_dropped",
                "Spans dropped because the queue to the collector was full",
                self.counters.dropped(),
            ),
            (
                "otel_spans_failed",
                "Spans lost because an export to the collector failed",
                self.counters.failed(),
            ),
        ] {
            let counter = ConstCounter::new(value);
            // A registry made `with_prefix` adds its prefix itself: pass "" there.
            let name = if self.prefix.is_empty() {
                name.to_owned()
            } else {
                format!("{}_{name}", self.prefix)
            };
            let metric = encoder.encode_descriptor(&name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}
