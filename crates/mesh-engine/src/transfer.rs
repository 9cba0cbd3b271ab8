//! State transfer: how a peer behind the retained log catches up (DESIGN.md, "Log retention").
//!
//! When the log no longer holds the next op of some origin a peer needs, the sender cuts a
//! consistent snapshot of every key state and the vector it reflects, and streams it in chunks the
//! receiver asks for one at a time (flow control: the receiver asks for the next chunk only once
//! the last is durably merged). The receiver merges each chunk's states as a remote apply would,
//! and once the last is durable joins the snapshot's vector into what it has seen.
//!
//! [`TransferOut`] is one peer's outgoing transfer: it is abandoned (and cut again) when the peer
//! neither asks for the next chunk nor comes to hold the snapshot's vector within
//! `retransmit_ms` (a chunk or request was lost), and forgotten once the peer holds the vector.
//! [`TransferIn`] is one peer's incoming transfer: a new transfer id replaces an abandoned one.
//! Both are dropped with their link; the next link starts a fresh transfer.

use crate::commit::{SnapshotError, SnapshotRead};
use mesh_core::{Key, KeyState, Keyspace, VersionVector};
use mesh_wire::{SnapshotChunk, SnapshotRequest};

/// Bounds of the chunks a sender cuts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLimits {
    /// Most key states per chunk.
    pub entries_max: usize,
    /// Most estimated bytes per chunk (always at least one entry).
    pub bytes_max: usize,
    /// How long the sender waits for the peer's next request, in ms.
    pub retransmit_ms: u64,
}

/// An estimate of a key state's encoded size, to bound snapshot chunks.
fn state_bytes(state: &KeyState) -> usize {
    let values: usize = state.versions().iter().map(|v| v.value.as_ref().map_or(0, |b| b.len()) + 48).sum();
    let members: usize = match state.value() {
        mesh_core::Value::Set(set) => set.members().iter().map(|m| m.len() + 48).sum(),
        _ => 0,
    };
    64 + 16 * state.context().len() + values + members
}

struct Outgoing {
    id: u64,
    vector: VersionVector,
    /// Without a request from the peer by then (or, after the last chunk, without the peer
    /// holding `vector`), the transfer is abandoned.
    deadline_ms: u64,
    /// Dropped once the last chunk is cut; the transfer stays until the peer holds `vector`.
    snapshot: Option<Box<dyn SnapshotRead>>,
    /// The peer answered: it asked for a later chunk, or holds `vector` (counted once).
    taken: bool,
}

/// One peer's outgoing state transfer. See the module docs.
#[derive(Default)]
pub struct TransferOut {
    current: Option<Outgoing>,
    /// Transfers the peer took up: it asked for a chunk after the first, or came to hold the
    /// snapshot's vector. A snapshot cut for a peer that never answered is not counted.
    taken: u64,
}

impl std::fmt::Debug for TransferOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransferOut")
            .field("id", &self.current.as_ref().map(|o| o.id))
            .field("taken", &self.taken)
            .finish()
    }
}

impl TransferOut {
    /// Whether a transfer is under way (its snapshot streaming, or waiting for the peer to hold
    /// its vector).
    pub fn is_active(&self) -> bool {
        self.current.is_some()
    }

    /// Transfers the peer took up.
    pub fn taken(&self) -> u64 {
        self.taken
    }

    /// When the transfer under way is abandoned without an answer.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.current.as_ref().map(|o| o.deadline_ms)
    }

    /// Forgets the transfer once the peer holds `peer_seen` covering its vector after the last
    /// chunk, or at its deadline.
    pub fn handle_progress(&mut self, now_ms: u64, peer_seen: &VersionVector) {
        let Some(out) = &self.current else { return };
        let done = out.snapshot.is_none() && peer_seen.dominates(&out.vector);
        if done || now_ms >= out.deadline_ms {
            if done && !out.taken {
                self.taken += 1;
            }
            self.current = None;
        }
    }

    /// Starts transfer `id` of `snapshot`: returns its first chunk.
    pub fn start(
        &mut self,
        now_ms: u64,
        id: u64,
        snapshot: Box<dyn SnapshotRead>,
        limits: ChunkLimits,
    ) -> Result<Option<SnapshotChunk>, SnapshotError> {
        let vector = snapshot.vector().clone();
        let deadline_ms = now_ms + limits.retransmit_ms;
        self.current = Some(Outgoing { id, vector, deadline_ms, snapshot: Some(snapshot), taken: false });
        self.handle_request(now_ms, id, None, limits.entries_max, limits)
    }

    /// The peer asked for up to `entries_max` entries after `after` of transfer `id`: the chunk
    /// to send (`None`: not the transfer under way, or its last chunk was already cut). `Err`:
    /// the store failed to read the snapshot.
    pub fn handle_request(
        &mut self,
        now_ms: u64,
        id: u64,
        after: Option<(Keyspace, Key)>,
        entries_max: usize,
        limits: ChunkLimits,
    ) -> Result<Option<SnapshotChunk>, SnapshotError> {
        let Some(out) = self.current.as_mut().filter(|o| o.id == id) else { return Ok(None) };
        out.deadline_ms = now_ms + limits.retransmit_ms;
        if after.is_some() && !out.taken {
            out.taken = true;
            self.taken += 1;
        }
        let Some(snapshot) = out.snapshot.as_ref() else { return Ok(None) };
        let entries_max = entries_max.clamp(1, limits.entries_max);
        let mut entries = snapshot.chunk(after.as_ref(), entries_max)?;
        let mut last = entries.len() < entries_max;
        // Bounded by bytes too, so a chunk fits a frame (always at least one entry).
        let mut bytes = 0;
        if let Some(cut) = entries.iter().position(|(_, _, state)| {
            bytes += state_bytes(state);
            bytes > limits.bytes_max
        }) {
            entries.truncate(cut.max(1));
            last = false;
        }
        if last {
            out.snapshot = None;
        }
        Ok(Some(SnapshotChunk { request_id: id, vector: out.vector.clone(), entries, last }))
    }

    /// The link dropped: the next link starts from a fresh snapshot.
    pub fn cancel(&mut self) {
        self.current = None;
    }
}

/// One peer's incoming state transfer. See the module docs.
#[derive(Debug, Default)]
pub struct TransferIn {
    /// The transfer under way, and the request for its next chunk, held until the last chunk is
    /// durably merged.
    current: Option<(u64, Option<SnapshotRequest>)>,
    received: u64,
}

/// What to do with a received chunk's entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkStep {
    /// Merge them; then, once durable, send [`TransferIn::poll_request`]'s request.
    Merge,
    /// Merge them; they are the last: the transfer is complete once they are merged.
    MergeLast,
}

impl TransferIn {
    /// Transfers received and merged.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// A chunk of transfer `chunk.request_id` arrived (a new id replaces an abandoned transfer).
    /// The caller merges its entries, then reports [`TransferIn::handle_merged`] or
    /// [`TransferIn::cancel`].
    pub fn handle_chunk(&mut self, chunk: &SnapshotChunk, entries_max: u32) -> ChunkStep {
        if self.current.as_ref().is_none_or(|(id, _)| *id != chunk.request_id) {
            self.current = Some((chunk.request_id, None));
        }
        if chunk.last {
            return ChunkStep::MergeLast;
        }
        let after = chunk.entries.last().map(|(ks, k, _)| (ks.clone(), k.clone()));
        let next = SnapshotRequest { request_id: chunk.request_id, after, entries_max };
        self.current.as_mut().expect("set above").1 = Some(next);
        ChunkStep::Merge
    }

    /// The last chunk's entries were merged: the transfer is over.
    pub fn handle_done(&mut self) {
        self.current = None;
        self.received += 1;
    }

    /// The chunk could not be merged, or the link dropped: the transfer is abandoned (the sender
    /// starts a new one).
    pub fn cancel(&mut self) {
        self.current = None;
    }

    /// The request for the next chunk, once the last chunk is durably merged.
    pub fn poll_request(&mut self) -> Option<SnapshotRequest> {
        self.current.as_mut().and_then(|(_, next)| next.take())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::{DcId, Dot, Hlc, OpKind, ValueKind};

    struct Fake {
        vector: VersionVector,
        entries: Vec<(Keyspace, Key, KeyState)>,
    }

    impl SnapshotRead for Fake {
        fn vector(&self) -> &VersionVector {
            &self.vector
        }

        fn chunk(
            &self,
            after: Option<&(Keyspace, Key)>,
            entries_max: usize,
        ) -> Result<Vec<(Keyspace, Key, KeyState)>, SnapshotError> {
            let start = after.map_or(0, |a| {
                self.entries.iter().position(|(ks, k, _)| (ks, k) == (&a.0, &a.1)).map_or(0, |i| i + 1)
            });
            Ok(self.entries.iter().skip(start).take(entries_max).cloned().collect())
        }
    }

    fn snapshot(keys: usize, value_bytes: usize) -> (Box<dyn SnapshotRead>, VersionVector) {
        let a = DcId::new("a").expect("valid");
        let mut vector = VersionVector::new();
        vector.raise(&a, keys as u64);
        let ks = Keyspace::new("ks").expect("valid");
        let entries = (0..keys)
            .map(|i| {
                let key = Key::new(format!("k{i:03}")).expect("valid");
                let mut state = KeyState::new(ValueKind::Register);
                let op = mesh_core::Op {
                    dot: Dot::new(a.clone(), i as u64 + 1),
                    hlc: Hlc::new(1, 0),
                    keyspace: ks.clone(),
                    key: key.clone(),
                    context: VersionVector::new(),
                    kind: OpKind::Put(vec![0u8; value_bytes]),
                };
                state.apply(&op).expect("a put applies");
                (ks.clone(), key, state)
            })
            .collect();
        (Box::new(Fake { vector: vector.clone(), entries }), vector)
    }

    const LIMITS: ChunkLimits = ChunkLimits { entries_max: 4, bytes_max: 1 << 20, retransmit_ms: 100 };

    /// Runs a whole transfer between a sender and a receiver by hand.
    #[test]
    fn a_transfer_streams_every_entry_once_in_order() {
        let (snap, vector) = snapshot(10, 8);
        let mut out = TransferOut::default();
        let mut incoming = TransferIn::default();
        let mut chunk = out.start(0, 7, snap, LIMITS).expect("read").expect("a first chunk");
        let mut merged = Vec::new();
        loop {
            let step = incoming.handle_chunk(&chunk, 4);
            merged.extend(chunk.entries.iter().map(|(_, k, _)| k.clone()));
            if step == ChunkStep::MergeLast {
                incoming.handle_done();
                break;
            }
            let request = incoming.poll_request().expect("a request once merged");
            assert_eq!(incoming.poll_request(), None, "asked once");
            chunk = out
                .handle_request(10, request.request_id, request.after, request.entries_max as usize, LIMITS)
                .expect("read")
                .expect("the next chunk");
        }
        let keys: Vec<String> = merged.iter().map(|k| k.to_string()).collect();
        assert_eq!(keys, (0..10).map(|i| format!("k{i:03}")).collect::<Vec<_>>());
        assert_eq!(incoming.received(), 1);
        assert_eq!(out.taken(), 1, "asking for a later chunk takes the transfer up");
        assert!(out.is_active(), "kept until the peer holds the vector");
        out.handle_progress(20, &VersionVector::new());
        assert!(out.is_active());
        out.handle_progress(30, &vector);
        assert!(!out.is_active());
        assert_eq!(out.taken(), 1, "counted once");
    }

    #[test]
    fn an_unanswered_transfer_is_abandoned_at_its_deadline_and_not_counted() {
        let (snap, _) = snapshot(10, 8);
        let mut out = TransferOut::default();
        out.start(0, 1, snap, LIMITS).expect("read");
        assert_eq!(out.poll_timeout(), Some(100));
        out.handle_progress(99, &VersionVector::new());
        assert!(out.is_active());
        out.handle_progress(100, &VersionVector::new());
        assert!(!out.is_active());
        assert_eq!(out.taken(), 0);
        let stale = out.handle_request(101, 1, None, 4, LIMITS).expect("no read");
        assert_eq!(stale, None, "a request for an abandoned transfer is ignored");
    }

    #[test]
    fn chunks_are_bounded_by_bytes_with_at_least_one_entry() {
        let (snap, _) = snapshot(3, 4_000);
        let mut out = TransferOut::default();
        let limits = ChunkLimits { bytes_max: 1_000, ..LIMITS };
        let chunk = out.start(0, 1, snap, limits).expect("read").expect("chunk");
        assert_eq!(chunk.entries.len(), 1);
        assert!(!chunk.last, "cut by bytes: more follow");
    }

    #[test]
    fn a_new_transfer_id_replaces_the_one_under_way() {
        let (snap, _) = snapshot(10, 8);
        let mut out = TransferOut::default();
        let first = out.start(0, 1, snap, LIMITS).expect("read").expect("chunk");
        let mut incoming = TransferIn::default();
        incoming.handle_chunk(&first, 4);
        let (snap, _) = snapshot(10, 8);
        let replacement = out.start(200, 2, snap, LIMITS).expect("read").expect("chunk");
        incoming.handle_chunk(&replacement, 4);
        assert_eq!(incoming.poll_request().map(|r| r.request_id), Some(2));
    }
}
