//! mesh-wire: the frames DCs exchange.
//!
//! A frame is a fixed 20-byte header (magic, protocol version, flags, body length, decompressed
//! length, CRC-32C) followed by a MessagePack body, zstd-compressed when that shrinks it. The
//! body holds one [`Message`]: [`Hello`], [`Batch`], [`Ack`], [`Heartbeat`], [`SnapshotRequest`]
//! or [`SnapshotChunk`]. A batch uses a compact layout (ops grouped in runs per origin
//! with implicit seqs, delta-encoded HLCs, interned DC and keyspace names, front-coded keys) that
//! decodes to exactly the `Vec<Op>` that was encoded. `docs/wire-format.md` is the byte-level
//! reference.
//!
//! [`Codec`] encodes and decodes; it holds the limits ([`CodecConfig`]) and reusable zstd
//! contexts, so keep one per connection. Every message is validated before it is encoded and
//! after it is decoded ([`Message::validate`]); every malformed input is a typed
//! [`DecodeError`], never a panic, and a zstd bomb is refused before it is inflated.
//!
//! Pure: no IO, no clock, no runtime. [`mod@reference`] builds the reference workload that the size
//! test and the benchmark share.
#![warn(missing_docs, unreachable_pub)]
#![deny(clippy::disallowed_methods)]

mod batch;
mod codec;
mod config;
mod error;
mod frame;
mod message;
pub mod reference;
mod validate;

pub use codec::{Codec, Decoded, FrameInfo};
pub use config::{CodecConfig, ConfigError, RAW_BYTES_MIN};
pub use error::{DecodeError, EncodeError};
pub use frame::{FrameHeader, FLAG_ZSTD, HEADER_BYTES, MAGIC};
pub use message::{
    Ack, Batch, CommitTime, Heartbeat, HeartbeatEcho, Hello, Message, MessageKind, ProtocolVersion,
    SnapshotChunk, SnapshotEntry, SnapshotRequest, TraceContext, PROTOCOL_VERSION,
};
pub use validate::{ValidationError, DCS_MAX, SET_MEMBERS_MAX, TRACEPARENT_BYTES_MAX, TRACESTATE_BYTES_MAX};
