//! The rules every message must follow, checked before encoding and after decoding (STYLE.md
//! rule 7), so a bug on one side is caught on both.

use crate::config::CodecConfig;
use crate::message::{Batch, Heartbeat, Message, SnapshotChunk, SnapshotRequest, TraceContext};
use mesh_core::{DcId, KeyState, Op, OpKind, Value, ValueKind, VersionVector, VALUE_BYTES_MAX};
use std::collections::BTreeSet;

/// Most DCs one vector, one heartbeat or one batch may name.
pub const DCS_MAX: usize = 256;

/// Most members one set add or set remove may name.
pub const SET_MEMBERS_MAX: usize = 4_096;

/// Longest `traceparent`, in bytes (version 00 is exactly 55).
pub const TRACEPARENT_BYTES_MAX: usize = 55;

/// Longest `tracestate`, in bytes (the W3C limit of 32 list members fits in 512).
pub const TRACESTATE_BYTES_MAX: usize = 512;

/// Why a message breaks the protocol's rules. On encode nothing was written; on decode the frame
/// was read whole (the stream stays in step) but its message is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// The batch holds no op.
    #[error("the batch holds no op")]
    EmptyBatch,
    /// The batch holds more ops than `batch_ops_max`.
    #[error("the batch holds {ops} ops, more than batch_ops_max = {max}")]
    TooManyOps {
        /// Ops in the batch.
        ops: u64,
        /// The limit.
        max: usize,
    },
    /// An op names seq 0, which names no op.
    #[error("op {index} has seq 0")]
    ZeroSeq {
        /// The op's position in the batch.
        index: usize,
    },
    /// An origin's ops in the batch do not have consecutive seqs.
    #[error("op {index} from {origin} has seq {found}, expected {expected}")]
    SeqGap {
        /// The op's position in the batch.
        index: usize,
        /// The op's origin.
        origin: DcId,
        /// The seq that would continue the origin's previous op in the batch.
        expected: u64,
        /// The op's seq.
        found: u64,
    },
    /// A value, a set member or a set op's members together are larger than `VALUE_BYTES_MAX`.
    #[error("op {index} carries {bytes} bytes of payload, more than {max}")]
    ValueTooLarge {
        /// The op's position in the batch (or the entry's in a snapshot chunk).
        index: usize,
        /// The payload's size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// A set op names no member, or more than [`SET_MEMBERS_MAX`].
    #[error("op {index} names {members} set members; allowed 1..={max}")]
    SetMembers {
        /// The op's position in the batch.
        index: usize,
        /// Members named.
        members: usize,
        /// The limit.
        max: usize,
    },
    /// A counter add or set add carries a context; they never supersede anything.
    #[error("op {index} is a {kind:?} op and carries a context")]
    UnexpectedContext {
        /// The op's position in the batch.
        index: usize,
        /// The op's value type.
        kind: ValueKind,
    },
    /// An op's context covers the op itself, which its writer cannot have seen.
    #[error("op {index}'s context covers its own dot")]
    ContextCoversOp {
        /// The op's position in the batch.
        index: usize,
    },
    /// A vector, a map of vectors or a batch names more than [`DCS_MAX`] DCs.
    #[error("{what} names {dcs} DCs, more than {max}")]
    TooManyDcs {
        /// Which field.
        what: &'static str,
        /// DCs named.
        dcs: usize,
        /// The limit.
        max: usize,
    },
    /// The trace context is not a W3C `traceparent` / `tracestate` pair.
    #[error("bad trace context: {reason}")]
    BadTraceContext {
        /// What is wrong.
        reason: &'static str,
    },
    /// A snapshot request asks for 0 entries or more than `snapshot_entries_max`.
    #[error("snapshot request asks for {entries_max} entries; allowed 1..={max}")]
    BadEntriesMax {
        /// Entries asked for.
        entries_max: u32,
        /// The limit.
        max: usize,
    },
    /// A snapshot chunk holds more entries than `snapshot_entries_max`.
    #[error("snapshot chunk holds {entries} entries, more than {max}")]
    TooManyEntries {
        /// Entries in the chunk.
        entries: usize,
        /// The limit.
        max: usize,
    },
    /// Snapshot entries are not in strictly increasing (keyspace, key) order.
    #[error("snapshot entry {index} is not after the one before it")]
    EntriesOutOfOrder {
        /// The entry's position in the chunk.
        index: usize,
    },
    /// A key state in a snapshot breaks the model's invariants.
    #[error("snapshot entry {index}: {reason}")]
    BadKeyState {
        /// The entry's position in the chunk.
        index: usize,
        /// Which invariant.
        reason: &'static str,
    },
}

impl Message {
    /// Checks the message against the protocol's rules and `config`'s limits. The codec calls
    /// this before encoding and after decoding; callers may call it earlier.
    pub fn validate(&self, config: &CodecConfig) -> Result<(), ValidationError> {
        match self {
            Message::Hello(m) => vector(&m.seen, "hello seen"),
            Message::Batch(m) => batch(m, config),
            Message::Ack(m) => vector(&m.seen, "ack seen"),
            Message::Heartbeat(m) => heartbeat(m),
            Message::SnapshotRequest(m) => snapshot_request(m, config),
            Message::SnapshotChunk(m) => snapshot_chunk(m, config),
        }
    }
}

fn vector(vv: &VersionVector, what: &'static str) -> Result<(), ValidationError> {
    if vv.len() > DCS_MAX {
        return Err(ValidationError::TooManyDcs { what, dcs: vv.len(), max: DCS_MAX });
    }
    Ok(())
}

fn heartbeat(m: &Heartbeat) -> Result<(), ValidationError> {
    vector(&m.seen, "heartbeat seen")?;
    if m.known.len() > DCS_MAX {
        return Err(ValidationError::TooManyDcs {
            what: "heartbeat known",
            dcs: m.known.len(),
            max: DCS_MAX,
        });
    }
    for vv in m.known.values() {
        vector(vv, "heartbeat known vector")?;
    }
    Ok(())
}

fn batch(m: &Batch, config: &CodecConfig) -> Result<(), ValidationError> {
    if m.ops.is_empty() {
        return Err(ValidationError::EmptyBatch);
    }
    if m.ops.len() > config.batch_ops_max {
        return Err(ValidationError::TooManyOps { ops: m.ops.len() as u64, max: config.batch_ops_max });
    }
    if let Some(trace) = &m.trace {
        trace_context(trace)?;
    }
    // Per origin, the seq of its last op so far; a Vec because a batch has a handful of origins.
    let mut last_seq: Vec<(&DcId, u64)> = Vec::new();
    let mut dcs: BTreeSet<&DcId> = BTreeSet::new();
    for (index, op) in m.ops.iter().enumerate() {
        op_rules(index, op)?;
        let origin = &op.dot.origin;
        match last_seq.iter_mut().find(|(dc, _)| *dc == origin) {
            Some((_, last)) => {
                // Nothing follows u64::MAX: the wrapped 0 never matches, as seq 0 was refused.
                let expected = last.wrapping_add(1);
                if op.dot.seq != expected {
                    return Err(ValidationError::SeqGap {
                        index,
                        origin: origin.clone(),
                        expected,
                        found: op.dot.seq,
                    });
                }
                *last = op.dot.seq;
            }
            None => last_seq.push((origin, op.dot.seq)),
        }
        dcs.insert(origin);
        dcs.extend(op.context.iter().map(|(dc, _)| dc));
        if dcs.len() > DCS_MAX {
            return Err(ValidationError::TooManyDcs { what: "batch", dcs: dcs.len(), max: DCS_MAX });
        }
    }
    Ok(())
}

fn op_rules(index: usize, op: &Op) -> Result<(), ValidationError> {
    if op.dot.seq == 0 {
        return Err(ValidationError::ZeroSeq { index });
    }
    if op.context.len() > DCS_MAX {
        return Err(ValidationError::TooManyDcs { what: "op context", dcs: op.context.len(), max: DCS_MAX });
    }
    if op.context.covers(&op.dot) {
        return Err(ValidationError::ContextCoversOp { index });
    }
    let bytes = op.kind.payload_bytes();
    if bytes > VALUE_BYTES_MAX {
        return Err(ValidationError::ValueTooLarge { index, bytes, max: VALUE_BYTES_MAX });
    }
    match &op.kind {
        OpKind::Put(_) | OpKind::Delete => {}
        OpKind::CounterAdd(_) => {
            if !op.context.is_empty() {
                return Err(ValidationError::UnexpectedContext { index, kind: ValueKind::Counter });
            }
        }
        OpKind::SetAdd(members) | OpKind::SetRemove(members) => {
            if members.is_empty() || members.len() > SET_MEMBERS_MAX {
                return Err(ValidationError::SetMembers {
                    index,
                    members: members.len(),
                    max: SET_MEMBERS_MAX,
                });
            }
            if matches!(op.kind, OpKind::SetAdd(_)) && !op.context.is_empty() {
                return Err(ValidationError::UnexpectedContext { index, kind: ValueKind::Set });
            }
        }
    }
    Ok(())
}

/// Checks a W3C trace context: `traceparent` version 00 layout
/// (`vv-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, lowercase, ids not all zero,
/// version not `ff`), and a printable-ASCII `tracestate` of at most [`TRACESTATE_BYTES_MAX`].
fn trace_context(trace: &TraceContext) -> Result<(), ValidationError> {
    let bad = |reason| Err(ValidationError::BadTraceContext { reason });
    let parent = trace.traceparent.as_bytes();
    if parent.len() != TRACEPARENT_BYTES_MAX {
        return bad("traceparent is not 55 bytes");
    }
    let hex = |s: &[u8]| s.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
    let (version, trace_id, parent_id, flags) =
        (&parent[0..2], &parent[3..35], &parent[36..52], &parent[53..55]);
    if parent[2] != b'-' || parent[35] != b'-' || parent[52] != b'-' {
        return bad("traceparent fields are not separated by '-'");
    }
    if !(hex(version) && hex(trace_id) && hex(parent_id) && hex(flags)) {
        return bad("traceparent fields are not lowercase hex");
    }
    if version == b"ff" {
        return bad("traceparent version ff is invalid");
    }
    if trace_id.iter().all(|&b| b == b'0') || parent_id.iter().all(|&b| b == b'0') {
        return bad("traceparent ids are all zero");
    }
    if trace.tracestate.len() > TRACESTATE_BYTES_MAX {
        return bad("tracestate is longer than 512 bytes");
    }
    if !trace.tracestate.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return bad("tracestate is not printable ASCII");
    }
    Ok(())
}

fn snapshot_request(m: &SnapshotRequest, config: &CodecConfig) -> Result<(), ValidationError> {
    if m.entries_max == 0 || m.entries_max as usize > config.snapshot_entries_max {
        return Err(ValidationError::BadEntriesMax {
            entries_max: m.entries_max,
            max: config.snapshot_entries_max,
        });
    }
    Ok(())
}

fn snapshot_chunk(m: &SnapshotChunk, config: &CodecConfig) -> Result<(), ValidationError> {
    vector(&m.vector, "snapshot vector")?;
    if m.entries.len() > config.snapshot_entries_max {
        return Err(ValidationError::TooManyEntries {
            entries: m.entries.len(),
            max: config.snapshot_entries_max,
        });
    }
    for (index, (keyspace, key, state)) in m.entries.iter().enumerate() {
        if index > 0 {
            let (prev_keyspace, prev_key, _) = &m.entries[index - 1];
            if (prev_keyspace, prev_key) >= (keyspace, key) {
                return Err(ValidationError::EntriesOutOfOrder { index });
            }
        }
        key_state(index, state)?;
    }
    Ok(())
}

/// The invariants `KeyState::apply` and `merge` keep, which a receiver relies on: versions
/// sorted by dot without duplicates, each covered by the key's context, and values within
/// `VALUE_BYTES_MAX`. (A key's context may exceed the snapshot's vector: it takes in the
/// writers' contexts.)
fn key_state(index: usize, state: &KeyState) -> Result<(), ValidationError> {
    let bad = |reason| Err(ValidationError::BadKeyState { index, reason });
    if state.context().len() > DCS_MAX {
        return bad("the context names too many DCs");
    }
    match state.value() {
        Value::Register(versions) => {
            for (i, version) in versions.iter().enumerate() {
                if i > 0 && versions[i - 1].dot >= version.dot {
                    return bad("register versions are not in strictly increasing dot order");
                }
                if version.dot.seq == 0 {
                    return bad("a register version has seq 0");
                }
                if !state.context().covers(&version.dot) {
                    return bad("a register version is not covered by the key's context");
                }
                let bytes = version.value.as_ref().map_or(0, |v| v.len());
                if bytes > VALUE_BYTES_MAX {
                    return Err(ValidationError::ValueTooLarge { index, bytes, max: VALUE_BYTES_MAX });
                }
            }
        }
        Value::Counter(_) => {}
        Value::Set(set) => {
            if let Some(bytes) = set.members().iter().map(|m| m.len()).find(|&n| n > VALUE_BYTES_MAX) {
                return Err(ValidationError::ValueTooLarge { index, bytes, max: VALUE_BYTES_MAX });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(parent: &str, state: &str) -> TraceContext {
        TraceContext { traceparent: parent.into(), tracestate: state.into() }
    }

    #[test]
    fn a_w3c_trace_context_passes_and_malformed_ones_do_not() {
        // Proves the traceparent check accepts the W3C example and refuses each kind of damage.
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_context(&trace(good, "congo=t61rcWkgMzE")), Ok(()));
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(trace_context(&trace(bad, "")).is_err(), "{bad}");
        }
        assert!(trace_context(&trace(good, "a=\u{1}")).is_err());
        assert!(trace_context(&trace(good, &"a".repeat(513))).is_err());
    }
}
