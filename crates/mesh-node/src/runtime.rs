//! The actors that run one DC: a supervisor, the resolver actor ([`DcActor`]), the
//! health-monitor actor ([`crate::health::HealthActor`]) and the connection pool
//! ([`crate::pool::PoolActor`], with a replicator actor per link, [`crate::link::LinkActor`]);
//! docs/architecture.md draws them and their messages.
//!
//! The resolver owns the engine's [`Node`] and carries out its effects: sends through each
//! link's replicator actor, commits through the durable store's group commit (whose completion
//! comes back as a message, so nothing that depends on a commit leaves before it), dials and
//! closes through the pool, compactions and client replies. It holds no replication logic of
//! its own (shared/STYLE.md rule 11). The supervisor restarts whichever child fails (the
//! resolver from the store: a panic, or a commit of unknown outcome, for which the store is
//! reopened); the live resolver and pool are published through watch channels so the HTTP API,
//! the RESP front end and the accept loop always reach the live ones. The resolver hands the
//! node's health inputs to the health actor and takes its verdicts back.

use crate::health::HealthMsg;
use crate::link::LinkMsg;
use crate::metrics::Metrics;
use crate::pool::{LinkRef, PoolMsg};
use crate::transport;
use mesh_core::{DcId, Dot, Key, Keyspace, ReadResult, Topology};
use mesh_engine::health::{HealthInput, HealthVerdict, PeerStatus};
use mesh_engine::node::{Effect, Node, NodeConfig, NodeStats, NodeWriteError, Startup, WriteOptions};
use mesh_engine::replicator::ReplicatorStats;
use mesh_engine::resolver::{PersistId, WriteRequest, WriteSummary};
use mesh_engine::sync::{RequestId, SyncOutcome};
use mesh_engine::{MonoMs, WallMs};
use mesh_store::{CommitBatch, DurableStore, LogRead, Store, StoreError};
use mesh_wire::{CodecConfig, Message};
use opentelemetry::KeyValue;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// A client write's answer: its dot, how it finished and what it changed, or why it was refused.
pub type WriteResult = Result<WriteDone, NodeWriteError>;

/// A write this DC took.
#[derive(Debug, Clone)]
pub struct WriteDone {
    /// Its dot.
    pub dot: Dot,
    /// Done, or timed out waiting for other DCs (committed here either way).
    pub outcome: SyncOutcome,
    /// What it changed here (`None`: an idempotent retry).
    pub summary: Option<WriteSummary>,
}

/// Per origin, the last seq of a batch's ops.
type VersionVectorMax = Vec<(DcId, u64)>;

/// Length of a W3C `traceparent` (version 00); a longer one from a peer is not recorded.
const TRACEPARENT_BYTES: usize = 55;

/// How often the tombstones held are counted for metrics.
const TOMBSTONES_COUNT_EVERY: Duration = Duration::from_secs(5);

/// Traced writes and batches kept at most (the oldest are dropped).
const TRACED_MAX: usize = 10_000;

/// What a DC still has to get to one peer (`GET /v1/peers/{dc}/backlog`).
#[derive(Debug, Clone, Default)]
pub struct Backlog {
    /// Per origin: the last seq the peer is known to hold, the last to send it.
    pub origins: Vec<(DcId, u64, u64)>,
    /// Ops read from the log (the oldest first, per origin) to break the backlog down.
    pub scanned_ops: u64,
    /// Of those, per keyspace: ops and payload bytes.
    pub keyspaces: BTreeMap<Keyspace, (u64, u64)>,
    /// The first distinct keys among them, in log order, with their keyspace.
    pub first_keys: Vec<(Keyspace, Key)>,
    /// Origins whose ops could not be read, and why (the log no longer holds them: the peer
    /// needs a state transfer).
    pub unreadable: Vec<(DcId, String)>,
}

/// Conflict records a DC keeps for `GET /v1/conflicts` (a ring: the oldest go first).
pub const CONFLICTS_KEPT: usize = 1_000;

/// Most value bytes the conflict records hold together (the oldest go first).
pub const CONFLICTS_BYTES_MAX: usize = 16 << 20;

/// The value bytes a conflict record holds.
fn conflict_bytes(c: &mesh_core::Conflict) -> usize {
    c.versions.iter().map(|v| v.value.as_ref().map_or(0, |b| b.len()) + 64).sum()
}

/// Most value bytes one [`DcMsg::Read`] returns in full.
pub const READ_BYTES_MAX: usize = 64 << 20;

/// A read's answer: `Ok(None)` for an unknown keyspace, `Err` with the store's message.
pub type ReadAnswer = Result<Option<ReadResult>, String>;

/// What one DC reports in `/v1/status`.
#[derive(Debug, Clone)]
pub struct DcStatus {
    /// The DC.
    pub dc: DcId,
    /// Whether it accepts writes.
    pub ready: bool,
    /// Its durable `seen` vector.
    pub seen: mesh_core::VersionVector,
    /// Per peer.
    pub peers: Vec<PeerReport>,
    /// The lag above which a peer is flagged (`max_replication_lag_ms`).
    pub lag_alert_ms: u64,
    /// Node counters.
    pub stats: NodeStats,
    /// Conflict records emitted, per strategy.
    pub conflicts: BTreeMap<String, u64>,
}

/// One peer in `/v1/status`.
#[derive(Debug, Clone)]
pub struct PeerReport {
    /// The peer.
    pub dc: DcId,
    /// Whether a link is up.
    pub connected: bool,
    /// Health, phi, lag, clock offset (`None` before its first heartbeat).
    pub status: Option<PeerStatus>,
    /// The replicator's counters.
    pub link: ReplicatorStats,
    /// Ops this DC still has to get to the peer ([`Node::queued_ops`]).
    pub queued_ops: u64,
    /// It came back with less than it had acknowledged ([`Node::peer_regressed`]).
    pub regressed: bool,
    /// What it sent that could not be applied: count and last reason
    /// ([`Node::apply_failures`]).
    pub apply_failures: Option<(u64, String)>,
    /// Frame bytes sent, before compression.
    pub raw_bytes: u64,
    /// Frame bytes sent, as on the wire.
    pub wire_bytes: u64,
    /// Dials of the peer that failed.
    pub dials_failed: u64,
    /// Links to the peer that went down.
    pub links_lost: u64,
    /// How long ago the last batch was sent, in ms.
    pub last_sent_ms_ago: Option<u64>,
    /// The wall clock (Unix ms) of the last batch sent.
    pub last_sent_unix_ms: Option<u64>,
    /// Lag of the peer's own ops from their commit there to their commit here, in µs, since
    /// this process started ([`crate::lag`]).
    pub lag_histogram: Option<hdrhistogram::Histogram<u64>>,
}

/// Why a front end's call to the DC actor got no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// No DC actor is live yet: the store is opening (a start or a restart).
    #[error(
        "the DC is opening its store (after a start or a restart) and serves nothing yet; retry shortly"
    )]
    Starting,
    /// The actor stopped or did not answer in time.
    #[error("the DC did not answer: {0}")]
    Unavailable(String),
}

/// Asks the live DC actor (as published by the supervisor) and waits up to `timeout` for its
/// answer: how the HTTP API and the RESP front end reach the DC.
pub async fn call<T: Send + 'static>(
    dc: &watch::Receiver<Option<ActorRef<DcMsg>>>,
    build: impl FnOnce(RpcReplyPort<T>) -> DcMsg,
    timeout: Duration,
) -> Result<T, CallError> {
    let actor = dc.borrow().clone().ok_or(CallError::Starting)?;
    match actor.call(build, Some(timeout)).await {
        Ok(ractor::rpc::CallResult::Success(t)) => Ok(t),
        Ok(ractor::rpc::CallResult::Timeout) => {
            Err(CallError::Unavailable(format!("no answer in {timeout:?}")))
        }
        Ok(ractor::rpc::CallResult::SenderError) => Err(CallError::Unavailable("it stopped".into())),
        Err(e) => Err(CallError::Unavailable(e.to_string())),
    }
}

/// Messages of the DC actor.
pub enum DcMsg {
    /// A client write; answered once done (or refused at once).
    Write {
        /// What to write (the request id is assigned by the actor).
        write: WriteRequest,
        /// Mode overrides.
        options: WriteOptions,
        /// The client's W3C `traceparent`, if it sent one.
        traceparent: Option<String>,
        /// Where the answer goes.
        reply: RpcReplyPort<WriteResult>,
    },
    /// Many client writes, applied in order; answered once every one is done (or refused).
    WriteBatch {
        /// The writes (request ids are assigned by the actor) and their mode overrides.
        writes: Vec<(WriteRequest, WriteOptions)>,
        /// Where the answers go, in the writes' order.
        reply: RpcReplyPort<Vec<WriteResult>>,
    },
    /// Reads of durable state, answered in the keys' order. Once the values read pass
    /// [`READ_BYTES_MAX`], the keys left are answered with an error (memory stays bounded
    /// whatever a client asks for).
    Read {
        /// The keys.
        keys: Vec<(Keyspace, Key)>,
        /// Where the answers go.
        reply: RpcReplyPort<Vec<ReadAnswer>>,
    },
    /// Redis' `WAIT`: answered once `replicas` other DCs durably hold this DC's ops up to `seq`,
    /// or after `timeout_ms` ([`Node::handle_wait`]).
    Wait {
        /// The last own seq the waiting connection wrote.
        seq: u64,
        /// Other DCs to wait for.
        replicas: usize,
        /// How long at most, in ms.
        timeout_ms: u64,
        /// Where the outcome goes (its `confirmed` includes this DC).
        reply: RpcReplyPort<Result<SyncOutcome, NodeWriteError>>,
    },
    /// The number of keys in the store ([`Store::key_count`]).
    KeyCount(RpcReplyPort<Result<u64, String>>),
    /// What this DC still has to get to `peer` ([`Backlog`]), its first `scan_ops` ops read
    /// from the log. `None`: not a peer.
    Backlog {
        /// The peer.
        peer: DcId,
        /// Most ops read from the log to break the backlog down.
        scan_ops: usize,
        /// Where it goes.
        reply: RpcReplyPort<Option<Result<Backlog, String>>>,
    },
    /// The newest conflict records, newest first: at most `limit`, of `keyspace` if given,
    /// each with the wall clock (Unix ms) it was resolved at.
    Conflicts {
        /// Only this keyspace's.
        keyspace: Option<Keyspace>,
        /// At most this many.
        limit: usize,
        /// Where they go.
        reply: RpcReplyPort<Vec<(u64, mesh_core::Conflict)>>,
    },
    /// The status.
    Status(RpcReplyPort<DcStatus>),
    /// A link to a peer is up (from the connection pool).
    Connected {
        /// The peer.
        peer: DcId,
        /// The link.
        link: LinkRef,
    },
    /// A dial connected, but the link already up was kept (from the connection pool).
    DialSuperseded(DcId),
    /// The connection pool restarted: every link it held ended and every dial failed.
    PoolRestarted(ActorRef<PoolMsg>),
    /// A link went down.
    LinkDown {
        /// The peer.
        peer: DcId,
        /// Which link.
        link: u64,
    },
    /// A message from a peer.
    Peer {
        /// The peer.
        peer: DcId,
        /// On which link.
        link: u64,
        /// The message.
        message: Message,
        /// The link's credit for this message, returned when it is handled (the link reads
        /// the next frame only with a credit: a resolver that falls behind pushes back).
        credit: Option<tokio::sync::OwnedSemaphorePermit>,
    },
    /// A dial failed.
    DialFailed(DcId),
    /// The health monitor's verdict (`mesh_engine::node::Node::handle_health`).
    Health(HealthVerdict),
    /// The health actor restarted: it is told the node's state again.
    HealthRestarted(ActorRef<HealthMsg>),
    /// An [`Effect::Compact`] failed ([`Node::handle_compact_failed`]).
    CompactFailed(String),
    /// A persist finished.
    Committed {
        /// Its id.
        id: PersistId,
        /// Its outcome.
        result: Result<(), StoreError>,
        /// The wall clock when the store reported it, in µs since the Unix epoch.
        unix_us: u64,
    },
    /// Timers may be due: the wake-up armed with this number (older ones are stale and ignored,
    /// so re-arming never multiplies wake-ups).
    Tick(u64),
    /// Makes the actor fail with this reason (an operator-forced restart; the supervisor starts
    /// a new one from the store, as after any failure).
    Fail(String),
}

/// What a DC actor needs; shared by every incarnation the supervisor starts.
#[derive(Clone)]
pub struct DcArgs {
    /// This DC.
    pub local: DcId,
    /// The topology.
    pub topology: Arc<Topology>,
    /// The store's file.
    pub store_path: PathBuf,
    /// The QUIC endpoint.
    pub endpoint: quinn::Endpoint,
    /// Frame limits.
    pub codec: CodecConfig,
    /// The runtime clock's origin.
    pub started: Instant,
    /// The node's instruments.
    pub metrics: Metrics,
    /// Record this topology in a store written under another (`meshd run --adopt-topology`)
    /// instead of refusing to start.
    pub adopt_topology: bool,
    /// The tracer, when `[node] otlp_traces_endpoint` is set.
    pub traces: Option<Arc<crate::traces::Traces>>,
}

/// Checks that `store` was written under `topology` and records it in a new store; returns
/// whether the store is settled ([`mesh_engine::StoreIdentity`]). A store written under
/// another topology (a keyspace's strategy or value type, the DCs or their priorities changed)
/// is refused, since its ops may not apply under the new rules and the DC would resolve
/// differently from its peers, unless `adopt` records the new one (an operator's deliberate
/// change, made at every DC). Nothing is written when it refuses.
pub fn check_store_identity(store: &DurableStore, topology: &Topology, adopt: bool) -> Result<bool, String> {
    let fingerprint = topology.fingerprint();
    let identity = store.identity().map_err(|e| e.to_string())?;
    // A store written before identities were recorded that holds data has run before: it keeps
    // the bounded start it had (an upgrade must not make a DC wait for a peer that is away).
    let ran_before = !store.seen().map_err(|e| e.to_string())?.is_empty();
    let settled = identity.map_or(ran_before, |i| i.settled);
    match identity {
        Some(i) if i.topology_fingerprint == fingerprint => return Ok(settled),
        Some(i) if !adopt => {
            return Err(format!(
                "the data directory was written under another topology (fingerprint {:016x}; mesh.toml now \
                 gives {fingerprint:016x}): a keyspace's strategy or type, the DCs or their priorities \
                 changed. Start with the mesh.toml the data was written under; or, for a deliberate change \
                 that every DC makes, pass --adopt-topology (ops written under the old rules that the new \
                 ones cannot apply stop replication with an alarm); or move the data directory aside and \
                 the DC recovers its data from its peers (docs/operations.md)",
                i.topology_fingerprint
            ))
        }
        _ => {}
    }
    let identity = mesh_engine::StoreIdentity { topology_fingerprint: fingerprint, settled };
    store
        .commit(CommitBatch { identity: Some(identity), ..Default::default() })
        .map_err(|e| e.to_string())?;
    Ok(settled)
}

/// A batch being answered: its results so far, how many are missing, and the port.
type PendingBatch = (Vec<Option<WriteResult>>, usize, RpcReplyPort<Vec<WriteResult>>);

/// Who waits for a write's answer.
enum Waiter {
    /// A single write.
    One(RpcReplyPort<WriteResult>),
    /// The `index`-th write of batch `batch`.
    Batch { batch: u64, index: usize },
    /// A `WAIT`.
    Wait(RpcReplyPort<Result<SyncOutcome, NodeWriteError>>),
}

/// The DC actor's state.
pub struct DcState {
    args: DcArgs,
    node: Node<StdRng>,
    store: Arc<DurableStore>,
    /// The open links, as the connection pool announced them.
    links: BTreeMap<DcId, LinkRef>,
    /// The connection pool (`None` while it restarts).
    pool: Option<ActorRef<PoolMsg>>,
    /// The health-monitor actor (`None` while it restarts).
    health: Option<ActorRef<HealthMsg>>,
    replies: BTreeMap<RequestId, Waiter>,
    next_request: RequestId,
    /// Batches being answered.
    batches: BTreeMap<u64, PendingBatch>,
    next_batch: u64,
    conflicts: BTreeMap<String, u64>,
    /// Commit times for the replication-lag histogram.
    lag: crate::lag::ReplicationLag,
    /// What was last logged, to log transitions only: each peer's health, the state transfers
    /// counted, whether writes were refused for backpressure.
    logged: Logged,
    /// The last [`CONFLICTS_KEPT`] conflict records, oldest first, with the wall clock (Unix
    /// ms) they were resolved at (`GET /v1/conflicts`).
    conflict_log: std::collections::VecDeque<(u64, mesh_core::Conflict)>,
    /// The value bytes `conflict_log` holds.
    conflict_log_bytes: usize,
    /// Spans of traced writes waiting for their answer, by request.
    write_spans: BTreeMap<RequestId, opentelemetry_sdk::trace::Span>,
    /// The `traceparent` of traced writes of this DC, by seq, for the batches that carry them.
    traced_seqs: BTreeMap<u64, String>,
    /// Traced batches received and not yet durable here: what they bring (per origin, the
    /// last seq), their `traceparent`, from which peer and when they arrived, and how many ops.
    traced_applies: Vec<(VersionVectorMax, String, DcId, SystemTime, usize)>,
    /// When the observable instruments were last refreshed.
    observed_at: Option<Instant>,
    /// The last count of keys holding a tombstone, and when it was taken.
    tombstones_held: Option<(u64, Instant)>,
    /// Client writes waiting for their answer: arrival and resolved mode, for the latency
    /// histogram.
    arrivals: BTreeMap<RequestId, (Instant, &'static str)>,
    /// Persists waiting for their commit: submission and ops, for the commit histograms.
    submitted: BTreeMap<PersistId, (Instant, usize)>,
    /// The armed wake-up: when, and its number.
    tick: Option<(Instant, u64)>,
    /// The number of the last wake-up armed.
    ticks_armed: u64,
    /// Whether the DC accepted writes as of the last effects (its start gate is logged once).
    ready: bool,
}

fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The wall clock now, for the engine.
pub(crate) fn wall() -> WallMs {
    WallMs(wall_ms())
}

fn wall_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// What the DC actor last logged (see [`DcActor::log_transitions`]).
#[derive(Debug, Default)]
struct Logged {
    transfers: (u64, u64),
    backpressure: bool,
}

/// The DC actor.
pub struct DcActor;

impl DcActor {
    fn now(state: &DcState) -> MonoMs {
        MonoMs(state.args.started.elapsed().as_millis() as u64)
    }

    /// Logs what changed since the last call: state transfers taken up or received (the health
    /// actor logs peers' health). Never per op.
    fn log_transitions(state: &mut DcState) {
        let local = &state.args.local;
        let stats = state.node.stats();
        let transfers = (stats.transfers_sent, stats.transfers_received);
        if transfers.0 > state.logged.transfers.0 {
            tracing::info!(dc = %local, total = transfers.0, "state transfer taken up by a peer");
        }
        if transfers.1 > state.logged.transfers.1 {
            tracing::info!(dc = %local, total = transfers.1, "state transfer received and applied");
        }
        state.logged.transfers = transfers;
    }

    /// Refreshes what the observable instruments report (per peer link and queue; the health
    /// actor reports health, lag and clock offset).
    fn publish_observed(state: &mut DcState) {
        // Counting tombstones reads the store's index: every few seconds, not every refresh.
        if state.tombstones_held.is_none_or(|(_, at)| at.elapsed() >= TOMBSTONES_COUNT_EVERY) {
            if let Ok(n) = state.store.tombstones_held() {
                state.tombstones_held = Some((n, Instant::now()));
            }
        }
        let local = &state.args.local;
        let peers = state
            .args
            .topology
            .dcs
            .iter()
            .filter(|d| &d.id != local)
            .map(|d| {
                let counters = state.args.metrics.links.peer(d.id.as_str());
                let replicator = state.node.replicator(&d.id);
                crate::metrics::PeerObserved {
                    peer: d.id.to_string(),
                    link_up: state.links.contains_key(&d.id),
                    queued_ops: state.node.queued_ops(&d.id),
                    inflight_batches: replicator.map_or(0, |r| r.inflight() as u64),
                    retransmits: replicator.map_or(0, |r| r.stats().retransmits),
                    dials_failed: counters.dials_failed.load(Ordering::Relaxed),
                    links_lost: counters.links_lost.load(Ordering::Relaxed),
                }
            })
            .collect();
        let stats = state.node.stats();
        state.args.metrics.observe(crate::metrics::Observed {
            peers,
            transfers_sent: stats.transfers_sent,
            transfers_received: stats.transfers_received,
            keys_collected: stats.keys_collected,
            sync_waiting: state.node.sync_waiting() as u64,
            log: state.store.log_stats().map(|l| (l.ops, l.bytes)).ok(),
            checkpoints: state.store.checkpoint_stats(),
            hlc_beyond_skew: stats.hlc_beyond_skew,
            tombstones_held: state.tombstones_held.map(|(n, _)| n),
        });
    }

    /// Breaks `backlog.origins` down by reading up to `scan_ops` of their ops from the log.
    /// Runs off the DC actor (it reads the store). An origin the log no longer holds (the peer
    /// needs a state transfer) is named in `unreadable` and the others are still read.
    fn scan_backlog(store: &DurableStore, backlog: &mut Backlog, scan_ops: usize) {
        const FIRST_KEYS: usize = 20;
        let mut left = scan_ops;
        for (origin, after, upto) in backlog.origins.clone() {
            let want = usize::try_from(upto - after).unwrap_or(usize::MAX).min(left);
            if want == 0 {
                break;
            }
            let ops = match store.read_log(&origin, after, want, 64 << 20) {
                Ok(ops) => ops,
                Err(e) => {
                    backlog.unreadable.push((origin, e.to_string()));
                    continue;
                }
            };
            left -= ops.len();
            for op in ops {
                backlog.scanned_ops += 1;
                let entry = backlog.keyspaces.entry(op.keyspace.clone()).or_default();
                entry.0 += 1;
                entry.1 += op.kind.payload_bytes() as u64;
                let key = (op.keyspace, op.key);
                if backlog.first_keys.len() < FIRST_KEYS && !backlog.first_keys.contains(&key) {
                    backlog.first_keys.push(key);
                }
            }
        }
    }

    /// Records an apply span for every traced batch now durable here.
    fn record_applies(state: &mut DcState) {
        let Some(traces) = state.args.traces.clone() else { return };
        let durable = state.node.durable();
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut state.traced_applies)
            .into_iter()
            .partition(|(upto, ..)| upto.iter().all(|(origin, seq)| durable.get(origin) >= *seq));
        state.traced_applies = waiting;
        for (_, traceparent, from, arrived, ops) in done {
            let attributes = vec![
                KeyValue::new("mesh.dc", state.args.local.to_string()),
                KeyValue::new("mesh.from", from.to_string()),
                KeyValue::new("mesh.ops", ops as i64),
            ];
            traces.record_apply(&traceparent, arrived, attributes);
        }
    }

    /// Counts a write refused before it was written, by the API error code.
    fn refused(state: &DcState, e: &NodeWriteError) {
        let reason = crate::http::write_error(e.clone()).1;
        state.args.metrics.writes_refused.add(1, &[KeyValue::new("reason", reason)]);
    }

    /// The mode `write` resolves to, as a metric label.
    fn mode_label(state: &DcState, write: &WriteRequest, options: &WriteOptions) -> &'static str {
        match state.args.topology.keyspace(&write.keyspace) {
            Some(spec) => match mesh_engine::sync::resolve_mode(spec.mode, spec.critical, options.mode) {
                mesh_core::topology::Mode::Sync => "sync",
                _ => "async",
            },
            None => "async",
        }
    }

    /// Logs backpressure turning on (a write refused because the commit queue or the sync
    /// waits are full) and off (a write taken again).
    fn log_backpressure(state: &mut DcState, refused: bool, taken: bool) {
        if refused && !state.logged.backpressure {
            tracing::warn!(dc = %state.args.local, "backpressure on: writes refused (busy) until the local commit or sync acks catch up");
            state.logged.backpressure = true;
        } else if taken && !refused && state.logged.backpressure {
            tracing::info!(dc = %state.args.local, "backpressure off: writes taken again");
            state.logged.backpressure = false;
        }
    }

    /// Carries out the node's effects, then arms the timer.
    fn effects(myself: &ActorRef<DcMsg>, state: &mut DcState) {
        Self::log_transitions(state);
        if state.observed_at.is_none_or(|t| t.elapsed() >= crate::metrics::OBSERVE_EVERY) {
            state.observed_at = Some(Instant::now());
            Self::publish_observed(state);
        }
        if !state.ready && state.node.is_ready() {
            state.ready = true;
            tracing::info!(
                dc = %state.args.local,
                own_seq = state.node.durable().get(&state.args.local),
                "accepting writes"
            );
        }
        while let Some(effect) = state.node.poll_effect() {
            match effect {
                Effect::Send { to, mut message } => {
                    if let Message::Batch(batch) = &mut message {
                        let peer = KeyValue::new("peer", to.to_string());
                        state.args.metrics.replicated_ops.add(batch.ops.len() as u64, &[peer]);
                        state.lag.annotate(batch);
                        if batch.trace.is_none() && !state.traced_seqs.is_empty() {
                            let local = &state.args.local;
                            let traced = batch
                                .ops
                                .iter()
                                .filter(|op| &op.dot.origin == local)
                                .find_map(|op| state.traced_seqs.get(&op.dot.seq));
                            batch.trace = traced.map(|traceparent| mesh_wire::TraceContext {
                                traceparent: traceparent.clone(),
                                tracestate: String::new(),
                            });
                        }
                    }
                    if let Some(link) = state.links.get(&to) {
                        let _ = link.actor.cast(LinkMsg::Send(message));
                    }
                }
                Effect::Persist { id, batch } => {
                    let me = myself.clone();
                    state.lag.on_persist(id, &batch.ops);
                    state.submitted.insert(id, (Instant::now(), batch.ops.len()));
                    state.store.submit(
                        batch,
                        Box::new(move |result| {
                            let _ = me.cast(DcMsg::Committed { id, result, unix_us: wall_us() });
                        }),
                    );
                }
                Effect::Reply { request, dot, outcome, summary } => {
                    let waiter = state.replies.remove(&request);
                    if !matches!(waiter, Some(Waiter::Wait(_))) {
                        let result =
                            if matches!(outcome, SyncOutcome::Done { .. }) { "done" } else { "sync_timeout" };
                        state.args.metrics.writes.add(1, &[KeyValue::new("outcome", result)]);
                        if let Some(mut span) = state.write_spans.remove(&request) {
                            use opentelemetry::trace::Span as _;
                            span.set_attribute(KeyValue::new("mesh.dot", crate::http::dot_text(&dot)));
                            span.set_attribute(KeyValue::new("mesh.outcome", result));
                            if dot.origin == state.args.local {
                                if state.traced_seqs.len() == TRACED_MAX {
                                    state.traced_seqs.pop_first();
                                }
                                state.traced_seqs.insert(dot.seq, crate::traces::traceparent(&span));
                            }
                            span.end();
                        }
                        if let Some((arrived, mode)) = state.arrivals.remove(&request) {
                            let labels = [KeyValue::new("mode", mode), KeyValue::new("outcome", result)];
                            state
                                .args
                                .metrics
                                .write_duration
                                .record(arrived.elapsed().as_secs_f64(), &labels);
                        }
                    }
                    if let Some(waiter) = waiter {
                        Self::answer(state, waiter, Ok(WriteDone { dot, outcome, summary }));
                    }
                }
                Effect::Conflict(c) => {
                    state.args.metrics.conflicts.add(1, &[KeyValue::new("strategy", c.strategy.clone())]);
                    if c.winner.is_none() {
                        let live = c.versions.iter().filter(|v| v.value.is_some()).count() as u64;
                        state.args.metrics.siblings.record(live, &[]);
                    }
                    *state.conflicts.entry(c.strategy.clone()).or_default() += 1;
                    state.conflict_log_bytes += conflict_bytes(&c);
                    state.conflict_log.push_back((wall_ms(), c));
                    while state.conflict_log.len() > CONFLICTS_KEPT
                        || state.conflict_log_bytes > CONFLICTS_BYTES_MAX
                    {
                        let (_, old) = state.conflict_log.pop_front().expect("not empty");
                        state.conflict_log_bytes -= conflict_bytes(&old);
                    }
                }
                Effect::Dial { peer, endpoint } => {
                    // The dial MUST report an outcome: without a pool to carry it out, it failed.
                    let dial = PoolMsg::Dial { peer: peer.clone(), endpoint, resolver: myself.clone() };
                    if state.pool.as_ref().is_none_or(|pool| pool.cast(dial).is_err()) {
                        let _ = myself.cast(DcMsg::DialFailed(peer));
                    }
                }
                Effect::Close { peer } => {
                    if let Some(link) = state.links.remove(&peer) {
                        if let Some(pool) = &state.pool {
                            let reason = "the failure detector judged the peer down, or its Hello failed";
                            let _ = pool.cast(PoolMsg::Close { peer, link: link.id, reason });
                        }
                    }
                }
                Effect::Health(input) => {
                    let message = match input {
                        HealthInput::LinkOpen(peer) if state.links.contains_key(&peer) => {
                            HealthMsg::Open { link: state.links[&peer].clone(), peer }
                        }
                        input => HealthMsg::Input(input),
                    };
                    // Lost with a health actor that stopped: its successor starts from a reset.
                    if let Some(health) = &state.health {
                        let _ = health.cast(message);
                    }
                }
                Effect::Compact { below } => {
                    // Concurrent with later effects, as the effect's contract allows; a failure
                    // goes back to the node, which alarms and tries again.
                    let me = myself.clone();
                    let store = state.store.clone();
                    let dc = state.args.local.clone();
                    tokio::task::spawn_blocking(move || {
                        let started = Instant::now();
                        match store.compact_log(&below) {
                            Ok(removed) => tracing::debug!(
                                %dc,
                                removed,
                                ms = started.elapsed().as_millis() as u64,
                                "log compacted"
                            ),
                            Err(e) => {
                                let _ =
                                    me.cast(DcMsg::CompactFailed(format!("compacting the log failed: {e}")));
                            }
                        }
                    });
                }
                Effect::Alarm(alarm) => {
                    use mesh_engine::node::Alarm;
                    let metrics = &state.args.metrics;
                    match &alarm {
                        Alarm::LinkRefused { peer, refusal } => {
                            use mesh_engine::hello::HelloRefusal as R;
                            let reason = match refusal {
                                R::IdentityMismatch { .. } => "identity",
                                R::UnknownDc(_) => "unknown_dc",
                                R::SelfConnection(_) => "self",
                                R::FingerprintMismatch { .. } => "fingerprint",
                            };
                            let labels =
                                [KeyValue::new("peer", peer.to_string()), KeyValue::new("reason", reason)];
                            metrics.links_refused.add(1, &labels);
                        }
                        Alarm::PeerRegressed { peer, .. } => {
                            metrics.peer_regressions.add(1, &[KeyValue::new("peer", peer.to_string())]);
                        }
                        Alarm::ApplyFailed { peer, .. } => {
                            metrics.apply_failures.add(1, &[KeyValue::new("peer", peer.to_string())]);
                        }
                        Alarm::StateTransferNeeded { .. }
                        | Alarm::StoreFailed(_)
                        | Alarm::CompactionFailed(_) => {}
                    }
                    match &alarm {
                        Alarm::StoreFailed(_) | Alarm::CompactionFailed(_) => {
                            tracing::error!(dc = %state.args.local, ?alarm, "alarm")
                        }
                        _ => tracing::warn!(dc = %state.args.local, ?alarm, "alarm"),
                    }
                }
            }
        }
        let Some(due_ms) = state.node.poll_timeout() else { return };
        let due = state.args.started + Duration::from_millis(due_ms.ms());
        // A wake-up armed for no later than `due` (even one already in the mailbox) serves.
        if state.tick.is_none_or(|(t, _)| due < t) {
            state.ticks_armed += 1;
            let number = state.ticks_armed;
            state.tick = Some((due, number));
            let delay = due.saturating_duration_since(Instant::now());
            myself.send_after(delay, move || DcMsg::Tick(number));
        }
    }

    /// Tells the health actor to start over beside this node: a monitor resumed from the node's
    /// state, the open links, and this resolver for its verdicts.
    fn reset_health(myself: &ActorRef<DcMsg>, state: &DcState) {
        let Some(health) = &state.health else { return };
        let monitor = Box::new(state.node.resume_health_monitor(Self::now(state)));
        let links = state
            .links
            .iter()
            .filter(|(peer, _)| state.node.replicator(peer).is_some_and(|r| r.is_open()))
            .map(|(peer, link)| (peer.clone(), link.clone()))
            .collect();
        let _ = health.cast(HealthMsg::Reset { monitor, links, resolver: myself.clone() });
    }

    /// Delivers a write's answer to whoever waits for it.
    fn answer(state: &mut DcState, waiter: Waiter, result: WriteResult) {
        match waiter {
            Waiter::One(port) => {
                let _ = port.send(result);
            }
            Waiter::Wait(port) => {
                let _ = port.send(result.map(|done| done.outcome));
            }
            Waiter::Batch { batch, index } => {
                let Some((results, missing, _)) = state.batches.get_mut(&batch) else { return };
                results[index] = Some(result);
                *missing -= 1;
                Self::reply_if_complete(state, batch);
            }
        }
    }

    /// Sends batch `batch`'s answers once none is missing.
    fn reply_if_complete(state: &mut DcState, batch: u64) {
        if state.batches.get(&batch).is_some_and(|(_, missing, _)| *missing == 0) {
            let (results, _, port) = state.batches.remove(&batch).expect("checked");
            let _ = port.send(results.into_iter().map(|r| r.expect("every result is in")).collect());
        }
    }
}

impl Actor for DcActor {
    type Msg = DcMsg;
    type State = DcState;
    type Arguments = (DcArgs, Option<ActorRef<PoolMsg>>, Option<ActorRef<HealthMsg>>);

    async fn pre_start(
        &self,
        myself: ActorRef<DcMsg>,
        (args, pool, health): Self::Arguments,
    ) -> Result<DcState, ActorProcessingErr> {
        let window_ms = args.topology.config.replication.idempotency_window_s.saturating_mul(1_000);
        let checkpoint_keys = args.topology.config.node.checkpoint_keys;
        let options = mesh_store::Options {
            idempotency_window_ms: window_ms,
            checkpoint_keys_max: usize::try_from(checkpoint_keys).unwrap_or(usize::MAX),
            // About 1 KiB of write-ahead records per key before a checkpoint is due anyway: bounds
            // the replay on open when a few hot keys take most writes.
            checkpoint_wal_bytes_max: checkpoint_keys.saturating_mul(1_024),
            cache_bytes: usize::try_from(args.topology.config.node.cache_mib << 20).unwrap_or(usize::MAX),
            ..Default::default()
        };
        // Replaying the write-ahead records can take seconds: off the async threads, so the API
        // answers `503 starting` meanwhile, and logged, so an operator sees why.
        tracing::info!(dc = %args.local, path = %args.store_path.display(), "opening the store");
        let opening = std::time::Instant::now();
        let path = args.store_path.clone();
        let (topology, adopt) = (args.topology.clone(), args.adopt_topology);
        let (store, settled) = tokio::task::spawn_blocking(move || -> Result<_, ActorProcessingErr> {
            let store = DurableStore::open_with(&path, options)?;
            let settled = check_store_identity(&store, &topology, adopt)?;
            Ok((store, settled))
        })
        .await??;
        let r = store.recovered();
        tracing::info!(
            dc = %args.local,
            ms = opening.elapsed().as_millis() as u64,
            wal_records = r.wal_groups,
            wal_bytes = r.wal_bytes,
            keys = r.keys,
            "store open: write-ahead records since the last checkpoint replayed"
        );
        let store = Arc::new(store);
        let mut acked = BTreeMap::new();
        for dc in &args.topology.dcs {
            if dc.id != args.local {
                acked.insert(dc.id.clone(), store.acked(&dc.id)?);
            }
        }
        let now_ms = args.started.elapsed().as_millis() as u64;
        if !settled {
            tracing::warn!(
                dc = %args.local,
                "a new (or replaced) data directory: writes wait until every peer has answered and \
                 returned this DC's own ops, so no seq is named twice (docs/operations.md, Recover)"
            );
        }
        let startup = Startup { now: MonoMs(now_ms), wall: wall(), seen: store.seen()?, acked, settled };
        let config = NodeConfig::new(&args.topology);
        let node = Node::new(
            args.local.clone(),
            args.topology.clone(),
            config,
            startup,
            StdRng::from_os_rng(),
            &*store,
        );
        // Series a dashboard or an alert queries exist from the start, at 0 (a counter never
        // added to is not exported at all).
        let metrics = &args.metrics;
        for dc in args.topology.dcs.iter().filter(|d| d.id != args.local) {
            let peer = KeyValue::new("peer", dc.id.to_string());
            metrics.peer_regressions.add(0, std::slice::from_ref(&peer));
            metrics.apply_failures.add(0, std::slice::from_ref(&peer));
            for reason in ["fingerprint", "identity"] {
                metrics.links_refused.add(0, &[peer.clone(), KeyValue::new("reason", reason)]);
            }
        }
        for spec in args.topology.keyspaces.values() {
            metrics.conflicts.add(0, &[KeyValue::new("strategy", spec.rules.strategy().to_string())]);
        }
        metrics.writes_refused.add(0, &[KeyValue::new("reason", "busy")]);
        for direction in ["sent", "received"] {
            metrics.transfer_bytes.add(0, &[KeyValue::new("direction", direction)]);
        }
        let lag = crate::lag::ReplicationLag::new(args.local.clone());
        let mut state = DcState {
            args,
            node,
            store,
            links: BTreeMap::new(),
            pool,
            health,
            replies: BTreeMap::new(),
            next_request: RequestId(1),
            batches: BTreeMap::new(),
            next_batch: 1,
            conflicts: BTreeMap::new(),
            lag,
            logged: Logged::default(),
            observed_at: None,
            tombstones_held: None,
            write_spans: BTreeMap::new(),
            traced_seqs: BTreeMap::new(),
            traced_applies: Vec::new(),
            conflict_log: std::collections::VecDeque::new(),
            conflict_log_bytes: 0,
            arrivals: BTreeMap::new(),
            submitted: BTreeMap::new(),
            tick: None,
            ticks_armed: 0,
            ready: false,
        };
        // Links from now on come here; those the pool announced to a resolver before go.
        if let Some(pool) = &state.pool {
            let _ = pool.cast(PoolMsg::Attach(myself.clone()));
        }
        Self::reset_health(&myself, &state);
        Self::effects(&myself, &mut state);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<DcMsg>,
        msg: DcMsg,
        state: &mut DcState,
    ) -> Result<(), ActorProcessingErr> {
        let now = Self::now(state);
        match msg {
            DcMsg::Write { mut write, options, traceparent, reply } => {
                write.request = state.next_request;
                state.next_request = RequestId(write.request.0 + 1);
                let request = write.request;
                let mode = Self::mode_label(state, &write, &options);
                state.arrivals.insert(request, (Instant::now(), mode));
                if let Some(traces) = &state.args.traces {
                    let attributes = vec![
                        KeyValue::new("mesh.dc", state.args.local.to_string()),
                        KeyValue::new("mesh.keyspace", write.keyspace.to_string()),
                        KeyValue::new("mesh.key", write.key.to_string()),
                        KeyValue::new("mesh.mode", mode),
                    ];
                    if let Some(span) =
                        traces.start_write(traceparent.as_deref(), SystemTime::now(), attributes)
                    {
                        state.write_spans.insert(request, span);
                    }
                }
                match state.node.handle_write(now, wall(), write, options, &*state.store) {
                    Ok(()) => {
                        Self::log_backpressure(state, false, true);
                        state.replies.insert(request, Waiter::One(reply));
                    }
                    Err(e) => {
                        let busy = matches!(e, NodeWriteError::Busy | NodeWriteError::SyncBusy);
                        Self::log_backpressure(state, busy, false);
                        Self::refused(state, &e);
                        state.arrivals.remove(&request);
                        if let Some(mut span) = state.write_spans.remove(&request) {
                            use opentelemetry::trace::Span as _;
                            span.set_attribute(KeyValue::new("mesh.refused", e.to_string()));
                            span.end();
                        }
                        let _ = reply.send(Err(e));
                    }
                }
            }
            DcMsg::WriteBatch { writes, reply } => {
                let batch = state.next_batch;
                state.next_batch += 1;
                state.batches.insert(batch, (vec![None; writes.len()], writes.len(), reply));
                let arrived = Instant::now();
                let writes: Vec<_> = writes
                    .into_iter()
                    .map(|(mut write, options)| {
                        write.request = state.next_request;
                        state.next_request = RequestId(write.request.0 + 1);
                        let mode = Self::mode_label(state, &write, &options);
                        state.arrivals.insert(write.request, (arrived, mode));
                        (write, options)
                    })
                    .collect();
                let requests: Vec<_> = writes.iter().map(|(w, _)| w.request).collect();
                let results = state.node.handle_write_batch(now, wall(), writes, &*state.store);
                let refused =
                    results.iter().any(|r| matches!(r, Err(NodeWriteError::Busy | NodeWriteError::SyncBusy)));
                Self::log_backpressure(state, refused, results.iter().any(Result::is_ok));
                for (index, (request, result)) in requests.into_iter().zip(results).enumerate() {
                    match result {
                        Ok(()) => {
                            state.replies.insert(request, Waiter::Batch { batch, index });
                        }
                        Err(e) => {
                            Self::refused(state, &e);
                            state.arrivals.remove(&request);
                            Self::answer(state, Waiter::Batch { batch, index }, Err(e))
                        }
                    }
                }
                // An empty batch has nothing to wait for.
                Self::reply_if_complete(state, batch);
            }
            DcMsg::Read { keys, reply } => {
                let mut bytes = 0usize;
                let answers = keys
                    .iter()
                    .map(|(keyspace, key)| {
                        if bytes > READ_BYTES_MAX {
                            return Err(format!(
                                "the read is over {READ_BYTES_MAX} bytes: ask for fewer keys at once"
                            ));
                        }
                        let read =
                            state.node.read(keyspace, key, &*state.store).map_err(|e| e.to_string())?;
                        bytes += read.as_ref().map_or(0, |r| r.value.payload_bytes());
                        Ok(read)
                    })
                    .collect();
                let _ = reply.send(answers);
            }
            DcMsg::Wait { seq, replicas, timeout_ms, reply } => {
                let request = state.next_request;
                state.next_request = RequestId(request.0 + 1);
                match state.node.handle_wait(now, request, seq, replicas, timeout_ms) {
                    Ok(()) => {
                        state.replies.insert(request, Waiter::Wait(reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            DcMsg::Conflicts { keyspace, limit, reply } => {
                let records = state
                    .conflict_log
                    .iter()
                    .rev()
                    .filter(|(_, c)| keyspace.as_ref().is_none_or(|k| &c.keyspace == k))
                    .take(limit)
                    .cloned()
                    .collect();
                let _ = reply.send(records);
            }
            DcMsg::Backlog { peer, scan_ops, reply } => {
                let known = state.args.topology.dcs.iter().any(|d| d.id == peer && d.id != state.args.local);
                if !known {
                    let _ = reply.send(None);
                } else {
                    let mut backlog = Backlog { origins: state.node.backlog(&peer), ..Backlog::default() };
                    let store = state.store.clone();
                    tokio::task::spawn_blocking(move || {
                        Self::scan_backlog(&store, &mut backlog, scan_ops);
                        let _ = reply.send(Some(Ok(backlog)));
                    });
                }
            }
            DcMsg::KeyCount(reply) => {
                let _ = reply.send(state.store.key_count().map_err(|e| e.to_string()));
            }
            DcMsg::Status(reply) => {
                let wall = wall_ms();
                let peers = state
                    .args
                    .topology
                    .dcs
                    .iter()
                    .filter(|d| d.id != state.args.local)
                    .map(|d| {
                        let link = state.node.replicator(&d.id).map(|r| r.stats()).unwrap_or_default();
                        let counters = state.args.metrics.links.peer(d.id.as_str());
                        let ago = link.last_sent_ms.map(|t| now.ms().saturating_sub(t));
                        PeerReport {
                            dc: d.id.clone(),
                            connected: state.links.contains_key(&d.id),
                            status: None,
                            queued_ops: state.node.queued_ops(&d.id),
                            regressed: state.node.peer_regressed(&d.id),
                            apply_failures: state.node.apply_failures(&d.id).cloned(),
                            raw_bytes: counters.raw_bytes.load(Ordering::Relaxed),
                            wire_bytes: counters.wire_bytes.load(Ordering::Relaxed),
                            dials_failed: counters.dials_failed.load(Ordering::Relaxed),
                            links_lost: counters.links_lost.load(Ordering::Relaxed),
                            last_sent_ms_ago: ago,
                            last_sent_unix_ms: ago.map(|a| wall.saturating_sub(a)),
                            lag_histogram: state.args.metrics.lag_hdr.of(d.id.as_str()),
                            link,
                        }
                    })
                    .collect();
                let mut status = DcStatus {
                    lag_alert_ms: state.args.topology.config.replication.max_replication_lag_ms,
                    dc: state.args.local.clone(),
                    ready: state.node.is_ready(),
                    seen: state.node.durable().clone(),
                    peers,
                    stats: state.node.stats(),
                    conflicts: state.conflicts.clone(),
                };
                // Health, lag and clock offsets are the health actor's: asked off this actor,
                // and left unknown if it does not answer (it may be restarting).
                let health = state.health.clone();
                tokio::spawn(async move {
                    if let Some(health) = health {
                        let asked = health.call(HealthMsg::Status, Some(Duration::from_secs(2))).await;
                        if let Ok(ractor::rpc::CallResult::Success(mut judged)) = asked {
                            for peer in &mut status.peers {
                                peer.status = judged.remove(&peer.dc);
                            }
                        }
                    }
                    let _ = reply.send(status);
                });
            }
            DcMsg::Connected { peer, link } => {
                // The pool reports a link it replaces down first; one this DC closed meanwhile
                // is not reported, so a link still held here is over.
                if state.links.insert(peer.clone(), link).is_some() {
                    state.node.handle_disconnected(now, &peer);
                }
                state.node.handle_connected(now, &peer);
            }
            DcMsg::DialSuperseded(peer) => state.node.handle_dial_superseded(now, &peer),
            DcMsg::PoolRestarted(pool) => {
                tracing::warn!(dc = %state.args.local, "the connection pool restarted: its links ended, its dials failed");
                for (peer, _) in std::mem::take(&mut state.links) {
                    state.node.handle_disconnected(now, &peer);
                }
                for dc in state.args.topology.dcs.iter().filter(|d| d.id != state.args.local) {
                    state.node.handle_dial_failed(now, &dc.id);
                }
                state.pool = Some(pool);
            }
            DcMsg::LinkDown { peer, link } => {
                if state.links.get(&peer).is_some_and(|l| l.id == link) {
                    state.links.remove(&peer);
                    state.node.handle_disconnected(now, &peer);
                }
            }
            DcMsg::Peer { peer, link, message, credit } => {
                // The credit goes back to the link once this message is handled.
                let _credit = credit;
                if state.links.get(&peer).is_some_and(|l| l.id == link) {
                    if let Message::Batch(batch) = &message {
                        state.lag.on_received(&peer, &batch.commit_times);
                        let trace = batch.trace.as_ref().filter(|t| t.traceparent.len() <= TRACEPARENT_BYTES);
                        if let (Some(trace), Some(_)) = (trace, &state.args.traces) {
                            let mut upto: VersionVectorMax = Vec::new();
                            for op in &batch.ops {
                                match upto.iter_mut().find(|(o, _)| *o == op.dot.origin) {
                                    Some((_, seq)) => *seq = (*seq).max(op.dot.seq),
                                    None => upto.push((op.dot.origin.clone(), op.dot.seq)),
                                }
                            }
                            if state.traced_applies.len() == TRACED_MAX {
                                state.traced_applies.remove(0);
                            }
                            let entry = (
                                upto,
                                trace.traceparent.clone(),
                                peer.clone(),
                                SystemTime::now(),
                                batch.ops.len(),
                            );
                            state.traced_applies.push(entry);
                        }
                    }
                    state.node.handle_message(now, wall(), &peer, message, &*state.store);
                }
            }
            DcMsg::DialFailed(peer) => {
                tracing::debug!(dc = %state.args.local, %peer, "dial failed");
                state.args.metrics.links.peer(peer.as_str()).dials_failed.fetch_add(1, Ordering::Relaxed);
                state.node.handle_dial_failed(now, &peer);
            }
            DcMsg::CompactFailed(detail) => state.node.handle_compact_failed(detail),
            DcMsg::Health(verdict) => state.node.handle_health(now, verdict, &*state.store),
            DcMsg::HealthRestarted(health) => {
                tracing::warn!(dc = %state.args.local, "the health monitor restarted: it starts again from this DC's state");
                state.health = Some(health);
                Self::reset_health(&myself, state);
            }
            DcMsg::Committed { id, result, unix_us } => {
                // A commit of unknown outcome poisons the store: fail, so the supervisor reopens
                // it and restarts this DC from what is durable.
                if let Err(e) = &result {
                    tracing::error!(dc = %state.args.local, error = %e, "commit failed: the store is reopened");
                }
                result?;
                if let Some((submitted, ops)) = state.submitted.remove(&id) {
                    state.args.metrics.commit_duration.record(submitted.elapsed().as_secs_f64(), &[]);
                    state.args.metrics.commit_ops.record(ops as u64, &[]);
                }
                for (origin, lag_us, count) in state.lag.on_committed(id, unix_us) {
                    state.args.metrics.record_lag(origin.as_str(), lag_us, count);
                }
                state.node.handle_committed(now, id, &*state.store);
                Self::record_applies(state);
            }
            DcMsg::Tick(number) => {
                if state.tick.is_none_or(|(_, armed)| armed != number) {
                    return Ok(());
                }
                state.tick = None;
                state.node.handle_timeout(now, &*state.store);
            }
            DcMsg::Fail(reason) => return Err(reason.into()),
        }
        Self::effects(&myself, state);
        Ok(())
    }
}

/// Supervises one DC's resolver actor ([`DcActor`]), its health-monitor actor
/// ([`crate::health::HealthActor`]) and its connection pool ([`crate::pool::PoolActor`], which
/// supervises a replicator actor per link), restarts whichever fails, and publishes the live
/// ones.
///
/// A resolver that fails is started again from the store (every acknowledged write is there);
/// it attaches to the pool, which closes the links announced to the one before, and resets the
/// health actor. A pool that fails takes its links with it; the new one is announced to the
/// resolver (`DcMsg::PoolRestarted`), which counts them down and its dials failed, and dials
/// again. A health actor that fails is announced to the resolver (`DcMsg::HealthRestarted`),
/// which resets it from the node's state.
pub struct Supervisor;

/// The supervisor's state.
pub struct SupervisorState {
    args: DcArgs,
    current: watch::Sender<Option<ActorRef<DcMsg>>>,
    pool_tx: watch::Sender<Option<ActorRef<PoolMsg>>>,
    health_tx: watch::Sender<Option<ActorRef<HealthMsg>>>,
    resolver: Option<ActorRef<DcMsg>>,
    pool: Option<ActorRef<PoolMsg>>,
    health: Option<ActorRef<HealthMsg>>,
    restarts: u64,
}

impl Supervisor {
    async fn spawn_resolver(
        myself: &ActorRef<()>,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let args = (state.args.clone(), state.pool.clone(), state.health.clone());
        let (child, _) = Actor::spawn_linked(None, DcActor, args, myself.get_cell()).await?;
        state.resolver = Some(child.clone());
        state.current.send_replace(Some(child));
        Ok(())
    }

    async fn spawn_health(
        myself: &ActorRef<()>,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let args = crate::health::HealthArgs {
            local: state.args.local.clone(),
            started: state.args.started,
            metrics: state.args.metrics.clone(),
        };
        let (health, _) =
            Actor::spawn_linked(None, crate::health::HealthActor, args, myself.get_cell()).await?;
        if let Some(resolver) = &state.resolver {
            let _ = resolver.cast(DcMsg::HealthRestarted(health.clone()));
        }
        state.health = Some(health.clone());
        state.health_tx.send_replace(Some(health));
        Ok(())
    }

    async fn spawn_pool(
        myself: &ActorRef<()>,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let args = crate::pool::PoolArgs {
            local: state.args.local.clone(),
            topology: state.args.topology.clone(),
            endpoint: state.args.endpoint.clone(),
            codec: state.args.codec.clone(),
            metrics: state.args.metrics.clone(),
            resolver: state.resolver.clone(),
        };
        let (pool, _) = Actor::spawn_linked(None, crate::pool::PoolActor, args, myself.get_cell()).await?;
        if let Some(resolver) = &state.resolver {
            // Before the accept loop can reach the new pool, so the resolver hears of the restart
            // before any of its links.
            let _ = resolver.cast(DcMsg::PoolRestarted(pool.clone()));
        }
        state.pool = Some(pool.clone());
        state.pool_tx.send_replace(Some(pool));
        Ok(())
    }
}

impl Actor for Supervisor {
    type Msg = ();
    type State = SupervisorState;
    /// The DC, and where the live resolver, pool and health actor are published.
    type Arguments = (
        DcArgs,
        watch::Sender<Option<ActorRef<DcMsg>>>,
        watch::Sender<Option<ActorRef<PoolMsg>>>,
        watch::Sender<Option<ActorRef<HealthMsg>>>,
    );

    async fn pre_start(
        &self,
        myself: ActorRef<()>,
        (args, current, pool_tx, health_tx): Self::Arguments,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let mut state = SupervisorState {
            args,
            current,
            pool_tx,
            health_tx,
            resolver: None,
            pool: None,
            health: None,
            restarts: 0,
        };
        Self::spawn_pool(&myself, &mut state).await?;
        Self::spawn_health(&myself, &mut state).await?;
        Self::spawn_resolver(&myself, &mut state).await?;
        Ok(state)
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<()>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let SupervisionEvent::ActorFailed(cell, reason) = event else { return Ok(()) };
        state.restarts += 1;
        let id = cell.get_id();
        if state.resolver.as_ref().is_some_and(|r| r.get_id() == id) {
            tracing::error!(dc = %state.args.local, %reason, restarts = state.restarts, "actor restarted: the resolver failed; restarting it from the store");
            state.current.send_replace(None);
            state.resolver = None;
            // The failed actor's store handle is dropped with it; give its committer a moment.
            tokio::time::sleep(Duration::from_millis(100)).await;
            Self::spawn_resolver(&myself, state).await?;
        } else if state.pool.as_ref().is_some_and(|p| p.get_id() == id) {
            tracing::error!(dc = %state.args.local, %reason, restarts = state.restarts, "actor restarted: the connection pool failed; its links are dialed again");
            state.pool_tx.send_replace(None);
            state.pool = None;
            Self::spawn_pool(&myself, state).await?;
        } else if state.health.as_ref().is_some_and(|h| h.get_id() == id) {
            tracing::error!(dc = %state.args.local, %reason, restarts = state.restarts, "actor restarted: the health monitor failed; it starts again from the resolver's state");
            state.health_tx.send_replace(None);
            state.health = None;
            Self::spawn_health(&myself, state).await?;
        }
        Ok(())
    }
}

/// Accepts incoming links and hands each to the live connection pool.
pub fn spawn_accept_loop(
    local: DcId,
    endpoint: quinn::Endpoint,
    candidates: Vec<DcId>,
    codec: CodecConfig,
    current: watch::Receiver<Option<ActorRef<PoolMsg>>>,
    metrics: Metrics,
) {
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let (candidates, codec, current) = (candidates.clone(), codec.clone(), current.clone());
            let (metrics, local) = (metrics.clone(), local.clone());
            tokio::spawn(async move {
                let accepted = tokio::time::timeout(
                    Duration::from_secs(5),
                    transport::accept(incoming, candidates.iter(), &codec),
                )
                .await;
                match accepted {
                    Ok(Ok(link)) => {
                        let live = current.borrow().clone();
                        match live {
                            Some(pool) => {
                                let _ = pool.cast(PoolMsg::Accepted(Box::new(link)));
                            }
                            None => link.connection.close(4u32.into(), b"restarting"),
                        }
                    }
                    // The handshake failed: no certificate of the mesh CA, or none naming a DC.
                    Ok(Err(e)) => {
                        let reason = match e {
                            transport::LinkError::UnknownPeer => "unknown_dc",
                            transport::LinkError::Handshake(_) => "tls",
                            _ => {
                                tracing::debug!(dc = %local, error = %e, "incoming link ended before it was up");
                                return;
                            }
                        };
                        tracing::warn!(dc = %local, reason, error = %e, "incoming link refused");
                        let labels = [KeyValue::new("peer", "unverified"), KeyValue::new("reason", reason)];
                        metrics.links_refused.add(1, &labels);
                    }
                    Err(_) => {
                        tracing::info!(dc = %local, reason = "timeout", "incoming link refused: no handshake within 5 s");
                        let labels =
                            [KeyValue::new("peer", "unverified"), KeyValue::new("reason", "timeout")];
                        metrics.links_refused.add(1, &labels);
                    }
                }
            });
        }
    });
}
