//! The simulated world: N DCs, each the real [`mesh_engine::node::Node`] over a
//! [`mesh_store::MemStore`], on one seeded discrete-event scheduler with a simulated network,
//! disk and clocks. Everything random comes from the seed; everything iterated is ordered, so a
//! seed always replays the same run (its trace hash says so).
//!
//! This module owns the core: the [`World`] and its DCs, the scheduler and its event loop, the
//! node lifecycle (start, timers) and the dispatch of events and node effects to the modules
//! that carry them out:
//! - `network`: connections, dials, message delivery (latency, jitter, loss, duplication,
//!   reordering) and the cut links partitions leave behind;
//! - `disk`: the commits each DC stages and syncs, compaction, what a power loss keeps and
//!   what a disk loss takes, and the durable state the checkers read;
//! - `workload`: the clients' writes and the replies they get;
//! - `faults`: when the scenario's faults start and end, and what each does to the world.
//!
//! They are all `impl World` blocks over the one struct, so the order of every draw from the
//! seeded RNG, every scheduled event and every hashed value is the single order of the event loop.

mod disk;
mod faults;
mod network;
mod workload;

use crate::checkers::Checkers;
use crate::history::History;
use crate::scenario::Scenario;
use disk::Disk;
use mesh_core::{DcId, Dot, Key, Keyspace, Op, ReadValue, VersionVector};
use mesh_engine::health::{HealthInput, HealthMonitor, HealthOutput, HealthVerdict};
use mesh_engine::node::{Effect, Node, NodeConfig, Startup};
use mesh_engine::PlantedBug;
use mesh_engine::{MonoMs, WallMs};
use mesh_store::{LogRead, MemStore, Store};
use mesh_wire::{Codec, CodecConfig, Message};
use network::Network;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::sync::Arc;
use workload::Workload;
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
    Write {
        dc: usize,
    },
    Deliver {
        from: usize,
        to: usize,
        conn: u64,
        message: Message,
    },
    Sync {
        dc: usize,
        incarnation: u32,
    },
    Compact {
        dc: usize,
        incarnation: u32,
        below: VersionVector,
    },
    Timer {
        dc: usize,
        incarnation: u32,
    },
    /// The node's health inputs waiting in `health_inbox` reach its monitor.
    HealthInputs {
        dc: usize,
        incarnation: u32,
    },
    /// The monitor's verdicts waiting in `verdict_inbox` reach the node.
    Verdicts {
        dc: usize,
        incarnation: u32,
    },
    DialDone {
        dc: usize,
        peer: usize,
        incarnation: u32,
    },
    IdleClose {
        a: usize,
        b: usize,
        conn: u64,
    },
    Close {
        a: usize,
        b: usize,
        conn: u64,
    },
    FaultStart(usize),
    FaultEnd(usize),
    Flap {
        fault: usize,
        cut: bool,
    },
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
    /// Its node's health monitor, run beside it (stops and starts with it).
    health: Option<HealthMonitor>,
    /// Inputs from the node on their way to the monitor, and verdicts on their way back: each
    /// direction is in order but later than the step that made it, as between meshd's resolver
    /// and health actor (events at the same ms scheduled before them run first).
    health_inbox: VecDeque<HealthInput>,
    verdict_inbox: VecDeque<HealthVerdict>,
    incarnation: u32,
    /// The bookkeeping of its simulated disk around `store` (see [`disk`]).
    disk: Disk,
    offset_ms: i64,
    /// The time the pending timer event is for (`None`: none pending).
    timer_at: Option<u64>,
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
    /// Links, connections and framing (see [`network`]).
    network: Network,
    /// Faults in progress.
    active_faults: BTreeSet<usize>,
    pub(crate) history: History,
    pub(crate) stats: RunStats,
    checkers: Checkers,
    hasher: Xxh3,
    trace: Vec<String>,
    /// The clients' keyspaces and their writes in flight (see [`workload`]).
    workload: Workload,
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
                health: None,
                incarnation: 0,
                disk: Disk::default(),
                offset_ms: 0,
                timer_at: None,
                named: BTreeMap::new(),
                health_inbox: VecDeque::new(),
                verdict_inbox: VecDeque::new(),
            })
            .collect();
        let codec_config = CodecConfig::from_replication(&scenario.topology.config.replication)
            .expect("the topology validated its replication settings");
        let codec = Codec::new(codec_config).expect("valid codec settings");
        let workload = Workload::new(&scenario);
        let checkers = Checkers::new(&scenario);
        Self {
            scenario,
            options,
            now_ms: 0,
            rng,
            queue: BinaryHeap::new(),
            next_seq: 0,
            dcs,
            network: Network::new(codec),
            active_faults: BTreeSet::new(),
            history: History::default(),
            stats: RunStats::default(),
            checkers,
            hasher: Xxh3::new(),
            trace: Vec::new(),
            workload,
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
        self.schedule_first_writes();
        self.schedule_faults();
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

    fn handle(&mut self, event: Event) {
        match event {
            Event::Write { dc } => self.client_arrival(dc),
            Event::Deliver { from, to, conn, message } => self.deliver(from, to, conn, message),
            Event::Sync { dc, incarnation } => self.sync(dc, incarnation),
            Event::Compact { dc, incarnation, below } => self.compact(dc, incarnation, &below),
            Event::Timer { dc, incarnation } => self.timer(dc, incarnation),
            Event::HealthInputs { dc, incarnation } => self.health_inputs(dc, incarnation),
            Event::Verdicts { dc, incarnation } => self.verdicts(dc, incarnation),
            Event::DialDone { dc, peer, incarnation } => self.dial_done(dc, peer, incarnation),
            Event::IdleClose { a, b, conn } => self.idle_close(a, b, conn),
            Event::Close { a, b, conn } => self.close_if_open(a, b, conn),
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
        let wall = WallMs(self.wall_ms(dc));
        let now = MonoMs(self.now_ms);
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
        let startup = Startup { now, wall, seen, acked, settled };
        let topology = Arc::new(self.scenario.topology.clone());
        let node = Node::new(d.id.clone(), topology, config, startup, rng, &d.store);
        d.health = Some(node.health_monitor(now));
        d.node = Some(node);
        if self.options.trace {
            self.note(format!("start {}", self.dcs[dc].id));
        }
        self.after(dc);
    }

    /// The node's timer fired, unless its process restarted or the timer was re-armed since.
    fn timer(&mut self, dc: usize, incarnation: u32) {
        let d = &mut self.dcs[dc];
        if d.incarnation != incarnation || d.timer_at != Some(self.now_ms) {
            return;
        }
        d.timer_at = None;
        self.hash(&[1, dc as u64]);
        let wall = WallMs(self.wall_ms(dc));
        let now = MonoMs(self.now_ms);
        let d = &mut self.dcs[dc];
        if let Some(node) = d.node.as_mut().filter(|n| n.poll_timeout().is_some_and(|t| t <= now)) {
            node.handle_timeout(now, &d.store);
        }
        self.after(dc);
        let d = &mut self.dcs[dc];
        if let Some(health) = d.health.as_mut().filter(|h| h.poll_timeout().is_some_and(|t| t <= now)) {
            health.handle_timeout(now, wall);
            self.carry_out_health(dc);
            self.after(dc);
        }
    }

    /// Carries out what `dc`'s health monitor asked for, as the node's runtime does: its
    /// heartbeats go on the links, its verdicts to the node.
    fn carry_out_health(&mut self, dc: usize) {
        while let Some(output) = self.dcs[dc].health.as_mut().and_then(HealthMonitor::poll_output) {
            match output {
                HealthOutput::Send { to, heartbeat } => {
                    let to = self.index(&to);
                    self.send(dc, to, Message::Heartbeat(heartbeat));
                }
                HealthOutput::Verdict(verdict) => {
                    let d = &mut self.dcs[dc];
                    d.verdict_inbox.push_back(verdict);
                    if d.verdict_inbox.len() == 1 {
                        let incarnation = d.incarnation;
                        self.schedule(self.now_ms, Event::Verdicts { dc, incarnation });
                    }
                }
            }
        }
    }

    /// The node's health inputs reach its monitor, unless its process restarted since.
    fn health_inputs(&mut self, dc: usize, incarnation: u32) {
        let now = MonoMs(self.now_ms);
        let d = &mut self.dcs[dc];
        if d.incarnation != incarnation {
            return;
        }
        // Drained whatever happens, so the next input schedules the next delivery.
        let inputs: Vec<HealthInput> = d.health_inbox.drain(..).collect();
        let Some(health) = d.health.as_mut() else { return };
        for input in inputs {
            health.handle(now, input);
        }
        self.carry_out_health(dc);
        self.after(dc);
    }

    /// The monitor's verdicts reach the node, unless its process restarted since.
    fn verdicts(&mut self, dc: usize, incarnation: u32) {
        let now = MonoMs(self.now_ms);
        let d = &mut self.dcs[dc];
        if d.incarnation != incarnation {
            return;
        }
        let verdicts: Vec<HealthVerdict> = d.verdict_inbox.drain(..).collect();
        let Some(node) = d.node.as_mut() else { return };
        for verdict in verdicts {
            node.handle_health(now, verdict, &d.store);
        }
        self.after(dc);
    }

    /// Carries out the effects `dc`'s node emitted, then re-arms its timer.
    fn after(&mut self, dc: usize) {
        while let Some(effect) = self.dcs[dc].node.as_mut().and_then(|n| n.poll_effect()) {
            self.effect(dc, effect);
        }
        let Some(node) = self.dcs[dc].node.as_ref() else { return };
        // Never in the past: a behaviour that keeps asking for "now" must not stall the clock.
        // A failed node serves nothing until restarted: it has no deadline.
        let Some(at) = node.poll_timeout() else { return };
        let health = self.dcs[dc].health.as_ref().and_then(HealthMonitor::poll_timeout);
        let at = health.map_or(at, |h| h.min(at)).ms().max(self.now_ms + 1);
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
            Effect::Persist { id, batch } => self.persist(dc, id, batch),
            Effect::Health(input) => {
                let d = &mut self.dcs[dc];
                d.health_inbox.push_back(input);
                if d.health_inbox.len() == 1 {
                    let incarnation = d.incarnation;
                    self.schedule(self.now_ms, Event::HealthInputs { dc, incarnation });
                }
            }
            Effect::Reply { request, dot, outcome, .. } => self.reply(dc, request, dot, outcome),
            Effect::Conflict(c) => {
                *self.stats.conflicts.entry(c.strategy.clone()).or_default() += 1;
                self.history.conflicts.push((self.dcs[dc].id.clone(), c));
            }
            Effect::Dial { peer, .. } => {
                let peer = self.index(&peer);
                self.dial(dc, peer);
            }
            Effect::Close { peer } => {
                let peer = self.index(&peer);
                self.request_close(dc, peer);
            }
            Effect::Compact { below } => self.schedule_compact(dc, below),
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
                    | Alarm::StoreFailed(_)
                    | Alarm::CompactionFailed(_) => {
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

    /// The register versions `dc` reads for a key (for the model checker).
    pub(crate) fn read(&self, dc: usize, keyspace: &Keyspace, key: &Key) -> Option<ReadValue> {
        let d = &self.dcs[dc];
        let node = d.node.as_ref()?;
        node.read(keyspace, key, &d.store).expect("the memory store reads").map(|r| r.value)
    }
}
