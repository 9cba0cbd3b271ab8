//! Metrics through OpenTelemetry instruments, exposed in Prometheus text format at `/metrics`
//! (opentelemetry-prometheus over a `prometheus` registry). Names are prefixed `mesh_`.

use opentelemetry::metrics::{Counter, MeterProvider};
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use std::sync::Arc;

/// The node's instruments.
#[derive(Clone)]
pub struct Metrics {
    registry: prometheus::Registry,
    _provider: Arc<SdkMeterProvider>,
    /// Links refused, by peer (as claimed or proven) and reason.
    pub links_refused: Counter<u64>,
    /// Client writes answered, by outcome.
    pub writes: Counter<u64>,
    /// Conflict records, by keyspace strategy.
    pub conflicts: Counter<u64>,
    /// Ops sent to peers in batches, by peer.
    pub replicated_ops: Counter<u64>,
    /// Frame bytes sent, by peer and kind (`wire` after compression, `raw` before).
    pub bytes_sent: Counter<u64>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Instruments for DC `dc`, reporting into a fresh registry.
    pub fn new(dc: &str) -> Result<Self, String> {
        let registry = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .build()
            .map_err(|e| e.to_string())?;
        let provider = SdkMeterProvider::builder().with_reader(exporter).build();
        let scope = opentelemetry::InstrumentationScope::builder("mesh")
            .with_attributes([KeyValue::new("dc", dc.to_owned())])
            .build();
        let meter = provider.meter_with_scope(scope);
        let counter = |name: &'static str, description: &'static str| {
            meter.u64_counter(name).with_description(description).build()
        };
        Ok(Self {
            links_refused: counter(
                "mesh_links_refused",
                "Peer links refused (TLS, identity, membership or topology fingerprint)",
            ),
            writes: counter("mesh_writes", "Client writes answered, by outcome"),
            conflicts: counter("mesh_conflicts", "Conflict records, by keyspace strategy"),
            replicated_ops: counter("mesh_replicated_ops", "Ops sent to peers in batches"),
            bytes_sent: counter(
                "mesh_bytes_sent",
                "Frame bytes sent to peers (wire: compressed; raw: before compression)",
            ),
            registry,
            _provider: Arc::new(provider),
        })
    }

    /// The Prometheus text exposition of every instrument.
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut out = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}
