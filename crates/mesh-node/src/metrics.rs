//! Metrics through OpenTelemetry instruments, exposed in Prometheus text format at `/metrics`
//! (opentelemetry-prometheus over a `prometheus` registry) and, when `[node] otlp_endpoint` is
//! set, pushed there over OTLP (HTTP with protobuf) every `otlp_interval_ms`. Names are prefixed
//! `mesh_`.

use opentelemetry::metrics::{Counter, Histogram, MeterProvider};
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    /// Frame bytes received, by peer and kind (`wire` as received, `raw` decompressed).
    pub bytes_received: Counter<u64>,
    /// Snapshot chunk bytes (state transfers) as on the wire, by direction.
    pub transfer_bytes: Counter<u64>,
    /// Live versions a siblings keyspace keeps when concurrent writes meet (per conflict).
    pub siblings: Histogram<u64>,
    /// Peers that came back holding less than they had acknowledged, by peer.
    pub peer_regressions: Counter<u64>,
    /// Batches or snapshot chunks from a peer that could not be applied, by peer.
    pub apply_failures: Counter<u64>,
    /// Per peer counters for `/v1/status` (OpenTelemetry counters cannot be read back).
    pub links: LinkCounters,
    /// Replication lag per op, origin durable commit → durable apply here, in seconds, by
    /// origin ([`crate::lag`]).
    pub replication_lag: Histogram<f64>,
    /// The same lags in µs as HDR histograms by origin, for `/v1/status` (exact percentiles;
    /// an OpenTelemetry histogram cannot be read back).
    pub lag_hdr: LagHistograms,
    /// Client write latency, arrival to answer, in seconds, by mode and outcome.
    pub write_duration: Histogram<f64>,
    /// Writes refused before they were written, by reason.
    pub writes_refused: Counter<u64>,
    /// Persist latency, submit to durable, in seconds.
    pub commit_duration: Histogram<f64>,
    /// Ops per persist.
    pub commit_ops: Histogram<u64>,
    /// What the observable gauges report, refreshed by the DC actor ([`Metrics::observe`]).
    observed: Arc<Mutex<Observed>>,
    /// What the health gauges report, refreshed by the health actor ([`Metrics::observe_health`]).
    health: Arc<Mutex<Vec<PeerHealthObserved>>>,
    _observers: Arc<Vec<Box<dyn std::any::Any + Send + Sync>>>,
}

/// The DC's state as the observable instruments report it at a scrape; the DC actor refreshes
/// it at most every [`OBSERVE_EVERY`].
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Per peer.
    pub peers: Vec<PeerObserved>,
    /// State transfers taken up by peers.
    pub transfers_sent: u64,
    /// State transfers received and applied.
    pub transfers_received: u64,
    /// Keys whose tombstones were collected.
    pub keys_collected: u64,
    /// Sync writes and WAITs waiting for acknowledgements.
    pub sync_waiting: u64,
    /// The op log: ops and bytes held (`None`: unreadable).
    pub log: Option<(u64, u64)>,
    /// Checkpoints: done, their time, and the time commits waited for them.
    pub checkpoints: mesh_store::CheckpointStats,
    /// Remote ops whose HLC was beyond `max_clock_skew_ms` ahead.
    pub hlc_beyond_skew: u64,
    /// Keys holding a tombstone not collected yet (`None`: not counted yet).
    pub tombstones_held: Option<u64>,
}

/// One peer in [`Observed`].
#[derive(Debug, Clone, Default)]
pub struct PeerObserved {
    /// The peer.
    pub peer: String,
    /// A link is up.
    pub link_up: bool,
    /// Ops this DC has to send it.
    pub queued_ops: u64,
    /// Batches sent and not acknowledged.
    pub inflight_batches: u64,
    /// Windows resent.
    pub retransmits: u64,
    /// Dials that failed.
    pub dials_failed: u64,
    /// Links lost.
    pub links_lost: u64,
}

/// One peer as the health actor judges it, refreshed every heartbeat interval.
#[derive(Debug, Clone, Default)]
pub struct PeerHealthObserved {
    /// The peer.
    pub peer: String,
    /// 0 healthy, 1 suspect, 2 down.
    pub health: u64,
    /// The failure detector's phi (`None` before a heartbeat).
    pub phi: Option<f64>,
    /// Ops this DC holds that the peer is not known to hold.
    pub lag_ops: u64,
    /// How long the oldest of them waited, in s.
    pub lag_seconds: f64,
    /// Its clock minus ours, in s (`None` before a round trip).
    pub clock_offset_seconds: Option<f64>,
}

/// How stale the observable instruments may be.
pub const OBSERVE_EVERY: Duration = Duration::from_millis(50);

/// The OpenTelemetry resource of DC `dc` of `region`, for its metrics and traces:
/// `service.name = meshd`, `mesh.dc`, `mesh.region`.
pub(crate) fn resource(dc: &str, region: &str) -> opentelemetry_sdk::Resource {
    opentelemetry_sdk::Resource::builder()
        .with_service_name("meshd")
        .with_attributes([
            KeyValue::new("mesh.dc", dc.to_owned()),
            KeyValue::new("mesh.region", region.to_owned()),
        ])
        .build()
}

/// HDR histograms of replication lag in µs by origin; they outlive restarts of the DC actor.
#[derive(Debug, Clone, Default)]
pub struct LagHistograms(Arc<Mutex<BTreeMap<String, hdrhistogram::Histogram<u64>>>>);

impl LagHistograms {
    /// Records `count` ops from `origin` that lagged `lag_us`.
    pub fn record(&self, origin: &str, lag_us: u64, count: u64) {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let h = all.entry(origin.to_owned()).or_insert_with(|| {
            hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
        });
        h.saturating_record_n(lag_us.max(1), count);
    }

    /// A copy of `origin`'s histogram.
    pub fn of(&self, origin: &str) -> Option<hdrhistogram::Histogram<u64>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).get(origin).cloned()
    }
}

/// Counters of one peer's links, for `/v1/status`; they outlive restarts of the DC actor.
#[derive(Debug, Default)]
pub struct LinkCounter {
    /// Frame bytes sent, before compression.
    pub raw_bytes: AtomicU64,
    /// Frame bytes sent, as on the wire.
    pub wire_bytes: AtomicU64,
    /// Dials that failed.
    pub dials_failed: AtomicU64,
    /// Links that went down.
    pub links_lost: AtomicU64,
}

/// [`LinkCounter`]s by peer.
#[derive(Debug, Clone, Default)]
pub struct LinkCounters(Arc<Mutex<BTreeMap<String, Arc<LinkCounter>>>>);

impl LinkCounters {
    /// The counters of `peer`.
    pub fn peer(&self, peer: &str) -> Arc<LinkCounter> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).entry(peer.to_owned()).or_default().clone()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Instruments for DC `dc`, reporting into a fresh registry.
    pub fn new(dc: &str) -> Result<Self, String> {
        Self::with_otlp(dc, "", None)
    }

    /// Instruments for DC `dc` of `region`, reporting into a fresh registry and, with `otlp` =
    /// (endpoint URL, interval), pushed to an OTLP collector. The push runs on the SDK's own
    /// thread. The resource is `service.name = meshd`, `mesh.dc`, `mesh.region` (Prometheus:
    /// `target_info`).
    pub fn with_otlp(dc: &str, region: &str, otlp: Option<(&str, Duration)>) -> Result<Self, String> {
        let registry = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .build()
            .map_err(|e| e.to_string())?;
        let mut provider =
            SdkMeterProvider::builder().with_resource(resource(dc, region)).with_reader(exporter);
        if let Some((endpoint, interval)) = otlp {
            use opentelemetry_otlp::WithExportConfig;
            let push = opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(endpoint)
                .build()
                .map_err(|e| format!("node.otlp_endpoint {endpoint}: {e}"))?;
            let reader =
                opentelemetry_sdk::metrics::PeriodicReader::builder(push).with_interval(interval).build();
            provider = provider.with_reader(reader);
        }
        let provider = provider.build();
        let scope = opentelemetry::InstrumentationScope::builder("mesh")
            .with_attributes([KeyValue::new("dc", dc.to_owned())])
            .build();
        let meter = provider.meter_with_scope(scope);
        let observed: Arc<Mutex<Observed>> = Arc::default();
        let health: Arc<Mutex<Vec<PeerHealthObserved>>> = Arc::default();
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
            bytes_received: counter(
                "mesh_bytes_received",
                "Frame bytes received from peers (wire: as received; raw: decompressed)",
            ),
            transfer_bytes: counter(
                "mesh_state_transfer_bytes",
                "Snapshot chunk bytes of state transfers, as on the wire (direction: sent or received)",
            ),
            siblings: meter
                .u64_histogram("mesh_siblings")
                .with_description("Live versions kept when concurrent writes meet in a siblings keyspace")
                .with_boundaries(vec![1.0, 2.0, 3.0, 4.0, 8.0, 16.0, 32.0, 64.0])
                .build(),
            peer_regressions: counter(
                "mesh_peer_regressions",
                "Peers that came back holding less than they had acknowledged (a lost disk)",
            ),
            apply_failures: counter(
                "mesh_apply_failures",
                "Batches or snapshot chunks from a peer that could not be applied (its stream is stalled)",
            ),
            links: LinkCounters::default(),
            replication_lag: meter
                .f64_histogram("mesh_replication_lag")
                .with_unit("s")
                .with_description(
                    "Per op: its durable commit at its origin to its durable apply here, by origin",
                )
                .with_boundaries(vec![
                    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                    1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                ])
                .build(),
            lag_hdr: LagHistograms::default(),
            write_duration: meter
                .f64_histogram("mesh_write_duration")
                .with_unit("s")
                .with_description(
                    "Client writes, arrival at the DC to answer, by mode (async/sync) and outcome",
                )
                .with_boundaries(vec![
                    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
                .build(),
            writes_refused: counter(
                "mesh_writes_refused",
                "Client writes refused before being written, by reason",
            ),
            commit_duration: meter
                .f64_histogram("mesh_commit_duration")
                .with_unit("s")
                .with_description("Persists, submitted to the store to durable (fsync included)")
                .with_boundaries(vec![
                    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ])
                .build(),
            commit_ops: meter
                .u64_histogram("mesh_commit_ops")
                .with_description("Ops per persist (client writes and applied ops committed together)")
                .with_boundaries(vec![1.0, 2.0, 4.0, 8.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0])
                .build(),
            _observers: Arc::new(observers(&meter, &observed, &health)),
            observed,
            health,
            registry,
            _provider: Arc::new(provider),
        })
    }

    /// Replaces what the observable instruments report.
    pub fn observe(&self, observed: Observed) {
        *self.observed.lock().unwrap_or_else(|e| e.into_inner()) = observed;
    }

    /// Replaces what the health gauges report.
    pub fn observe_health(&self, peers: Vec<PeerHealthObserved>) {
        *self.health.lock().unwrap_or_else(|e| e.into_inner()) = peers;
    }

    /// Records `count` ops from `origin` that lagged `lag_us` in both histograms.
    pub fn record_lag(&self, origin: &str, lag_us: u64, count: u64) {
        self.lag_hdr.record(origin, lag_us, count);
        let attributes = [KeyValue::new("origin", origin.to_owned())];
        let seconds = lag_us as f64 / 1e6;
        for _ in 0..count {
            self.replication_lag.record(seconds, &attributes);
        }
    }

    /// The Prometheus text exposition of every instrument.
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut out = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// A gauge per peer: name, unit, description, and its value from what is observed of a peer.
type PeerGauge<P> = (&'static str, &'static str, &'static str, fn(&P) -> Option<f64>);

/// Builds `gauges`, each reporting one value per peer of `peers(source)` at collection time.
fn peer_gauges<S: Send + 'static, P: 'static, const N: usize>(
    meter: &opentelemetry::metrics::Meter,
    gauges: [PeerGauge<P>; N],
    source: &Arc<Mutex<S>>,
    peers: fn(&S) -> &[P],
    name: fn(&P) -> &String,
    out: &mut Vec<Box<dyn std::any::Any + Send + Sync>>,
) {
    for (metric, unit, description, value) in gauges {
        let source = source.clone();
        let gauge = meter
            .f64_observable_gauge(metric)
            .with_unit(unit)
            .with_description(description)
            .with_callback(move |o| {
                for p in peers(&source.lock().unwrap_or_else(|e| e.into_inner())) {
                    if let Some(v) = value(p) {
                        o.observe(v, &[KeyValue::new("peer", name(p).clone())]);
                    }
                }
            })
            .build();
        out.push(Box::new(gauge));
    }
}

/// The observable instruments: each reads [`Observed`] (or the health actor's
/// [`PeerHealthObserved`]) at collection time.
fn observers(
    meter: &opentelemetry::metrics::Meter,
    observed: &Arc<Mutex<Observed>>,
    health: &Arc<Mutex<Vec<PeerHealthObserved>>>,
) -> Vec<Box<dyn std::any::Any + Send + Sync>> {
    let link_gauges: [PeerGauge<PeerObserved>; 3] = [
        ("mesh_peer_link_up", "", "1 while a link to the peer is up", |p| {
            Some(f64::from(u8::from(p.link_up)))
        }),
        ("mesh_peer_queued_ops", "", "Ops this DC has to send the peer", |p| Some(p.queued_ops as f64)),
        ("mesh_peer_inflight_batches", "", "Batches sent to the peer and not acknowledged", |p| {
            Some(p.inflight_batches as f64)
        }),
    ];
    let health_gauges: [PeerGauge<PeerHealthObserved>; 5] = [
        ("mesh_peer_health", "", "The failure detector's verdict: 0 healthy, 1 suspect, 2 down", |p| {
            Some(p.health as f64)
        }),
        ("mesh_peer_phi", "", "The failure detector's phi", |p| p.phi),
        (
            "mesh_peer_lag_ops",
            "",
            "Ops this DC holds that the peer is not known to hold (0: caught up)",
            |p| Some(p.lag_ops as f64),
        ),
        ("mesh_peer_lag", "s", "How long the oldest op the peer lacks has waited (0: caught up)", |p| {
            Some(p.lag_seconds)
        }),
        ("mesh_peer_clock_offset", "s", "The peer's clock minus this DC's", |p| p.clock_offset_seconds),
    ];
    let mut out: Vec<Box<dyn std::any::Any + Send + Sync>> = Vec::new();
    peer_gauges(meter, link_gauges, observed, |o| &o.peers, |p| &p.peer, &mut out);
    peer_gauges(meter, health_gauges, health, |h| h.as_slice(), |p| &p.peer, &mut out);
    type PeerCount = fn(&PeerObserved) -> u64;
    let peer_counters: [(&'static str, &'static str, PeerCount); 3] = [
        ("mesh_peer_retransmits", "Windows sent to the peer again after a timeout", |p| p.retransmits),
        ("mesh_peer_dials_failed", "Dials of the peer that failed", |p| p.dials_failed),
        ("mesh_peer_links_lost", "Links to the peer that went down", |p| p.links_lost),
    ];
    for (name, description, value) in peer_counters {
        let observed = observed.clone();
        let counter = meter
            .u64_observable_counter(name)
            .with_description(description)
            .with_callback(move |o| {
                for p in &observed.lock().unwrap_or_else(|e| e.into_inner()).peers {
                    o.observe(value(p), &[KeyValue::new("peer", p.peer.clone())]);
                }
            })
            .build();
        out.push(Box::new(counter));
    }
    type DcCount = fn(&Observed) -> u64;
    let dc_counters: [(&'static str, &'static str, DcCount); 5] = [
        ("mesh_checkpoints", "Store checkpoints (overlay states written into the key table)", |o| {
            o.checkpoints.count
        }),
        (
            "mesh_hlc_remote_beyond_skew",
            "Remote ops whose HLC was ahead of this DC's clock by more than max_clock_skew_ms",
            |o| o.hlc_beyond_skew,
        ),
        ("mesh_state_transfers_sent", "State transfers taken up by a peer behind the retained log", |o| {
            o.transfers_sent
        }),
        ("mesh_state_transfers_received", "State transfers received and applied", |o| o.transfers_received),
        ("mesh_tombstones_collected", "Keys whose tombstones were collected (causally stable)", |o| {
            o.keys_collected
        }),
    ];
    for (name, description, value) in dc_counters {
        let observed = observed.clone();
        let counter = meter
            .u64_observable_counter(name)
            .with_description(description)
            .with_callback(move |o| {
                o.observe(value(&observed.lock().unwrap_or_else(|e| e.into_inner())), &[])
            })
            .build();
        out.push(Box::new(counter));
    }
    type LogValue = fn((u64, u64)) -> u64;
    let log_gauges: [(&'static str, &'static str, &'static str, LogValue); 2] = [
        (
            "mesh_log_ops",
            "",
            "Ops the op log holds (for peers that are behind; compacted when every peer holds them)",
            |l| l.0,
        ),
        ("mesh_log_size", "By", "Bytes the op log holds on disk", |l| l.1),
    ];
    for (name, unit, description, value) in log_gauges {
        let observed = observed.clone();
        let gauge = meter
            .u64_observable_gauge(name)
            .with_unit(unit)
            .with_description(description)
            .with_callback(move |o| {
                if let Some(log) = observed.lock().unwrap_or_else(|e| e.into_inner()).log {
                    o.observe(value(log), &[]);
                }
            })
            .build();
        out.push(Box::new(gauge));
    }
    let held = observed.clone();
    let tombstones = meter
        .u64_observable_gauge("mesh_tombstones_held")
        .with_description("Keys holding a tombstone not collected yet (counted every few seconds)")
        .with_callback(move |o| {
            if let Some(n) = held.lock().unwrap_or_else(|e| e.into_inner()).tombstones_held {
                o.observe(n, &[]);
            }
        })
        .build();
    out.push(Box::new(tombstones));
    let seconds = observed.clone();
    let checkpoint_time = meter
        .f64_observable_counter("mesh_checkpoint_duration")
        .with_unit("s")
        .with_description("Time spent in store checkpoints (with mesh_checkpoints_total: the mean)")
        .with_callback(move |o| {
            o.observe(seconds.lock().unwrap_or_else(|e| e.into_inner()).checkpoints.micros as f64 / 1e6, &[])
        })
        .build();
    out.push(Box::new(checkpoint_time));
    let seconds = observed.clone();
    let checkpoint_wait = meter
        .f64_observable_counter("mesh_checkpoint_wait_duration")
        .with_unit("s")
        .with_description(
            "Time group commits waited for the checkpoint in flight (twice checkpoint_keys written since it started)",
        )
        .with_callback(move |o| {
            let waited = seconds.lock().unwrap_or_else(|e| e.into_inner()).checkpoints.waited_micros;
            o.observe(waited as f64 / 1e6, &[])
        })
        .build();
    out.push(Box::new(checkpoint_wait));
    let sync = observed.clone();
    let gauge = meter
        .u64_observable_gauge("mesh_sync_waiting")
        .with_description("Sync writes (and WAITs) waiting for acknowledgements from other DCs")
        .with_callback(move |o| o.observe(sync.lock().unwrap_or_else(|e| e.into_inner()).sync_waiting, &[]))
        .build();
    out.push(Box::new(gauge));
    out
}
