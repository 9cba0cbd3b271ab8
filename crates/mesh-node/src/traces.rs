//! Traces across DCs (OpenTelemetry, exported over OTLP with HTTP and protobuf).
//!
//! A sampled client write is one trace: a `mesh.write` span at the DC that took it (arrival to
//! answer, which for an async write is its durable commit), and a `mesh.apply` span at every DC
//! that applied the batch carrying it (batch arrival to its durable apply there), a child of
//! the write span. The write's context travels in the batch's trace field (W3C `traceparent`,
//! docs/wire-format.md). A write is sampled when its HTTP `traceparent` header says so, or, without
//! one, with probability `[node] trace_sampling` (OpenTelemetry's parent-based ratio sampler).

use opentelemetry::trace::{Span as _, SpanKind, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, Span,
};
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

/// How often finished spans are exported.
const EXPORT_EVERY: Duration = Duration::from_millis(500);

/// One DC's tracer.
pub struct Traces {
    tracer: SdkTracer,
    provider: SdkTracerProvider,
}

impl std::fmt::Debug for Traces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Traces")
    }
}

impl Drop for Traces {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

impl Traces {
    /// A tracer for DC `dc` of `region` exporting to `endpoint` (the full URL, e.g.
    /// `http://127.0.0.1:4318/v1/traces`), starting a trace for a `ratio` of unsampled writes.
    /// Build it outside the async runtime: the exporter runs a blocking HTTP client on its own
    /// thread.
    pub fn new(dc: &str, region: &str, endpoint: &str, ratio: f64) -> Result<Self, String> {
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| format!("node.otlp_traces_endpoint {endpoint}: {e}"))?;
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(BatchConfigBuilder::default().with_scheduled_delay(EXPORT_EVERY).build())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_resource(crate::metrics::resource(dc, region))
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))))
            .with_span_processor(processor)
            .build();
        Ok(Self { tracer: provider.tracer("mesh"), provider })
    }

    /// Starts the span of a client write that arrived at `at`, a child of `traceparent` when
    /// one is given; `None` when the write is not sampled.
    pub fn start_write(
        &self,
        traceparent: Option<&str>,
        at: SystemTime,
        attributes: Vec<KeyValue>,
    ) -> Option<Span> {
        let parent = traceparent.map_or_else(Context::new, remote_parent);
        let span = self
            .tracer
            .span_builder("mesh.write")
            .with_kind(SpanKind::Server)
            .with_start_time(at)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &parent);
        span.span_context().is_sampled().then_some(span)
    }

    /// Records the span of a batch from a traced write (`traceparent`) applied here: from its
    /// arrival to its durable apply.
    pub fn record_apply(&self, traceparent: &str, arrived: SystemTime, attributes: Vec<KeyValue>) {
        let mut span = self
            .tracer
            .span_builder("mesh.apply")
            .with_kind(SpanKind::Consumer)
            .with_start_time(arrived)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &remote_parent(traceparent));
        span.end();
    }
}

/// The W3C `traceparent` of `span`, for the batches that carry its write.
pub fn traceparent(span: &Span) -> String {
    let c = span.span_context();
    format!("00-{}-{}-{:02x}", c.trace_id(), c.span_id(), c.trace_flags().to_u8())
}

/// A context whose parent is the remote span `traceparent` names (an invalid one gives none).
fn remote_parent(traceparent: &str) -> Context {
    use opentelemetry::propagation::TextMapPropagator;
    let carrier: HashMap<String, String> =
        HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    TraceContextPropagator::new().extract(&carrier)
}
