//! Operations: the unit of replication.

use crate::{DcId, Dot, Hlc, Key, Keyspace, VersionVector};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// Largest value (or set member) a put may carry, in bytes.
pub const VALUE_BYTES_MAX: usize = 1 << 20;

/// The type of value a keyspace holds; fixed per keyspace by its strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueKind {
    /// Opaque bytes, with siblings while writes are concurrent.
    Register,
    /// A PN-counter.
    Counter,
    /// An observed-remove set of byte strings.
    Set,
}

/// What an op does to its key.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OpKind {
    /// Writes a value, superseding the versions in the op's context.
    Put(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Writes a tombstone, superseding the versions in the op's context.
    Delete,
    /// Adds a signed amount to a counter.
    CounterAdd(i64),
    /// Adds members to a set.
    SetAdd(Vec<ByteBuf>),
    /// Removes the members' adds that the op's context covers (observed-remove).
    SetRemove(Vec<ByteBuf>),
}

impl OpKind {
    /// The value type this op applies to.
    pub fn value_kind(&self) -> ValueKind {
        match self {
            OpKind::Put(_) | OpKind::Delete => ValueKind::Register,
            OpKind::CounterAdd(_) => ValueKind::Counter,
            OpKind::SetAdd(_) | OpKind::SetRemove(_) => ValueKind::Set,
        }
    }

    /// Bytes of payload the op carries (value or members), for limits and accounting.
    pub fn payload_bytes(&self) -> usize {
        match self {
            OpKind::Put(v) => v.len(),
            OpKind::Delete | OpKind::CounterAdd(_) => 0,
            OpKind::SetAdd(m) | OpKind::SetRemove(m) => m.iter().map(|b| b.len()).sum(),
        }
    }
}

impl std::fmt::Debug for OpKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpKind::Put(v) => write!(f, "Put({} bytes)", v.len()),
            OpKind::Delete => write!(f, "Delete"),
            OpKind::CounterAdd(n) => write!(f, "CounterAdd({n})"),
            OpKind::SetAdd(m) => write!(f, "SetAdd({} members)", m.len()),
            OpKind::SetRemove(m) => write!(f, "SetRemove({} members)", m.len()),
        }
    }
}

/// One replicated write. Its `context` holds only the dots of this key the writer had seen (a
/// per-key vector), never the DC's whole `seen` vector, so the metadata stays a few bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Op {
    /// The op's name: origin DC and gapless seq.
    pub dot: Dot,
    /// When the origin created it, for LWW ordering.
    pub hlc: Hlc,
    /// The keyspace of the key.
    pub keyspace: Keyspace,
    /// The key written.
    pub key: Key,
    /// What the op does.
    pub kind: OpKind,
    /// The versions of this key the writer had seen: a put or delete supersedes them, a set
    /// remove removes the adds it covers. Empty for counter adds and set adds.
    pub context: VersionVector,
}

impl Op {
    /// The DC that created the op.
    pub fn origin(&self) -> &DcId {
        &self.dot.origin
    }
}
