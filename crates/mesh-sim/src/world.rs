//! The simulated world: N DCs, each the real [`mesh_engine::node::Node`] over a
//! [`mesh_store::MemStore`], on one seeded discrete-event scheduler with a simulated network,
//! disk and clocks. Everything random comes from the seed; everything iterated is ordered, so a
//! seed always replays the same run (its trace hash says so).

use crate::checkers::{self, Checkers};
use crate::history::History;
use crate::scenario::{FaultKind, KeyDistribution, Scenario};
use mesh_core::topology::Mode;
use mesh_core::{DcId, Dot, Key, Keyspace, Op, OpKind, ReadValue, VersionVector};
use mesh_engine::node::{Effect, Node, NodeConfig, NodeWriteError, Startup, WriteOptions};
use mesh_engine::resolver::WriteRequest;
use mesh_engine::PlantedBug;
use mesh_store::{LogRead, MemStore, Store};
use mesh_wire::{Codec, CodecConfig, Message};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_bytes::ByteBuf;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::Arc;
use xxhash_rust::xxh3::Xxh3;

/// The wall clock of the simulation's start (2026-01-01), so HLCs look like real ones.
const EPOCH_MS: u64 = 1_767_225_600_000;
/// How often the checkers sample the world, ms.
const SAMPLE_MS: u64 = 100;

/// How to run a scenario.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The seed.
    pub seed: u64,
    /// A bug to plant in every DC (test only).
    pub planted: Option<PlantedBug>,
    /// Keep a line per event (for `meshsim replay`).
    pub trace: bool,
}

/// Counters of a run.
#[derive(Debug, Clone, Default)]
pub struct RunStats {
    /// Client writes accepted (named and persisted).
    pub writes: u64,
    /// Client writes refused (DC starting, clock skewed, too many siblings …).
    pub refused: u64,
    /// Ops delivered in batches to a live DC.
    pub ops_delivered: u64,
    /// Messages sent.
    pub messages: u64,
    /// Wire bytes of those messages (encoded frames, compressed as configured).
    pub wire_bytes: u64,
    /// Conflict records per strategy (summed over DCs).
    pub conflicts: BTreeMap<String, u64>,
    /// Times from each heal to convergence, ms.
    pub convergence_ms: Vec<u64>,
    /// Largest lag seen between connected DCs, ms.
    pub lag_ms_max: u64,
    /// Crashes.
    pub crashes: u64,
    /// Events processed.
    pub events: u64,
    /// Ops that became durable at their origin.
    pub ops: u64,
    /// State transfers completed (received and applied).
    pub transfers: u64,
    /// State transfers senders counted as started (the peer took them up).
    pub transfers_sent: u64,
}

/// The outcome of one seed.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// The seed.
    pub seed: u64,
    /// The trace hash: equal for equal runs.
    pub trace_hash: u64,
    /// What went wrong, if anything.
    pub violations: Vec<crate::history::Violation>,
    /// Counters.
    pub stats: RunStats,
    /// The event trace, when asked for.
    pub trace: Vec<String>,
}

impl RunResult {
    /// Whether every checker passed.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

#[derive(Debug)]
enum Event {
    Write { dc: usize },
    Deliver { from: usize, to: usize, conn: u64, message: Message },
    Sync { dc: usize, incarnation: u32 },
    Timer { dc: usize, incarnation: u32 },
    DialDone { dc: usize, peer: usize, incarnation: u32 },
    IdleClose { a: usize, b: usize, conn: u64 },
    Close { a: usize, b: usize, conn: u64 },
    FaultStart(usize),
    FaultEnd(usize),
    Flap { fault: usize, cut: bool },
    Sample,
}

struct Scheduled {
    at_ms: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at_ms, self.seq) == (other.at_ms, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at_ms, self.seq).cmp(&(other.at_ms, other.seq))
    }
}

/// One simulated DC.
pub(crate) struct SimDc {
    pub(crate) id: DcId,
    pub(crate) store: MemStore,
    pub(crate) node: Option<Node<StdRng>>,
    incarnation: u32,
    /// What its stores held before each disk loss (`disk-lost` faults), joined.
    seen_before_disk_loss: VersionVector,
    /// After a disk loss, the highest of its own seqs a peer held: its own seqs above are free.
    own_held_after_loss: Option<u64>,
    disks_lost: u32,
    offset_ms: i64,
    /// The time the pending timer event is for (`None`: none pending).
    timer_at: Option<u64>,
    /// Persists staged and not yet reported committed, in order, with their own ops and whether
    /// they are durable already (a compaction synced them).
    staged: Vec<(u64, Vec<Op>, bool)>,
    sync_pending: bool,
    /// Ops named here and not yet answered, by dot.
    named: BTreeMap<Dot, Op>,
}

impl SimDc {
    pub(crate) fn alive(&self) -> bool {
        self.node.is_some()
    }
}

/// A simulation of one scenario with one seed.
pub struct World {
    pub(crate) scenario: Arc<Scenario>,
    options: RunOptions,
    pub(crate) now_ms: u64,
    rng: StdRng,
    queue: BinaryHeap<Reverse<Scheduled>>,
    next_seq: u64,
    pub(crate) dcs: Vec<SimDc>,
    /// Directed cuts, counted (overlapping faults).
    cuts: BTreeMap<(usize, usize), u32>,
    /// Open connections by (lower, higher) DC index.
    conns: BTreeMap<(usize, usize), u64>,
    /// Per connection, the process incarnations of its (lower, higher) ends when it opened: a
    /// restarted process does not own its old connections, which stay half-open at the peer.
    conn_ends: BTreeMap<u64, [u32; 2]>,
    next_conn: u64,
    /// Per directed link, the latest delivery time scheduled (FIFO links).
    last_delivery: BTreeMap<(usize, usize), u64>,
    /// Faults in progress.
    active_faults: BTreeSet<usize>,
    pub(crate) history: History,
    pub(crate) stats: RunStats,
    checkers: Checkers,
    hasher: Xxh3,
    trace: Vec<String>,
    codec: Codec,
    next_request: u64,
    keyspaces: Vec<(Keyspace, u32, f64)>,
    /// Per write waiting for its reply, how many DCs must hold it (the checker's own count).
    required: BTreeMap<u64, usize>,
}

impl World {
    /// A world for `scenario` and `options`.
    pub fn new(scenario: Arc<Scenario>, options: RunOptions) -> Self {
        let rng = StdRng::seed_from_u64(options.seed);
        let dcs = scenario
            .dcs
            .iter()
            .map(|id| SimDc {
                id: id.clone(),
                store: MemStore::new(),
                node: None,
                incarnation: 0,
                seen_before_disk_loss: VersionVector::new(),
                own_held_after_loss: None,
                disks_lost: 0,
                offset_ms: 0,
                timer_at: None,
                staged: Vec::new(),
                sync_pending: false,
                named: BTreeMap::new(),
            })
            .collect();
        let codec_config = CodecConfig::from_replication(&scenario.topology.config.replication)
            .expect("the topology validated its replication settings");
        let keyspaces = scenario
            .file
            .workload
            .mix
            .iter()
            .map(|m| (Keyspace::new(&m.keyspace).expect("validated"), m.weight, m.delete))
            .collect();
        let checkers = Checkers::new(&scenario);
        Self {
            scenario,
            options,
            now_ms: 0,
            rng,
            queue: BinaryHeap::new(),
            next_seq: 0,
            dcs,
            cuts: BTreeMap::new(),
            conns: BTreeMap::new(),
            conn_ends: BTreeMap::new(),
            next_conn: 1,
            last_delivery: BTreeMap::new(),
            active_faults: BTreeSet::new(),
            history: History::default(),
            stats: RunStats::default(),
            checkers,
            hasher: Xxh3::new(),
            trace: Vec::new(),
            codec: Codec::new(codec_config).expect("valid codec settings"),
            next_request: 1,
            keyspaces,
            required: BTreeMap::new(),
        }
    }

    fn schedule(&mut self, at_ms: u64, event: Event) {
        self.next_seq += 1;
        self.queue.push(Reverse(Scheduled { at_ms, seq: self.next_seq, event }));
    }

    pub(crate) fn wall_ms(&self, dc: usize) -> u64 {
        (EPOCH_MS + self.now_ms).saturating_add_signed(self.dcs[dc].offset_ms)
    }

    /// Adds a trace line (only call when tracing: building the line costs).
    fn note(&mut self, line: String) {
        self.trace.push(format!("{:>8} {line}", self.now_ms));
    }

    fn hash(&mut self, parts: &[u64]) {
        self.hasher.update(&self.now_ms.to_le_bytes());
        for p in parts {
            self.hasher.update(&p.to_le_bytes());
        }
    }

    /// Runs the scenario to its end and judges it.
    pub fn run(mut self) -> RunResult {
        let n = self.dcs.len();
        for dc in 0..n {
            self.start_node(dc);
        }
        let rate = self.scenario.file.workload.writes_per_s;
        if rate > 0.0 {
            for dc in 0..n {
                let first = self.next_arrival_ms(rate);
                self.schedule(first, Event::Write { dc });
            }
        }
        for i in 0..self.scenario.file.faults.len() {
            let (start, end) = self.scenario.fault_window_ms(&self.scenario.file.faults[i]);
            self.schedule(start, Event::FaultStart(i));
            self.schedule(end, Event::FaultEnd(i));
        }
        self.schedule(SAMPLE_MS, Event::Sample);
        let end_ms = self.scenario.end_ms();
        while let Some(Reverse(next)) = self.queue.pop() {
            if next.at_ms > end_ms {
                break;
            }
            self.now_ms = next.at_ms;
            self.stats.events += 1;
            self.handle(next.event);
        }
        self.now_ms = end_ms;
        let mut checkers = std::mem::replace(&mut self.checkers, Checkers::new(&self.scenario));
        checkers.finish(&mut self);
        self.stats.ops = self.history.ops.len() as u64;
        for node in self.dcs.iter().filter_map(|d| d.node.as_ref()) {
            self.stats.transfers += node.stats().transfers_received;
            self.stats.transfers_sent += node.stats().transfers_sent;
        }
        let trace_hash = self.hasher.digest();
        let mut violations = std::mem::take(&mut self.history.violations);
        violations.sort_by_key(|v| v.at_ms);
        RunResult { seed: self.options.seed, trace_hash, violations, stats: self.stats, trace: self.trace }
    }

    fn next_arrival_ms(&mut self, rate_per_s: f64) -> u64 {
        // Exponential inter-arrival times (Poisson arrivals), at least 1 ms apart.
        let u: f64 = self.rng.random_range(f64::EPSILON..1.0);
        self.now_ms + ((-u.ln() / rate_per_s) * 1_000.0).max(1.0) as u64
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Write { dc } => {
                if self.now_ms < self.scenario.duration_ms() {
                    let next = self.next_arrival_ms(self.scenario.file.workload.writes_per_s);
                    self.schedule(next, Event::Write { dc });
                }
                self.client_write(dc);
            }
            Event::Deliver { from, to, conn, message } => self.deliver(from, to, conn, message),
            Event::Sync { dc, incarnation } => self.sync(dc, incarnation),
            Event::Timer { dc, incarnation } => {
                let d = &mut self.dcs[dc];
                if d.incarnation != incarnation || d.timer_at != Some(self.now_ms) {
                    return;
                }
                d.timer_at = None;
                self.hash(&[1, dc as u64]);
                let wall = self.wall_ms(dc);
                let now = self.now_ms;
                let d = &mut self.dcs[dc];
                if let Some(node) = d.node.as_mut() {
                    node.handle_timeout(now, wall, &d.store);
                }
                self.after(dc);
            }
            Event::DialDone { dc, peer, incarnation } => self.dial_done(dc, peer, incarnation),
            Event::IdleClose { a, b, conn } => {
                let cut = self.cut(a, b) || self.cut(b, a);
                let dead = !self.owns(a, conn) || !self.owns(b, conn);
                if (cut || dead) && self.conns.get(&(a.min(b), a.max(b))) == Some(&conn) {
                    self.close(a, b);
                }
            }
            Event::Close { a, b, conn } => {
                if self.conns.get(&(a.min(b), a.max(b))) == Some(&conn) {
                    self.close(a, b);
                }
            }
            Event::FaultStart(i) => self.fault(i, true),
            Event::FaultEnd(i) => self.fault(i, false),
            Event::Flap { fault, cut } => self.flap(fault, cut),
            Event::Sample => {
                let mut checkers = std::mem::replace(&mut self.checkers, Checkers::new(&self.scenario));
                checkers.sample(self);
                self.checkers = checkers;
                self.schedule(self.now_ms + SAMPLE_MS, Event::Sample);
            }
        }
    }

    fn start_node(&mut self, dc: usize) {
        let wall = self.wall_ms(dc);
        let now = self.now_ms;
        let mut config = NodeConfig::new(&self.scenario.topology);
        config.planted = self.options.planted;
        let d = &mut self.dcs[dc];
        let seen = d.store.seen().expect("the memory store reads");
        let mut acked = BTreeMap::new();
        for other in &self.scenario.dcs {
            if *other != d.id {
                acked.insert(other.clone(), d.store.acked(other).expect("the memory store reads"));
            }
        }
        let rng =
            StdRng::seed_from_u64(self.options.seed ^ ((dc as u64) << 40) ^ ((d.incarnation as u64) << 32));
        let settled = d.store.identity().expect("the memory store reads").is_some_and(|i| i.settled);
        let startup = Startup { now_ms: now, wall_ms: wall, seen, acked, settled };
        let topology = Arc::new(self.scenario.topology.clone());
        d.node = Some(Node::new(d.id.clone(), topology, config, startup, rng, &d.store));
        if self.options.trace {
            self.note(format!("start {}", self.dcs[dc].id));
        }
        self.after(dc);
    }

    /// A client's request at `dc`: one write, or (with `batch_max` > 1) a batch of writes
    /// committed together, each answered on its own.
    fn client_write(&mut self, dc: usize) {
        if !self.dcs[dc].alive() {
            return;
        }
        let batch_max = self.scenario.file.workload.batch_max;
        let n = if batch_max > 1 { self.rng.random_range(1..=batch_max) } else { 1 };
        let writes: Vec<_> = (0..n).map(|_| self.new_write(dc)).collect();
        let now = self.now_ms;
        let wall = self.wall_ms(dc);
        let d = &mut self.dcs[dc];
        let node = d.node.as_mut().expect("alive");
        let (requests, mut batch): (Vec<_>, Vec<_>) = writes
            .into_iter()
            .map(|(write, options, required)| ((write.request, required), (write, options)))
            .unzip();
        // Single writes go through the single-write entry point, as the API's PUT does.
        let results = if batch.len() == 1 {
            let (write, options) = batch.pop().expect("one");
            vec![node.handle_write(now, wall, write, options, &d.store)]
        } else {
            node.handle_write_batch(now, wall, batch, &d.store)
        };
        for ((request, required), result) in requests.into_iter().zip(results) {
            match result {
                Ok(()) => {
                    self.stats.writes += 1;
                    self.required.insert(request, required);
                }
                Err(
                    NodeWriteError::Starting
                    | NodeWriteError::SyncBusy
                    | NodeWriteError::Busy
                    | NodeWriteError::Write(_),
                ) => {
                    self.stats.refused += 1;
                }
            }
            self.hash(&[2, dc as u64, request]);
        }
        self.after(dc);
    }

    /// A random write for `dc`'s workload, its options and the DCs its sync mode needs.
    fn new_write(&mut self, dc: usize) -> (WriteRequest, WriteOptions, usize) {
        let w = &self.scenario.file.workload;
        let total: u32 = self.keyspaces.iter().map(|(_, weight, _)| weight).sum();
        let mut pick = self.rng.random_range(0..total);
        let mut chosen = 0;
        for (i, (_, weight, _)) in self.keyspaces.iter().enumerate() {
            if pick < *weight {
                chosen = i;
                break;
            }
            pick -= weight;
        }
        let (keyspace, _, delete) = self.keyspaces[chosen].clone();
        let keys = w.keys;
        let k = match w.key_distribution {
            KeyDistribution::Uniform => self.rng.random_range(0..keys),
            KeyDistribution::Hot => {
                let hot = (keys / 10).max(1);
                if self.rng.random_bool(0.8) {
                    self.rng.random_range(0..hot)
                } else {
                    self.rng.random_range(0..keys)
                }
            }
        };
        let key = Key::new(format!("k{k}")).expect("valid key");
        let request = self.next_request;
        self.next_request += 1;
        let spec = self.scenario.topology.keyspace(&keyspace).expect("validated");
        let is_delete = self.rng.random_bool(delete);
        let kind = match spec.kind {
            mesh_core::ValueKind::Register if is_delete => OpKind::Delete,
            mesh_core::ValueKind::Register => {
                OpKind::Put(format!("{}-{request}", self.dcs[dc].id).into_bytes())
            }
            mesh_core::ValueKind::Counter => {
                let n = self.rng.random_range(1..=10);
                OpKind::CounterAdd(if is_delete { -n } else { n })
            }
            mesh_core::ValueKind::Set => {
                let m = ByteBuf::from(format!("m{}", self.rng.random_range(0..8)).into_bytes());
                if is_delete {
                    OpKind::SetRemove(vec![m])
                } else {
                    OpKind::SetAdd(vec![m])
                }
            }
        };
        let with_context = spec.rules.contextless_write_is_new_sibling()
            && self.rng.random_bool(self.scenario.file.workload.read_context_fraction);
        let sync = self.rng.random_bool(w.sync_fraction);
        let options = if sync {
            WriteOptions { mode: Some(Mode::Sync), acks: w.sync_acks }
        } else {
            WriteOptions::default()
        };
        let d = &self.dcs[dc];
        let node = d.node.as_ref().expect("alive");
        let context = if with_context {
            node.read(&keyspace, &key, &d.store).expect("the memory store reads").map(|r| r.context)
        } else {
            None
        };
        let required = checkers::sync_acks::required(&self.scenario, &keyspace, options);
        (WriteRequest { request, keyspace, key, kind, context, idempotency_key: None }, options, required)
    }

    /// Carries out the effects `dc`'s node emitted, then re-arms its timer.
    fn after(&mut self, dc: usize) {
        while let Some(effect) = self.dcs[dc].node.as_mut().and_then(|n| n.poll_effect()) {
            self.effect(dc, effect);
        }
        let Some(node) = self.dcs[dc].node.as_ref() else { return };
        // Never in the past: a behaviour that keeps asking for "now" must not stall the clock.
        let at = node.poll_timeout().max(self.now_ms + 1);
        let d = &mut self.dcs[dc];
        if d.timer_at.is_none_or(|t| at < t || t <= self.now_ms) {
            d.timer_at = Some(at);
            let incarnation = d.incarnation;
            self.schedule(at, Event::Timer { dc, incarnation });
        }
    }

    fn effect(&mut self, dc: usize, effect: Effect) {
        match effect {
            Effect::Send { to, message } => {
                let to = self.index(&to);
                self.send(dc, to, message);
            }
            Effect::Persist { id, batch } => {
                let local: Vec<Op> =
                    batch.ops.iter().filter(|op| op.dot.origin == self.dcs[dc].id).cloned().collect();
                self.hash(&[3, dc as u64, id, batch.ops.len() as u64]);
                for op in &local {
                    self.hash(&[op.dot.seq]);
                    self.dcs[dc].named.insert(op.dot.clone(), op.clone());
                }
                let d = &mut self.dcs[dc];
                d.store.stage(batch);
                d.staged.push((id, local, false));
                if !d.sync_pending {
                    d.sync_pending = true;
                    let disk = &self.scenario.file.disk;
                    let latency = disk.commit_latency_ms + self.rng.random_range(0..=disk.commit_jitter_ms);
                    let incarnation = self.dcs[dc].incarnation;
                    self.schedule(self.now_ms + latency.max(1), Event::Sync { dc, incarnation });
                }
            }
            Effect::Reply { request, dot, outcome, .. } => {
                self.hash(&[4, dc as u64, request, dot.seq]);
                let op = self.dcs[dc].named.remove(&dot);
                let Some(op) = op else {
                    self.history.violation(
                        "replies",
                        self.now_ms,
                        format!("reply for unknown write {dot:?}"),
                    );
                    return;
                };
                if self.options.trace {
                    self.note(format!("reply {} {:?} {:?}", self.dcs[dc].id, dot, outcome));
                }
                let required = self.required.remove(&request).unwrap_or(1);
                checkers::sync_acks::check_reply(self, dc, &dot, &outcome, required);
                let reply = crate::history::Reply {
                    dc: self.dcs[dc].id.clone(),
                    dot,
                    op,
                    at_ms: self.now_ms,
                    outcome,
                };
                self.history.replies.push(reply);
            }
            Effect::Conflict(c) => {
                *self.stats.conflicts.entry(c.strategy.clone()).or_default() += 1;
                self.history.conflicts.push((self.dcs[dc].id.clone(), c));
            }
            Effect::Dial { peer, .. } => {
                let peer = self.index(&peer);
                let up = self.dcs[peer].alive() && !self.cut(dc, peer) && !self.cut(peer, dc);
                let net = &self.scenario.file.network;
                let delay = if up { 2 * self.link(dc, peer).0 } else { net.connect_timeout_ms };
                let incarnation = self.dcs[dc].incarnation;
                self.schedule(self.now_ms + delay.max(1), Event::DialDone { dc, peer, incarnation });
            }
            Effect::Close { peer } => {
                let peer = self.index(&peer);
                if let Some(&conn) = self.conns.get(&(dc.min(peer), dc.max(peer))) {
                    self.schedule(self.now_ms, Event::Close { a: dc, b: peer, conn });
                }
            }
            Effect::Compact { below } => {
                // Compaction is its own durable transaction, after everything staged before it:
                // the staged ops are durable from here on, though their commits are reported at
                // the next sync as usual.
                for (_, ops, synced) in &mut self.dcs[dc].staged {
                    *synced = true;
                    for op in ops.iter() {
                        self.history.durable_at_origin(op, self.now_ms);
                    }
                }
                checkers::retention::check_compaction(self, dc, &below);
                self.dcs[dc].store.compact_log(&below).expect("the memory store compacts");
            }
            Effect::Alarm(alarm) => {
                use mesh_engine::node::Alarm;
                if self.options.trace {
                    self.note(format!("alarm {} {alarm:?}", self.dcs[dc].id));
                }
                match alarm {
                    // Expected of a peer that lost its disk, while it recovers what it held.
                    Alarm::PeerRegressed { ref peer, ref lost }
                        if self.recovering_from_disk_loss(peer, lost) => {}
                    Alarm::LinkRefused { .. }
                    | Alarm::PeerRegressed { .. }
                    | Alarm::ApplyFailed { .. }
                    | Alarm::StoreFailed(_) => {
                        self.history.violation(
                            "alarms",
                            self.now_ms,
                            format!("{}: {alarm:?}", self.dcs[dc].id),
                        );
                    }
                    // Not a violation in itself: whether the peer still converges is judged.
                    Alarm::StateTransferNeeded { .. } => {}
                }
            }
        }
    }

    pub(crate) fn index(&self, dc: &DcId) -> usize {
        self.dcs.iter().position(|d| d.id == *dc).expect("a DC of the topology")
    }

    pub(crate) fn cut(&self, from: usize, to: usize) -> bool {
        self.cuts.get(&(from, to)).is_some_and(|n| *n > 0)
    }

    /// One-way latency and jitter of the directed link, ms (its override, else the default).
    fn link(&self, from: usize, to: usize) -> (u64, u64) {
        let net = &self.scenario.file.network;
        net.links
            .iter()
            .find(|l| l.from == self.dcs[from].id.as_str() && l.to == self.dcs[to].id.as_str())
            .map_or((net.latency_ms, net.jitter_ms), |l| (l.latency_ms, l.jitter_ms))
    }

    fn send(&mut self, from: usize, to: usize, message: Message) {
        let Some(&conn) = self.conns.get(&(from.min(to), from.max(to))) else { return };
        self.stats.messages += 1;
        match self.codec.encode(&message) {
            Ok(frame) => {
                self.stats.wire_bytes += frame.len() as u64;
                // The frame's bytes, so the trace hash sees message contents, not only kinds.
                self.hasher.update(&frame);
            }
            Err(e) => {
                let detail = format!(
                    "{} -> {}: the message cannot be framed: {e}",
                    self.dcs[from].id, self.dcs[to].id
                );
                self.history.violation("wire", self.now_ms, detail);
                return;
            }
        }
        let net = self.scenario.file.network.clone();
        if net.loss > 0.0 && self.rng.random_bool(net.loss) {
            return;
        }
        let copies = if net.duplicate > 0.0 && self.rng.random_bool(net.duplicate) { 2 } else { 1 };
        for _ in 0..copies {
            let (latency, jitter) = self.link(from, to);
            let mut at = self.now_ms + latency + self.rng.random_range(0..=jitter);
            if !net.reorder {
                let last = self.last_delivery.entry((from, to)).or_insert(0);
                at = at.max(*last);
                *last = at;
            }
            self.schedule(
                at.max(self.now_ms + 1),
                Event::Deliver { from, to, conn, message: message.clone() },
            );
        }
    }

    /// Whether `dc`'s current process owns connection `conn` (is alive and opened it or
    /// accepted it, rather than inheriting it from a crashed process).
    fn owns(&self, dc: usize, conn: u64) -> bool {
        let Some(ends) = self.conn_ends.get(&conn) else { return false };
        let (lo, hi) = self.conn_key(conn).unwrap_or((usize::MAX, usize::MAX));
        let end = if dc == lo {
            ends[0]
        } else if dc == hi {
            ends[1]
        } else {
            return false;
        };
        self.dcs[dc].alive() && self.dcs[dc].incarnation == end
    }

    /// The DC pair of an open connection.
    fn conn_key(&self, conn: u64) -> Option<(usize, usize)> {
        self.conns.iter().find(|(_, c)| **c == conn).map(|(k, _)| *k)
    }

    fn deliver(&mut self, from: usize, to: usize, conn: u64, message: Message) {
        if self.conns.get(&(from.min(to), from.max(to))) != Some(&conn) || self.cut(from, to) {
            return;
        }
        if !self.owns(to, conn) {
            return; // A process that restarted knows nothing of its old connections.
        }
        let kind = match &message {
            Message::Hello(_) => 10,
            Message::Batch(b) => {
                self.stats.ops_delivered += b.ops.len() as u64;
                11
            }
            Message::Ack(_) => 12,
            Message::Heartbeat(_) => 13,
            Message::SnapshotRequest(_) => 14,
            Message::SnapshotChunk(_) => 15,
        };
        self.hash(&[5, from as u64, to as u64, kind]);
        if self.options.trace {
            let what = match &message {
                Message::Batch(b) => {
                    let first = b.ops.first().map(|op| format!("{:?}", op.dot)).unwrap_or_default();
                    format!("batch of {} ops from {first}", b.ops.len())
                }
                Message::Hello(h) => format!("hello seen {:?}", h.seen),
                Message::Ack(a) => format!("ack {:?}", a.seen),
                Message::Heartbeat(_) => "heartbeat".into(),
                Message::SnapshotRequest(_) | Message::SnapshotChunk(_) => "snapshot".into(),
            };
            self.note(format!("deliver {} -> {} {what}", self.dcs[from].id, self.dcs[to].id));
        }
        let wall = self.wall_ms(to);
        let now = self.now_ms;
        let from_id = self.dcs[from].id.clone();
        let d = &mut self.dcs[to];
        let Some(node) = d.node.as_mut() else { return };
        node.handle_message(now, wall, &from_id, message, &d.store);
        self.after(to);
    }

    fn sync(&mut self, dc: usize, incarnation: u32) {
        let d = &mut self.dcs[dc];
        if d.incarnation != incarnation || d.node.is_none() {
            return;
        }
        d.sync_pending = false;
        d.store.sync();
        let staged = std::mem::take(&mut d.staged);
        self.hash(&[6, dc as u64, staged.len() as u64]);
        for (_, ops, _) in &staged {
            for op in ops {
                self.history.durable_at_origin(op, self.now_ms);
            }
        }
        let now = self.now_ms;
        for (id, _, _) in staged {
            let d = &mut self.dcs[dc];
            let Some(node) = d.node.as_mut() else { return };
            node.handle_committed(now, id, &d.store);
            self.after(dc);
        }
    }

    fn dial_done(&mut self, dc: usize, peer: usize, incarnation: u32) {
        if self.dcs[dc].incarnation != incarnation || !self.dcs[dc].alive() {
            return;
        }
        let up = self.dcs[peer].alive() && !self.cut(dc, peer) && !self.cut(peer, dc);
        let key = (dc.min(peer), dc.max(peer));
        let peer_id = self.dcs[peer].id.clone();
        let dc_id = self.dcs[dc].id.clone();
        if let Some(&old) = self.conns.get(&key).filter(|_| up) {
            // A connection one end's process no longer owns (it restarted) is half-open: the new
            // dial replaces it, as the node's runtime replaces a link it no longer hears from
            // (mesh_engine::pool::keep_existing_link).
            if !self.owns(dc, old) || !self.owns(peer, old) {
                self.close(dc, peer);
            }
        }
        if !up || self.conns.contains_key(&key) {
            let now = self.now_ms;
            if let Some(node) = self.dcs[dc].node.as_mut() {
                node.handle_dial_failed(now, &peer_id);
            }
            self.after(dc);
            return;
        }
        let conn = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(key, conn);
        self.conn_ends.insert(conn, [self.dcs[key.0].incarnation, self.dcs[key.1].incarnation]);
        self.hash(&[7, dc as u64, peer as u64, conn]);
        if self.options.trace {
            self.note(format!("connect {dc_id} {peer_id}"));
        }
        let now = self.now_ms;
        for (a, b) in [(dc, &peer_id), (peer, &dc_id)] {
            if let Some(node) = self.dcs[a].node.as_mut() {
                node.handle_connected(now, b);
            }
            self.after(a);
        }
    }

    /// Closes the connection between `a` and `b`; each end whose process owns it hears so.
    fn close(&mut self, a: usize, b: usize) {
        let Some(conn) = self.conns.get(&(a.min(b), a.max(b))).copied() else { return };
        let owners = [self.owns(a, conn), self.owns(b, conn)];
        self.conns.remove(&(a.min(b), a.max(b)));
        self.conn_ends.remove(&conn);
        self.hash(&[8, a as u64, b as u64]);
        if self.options.trace {
            self.note(format!("disconnect {} {}", self.dcs[a].id, self.dcs[b].id));
        }
        let now = self.now_ms;
        for ((x, y), owner) in [(a, b), (b, a)].into_iter().zip(owners) {
            if !owner {
                continue;
            }
            let other = self.dcs[y].id.clone();
            if let Some(node) = self.dcs[x].node.as_mut() {
                node.handle_disconnected(now, &other);
            }
            self.after(x);
        }
    }

    /// Cuts (`by` = 1) or heals (`by` = -1) directed links, and lets the connections across a
    /// cut time out.
    fn cut_links(&mut self, links: &[(usize, usize)], cut: bool) {
        for &(a, b) in links {
            let n = self.cuts.entry((a, b)).or_insert(0);
            if cut {
                *n += 1;
            } else {
                *n = n.saturating_sub(1);
            }
            if cut {
                if let Some(&conn) = self.conns.get(&(a.min(b), a.max(b))) {
                    let at = self.now_ms + self.scenario.file.network.idle_timeout_ms;
                    self.schedule(at, Event::IdleClose { a, b, conn });
                }
            }
        }
    }

    fn fault_links(&self, i: usize) -> Vec<(usize, usize)> {
        let fault = &self.scenario.file.faults[i];
        let n = self.dcs.len();
        match &fault.kind {
            FaultKind::Partition { groups } => {
                let group_of = |dc: usize| {
                    groups
                        .iter()
                        .position(|g| g.iter().any(|x| x == self.dcs[dc].id.as_str()))
                        .unwrap_or(groups.len())
                };
                (0..n)
                    .flat_map(|a| (0..n).map(move |b| (a, b)))
                    .filter(|&(a, b)| a != b && group_of(a) != group_of(b))
                    .collect()
            }
            FaultKind::Cut { links, oneway } => self.directed(links, !oneway),
            FaultKind::Flap { links, .. } => self.directed(links, true),
            FaultKind::Crash { .. } | FaultKind::DiskLost { .. } | FaultKind::Skew { .. } => Vec::new(),
        }
    }

    /// `links` as directed index pairs, both ways when `both`.
    fn directed(&self, links: &[[String; 2]], both: bool) -> Vec<(usize, usize)> {
        let index = |name: &String| self.index(&DcId::new(name).expect("validated"));
        let mut out = Vec::new();
        for [x, y] in links {
            let (a, b) = (index(x), index(y));
            out.push((a, b));
            if both {
                out.push((b, a));
            }
        }
        out
    }

    fn fault(&mut self, i: usize, start: bool) {
        let fault = self.scenario.file.faults[i].clone();
        self.hash(&[9, i as u64, start as u64]);
        if self.options.trace {
            self.note(format!("fault {} {:?}", if start { "start" } else { "end" }, fault.kind));
        }
        if start {
            self.active_faults.insert(i);
        } else {
            self.active_faults.remove(&i);
        }
        match &fault.kind {
            FaultKind::Partition { .. } | FaultKind::Cut { .. } => {
                let links = self.fault_links(i);
                self.cut_links(&links, start);
            }
            FaultKind::Flap { .. } => {
                if start {
                    self.flap(i, true);
                } else if self.flap_cut(i) {
                    // The flap ends healed.
                    let links = self.fault_links(i);
                    self.cut_links(&links, false);
                }
            }
            FaultKind::Crash { dc } | FaultKind::DiskLost { dc } => {
                let dc = self.index(&DcId::new(dc).expect("validated"));
                let disk_lost = matches!(fault.kind, FaultKind::DiskLost { .. });
                if start {
                    self.crash(dc);
                    if disk_lost {
                        let d = &mut self.dcs[dc];
                        d.seen_before_disk_loss.join(&d.store.seen().expect("the memory store reads"));
                        d.disks_lost += 1;
                        d.store = MemStore::new();
                    }
                } else {
                    if disk_lost {
                        self.forget_lost_with_disk(dc);
                    }
                    // The old process's connections stay half-open at its peers until their idle
                    // timeout, or until a new dial (by either end) replaces them.
                    self.dcs[dc].incarnation += 1;
                    self.dcs[dc].timer_at = None;
                    self.start_node(dc);
                }
            }
            FaultKind::Skew { dc, offset_ms } => {
                let dc = self.index(&DcId::new(dc).expect("validated"));
                self.dcs[dc].offset_ms += if start { *offset_ms } else { -offset_ms };
            }
        }
        if !start && self.active_faults.is_empty() {
            let mut checkers = std::mem::replace(&mut self.checkers, Checkers::new(&self.scenario));
            checkers.healed(self);
            self.checkers = checkers;
        }
    }

    fn flap_cut(&self, fault: usize) -> bool {
        self.fault_links(fault).first().is_some_and(|&(a, b)| self.cut(a, b))
    }

    fn flap(&mut self, fault: usize, cut: bool) {
        if !self.active_faults.contains(&fault) {
            // The fault ended; the end healed the links.
            return;
        }
        let links = self.fault_links(fault);
        self.cut_links(&links, cut);
        if let FaultKind::Flap { period_ms, .. } = self.scenario.file.faults[fault].kind {
            self.schedule(self.now_ms + period_ms, Event::Flap { fault, cut: !cut });
        }
    }

    fn crash(&mut self, dc: usize) {
        self.stats.crashes += 1;
        if let Some(node) = self.dcs[dc].node.as_ref() {
            self.stats.transfers += node.stats().transfers_received;
            self.stats.transfers_sent += node.stats().transfers_sent;
        }
        let d = &mut self.dcs[dc];
        let unsynced = d.store.unsynced();
        let keep = self.rng.random_range(0..=unsynced);
        let d = &mut self.dcs[dc];
        d.node = None;
        d.store.crash(keep);
        let staged = std::mem::take(&mut d.staged);
        d.named.clear();
        d.sync_pending = false;
        d.timer_at = None;
        d.incarnation += 1;
        // The kept prefix of the unsynced commits is durable now, as a real disk may have
        // written it before the power went.
        for (_, ops, _) in staged.iter().filter(|(_, _, synced)| !synced).take(keep) {
            for op in ops {
                self.history.durable_at_origin(op, self.now_ms);
            }
        }
        self.hash(&[10, dc as u64, keep as u64]);
        if self.options.trace {
            self.note(format!("crash {} kept {keep} of {unsynced} unsynced commits", self.dcs[dc].id));
        }
        // Peers notice when their connection idles out.
        let idle = self.scenario.file.network.idle_timeout_ms;
        let conns: Vec<((usize, usize), u64)> =
            self.conns.iter().filter(|((a, b), _)| *a == dc || *b == dc).map(|(k, c)| (*k, *c)).collect();
        for ((a, b), conn) in conns {
            self.schedule(self.now_ms + idle, Event::IdleClose { a, b, conn });
        }
    }

    /// `dc` lost its disk: its own ops that no other DC holds durably are gone for good. The
    /// history forgets them (their acknowledged writes are excused, and their seqs are free to
    /// be named again, since nobody holds the old ops); what a peer holds must come back.
    fn forget_lost_with_disk(&mut self, dc: usize) {
        let origin = self.dcs[dc].id.clone();
        let held = (0..self.dcs.len())
            .filter(|&i| i != dc)
            .map(|i| self.dcs[i].store.seen().expect("the memory store reads").get(&origin))
            .max()
            .unwrap_or(0);
        let lost: Vec<Dot> =
            self.history.ops.keys().filter(|d| d.origin == origin && d.seq > held).cloned().collect();
        for dot in &lost {
            let op = self.history.ops.remove(dot).expect("listed");
            self.history.durable_ms.remove(dot);
            self.history.lost_with_disk.push(op);
        }
        // Its own seqs past what the peers held are free again: what it held of them before the
        // loss must not vouch for the new ops named with them (the sync-acks checker).
        self.dcs[dc].own_held_after_loss = Some(held);
        self.hash(&[11, dc as u64, lost.len() as u64]);
        if self.options.trace {
            self.note(format!("{origin} lost {} ops no peer held with its disk", lost.len()));
        }
    }

    /// The durable `seen` vector of every DC (down ones included: their store survives).
    pub(crate) fn durable_seen(&self) -> Vec<VersionVector> {
        self.dcs.iter().map(|d| d.store.seen().expect("the memory store reads")).collect()
    }

    /// Per DC, what its acks can vouch for: [`World::durable_seen_ever`], but of its own ops
    /// after a disk loss only those a peer held (its seqs above are named again).
    pub(crate) fn durable_seen_for_acks(&self) -> Vec<VersionVector> {
        let mut seen = self.durable_seen();
        for (s, d) in seen.iter_mut().zip(&self.dcs) {
            let before = d.seen_before_disk_loss.iter().map(|(o, seq)| {
                let cap = if *o == d.id { d.own_held_after_loss.unwrap_or(seq) } else { seq };
                (o.clone(), seq.min(cap))
            });
            s.join(&before.collect());
        }
        seen
    }

    /// Whether `dc` lost its disk and `lost` (what a peer says it no longer holds) is within what
    /// it held before the loss: a regression the disk loss explains. (A later one, of ops it
    /// acknowledged after, is not excused.)
    fn recovering_from_disk_loss(&self, dc: &DcId, lost: &VersionVector) -> bool {
        self.dcs.iter().any(|d| d.id == *dc && d.disks_lost > 0 && d.seen_before_disk_loss.dominates(lost))
    }

    /// Per DC, every op it ever held durably: its `seen` joined with what it held before each
    /// disk loss (a compaction below what a DC then held was right, even if it lost it since).
    pub(crate) fn durable_seen_ever(&self) -> Vec<VersionVector> {
        let mut seen = self.durable_seen();
        for (s, d) in seen.iter_mut().zip(&self.dcs) {
            s.join(&d.seen_before_disk_loss);
        }
        seen
    }

    /// Whether `a` and `b` are linked now: both alive and no cut either way.
    pub(crate) fn linked(&self, a: usize, b: usize) -> bool {
        self.dcs[a].alive() && self.dcs[b].alive() && !self.cut(a, b) && !self.cut(b, a)
    }

    /// The register versions `dc` reads for a key (for the model checker).
    pub(crate) fn read(&self, dc: usize, keyspace: &Keyspace, key: &Key) -> Option<ReadValue> {
        let d = &self.dcs[dc];
        let node = d.node.as_ref()?;
        node.read(keyspace, key, &d.store).expect("the memory store reads").map(|r| r.value)
    }
}
