//! mesh-store: where a DC keeps its key states, its op log and its version vectors.
//!
//! The [`Store`] trait is what the engine's shell needs: commit a group of ops atomically with
//! the resulting key states and vectors (durable before the call reports success), read keys,
//! read an origin's log in seq order through a cursor, persist peers' acked vectors, compact the
//! log, and cut a consistent snapshot for state transfer.
//!
//! Two implementations:
//! - [`DurableStore`]: redb on a file, with group commit (concurrent submitters share one fsync).
//! - [`MemStore`]: in memory, for the simulator, with crash semantics: a crash keeps the synced
//!   commits plus at most a prefix of the unsynced ones.
//!
//! [`testing::PowerLossDisk`] is a redb storage backend that loses every write after the last
//! sync, for crash tests that kill -9 alone cannot make honest.
#![warn(missing_docs, unreachable_pub)]

mod durable;
mod mem;
pub mod testing;

pub use durable::{
    CheckpointStats, DurableStore, Options, Recovered, GROUP_OPS_MAX, LOG_CHUNK_OPS_MAX,
    LOG_CHUNK_PAYLOAD_BYTES_MAX,
};
pub use mem::MemStore;

use mesh_core::{DcId, Key, KeyState, Keyspace, Op, VersionVector};
pub use mesh_engine::{CommitBatch, IdempotencyRecord, StoreIdentity};

/// A store operation that failed. What happened to state is said per variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The database reported an error on a read (IO, or corruption it detected). Nothing was
    /// changed.
    #[error("storage error: {0}")]
    Db(String),
    /// A commit (or a checkpoint or compaction) failed in a way that leaves its outcome unknown:
    /// it may or may not be durable. The store is now poisoned: every later call fails with
    /// [`StoreError::Poisoned`] until it is reopened, and reopening tells what became durable.
    /// A caller MUST NOT treat the commit as rolled back (for example reuse its seqs).
    #[error("commit outcome unknown, the store must be reopened: {0}")]
    OutcomeUnknown(String),
    /// An earlier commit's outcome is unknown ([`StoreError::OutcomeUnknown`]); the store
    /// refuses everything until it is reopened. Nothing was changed.
    #[error("the store is poisoned by an earlier failed commit; reopen it")]
    Poisoned,
    /// The ops asked for were compacted away (or never logged here, after a state transfer):
    /// the log of `origin` has no op `after_seq + 1`; the next op it holds is `next_seq`, if
    /// any. A peer that needs them catches up by state transfer. Nothing was changed.
    #[error("the log of {origin} has no op after seq {after_seq} (next held: {next_seq:?})")]
    Compacted {
        /// The origin whose log was read.
        origin: DcId,
        /// The seq the read started after.
        after_seq: u64,
        /// The lowest seq above `after_seq` still held, if any.
        next_seq: Option<u64>,
    },
    /// A stored record could not be decoded: the store is damaged. Nothing was changed.
    #[error("stored {what} could not be decoded: {detail}")]
    Corrupt {
        /// Which kind of record.
        what: &'static str,
        /// The decoder's message.
        detail: String,
    },
    /// The store was closed or its committer stopped; the commit was not applied.
    #[error("the store is closed")]
    Closed,
}

/// Called once with the outcome of a submitted commit.
pub type CommitDone = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// Size of an origin's log and of the whole log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Ops in the log.
    pub ops: u64,
    /// Encoded bytes of those ops.
    pub bytes: u64,
}

/// Reads the op log. The engine's replicators read through this.
pub trait LogRead {
    /// The vector of ops this DC has applied, as durably committed.
    fn seen(&self) -> Result<VersionVector, StoreError>;

    /// Up to `ops_max` ops of `origin` with seqs `after_seq + 1, after_seq + 2, …` without a gap,
    /// stopping early once `bytes_max` encoded bytes are reached (always at least one op when any
    /// is there) or at a gap. Empty when nothing follows `after_seq`;
    /// [`StoreError::Compacted`] when the log holds later ops but not `after_seq + 1`. Loads at
    /// most one log chunk beyond what it returns, so a replicator's window stays bounded.
    fn read_log(
        &self,
        origin: &DcId,
        after_seq: u64,
        ops_max: usize,
        bytes_max: usize,
    ) -> Result<Vec<Op>, StoreError>;

    /// The lowest seq of `origin` still in the log, if any (everything below was compacted).
    fn log_first_seq(&self, origin: &DcId) -> Result<Option<u64>, StoreError>;
}

/// A cursor over one origin's log: remembers where it is and reads page by page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogCursor {
    /// The origin whose log is read.
    pub origin: DcId,
    /// The seq of the last op returned (0: none yet).
    pub after_seq: u64,
}

impl LogCursor {
    /// A cursor that will return `origin`'s ops after `after_seq`.
    pub fn new(origin: DcId, after_seq: u64) -> Self {
        Self { origin, after_seq }
    }

    /// The next page of at most `ops_max` ops / `bytes_max` bytes; empty at the end of the log.
    ///
    /// # Panics
    /// If the log returns a gap or goes backwards, which [`LogRead::read_log`] never does.
    pub fn next_page(
        &mut self,
        log: &(impl LogRead + ?Sized),
        ops_max: usize,
        bytes_max: usize,
    ) -> Result<Vec<Op>, StoreError> {
        let page = log.read_log(&self.origin, self.after_seq, ops_max, bytes_max)?;
        for op in &page {
            assert_eq!(op.dot.origin, self.origin, "log returned another origin's op");
            assert_eq!(
                op.dot.seq,
                self.after_seq + 1,
                "gap in {}'s log after seq {}",
                self.origin,
                self.after_seq
            );
            self.after_seq = op.dot.seq;
        }
        Ok(page)
    }
}

/// A consistent view of every key state and the vector it reflects, cut in one read
/// transaction, for state transfer to a peer behind the retained log.
pub trait Snapshot: Send {
    /// The `seen` vector at the moment of the cut: the snapshot holds exactly these ops' effects.
    fn vector(&self) -> &VersionVector;

    /// Up to `entries_max` key states after `after` (exclusive), in (keyspace, key) order; empty
    /// when done.
    fn chunk(
        &self,
        after: Option<&(Keyspace, Key)>,
        entries_max: usize,
    ) -> Result<Vec<(Keyspace, Key, KeyState)>, StoreError>;
}

/// A DC's storage. See the crate docs.
pub trait Store: LogRead + Send + Sync {
    /// Submits `batch`; `done` is called once it is durable (or failed). Batches are applied in
    /// submission order; concurrent submissions may share one durable commit. `done` may run on
    /// another thread and MUST NOT block on the store.
    fn submit(&self, batch: CommitBatch, done: CommitDone);

    /// Submits `batch` and waits until it is durable.
    fn commit(&self, batch: CommitBatch) -> Result<(), StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.submit(
            batch,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv().unwrap_or(Err(StoreError::Closed))
    }

    /// The durable state of a key.
    fn get(&self, keyspace: &Keyspace, key: &Key) -> Result<Option<KeyState>, StoreError>;

    /// Number of keys with a durable state (deleted keys whose tombstones are not collected yet
    /// included), as Redis' `DBSIZE` reports.
    fn key_count(&self) -> Result<u64, StoreError>;

    /// Number of keys whose state holds a tombstone not collected yet.
    fn tombstones_held(&self) -> Result<u64, StoreError>;

    /// The vector `peer` last confirmed durable, as persisted.
    fn acked(&self, peer: &DcId) -> Result<VersionVector, StoreError>;

    /// The identity record the last batch carrying one wrote ([`CommitBatch::identity`]);
    /// `None` for a new store (or one written before identities were recorded).
    fn identity(&self) -> Result<Option<StoreIdentity>, StoreError>;

    /// Removes log entries the vector `below` covers. A store that keeps the log in chunks may
    /// keep covered entries that share a chunk with uncovered ones, until a later compaction.
    /// Returns how many were removed.
    fn compact_log(&self, below: &VersionVector) -> Result<u64, StoreError>;

    /// Ops and bytes in the log.
    fn log_stats(&self) -> Result<LogStats, StoreError>;

    /// Cuts a consistent snapshot.
    fn snapshot(&self) -> Result<Box<dyn Snapshot>, StoreError>;

    /// Tombstone GC's walk: up to `max` durable keys holding tombstones after `after`, in key
    /// order, from an index of those keys: the walk never examines a key without tombstones, so
    /// a pass takes as many rounds as there are tombstoned keys, not keys. A candidate list: the
    /// caller re-reads each key before acting on it.
    fn scan_tombstoned(
        &self,
        after: Option<&(Keyspace, Key)>,
        max: usize,
    ) -> Result<mesh_engine::Scan, StoreError>;

    /// The idempotency records committed with client writes accepted at or after
    /// `since_wall_ms`, oldest first. Older records may have been dropped.
    fn idempotency_records(&self, since_wall_ms: u64) -> Result<Vec<IdempotencyRecord>, StoreError>;
}

/// Assembles one page of [`LogRead::read_log`] from an origin's ops offered in seq order, so both
/// stores apply the same limits and the same gap rule.
pub(crate) struct LogPage<'a> {
    origin: &'a DcId,
    after_seq: u64,
    ops_max: usize,
    bytes_max: usize,
    bytes: usize,
    ops: Vec<Op>,
}

impl<'a> LogPage<'a> {
    pub(crate) fn new(origin: &'a DcId, after_seq: u64, ops_max: usize, bytes_max: usize) -> Self {
        Self { origin, after_seq, ops_max, bytes_max, bytes: 0, ops: Vec::new() }
    }

    /// The origin read.
    pub(crate) fn origin(&self) -> &DcId {
        self.origin
    }

    /// The seq after which the page starts.
    pub(crate) fn after_seq(&self) -> u64 {
        self.after_seq
    }

    /// Whether the page is full: offer nothing more.
    pub(crate) fn is_full(&self) -> bool {
        self.ops.len() >= self.ops_max || (!self.ops.is_empty() && self.bytes >= self.bytes_max)
    }

    /// Offers the next op the log holds (seq > `after_seq`, increasing) and its size. Returns
    /// whether to keep offering; an error when the very first op is not `after_seq + 1`.
    pub(crate) fn offer(&mut self, op: Op, op_bytes: usize) -> Result<bool, StoreError> {
        let expected = self.ops.last().map_or(self.after_seq, |last| last.dot.seq) + 1;
        if op.dot.seq != expected {
            if self.ops.is_empty() {
                let (origin, after_seq) = (self.origin.clone(), self.after_seq);
                return Err(StoreError::Compacted { origin, after_seq, next_seq: Some(op.dot.seq) });
            }
            // A gap after some ops: return those; the next read reports the gap.
            return Ok(false);
        }
        if self.is_full() {
            return Ok(false);
        }
        self.bytes += op_bytes;
        self.ops.push(op);
        Ok(true)
    }

    pub(crate) fn finish(self) -> Vec<Op> {
        self.ops
    }
}

pub(crate) fn encode<T: serde::Serialize + ?Sized>(value: &T) -> Vec<u8> {
    rmp_serde::to_vec(value).expect("in-memory msgpack encoding of our own types cannot fail")
}

/// [`encode`] into `buf`, which is cleared first: a caller encoding many values reuses one
/// buffer instead of growing a new one for each.
pub(crate) fn encode_into<T: serde::Serialize + ?Sized>(buf: &mut Vec<u8>, value: &T) {
    buf.clear();
    rmp_serde::encode::write(buf, value).expect("in-memory msgpack encoding of our own types cannot fail")
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    rmp_serde::from_slice(bytes).map_err(|e| StoreError::Corrupt { what, detail: e.to_string() })
}

/// A store snapshot, as the engine reads it.
struct EngineSnapshot(Box<dyn Snapshot>);

impl mesh_engine::SnapshotRead for EngineSnapshot {
    fn vector(&self) -> &VersionVector {
        self.0.vector()
    }

    fn chunk(
        &self,
        after: Option<&(Keyspace, Key)>,
        entries_max: usize,
    ) -> Result<Vec<(Keyspace, Key, KeyState)>, mesh_engine::SnapshotError> {
        Ok(self.0.chunk(after, entries_max)?)
    }
}

// Every store serves the engine's state reads with its durable states.
macro_rules! state_read {
    ($($t:ty),*) => {$(
        impl mesh_engine::StateRead for $t {
            type Error = StoreError;

            fn state(&self, keyspace: &Keyspace, key: &Key) -> Result<Option<KeyState>, StoreError> {
                self.get(keyspace, key)
            }

            fn idempotency_records(&self, since_wall_ms: u64) -> Result<Vec<IdempotencyRecord>, StoreError> {
                Store::idempotency_records(self, since_wall_ms)
            }

            fn scan_tombstoned(
                &self,
                after: Option<&(Keyspace, Key)>,
                max: usize,
            ) -> Result<mesh_engine::Scan, StoreError> {
                Store::scan_tombstoned(self, after, max)
            }

            fn snapshot(&self) -> Result<Box<dyn mesh_engine::SnapshotRead>, StoreError> {
                Ok(Box::new(EngineSnapshot(Store::snapshot(self)?)))
            }
        }

        impl mesh_engine::OpLog for $t {
            type Error = StoreError;

            fn read_ops(
                &self,
                origin: &DcId,
                after_seq: u64,
                ops_max: usize,
                bytes_max: usize,
            ) -> Result<Vec<Op>, mesh_engine::LogReadError<StoreError>> {
                match self.read_log(origin, after_seq, ops_max, bytes_max) {
                    Ok(ops) => Ok(ops),
                    Err(StoreError::Compacted { origin, after_seq, .. }) => {
                        Err(mesh_engine::LogReadError::Compacted { origin, after_seq })
                    }
                    Err(e) => Err(mesh_engine::LogReadError::Store(e)),
                }
            }

            fn log_bytes(&self) -> Result<u64, StoreError> {
                Ok(self.log_stats()?.bytes)
            }
        }
    )*};
}
state_read!(DurableStore, MemStore, dyn Store);
