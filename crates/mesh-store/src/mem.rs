//! The in-memory store for the simulator, with crash semantics.
//!
//! Commits come in two steps, as on a real disk: [`MemStore::stage`] queues a batch and
//! [`MemStore::sync`] makes every staged batch durable (the fsync). Reads see durable state
//! only, as redb's reads see only committed transactions, so the simulator cannot lean on
//! anything the durable store would not show. The simulator
//! reports `committed(id)` only after it called `sync`, after a simulated disk latency.
//! [`MemStore::crash`] keeps the durable state plus a prefix of the staged batches, as a real
//! disk may have written some of them before the power went.
//!
//! Through the [`Store`] trait, `submit` stages and syncs at once.

use crate::{
    CommitBatch, CommitDone, IdempotencyRecord, LogPage, LogRead, LogStats, Snapshot, Store, StoreError,
    StoreIdentity,
};
use mesh_core::{DcId, Key, KeyState, Keyspace, Op, VersionVector};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Mutex;

/// Everything a DC stores, as plain maps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct MemState {
    kv: BTreeMap<(Keyspace, Key), KeyState>,
    /// The keys of `kv` whose state holds a tombstone (tombstone GC's walk), as the durable
    /// store indexes them.
    tombstoned: BTreeSet<(Keyspace, Key)>,
    /// Ops by (origin, seq), with their encoded size.
    log: BTreeMap<(DcId, u64), (Op, usize)>,
    /// Per origin, the highest seq logged; as in the durable store, an op at or below it is a
    /// duplicate and is not logged again (even after compaction removed the first copy).
    log_last: VersionVector,
    seen: VersionVector,
    acked: BTreeMap<DcId, VersionVector>,
    stats: LogStats,
    /// (accepted at wall ms, key) → record. Not pruned: a simulation is bounded; readers ask
    /// for the records of their window.
    idempotency: BTreeMap<(u64, String), IdempotencyRecord>,
    identity: Option<StoreIdentity>,
}

impl MemState {
    fn apply(&mut self, batch: &CommitBatch) {
        for op in &batch.ops {
            if self.log_last.covers(&op.dot) {
                continue;
            }
            self.log_last.observe(&op.dot);
            let bytes = crate::encode(op).len();
            self.log.insert((op.dot.origin.clone(), op.dot.seq), (op.clone(), bytes));
            self.stats.ops += 1;
            self.stats.bytes += bytes as u64;
        }
        for (keyspace, key, state) in &batch.states {
            let k = (keyspace.clone(), key.clone());
            if state.as_ref().is_some_and(KeyState::has_tombstones) {
                self.tombstoned.insert(k.clone());
            } else {
                self.tombstoned.remove(&k);
            }
            match state {
                Some(state) => self.kv.insert(k, state.clone()),
                None => self.kv.remove(&k),
            };
        }
        self.seen.join(&batch.seen);
        for (peer, vv) in &batch.acked {
            self.acked.entry(peer.clone()).or_default().join(vv);
        }
        for r in &batch.idempotency {
            self.idempotency.insert((r.wall_ms, r.key.clone()), r.clone());
        }
        if let Some(identity) = batch.identity {
            self.identity = Some(identity);
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// What survives a crash, and what reads see.
    durable: MemState,
    /// Staged, not yet synced, with their ids, oldest first.
    staged: VecDeque<(u64, CommitBatch)>,
    next_id: u64,
}

/// In-memory [`Store`] with crash semantics. See the module docs.
#[derive(Debug, Default)]
pub struct MemStore {
    inner: Mutex<Inner>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("a MemStore user panicked while holding it")
    }

    /// Queues `batch` without making it durable (nor visible). Returns its id; ids increase.
    pub fn stage(&self, batch: CommitBatch) -> u64 {
        let mut inner = self.lock();
        inner.next_id += 1;
        let id = inner.next_id;
        inner.staged.push_back((id, batch));
        id
    }

    /// Makes every staged batch durable. Returns the id of the last one (0 if none ever).
    pub fn sync(&self) -> u64 {
        let mut inner = self.lock();
        while let Some((_, batch)) = inner.staged.pop_front() {
            inner.durable.apply(&batch);
        }
        inner.next_id
    }

    /// Number of staged, unsynced batches.
    pub fn unsynced(&self) -> usize {
        self.lock().staged.len()
    }

    /// Loses power: keeps the durable state plus the first `keep` staged batches (fewer if fewer
    /// are staged) and drops the rest. Returns how many staged batches were kept.
    pub fn crash(&self, keep: usize) -> usize {
        let mut inner = self.lock();
        let keep = keep.min(inner.staged.len());
        let kept: Vec<CommitBatch> = inner.staged.drain(..).take(keep).map(|(_, b)| b).collect();
        for batch in &kept {
            inner.durable.apply(batch);
        }
        keep
    }
}

impl LogRead for MemStore {
    fn seen(&self) -> Result<VersionVector, StoreError> {
        Ok(self.lock().durable.seen.clone())
    }

    fn read_log(
        &self,
        origin: &DcId,
        after_seq: u64,
        ops_max: usize,
        bytes_max: usize,
    ) -> Result<Vec<Op>, StoreError> {
        let inner = self.lock();
        let mut page = LogPage::new(origin, after_seq, ops_max, bytes_max);
        let from = (origin.clone(), after_seq.saturating_add(1));
        let to = (origin.clone(), u64::MAX);
        for (op, bytes) in inner.durable.log.range(from..=to).map(|(_, entry)| entry) {
            if !page.offer(op.clone(), *bytes)? {
                break;
            }
        }
        Ok(page.finish())
    }

    fn log_first_seq(&self, origin: &DcId) -> Result<Option<u64>, StoreError> {
        let inner = self.lock();
        let first = inner.durable.log.range((origin.clone(), 0)..=(origin.clone(), u64::MAX)).next();
        Ok(first.map(|((_, seq), _)| *seq))
    }
}

impl Store for MemStore {
    fn scan_tombstoned(
        &self,
        after: Option<&(Keyspace, Key)>,
        max: usize,
    ) -> Result<mesh_engine::Scan, StoreError> {
        use std::ops::Bound;
        let inner = self.lock();
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let keys: Vec<(Keyspace, Key)> = inner
            .durable
            .tombstoned
            .range::<(Keyspace, Key), _>((start, Bound::Unbounded))
            .take(max)
            .cloned()
            .collect();
        let last = if keys.len() == max { keys.last().cloned() } else { None };
        Ok(mesh_engine::Scan { keys, last })
    }

    fn submit(&self, batch: CommitBatch, done: CommitDone) {
        self.stage(batch);
        self.sync();
        done(Ok(()));
    }

    fn get(&self, keyspace: &Keyspace, key: &Key) -> Result<Option<KeyState>, StoreError> {
        Ok(self.lock().durable.kv.get(&(keyspace.clone(), key.clone())).cloned())
    }

    fn tombstones_held(&self) -> Result<u64, StoreError> {
        Ok(self.lock().durable.kv.values().filter(|s| s.has_tombstones()).count() as u64)
    }

    fn key_count(&self) -> Result<u64, StoreError> {
        Ok(self.lock().durable.kv.len() as u64)
    }

    fn acked(&self, peer: &DcId) -> Result<VersionVector, StoreError> {
        Ok(self.lock().durable.acked.get(peer).cloned().unwrap_or_default())
    }

    fn identity(&self) -> Result<Option<StoreIdentity>, StoreError> {
        Ok(self.lock().durable.identity)
    }

    fn compact_log(&self, below: &VersionVector) -> Result<u64, StoreError> {
        // Compaction is its own durable transaction, committed after everything staged before it.
        self.sync();
        let mut inner = self.lock();
        let doomed: Vec<(DcId, u64)> =
            inner.durable.log.keys().filter(|(origin, seq)| below.get(origin) >= *seq).cloned().collect();
        for k in &doomed {
            let state = &mut inner.durable;
            if let Some((_, bytes)) = state.log.remove(k) {
                state.stats.ops -= 1;
                state.stats.bytes -= bytes as u64;
            }
        }
        Ok(doomed.len() as u64)
    }

    fn log_stats(&self) -> Result<LogStats, StoreError> {
        Ok(self.lock().durable.stats)
    }

    fn idempotency_records(&self, since_wall_ms: u64) -> Result<Vec<IdempotencyRecord>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .durable
            .idempotency
            .range((since_wall_ms, String::new())..)
            .map(|(_, r)| r.clone())
            .collect())
    }

    fn snapshot(&self) -> Result<Box<dyn Snapshot>, StoreError> {
        // A copy: a simulation's key set is small, and the copy is what makes the cut consistent.
        let inner = self.lock();
        Ok(Box::new(MemSnapshot { vector: inner.durable.seen.clone(), kv: inner.durable.kv.clone() }))
    }
}

struct MemSnapshot {
    vector: VersionVector,
    kv: BTreeMap<(Keyspace, Key), KeyState>,
}

impl Snapshot for MemSnapshot {
    fn vector(&self) -> &VersionVector {
        &self.vector
    }

    fn chunk(
        &self,
        after: Option<&(Keyspace, Key)>,
        entries_max: usize,
    ) -> Result<Vec<(Keyspace, Key, KeyState)>, StoreError> {
        use std::ops::Bound;
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(self
            .kv
            .range::<(Keyspace, Key), _>((start, Bound::Unbounded))
            .take(entries_max)
            .map(|((ks, k), s)| (ks.clone(), k.clone(), s.clone()))
            .collect())
    }
}
