//! The topology: the schema of mesh.toml and its validation.
//!
//! [`TopologyConfig`] is the file as written (serde, defaults filled in). [`Topology::new`]
//! validates it and fails on the first problem with a message that names the field, for example
//! `dcs[1].listen: "127.0.0.1:99999" is not a socket address`. Reading the file and applying
//! `MESH__…` environment overrides is the node's job; this module stays pure.

use crate::{DcId, Keyspace, KeyspaceRules, ResolverRegistry, Strategy, ValueKind};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

/// Smallest allowed `frame_bytes_max`: a frame must carry one op with a value of
/// [`crate::VALUE_BYTES_MAX`] bytes plus its metadata.
pub const FRAME_BYTES_MIN: u32 = 2 << 20;

/// How long a write waits before its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Reply after the local durable commit.
    Async,
    /// Reply after `acks` DCs durably applied the write.
    Sync,
    /// The keyspace default, overridable per request; critical keyspaces are always sync.
    Hybrid,
}

/// How many DCs must durably apply a sync write, the local one included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Acks {
    /// An exact number of DCs.
    Count(u32),
    /// `"quorum"` or `"all"`.
    Named(AcksName),
}

/// The named ack levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AcksName {
    /// A majority of the active DCs.
    Quorum,
    /// Every active DC.
    All,
}

impl Acks {
    /// The number of DCs this level needs out of `dcs` active DCs.
    pub fn required(self, dcs: usize) -> usize {
        match self {
            Acks::Count(n) => n as usize,
            Acks::Named(AcksName::Quorum) => dcs / 2 + 1,
            Acks::Named(AcksName::All) => dcs,
        }
    }
}

/// `[replication]`: knobs every DC shares. Defaults are in [`ReplicationConfig::default`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicationConfig {
    /// Whether DCs replicate at all (false: each DC serves alone).
    pub enabled: bool,
    /// The default write mode.
    pub default_mode: Mode,
    /// Longest a replicator waits to fill a batch, in ms.
    pub max_delay_ms: u64,
    /// Default ack level for sync writes.
    pub sync_acks: Acks,
    /// How long a sync write waits for its acks before the partial-result error, in ms.
    pub sync_timeout_ms: u64,
    /// Most ops in one batch.
    pub batch_size: u32,
    /// Whether batches are zstd-compressed when that shrinks them.
    pub compression_enabled: bool,
    /// zstd level, 1 to 22.
    pub compression_level: i32,
    /// Lag, in ms, above which a peer is flagged in status and alerts.
    pub max_replication_lag_ms: u64,
    /// Largest clock offset tolerated, in ms (see DESIGN.md, "Clock skew").
    pub max_clock_skew_ms: u64,
    /// Connection attempts to one endpoint before the next endpoint is tried.
    pub retry_attempts: u32,
    /// First reconnect delay, in ms; doubles per attempt with jitter.
    pub retry_delay_ms: u64,
    /// Longest reconnect delay, in ms.
    pub retry_delay_max_ms: u64,
    /// Heartbeat period, in ms.
    pub heartbeat_interval_ms: u64,
    /// Most siblings a key of a siblings keyspace may hold before a context-less write is refused.
    pub siblings_max: u32,
    /// Oldest log entry kept once acked by every DC, in seconds; older entries of a lagging peer
    /// are dropped too, and that peer catches up by state transfer.
    pub log_retention_age_s: u64,
    /// Most bytes of op log kept.
    pub log_retention_bytes: u64,
    /// Most ops waiting for the local commit before writers are pushed back.
    pub commit_queue_ops_max: u32,
    /// Most batches in flight (sent, not acked) per peer.
    pub inflight_batches_max: u32,
    /// Largest frame on the wire, in bytes (compressed and decompressed).
    pub frame_bytes_max: u32,
    /// Window, in seconds, within which an idempotency key deduplicates a retried request.
    pub idempotency_window_s: u64,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            default_mode: Mode::Async,
            max_delay_ms: 5,
            sync_acks: Acks::Named(AcksName::Quorum),
            sync_timeout_ms: 2_000,
            batch_size: 1_000,
            compression_enabled: true,
            compression_level: 3,
            max_replication_lag_ms: 1_000,
            max_clock_skew_ms: 500,
            retry_attempts: 5,
            retry_delay_ms: 100,
            retry_delay_max_ms: 5_000,
            heartbeat_interval_ms: 250,
            siblings_max: 16,
            log_retention_age_s: 7 * 24 * 3600,
            log_retention_bytes: 8 << 30,
            commit_queue_ops_max: 100_000,
            inflight_batches_max: 8,
            frame_bytes_max: 16 << 20,
            idempotency_window_s: 600,
        }
    }
}

/// One address a DC can be reached at, with its preference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// `host:port` peers dial.
    pub address: String,
    /// Lower is tried first.
    #[serde(default)]
    pub priority: u32,
}

/// `[[dcs]]`: one datacenter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DcConfig {
    /// The DC id (see [`DcId`]).
    pub id: String,
    /// Free-form region label, shown in status.
    #[serde(default)]
    pub region: String,
    /// Priority for `priority` keyspaces: higher wins.
    #[serde(default)]
    pub priority: u32,
    /// An inactive DC is neither dialled nor counted for quorum.
    #[serde(default = "yes")]
    pub active: bool,
    /// Socket address the replication (QUIC) endpoint binds.
    pub listen: String,
    /// Socket address the HTTP API binds.
    pub api: String,
    /// Socket address the Redis protocol (RESP) front end binds; none: no RESP listener.
    #[serde(default)]
    pub resp: Option<String>,
    /// Addresses peers dial, tried by priority. Empty: `listen`. They differ from `listen` behind
    /// NAT, a load balancer or a proxy.
    #[serde(default)]
    pub endpoints: Vec<EndpointConfig>,
}

fn yes() -> bool {
    true
}

/// `[keyspaces.NAME]`: one keyspace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyspaceConfig {
    /// `lww`, `priority`, `siblings`, `counter`, `set` or `custom:NAME`.
    pub strategy: String,
    /// Write mode for this keyspace; default: `replication.default_mode`.
    #[serde(default)]
    pub mode: Option<Mode>,
    /// Ack level for sync writes; default: `replication.sync_acks`.
    #[serde(default)]
    pub sync_acks: Option<Acks>,
    /// Critical keyspaces are always written in sync mode.
    #[serde(default)]
    pub critical: bool,
    /// Overrides `replication.siblings_max` (siblings keyspaces only).
    #[serde(default)]
    pub siblings_max: Option<u32>,
    /// A put to a key that already has a value is refused at the serving DC (delete it first);
    /// concurrent first puts at different DCs are resolved by the strategy. Register keyspaces
    /// only.
    #[serde(default)]
    pub write_once: bool,
}

/// mesh.toml as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyConfig {
    /// Shared replication knobs.
    #[serde(default)]
    pub replication: ReplicationConfig,
    /// The datacenters.
    pub dcs: Vec<DcConfig>,
    /// The keyspaces by name.
    pub keyspaces: BTreeMap<String, KeyspaceConfig>,
    /// Settings of each node process (paths, secrets); not part of the fingerprint.
    #[serde(default)]
    pub node: NodeSettings,
    /// The Redis protocol front end; not part of the fingerprint.
    #[serde(default)]
    pub resp: RespSettings,
}

/// `[resp]`: the Redis protocol (RESP2/RESP3) front end each DC with a `resp` address serves
/// (docs/resp.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RespSettings {
    /// Keyspace of a key whose part before the first `:` names no keyspace (the whole key is
    /// then the key); none: such a key is refused with `-ERR unknown keyspace`.
    pub default_keyspace: Option<String>,
    /// Most client connections a DC holds at once; one more is told
    /// `-ERR max number of clients reached` and closed.
    pub max_connections: usize,
    /// Most commands of one connection handled as one group (one commit for its writes); a
    /// deeper pipeline is handled in several groups, in order.
    pub max_pipeline: usize,
    /// Most bytes of one command as sent; a longer one is answered `-ERR Protocol error` and the
    /// connection closed (so a client's buffer here never grows beyond it).
    pub max_request_bytes: usize,
}

impl Default for RespSettings {
    fn default() -> Self {
        Self {
            default_keyspace: None,
            max_connections: 1_024,
            max_pipeline: 1_024,
            max_request_bytes: 8 << 20,
        }
    }
}

/// `[node]`: where each `meshd` keeps its data and finds its secrets. Paths may contain `{dc}`,
/// replaced by the DC id, so one file serves every DC; relative paths are relative to the
/// directory of mesh.toml.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSettings {
    /// The DC's data directory (its store).
    pub data_dir: String,
    /// Bearer token the HTTP API requires (`Authorization: Bearer TOKEN`). Override it per
    /// deployment with `MESH__NODE__API_TOKEN`.
    pub api_token: String,
    /// Mutual TLS between DCs.
    pub tls: TlsSettings,
    /// Where to push metrics over OTLP (HTTP with protobuf), e.g.
    /// `http://127.0.0.1:4318/v1/metrics`; empty: no push (`/metrics` serves them either way).
    pub otlp_endpoint: String,
    /// How often metrics are pushed to `otlp_endpoint`, in ms.
    pub otlp_interval_ms: u64,
    /// Where to export trace spans over OTLP (HTTP with protobuf), e.g.
    /// `http://127.0.0.1:4318/v1/traces`; empty: no tracing.
    pub otlp_traces_endpoint: String,
    /// Share of writes without a sampled `traceparent` that start a trace, 0 to 1 (a write
    /// whose `traceparent` says sampled is always traced).
    pub trace_sampling: f64,
    /// The store's checkpoint size: key states are kept in memory (and in write-ahead records)
    /// until this many distinct keys were written, then written into the key-state B-tree in one
    /// transaction. Larger checkpoints copy fewer B-tree pages per key (less CPU and disk per
    /// write) and hold more states in memory: each key costs its state plus ~100 bytes. At least
    /// 1,024.
    pub checkpoint_keys: u64,
    /// The store's page cache (both of its redb databases), in MiB. With `checkpoint_keys`
    /// (two layers of states at most) and the log's tail in memory (16 MiB per origin), it bounds
    /// a DC's memory. At least 16.
    pub cache_mib: u64,
}

impl Default for NodeSettings {
    fn default() -> Self {
        Self {
            data_dir: "data/{dc}".into(),
            api_token: "dev-token".into(),
            tls: TlsSettings::default(),
            otlp_endpoint: String::new(),
            otlp_interval_ms: 10_000,
            otlp_traces_endpoint: String::new(),
            trace_sampling: 0.01,
            checkpoint_keys: 262_144,
            cache_mib: 256,
        }
    }
}

/// `[node.tls]`: the mesh CA and each DC's certificate (its DC id is the certificate's DNS name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// The mesh CA certificate (PEM) every DC's certificate must chain to.
    pub ca_cert: String,
    /// The CA's private key (PEM); only `meshd up` and `meshctl certs` use it, to issue
    /// development certificates.
    pub ca_key: String,
    /// This DC's certificate (PEM).
    pub cert: String,
    /// This DC's private key (PEM).
    pub key: String,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            ca_cert: "certs/ca.crt".into(),
            ca_key: "certs/ca.key".into(),
            cert: "certs/{dc}.crt".into(),
            key: "certs/{dc}.key".into(),
        }
    }
}

/// A problem in the topology, naming the field. Nothing is built when one is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct TopologyError {
    /// The field, as a path: `dcs[1].listen`, `keyspaces.users.strategy`.
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

fn bad(field: impl Into<String>, problem: impl Into<String>) -> TopologyError {
    TopologyError { field: field.into(), problem: problem.into() }
}

/// A validated datacenter.
#[derive(Debug, Clone, PartialEq)]
pub struct Dc {
    /// Its id.
    pub id: DcId,
    /// Its region label.
    pub region: String,
    /// Its priority for `priority` keyspaces.
    pub priority: u32,
    /// Whether it takes part.
    pub active: bool,
    /// Replication listen address.
    pub listen: SocketAddr,
    /// HTTP API address.
    pub api: SocketAddr,
    /// Redis protocol (RESP) address, if it serves one.
    pub resp: Option<SocketAddr>,
    /// Addresses peers dial, sorted by priority (first = preferred).
    pub endpoints: Vec<EndpointConfig>,
}

/// A validated keyspace.
#[derive(Debug, Clone)]
pub struct KeyspaceSpec {
    /// Its name.
    pub name: Keyspace,
    /// How reads resolve concurrent versions.
    pub rules: KeyspaceRules,
    /// The value type it holds.
    pub kind: ValueKind,
    /// Its write mode.
    pub mode: Mode,
    /// Its sync ack level.
    pub sync_acks: Acks,
    /// Always sync.
    pub critical: bool,
    /// Sibling cap.
    pub siblings_max: usize,
    /// A put to a key with a value is refused at the serving DC.
    pub write_once: bool,
}

/// A validated topology: every DC and keyspace checked, resolvers found.
#[derive(Debug, Clone)]
pub struct Topology {
    /// The configuration it was built from.
    pub config: TopologyConfig,
    /// The DCs, in file order.
    pub dcs: Vec<Dc>,
    /// The keyspaces.
    pub keyspaces: BTreeMap<Keyspace, KeyspaceSpec>,
    fingerprint: u64,
}

impl Topology {
    /// Validates `config`; custom strategies must name a resolver in `resolvers`.
    pub fn new(config: TopologyConfig, resolvers: &ResolverRegistry) -> Result<Self, TopologyError> {
        let r = &config.replication;
        let positive = [
            ("max_delay_ms", r.max_delay_ms),
            ("sync_timeout_ms", r.sync_timeout_ms),
            ("batch_size", u64::from(r.batch_size)),
            ("max_replication_lag_ms", r.max_replication_lag_ms),
            ("retry_delay_ms", r.retry_delay_ms),
            ("heartbeat_interval_ms", r.heartbeat_interval_ms),
            ("siblings_max", u64::from(r.siblings_max)),
            ("commit_queue_ops_max", u64::from(r.commit_queue_ops_max)),
            ("inflight_batches_max", u64::from(r.inflight_batches_max)),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(bad(format!("replication.{name}"), "must be greater than 0"));
            }
        }
        if r.batch_size > 100_000 {
            return Err(bad(
                "replication.batch_size",
                format!("{} is above the limit of 100000", r.batch_size),
            ));
        }
        if !(1..=22).contains(&r.compression_level) {
            return Err(bad(
                "replication.compression_level",
                format!("{} is outside 1..=22", r.compression_level),
            ));
        }
        if r.retry_delay_max_ms < r.retry_delay_ms {
            return Err(bad("replication.retry_delay_max_ms", "must be at least retry_delay_ms"));
        }
        if r.frame_bytes_max < FRAME_BYTES_MIN {
            let problem = format!("must be at least {FRAME_BYTES_MIN}, so one op with a maximal value fits");
            return Err(bad("replication.frame_bytes_max", problem));
        }

        if config.node.api_token.trim().is_empty() {
            return Err(bad("node.api_token", "must not be empty (the HTTP API requires a bearer token)"));
        }
        let otlp = config.node.otlp_endpoint.trim();
        if !otlp.is_empty() && !otlp.starts_with("http://") {
            let problem = format!(
                "{otlp:?} is not an http:// URL (OTLP over HTTP with protobuf; for TLS, send to a local collector)"
            );
            return Err(bad("node.otlp_endpoint", &problem));
        }
        if !(0.0..=1.0).contains(&config.node.trace_sampling) {
            return Err(bad("node.trace_sampling", "must be between 0 and 1"));
        }
        if config.node.otlp_interval_ms < 100 {
            return Err(bad("node.otlp_interval_ms", "must be at least 100"));
        }
        if config.node.checkpoint_keys < 1_024 {
            return Err(bad("node.checkpoint_keys", "must be at least 1024"));
        }
        if !(16..=1 << 20).contains(&config.node.cache_mib) {
            return Err(bad("node.cache_mib", "must be between 16 and 1048576"));
        }
        if config.dcs.is_empty() {
            return Err(bad("dcs", "at least one datacenter is required"));
        }
        let mut dcs = Vec::new();
        let mut ids = BTreeSet::new();
        let mut addresses = BTreeMap::new();
        for (i, dc) in config.dcs.iter().enumerate() {
            let field = |f: &str| format!("dcs[{i}].{f}");
            let id = DcId::new(dc.id.clone()).map_err(|e| bad(field("id"), e.to_string()))?;
            if !ids.insert(id.clone()) {
                return Err(bad(field("id"), format!("duplicate datacenter id {:?}", dc.id)));
            }
            let mut addr = |name: &str, value: &str| -> Result<SocketAddr, TopologyError> {
                let a: SocketAddr = value
                    .parse()
                    .map_err(|_| bad(field(name), format!("{value:?} is not a socket address")))?;
                if let Some(other) = addresses.insert(a, field(name)) {
                    return Err(bad(field(name), format!("{a} is already used by {other}")));
                }
                Ok(a)
            };
            let listen = addr("listen", &dc.listen)?;
            let api = addr("api", &dc.api)?;
            let resp = dc.resp.as_deref().map(|r| addr("resp", r)).transpose()?;
            let mut endpoints = dc.endpoints.clone();
            if endpoints.is_empty() {
                endpoints.push(EndpointConfig { address: dc.listen.clone(), priority: 0 });
            }
            for (j, e) in endpoints.iter().enumerate() {
                if e.address
                    .rsplit_once(':')
                    .and_then(|(h, p)| p.parse::<u16>().ok().filter(|_| !h.is_empty()))
                    .is_none()
                {
                    return Err(bad(
                        field(&format!("endpoints[{j}].address")),
                        format!("{:?} is not host:port", e.address),
                    ));
                }
            }
            endpoints.sort_by_key(|e| e.priority);
            dcs.push(Dc {
                id,
                region: dc.region.clone(),
                priority: dc.priority,
                active: dc.active,
                listen,
                api,
                resp,
                endpoints,
            });
        }
        let active = dcs.iter().filter(|d| d.active).count();
        if active == 0 {
            return Err(bad("dcs", "at least one datacenter must be active"));
        }
        let check_acks = |field: String, acks: Acks| -> Result<(), TopologyError> {
            match acks {
                Acks::Count(0) => Err(bad(field, "must be at least 1")),
                Acks::Count(n) if n as usize > active => {
                    Err(bad(field, format!("{n} is more than the {active} active datacenters")))
                }
                _ => Ok(()),
            }
        };
        check_acks("replication.sync_acks".into(), r.sync_acks)?;

        let priorities: Arc<BTreeMap<DcId, u32>> =
            Arc::new(dcs.iter().map(|d| (d.id.clone(), d.priority)).collect());
        if config.keyspaces.is_empty() {
            return Err(bad("keyspaces", "at least one keyspace is required"));
        }
        let mut keyspaces = BTreeMap::new();
        for (name, ks) in &config.keyspaces {
            let field = |f: &str| format!("keyspaces.{name}.{f}");
            let ks_name =
                Keyspace::new(name.clone()).map_err(|e| bad(format!("keyspaces.{name}"), e.to_string()))?;
            let strategy =
                Strategy::parse(&ks.strategy).map_err(|e| bad(field("strategy"), e.to_string()))?;
            let rules = KeyspaceRules::new(strategy.clone(), priorities.clone(), resolvers)
                .map_err(|e| bad(field("strategy"), e.to_string()))?;
            let sync_acks = ks.sync_acks.unwrap_or(r.sync_acks);
            check_acks(field("sync_acks"), sync_acks)?;
            if ks.siblings_max.is_some() && strategy != Strategy::Siblings {
                return Err(bad(field("siblings_max"), "only applies to siblings keyspaces"));
            }
            if ks.write_once && strategy.value_kind() != ValueKind::Register {
                return Err(bad(
                    field("write_once"),
                    "only applies to register keyspaces (not counters or sets)",
                ));
            }
            let siblings_max = ks.siblings_max.unwrap_or(r.siblings_max);
            if siblings_max == 0 {
                return Err(bad(field("siblings_max"), "must be greater than 0"));
            }
            keyspaces.insert(
                ks_name.clone(),
                KeyspaceSpec {
                    name: ks_name,
                    kind: strategy.value_kind(),
                    rules,
                    mode: ks.mode.unwrap_or(r.default_mode),
                    sync_acks,
                    critical: ks.critical,
                    siblings_max: siblings_max as usize,
                    write_once: ks.write_once,
                },
            );
        }
        let resp = &config.resp;
        if let Some(name) = &resp.default_keyspace {
            let known = Keyspace::new(name.clone()).ok().filter(|ks| keyspaces.contains_key(ks));
            if known.is_none() {
                return Err(bad("resp.default_keyspace", format!("{name:?} is not a keyspace of this file")));
            }
        }
        for (name, value) in [
            ("max_connections", resp.max_connections),
            ("max_pipeline", resp.max_pipeline),
            ("max_request_bytes", resp.max_request_bytes),
        ] {
            if value == 0 {
                return Err(bad(format!("resp.{name}"), "must be greater than 0"));
            }
        }
        let request_min = crate::VALUE_BYTES_MAX + crate::KEY_BYTES_MAX + 1024;
        if resp.max_request_bytes < request_min {
            return Err(bad(
                "resp.max_request_bytes",
                format!("must hold a command with the largest value: at least {request_min}"),
            ));
        }
        let fingerprint = fingerprint(&dcs, &keyspaces);
        Ok(Self { config, dcs, keyspaces, fingerprint })
    }

    /// A hash of what every DC must agree on to resolve identically: each keyspace's name,
    /// strategy and value type, and each DC's id and priority. Peers compare it in Hello.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The DC named `id`.
    pub fn dc(&self, id: &DcId) -> Option<&Dc> {
        self.dcs.iter().find(|d| &d.id == id)
    }

    /// The keyspace named `name`.
    pub fn keyspace(&self, name: &Keyspace) -> Option<&KeyspaceSpec> {
        self.keyspaces.get(name)
    }

    /// Number of active DCs (the base for quorum and all).
    pub fn active_dcs(&self) -> usize {
        self.dcs.iter().filter(|d| d.active).count()
    }
}

fn fingerprint(dcs: &[Dc], keyspaces: &BTreeMap<Keyspace, KeyspaceSpec>) -> u64 {
    use std::fmt::Write;
    let mut canonical = String::from("mesh-topology-v1\n");
    let mut sorted: Vec<&Dc> = dcs.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    for dc in sorted {
        writeln!(canonical, "dc {} {}", dc.id, dc.priority).expect("writing to a String");
    }
    for ks in keyspaces.values() {
        writeln!(canonical, "keyspace {} {} {:?}", ks.name, ks.rules.strategy(), ks.kind)
            .expect("writing to a String");
    }
    xxhash_rust::xxh3::xxh3_64(canonical.as_bytes())
}
