//! The conflict resolver: the one place a DC's key states change.
//!
//! It names local writes (the next gapless seq of this DC and an HLC), applies remote ops
//! idempotently and per origin in seq order through the keyspace's rules, and asks the runtime to
//! persist each change. Everything that depends on a change (the write's completion, the ack to
//! the sender, the conflict record) is held until the runtime reports that change durable: no dot
//! leaves this DC before it is durable (DESIGN.md, "Durability rules").
//!
//! Call order:
//! - [`Resolver::handle_write`] for a client write, [`Resolver::handle_batch`] for ops from a
//!   peer; both may emit [`Output::Persist`].
//! - The runtime commits each persisted batch in the order emitted and then calls
//!   [`Resolver::handle_committed`] with its id, in that same order (the store commits in
//!   submission order). A failed commit leaves the store poisoned: the runtime restarts the DC
//!   from its store, and no held output is ever released.
//! - Drain [`Resolver::poll_output`] after every call, or after a run of calls: changes made
//!   between two polls share one persist (a client batch of many writes is one commit), which
//!   the first poll emits.

use crate::commit::{CommitBatch, IdempotencyRecord, StateRead};
use crate::sync::RequestId;
use crate::time::{MonoMs, WallMs};
use crate::PlantedBug;
use mesh_core::topology::Topology;
use mesh_core::{
    Applied, Conflict, DcId, Dot, HlcClock, Key, KeyState, Keyspace, Op, OpKind, StateError, Strategy,
    VersionVector, VALUE_BYTES_MAX,
};
use std::collections::{BTreeMap, VecDeque};
// foldhash, not SipHash: every op of a batch goes through these maps (a SipHash insert and the
// per-persist map's rehashes were ~13 % of a receiving DC's runtime threads in a 1M-SET profile).
use hashbrown::HashMap;
use std::sync::Arc;

/// Names a persist effect; reported back through [`Resolver::handle_committed`]. Assigned in
/// increasing order, from 1.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PersistId(pub u64);

impl std::fmt::Display for PersistId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A client write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteRequest {
    /// The runtime's id for the request.
    pub request: RequestId,
    /// Keyspace written.
    pub keyspace: Keyspace,
    /// Key written.
    pub key: Key,
    /// What the write does.
    pub kind: OpKind,
    /// The context the client read, if it sent one.
    pub context: Option<VersionVector>,
    /// The client's idempotency key: a retry with the same key within the window is answered
    /// with the first write's outcome instead of writing again (per DC).
    pub idempotency_key: Option<String>,
}

/// Why a client write was refused. Nothing was written and no seq was used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The keyspace is not in the topology.
    #[error("unknown keyspace {0}")]
    UnknownKeyspace(Keyspace),
    /// The value or members exceed the size limit.
    #[error("the write carries {bytes} bytes, more than the {max}-byte limit")]
    TooLarge {
        /// Bytes carried.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The write does not fit the key's state (wrong value type, too many siblings, counter
    /// overflow).
    #[error(transparent)]
    State(#[from] StateError),
    /// The write's context (the client's, or the key's here) already names the dot this write
    /// would get: a context made up, or one from before this DC lost its disk. Nothing was
    /// written; writes to other keys move the seq on.
    #[error("the context names {0:?}, a write this DC has not issued; read the key again and retry")]
    UnissuedDot(Dot),
    /// A put to a `write_once` keyspace whose key already has a value at this DC. Nothing was
    /// written.
    #[error("the key already has a value and its keyspace is write_once; delete it first")]
    Exists,
    /// This DC's clock is off against most peers; keyspaces whose resolution orders by time
    /// (lww, priority, custom resolvers that declare it) refuse writes.
    #[error("this DC's clock is off by more than max_clock_skew_ms against most peers; {strategy} writes are refused")]
    ClockSkewed {
        /// The keyspace's strategy.
        strategy: String,
    },
    /// The key's current state could not be read.
    #[error("reading the key's state failed: {0}")]
    Read(String),
    /// The idempotency key was used within the window for a different write.
    #[error("idempotency key {0:?} was already used for a different write")]
    IdempotencyKeyReused(String),
}

/// Why applying a peer's ops stopped. The ops before the failing one were applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// An op skips ahead of its origin's stream: `expected` was due, `got` came.
    #[error("gap in {origin}'s ops: expected seq {expected}, got {got}")]
    Gap {
        /// The origin.
        origin: DcId,
        /// The next seq this DC can apply.
        expected: u64,
        /// The seq that came.
        got: u64,
    },
    /// The op cannot apply here (unknown keyspace or wrong value type): the peers' topologies
    /// differ, which the Hello fingerprint check should have refused.
    #[error("op {dot:?} refused: {reason}")]
    Refused {
        /// The op.
        dot: Dot,
        /// Why.
        reason: String,
    },
    /// A key's state could not be read.
    #[error("reading a key's state failed: {0}")]
    Read(String),
    /// A snapshot chunk does not fit this DC's topology (the fingerprint check should have
    /// refused the link).
    #[error("snapshot chunk refused: {0}")]
    SnapshotRefused(String),
}

/// What the runtime must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Commit `batch` durably, then call [`Resolver::handle_committed`]`(id)`.
    Persist {
        /// The id to report.
        id: PersistId,
        /// What to commit.
        batch: CommitBatch,
    },
    /// The client write `request` is durable here as `dot` (hand it to the sync tracker).
    Written {
        /// The request.
        request: RequestId,
        /// The write's dot.
        dot: Dot,
        /// Its keyspace (for its mode).
        keyspace: Keyspace,
        /// What it changed here (`None`: an idempotent retry, which changed nothing).
        summary: Option<WriteSummary>,
    },
    /// Tell `to` that this DC has durably applied `seen`.
    Ack {
        /// The peer whose ops were applied.
        to: DcId,
        /// This DC's applied vector, durable.
        seen: VersionVector,
    },
    /// Concurrent writes were resolved (after the change was durable).
    Conflict(Conflict),
    /// A snapshot chunk from `from` is durably merged: the next one may be asked for (so a
    /// transfer never runs ahead of the disk).
    ChunkMerged {
        /// The DC the transfer comes from.
        from: DcId,
    },
}

/// Most idempotency keys remembered at once; the oldest are forgotten first.
pub const IDEMPOTENCY_KEYS_MAX: usize = 100_000;

/// What an idempotency key stands for.
#[derive(Debug, Clone)]
struct Remembered {
    /// A hash of what the first write was, to refuse the key's reuse for another one (a hash,
    /// not the write, so a remembered key costs the same whatever the value's size).
    fingerprint: u64,
    dot: Dot,
    /// The persist that holds the write, while it is not committed.
    persist: Option<PersistId>,
    at_ms: u64,
}

/// A hash of a write, stored with its idempotency key: xxh3 over explicit bytes, so it stays the
/// same across Rust releases (std's `Hash` layouts and `DefaultHasher` may change).
fn fingerprint(keyspace: &Keyspace, key: &Key, kind: &OpKind) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let field = |h: &mut xxhash_rust::xxh3::Xxh3, bytes: &[u8]| {
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field(&mut h, keyspace.as_str().as_bytes());
    field(&mut h, key.as_str().as_bytes());
    match kind {
        OpKind::Put(v) => {
            field(&mut h, b"put");
            field(&mut h, v);
        }
        OpKind::Delete => field(&mut h, b"delete"),
        OpKind::CounterAdd(n) => {
            field(&mut h, b"counter-add");
            field(&mut h, &n.to_le_bytes());
        }
        OpKind::SetAdd(members) | OpKind::SetRemove(members) => {
            field(&mut h, if matches!(kind, OpKind::SetAdd(_)) { b"set-add" } else { b"set-remove" });
            for m in members {
                field(&mut h, m);
            }
        }
    }
    h.digest()
}

/// What can be checked of a client write from the topology alone: the keyspace exists, the op
/// fits its value type, the payload fits the size limit. Returns the keyspace's spec. (The API
/// checks a whole batch with it before writing any of it.)
pub fn check_write<'t>(
    topology: &'t Topology,
    keyspace: &Keyspace,
    kind: &OpKind,
) -> Result<&'t mesh_core::topology::KeyspaceSpec, WriteError> {
    let spec = topology.keyspace(keyspace).ok_or_else(|| WriteError::UnknownKeyspace(keyspace.clone()))?;
    if kind.value_kind() != spec.kind {
        return Err(WriteError::State(StateError::WrongKind { op: kind.value_kind(), key: spec.kind }));
    }
    let bytes = kind.payload_bytes();
    if bytes > VALUE_BYTES_MAX {
        return Err(WriteError::TooLarge { bytes, max: VALUE_BYTES_MAX });
    }
    Ok(spec)
}

/// What a client write changed at the DC that took it, as Redis' replies report it: INCR's new
/// value, the members SADD added or SREM removed, whether DEL found a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteSummary {
    /// A put.
    Put,
    /// A delete; whether the key had a value to read before it (by the keyspace's strategy).
    Delete {
        /// It had.
        existed: bool,
    },
    /// A counter add; the counter's value here right after it.
    Counter(i64),
    /// A set add or remove; how many of its distinct members were absent (add) or present
    /// (remove) before it.
    Members(u64),
}

/// For a set op, how many of its distinct members it changes in `state`; 0 for other ops.
fn members_changed(state: &KeyState, kind: &OpKind) -> u64 {
    let mesh_core::Value::Set(set) = state.value() else { return 0 };
    let (members, present) = match kind {
        OpKind::SetAdd(m) => (m, false),
        OpKind::SetRemove(m) => (m, true),
        _ => return 0,
    };
    let distinct: std::collections::BTreeSet<&[u8]> = members.iter().map(|m| m.as_slice()).collect();
    distinct.into_iter().filter(|m| set.contains(m) == present).count() as u64
}

/// A persist being filled (see [`Resolver::poll_output`]).
#[derive(Debug)]
struct OpenPersist {
    id: PersistId,
    batch: CommitBatch,
}

/// The conflict resolver of one DC. See the module docs for the call order.
#[derive(Debug)]
pub struct Resolver {
    local: DcId,
    topology: Arc<Topology>,
    clock: HlcClock,
    /// The next seq of this DC's own ops.
    next_seq: u64,
    /// Everything applied here, committed or not.
    applied: VersionVector,
    /// States changed by persists not yet committed (`None`: removed), with the last persist
    /// that changed each.
    pending: HashMap<(Keyspace, Key), (Option<KeyState>, PersistId)>,
    /// The keys each uncommitted persist put in `pending`, oldest first (so a commit forgets
    /// its keys without walking every pending state).
    pending_keys: VecDeque<(PersistId, Vec<(Keyspace, Key)>)>,
    /// Outputs held until their persist commits, oldest persist first.
    held: VecDeque<(PersistId, Vec<Output>)>,
    /// The persist collecting the changes since the last [`Resolver::poll_output`] (its held
    /// outputs are the last entry of `held`).
    open: Option<OpenPersist>,
    /// Where each key of the open persist sits in its `batch.states`; emptied at each flush
    /// and kept, with its capacity, for the next persist: a fresh index per persist allocated
    /// and grew a table for each batch's keys (a receiving DC's largest single cost in
    /// `persist`, 1M-SET profile in docs/performance.md).
    open_index: HashMap<(Keyspace, Key), usize>,
    next_persist: PersistId,
    skewed: bool,
    outputs: VecDeque<Output>,
    /// Remote timestamps seen beyond the skew bound (for metrics and alerts).
    skew_excess_events: u64,
    idempotency: BTreeMap<String, Remembered>,
    /// (time, key) in arrival order, to forget keys by age and by count.
    idempotency_order: VecDeque<(u64, String)>,
    idempotency_window_ms: u64,
    /// Remembered keys whose write is not committed yet, by persist, oldest first.
    idempotency_inflight: VecDeque<(PersistId, String)>,
    planted: Option<PlantedBug>,
}

impl Resolver {
    /// A resolver for DC `local` whose store has durably applied `seen` (so its next seq follows
    /// `seen[local]`).
    pub fn new(local: DcId, topology: Arc<Topology>, seen: VersionVector) -> Self {
        let max_skew_ms = topology.config.replication.max_clock_skew_ms;
        let idempotency_window_ms = topology.config.replication.idempotency_window_s.saturating_mul(1_000);
        Self {
            next_seq: seen.get(&local) + 1,
            local,
            topology,
            clock: HlcClock::new(max_skew_ms),
            applied: seen,
            pending: HashMap::new(),
            pending_keys: VecDeque::new(),
            held: VecDeque::new(),
            open: None,
            open_index: HashMap::new(),
            next_persist: PersistId(1),
            skewed: false,
            outputs: VecDeque::new(),
            skew_excess_events: 0,
            idempotency: BTreeMap::new(),
            idempotency_order: VecDeque::new(),
            idempotency_window_ms,
            idempotency_inflight: VecDeque::new(),
            planted: None,
        }
    }

    /// Test only: plants a known bug (see [`PlantedBug`]), so the simulator can show that its
    /// checkers catch it. Never set in production.
    pub fn plant(&mut self, bug: PlantedBug) {
        self.planted = Some(bug);
        if bug == PlantedBug::SeqReuseAfterRestart {
            // The bug: the next seq is taken as the last durable one, not the one after it.
            self.next_seq = self.next_seq.saturating_sub(1).max(1);
        }
    }

    /// Everything applied here (including changes not yet durable). Never sent to a peer: the
    /// runtime sends only vectors from released outputs or from the store.
    pub fn applied(&self) -> &VersionVector {
        &self.applied
    }

    /// Remote timestamps seen beyond `max_clock_skew_ms` so far.
    pub fn skew_excess_events(&self) -> u64 {
        self.skew_excess_events
    }

    /// A peer reported (in its Hello) that it has applied this DC's ops up to `seq`: this DC's
    /// next seq goes past it, so a seq lost with unsynced writes is never reused (DESIGN.md,
    /// "Durability rules"). The runtime accepts writes only after hearing from peers, or after
    /// the bound for starting a new incarnation.
    pub fn handle_peer_seen(&mut self, seq: u64) {
        self.next_seq = self.next_seq.max(seq + 1);
    }

    /// On restart: the idempotency records the store kept (see
    /// [`StateRead::idempotency_records`]), so a client retrying across the restart inside the
    /// window still gets the first write's outcome. `now` and `wall` are the runtime and wall
    /// clocks now; records older than the window are skipped.
    pub fn handle_restored_idempotency(
        &mut self,
        records: Vec<IdempotencyRecord>,
        now: MonoMs,
        wall: WallMs,
    ) {
        let (now_ms, wall_ms) = (now.0, wall.0);
        for r in records {
            let age_ms = wall_ms.saturating_sub(r.wall_ms);
            if age_ms > self.idempotency_window_ms {
                continue;
            }
            let at_ms = now_ms.saturating_sub(age_ms);
            let remembered = Remembered { fingerprint: r.fingerprint, dot: r.dot, persist: None, at_ms };
            self.idempotency.insert(r.key.clone(), remembered);
            self.idempotency_order.push_back((at_ms, r.key));
        }
        self.forget_idempotency_keys(now_ms);
    }

    /// Records `identity` in the store with the next persist (opened now if none is), ahead of
    /// every write accepted after this call.
    pub fn handle_identity(&mut self, identity: crate::StoreIdentity) {
        self.open_persist();
        self.open.as_mut().expect("just opened").batch.identity = Some(identity);
    }

    /// The idempotency window, in ms (`idempotency_window_s`).
    pub fn idempotency_window_ms(&self) -> u64 {
        self.idempotency_window_ms
    }

    /// On restart: the highest HLC in this DC's store (its log's last ops), so local writes keep
    /// ordering after the ones before the restart even if the wall clock went backwards.
    pub fn handle_restored_hlc(&mut self, hlc: mesh_core::Hlc, wall: WallMs) {
        self.clock.observe(hlc, wall.0);
    }

    /// The health monitor's verdict on this DC's clock ([`crate::health::HealthMonitor::clock_skewed`]).
    pub fn handle_clock_skewed(&mut self, skewed: bool) {
        self.skewed = skewed;
    }

    /// The clock verdict last taken ([`Resolver::handle_clock_skewed`]).
    pub fn clock_skewed(&self) -> bool {
        self.skewed
    }

    fn current(
        &self,
        keyspace: &Keyspace,
        key: &Key,
        store: &impl StateRead,
    ) -> Result<Option<KeyState>, String> {
        if let Some((state, _)) = self.pending.get(&(keyspace.clone(), key.clone())) {
            return Ok(state.clone());
        }
        store.state(keyspace, key).map_err(|e| e.to_string())
    }

    /// A client write at `now` (runtime clock) when the wall clock reads `wall`. On success
    /// the write is named and persisted; [`Output::Written`] follows its commit. A retry with a
    /// remembered idempotency key writes nothing: it gets the first write's [`Output::Written`],
    /// at once if that write is durable, else with it. On error nothing changed.
    pub fn handle_write(
        &mut self,
        now: MonoMs,
        wall: WallMs,
        write: WriteRequest,
        store: &impl StateRead,
    ) -> Result<(), WriteError> {
        let (now_ms, wall_ms) = (now.0, wall.0);
        self.forget_idempotency_keys(now_ms);
        if let Some(key) = &write.idempotency_key {
            if let Some(r) = self.idempotency.get(key) {
                if r.fingerprint != fingerprint(&write.keyspace, &write.key, &write.kind) {
                    return Err(WriteError::IdempotencyKeyReused(key.clone()));
                }
                let written = Output::Written {
                    request: write.request,
                    dot: r.dot.clone(),
                    keyspace: write.keyspace,
                    summary: None,
                };
                match r.persist.and_then(|p| self.held.iter_mut().find(|(id, _)| *id == p)) {
                    Some((_, held)) => held.push(written),
                    None => self.outputs.push_back(written),
                }
                return Ok(());
            }
        }
        let spec = check_write(&self.topology, &write.keyspace, &write.kind)?;
        if self.skewed && spec.rules.orders_by_time() {
            return Err(WriteError::ClockSkewed { strategy: spec.rules.strategy().to_string() });
        }
        let state = self
            .current(&write.keyspace, &write.key, store)
            .map_err(WriteError::Read)?
            .unwrap_or_else(|| KeyState::new(spec.kind));
        if spec.write_once
            && matches!(write.kind, OpKind::Put(_))
            && spec.rules.read(&state).value.is_present()
        {
            return Err(WriteError::Exists);
        }
        let context = state.write_context(
            &write.kind,
            write.context.as_ref(),
            spec.rules.contextless_write_is_new_sibling(),
            spec.siblings_max,
        )?;
        // A context naming a write of this DC it has not issued yet: a client's made-up context,
        // or a write from before this DC lost its disk that no peer held (DESIGN.md's new
        // incarnation would free the seq; until then the write is refused, not misnamed).
        let dot = Dot::new(self.local.clone(), self.next_seq);
        if context.covers(&dot) || state.context().covers(&dot) {
            return Err(WriteError::UnissuedDot(dot));
        }
        let op = Op {
            dot,
            hlc: self.clock.tick(wall_ms),
            keyspace: write.keyspace.clone(),
            key: write.key.clone(),
            kind: write.kind,
            context,
        };
        let changed = members_changed(&state, &op.kind);
        let existed = matches!(op.kind, OpKind::Delete) && spec.rules.read(&state).value.is_present();
        let mut next = state;
        let concurrent = match next.apply(&op)? {
            Applied::Applied { concurrent } => concurrent,
            Applied::Covered => unreachable!("a dot neither context covers applies"),
        };
        self.next_seq += 1;
        self.applied.observe(&op.dot);
        let summary = match &op.kind {
            OpKind::Put(_) => WriteSummary::Put,
            OpKind::Delete => WriteSummary::Delete { existed },
            OpKind::CounterAdd(_) => WriteSummary::Counter(next.counter_value().expect("a counter key")),
            OpKind::SetAdd(_) | OpKind::SetRemove(_) => WriteSummary::Members(changed),
        };
        let mut held = vec![Output::Written {
            request: write.request,
            dot: op.dot.clone(),
            keyspace: write.keyspace,
            summary: Some(summary),
        }];
        held.extend(self.conflict(&op, &next, !concurrent.is_empty()));
        let mut records = Vec::new();
        if let Some(key) = write.idempotency_key {
            let fingerprint = fingerprint(&op.keyspace, &op.key, &op.kind);
            let persist = self.open_persist();
            let r = Remembered { fingerprint, dot: op.dot.clone(), persist: Some(persist), at_ms: now_ms };
            self.idempotency.insert(key.clone(), r);
            self.idempotency_inflight.push_back((persist, key.clone()));
            self.idempotency_order.push_back((now_ms, key.clone()));
            records.push(IdempotencyRecord { key, dot: op.dot.clone(), fingerprint, wall_ms });
        }
        let k = (op.keyspace.clone(), op.key.clone());
        self.persist(vec![op], vec![(k, Some(next))], true, records, held);
        Ok(())
    }

    /// Forgets idempotency keys older than the window, and the oldest beyond the count bound.
    fn forget_idempotency_keys(&mut self, now_ms: u64) {
        while let Some((at_ms, key)) = self.idempotency_order.front() {
            let expired = now_ms.saturating_sub(*at_ms) > self.idempotency_window_ms;
            if !expired && self.idempotency_order.len() <= IDEMPOTENCY_KEYS_MAX {
                break;
            }
            // A key re-remembered later has a newer entry; forget only the entry of this time.
            if self.idempotency.get(key).is_some_and(|r| r.at_ms == *at_ms) {
                self.idempotency.remove(key);
            }
            self.idempotency_order.pop_front();
        }
    }

    /// Ops from peer `from` (its own or relayed), in the order sent. Each origin's ops apply in
    /// seq order; ops already applied are skipped. The applied ops are persisted together and
    /// acknowledged to `from` once durable. On error, the ops before the failing one stay applied.
    pub fn handle_batch(
        &mut self,
        wall: WallMs,
        from: &DcId,
        ops: Vec<Op>,
        store: &impl StateRead,
    ) -> Result<(), ApplyError> {
        let wall_ms = wall.0;
        let mut result = Ok(());
        for op in ops {
            if self.applied.covers(&op.dot) {
                continue;
            }
            let expected = self.applied.get(&op.dot.origin) + 1;
            if op.dot.seq != expected {
                result = Err(ApplyError::Gap { origin: op.dot.origin.clone(), expected, got: op.dot.seq });
                break;
            }
            let Some(spec) = self.topology.keyspace(&op.keyspace) else {
                result = Err(ApplyError::Refused {
                    dot: op.dot.clone(),
                    reason: format!("unknown keyspace {}", op.keyspace),
                });
                break;
            };
            // The newest state, including this batch's earlier ops (already in the open persist).
            let mut next = match self.current(&op.keyspace, &op.key, store) {
                Ok(s) => s.unwrap_or_else(|| KeyState::new(spec.kind)),
                Err(e) => {
                    result = Err(ApplyError::Read(e));
                    break;
                }
            };
            let concurrent = match next.apply(&op) {
                Ok(Applied::Applied { concurrent }) => !concurrent.is_empty(),
                // Superseded by a context this DC already absorbed: nothing to change, but the
                // op is still logged and counted as applied.
                Ok(Applied::Covered) => false,
                Err(e) => {
                    result = Err(ApplyError::Refused { dot: op.dot.clone(), reason: e.to_string() });
                    break;
                }
            };
            if self.clock.observe(op.hlc, wall_ms).excess_ms > 0 {
                self.skew_excess_events += 1;
            }
            self.applied.observe(&op.dot);
            if op.dot.origin == self.local {
                // This DC's own ops coming back (a peer resending what it had): never reuse them.
                self.next_seq = self.next_seq.max(op.dot.seq + 1);
            }
            let held: Vec<Output> = self.conflict(&op, &next, concurrent).into_iter().collect();
            let k = (op.keyspace.clone(), op.key.clone());
            self.persist(vec![op], vec![(k, Some(next))], true, vec![], held);
        }
        // The ack follows the commit of everything applied so far (this batch's ops, or, for a
        // resend that brought nothing new, the newest persist awaiting its commit).
        let ack = Output::Ack { to: from.clone(), seen: self.applied.clone() };
        let planted = self.planted == Some(PlantedBug::AckBeforeCommit) && self.open.is_some();
        match self.held.back_mut() {
            Some((_, last)) if !planted => last.push(ack),
            _ => self.outputs.push_back(ack),
        }
        result
    }

    /// Tombstone GC: drops from `keys` the tombstones `stable` covers ([`KeyState::gc_tombstones`];
    /// beside live versions only in siblings keyspaces, whose reads never show tombstones).
    /// `stable` MUST follow the rule of DESIGN.md: every DC reported a `seen` covering it, and
    /// this DC has applied each reporter's own ops up to that report. The changes are persisted
    /// like any other. Returns how many keys lost tombstones.
    ///
    /// A key keeps its context: a later write here then carries it, so a DC that has not
    /// collected the same tombstones yet sees the write as superseding them (removing the key
    /// would make such a write look concurrent with them, and a priority or lww resolution could
    /// then differ between DCs).
    pub fn handle_gc(
        &mut self,
        keys: Vec<(Keyspace, Key)>,
        stable: &VersionVector,
        store: &impl StateRead,
    ) -> Result<usize, String> {
        let mut removed = Vec::new();
        for (keyspace, key) in keys {
            let Some(spec) = self.topology.keyspace(&keyspace) else { continue };
            let beside_live = *spec.rules.strategy() == Strategy::Siblings;
            let Some(mut state) = self.current(&keyspace, &key, store)? else { continue };
            if state.gc_tombstones(stable, beside_live) {
                removed.push(((keyspace, key), Some(state)));
            }
        }
        let n = removed.len();
        if n > 0 {
            self.persist(vec![], removed, false, vec![], vec![]);
        }
        Ok(n)
    }

    /// The current state of a key as this DC will have it once every emitted persist commits.
    pub fn state(
        &self,
        keyspace: &Keyspace,
        key: &Key,
        store: &impl StateRead,
    ) -> Result<Option<KeyState>, String> {
        self.current(keyspace, key, store)
    }

    /// State transfer, on the receiving DC: key states from a peer's snapshot, joined into this
    /// DC's (ops already applied here stay), and persisted like any change. On error nothing of
    /// the chunk was applied.
    pub fn handle_snapshot_chunk(
        &mut self,
        from: &DcId,
        entries: Vec<(Keyspace, Key, KeyState)>,
        store: &impl StateRead,
    ) -> Result<(), ApplyError> {
        let mut states = Vec::with_capacity(entries.len());
        for (keyspace, key, theirs) in entries {
            let Some(spec) = self.topology.keyspace(&keyspace) else {
                return Err(ApplyError::SnapshotRefused(format!("unknown keyspace {keyspace}")));
            };
            if theirs.kind() != spec.kind {
                let reason =
                    format!("{keyspace}/{key} holds a {:?}, the keyspace a {:?}", theirs.kind(), spec.kind);
                return Err(ApplyError::SnapshotRefused(reason));
            }
            let mine = self.current(&keyspace, &key, store).map_err(ApplyError::Read)?;
            let mut merged = mine.unwrap_or_else(|| KeyState::new(spec.kind));
            merged.merge(&theirs);
            states.push(((keyspace, key), Some(merged)));
        }
        let merged = Output::ChunkMerged { from: from.clone() };
        if states.is_empty() {
            match self.held.back_mut() {
                Some((_, last)) => last.push(merged),
                None => self.outputs.push_back(merged),
            }
        } else {
            self.persist(vec![], states, false, vec![], vec![merged]);
        }
        Ok(())
    }

    /// State transfer, on the receiving DC: every chunk of the snapshot from `from` was merged,
    /// so everything its `vector` covers is applied here (though this DC's log lacks those ops).
    /// Persisted after the chunks; the ack to `from` follows that commit.
    pub fn handle_snapshot_done(&mut self, from: &DcId, vector: &VersionVector) {
        self.applied.join(vector);
        // The snapshot may hold this DC's own ops that it lost: never name them again.
        self.next_seq = self.next_seq.max(vector.get(&self.local) + 1);
        // The vector is persisted with the open persist; the ack waits for its commit.
        self.open_persist();
        self.open.as_mut().expect("just opened").batch.seen.join(vector);
        let ack = Output::Ack { to: from.clone(), seen: self.applied.clone() };
        self.held.back_mut().expect("the open persist's entry").1.push(ack);
    }

    /// The conflict record for `op` applied to `state`, if it left concurrent versions.
    fn conflict(&self, op: &Op, state: &KeyState, concurrent: bool) -> Option<Output> {
        if !concurrent {
            return None;
        }
        let spec = self.topology.keyspace(&op.keyspace)?;
        let mut conflict = spec.rules.conflict(&op.keyspace, &op.key, state.versions());
        if self.planted == Some(PlantedBug::LwwTieFavoursLocal) && *spec.rules.strategy() == Strategy::Lww {
            if let Some(dot) = crate::planted::lww_tie_favouring(state.versions(), &self.local) {
                conflict.winner = Some(dot);
            }
        }
        Some(Output::Conflict(conflict))
    }

    /// The id of the open persist, opening one if none is.
    fn open_persist(&mut self) -> PersistId {
        if let Some(open) = &self.open {
            return open.id;
        }
        let id = self.next_persist;
        self.next_persist = PersistId(id.0 + 1);
        self.held.push_back((id, Vec::new()));
        self.open = Some(OpenPersist { id, batch: CommitBatch::default() });
        id
    }

    /// Adds to the open persist `ops`, the key `states` they produced and the `idempotency`
    /// records of their client writes, and holds `held` until it commits. `from_ops`: each state
    /// is the key's newest state with `ops` applied ([`CommitBatch::states_from_ops`]), not a
    /// merge or a collection.
    fn persist(
        &mut self,
        ops: Vec<Op>,
        states: Vec<((Keyspace, Key), Option<KeyState>)>,
        from_ops: bool,
        idempotency: Vec<IdempotencyRecord>,
        held: Vec<Output>,
    ) {
        let id = self.open_persist();
        let open = self.open.as_mut().expect("just opened");
        for op in &ops {
            open.batch.seen.observe(&op.dot);
        }
        open.batch.ops.extend(ops);
        open.batch.idempotency.extend(idempotency);
        self.open_index.reserve(states.len());
        open.batch.states.reserve(states.len());
        open.batch.states_from_ops.reserve(states.len());
        for (k, state) in states {
            self.pending.insert(k.clone(), (state.clone(), id));
            // A key changed twice in one persist is stored once, as it ends; it is derived from
            // the persist's ops only if every change to it was an op's.
            match self.open_index.get(&k) {
                Some(&i) => {
                    open.batch.states[i].2 = state;
                    open.batch.states_from_ops[i] &= from_ops;
                }
                None => {
                    open.batch.states.push((k.0.clone(), k.1.clone(), state));
                    open.batch.states_from_ops.push(from_ops);
                    self.open_index.insert(k, open.batch.states.len() - 1);
                }
            }
        }
        if self.planted == Some(PlantedBug::AckBeforeCommit) {
            // The bug: what depends on the commit leaves before it.
            self.outputs.extend(held);
        } else {
            self.held.back_mut().expect("the open persist's entry").1.extend(held);
        }
    }

    /// Emits the open persist, if any.
    fn flush(&mut self) {
        if let Some(open) = self.open.take() {
            if !self.open_index.is_empty() {
                self.pending_keys.push_back((open.id, self.open_index.drain().map(|(k, _)| k).collect()));
            }
            self.outputs.push_back(Output::Persist { id: open.id, batch: open.batch });
        }
    }

    /// Persist `id` is durable. Releases what it held; the store now has its states.
    ///
    /// # Panics
    /// If `id` is not the oldest persist awaiting its commit: commits are reported in order.
    pub fn handle_committed(&mut self, id: PersistId) {
        let (oldest, held) = self.held.pop_front().expect("a commit was awaited");
        assert_eq!(oldest, id, "commits are reported in submission order");
        while self.pending_keys.front().is_some_and(|(p, _)| *p <= id) {
            let (_, keys) = self.pending_keys.pop_front().expect("checked");
            for k in keys {
                // A later persist of the same key keeps it pending.
                if self.pending.get(&k).is_some_and(|(_, p)| *p <= id) {
                    self.pending.remove(&k);
                }
            }
        }
        while self.idempotency_inflight.front().is_some_and(|(p, _)| *p <= id) {
            let (p, key) = self.idempotency_inflight.pop_front().expect("checked");
            if let Some(r) = self.idempotency.get_mut(&key).filter(|r| r.persist == Some(p)) {
                r.persist = None;
            }
        }
        self.outputs.extend(held);
    }

    /// The next output to act on.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.flush();
        self.outputs.pop_front()
    }
}
