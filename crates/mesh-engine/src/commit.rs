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
    /// Joined into the stored `seen` vector (the ops this DC has applied).
    pub seen: VersionVector,
    /// Per peer, joined into the stored acked vector (what the peer confirmed durable).
    pub acked: Vec<(DcId, VersionVector)>,
    /// Idempotency keys of the batch's client writes, so a retry after a restart is still
    /// recognised within the window.
    pub idempotency: Vec<IdempotencyRecord>,
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
        self.ops.is_empty() && self.states.is_empty() && self.seen.is_empty() && self.acked.is_empty()
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
}
