//! The messages DCs exchange, and how a body carries one.
//!
//! A body is a two-element MessagePack array `[kind, payload]`: `kind` is a [`MessageKind`]
//! number, `payload` the message's fields as an array in declaration order (a batch uses the
//! compact layout of `batch.rs`).

use crate::batch::{BatchCtx, BatchRef, BatchSeed};
use mesh_core::{DcId, Key, KeyState, Keyspace, Op, VersionVector};
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;

/// A protocol version. Peers with the same `major` understand each other; a higher `minor` may
/// add message kinds, which an older peer skips (see [`crate::Decoded::Skipped`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProtocolVersion {
    /// Changes when a frame or message layout changes incompatibly.
    pub major: u8,
    /// Changes when message kinds are added.
    pub minor: u8,
}

impl ProtocolVersion {
    /// Whether a node speaking `self` can talk to a peer speaking `peer`: same major version.
    pub fn accepts(&self, peer: &ProtocolVersion) -> bool {
        self.major == peer.major
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: ProtocolVersion = ProtocolVersion { major: 1, minor: 0 };

/// The first message on a link, each way, once mTLS has proven the peer's DC identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The sender's DC.
    pub dc: DcId,
    /// The highest protocol version the sender speaks.
    pub protocol_version: ProtocolVersion,
    /// The sender's topology fingerprint (`Topology::fingerprint`); a mismatch refuses the link.
    pub topology_fingerprint: u64,
    /// The ops the sender has applied: the receiver resumes streaming from here.
    pub seen: VersionVector,
}

/// W3C trace context of the write(s) in a batch, so a trace follows an op from its origin to
/// its apply in every DC.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TraceContext {
    /// The `traceparent` header value, for example
    /// `00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01`.
    pub traceparent: String,
    /// The `tracestate` header value; empty when there is none.
    pub tracestate: String,
}

/// Ops to apply, in the order to apply them: each origin's ops appear in seq order with no
/// gap. Encoded in the compact layout described in `docs/wire-format.md`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The ops.
    pub ops: Vec<Op>,
    /// The trace the batch belongs to, if sampled.
    pub trace: Option<TraceContext>,
    /// When the sender's own ops in this batch became durable at the sender, for the
    /// receiver's replication-lag histogram: ascending by seq, each entry covers the sender's
    /// ops with a seq up to `last_seq` and above the previous entry's. Empty: not reported (ops
    /// relayed from other origins are never covered).
    pub commit_times: Vec<CommitTime>,
}

/// One group commit at the sender, as [`Batch::commit_times`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CommitTime {
    /// The highest of the sender's own seqs the commit made durable.
    pub last_seq: u64,
    /// The sender's wall clock when the commit was durable, in µs since the Unix epoch.
    pub unix_us: u64,
}

/// The ops the sender has durably applied; sent only after the commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The sender's `seen` vector after the commit.
    pub seen: VersionVector,
}

/// Liveness, progress and clock readings, sent every `heartbeat_interval_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The sender's `seen` vector.
    pub seen: VersionVector,
    /// The `seen` vectors the sender knows of other DCs (so lag and sync acks can travel any
    /// path), by DC.
    pub known: BTreeMap<DcId, VersionVector>,
    /// The sender's wall clock when it sent this, in ms since the Unix epoch, for skew
    /// measurement.
    pub wall_ms: u64,
    /// The last heartbeat the sender received from the receiver, echoed back so the receiver
    /// can measure the round trip and the clock offset as NTP does (RFC 5905, section 8);
    /// `None` before the sender heard one on this link.
    #[serde(default)]
    pub echo: Option<HeartbeatEcho>,
}

/// The echo of a heartbeat ([`Heartbeat::echo`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatEcho {
    /// The echoed heartbeat's `wall_ms` (the receiver's own clock when it sent it).
    pub wall_ms: u64,
    /// How long the sender held it before sending this heartbeat, in ms of the sender's
    /// monotonic clock.
    pub held_ms: u64,
}

/// Asks a peer for the next chunk of a snapshot (state transfer). The first request of a
/// transfer has `after = None` and makes the peer cut a snapshot; later ones name the last key
/// received, so the receiver pulls one chunk at a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRequest {
    /// Names the transfer; the chunks answering it carry the same id.
    pub request_id: u64,
    /// Resume after this (keyspace, key); `None` for the first chunk.
    pub after: Option<(Keyspace, Key)>,
    /// Most entries wanted in the chunk (1 to `snapshot_entries_max`).
    pub entries_max: u32,
}

/// One key's state in a snapshot: keyspace, key, state.
pub type SnapshotEntry = (Keyspace, Key, KeyState);

/// A chunk of a snapshot: key states in strictly increasing (keyspace, key) order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotChunk {
    /// The request this answers.
    pub request_id: u64,
    /// The snapshot's vector: exactly the ops whose effects it holds. Keys whose dots it covers
    /// but that no chunk carries are deleted on the receiver.
    pub vector: VersionVector,
    /// The key states.
    pub entries: Vec<SnapshotEntry>,
    /// Whether this is the snapshot's last chunk.
    pub last: bool,
}

/// Everything a frame can carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Opens a link.
    Hello(Hello),
    /// Ops to apply.
    Batch(Batch),
    /// Ops durably applied.
    Ack(Ack),
    /// Liveness and progress.
    Heartbeat(Heartbeat),
    /// Asks for a snapshot chunk.
    SnapshotRequest(SnapshotRequest),
    /// A snapshot chunk.
    SnapshotChunk(SnapshotChunk),
}

/// The kind numbers a body starts with. 0 is never used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum MessageKind {
    /// [`Hello`].
    Hello = 1,
    /// [`Batch`].
    Batch = 2,
    /// [`Ack`].
    Ack = 3,
    /// [`Heartbeat`].
    Heartbeat = 4,
    /// [`SnapshotRequest`].
    SnapshotRequest = 5,
    /// [`SnapshotChunk`].
    SnapshotChunk = 6,
}

impl MessageKind {
    /// The kind with this number, if this version knows it.
    pub fn from_u8(kind: u8) -> Option<Self> {
        Some(match kind {
            1 => Self::Hello,
            2 => Self::Batch,
            3 => Self::Ack,
            4 => Self::Heartbeat,
            5 => Self::SnapshotRequest,
            6 => Self::SnapshotChunk,
            _ => return None,
        })
    }
}

impl Message {
    /// The message's kind.
    pub fn kind(&self) -> MessageKind {
        match self {
            Message::Hello(_) => MessageKind::Hello,
            Message::Batch(_) => MessageKind::Batch,
            Message::Ack(_) => MessageKind::Ack,
            Message::Heartbeat(_) => MessageKind::Heartbeat,
            Message::SnapshotRequest(_) => MessageKind::SnapshotRequest,
            Message::SnapshotChunk(_) => MessageKind::SnapshotChunk,
        }
    }
}

/// Serializes a message as a body: `[kind, payload]`.
pub(crate) struct BodyRef<'a>(pub(crate) &'a Message);

impl Serialize for BodyRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut body = serializer.serialize_tuple(2)?;
        body.serialize_element(&(self.0.kind() as u8))?;
        match self.0 {
            Message::Hello(m) => body.serialize_element(m)?,
            Message::Batch(m) => body.serialize_element(&BatchRef(m))?,
            Message::Ack(m) => body.serialize_element(m)?,
            Message::Heartbeat(m) => body.serialize_element(m)?,
            Message::SnapshotRequest(m) => body.serialize_element(m)?,
            Message::SnapshotChunk(m) => body.serialize_element(m)?,
        }
        body.end()
    }
}

/// What a body decoded to.
pub(crate) enum Body {
    /// A message this version knows.
    Known(Message),
    /// A message kind this version does not know; its payload was skipped.
    Unknown(u8),
}

/// Deserializes a body, bounding the ops of a batch while they are read (so a hostile body
/// cannot make the decoder allocate for millions of tiny ops before validation runs).
pub(crate) struct BodySeed<'c> {
    pub(crate) batch: &'c mut BatchCtx,
}

impl<'de> DeserializeSeed<'de> for BodySeed<'_> {
    type Value = Body;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Body, D::Error> {
        deserializer.deserialize_tuple(2, self)
    }
}

impl<'de> Visitor<'de> for BodySeed<'_> {
    type Value = Body;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a message body [kind, payload]")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Body, A::Error> {
        let kind: u8 = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(0, &self))?;
        let missing = || de::Error::invalid_length(1, &"a message body [kind, payload]");
        let Some(known) = MessageKind::from_u8(kind) else {
            seq.next_element::<de::IgnoredAny>()?.ok_or_else(missing)?;
            return Ok(Body::Unknown(kind));
        };
        let message = match known {
            MessageKind::Hello => Message::Hello(seq.next_element()?.ok_or_else(missing)?),
            MessageKind::Batch => {
                Message::Batch(seq.next_element_seed(BatchSeed { ctx: self.batch })?.ok_or_else(missing)?)
            }
            MessageKind::Ack => Message::Ack(seq.next_element()?.ok_or_else(missing)?),
            MessageKind::Heartbeat => Message::Heartbeat(seq.next_element()?.ok_or_else(missing)?),
            MessageKind::SnapshotRequest => {
                Message::SnapshotRequest(seq.next_element()?.ok_or_else(missing)?)
            }
            MessageKind::SnapshotChunk => Message::SnapshotChunk(seq.next_element()?.ok_or_else(missing)?),
        };
        Ok(Body::Known(message))
    }
}
