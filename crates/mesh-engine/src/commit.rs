//! What the engine asks the store to commit, and what it reads back.
//!
//! The engine never imports a store (DESIGN.md): it emits [`CommitBatch`]es in its persist
//! effects and reads key states through [`StateRead`], which the stores implement.

use mesh_core::{DcId, Dot, Key, KeyState, Keyspace, Op, VersionVector};
use serde::{Deserialize, Serialize};

/// One atomic commit: ops for the log, the key states they produced, and vectors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitBatch {
    /// Ops to append to their origins' logs (local writes and applied remote ops alike).
    pub ops: Vec<Op>,
    /// Key states to write; `None` removes the key (tombstone GC).
    pub states: Vec<(Keyspace, Key, Option<KeyState>)>,
    /// Per entry of `states` (missing entries count as `false`): whether that state is the
    /// key's state before this batch (as the earlier batches leave it) with this batch's ops of
    /// the key applied in order by [`KeyState::apply`]. A store may then persist those ops
    /// instead of the state, and rebuild the state from them on recovery: a set add then writes
    /// the add, not the whole set.
    pub states_from_ops: Vec<bool>,
    /// Joined into the stored `seen` vector (the ops this DC has applied).
    pub seen: VersionVector,
    /// Per peer, joined into the stored acked vector (what the peer confirmed durable).
    pub acked: Vec<(DcId, VersionVector)>,
    /// Idempotency keys of the batch's client writes, so a retry after a restart is still
    /// recognised within the window.
    pub idempotency: Vec<IdempotencyRecord>,
    /// Replaces the store's identity record, when set.
    pub identity: Option<StoreIdentity>,
}

/// What a store records about itself, beside the data: the topology it was written under and
/// whether it is known to hold every dot its DC ever issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreIdentity {
    /// [`mesh_core::Topology::fingerprint`] of the topology the data was written under: a store
    /// written under other strategies or value types must not be served under these.
    pub topology_fingerprint: u64,
    /// This DC's start gate passed on this store (DESIGN.md, "Durability rules"): every peer's
    /// Hello was heard and every own op a peer held is back, so the store's own log names every
    /// dot this DC ever issued and later starts may take writes without hearing every peer. A
    /// new (or replaced) disk starts without it.
    pub settled: bool,
}

/// A remembered idempotency key: the write it named, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    /// The client's key.
    pub key: String,
    /// The write's dot.
    pub dot: Dot,
    /// A hash of the write (keyspace, key, kind), to refuse the key's reuse for another write.
    pub fingerprint: u64,
    /// The wall clock when the write was accepted, in ms: records older than the window are
    /// dropped.
    pub wall_ms: u64,
}

impl CommitBatch {
    /// Number of ops in the batch.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch carries no op, state or vector.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
            && self.states.is_empty()
            && self.seen.is_empty()
            && self.acked.is_empty()
            && self.identity.is_none()
    }
}

/// Reads the durable state of keys. The stores implement it; the engine's resolver reads through
/// it the states its writes and applies build on.
pub trait StateRead {
    /// Why a read failed.
    type Error: std::error::Error;

    /// The durable state of a key (`None`: never written, or removed).
    fn state(&self, keyspace: &Keyspace, key: &Key) -> Result<Option<KeyState>, Self::Error>;

    /// The idempotency records accepted at or after `since_wall_ms`, oldest first, to restore a
    /// resolver after a restart.
    fn idempotency_records(&self, since_wall_ms: u64) -> Result<Vec<IdempotencyRecord>, Self::Error>;

    /// Walks the durable keys for tombstone GC: up to `max` keys after `after` (exclusive), in
    /// (keyspace, key) order, whose state holds a tombstone ([`KeyState::has_tombstones`]),
    /// with the last key returned when there were `max` (`None`: the walk reached the end).
    /// Implementations MUST keep an index of those keys rather than examine every key: GC must
    /// reach a stable tombstone within a few rounds however many keys the store holds, or DCs
    /// whose walks stand at different points hold different tombstones long after every DC
    /// could collect them (deleted keys stay, with their context, so the keys only grow).
    fn scan_tombstoned(&self, after: Option<&(Keyspace, Key)>, max: usize) -> Result<Scan, Self::Error>;

    /// Cuts a consistent snapshot of every key state and the vector it reflects, for state
    /// transfer to a peer behind the retained log.
    fn snapshot(&self) -> Result<Box<dyn SnapshotRead>, Self::Error>;
}

/// A consistent view of every key state, cut in one read transaction, and the `seen` vector it
/// holds exactly the effects of.
pub trait SnapshotRead: Send {
    /// The vector at the cut.
    fn vector(&self) -> &VersionVector;

    /// Up to `entries_max` key states after `after` (exclusive), in (keyspace, key) order; empty
    /// when done.
    fn chunk(
        &self,
        after: Option<&(Keyspace, Key)>,
        entries_max: usize,
    ) -> Result<Vec<(Keyspace, Key, KeyState)>, SnapshotError>;
}

/// One step of a walk over the keys ([`StateRead::scan_tombstoned`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// The keys found.
    pub keys: Vec<(Keyspace, Key)>,
    /// Where the next step starts; `None` when the walk is complete.
    pub last: Option<(Keyspace, Key)>,
}

/// Why a read of the op log returned no ops.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogReadError<E> {
    /// The log no longer holds the op of `origin` after `after_seq`, but later ones: they were
    /// compacted away ([`crate::retention`]), and a peer that needs them catches up by state
    /// transfer (as raft-rs's `StorageError::Compacted`).
    #[error("the log of {origin} no longer holds the op after seq {after_seq}")]
    Compacted {
        /// The origin.
        origin: DcId,
        /// The seq the read started after.
        after_seq: u64,
    },
    /// The store failed.
    #[error(transparent)]
    Store(E),
}

/// Why a snapshot chunk could not be read: the store's error.
pub type SnapshotError = Box<dyn std::error::Error + Send + Sync>;

/// Reads the durable op log: what replicators send. The stores implement it (DESIGN.md: the
/// engine defines the log-read trait it needs).
pub trait OpLog {
    /// Why a read failed.
    type Error: std::error::Error;

    /// Up to `ops_max` ops of `origin` with seqs `after_seq + 1, after_seq + 2, …` without a gap,
    /// stopping early once `bytes_max` encoded bytes are reached (always at least one op when any
    /// is there). Empty when the log holds nothing after `after_seq`;
    /// [`LogReadError::Compacted`] when it no longer holds `after_seq + 1` but later ops.
    fn read_ops(
        &self,
        origin: &DcId,
        after_seq: u64,
        ops_max: usize,
        bytes_max: usize,
    ) -> Result<Vec<Op>, LogReadError<Self::Error>>;

    /// Encoded bytes of every op in the log (for the `log_retention_bytes` cap).
    fn log_bytes(&self) -> Result<u64, Self::Error>;
}
