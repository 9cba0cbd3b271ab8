//! One DC's behaviours wired together: the conflict resolver, one replicator per peer, the
//! sync tracker and the dial policies. The health monitor ([`crate::health::HealthMonitor`]) runs
//! beside it: the node feeds it [`Effect::Health`] and takes its verdicts in
//! [`Node::handle_health`]. Both runtimes drive this one
//! composition (the simulator directly; the node's actors through it), so the wiring between
//! behaviours exists once.
//!
//! Call order, for a runtime:
//! - [`Node::new`] from the store (its durable vector, HLC, idempotency records, acked vectors).
//! - Inputs: [`Node::handle_write`] for client writes, [`Node::handle_connected`] /
//!   [`Node::handle_disconnected`] / [`Node::handle_dial_failed`] for links,
//!   [`Node::handle_message`] for every message a peer sent, [`Node::handle_committed`] once a
//!   persist is durable (in emission order), [`Node::handle_timeout`] when
//!   [`Node::poll_timeout`] is due, [`Node::handle_health`] for the health monitor's verdicts.
//! - After each input, drain [`Node::poll_effect`] and carry the effects out in order. A
//!   [`Effect::Persist`] is committed in emission order, then reported back; nothing that
//!   depends on it is emitted before (DESIGN.md, "Durability rules").
//!
//! `now` is the runtime's monotonic clock ([`MonoMs`]), `wall` the wall clock ([`WallMs`]: HLCs,
//! skew, idempotency ages). Every read goes through `store`, which shows durable state only.

use crate::commit::{CommitBatch, OpLog, StateRead};
use crate::gate::StartGate;
use crate::gc::{stable_vector, Reports};
use crate::health::{Health, HealthConfig, HealthInput, HealthMonitor, HealthState, HealthVerdict};
use crate::hello::{check_hello, HelloRefusal};
use crate::planted::PlantedBug;
use crate::pool::DialPolicy;
use crate::replicator::{targets, RelayClock, Replicator, ReplicatorConfig, ReplicatorStats};
use crate::resolver::{ApplyError, Output, PersistId, Resolver, WriteError, WriteRequest, WriteSummary};
use crate::retention::{PeerHolding, Retention};
use crate::sync::{resolve_mode, RequestId, SyncOutcome, SyncTracker};
use crate::time::{MonoMs, WallMs};
use crate::timer::{Timer, TimerTable};
use crate::transfer::{ChunkLimits, ChunkStep, TransferIn, TransferOut};
use mesh_core::topology::{Acks, Mode};
use mesh_core::{Conflict, DcId, Dot, Hlc, Key, Keyspace, Op, ReadResult, Topology, VersionVector};
use mesh_wire::{Ack, Batch, Hello, Message, SnapshotChunk, PROTOCOL_VERSION};
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
    /// The runtime clock now.
    pub now: MonoMs,
    /// The wall clock now.
    pub wall: WallMs,
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
    /// A compaction of the log failed. The node emits its floor again at the next compaction;
    /// a store that cannot tell what the failed compaction left (the durable store) refuses
    /// further commits, and the DC restarts from it.
    CompactionFailed(String),
}

/// What the runtime must do. Each variant states its contract as MUST / MAY / DO NOT lines
/// (after foca's `Runtime` and raft-rs's `Ready`); both runtimes (the simulator's world and
/// meshd's DC actor) follow them, and the durability rules of DESIGN.md rest on them.
///
/// Every runtime MUST carry the effects out in the order [`Node::poll_effect`] returns them,
/// except where a variant says it MAY run concurrently.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Send `message` to `to`.
    /// - MUST go on the link to `to` that is up when the effect is polled (the one the last
    ///   [`Node::handle_connected`] for `to` reported), after every earlier message sent on it.
    /// - MUST be dropped if no link to `to` is up: the node resends what matters (go-back-N,
    ///   heartbeats, snapshot requests at their deadline).
    /// - DO NOT send it on a link that comes up later: a new link starts with its Hello.
    Send {
        /// The peer.
        to: DcId,
        /// The message.
        message: Message,
    },
    /// Commit `batch` durably, then call [`Node::handle_committed`]`(id)`.
    /// - MUST commit persists in emission order, each atomically (after a crash the store
    ///   holds a prefix of them, whole).
    /// - MUST call [`Node::handle_committed`] only once the batch is durable (fsync'd), and in
    ///   emission order. Replies, acks and vectors sent to peers depend on it (DESIGN.md,
    ///   "Durability rules").
    /// - MAY make several persists durable with one fsync (group commit), and MAY run the commit
    ///   off the caller's thread while later effects are carried out.
    Persist {
        /// The id to report.
        id: PersistId,
        /// What to commit.
        batch: CommitBatch,
    },
    /// Answer a client write (or a [`Node::handle_wait`]): the write is durable here, and
    /// `outcome` says which DCs confirmed it.
    /// - MUST reach the client that sent `request`, if it still waits; DO NOT answer it twice.
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
    /// Concurrent writes were resolved.
    /// - MAY be recorded and counted (operator views); nothing depends on it.
    Conflict(Conflict),
    /// Dial `peer` at `endpoint`.
    /// - MUST report exactly one outcome: [`Node::handle_connected`] (the link is up),
    ///   [`Node::handle_dial_superseded`] (it connected but a link already up was kept), or
    ///   [`Node::handle_dial_failed`].
    /// - MAY take as long as the transport needs; the node dials no second time meanwhile.
    Dial {
        /// The peer.
        peer: DcId,
        /// The endpoint.
        endpoint: String,
    },
    /// Close the link to `peer` (its Hello was refused or never came, or the failure detector
    /// judged the peer down).
    /// - MUST close the link that is up to `peer`, dropping messages not yet sent on it.
    /// - DO NOT report [`Node::handle_disconnected`] for that link: the node already counted it.
    Close {
        /// The peer.
        peer: DcId,
    },
    /// Remove the log entries `below` covers ([`crate::retention`]).
    /// - MUST NOT remove any entry above `below`.
    /// - MAY run concurrently with later effects and persists, and MAY be lost in a crash: a
    ///   log read racing it finds the entries or finds them compacted, and the node handles
    ///   both (a peer that still needs them catches up by state transfer); a restarted node
    ///   emits its floor again.
    /// - MUST report a failure with [`Node::handle_compact_failed`], so the node alarms and
    ///   emits the floor again at its next compaction.
    Compact {
        /// The floor: at or below it, every entry may go.
        below: VersionVector,
    },
    /// Raise an alarm.
    /// - MUST reach the operator (a log event, a metric); the node has already acted on it.
    Alarm(Alarm),
    /// Tell the health monitor ([`crate::health::HealthMonitor::handle`]).
    /// - MUST reach the monitor in emission order, after the node's earlier inputs to it.
    /// - MAY reach it later than the effects around it (another actor, another thread): the
    ///   monitor's verdicts come back through [`Node::handle_health`] whenever they are ready.
    /// - MAY be lost if the monitor stops; a monitor started again beside this node starts from
    ///   [`Node::health_state`] ([`crate::health::HealthMonitor::resume`]).
    Health(HealthInput),
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

#[derive(Debug, Clone)]
struct PendingWrite {
    options: WriteOptions,
    arrived_ms: u64,
}

/// Everything this DC keeps about one peer.
#[derive(Debug)]
struct Peer {
    /// Which of its ops to send it, in which batches, and when.
    replicator: Replicator,
    /// When to dial it: either DC of a pair dials while it has no link, so a DC that restarted
    /// (or lost its link) re-establishes it at once; two links at once are settled by
    /// [`crate::pool::keep_existing_link`].
    dialer: DialPolicy,
    /// How far to return its own ops (what this DC held of them when its Hello came).
    returned: u64,
    /// What it acknowledged as durable, as known (persisted or learned), for the Hello check.
    acked: VersionVector,
    /// Acks learned since the last persist, written with the next one.
    acked_pending: Option<VersionVector>,
    /// What it holds durably as far as this DC knows (direct or relayed).
    known_durable: VersionVector,
    /// Its recent reports of `seen`, for tombstone GC.
    reports: Reports,
    /// The health monitor's last verdict on it (down until told otherwise, as the monitor
    /// starts).
    health: Health,
    /// The health monitor counts it as suspected: its ops are relayed for it, and no state
    /// transfer starts to it.
    suspected: bool,
    /// The number of its link, if one is up (numbered by [`Node::handle_connected`], so a
    /// verdict about an earlier link is told apart).
    link: Option<u64>,
    /// It came back with less than it had acknowledged (see `learn_durable`), and has not yet
    /// reported holding it all again.
    regressed: bool,
    /// Batches or snapshot chunks from it that could not be applied, and the last reason: a
    /// stream stalled on an op (an operator must see it).
    apply_failures: Option<(u64, String)>,
    /// Batches from it that arrived past a gap, oldest first (see `on_batch`).
    held_back: VecDeque<Vec<Op>>,
    /// The compacted origins last alarmed about.
    transfer_alarmed: Option<Vec<DcId>>,
    /// State transfer to it, until it holds the snapshot's vector.
    transfer_out: TransferOut,
    /// State transfer from it.
    transfer_in: TransferIn,
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
    peers: BTreeMap<DcId, Peer>,
    /// Durable here: the vector every emitted vector comes from.
    durable: VersionVector,
    /// Persists awaiting their commit, with the vector and the number of ops they add.
    persists: VecDeque<(PersistId, VersionVector, usize)>,
    relay: RelayClock,
    requests: BTreeMap<RequestId, PendingWrite>,
    written: BTreeMap<RequestId, (Dot, Option<WriteSummary>)>,
    gate: StartGate,
    retention: Retention,
    /// Where the tombstone walk stands.
    gc_cursor: Option<(Keyspace, Key)>,
    /// The deadlines the node sets itself (the machines keep their own).
    timers: TimerTable,
    failed: bool,
    /// Ops in persists not yet committed (backpressure).
    uncommitted_ops: usize,
    /// The runtime clock at the last input, for views that take no time (`queued_ops`).
    last_now_ms: u64,
    next_transfer: u64,
    /// Links that came up so far: the number of the last one ([`Peer::link`]).
    links_connected: u64,
    effects: VecDeque<Effect>,
    stats: NodeStats,
}

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
        let Startup { now: MonoMs(now_ms), wall: WallMs(wall_ms), seen, mut acked, settled } = startup;
        let mut resolver = Resolver::new(local.clone(), topology.clone(), seen.clone());
        if let Some(bug) = config.planted {
            resolver.plant(bug);
        }
        // The highest HLC among the log's last ops, so local writes keep ordering after the
        // ones before the restart even if the wall clock went backwards.
        let mut last_hlc: Option<Hlc> = None;
        let mut failed = false;
        for (origin, seq) in seen.iter() {
            match store.read_ops(origin, seq.saturating_sub(1), 1, usize::MAX) {
                Ok(ops) => last_hlc = last_hlc.max(ops.last().map(|op| op.hlc)),
                Err(crate::LogReadError::Compacted { .. }) => {}
                Err(crate::LogReadError::Store(_)) => failed = true,
            }
        }
        if let Some(hlc) = last_hlc {
            resolver.handle_restored_hlc(hlc, WallMs(wall_ms));
        }
        let window_ms = resolver.idempotency_window_ms();
        match store.idempotency_records(wall_ms.saturating_sub(window_ms)) {
            Ok(records) => resolver.handle_restored_idempotency(records, MonoMs(now_ms), WallMs(wall_ms)),
            Err(_) => failed = true,
        }
        let r = &topology.config.replication;
        let peers: BTreeMap<DcId, Peer> = topology
            .dcs
            .iter()
            .filter(|d| d.active && d.id != local)
            .map(|d| {
                let endpoints = d.endpoints.iter().map(|e| e.address.clone()).collect();
                let dialer = DialPolicy::new(
                    endpoints,
                    r.retry_attempts,
                    r.retry_delay_ms,
                    r.retry_delay_max_ms,
                    now_ms,
                );
                let acked = acked.remove(&d.id).unwrap_or_default();
                let peer = Peer {
                    replicator: Replicator::new(local.clone(), d.id.clone(), config.replicator.clone()),
                    dialer,
                    returned: 0,
                    known_durable: acked.clone(),
                    acked,
                    acked_pending: None,
                    reports: Reports::default(),
                    health: Health::Down,
                    suspected: false,
                    link: None,
                    regressed: false,
                    apply_failures: None,
                    held_back: VecDeque::new(),
                    transfer_alarmed: None,
                    transfer_out: TransferOut::default(),
                    transfer_in: TransferIn::default(),
                };
                (d.id.clone(), peer)
            })
            .collect();
        let open = peers.is_empty() || !r.enabled;
        let bounded = settled || config.planted == Some(PlantedBug::NewDiskSkipsPeers);
        let gate =
            StartGate::new(peers.keys().cloned(), now_ms, config.startup_wait_ms, settled, bounded, open);
        let mut timers = TimerTable::default();
        timers.set(Timer::Gc, now_ms + config.gc_interval_ms);
        timers.set(Timer::Compact, now_ms + config.compact_interval_ms);
        let mut node = Self {
            sync: SyncTracker::new(local.clone(), peers.keys().cloned(), config.sync_waiting_max),
            relay: RelayClock::new(config.relay_delay_ms, seen.clone()),
            retention: Retention::new(config.log_retention_age_ms, config.log_retention_bytes),
            local,
            topology,
            rng,
            resolver,
            peers,
            durable: seen,
            persists: VecDeque::new(),
            requests: BTreeMap::new(),
            written: BTreeMap::new(),
            gate,
            gc_cursor: None,
            timers,
            config,
            failed: false,
            uncommitted_ops: 0,
            last_now_ms: now_ms,
            next_transfer: 1,
            links_connected: 0,
            effects: VecDeque::new(),
            stats: NodeStats::default(),
        };
        node.effects.push_back(Effect::Health(HealthInput::LocalSeen(node.durable.clone())));
        if failed {
            node.fail("reading the store at start failed".into());
        }
        node
    }

    /// The health monitor to run beside this node from its start: of its peers, with its
    /// configuration, first due at `now`. The node's first effect tells it the durable vector.
    pub fn health_monitor(&self, now: MonoMs) -> HealthMonitor {
        HealthMonitor::new(self.peers.keys().cloned(), self.config.health.clone(), now)
    }

    /// A health monitor started again beside this node while it runs (the runtime's monitor
    /// stopped): [`HealthMonitor::resume`] from [`Node::health_state`].
    pub fn resume_health_monitor(&self, now: MonoMs) -> HealthMonitor {
        HealthMonitor::resume(
            self.peers.keys().cloned(),
            self.config.health.clone(),
            now,
            self.health_state(),
        )
    }

    /// What a health monitor started beside this running node needs to know: the durable
    /// vector, the peers with a link up (open or awaiting its Hello), those whose link is open,
    /// what each peer is known to hold, and the verdicts this node holds.
    pub fn health_state(&self) -> HealthState {
        let mut inputs = vec![HealthInput::LocalSeen(self.durable.clone())];
        if self.failed {
            inputs.push(HealthInput::Halted);
        }
        for (id, p) in &self.peers {
            if let Some(link) = p.link {
                inputs.push(HealthInput::LinkUp { peer: id.clone(), link });
            }
            if p.replicator.is_open() {
                inputs.push(HealthInput::LinkOpen(id.clone()));
            }
            if !p.known_durable.is_empty() {
                inputs.push(HealthInput::PeerDurable { peer: id.clone(), seen: p.known_durable.clone() });
            }
        }
        let verdicts = self.peers.iter().map(|(id, p)| (id.clone(), (p.health, p.suspected))).collect();
        HealthState { inputs, verdicts, clock_skewed: self.resolver.clock_skewed() }
    }

    /// The health monitor's verdict ([`crate::health::HealthOutput::Verdict`]). A peer that
    /// fell silent on the link up now has it closed and dialed again, rather than held until
    /// the transport's idle timeout (a dead process, a one-way cut, a half-open connection). A
    /// clock judged skewed refuses writes that order by time (DESIGN.md, "Clock skew").
    pub fn handle_health(&mut self, now: MonoMs, verdict: HealthVerdict, store: &(impl StateRead + OpLog)) {
        let now_ms = now.0;
        match verdict {
            HealthVerdict::Peer { peer, health, suspected } => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.health = health;
                    p.suspected = suspected;
                }
            }
            HealthVerdict::Silent { peer, link } => {
                if self.peers.get(&peer).is_some_and(|p| p.link == Some(link)) {
                    self.effects.push_back(Effect::Close { peer: peer.clone() });
                    self.disconnect(now_ms, &peer);
                }
            }
            HealthVerdict::ClockSkewed(skewed) => self.resolver.handle_clock_skewed(skewed),
        }
        self.drive(now_ms, store);
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
        self.gate.is_ready() && !self.failed
    }

    /// Counters.
    pub fn stats(&self) -> NodeStats {
        NodeStats {
            hlc_beyond_skew: self.resolver.skew_excess_events(),
            transfers_sent: self.peers.values().map(|p| p.transfer_out.taken()).sum(),
            transfers_received: self.peers.values().map(|p| p.transfer_in.received()).sum(),
            ..self.stats
        }
    }

    /// The replicator of `peer`'s link, for its counters.
    pub fn replicator(&self, peer: &DcId) -> Option<&Replicator> {
        self.peers.get(peer).map(|p| &p.replicator)
    }

    /// Counters of every link.
    pub fn link_stats(&self) -> BTreeMap<DcId, ReplicatorStats> {
        self.peers.iter().map(|(id, p)| (id.clone(), p.replicator.stats())).collect()
    }

    /// Ops this DC holds durably, has to send to `peer` (by the relay rule, [`targets`]) and
    /// that `peer` has not reported durable yet: its replication queue.
    pub fn queued_ops(&self, peer: &DcId) -> u64 {
        self.backlog(peer).iter().map(|(_, after, upto)| upto - after).sum()
    }

    /// What this DC still has to get to `peer`, per origin: (origin, the last seq the peer is
    /// known to hold, the last seq to send it). Empty for an unknown peer.
    pub fn backlog(&self, peer: &DcId) -> Vec<(DcId, u64, u64)> {
        let Some(p) = self.peers.get(peer) else { return Vec::new() };
        let want = self.targets(peer, self.relay.held_long_now(), &self.suspected_peers(), self.last_now_ms);
        want.iter()
            .map(|(origin, upto)| (origin.clone(), p.replicator.peer_seen().get(origin), upto))
            .filter(|(_, held, upto)| upto > held)
            .collect()
    }

    /// The peers the health monitor suspects.
    fn suspected_peers(&self) -> BTreeSet<DcId> {
        self.peers.iter().filter(|(_, p)| p.suspected).map(|(id, _)| id.clone()).collect()
    }

    /// Per origin, the last seq to get to `peer` ([`targets`]).
    fn targets(
        &self,
        peer: &DcId,
        held_long: &VersionVector,
        suspect: &BTreeSet<DcId>,
        now_ms: u64,
    ) -> VersionVector {
        let p = &self.peers[peer];
        let mut direct = p.replicator.direct_progress(now_ms, self.config.relay_delay_ms);
        if p.replicator.opened_within(now_ms, self.config.relay_delay_ms) {
            // A link just opened relays nothing yet: the peer's other links opened with it.
            direct.extend(self.durable.iter().map(|(origin, _)| origin.clone()));
        }
        targets(&self.local, peer, &self.durable, held_long, p.returned, suspect, &direct)
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
            self.effects.push_back(Effect::Health(HealthInput::Halted));
        }
    }

    /// A client write of request `write.request`. On `Ok` the node answers it later with one
    /// [`Effect::Reply`]; on `Err` nothing was written.
    pub fn handle_write(
        &mut self,
        now: MonoMs,
        wall: WallMs,
        write: WriteRequest,
        options: WriteOptions,
        store: &(impl StateRead + OpLog),
    ) -> Result<(), NodeWriteError> {
        let mut results = self.handle_write_batch(now, wall, vec![(write, options)], store);
        results.pop().expect("one answer per write")
    }

    /// Client writes, applied in order as if each came alone, but committed together: the
    /// writes accepted share one persist. Returns each write's answer as
    /// [`Node::handle_write`] would.
    pub fn handle_write_batch(
        &mut self,
        now: MonoMs,
        wall: WallMs,
        writes: Vec<(WriteRequest, WriteOptions)>,
        store: &(impl StateRead + OpLog),
    ) -> Vec<Result<(), NodeWriteError>> {
        let (now_ms, wall_ms) = (now.0, wall.0);
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
        if let Err(e) = self.resolver.handle_write(MonoMs(now_ms), WallMs(wall_ms), write, store) {
            self.requests.remove(&request);
            return Err(e.into());
        }
        Ok(())
    }

    /// Redis' `WAIT`: answers `request` with one [`Effect::Reply`] (dot `local:seq`, no summary)
    /// once `replicas` other DCs durably hold this DC's ops up to `seq` (a connection's last
    /// write), or at `now_ms + timeout_ms` with those that do. `seq` must be at least 1 and
    /// durable here (the write was answered). [`NodeWriteError::SyncBusy`] when as many sync
    /// waits as allowed are pending.
    pub fn handle_wait(
        &mut self,
        now: MonoMs,
        request: RequestId,
        seq: u64,
        replicas: usize,
        timeout_ms: u64,
    ) -> Result<(), NodeWriteError> {
        let now_ms = now.0;
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
    pub fn handle_committed(&mut self, now: MonoMs, id: PersistId, store: &(impl StateRead + OpLog)) {
        let now_ms = now.0;
        let (oldest, seen, ops) = self.persists.pop_front().expect("a commit was awaited");
        assert_eq!(oldest, id, "commits are reported in emission order");
        assert!(ops <= self.uncommitted_ops, "a persist's ops were counted when it was emitted");
        self.uncommitted_ops -= ops;
        self.durable.join(&seen);
        self.resolver.handle_committed(id);
        self.effects.push_back(Effect::Health(HealthInput::LocalSeen(self.durable.clone())));
        self.relay.record(now_ms, &self.durable);
        self.drive(now_ms, store);
    }

    /// An [`Effect::Compact`] failed with `detail`: alarmed, and the floor is emitted again at
    /// the next compaction.
    pub fn handle_compact_failed(&mut self, detail: String) {
        self.retention.handle_failed();
        self.effects.push_back(Effect::Alarm(Alarm::CompactionFailed(detail)));
    }

    /// A link to `peer` is up (dialed by this DC or accepted): the Hello goes first.
    pub fn handle_connected(&mut self, now: MonoMs, peer: &DcId) {
        let now_ms = now.0;
        let Some(p) = self.peers.get_mut(peer) else { return };
        p.dialer.handle_connected(now_ms);
        self.links_connected += 1;
        let link = self.links_connected;
        p.link = Some(link);
        self.effects.push_back(Effect::Health(HealthInput::LinkUp { peer: peer.clone(), link }));
        self.timers.set(Timer::Hello(peer.clone()), now_ms + self.config.replicator.retransmit_ms);
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
    pub fn handle_dial_superseded(&mut self, now: MonoMs, peer: &DcId) {
        let now_ms = now.0;
        if let Some(p) = self.peers.get_mut(peer) {
            p.dialer.handle_connected(now_ms);
        }
    }

    /// A dial of `peer` failed. Ignored if a link came up meanwhile (the peer dialed in).
    pub fn handle_dial_failed(&mut self, now: MonoMs, peer: &DcId) {
        let now_ms = now.0;
        if let Some(p) = self.peers.get_mut(peer).filter(|p| p.dialer.is_dialing()) {
            p.dialer.handle_failed(now_ms, &mut self.rng);
        }
    }

    /// The link to `peer` dropped.
    pub fn handle_disconnected(&mut self, now: MonoMs, peer: &DcId) {
        self.disconnect(now.0, peer);
    }

    fn disconnect(&mut self, now_ms: u64, peer: &DcId) {
        let Some(p) = self.peers.get_mut(peer) else { return };
        if p.replicator.is_open() {
            self.effects.push_back(Effect::Health(HealthInput::LinkClosed(peer.clone())));
        }
        p.link = None;
        p.replicator.handle_close(now_ms);
        // A transfer restarts from a fresh snapshot on the next link, and the next link resends
        // what was held back.
        p.transfer_out.cancel();
        p.transfer_in.cancel();
        p.held_back.clear();
        self.timers.stop(&Timer::Hello(peer.clone()));
        // Connected (or dialing): the loss counts as a failure, so a link refused at its Hello
        // or flapping backs off.
        if p.dialer.poll_timeout().is_none() {
            p.dialer.handle_failed(now_ms, &mut self.rng);
        }
    }

    /// A message from `peer`, whose identity the transport proved (its certificate).
    pub fn handle_message(
        &mut self,
        now: MonoMs,
        wall: WallMs,
        peer: &DcId,
        message: Message,
        store: &(impl StateRead + OpLog),
    ) {
        let (now_ms, wall_ms) = (now.0, wall.0);
        let Some(p) = self.peers.get(peer) else { return };
        // Before the Hello, the link is not accepted yet: only the Hello counts.
        let open = p.replicator.is_open();
        match message {
            Message::Hello(hello) => self.on_hello(now_ms, peer, hello),
            Message::Batch(batch) if open => self.on_batch(wall_ms, peer, batch.ops, store),
            Message::Ack(Ack { seen }) => {
                self.learn_durable(peer, &seen, true);
                let p = self.peers.get_mut(peer).expect("a peer");
                p.acked.join(&seen);
                p.acked_pending.get_or_insert_with(VersionVector::new).join(&seen);
                p.reports.record(seen);
            }
            Message::Heartbeat(heartbeat) => {
                let (seen, known) = (heartbeat.seen.clone(), heartbeat.known.clone());
                let input = HealthInput::Heartbeat { from: peer.clone(), heartbeat, at: now, wall };
                self.effects.push_back(Effect::Health(input));
                self.learn_durable(peer, &seen, true);
                self.peers.get_mut(peer).expect("a peer").reports.record(seen);
                for (dc, vv) in known {
                    if dc != self.local {
                        self.learn_durable(&dc, &vv, false);
                        // A DC's vector relayed by another is still that DC's report, so
                        // tombstones are collected across a cut link too.
                        if let Some(other) = self.peers.get_mut(&dc) {
                            other.reports.record(vv);
                        }
                    }
                }
            }
            Message::SnapshotChunk(chunk) if open => self.on_snapshot_chunk(peer, chunk, store),
            Message::SnapshotRequest(request) if open => {
                let entries_max = request.entries_max as usize;
                let limits = self.chunk_limits();
                let p = self.peers.get_mut(peer).expect("a peer");
                let chunk = p.transfer_out.handle_request(
                    now_ms,
                    request.request_id,
                    request.after,
                    entries_max,
                    limits,
                );
                self.send_chunk(peer, chunk);
            }
            Message::Batch(_) | Message::SnapshotChunk(_) | Message::SnapshotRequest(_) => {}
        }
        self.drive(now_ms, store);
    }

    fn chunk_limits(&self) -> ChunkLimits {
        ChunkLimits {
            entries_max: self.config.snapshot_entries,
            bytes_max: self.config.replicator.batch_bytes_max,
            retransmit_ms: self.config.replicator.retransmit_ms,
        }
    }

    /// Sends a snapshot chunk the transfer to `peer` cut, or fails on a store error.
    fn send_chunk(&mut self, peer: &DcId, chunk: Result<Option<SnapshotChunk>, crate::SnapshotError>) {
        match chunk {
            Ok(Some(chunk)) => {
                let message = Message::SnapshotChunk(chunk);
                self.effects.push_back(Effect::Send { to: peer.clone(), message });
            }
            Ok(None) => {}
            Err(e) => self.fail(format!("reading a snapshot for {peer} failed: {e}")),
        }
    }

    /// A chunk of a peer's snapshot: merge it, then (once durable) ask for the next, or finish
    /// the transfer.
    fn on_snapshot_chunk(&mut self, peer: &DcId, chunk: SnapshotChunk, store: &(impl StateRead + OpLog)) {
        let entries_max = u32::try_from(self.config.snapshot_entries).unwrap_or(u32::MAX);
        let step = self.peers.get_mut(peer).expect("a peer").transfer_in.handle_chunk(&chunk, entries_max);
        let SnapshotChunk { vector, entries, .. } = chunk;
        if let Err(error) = self.resolver.handle_snapshot_chunk(peer, entries, store) {
            self.peers.get_mut(peer).expect("a peer").transfer_in.cancel();
            self.apply_failed(peer, error);
            return;
        }
        if step == ChunkStep::MergeLast {
            self.peers.get_mut(peer).expect("a peer").transfer_in.handle_done();
            self.resolver.handle_snapshot_done(peer, &vector);
        }
    }

    /// A batch of ops from `peer`. One that starts past a gap (a batch before it was lost or
    /// overtaken) is held back rather than dropped, and applied as soon as the gap fills, so a
    /// reordered or lost batch costs one resend, not the window behind it. At most
    /// `inflight_max` batches are held per peer (the oldest goes first: the sender resends it).
    fn on_batch(&mut self, wall_ms: u64, peer: &DcId, ops: Vec<Op>, store: &(impl StateRead + OpLog)) {
        if !self.applies_now(&ops) {
            self.stats.gaps += 1;
            let held = &mut self.peers.get_mut(peer).expect("a peer").held_back;
            held.push_back(ops);
            while held.len() > self.config.replicator.inflight_max {
                held.pop_front();
            }
            return;
        }
        self.apply_batch(wall_ms, peer, ops, store);
        // What was held back may apply now (a gap can be filled by any peer's batch).
        while let Some((from, i)) = self.peers.iter().find_map(|(from, p)| {
            p.held_back.iter().position(|ops| self.applies_now(ops)).map(|i| (from.clone(), i))
        }) {
            let ops = self.peers.get_mut(&from).and_then(|p| p.held_back.remove(i)).expect("found");
            self.apply_batch(wall_ms, &from, ops, store);
        }
        let applied = self.resolver.applied();
        for p in self.peers.values_mut() {
            p.held_back.retain(|ops| !ops.iter().all(|op| applied.covers(&op.dot)));
        }
    }

    /// Whether the first op of each origin in `ops` is at most one past what was applied.
    fn applies_now(&self, ops: &[Op]) -> bool {
        let applied = self.resolver.applied();
        let mut checked = BTreeSet::new();
        ops.iter().all(|op| !checked.insert(&op.dot.origin) || op.dot.seq <= applied.get(&op.dot.origin) + 1)
    }

    fn apply_batch(&mut self, wall_ms: u64, peer: &DcId, ops: Vec<Op>, store: &(impl StateRead + OpLog)) {
        match self.resolver.handle_batch(WallMs(wall_ms), peer, ops, store) {
            Ok(()) => {}
            Err(ApplyError::Gap { .. }) => self.stats.gaps += 1,
            Err(error) => self.apply_failed(peer, error),
        }
    }

    /// What `peer` sent could not be applied: counted, kept for status, and alarmed.
    fn apply_failed(&mut self, peer: &DcId, error: ApplyError) {
        let p = self.peers.get_mut(peer).expect("a peer");
        let failures = p.apply_failures.get_or_insert((0, String::new()));
        failures.0 += 1;
        failures.1 = error.to_string();
        self.effects.push_back(Effect::Alarm(Alarm::ApplyFailed { peer: peer.clone(), error }));
    }

    /// Whether `peer` came back with less than it had acknowledged and has not yet reported
    /// holding all of it again (it lost its disk, or was restored from an old copy).
    pub fn peer_regressed(&self, peer: &DcId) -> bool {
        self.peers.get(peer).is_some_and(|p| p.regressed)
    }

    /// Batches and snapshot chunks from `peer` that could not be applied (other than gaps,
    /// which a resend repairs), and the last reason: replication from it is stalled.
    pub fn apply_failures(&self, peer: &DcId) -> Option<&(u64, String)> {
        self.peers.get(peer).and_then(|p| p.apply_failures.as_ref())
    }

    /// Starts a state transfer to `peer` if it needs one, none is under way and the peer looks
    /// alive (a snapshot cut for a silent peer would be for nobody); forgets a finished one once
    /// the peer holds its vector, and an abandoned one at its deadline.
    fn transfer(&mut self, now_ms: u64, peer: &DcId, store: &(impl StateRead + OpLog)) {
        let p = self.peers.get_mut(peer).expect("a peer");
        p.transfer_out.handle_progress(now_ms, p.replicator.peer_seen());
        if p.replicator.compacted().is_empty() || p.transfer_out.is_active() || p.suspected {
            return;
        }
        let snapshot = match store.snapshot() {
            Ok(s) => s,
            Err(e) => return self.fail(format!("cutting a snapshot for {peer} failed: {e}")),
        };
        let id = self.next_transfer;
        self.next_transfer += 1;
        let limits = self.chunk_limits();
        let chunk =
            self.peers.get_mut(peer).expect("a peer").transfer_out.start(now_ms, id, snapshot, limits);
        self.send_chunk(peer, chunk);
    }

    fn on_hello(&mut self, now_ms: u64, peer: &DcId, hello: Hello) {
        let p = &self.peers[peer];
        if p.replicator.is_open() {
            return; // A duplicate: the link's position must not rewind.
        }
        let fingerprint = hello.topology_fingerprint;
        match check_hello(&self.topology, &self.local, peer, &hello.dc, fingerprint, &hello.seen, &p.acked) {
            Err(refusal) => {
                self.stats.links_refused += 1;
                self.effects.push_back(Effect::Alarm(Alarm::LinkRefused { peer: peer.clone(), refusal }));
                self.effects.push_back(Effect::Close { peer: peer.clone() });
                self.disconnect(now_ms, peer);
            }
            Ok(accepted) => {
                let p = self.peers.get_mut(peer).expect("a peer");
                if let Some(lost) = accepted.regressed {
                    p.regressed = true;
                    // What it held before the loss no longer counts for the log floor.
                    p.known_durable = hello.seen.clone();
                    self.effects.push_back(Effect::Alarm(Alarm::PeerRegressed { peer: peer.clone(), lost }));
                }
                p.returned = self.durable.get(peer);
                self.timers.stop(&Timer::Hello(peer.clone()));
                let own = hello.seen.get(&self.local);
                self.resolver.handle_peer_seen(own);
                self.gate.handle_hello(peer, own);
                self.learn_durable(peer, &hello.seen, true);
                let p = self.peers.get_mut(peer).expect("a peer");
                p.replicator.handle_open(now_ms, &accepted.resume_from);
                self.effects.push_back(Effect::Health(HealthInput::LinkOpen(peer.clone())));
            }
        }
    }

    /// `dc` is known to hold `seen` durably: it said so itself (`direct`), or another DC relayed
    /// it. For a DC that came back with less than it had acknowledged (its Hello regressed), only
    /// its own word moves its replicator: vectors relayed by others may predate the loss and
    /// would stop this DC from sending the lost ops again.
    fn learn_durable(&mut self, dc: &DcId, seen: &VersionVector, direct: bool) {
        if let Some(p) = self.peers.get_mut(dc) {
            if direct && p.regressed && seen.dominates(&p.acked) {
                p.regressed = false;
            }
            if direct || !p.regressed {
                p.replicator.handle_peer_seen(seen);
                p.known_durable.join(seen);
            }
        }
        self.sync.handle_durable(dc, seen);
        if direct && self.peers.contains_key(dc) {
            let input = HealthInput::PeerDurable { peer: dc.clone(), seen: seen.clone() };
            self.effects.push_back(Effect::Health(input));
        }
    }

    /// Every deadline now armed: the node's own and each machine's.
    fn deadlines(&self) -> impl Iterator<Item = (Timer, u64)> + '_ {
        let own = self.timers.iter().map(|(t, at)| (t.clone(), at));
        let machines = [
            (Timer::Sync, self.sync.poll_timeout()),
            (Timer::Relay, self.relay.poll_timeout()),
            (Timer::StartGate, self.gate.poll_timeout()),
        ];
        let relay_delay_ms = self.config.relay_delay_ms;
        let peers = self.peers.iter().flat_map(move |(id, p)| {
            // The end of a just-opened link's wait: the relay may start then.
            let wait_ends = p.replicator.opened_wait_ends(relay_delay_ms).filter(|at| *at > self.last_now_ms);
            [
                (Timer::Relay, wait_ends),
                (Timer::Replicator(id.clone()), p.replicator.poll_timeout()),
                (Timer::Dial(id.clone()), p.dialer.poll_timeout()),
                (Timer::Transfer(id.clone()), p.transfer_out.poll_timeout()),
            ]
        });
        let armed = machines.into_iter().chain(peers).filter_map(|(t, at)| Some((t, at?)));
        own.chain(armed)
    }

    /// When [`Node::handle_timeout`] is next due; `None` once the DC failed (it serves nothing
    /// until the runtime restarts it from its store).
    pub fn poll_timeout(&self) -> Option<MonoMs> {
        if self.failed {
            return None;
        }
        self.deadlines().map(|(_, at)| at).min().map(MonoMs)
    }

    /// Timers due at `now_ms`, handled in [`Timer`]'s order.
    pub fn handle_timeout(&mut self, now: MonoMs, store: &(impl StateRead + OpLog)) {
        let now_ms = now.0;
        let mut due: Vec<Timer> = self.deadlines().filter(|(_, at)| *at <= now_ms).map(|(t, _)| t).collect();
        due.sort();
        for timer in due {
            self.on_timer(timer, now_ms, store);
        }
        self.drive(now_ms, store);
    }

    /// One due timer. Each machine checks its own deadline again (an earlier timer of this round
    /// may have moved it); the wake-up-only timers (relay, start gate, transfer) are served by
    /// the `drive` that follows.
    fn on_timer(&mut self, timer: Timer, now_ms: u64, store: &(impl StateRead + OpLog)) {
        match timer {
            Timer::Hello(peer) => {
                // The link never said Hello: closed and dialed again rather than left silent.
                if self.timers.is_due(&Timer::Hello(peer.clone()), now_ms) {
                    self.timers.stop(&Timer::Hello(peer.clone()));
                    self.effects.push_back(Effect::Close { peer: peer.clone() });
                    self.disconnect(now_ms, &peer);
                }
            }
            Timer::Sync => self.sync.handle_timeout(now_ms),
            Timer::Replicator(peer) => {
                self.peers.get_mut(&peer).expect("a peer").replicator.handle_timeout(now_ms)
            }
            Timer::Dial(peer) => {
                if let Some(dial) = self.peers.get_mut(&peer).expect("a peer").dialer.poll_dial(now_ms) {
                    self.effects.push_back(Effect::Dial { peer, endpoint: dial.endpoint });
                }
            }
            Timer::Compact => {
                self.timers.set(Timer::Compact, now_ms + self.config.compact_interval_ms);
                self.compact(now_ms, store);
            }
            Timer::Gc => {
                self.timers.set(Timer::Gc, now_ms + self.config.gc_interval_ms);
                self.collect_tombstones(store);
            }
            Timer::Transfer(_) | Timer::Relay | Timer::StartGate => {}
        }
    }

    /// Emits a compaction of the log if its floor rose ([`crate::retention`]).
    fn compact(&mut self, now_ms: u64, store: &(impl StateRead + OpLog)) {
        let log_bytes = match store.log_bytes() {
            Ok(bytes) => bytes,
            Err(e) => return self.fail(format!("reading the log size failed: {e}")),
        };
        let holdings: Vec<PeerHolding<'_>> = self
            .peers
            .values()
            .map(|p| PeerHolding { known: &p.known_durable, connected: p.replicator.is_open() })
            .collect();
        let planted = self.config.planted == Some(PlantedBug::CompactBelowLaggingPeer);
        if let Some(below) = self.retention.handle_tick(now_ms, &self.durable, &holdings, log_bytes, planted)
        {
            self.effects.push_back(Effect::Compact { below });
        }
    }

    /// One round of tombstone GC over the next keys, below the stable vector ([`crate::gc`]).
    fn collect_tombstones(&mut self, store: &(impl StateRead + OpLog)) {
        let stable = if self.config.planted == Some(PlantedBug::EarlyTombstoneGc) {
            self.durable.clone()
        } else {
            let reports = self.peers.iter_mut().map(|(id, p)| (id, &mut p.reports));
            let Some(stable) = stable_vector(&self.durable, reports) else { return };
            stable
        };
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
                    batch.acked = self
                        .peers
                        .iter_mut()
                        .filter_map(|(id, p)| Some((id.clone(), p.acked_pending.take()?)))
                        .collect();
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
                    if let Some(request) =
                        self.peers.get_mut(&from).and_then(|p| p.transfer_in.poll_request())
                    {
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
        if self.gate.handle_progress(now_ms, self.durable.get(&self.local)) {
            // The gate opened on a store that had not passed it: recorded before the first write.
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
        let peers: Vec<DcId> = self.peers.keys().cloned().collect();
        for peer in peers {
            let want = self.targets(&peer, &held_long, &suspect, now_ms);
            loop {
                let r = &mut self.peers.get_mut(&peer).expect("listed").replicator;
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
            let p = self.peers.get_mut(&peer).expect("listed");
            let compacted = p.replicator.compacted();
            if !compacted.is_empty() && p.transfer_alarmed.as_ref() != Some(&compacted) {
                p.transfer_alarmed = Some(compacted.clone());
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
