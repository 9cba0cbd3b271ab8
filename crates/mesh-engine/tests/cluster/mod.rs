//! A step harness for [`Node`]: several real nodes, each over its own [`MemStore`], wired by a
//! network the test drives by hand (after quinn-proto's test `Pair` and raft-rs's
//! `harness::Network`). It sits between the behaviours' unit tests and the whole simulator.
//!
//! Nothing happens on its own. Work waits in three kinds of queues until the test steps it:
//! - messages, per directed link `(from, to)`, in the order they were sent;
//! - syncs of staged persists, per DC (under [`Disk::Stepped`], the default);
//! - dials a node asked for.
//!
//! [`Cluster::step`] carries out the oldest piece of work of any kind, so a run is one
//! deterministic interleaving; [`Cluster::drive`] steps until nothing is left. Time stands still
//! until [`Cluster::advance`] (timers only) or [`Cluster::run_for`] (timers, and the network and
//! disk drained between them) move it.
//!
//! The harness follows the node's call order (crates/mesh-engine/src/node.rs, module docs): after
//! every input it drains [`Node::poll_effect`] and carries each effect out in order; persists are
//! staged in the store, synced, and only then reported with `handle_committed`, in emission
//! order. It also checks the durability rules of DESIGN.md as each effect leaves a node: no
//! message names a dot, and no reply answers a write, that the sender's store does not hold
//! durably. Every message goes through the wire codec (encode, decode) on its way, so what a
//! node receives is what a peer could have decoded.
//!
//! Links close the way the node's runtime (mesh-node) closes them: [`Effect::Close`] is heard only
//! by the far end (the node that asked already counts the link as gone); a network cut, a crash
//! or [`Cluster::disconnect`] are heard by both live ends at once.
// Each test file that includes this module uses a part of it.
#![allow(dead_code)]

use mesh_core::topology::Mode;
use mesh_core::{
    builtin_resolvers, Conflict, DcId, Dot, Key, KeyState, Keyspace, OpKind, ReadValue, Topology,
    VersionVector,
};
use mesh_engine::health::{Health, HealthMonitor, HealthOutput, HealthVerdict};
use mesh_engine::node::{Alarm, Effect, Node, NodeConfig, NodeStats, NodeWriteError, Startup, WriteOptions};
use mesh_engine::resolver::{PersistId, WriteRequest};
use mesh_engine::sync::{RequestId, SyncOutcome};
use mesh_engine::PlantedBug;
use mesh_engine::{MonoMs, WallMs};
use mesh_store::{LogRead, MemStore, Store};
use mesh_wire::{Codec, CodecConfig, Message};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

/// The wall clock at `now_ms == 0` (2026-01-01), so HLCs look like real ones.
pub const EPOCH_MS: u64 = 1_767_225_600_000;
/// Most steps [`Cluster::drive`] takes before it declares the cluster unable to quiesce.
pub const DRIVE_STEPS_MAX: usize = 100_000;
/// Most timer firings one [`Cluster::advance`] or [`Cluster::run_for`] makes: a node whose
/// deadline never moves would otherwise hold the clock forever.
const TIMER_FIRINGS_MAX: usize = 1_000_000;

/// How a DC's disk completes persists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disk {
    /// A sync is a piece of work [`Cluster::step`] carries out in its turn, as if the disk took
    /// time: messages and other DCs' syncs interleave with it.
    Stepped,
    /// Synced as soon as the effects of the input that staged it are carried out.
    Immediate,
    /// Never synced but by [`Cluster::sync`] (or a compaction, which is its own transaction and
    /// commits what was staged before it): persists stay outstanding so a test can crash the DC
    /// with them unsynced.
    Held,
}

/// A client write's answer, as the DC gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The request answered.
    pub request: RequestId,
    /// The write's dot.
    pub dot: Dot,
    /// Done, or timed out.
    pub outcome: SyncOutcome,
}

/// How a cluster is built, beyond its topology.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Seeds each node's RNG (with the DC's index and incarnation); it draws only dial jitter.
    pub seed: u64,
    /// A bug planted in every node, to show a test catches it. Never set otherwise.
    pub planted: Option<PlantedBug>,
    /// Changes each node's configuration after [`NodeConfig::new`] derived it from the topology
    /// (knobs mesh.toml does not have, such as `snapshot_entries`).
    pub tune: Option<fn(&mut NodeConfig)>,
}

/// Counters of the harness itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterStats {
    /// Pieces of work carried out by [`Cluster::step`].
    pub steps: u64,
    /// Messages handed to a node.
    pub delivered: u64,
    /// Ops handed to a node in batches (a relayed or resent op counts each time).
    pub ops_delivered: u64,
    /// Messages lost: sent with no link up, queued on a link that then went down, or dropped by
    /// [`Cluster::drop_next`].
    pub dropped: u64,
    /// Syncs of a DC's staged persists (stepped, immediate or asked for).
    pub syncs: u64,
    /// Dials carried out (connected, superseded or failed).
    pub dials: u64,
    /// Links opened.
    pub connects: u64,
    /// Wire bytes of every message sent.
    pub wire_bytes: u64,
    /// Timer firings (one node's or health monitor's `handle_timeout`).
    pub timer_firings: u64,
}

impl Dc {
    /// The healths its held verdicts give `peer`, oldest first.
    pub fn held_verdicts_judging(&self, peer: &DcId) -> Vec<Health> {
        let held = self.held_verdicts.iter().flatten();
        held.filter_map(|v| match v {
            HealthVerdict::Peer { peer: p, health, .. } if p == peer => Some(*health),
            _ => None,
        })
        .collect()
    }

    /// The earliest deadline of its node or its health monitor; `None` when it is down.
    fn poll_timeout(&self) -> Option<u64> {
        let node = self.node.as_ref()?.poll_timeout();
        let health = self.health.as_ref().and_then(HealthMonitor::poll_timeout);
        node.into_iter().chain(health).map(MonoMs::ms).min()
    }
}

/// One DC: its store survives crashes, its node does not.
pub struct Dc {
    /// Its id.
    pub id: DcId,
    /// Its storage.
    pub store: MemStore,
    node: Option<Node<StdRng>>,
    /// Its node's health monitor, run beside it (stops and starts with it).
    health: Option<HealthMonitor>,
    /// Verdicts of its monitor held back from its node ([`Cluster::hold_verdicts`]), as a busy
    /// runtime delays them; `None`: handed over at once.
    held_verdicts: Option<VecDeque<HealthVerdict>>,
    /// Starts of its node so far (seeds each node's RNG differently).
    incarnation: u32,
    disk: Disk,
    /// Persists staged and not yet reported committed, oldest first, with their work sequence.
    staged: VecDeque<(u64, PersistId)>,
    /// Client writes answered, in order (kept across crashes: the clients saw them).
    pub replies: Vec<Reply>,
    /// Conflicts recorded, in order.
    pub conflicts: Vec<Conflict>,
    /// Alarms raised, in order.
    pub alarms: Vec<Alarm>,
    /// Compactions carried out: the `below` vectors, in order.
    pub compactions: Vec<VersionVector>,
}

/// A piece of work [`Cluster::step`] can carry out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    Deliver { from: usize, to: usize },
    Sync { dc: usize },
    Dial,
}

/// Several DCs and the network between them. See the module docs.
pub struct Cluster {
    topology: Arc<Topology>,
    /// The monotonic clock every node shares, ms.
    now_ms: u64,
    /// The last time timers fired: a deadline at or before it fires next at one ms later.
    fired_ms: Option<u64>,
    options: Options,
    dcs: Vec<Dc>,
    /// Open links, (lower, higher) index.
    links: BTreeSet<(usize, usize)>,
    /// Links the network refuses, (lower, higher) index.
    blocked: BTreeSet<(usize, usize)>,
    /// Messages in flight per directed link, with their work sequence.
    queues: BTreeMap<(usize, usize), VecDeque<(u64, Message)>>,
    /// Dials in flight: (work sequence, dialing DC, peer).
    dials: VecDeque<(u64, usize, usize)>,
    next_work: u64,
    next_request: RequestId,
    codec: Codec,
    stats: ClusterStats,
    trace: bool,
}

/// `Node::poll_timeout` returned `u64` (`u64::MAX`: nothing due) before the restructuring of
/// node.rs and returns `Option<u64>` after; reading it through this trait keeps the harness
/// compiling on either side of that change.
/// A topology of `n` DCs named `dc0` … `dc{n-1}` (priorities falling with the index), the
/// keyspaces `users` (lww), `carts` (siblings), `page_views` (counter) and `tags` (set), and
/// `replication` as the body of its `[replication]` table (empty: every default).
pub fn topology_toml(n: usize, replication: &str) -> String {
    assert!(n >= 1, "a cluster has at least one DC");
    let mut text = format!("[replication]\n{replication}\n\n");
    for i in 0..n {
        text.push_str(&format!(
            "[[dcs]]\nid = \"dc{i}\"\npriority = {}\nlisten = \"127.0.0.1:{}\"\napi = \"127.0.0.1:{}\"\n\n",
            10 * (n - i),
            7100 + i,
            8100 + i
        ));
    }
    text.push_str(concat!(
        "[keyspaces.users]\nstrategy = \"lww\"\n\n",
        "[keyspaces.carts]\nstrategy = \"siblings\"\n\n",
        "[keyspaces.page_views]\nstrategy = \"counter\"\n\n",
        "[keyspaces.tags]\nstrategy = \"set\"\n",
    ));
    text
}

/// Every pair of distinct DC indices below `n`, lower first.
fn pairs(n: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..n).flat_map(move |a| (a + 1..n).map(move |b| (a, b)))
}

fn pair(a: usize, b: usize) -> (usize, usize) {
    assert_ne!(a, b, "a link joins two different DCs");
    (a.min(b), a.max(b))
}

impl Cluster {
    /// `n` DCs of [`topology_toml`] with default replication settings, started, not linked.
    pub fn new(n: usize) -> Self {
        Self::with_toml(&topology_toml(n, ""))
    }

    /// The DCs of the topology `text` (mesh.toml's schema), started at time 0, not linked.
    pub fn with_toml(text: &str) -> Self {
        Self::with_options(text, Options::default())
    }

    /// [`Cluster::with_toml`], built as `options` say.
    pub fn with_options(text: &str, options: Options) -> Self {
        let config = toml::from_str(text).expect("the harness topology parses");
        let topology = Topology::new(config, &builtin_resolvers()).expect("the harness topology is valid");
        let codec_config = CodecConfig::from_replication(&topology.config.replication)
            .expect("the topology validated its replication settings");
        let dcs = topology
            .dcs
            .iter()
            .map(|d| Dc {
                id: d.id.clone(),
                store: MemStore::new(),
                node: None,
                health: None,
                held_verdicts: None,
                incarnation: 0,
                disk: Disk::Stepped,
                staged: VecDeque::new(),
                replies: Vec::new(),
                conflicts: Vec::new(),
                alarms: Vec::new(),
                compactions: Vec::new(),
            })
            .collect();
        let mut cluster = Self {
            topology: Arc::new(topology),
            now_ms: 0,
            fired_ms: None,
            options,
            dcs,
            links: BTreeSet::new(),
            blocked: BTreeSet::new(),
            queues: BTreeMap::new(),
            dials: VecDeque::new(),
            next_work: 0,
            next_request: RequestId(1),
            codec: Codec::new(codec_config).expect("valid codec settings"),
            stats: ClusterStats::default(),
            trace: std::env::var_os("MESH_CLUSTER_TRACE").is_some(),
        };
        for dc in 0..cluster.dcs.len() {
            cluster.start_node(dc);
        }
        cluster
    }

    /// [`Cluster::new`], every pair linked and driven until each DC accepts writes.
    pub fn ready(n: usize) -> Self {
        let mut cluster = Self::new(n);
        cluster.start_linked();
        cluster
    }

    /// Links every pair and drives until each DC accepts writes (a fresh cluster's first move).
    pub fn start_linked(&mut self) {
        self.connect_all();
        self.drive();
        for dc in 0..self.dcs.len() {
            assert!(self.is_ready(dc), "{} is not ready after every Hello", self.dcs[dc].id);
        }
    }

    // ---- Views ----

    /// Number of DCs.
    pub fn len(&self) -> usize {
        self.dcs.len()
    }

    /// The topology every node runs.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The monotonic clock, ms.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// The wall clock, ms since the Unix epoch.
    pub fn wall_ms(&self) -> u64 {
        EPOCH_MS + self.now_ms
    }

    /// DC `dc`.
    pub fn dc(&self, dc: usize) -> &Dc {
        &self.dcs[dc]
    }

    /// The id of DC `dc`.
    pub fn id(&self, dc: usize) -> DcId {
        self.dcs[dc].id.clone()
    }

    /// The index of the DC `id`.
    pub fn index(&self, id: &DcId) -> usize {
        self.dcs.iter().position(|d| d.id == *id).unwrap_or_else(|| panic!("{id} is not a DC of the cluster"))
    }

    /// The node of DC `dc`; panics while it is down.
    pub fn node(&self, dc: usize) -> &Node<StdRng> {
        self.dcs[dc].node.as_ref().unwrap_or_else(|| panic!("{} is down", self.dcs[dc].id))
    }

    /// Whether DC `dc`'s node runs.
    pub fn is_up(&self, dc: usize) -> bool {
        self.dcs[dc].node.is_some()
    }

    /// Whether DC `dc` runs and accepts writes.
    pub fn is_ready(&self, dc: usize) -> bool {
        self.dcs[dc].node.as_ref().is_some_and(|n| n.is_ready())
    }

    /// The node's counters.
    pub fn node_stats(&self, dc: usize) -> NodeStats {
        self.node(dc).stats()
    }

    /// The harness's counters.
    pub fn stats(&self) -> ClusterStats {
        self.stats
    }

    /// What DC `dc`'s store holds durably (its `seen` vector), whether its node runs or not.
    pub fn durable(&self, dc: usize) -> VersionVector {
        LogRead::seen(&self.dcs[dc].store).expect("the memory store reads")
    }

    /// Every key state DC `dc`'s store holds durably, in key order.
    pub fn states(&self, dc: usize) -> Vec<(Keyspace, Key, KeyState)> {
        let snapshot = Store::snapshot(&self.dcs[dc].store).expect("the memory store cuts snapshots");
        snapshot.chunk(None, usize::MAX).expect("the memory store reads its snapshot")
    }

    /// Whether links `a`–`b` is open.
    pub fn is_linked(&self, a: usize, b: usize) -> bool {
        self.links.contains(&pair(a, b))
    }

    /// Messages waiting on the directed link `from` → `to`.
    pub fn queued(&self, from: usize, to: usize) -> usize {
        self.queues.get(&(from, to)).map_or(0, VecDeque::len)
    }

    /// Persists DC `dc` staged and has not yet been told are committed.
    pub fn unsynced(&self, dc: usize) -> usize {
        self.dcs[dc].staged.len()
    }

    /// Pieces of work waiting for [`Cluster::step`] (held persists excluded).
    pub fn pending(&self) -> usize {
        let messages: usize = self.queues.values().map(VecDeque::len).sum();
        let syncs = (0..self.dcs.len()).filter(|&dc| self.sync_work(dc).is_some()).count();
        messages + syncs + self.dials.len()
    }

    /// The answer DC `dc` gave request `request`, if any.
    pub fn reply(&self, dc: usize, request: RequestId) -> Option<&Reply> {
        self.dcs[dc].replies.iter().find(|r| r.request == request)
    }

    /// Whether every DC's store holds the same `seen` vector and the same key states; the
    /// first difference otherwise.
    pub fn divergence(&self) -> Option<String> {
        let (seen0, states0) = (self.durable(0), self.states(0));
        for dc in 1..self.dcs.len() {
            let seen = self.durable(dc);
            if seen != seen0 {
                return Some(format!(
                    "{} holds {seen:?}, {} holds {seen0:?}",
                    self.dcs[dc].id, self.dcs[0].id
                ));
            }
            let states = self.states(dc);
            if states != states0 {
                let first = states
                    .iter()
                    .zip(&states0)
                    .find(|(a, b)| a != b)
                    .map(|(a, b)| format!("{:?}/{:?}: {:?} vs {:?}", a.0, a.1, a.2, b.2))
                    .unwrap_or_else(|| format!("{} keys vs {}", states.len(), states0.len()));
                return Some(format!("{} and {} differ: {first}", self.dcs[dc].id, self.dcs[0].id));
            }
        }
        None
    }

    /// Whether every DC's store holds the same `seen` vector and key states.
    pub fn converged(&self) -> bool {
        self.divergence().is_none()
    }

    // ---- Clients ----

    /// A put of `value` to `keyspace`/`key` at DC `dc`, in the keyspace's mode. Returns the
    /// request id; the answer comes later, in [`Dc::replies`]. Panics if the write is refused.
    pub fn write(&mut self, dc: usize, keyspace: &str, key: &str, value: &[u8]) -> RequestId {
        self.try_write(dc, keyspace, key, OpKind::Put(value.to_vec()), WriteOptions::default())
            .unwrap_or_else(|e| panic!("{} refused a put to {keyspace}/{key}: {e}", self.dcs[dc].id))
    }

    /// A write of `kind` to `keyspace`/`key` at DC `dc`, without a read context.
    pub fn try_write(
        &mut self,
        dc: usize,
        keyspace: &str,
        key: &str,
        kind: OpKind,
        options: WriteOptions,
    ) -> Result<RequestId, NodeWriteError> {
        let request = self.next_request;
        self.next_request = RequestId(request.0 + 1);
        let write = WriteRequest {
            request,
            keyspace: Keyspace::new(keyspace).expect("a valid keyspace name"),
            key: Key::new(key).expect("a valid key"),
            kind,
            context: None,
            idempotency_key: None,
        };
        let (now, wall) = (MonoMs(self.now_ms), WallMs(self.wall_ms()));
        assert!(self.is_up(dc), "{} is down", self.dcs[dc].id);
        let d = &mut self.dcs[dc];
        let result = d.node.as_mut().expect("checked").handle_write(now, wall, write, options, &d.store);
        self.note(format!("write {} {keyspace}/{key} request {request:?}: {result:?}", self.dcs[dc].id));
        self.after(dc);
        result.map(|()| request)
    }

    /// A write of `kind` in sync mode, waiting for the keyspace's acks.
    pub fn write_sync(&mut self, dc: usize, keyspace: &str, key: &str, kind: OpKind) -> RequestId {
        let options = WriteOptions { mode: Some(Mode::Sync), acks: None };
        self.try_write(dc, keyspace, key, kind, options)
            .unwrap_or_else(|e| panic!("{} refused a sync write to {keyspace}/{key}: {e}", self.dcs[dc].id))
    }

    /// A delete of `keyspace`/`key` at DC `dc`, with the context of what DC `dc` reads now (so it
    /// supersedes every version there). Panics if the write is refused.
    pub fn delete(&mut self, dc: usize, keyspace: &str, key: &str) -> RequestId {
        let context = {
            let d = &self.dcs[dc];
            let (ks, k) = (Keyspace::new(keyspace).expect("valid"), Key::new(key).expect("valid"));
            let read = self.node(dc).read(&ks, &k, &d.store).expect("the memory store reads");
            read.unwrap_or_else(|| panic!("{keyspace} is not a keyspace of the topology")).context
        };
        let request = self.next_request;
        self.next_request = RequestId(request.0 + 1);
        let write = WriteRequest {
            request,
            keyspace: Keyspace::new(keyspace).expect("a valid keyspace name"),
            key: Key::new(key).expect("a valid key"),
            kind: OpKind::Delete,
            context: Some(context),
            idempotency_key: None,
        };
        let (now, wall) = (MonoMs(self.now_ms), WallMs(self.wall_ms()));
        assert!(self.is_up(dc), "{} is down", self.dcs[dc].id);
        let d = &mut self.dcs[dc];
        let result = d.node.as_mut().expect("checked").handle_write(
            now,
            wall,
            write,
            WriteOptions::default(),
            &d.store,
        );
        self.note(format!("delete {} {keyspace}/{key} request {request:?}: {result:?}", self.dcs[dc].id));
        self.after(dc);
        result.unwrap_or_else(|e| panic!("{} refused a delete of {keyspace}/{key}: {e}", self.dcs[dc].id));
        request
    }

    /// What DC `dc` reads for `keyspace`/`key` (its durable state, resolved by the keyspace's
    /// rules).
    pub fn read(&self, dc: usize, keyspace: &str, key: &str) -> ReadValue {
        let d = &self.dcs[dc];
        let keyspace = Keyspace::new(keyspace).expect("a valid keyspace name");
        let key = Key::new(key).expect("a valid key");
        let read = self.node(dc).read(&keyspace, &key, &d.store).expect("the memory store reads");
        read.unwrap_or_else(|| panic!("{keyspace} is not a keyspace of the topology")).value
    }

    /// The register values DC `dc` reads for `keyspace`/`key` (one for lww, every sibling for
    /// siblings; none when absent or deleted).
    pub fn read_register(&self, dc: usize, keyspace: &str, key: &str) -> Vec<Vec<u8>> {
        match self.read(dc, keyspace, key) {
            ReadValue::Register(versions) => versions
                .into_iter()
                .map(|v| v.value.expect("reads leave tombstones out").into_vec())
                .collect(),
            other => panic!("{keyspace} is not a register keyspace: read {other:?}"),
        }
    }

    /// The counter DC `dc` reads for `keyspace`/`key`.
    pub fn read_counter(&self, dc: usize, keyspace: &str, key: &str) -> i64 {
        match self.read(dc, keyspace, key) {
            ReadValue::Counter(n) => n,
            other => panic!("{keyspace} is not a counter keyspace: read {other:?}"),
        }
    }

    // ---- Disks ----

    /// How DC `dc`'s disk completes persists from now on (staged persists stay staged).
    pub fn set_disk(&mut self, dc: usize, disk: Disk) {
        self.dcs[dc].disk = disk;
        self.after(dc);
    }

    /// Syncs DC `dc`'s staged persists now, and reports them committed.
    pub fn sync(&mut self, dc: usize) {
        self.commit_staged(dc);
        self.after(dc);
    }

    // ---- Network ----

    /// Opens link `a`–`b` (both ends hear `handle_connected`). Panics if it is open, blocked or
    /// an end is down.
    pub fn connect(&mut self, a: usize, b: usize) {
        assert!(self.can_link(a, b), "{} and {} cannot be linked now", self.dcs[a].id, self.dcs[b].id);
        self.links.insert(pair(a, b));
        self.stats.connects += 1;
        self.note(format!("connect {} {}", self.dcs[a].id, self.dcs[b].id));
        let now = MonoMs(self.now_ms);
        for (x, y) in [(a, b), (b, a)] {
            let peer = self.dcs[y].id.clone();
            self.dcs[x].node.as_mut().expect("checked").handle_connected(now, &peer);
            self.after(x);
        }
    }

    /// Opens every link that is not open, blocked or to a DC that is down.
    pub fn connect_all(&mut self) {
        for (a, b) in pairs(self.dcs.len()) {
            if self.can_link(a, b) {
                self.connect(a, b);
            }
        }
    }

    /// Closes link `a`–`b` if open: both live ends hear `handle_disconnected`; messages queued
    /// on it either way are lost. Nodes may dial it again.
    pub fn disconnect(&mut self, a: usize, b: usize) {
        self.close(a, b, [true, true]);
    }

    /// Cuts link `a`–`b`: closes it and refuses dials across it until [`Cluster::heal`].
    pub fn cut(&mut self, a: usize, b: usize) {
        self.blocked.insert(pair(a, b));
        self.disconnect(a, b);
    }

    /// Cuts every link of DC `dc`.
    pub fn isolate(&mut self, dc: usize) {
        for other in (0..self.dcs.len()).filter(|&o| o != dc) {
            self.cut(dc, other);
        }
    }

    /// Lifts the cut of link `a`–`b` and opens it if both ends are up.
    pub fn heal_link(&mut self, a: usize, b: usize) {
        self.blocked.remove(&pair(a, b));
        if self.can_link(a, b) {
            self.connect(a, b);
        }
    }

    /// Lifts every cut and opens every link that can be (without waiting for the nodes' dials).
    pub fn heal(&mut self) {
        self.blocked.clear();
        self.connect_all();
    }

    /// Holds DC `dc`'s health verdicts back from its node until [`Cluster::release_verdicts`]
    /// (meshd's health actor and resolver are apart: a verdict may reach the node after other
    /// inputs that came later).
    pub fn hold_verdicts(&mut self, dc: usize) {
        self.dcs[dc].held_verdicts.get_or_insert_with(VecDeque::new);
    }

    /// Hands DC `dc`'s held verdicts to its node, in order, and stops holding them.
    pub fn release_verdicts(&mut self, dc: usize) {
        let now = MonoMs(self.now_ms);
        for verdict in self.dcs[dc].held_verdicts.take().unwrap_or_default() {
            self.note(format!("verdict {} {verdict:?}", self.dcs[dc].id));
            let d = &mut self.dcs[dc];
            d.node.as_mut().expect("a live node").handle_health(now, verdict, &d.store);
            self.after(dc);
        }
    }

    // ---- Crashes ----

    /// DC `dc` loses power: its node stops, its store keeps what was synced plus the first
    /// `keep` staged persists, its links drop (peers hear it at once) with what was queued on
    /// them, and its dials are forgotten. Returns how many staged persists were kept.
    pub fn crash(&mut self, dc: usize, keep: usize) -> usize {
        assert!(self.is_up(dc), "{} is already down", self.dcs[dc].id);
        for other in (0..self.dcs.len()).filter(|&o| o != dc) {
            self.close(dc, other, [false, true]);
        }
        self.dials.retain(|&(_, from, _)| from != dc);
        let d = &mut self.dcs[dc];
        d.node = None;
        d.health = None;
        d.held_verdicts = None;
        d.staged.clear();
        let unsynced = d.store.unsynced();
        let kept = d.store.crash(keep);
        self.note(format!("crash {} kept {kept} of {unsynced} unsynced persists", self.dcs[dc].id));
        kept
    }

    /// DC `dc`, down, loses its disk: it comes back with an empty store.
    pub fn replace_disk(&mut self, dc: usize) {
        assert!(!self.is_up(dc), "{} must be down to lose its disk", self.dcs[dc].id);
        self.dcs[dc].store = MemStore::new();
    }

    /// Starts DC `dc`'s node again from what its store holds durably, as the simulator does
    /// (its disk mode is kept). It is not linked: let its dials run ([`Cluster::run_for`]) or
    /// [`Cluster::connect_all`].
    pub fn restart(&mut self, dc: usize) {
        assert!(!self.is_up(dc), "{} is running", self.dcs[dc].id);
        self.dcs[dc].incarnation += 1;
        self.start_node(dc);
    }

    // ---- Stepping ----

    /// Carries out the oldest pending piece of work (a message delivery, a DC's sync or a
    /// dial). Returns whether there was one.
    pub fn step(&mut self) -> bool {
        let Some(work) = self.next_work() else { return false };
        self.stats.steps += 1;
        match work {
            Work::Deliver { from, to } => self.deliver(from, to),
            Work::Sync { dc } => {
                self.commit_staged(dc);
                self.after(dc);
            }
            Work::Dial => self.dial(),
        }
        true
    }

    /// Delivers the next message queued on the directed link `from` → `to`, whatever else is
    /// older. Returns whether there was one.
    pub fn deliver_next(&mut self, from: usize, to: usize) -> bool {
        if self.queued(from, to) == 0 {
            return false;
        }
        self.stats.steps += 1;
        self.deliver(from, to);
        true
    }

    /// Loses the next message queued on the directed link `from` → `to` (the link stays up, as
    /// if the peer's stream dropped it). Returns whether there was one.
    pub fn drop_next(&mut self, from: usize, to: usize) -> bool {
        let Some(queue) = self.queues.get_mut(&(from, to)) else { return false };
        let (_, message) = queue.pop_front().expect("queues are removed once empty");
        if queue.is_empty() {
            self.queues.remove(&(from, to));
        }
        self.stats.dropped += 1;
        self.note(format!("drop {} -> {} {}", self.dcs[from].id, self.dcs[to].id, describe(&message)));
        true
    }

    /// Steps until nothing is pending. Panics after [`DRIVE_STEPS_MAX`] steps.
    pub fn drive(&mut self) {
        assert!(
            self.drive_bounded(DRIVE_STEPS_MAX),
            "the cluster did not quiesce within {DRIVE_STEPS_MAX} steps ({} pending)",
            self.pending()
        );
    }

    /// Steps at most `steps_max` times. Returns whether the cluster quiesced (nothing pending).
    pub fn drive_bounded(&mut self, steps_max: usize) -> bool {
        for _ in 0..steps_max {
            if !self.step() {
                return true;
            }
        }
        self.pending() == 0
    }

    /// Moves the clock `ms` forward, firing each node's timers when due, in time order; messages
    /// and stepped syncs stay pending.
    pub fn advance(&mut self, ms: u64) {
        let until = self.now_ms + ms;
        let mut firings = 0;
        while let Some(at) = self.next_timer_ms().filter(|&at| at <= until) {
            firings += self.fire_timers(at);
            assert!(firings < TIMER_FIRINGS_MAX, "timers fired {firings} times before {until} ms");
        }
        self.now_ms = until;
    }

    /// Lets `ms` pass over an instant network and disk: drives, then fires each timer when due
    /// and drives again after it.
    pub fn run_for(&mut self, ms: u64) {
        let until = self.now_ms + ms;
        let mut firings = 0;
        self.drive();
        while let Some(at) = self.next_timer_ms().filter(|&at| at <= until) {
            firings += self.fire_timers(at);
            assert!(firings < TIMER_FIRINGS_MAX, "timers fired {firings} times before {until} ms");
            self.drive();
        }
        self.now_ms = until;
    }

    // ---- Internals ----

    fn note(&self, line: String) {
        if self.trace {
            eprintln!("{:>8} {line}", self.now_ms);
        }
    }

    fn take_work_seq(&mut self) -> u64 {
        self.next_work += 1;
        self.next_work
    }

    fn can_link(&self, a: usize, b: usize) -> bool {
        let p = pair(a, b);
        self.is_up(a) && self.is_up(b) && !self.blocked.contains(&p) && !self.links.contains(&p)
    }

    fn start_node(&mut self, dc: usize) {
        let (now, wall) = (MonoMs(self.now_ms), WallMs(self.wall_ms()));
        let d = &mut self.dcs[dc];
        let seen = LogRead::seen(&d.store).expect("the memory store reads");
        let acked = self
            .topology
            .dcs
            .iter()
            .filter(|other| other.id != d.id)
            .map(|other| (other.id.clone(), d.store.acked(&other.id).expect("the memory store reads")))
            .collect();
        let settled = d.store.identity().expect("the memory store reads").is_some_and(|i| i.settled);
        let startup = Startup { now, wall, seen, acked, settled };
        let seed = self.options.seed ^ ((dc as u64) << 40) ^ (u64::from(d.incarnation) << 32);
        let rng = StdRng::seed_from_u64(seed);
        let mut config = NodeConfig::new(&self.topology);
        config.planted = self.options.planted;
        if let Some(tune) = self.options.tune {
            tune(&mut config);
        }
        let node = Node::new(d.id.clone(), self.topology.clone(), config, startup, rng, &d.store);
        d.health = Some(node.health_monitor(now));
        d.node = Some(node);
        self.note(format!("start {} (incarnation {})", self.dcs[dc].id, self.dcs[dc].incarnation));
        self.after(dc);
    }

    /// A sync due under [`Disk::Stepped`]: the work sequence of the oldest staged persist.
    fn sync_work(&self, dc: usize) -> Option<u64> {
        let d = &self.dcs[dc];
        if d.disk != Disk::Stepped || d.node.is_none() {
            return None;
        }
        d.staged.front().map(|(seq, _)| *seq)
    }

    fn next_work(&self) -> Option<Work> {
        let messages = self
            .queues
            .iter()
            .filter_map(|(&(from, to), q)| q.front().map(|(seq, _)| (*seq, Work::Deliver { from, to })));
        let syncs =
            (0..self.dcs.len()).filter_map(|dc| self.sync_work(dc).map(|seq| (seq, Work::Sync { dc })));
        let dials = self.dials.front().map(|(seq, _, _)| (*seq, Work::Dial));
        messages.chain(syncs).chain(dials).min_by_key(|(seq, _)| *seq).map(|(_, work)| work)
    }

    fn deliver(&mut self, from: usize, to: usize) {
        let queue = self.queues.get_mut(&(from, to)).expect("chosen from the queues");
        let (_, message) = queue.pop_front().expect("chosen from the queues");
        if queue.is_empty() {
            self.queues.remove(&(from, to));
        }
        assert!(self.is_linked(from, to), "messages of a closed link are dropped with it");
        self.stats.delivered += 1;
        if let Message::Batch(batch) = &message {
            self.stats.ops_delivered += batch.ops.len() as u64;
        }
        self.note(format!("deliver {} -> {} {}", self.dcs[from].id, self.dcs[to].id, describe(&message)));
        let (now, wall) = (MonoMs(self.now_ms), WallMs(self.wall_ms()));
        let peer = self.dcs[from].id.clone();
        let d = &mut self.dcs[to];
        d.node.as_mut().expect("a linked DC is up").handle_message(now, wall, &peer, message, &d.store);
        self.after(to);
    }

    /// Carries out the oldest dial: connects if the link can open; if it is open already the
    /// dial was superseded; otherwise it failed.
    fn dial(&mut self) {
        let (_, dc, peer) = self.dials.pop_front().expect("chosen from the dials");
        self.stats.dials += 1;
        let now = MonoMs(self.now_ms);
        let peer_id = self.dcs[peer].id.clone();
        if self.can_link(dc, peer) {
            self.connect(dc, peer);
        } else if self.is_linked(dc, peer) {
            self.note(format!("dial {} -> {peer_id} superseded", self.dcs[dc].id));
            self.dcs[dc]
                .node
                .as_mut()
                .expect("dials of a down DC are dropped")
                .handle_dial_superseded(now, &peer_id);
            self.after(dc);
        } else {
            self.note(format!("dial {} -> {peer_id} failed", self.dcs[dc].id));
            self.dcs[dc]
                .node
                .as_mut()
                .expect("dials of a down DC are dropped")
                .handle_dial_failed(now, &peer_id);
            self.after(dc);
        }
    }

    /// Closes link `a`–`b` if open; `tell[0]` / `tell[1]`: whether `a` / `b` hears it.
    fn close(&mut self, a: usize, b: usize, tell: [bool; 2]) {
        if !self.links.remove(&pair(a, b)) {
            return;
        }
        for link in [(a, b), (b, a)] {
            if let Some(q) = self.queues.remove(&link) {
                self.stats.dropped += q.len() as u64;
            }
        }
        self.note(format!("disconnect {} {}", self.dcs[a].id, self.dcs[b].id));
        let now = MonoMs(self.now_ms);
        for ((x, y), told) in [(a, b), (b, a)].into_iter().zip(tell) {
            if !told {
                continue;
            }
            let peer = self.dcs[y].id.clone();
            if let Some(node) = self.dcs[x].node.as_mut() {
                node.handle_disconnected(now, &peer);
                self.after(x);
            }
        }
    }

    /// The next time a timer fires: the earliest deadline of a live node, never before now and
    /// always after the last firing.
    fn next_timer_ms(&self) -> Option<u64> {
        let earliest = self.dcs.iter().filter_map(Dc::poll_timeout).min()?;
        let floor = match self.fired_ms {
            Some(fired) if fired >= self.now_ms => fired + 1,
            _ => self.now_ms,
        };
        Some(earliest.max(floor))
    }

    /// Moves the clock to `at_ms` and fires the timers of every node due by then, in DC order.
    /// Returns how many fired.
    fn fire_timers(&mut self, at_ms: u64) -> usize {
        assert!(at_ms >= self.now_ms, "the clock is monotonic");
        self.now_ms = at_ms;
        self.fired_ms = Some(at_ms);
        let wall = WallMs(self.wall_ms());
        let mut fired = 0;
        for dc in 0..self.dcs.len() {
            let d = &mut self.dcs[dc];
            let Some(node) = d.node.as_mut() else { continue };
            if node.poll_timeout().is_some_and(|t| t.ms() <= at_ms) {
                node.handle_timeout(MonoMs(at_ms), &d.store);
                fired += 1;
                self.after(dc);
            }
            let d = &mut self.dcs[dc];
            let Some(health) = d.health.as_mut() else { continue };
            if health.poll_timeout().is_some_and(|t| t.ms() <= at_ms) {
                health.handle_timeout(MonoMs(at_ms), wall);
                fired += 1;
                self.carry_out_health(dc);
                self.after(dc);
            }
        }
        self.stats.timer_firings += fired as u64;
        fired
    }

    /// After an input to DC `dc`: carries out its effects; under [`Disk::Immediate`], syncs what
    /// they staged and carries out what the commits bring, until nothing is staged.
    fn after(&mut self, dc: usize) {
        self.carry_out_effects(dc);
        while self.dcs[dc].disk == Disk::Immediate && !self.dcs[dc].staged.is_empty() && self.is_up(dc) {
            self.commit_staged(dc);
        }
    }

    /// Syncs DC `dc`'s store and reports each staged persist committed, in emission order,
    /// carrying out the effects of each report before the next.
    fn commit_staged(&mut self, dc: usize) {
        if self.dcs[dc].staged.is_empty() {
            return;
        }
        self.stats.syncs += 1;
        let d = &mut self.dcs[dc];
        d.store.sync();
        let ids: Vec<PersistId> = d.staged.drain(..).map(|(_, id)| id).collect();
        self.note(format!("sync {} persists {ids:?}", self.dcs[dc].id));
        let now = MonoMs(self.now_ms);
        for id in ids {
            let d = &mut self.dcs[dc];
            d.node.as_mut().expect("a down DC stages nothing").handle_committed(now, id, &d.store);
            self.carry_out_effects(dc);
        }
    }

    fn carry_out_effects(&mut self, dc: usize) {
        while let Some(effect) = self.dcs[dc].node.as_mut().and_then(|n| n.poll_effect()) {
            self.effect(dc, effect);
        }
    }

    /// Carries out what DC `dc`'s health monitor asked for, as the node's runtime does: its
    /// heartbeats go on the links, its verdicts to the node.
    fn carry_out_health(&mut self, dc: usize) {
        let now = MonoMs(self.now_ms);
        while let Some(output) = self.dcs[dc].health.as_mut().and_then(HealthMonitor::poll_output) {
            match output {
                HealthOutput::Send { to, heartbeat } => self.send(dc, &to, Message::Heartbeat(heartbeat)),
                HealthOutput::Verdict(verdict) => {
                    let d = &mut self.dcs[dc];
                    if let Some(held) = d.held_verdicts.as_mut() {
                        held.push_back(verdict);
                        continue;
                    }
                    d.node
                        .as_mut()
                        .expect("the monitor runs beside a live node")
                        .handle_health(now, verdict, &d.store);
                }
            }
        }
    }

    /// `message` from DC `dc` goes on its link to `to`, or is dropped if there is none.
    fn send(&mut self, dc: usize, to: &DcId, message: Message) {
        let to = self.index(to);
        self.check_durable_before_leaving(dc, &message);
        let message = self.through_the_wire(dc, to, message);
        if self.is_linked(dc, to) {
            let seq = self.take_work_seq();
            self.queues.entry((dc, to)).or_default().push_back((seq, message));
        } else {
            self.stats.dropped += 1;
        }
    }

    fn effect(&mut self, dc: usize, effect: Effect) {
        match effect {
            Effect::Send { to, message } => self.send(dc, &to, message),
            Effect::Health(input) => {
                let now = MonoMs(self.now_ms);
                self.dcs[dc].health.as_mut().expect("the monitor runs beside a live node").handle(now, input);
                self.carry_out_health(dc);
            }
            Effect::Persist { id, batch } => {
                let seq = self.take_work_seq();
                let d = &mut self.dcs[dc];
                d.store.stage(batch);
                d.staged.push_back((seq, id));
            }
            Effect::Reply { request, dot, outcome, .. } => {
                let durable = self.durable(dc);
                assert!(
                    durable.covers(&dot),
                    "{} answered request {request:?} ({dot:?}) before it was durable (durable: {durable:?})",
                    self.dcs[dc].id
                );
                self.note(format!("reply {} request {request:?} {dot:?} {outcome:?}", self.dcs[dc].id));
                self.dcs[dc].replies.push(Reply { request, dot, outcome });
            }
            Effect::Conflict(c) => self.dcs[dc].conflicts.push(c),
            Effect::Dial { peer, .. } => {
                let peer = self.index(&peer);
                let seq = self.take_work_seq();
                self.dials.push_back((seq, dc, peer));
            }
            Effect::Close { peer } => {
                let peer = self.index(&peer);
                self.close(dc, peer, [false, true]);
            }
            Effect::Compact { below } => {
                let d = &mut self.dcs[dc];
                // Its own transaction, after everything staged before it (the staged persists
                // are durable from here on; their commits are still reported at the next sync).
                d.store.compact_log(&below).expect("the memory store compacts");
                let durable = self.durable(dc);
                assert!(
                    durable.dominates(&below),
                    "{} compacted below {below:?}, beyond what it holds durably ({durable:?})",
                    self.dcs[dc].id
                );
                self.note(format!("compact {} below {below:?}", self.dcs[dc].id));
                self.dcs[dc].compactions.push(below);
            }
            Effect::Alarm(alarm) => {
                self.note(format!("alarm {} {alarm:?}", self.dcs[dc].id));
                self.dcs[dc].alarms.push(alarm);
            }
        }
    }

    /// DESIGN.md, "Durability rules": no dot leaves a process before it is durable there.
    fn check_durable_before_leaving(&self, dc: usize, message: &Message) {
        let durable = self.durable(dc);
        let id = &self.dcs[dc].id;
        let claimed = match message {
            Message::Batch(batch) => {
                for op in &batch.ops {
                    assert!(durable.covers(&op.dot), "{id} sent {:?} before it was durable", op.dot);
                }
                return;
            }
            Message::Hello(m) => &m.seen,
            Message::Ack(m) => &m.seen,
            Message::Heartbeat(m) => &m.seen,
            Message::SnapshotChunk(m) => &m.vector,
            Message::SnapshotRequest(_) => return,
        };
        assert!(
            durable.dominates(claimed),
            "{id} sent {} claiming {claimed:?}, beyond what it holds durably ({durable:?})",
            describe(message)
        );
    }

    /// Encodes `message` as `from` would and decodes it as `to` would (both validate).
    fn through_the_wire(&mut self, from: usize, to: usize, message: Message) -> Message {
        let frame = self.codec.encode(&message).unwrap_or_else(|e| {
            panic!(
                "{} -> {}: {} cannot be framed: {e}",
                self.dcs[from].id,
                self.dcs[to].id,
                describe(&message)
            )
        });
        self.stats.wire_bytes += frame.len() as u64;
        let decoded = self.codec.decode_frame(&frame).expect("a frame the codec wrote decodes");
        let decoded = decoded.expect("a frame of this version has a known kind");
        assert_eq!(decoded, message, "the wire changed a message");
        decoded
    }
}

/// A short description of a message, for traces and panics.
fn describe(message: &Message) -> String {
    match message {
        Message::Hello(m) => format!("hello {:?}", m.seen),
        Message::Batch(m) => {
            let first = m.ops.first().map(|op| format!("{:?}", op.dot)).unwrap_or_default();
            format!("batch of {} ops from {first}", m.ops.len())
        }
        Message::Ack(m) => format!("ack {:?}", m.seen),
        Message::Heartbeat(m) => format!("heartbeat {:?}", m.seen),
        Message::SnapshotRequest(m) => format!("snapshot request {} after {:?}", m.request_id, m.after),
        Message::SnapshotChunk(m) => {
            format!("snapshot chunk {} of {} entries (last: {})", m.request_id, m.entries.len(), m.last)
        }
    }
}
