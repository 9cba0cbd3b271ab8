//! One DC's behaviours wired together: the conflict resolver, one replicator per peer, the
//! health monitor, the sync tracker and the dial policies. Both runtimes drive this one
//! composition (the simulator directly; the node's actors through it), so the wiring between
//! behaviours exists once.
//!
//! Call order, for a runtime:
//! - [`Node::new`] from the store (its durable vector, HLC, idempotency records, acked vectors).
//! - Inputs: [`Node::handle_write`] for client writes, [`Node::handle_connected`] /
//!   [`Node::handle_disconnected`] / [`Node::handle_dial_failed`] for links,
//!   [`Node::handle_message`] for every message a peer sent, [`Node::handle_committed`] once a
//!   persist is durable (in emission order), [`Node::handle_timeout`] when
//!   [`Node::poll_timeout`] is due.
//! - After each input, drain [`Node::poll_effect`] and carry the effects out in order. A
//!   [`Effect::Persist`] is committed in emission order, then reported back; nothing that
//!   depends on it is emitted before (DESIGN.md, "Durability rules").
//!
//! `now_ms` is the runtime's monotonic clock, `wall_ms` the wall clock (HLCs, skew, idempotency
//! ages). Every read goes through `store`, which shows durable state only.

use crate::commit::{CommitBatch, OpLog, StateRead};
use crate::health::{HealthConfig, HealthEvent, HealthMonitor, PeerStatus};
use crate::hello::{check_hello, HelloRefusal};
use crate::planted::PlantedBug;
use crate::pool::DialPolicy;
use crate::replicator::{targets, RelayClock, Replicator, ReplicatorConfig, ReplicatorStats};
use crate::resolver::{ApplyError, Output, PersistId, Resolver, WriteError, WriteRequest, WriteSummary};
use crate::sync::{resolve_mode, RequestId, SyncOutcome, SyncTracker};
use mesh_core::topology::{Acks, Mode};
use mesh_core::{Conflict, DcId, Dot, Hlc, Key, Keyspace, Op, ReadResult, Topology, VersionVector};
use mesh_wire::{Ack, Batch, Heartbeat, Hello, Message, SnapshotChunk, SnapshotRequest, PROTOCOL_VERSION};
use rand::RngCore;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

/// Tuning of a [`Node`]; [`NodeConfig::new`] derives it from the topology.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    /// Per-link batching and windows.
    pub replicator: ReplicatorConfig,
    /// Failure detection.
    pub health: HealthConfig,
    /// How long this DC holds a third DC's op before relaying it to a peer that still lacks it.
    pub relay_delay_ms: u64,
    /// After a start, how long writes wait for every peer's Hello (so no seq a peer holds is
    /// reused) before they are accepted anyway.
    pub startup_wait_ms: u64,
    /// How often tombstones are collected.
    pub gc_interval_ms: u64,
    /// Keys holding tombstones visited per collection round (the store walks an index of them).
    pub gc_scan_keys: usize,
    /// How often the log is compacted below what every DC acked.
    pub compact_interval_ms: u64,
    /// Most sync writes waiting for acks at once.
    pub sync_waiting_max: usize,
    /// Key states per snapshot chunk in a state transfer (chunks are also bounded by bytes,
    /// `replicator.batch_bytes_max`).
    pub snapshot_entries: usize,
    /// Most ops waiting for their local commit; beyond it writes are refused as busy
    /// (`commit_queue_ops_max`).
    pub commit_queue_ops_max: usize,
    /// Oldest op kept in the log even if a peer has not acknowledged it, in ms
    /// (`log_retention_age_s`).
    pub log_retention_age_ms: u64,
    /// Most op bytes kept in the log (`log_retention_bytes`); beyond it the log is compacted to
    /// what is durable here, and lagging peers catch up by state transfer.
    pub log_retention_bytes: u64,
    /// Test only: a planted bug. Never set in production.
    pub planted: Option<PlantedBug>,
}

impl NodeConfig {
    /// The configuration mesh.toml's `[replication]` implies.
    pub fn new(topology: &Topology) -> Self {
        let r = &topology.config.replication;
        let heartbeat = r.heartbeat_interval_ms;
        Self {
            replicator: ReplicatorConfig {
                batch_size: r.batch_size as usize,
                // Room for the frame header and the batch's own metadata.
                batch_bytes_max: (r.frame_bytes_max as usize) / 2,
                max_delay_ms: r.max_delay_ms,
                inflight_max: r.inflight_batches_max as usize,
                retransmit_ms: (heartbeat * 8).max(1_000),
            },
            health: HealthConfig::new(heartbeat, r.max_clock_skew_ms),
            // Several heartbeats: a peer's reports reach this DC well within it when the
            // origin's own link works, so a healthy mesh relays nothing.
            relay_delay_ms: (heartbeat * 6).max(500),
            startup_wait_ms: (heartbeat * 8).max(1_000),
            gc_interval_ms: (heartbeat * 4).max(250),
            gc_scan_keys: 1_000,
            compact_interval_ms: (heartbeat * 4).max(250),
            sync_waiting_max: r.commit_queue_ops_max as usize,
            snapshot_entries: 256,
            commit_queue_ops_max: r.commit_queue_ops_max as usize,
            log_retention_age_ms: r.log_retention_age_s.saturating_mul(1_000),
            log_retention_bytes: r.log_retention_bytes,
            planted: None,
        }
    }
}

/// Where a node starts: the clocks, and what the store holds durably.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Startup {
    /// The runtime clock now, in ms.
    pub now_ms: u64,
    /// The wall clock now, in ms since the Unix epoch.
    pub wall_ms: u64,
    /// The store's durable `seen` vector.
    pub seen: VersionVector,
    /// Per peer, the vector it acknowledged as durable, as the store persisted it.
    pub acked: BTreeMap<DcId, VersionVector>,
    /// Whether the store passed the start gate before ([`crate::StoreIdentity::settled`]). A
    /// store that has not (a new or replaced disk) may have lost dots this DC issued, so writes
    /// wait for every peer's Hello, however long that takes.
    pub settled: bool,
}

/// Why a client write was refused. Nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeWriteError {
    /// The DC is starting: it waits for its peers' Hello (or, on a settled store, a bound) and
    /// for its own ops they hold, so it never reuses a seq.
    #[error("this DC is starting and does not accept writes yet")]
    Starting,
    /// Too many sync writes are waiting for their acks.
    #[error("too many sync writes are waiting for acknowledgements; retry later")]
    SyncBusy,
    /// Too many ops are waiting for the local commit (the disk is behind); retry later.
    #[error("too many writes are waiting for the local commit; retry later")]
    Busy,
    /// The resolver refused it.
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// How a write asks to wait, overriding its keyspace's defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// The mode (`None`: the keyspace's).
    pub mode: Option<Mode>,
    /// The acks of a sync write (`None`: the keyspace's).
    pub acks: Option<Acks>,
}

/// Something the operator should hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Alarm {
    /// A peer's Hello was refused; the link is closed.
    LinkRefused {
        /// The peer.
        peer: DcId,
        /// Why.
        refusal: HelloRefusal,
    },
    /// A peer reports less than it had acknowledged as durable: it lost data.
    PeerRegressed {
        /// The peer.
        peer: DcId,
        /// The entries of its acked vector its Hello no longer covers.
        lost: VersionVector,
    },
    /// A peer needs ops this DC's log no longer holds; it must catch up by state transfer.
    StateTransferNeeded {
        /// The peer.
        peer: DcId,
        /// The origins whose ops are missing.
        origins: Vec<DcId>,
    },
    /// A peer's ops could not be applied (other than a gap, which a resend repairs).
    ApplyFailed {
        /// The peer.
        peer: DcId,
        /// Why.
        error: ApplyError,
    },
    /// The store failed a read; the DC stops serving until restarted.
    StoreFailed(String),
}

/// What the runtime must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Send `message` to `to` on the open link (drop it if there is none).
    Send {
        /// The peer.
        to: DcId,
        /// The message.
        message: Message,
    },
    /// Commit `batch` durably, then call [`Node::handle_committed`]`(id)`.
    Persist {
        /// The id to report.
        id: PersistId,
        /// What to commit.
        batch: CommitBatch,
    },
    /// Answer a client write.
    Reply {
        /// The request.
        request: RequestId,
        /// The write's dot.
        dot: Dot,
        /// Done, or timed out with the partial result.
        outcome: SyncOutcome,
        /// What the write changed here (`None`: an idempotent retry, or a
        /// [`Node::handle_wait`]).
        summary: Option<WriteSummary>,
    },
    /// Concurrent writes were resolved (record, count).
    Conflict(Conflict),
    /// Dial `peer` at `endpoint`; report [`Node::handle_connected`] or
    /// [`Node::handle_dial_failed`].
    Dial {
        /// The peer.
        peer: DcId,
        /// The endpoint.
        endpoint: String,
    },
    /// Close the link to `peer` (its Hello was refused, or never came).
    Close {
        /// The peer.
        peer: DcId,
    },
    /// Remove log entries `below` covers: every DC has them durably.
    Compact {
        /// The vector every DC acknowledged.
        below: VersionVector,
    },
    /// Raise an alarm.
    Alarm(Alarm),
}

/// Counters of the node, for status and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Links refused at Hello.
    pub links_refused: u64,
    /// Batches that stopped at a gap (lost or reordered batches; the sender resends).
    pub gaps: u64,
    /// Keys that had tombstones collected.
    pub keys_collected: u64,
    /// State transfers to a peer behind the retained log that the peer took up: it asked for a
    /// chunk after the first, or came to hold the snapshot's vector. A snapshot cut for a peer
    /// that never answered is not counted.
    pub transfers_sent: u64,
    /// State transfers this DC received and applied.
    pub transfers_received: u64,
    /// Remote ops whose HLC was ahead of this DC's clock by more than `max_clock_skew_ms`.
    pub hlc_beyond_skew: u64,
}

/// An estimate of a key state's encoded size, to bound snapshot chunks.
fn state_bytes(state: &mesh_core::KeyState) -> usize {
    let values: usize = state.versions().iter().map(|v| v.value.as_ref().map_or(0, |b| b.len()) + 48).sum();
    let members: usize = match state.value() {
        mesh_core::Value::Set(set) => set.members().iter().map(|m| m.len() + 48).sum(),
        _ => 0,
    };
    64 + 16 * state.context().len() + values + members
}

/// A state transfer to one peer.
struct Outgoing {
    id: u64,
    vector: VersionVector,
    /// Without a request from the peer by then (or, after the last chunk, without the peer
    /// holding `vector`), the transfer is abandoned and started again (a chunk or request lost).
    deadline_ms: u64,
    /// Dropped once the last chunk is sent; the entry stays until the peer holds `vector`.
    snapshot: Option<Box<dyn crate::commit::SnapshotRead>>,
    /// The peer answered: it asked for a later chunk, or holds `vector` (counted once).
    taken: bool,
}

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outgoing").field("id", &self.id).field("vector", &self.vector).finish()
    }
}

/// A state transfer from one peer.
#[derive(Debug)]
struct Incoming {
    id: u64,
    /// The request for the next chunk, sent once the last chunk is durably merged.
    next: Option<SnapshotRequest>,
}

struct Recovered {
    seen: VersionVector,
    acked: BTreeMap<DcId, VersionVector>,
}

#[derive(Debug, Clone)]
struct PendingWrite {
    options: WriteOptions,
    arrived_ms: u64,
}

/// One DC. See the module docs.
#[derive(Debug)]
pub struct Node<R> {
    local: DcId,
    topology: Arc<Topology>,
    config: NodeConfig,
    rng: R,
    resolver: Resolver,
    sync: SyncTracker,
    health: HealthMonitor,
    replicators: BTreeMap<DcId, Replicator>,
    /// Dial policies, one per peer: either DC of a pair dials while it has no link, so a DC that
    /// restarted (or lost its link) re-establishes it at once; two links at once are settled by
    /// [`crate::pool::keep_existing_link`].
    dialers: BTreeMap<DcId, DialPolicy>,
    /// Durable here: the vector every emitted vector comes from.
    durable: VersionVector,
    /// Persists awaiting their commit, with the vector and the number of ops they add.
    persists: VecDeque<(PersistId, VersionVector, usize)>,
    relay: RelayClock,
    requests: BTreeMap<RequestId, PendingWrite>,
    written: BTreeMap<RequestId, (Dot, Option<WriteSummary>)>,
    /// Per peer, how far to return its own ops (what this DC held when its Hello came).
    returned: BTreeMap<DcId, u64>,
    hello_from: BTreeSet<DcId>,
    /// The highest seq of this DC any peer reported holding.
    own_reported: u64,
    started_ms: u64,
    /// Whether the startup bound has passed (writes then wait only for own ops coming back).
    startup_waited: bool,
    /// Whether the store passed the start gate before ([`Startup::settled`]).
    settled: bool,
    ready: bool,
    /// Acked vectors learned since the last persist, written with the next one.
    acked_pending: BTreeMap<DcId, VersionVector>,
    /// Acked vectors, as known (persisted or learned), for the Hello check.
    acked: BTreeMap<DcId, VersionVector>,
    /// Per peer, its recent direct reports of `seen`, oldest first (tombstone GC).
    reports: BTreeMap<DcId, VecDeque<VersionVector>>,
    /// Per DC, what it holds durably as far as this DC knows (direct or relayed).
    known_durable: BTreeMap<DcId, VersionVector>,
    compacted_below: VersionVector,
    next_gc_ms: u64,
    gc_cursor: Option<(Keyspace, Key)>,
    next_compact_ms: u64,
    failed: bool,
    /// Per peer, the compacted origins last alarmed about.
    transfer_alarmed: BTreeMap<DcId, Vec<DcId>>,
    /// State transfers to peers, until the peer reports holding the snapshot's vector.
    outgoing: BTreeMap<DcId, Outgoing>,
    /// State transfers from peers in progress.
    incoming: BTreeMap<DcId, Incoming>,
    /// Ops in persists not yet committed (backpressure).
    uncommitted_ops: usize,
    /// Peers that came back with less than they had acknowledged (see `learn_durable`), until
    /// they report holding it all again.
    regressed: BTreeSet<DcId>,
    /// Per peer, batches or snapshot chunks from it that could not be applied, and the last
    /// reason: a stream stalled on an op (an operator must see it).
    apply_failures: BTreeMap<DcId, (u64, String)>,
    /// Per peer, batches that arrived past a gap, oldest first (see `on_batch`).
    held_back: BTreeMap<DcId, VecDeque<Vec<Op>>>,
    /// The runtime clock at the last input, for views that take no time (`queued_ops`).
    last_now_ms: u64,
    /// Links up whose Hello has not come yet, with the time by which it must: a link that never
    /// says Hello is closed and redialed rather than left silent.
    awaiting_hello: BTreeMap<DcId, u64>,
    next_transfer: u64,
    /// (time, durable vector) samples, oldest first, to find what is older than the retention
    /// age; one per `log_retention_age_ms / 64` at most.
    retention_samples: VecDeque<(u64, VersionVector)>,
    effects: VecDeque<Effect>,
    stats: NodeStats,
}

/// Most `seen` reports kept per peer for tombstone GC.
const REPORTS_MAX: usize = 64;

impl<R: RngCore> Node<R> {
    /// DC `local` starting over `store`, whose durable vectors `startup` carries. `rng` draws
    /// the dial jitter.
    pub fn new(
        local: DcId,
        topology: Arc<Topology>,
        config: NodeConfig,
        startup: Startup,
        rng: R,
        store: &(impl StateRead + OpLog),
    ) -> Self {
        let Startup { now_ms, wall_ms, seen, acked, settled } = startup;
        let recovered = Recovered { seen, acked };
        let peers: Vec<DcId> =
            topology.dcs.iter().filter(|d| d.active && d.id != local).map(|d| d.id.clone()).collect();
        let mut resolver = Resolver::new(local.clone(), topology.clone(), recovered.seen.clone());
        if let Some(bug) = config.planted {
            resolver.plant(bug);
        }
        // The highest HLC among the log's last ops, so local writes keep ordering after the
        // ones before the restart even if the wall clock went backwards.
        let mut last_hlc: Option<Hlc> = None;
        let mut failed = false;
        for (origin, seq) in recovered.seen.iter() {
            match store.read_ops(origin, seq.saturating_sub(1), 1, usize::MAX) {
                Ok(Some(ops)) => last_hlc = last_hlc.max(ops.last().map(|op| op.hlc)),
                Ok(None) => {}
                Err(_) => failed = true,
            }
        }
        if let Some(hlc) = last_hlc {
            resolver.handle_restored_hlc(hlc, wall_ms);
        }
        let window_ms = resolver.idempotency_window_ms();
        match store.idempotency_records(wall_ms.saturating_sub(window_ms)) {
            Ok(records) => resolver.handle_restored_idempotency(records, now_ms, wall_ms),
            Err(_) => failed = true,
        }
        let r = &topology.config.replication;
        let dialers = topology
            .dcs
            .iter()
            .filter(|d| d.active && d.id != local)
            .map(|d| {
                let endpoints = d.endpoints.iter().map(|e| e.address.clone()).collect();
                let policy = DialPolicy::new(
                    endpoints,
                    r.retry_attempts,
                    r.retry_delay_ms,
                    r.retry_delay_max_ms,
                    now_ms,
                );
                (d.id.clone(), policy)
            })
            .collect();
        let replicators = peers
            .iter()
            .map(|p| (p.clone(), Replicator::new(local.clone(), p.clone(), config.replicator.clone())))
            .collect();
        let mut health = HealthMonitor::new(peers.clone(), config.health.clone(), now_ms);
        health.handle_local_seen(&recovered.seen);
        let ready = peers.is_empty() || !r.enabled;
        let mut node = Self {
            sync: SyncTracker::new(local.clone(), peers.iter().cloned(), config.sync_waiting_max),
            relay: RelayClock::new(config.relay_delay_ms, recovered.seen.clone()),
            local,
            topology,
            rng,
            resolver,
            health,
            replicators,
            dialers,
            durable: recovered.seen,
            persists: VecDeque::new(),
            requests: BTreeMap::new(),
            written: BTreeMap::new(),
            returned: BTreeMap::new(),
            hello_from: BTreeSet::new(),
            own_reported: 0,
            started_ms: now_ms,
            startup_waited: false,
            settled,
            ready,
            acked_pending: BTreeMap::new(),
            known_durable: recovered.acked.clone(),
            acked: recovered.acked,
            reports: BTreeMap::new(),
            compacted_below: VersionVector::new(),
            next_gc_ms: now_ms + config.gc_interval_ms,
            gc_cursor: None,
            next_compact_ms: now_ms + config.compact_interval_ms,
            config,
            failed: false,
            transfer_alarmed: BTreeMap::new(),
            outgoing: BTreeMap::new(),
            incoming: BTreeMap::new(),
            uncommitted_ops: 0,
            regressed: BTreeSet::new(),
            apply_failures: BTreeMap::new(),
            held_back: BTreeMap::new(),
            last_now_ms: now_ms,
            awaiting_hello: BTreeMap::new(),
            next_transfer: 1,
            retention_samples: VecDeque::new(),
            effects: VecDeque::new(),
            stats: NodeStats::default(),
        };
        if failed {
            node.fail("reading the store at start failed".into());
        }
        node
    }

    /// This DC.
    pub fn local(&self) -> &DcId {
        &self.local
    }

    /// The durable `seen` vector.
    pub fn durable(&self) -> &VersionVector {
        &self.durable
    }

    /// Whether client writes are accepted (see [`NodeWriteError::Starting`]).
    pub fn is_ready(&self) -> bool {
        self.ready && !self.failed
    }

    /// Counters.
    pub fn stats(&self) -> NodeStats {
        NodeStats { hlc_beyond_skew: self.resolver.skew_excess_events(), ..self.stats }
    }

    /// The replicator of `peer`'s link, for its counters.
    pub fn replicator(&self, peer: &DcId) -> Option<&Replicator> {
        self.replicators.get(peer)
    }

    /// Counters of every link.
    pub fn link_stats(&self) -> BTreeMap<DcId, ReplicatorStats> {
        self.replicators.iter().map(|(p, r)| (p.clone(), r.stats())).collect()
    }

    /// Ops this DC holds durably, has to send to `peer` (by the relay rule, [`targets`]) and
    /// that `peer` has not reported durable yet: its replication queue.
    pub fn queued_ops(&self, peer: &DcId) -> u64 {
        self.backlog(peer).iter().map(|(_, after, upto)| upto - after).sum()
    }

    /// What this DC still has to get to `peer`, per origin: (origin, the last seq the peer is
    /// known to hold, the last seq to send it). Empty for an unknown peer.
    pub fn backlog(&self, peer: &DcId) -> Vec<(DcId, u64, u64)> {
        let Some(r) = self.replicators.get(peer) else { return Vec::new() };
        let want = self.targets(peer, self.relay.held_long_now(), &self.suspected_peers(), self.last_now_ms);
        want.iter()
            .map(|(origin, upto)| (origin.clone(), r.peer_seen().get(origin), upto))
            .filter(|(_, held, upto)| upto > held)
            .collect()
    }

    /// The peers the health monitor suspects.
    fn suspected_peers(&self) -> BTreeSet<DcId> {
        self.replicators.keys().filter(|p| self.health.suspected(p)).cloned().collect()
    }

    /// Per origin, the last seq to get to `peer` ([`targets`]).
    fn targets(
        &self,
        peer: &DcId,
        held_long: &VersionVector,
        suspect: &BTreeSet<DcId>,
        now_ms: u64,
    ) -> VersionVector {
        let returned = self.returned.get(peer).copied().unwrap_or(0);
        let direct = self
            .replicators
            .get(peer)
            .map(|r| r.direct_progress(now_ms, self.config.relay_delay_ms))
            .unwrap_or_default();
        targets(&self.local, peer, &self.durable, held_long, returned, suspect, &direct)
    }

    /// How `peer` is judged as of the last tick (cheap; [`Node::peer_status`] also measures
    /// lag). `None` if it is not a peer.
    pub fn peer_health(&self, peer: &DcId) -> Option<crate::health::Health> {
        self.health.health(peer)
    }

    /// `peer`'s status at `now_ms` (health, phi, lag, clock offset).
    pub fn peer_status(&self, peer: &DcId, now_ms: u64) -> Option<PeerStatus> {
        self.health.status(peer, now_ms)
    }

    /// Sync writes waiting for acks.
    pub fn sync_waiting(&self) -> usize {
        self.sync.waiting()
    }

    /// Reads a key: its durable state resolved by the keyspace's rules. `Ok(None)`: unknown
    /// keyspace. Reads never show a change that is not durable (its dots would leave early).
    pub fn read<S: StateRead>(
        &self,
        keyspace: &Keyspace,
        key: &Key,
        store: &S,
    ) -> Result<Option<ReadResult>, S::Error> {
        let Some(spec) = self.topology.keyspace(keyspace) else { return Ok(None) };
        let state = store.state(keyspace, key)?.unwrap_or_else(|| mesh_core::KeyState::new(spec.kind));
        if self.config.planted == Some(PlantedBug::LwwTieFavoursLocal)
            && *spec.rules.strategy() == mesh_core::Strategy::Lww
        {
            if let Some(dot) = crate::planted::lww_tie_favouring(state.versions(), &self.local) {
                return Ok(Some(state.read_with(|vs| vs.iter().filter(|v| v.dot == dot).cloned().collect())));
            }
        }
        Ok(Some(spec.rules.read(&state)))
    }

    fn fail(&mut self, detail: String) {
        if !self.failed {
            self.failed = true;
            self.effects.push_back(Effect::Alarm(Alarm::StoreFailed(detail)));
        }
    }

    /// A client write of request `write.request`. On `Ok` the node answers it later with one
    /// [`Effect::Reply`]; on `Err` nothing was written.
    pub fn handle_write(
        &mut self,
        now_ms: u64,
        wall_ms: u64,
        write: WriteRequest,
        options: WriteOptions,
        store: &(impl StateRead + OpLog),
    ) -> Result<(), NodeWriteError> {
        let mut results = self.handle_write_batch(now_ms, wall_ms, vec![(write, options)], store);
        results.pop().expect("one answer per write")
    }

    /// Client writes, applied in order as if each came alone, but committed together: the
    /// writes accepted share one persist. Returns each write's answer as
    /// [`Node::handle_write`] would.
    pub fn handle_write_batch(
        &mut self,
        now_ms: u64,
        wall_ms: u64,
        writes: Vec<(WriteRequest, WriteOptions)>,
        store: &(impl StateRead + OpLog),
    ) -> Vec<Result<(), NodeWriteError>> {
        // The writes accepted so far count against the commit queue before their persist is
        // emitted, so one batch cannot overshoot `commit_queue_ops_max`.
        let mut accepted = 0;
        let results = writes
            .into_iter()
            .map(|(write, options)| {
                let result = self.write(now_ms, wall_ms, write, options, accepted, store);
                accepted += usize::from(result.is_ok());
                result
            })
            .collect();
        self.drive(now_ms, store);
        results
    }

    /// One write of a batch, `accepted` writes of which are already in the open persist.
    fn write(
        &mut self,
        now_ms: u64,
        wall_ms: u64,
        write: WriteRequest,
        options: WriteOptions,
        accepted: usize,
        store: &(impl StateRead + OpLog),
    ) -> Result<(), NodeWriteError> {
        if !self.is_ready() {
            return Err(NodeWriteError::Starting);
        }
        let spec = self
            .topology
            .keyspace(&write.keyspace)
            .ok_or_else(|| WriteError::UnknownKeyspace(write.keyspace.clone()))?;
        if resolve_mode(spec.mode, spec.critical, options.mode) == Mode::Sync && !self.sync.has_room() {
            return Err(NodeWriteError::SyncBusy);
        }
        if self.uncommitted_ops + accepted >= self.config.commit_queue_ops_max {
            return Err(NodeWriteError::Busy);
        }
        let request = write.request;
        self.requests.insert(request, PendingWrite { options, arrived_ms: now_ms });
        if let Err(e) = self.resolver.handle_write(now_ms, wall_ms, write, store) {
            self.requests.remove(&request);
            return Err(e.into());
        }
        Ok(())
    }

    /// Redis' `WAIT`: answers `request` with one [`Effect::Reply`] (dot `local:seq`, no summary)
    /// once `replicas` other DCs durably hold this DC's ops up to `seq` (a connection's last
    /// write), or at `now_ms + timeout_ms` with those that do. `seq` must be at least 1 and
    /// durable here (the write was answered). [`NodeWriteError::SyncBusy`] when as many sync waits as allowed are
    /// pending.
    pub fn handle_wait(
        &mut self,
        now_ms: u64,
        request: RequestId,
        seq: u64,
        replicas: usize,
        timeout_ms: u64,
    ) -> Result<(), NodeWriteError> {
        if !self.sync.has_room() {
            return Err(NodeWriteError::SyncBusy);
        }
        let dot = Dot::new(self.local.clone(), seq);
        self.written.insert(request, (dot.clone(), None));
        let acks = Acks::Count(u32::try_from(replicas.saturating_add(1)).unwrap_or(u32::MAX));
        self.sync.handle_committed(request, dot, Mode::Sync, acks, now_ms.saturating_add(timeout_ms));
        self.reply();
        Ok(())
    }

    /// Persist `id` is durable.
    pub fn handle_committed(&mut self, now_ms: u64, id: PersistId, store: &(impl StateRead + OpLog)) {
        let (oldest, seen, ops) = self.persists.pop_front().expect("a commit was awaited");
        assert_eq!(oldest, id, "commits are reported in emission order");
        self.uncommitted_ops -= ops;
        self.durable.join(&seen);
        self.resolver.handle_committed(id);
        self.health.handle_local_seen(&self.durable);
        self.relay.record(now_ms, &self.durable);
        self.drive(now_ms, store);
    }

    /// A link to `peer` is up (dialed by this DC or accepted): the Hello goes first.
    pub fn handle_connected(&mut self, now_ms: u64, peer: &DcId) {
        if let Some(dialer) = self.dialers.get_mut(peer) {
            dialer.handle_connected(now_ms);
        }
        self.health.handle_link_up(peer, now_ms);
        self.awaiting_hello.insert(peer.clone(), now_ms + self.config.replicator.retransmit_ms);
        let hello = Hello {
            dc: self.local.clone(),
            protocol_version: PROTOCOL_VERSION,
            topology_fingerprint: self.topology.fingerprint(),
            seen: self.durable.clone(),
        };
        self.effects.push_back(Effect::Send { to: peer.clone(), message: Message::Hello(hello) });
    }

    /// A dial of `peer` connected, but the link already up was kept instead
    /// ([`crate::pool::keep_existing_link`]): the dial is over and the new link closed.
    pub fn handle_dial_superseded(&mut self, now_ms: u64, peer: &DcId) {
        if let Some(dialer) = self.dialers.get_mut(peer) {
            dialer.handle_connected(now_ms);
        }
    }

    /// A dial of `peer` failed. Ignored if a link came up meanwhile (the peer dialed in).
    pub fn handle_dial_failed(&mut self, now_ms: u64, peer: &DcId) {
        if let Some(dialer) = self.dialers.get_mut(peer).filter(|d| d.is_dialing()) {
            dialer.handle_failed(now_ms, &mut self.rng);
        }
    }

    /// The link to `peer` dropped.
    pub fn handle_disconnected(&mut self, now_ms: u64, peer: &DcId) {
        if let Some(r) = self.replicators.get_mut(peer) {
            r.handle_close();
        }
        // A transfer restarts from a fresh snapshot on the next link, and the next link resends
        // what was held back.
        self.outgoing.remove(peer);
        self.held_back.remove(peer);
        self.incoming.remove(peer);
        self.awaiting_hello.remove(peer);
        if let Some(dialer) = self.dialers.get_mut(peer) {
            // Connected (or dialing): the loss counts as a failure, so a link refused at its
            // Hello or flapping backs off.
            if dialer.poll_timeout().is_none() {
                dialer.handle_failed(now_ms, &mut self.rng);
            }
        }
    }

    /// A message from `peer`, whose identity the transport proved (its certificate).
    pub fn handle_message(
        &mut self,
        now_ms: u64,
        wall_ms: u64,
        peer: &DcId,
        message: Message,
        store: &(impl StateRead + OpLog),
    ) {
        if !self.replicators.contains_key(peer) {
            return;
        }
        match message {
            Message::Hello(hello) => self.on_hello(now_ms, peer, hello),
            Message::Batch(batch) => {
                if !self.replicators[peer].is_open() {
                    return; // Before the Hello: the link is not accepted yet.
                }
                self.on_batch(wall_ms, peer, batch.ops, store);
            }
            Message::Ack(Ack { seen }) => {
                self.learn_durable(peer, &seen, true);
                self.acked.entry(peer.clone()).or_default().join(&seen);
                self.acked_pending.entry(peer.clone()).or_default().join(&seen);
                self.report(peer, seen);
            }
            Message::Heartbeat(heartbeat) => {
                self.health.handle_heartbeat(now_ms, wall_ms, peer, &heartbeat);
                let Heartbeat { seen, known, .. } = heartbeat;
                self.learn_durable(peer, &seen, true);
                self.report(peer, seen);
                for (dc, vv) in known {
                    if dc != self.local {
                        self.learn_durable(&dc, &vv, false);
                        // A DC's vector relayed by another is still that DC's report, so
                        // tombstones are collected across a cut link too.
                        if self.replicators.contains_key(&dc) {
                            self.report(&dc, vv);
                        }
                    }
                }
            }
            Message::SnapshotChunk(chunk) => {
                if self.replicators[peer].is_open() {
                    self.on_snapshot_chunk(peer, chunk, store);
                }
            }
            Message::SnapshotRequest(request) => {
                if self.replicators[peer].is_open() {
                    self.send_chunk(
                        now_ms,
                        peer,
                        request.request_id,
                        request.after,
                        request.entries_max as usize,
                    );
                }
            }
        }
        self.drive(now_ms, store);
    }

    /// A chunk of a peer's snapshot: merge it, then (once durable) ask for the next, or finish
    /// the transfer.
    fn on_snapshot_chunk(&mut self, peer: &DcId, chunk: SnapshotChunk, store: &(impl StateRead + OpLog)) {
        let SnapshotChunk { request_id, vector, entries, last } = chunk;
        // A new transfer id replaces a transfer that was abandoned.
        if self.incoming.get(peer).is_none_or(|i| i.id != request_id) {
            self.incoming.insert(peer.clone(), Incoming { id: request_id, next: None });
        }
        let after = entries.last().map(|(ks, k, _)| (ks.clone(), k.clone()));
        if let Err(error) = self.resolver.handle_snapshot_chunk(peer, entries, store) {
            self.incoming.remove(peer);
            self.apply_failed(peer, error);
            return;
        }
        if last {
            self.incoming.remove(peer);
            self.resolver.handle_snapshot_done(peer, &vector);
            self.stats.transfers_received += 1;
        } else {
            let entries_max = u32::try_from(self.config.snapshot_entries).unwrap_or(u32::MAX);
            let next = SnapshotRequest { request_id, after, entries_max };
            self.incoming.get_mut(peer).expect("inserted above").next = Some(next);
        }
    }

    /// A batch of ops from `peer`. One that starts past a gap (a batch before it was lost or
    /// overtaken) is held back rather than dropped, and applied as soon as the gap fills, so a
    /// reordered or lost batch costs one resend, not the window behind it. At most
    /// `inflight_max` batches are held per peer (the oldest goes first: the sender resends it).
    fn on_batch(&mut self, wall_ms: u64, peer: &DcId, ops: Vec<Op>, store: &(impl StateRead + OpLog)) {
        if !self.applies_now(&ops) {
            self.stats.gaps += 1;
            let held = self.held_back.entry(peer.clone()).or_default();
            held.push_back(ops);
            while held.len() > self.config.replicator.inflight_max {
                held.pop_front();
            }
            return;
        }
        self.apply_batch(wall_ms, peer, ops, store);
        // What was held back may apply now (a gap can be filled by any peer's batch).
        while let Some((from, i)) = self.held_back.iter().find_map(|(from, held)| {
            held.iter().position(|ops| self.applies_now(ops)).map(|i| (from.clone(), i))
        }) {
            let ops = self.held_back.get_mut(&from).and_then(|h| h.remove(i)).expect("found");
            self.apply_batch(wall_ms, &from, ops, store);
        }
        for held in self.held_back.values_mut() {
            let applied = self.resolver.applied();
            held.retain(|ops| !ops.iter().all(|op| applied.covers(&op.dot)));
        }
    }

    /// Whether the first op of each origin in `ops` is at most one past what was applied.
    fn applies_now(&self, ops: &[Op]) -> bool {
        let applied = self.resolver.applied();
        let mut checked = BTreeSet::new();
        ops.iter().all(|op| !checked.insert(&op.dot.origin) || op.dot.seq <= applied.get(&op.dot.origin) + 1)
    }

    fn apply_batch(&mut self, wall_ms: u64, peer: &DcId, ops: Vec<Op>, store: &(impl StateRead + OpLog)) {
        match self.resolver.handle_batch(wall_ms, peer, ops, store) {
            Ok(()) => {}
            Err(ApplyError::Gap { .. }) => self.stats.gaps += 1,
            Err(error) => self.apply_failed(peer, error),
        }
    }

    /// What `peer` sent could not be applied: counted, kept for status, and alarmed.
    fn apply_failed(&mut self, peer: &DcId, error: ApplyError) {
        let failures = self.apply_failures.entry(peer.clone()).or_insert((0, String::new()));
        failures.0 += 1;
        failures.1 = error.to_string();
        self.effects.push_back(Effect::Alarm(Alarm::ApplyFailed { peer: peer.clone(), error }));
    }

    /// Whether `peer` came back with less than it had acknowledged and has not yet reported
    /// holding all of it again (it lost its disk, or was restored from an old copy).
    pub fn peer_regressed(&self, peer: &DcId) -> bool {
        self.regressed.contains(peer)
    }

    /// Batches and snapshot chunks from `peer` that could not be applied (other than gaps,
    /// which a resend repairs), and the last reason: replication from it is stalled.
    pub fn apply_failures(&self, peer: &DcId) -> Option<&(u64, String)> {
        self.apply_failures.get(peer)
    }

    /// Sends `peer` the next chunk of the transfer `id`, after `after`.
    fn send_chunk(
        &mut self,
        now_ms: u64,
        peer: &DcId,
        id: u64,
        after: Option<(Keyspace, Key)>,
        entries_max: usize,
    ) {
        let retransmit_ms = self.config.replicator.retransmit_ms;
        let Some(out) = self.outgoing.get_mut(peer).filter(|o| o.id == id) else { return };
        out.deadline_ms = now_ms + retransmit_ms;
        if after.is_some() && !out.taken {
            out.taken = true;
            self.stats.transfers_sent += 1;
        }
        let Some(snapshot) = out.snapshot.as_ref() else { return };
        let entries_max = entries_max.clamp(1, self.config.snapshot_entries);
        match snapshot.chunk(after.as_ref(), entries_max) {
            Ok(mut entries) => {
                let mut last = entries.len() < entries_max;
                // Bounded by bytes too, so a chunk fits a frame (always at least one entry).
                let mut bytes = 0;
                if let Some(cut) = entries.iter().position(|(_, _, state)| {
                    bytes += state_bytes(state);
                    bytes > self.config.replicator.batch_bytes_max
                }) {
                    entries.truncate(cut.max(1));
                    last = false;
                }
                if last {
                    out.snapshot = None;
                }
                let chunk = SnapshotChunk { request_id: id, vector: out.vector.clone(), entries, last };
                self.effects
                    .push_back(Effect::Send { to: peer.clone(), message: Message::SnapshotChunk(chunk) });
            }
            Err(e) => self.fail(format!("reading a snapshot for {peer} failed: {e}")),
        }
    }

    /// Starts a state transfer to `peer` if it needs one, none is under way and the peer looks
    /// alive (a snapshot cut for a silent peer would be for nobody); forgets a finished one once
    /// the peer holds its vector, and an abandoned one at its deadline.
    fn transfer(&mut self, now_ms: u64, peer: &DcId, store: &(impl StateRead + OpLog)) {
        let peer_seen = self.replicators[peer].peer_seen().clone();
        let done = |o: &Outgoing| o.snapshot.is_none() && peer_seen.dominates(&o.vector);
        if let Some(out) = self.outgoing.get(peer).filter(|o| done(o) || now_ms >= o.deadline_ms) {
            if done(out) && !out.taken {
                self.stats.transfers_sent += 1;
            }
            self.outgoing.remove(peer);
        }
        if self.replicators[peer].compacted().is_empty()
            || self.outgoing.contains_key(peer)
            || self.health.suspected(peer)
        {
            return;
        }
        let snapshot = match store.snapshot() {
            Ok(s) => s,
            Err(e) => return self.fail(format!("cutting a snapshot for {peer} failed: {e}")),
        };
        let id = self.next_transfer;
        self.next_transfer += 1;
        let vector = snapshot.vector().clone();
        let deadline_ms = now_ms + self.config.replicator.retransmit_ms;
        let out = Outgoing { id, vector, deadline_ms, snapshot: Some(snapshot), taken: false };
        self.outgoing.insert(peer.clone(), out);
        self.send_chunk(now_ms, peer, id, None, self.config.snapshot_entries);
    }

    fn on_hello(&mut self, now_ms: u64, peer: &DcId, hello: Hello) {
        if self.replicators[peer].is_open() {
            return; // A duplicate: the link's position must not rewind.
        }
        let acked = self.acked.get(peer).cloned().unwrap_or_default();
        let fingerprint = hello.topology_fingerprint;
        match check_hello(&self.topology, &self.local, peer, &hello.dc, fingerprint, &hello.seen, &acked) {
            Err(refusal) => {
                self.stats.links_refused += 1;
                self.effects.push_back(Effect::Alarm(Alarm::LinkRefused { peer: peer.clone(), refusal }));
                self.effects.push_back(Effect::Close { peer: peer.clone() });
                self.handle_disconnected(now_ms, peer);
            }
            Ok(accepted) => {
                if let Some(lost) = accepted.regressed {
                    self.regressed.insert(peer.clone());
                    self.effects.push_back(Effect::Alarm(Alarm::PeerRegressed { peer: peer.clone(), lost }));
                }
                self.awaiting_hello.remove(peer);
                let own = hello.seen.get(&self.local);
                self.resolver.handle_peer_seen(own);
                self.own_reported = self.own_reported.max(own);
                self.returned.insert(peer.clone(), self.durable.get(peer));
                self.hello_from.insert(peer.clone());
                self.learn_durable(peer, &hello.seen, true);
                self.replicators.get_mut(peer).expect("checked").handle_open(&accepted.resume_from);
            }
        }
    }

    /// `dc` is known to hold `seen` durably: it said so itself (`direct`), or another DC relayed
    /// it. For a DC that came back with less than it had acknowledged (its Hello regressed), only
    /// its own word moves its replicator: vectors relayed by others may predate the loss and
    /// would stop this DC from sending the lost ops again.
    fn learn_durable(&mut self, dc: &DcId, seen: &VersionVector, direct: bool) {
        if direct && self.regressed.contains(dc) && self.acked.get(dc).is_none_or(|a| seen.dominates(a)) {
            self.regressed.remove(dc);
        }
        let trusted = direct || !self.regressed.contains(dc);
        if let Some(r) = self.replicators.get_mut(dc).filter(|_| trusted) {
            r.handle_peer_seen(seen);
        }
        self.sync.handle_durable(dc, seen);
        self.known_durable.entry(dc.clone()).or_default().join(seen);
        if direct {
            self.health.handle_peer_durable(dc, seen);
        }
    }

    fn report(&mut self, peer: &DcId, seen: VersionVector) {
        let reports = self.reports.entry(peer.clone()).or_default();
        if reports.back() != Some(&seen) {
            reports.push_back(seen);
        }
        while reports.len() > REPORTS_MAX {
            reports.pop_front();
        }
    }

    /// When [`Node::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> u64 {
        if self.failed {
            // A failed DC serves nothing until the runtime restarts it from its store.
            return u64::MAX;
        }
        let mut t = self.health.poll_timeout().min(self.next_gc_ms).min(self.next_compact_ms);
        let others = [self.sync.poll_timeout(), self.relay.poll_timeout()];
        for x in others.into_iter().flatten() {
            t = t.min(x);
        }
        for r in self.replicators.values() {
            if let Some(x) = r.poll_timeout() {
                t = t.min(x);
            }
        }
        for d in self.dialers.values() {
            if let Some(x) = d.poll_timeout() {
                t = t.min(x);
            }
        }
        for t_out in
            self.outgoing.values().map(|o| o.deadline_ms).chain(self.awaiting_hello.values().copied())
        {
            t = t.min(t_out);
        }
        let startup_ms = self.started_ms + self.config.startup_wait_ms;
        if !self.ready && !self.startup_waited && self.startup_bound_applies() {
            t = t.min(startup_ms);
        }
        t
    }

    /// Timers due at `now_ms`.
    pub fn handle_timeout(&mut self, now_ms: u64, wall_ms: u64, store: &(impl StateRead + OpLog)) {
        if self.health.poll_timeout() <= now_ms {
            self.health.handle_timeout(now_ms);
            while let Some(event) = self.health.poll_event() {
                if let HealthEvent::Changed { peer, to: crate::health::Health::Down, .. } = &event {
                    // Link liveness follows the failure detector: a link whose peer went silent
                    // is closed and dialed again, rather than held until the transport's idle
                    // timeout (a dead process, a one-way cut, a half-open connection).
                    if self.replicators.get(peer).is_some_and(|r| r.is_open())
                        || self.awaiting_hello.contains_key(peer)
                    {
                        self.effects.push_back(Effect::Close { peer: peer.clone() });
                        self.handle_disconnected(now_ms, peer);
                    }
                    continue;
                }
                if event == HealthEvent::SendHeartbeat {
                    let known = self.health.known();
                    for (peer, r) in &self.replicators {
                        if r.is_open() {
                            let echo = self.health.echo(peer, now_ms);
                            let heartbeat =
                                Heartbeat { seen: self.durable.clone(), known: known.clone(), wall_ms, echo };
                            let message = Message::Heartbeat(heartbeat);
                            self.effects.push_back(Effect::Send { to: peer.clone(), message });
                        }
                    }
                }
            }
            self.resolver.handle_clock_skewed(self.health.clock_skewed());
        }
        let silent: Vec<DcId> =
            self.awaiting_hello.iter().filter(|(_, t)| **t <= now_ms).map(|(p, _)| p.clone()).collect();
        for peer in silent {
            self.awaiting_hello.remove(&peer);
            self.effects.push_back(Effect::Close { peer: peer.clone() });
            self.handle_disconnected(now_ms, &peer);
        }
        self.sync.handle_timeout(now_ms);
        for r in self.replicators.values_mut() {
            r.handle_timeout(now_ms);
        }
        for (peer, dialer) in &mut self.dialers {
            if let Some(dial) = dialer.poll_dial(now_ms) {
                self.effects.push_back(Effect::Dial { peer: peer.clone(), endpoint: dial.endpoint });
            }
        }
        if now_ms >= self.next_compact_ms {
            self.next_compact_ms = now_ms + self.config.compact_interval_ms;
            self.compact(now_ms, store);
        }
        if now_ms >= self.next_gc_ms {
            self.next_gc_ms = now_ms + self.config.gc_interval_ms;
            self.collect_tombstones(store);
        }
        self.drive(now_ms, store);
    }

    /// Emits a compaction of the log, if it moved: below what every DC holds durably, and
    /// beyond that everything older than the retention age, or everything durable once the log
    /// exceeds its byte cap (a peer left behind catches up by state transfer).
    fn compact(&mut self, now_ms: u64, store: &(impl StateRead + OpLog)) {
        let planted = self.config.planted == Some(PlantedBug::CompactBelowLaggingPeer);
        let mut below = self.durable.clone();
        let mut most = VersionVector::new();
        let mut every_peer_known = true;
        for peer in self.replicators.keys() {
            match self.known_durable.get(peer) {
                Some(v) if planted => most.join(v),
                Some(v) => below.meet(v),
                None => every_peer_known = false,
            }
        }
        if planted {
            below.meet(&most);
        } else if !every_peer_known {
            below = VersionVector::new();
        }
        let age_ms = self.config.log_retention_age_ms;
        let step_ms = (age_ms / 64).max(1);
        if self.retention_samples.back().is_none_or(|(t, _)| now_ms >= t + step_ms) {
            self.retention_samples.push_back((now_ms, self.durable.clone()));
        }
        while self.retention_samples.get(1).is_some_and(|(t, _)| t + age_ms <= now_ms) {
            self.retention_samples.pop_front();
        }
        if let Some((t, aged)) = self.retention_samples.front() {
            if t + age_ms <= now_ms {
                below.join(aged);
            }
        }
        match store.log_bytes() {
            Ok(bytes) if bytes > self.config.log_retention_bytes => {
                // Over the cap: give up what only peers without a link need (they catch up by
                // state transfer), never what connected peers still lack.
                let mut connected = self.durable.clone();
                for (peer, r) in &self.replicators {
                    if r.is_open() {
                        connected.meet(self.known_durable.get(peer).unwrap_or(&VersionVector::new()));
                    }
                }
                below.join(&connected);
            }
            Ok(_) => {}
            Err(e) => return self.fail(format!("reading the log size failed: {e}")),
        }
        if !self.compacted_below.dominates(&below) {
            self.compacted_below.join(&below);
            self.effects.push_back(Effect::Compact { below });
        }
    }

    /// One round of tombstone GC over the next keys, under DESIGN.md's rule: `stable` is the
    /// meet of every DC's reported `seen`, taking from each peer its newest report whose own
    /// entry this DC has applied (so no write concurrent with a collected delete is in flight).
    fn collect_tombstones(&mut self, store: &(impl StateRead + OpLog)) {
        let mut stable = self.durable.clone();
        if self.config.planted != Some(PlantedBug::EarlyTombstoneGc) {
            for peer in self.replicators.keys() {
                let reports = self.reports.entry(peer.clone()).or_default();
                let Some(i) = reports.iter().rposition(|r| r.get(peer) <= self.durable.get(peer)) else {
                    return;
                };
                reports.drain(..i);
                stable.meet(&reports[0]);
            }
        }
        let scan = match store.scan_tombstoned(self.gc_cursor.as_ref(), self.config.gc_scan_keys) {
            Ok(scan) => scan,
            Err(e) => return self.fail(format!("scanning keys for tombstone GC failed: {e}")),
        };
        self.gc_cursor = scan.last;
        let keys = scan.keys;
        if keys.is_empty() {
            return;
        }
        match self.resolver.handle_gc(keys, &stable, store) {
            Ok(n) => self.stats.keys_collected += n as u64,
            Err(e) => self.fail(format!("reading keys for tombstone GC failed: {e}")),
        }
    }

    /// Moves outputs between behaviours until nothing changes.
    fn drive(&mut self, now_ms: u64, store: &(impl StateRead + OpLog)) {
        self.last_now_ms = now_ms;
        while let Some(output) = self.resolver.poll_output() {
            match output {
                Output::Persist { id, mut batch } => {
                    self.uncommitted_ops += batch.ops.len();
                    self.persists.push_back((id, batch.seen.clone(), batch.ops.len()));
                    batch.acked = std::mem::take(&mut self.acked_pending).into_iter().collect();
                    self.effects.push_back(Effect::Persist { id, batch });
                }
                Output::Written { request, dot, keyspace, summary } => {
                    let pending = self.requests.remove(&request).expect("every write was registered");
                    let spec = self.topology.keyspace(&keyspace).expect("the write's keyspace exists");
                    let mode = resolve_mode(spec.mode, spec.critical, pending.options.mode);
                    let acks = pending.options.acks.unwrap_or(spec.sync_acks);
                    let deadline = pending.arrived_ms + self.topology.config.replication.sync_timeout_ms;
                    self.written.insert(request, (dot.clone(), summary));
                    self.sync.handle_committed(request, dot, mode, acks, deadline);
                }
                Output::Ack { to, seen } => {
                    self.effects.push_back(Effect::Send { to, message: Message::Ack(Ack { seen }) });
                }
                Output::Conflict(c) => self.effects.push_back(Effect::Conflict(c)),
                Output::ChunkMerged { from } => {
                    if let Some(request) = self.incoming.get_mut(&from).and_then(|i| i.next.take()) {
                        let message = Message::SnapshotRequest(request);
                        self.effects.push_back(Effect::Send { to: from, message });
                    }
                }
            }
        }
        self.reply();
        self.transmit(now_ms, store);
        // Outcomes the planted sync-ack bug released while sending.
        self.reply();
        self.gate(now_ms);
    }

    /// Whether writes may start after `startup_wait_ms` without every peer's Hello: only on a
    /// settled store (or with the planted bug that drops this rule).
    fn startup_bound_applies(&self) -> bool {
        self.settled || self.config.planted == Some(PlantedBug::NewDiskSkipsPeers)
    }

    /// The start gate (DESIGN.md, "Durability rules"): no write is named before this DC knows
    /// which of its seqs are free. Every own op a peer reported holding must be back. And the
    /// peers must have reported: all of them, or, on a settled store (whose log names every dot
    /// this DC ever issued), as many as answered within `startup_wait_ms`. A store that is not
    /// settled (a new or replaced disk) waits for every peer however long it takes: a peer that
    /// did not answer may hold seqs this DC issued before it lost its disk. Once passed on an
    /// unsettled store, the store is marked settled ahead of the first write.
    fn gate(&mut self, now_ms: u64) {
        if self.ready {
            return;
        }
        let heard_all = self.replicators.keys().all(|p| self.hello_from.contains(p));
        let waited = now_ms >= self.started_ms + self.config.startup_wait_ms;
        self.startup_waited = waited;
        let own_back = self.durable.get(&self.local) >= self.own_reported;
        let reported = heard_all || (waited && self.startup_bound_applies());
        self.ready = reported && own_back;
        if self.ready && !self.settled {
            self.settled = true;
            let identity =
                crate::StoreIdentity { topology_fingerprint: self.topology.fingerprint(), settled: true };
            self.resolver.handle_identity(identity);
        }
    }

    fn transmit(&mut self, now_ms: u64, store: &(impl StateRead + OpLog)) {
        let mut suspect = self.suspected_peers();
        let held_long = if self.config.planted == Some(PlantedBug::NoRelay) {
            VersionVector::new()
        } else {
            self.relay.held_long(now_ms).clone()
        };
        if self.config.planted == Some(PlantedBug::NoRelay) {
            suspect.clear();
        }
        let peers: Vec<DcId> = self.replicators.keys().cloned().collect();
        for peer in peers {
            let want = self.targets(&peer, &held_long, &suspect, now_ms);
            loop {
                let r = self.replicators.get_mut(&peer).expect("listed");
                match r.poll_batch(now_ms, &want, store) {
                    Ok(Some(ops)) => {
                        if self.config.planted == Some(PlantedBug::SyncAckOnSend) {
                            let mut sent = VersionVector::new();
                            ops.iter().for_each(|op| sent.observe(&op.dot));
                            self.sync.handle_durable(&peer, &sent);
                        }
                        let message = Message::Batch(Batch { ops, trace: None, commit_times: Vec::new() });
                        self.effects.push_back(Effect::Send { to: peer.clone(), message });
                    }
                    Ok(None) => break,
                    Err(e) => return self.fail(e.to_string()),
                }
            }
            self.transfer(now_ms, &peer, store);
            let compacted = self.replicators[&peer].compacted();
            if !compacted.is_empty() && self.transfer_alarmed.get(&peer) != Some(&compacted) {
                self.transfer_alarmed.insert(peer.clone(), compacted.clone());
                let alarm = Alarm::StateTransferNeeded { peer: peer.clone(), origins: compacted };
                self.effects.push_back(Effect::Alarm(alarm));
            }
        }
    }

    /// Answers the writes the sync tracker finished.
    fn reply(&mut self) {
        while let Some(outcome) = self.sync.poll_outcome() {
            let request = match &outcome {
                SyncOutcome::Done { request, .. } | SyncOutcome::TimedOut { request, .. } => *request,
            };
            let (dot, summary) = self.written.remove(&request).expect("an outcome follows the write");
            self.effects.push_back(Effect::Reply { request, dot, outcome, summary });
        }
    }

    /// The next effect to carry out.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }
}
