//! Encoding and decoding errors.

use crate::message::ProtocolVersion;
use crate::validate::ValidationError;

/// Why a message could not be encoded. Nothing was written to the output.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The message breaks the protocol's rules (a bug in the sender: it built a bad message).
    #[error("invalid message: {0}")]
    Invalid(#[from] ValidationError),
    /// The MessagePack body would be larger than `raw_bytes_max`; send fewer ops or entries.
    #[error("the body is {raw_bytes} bytes, more than raw_bytes_max = {max}")]
    RawTooLarge {
        /// Size of the MessagePack body.
        raw_bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The frame would be larger than `frame_bytes_max`, even compressed.
    #[error("the frame is {frame_bytes} bytes, more than frame_bytes_max = {max}")]
    FrameTooLarge {
        /// Size of the frame, header included.
        frame_bytes: usize,
        /// The limit.
        max: usize,
    },
    /// MessagePack serialization failed (a type the format cannot express).
    #[error("MessagePack encoding failed: {0}")]
    Msgpack(#[from] rmp_serde::encode::Error),
    /// zstd failed to compress (out of memory).
    #[error("zstd compression failed: {0}")]
    Compress(std::io::Error),
}

/// Why bytes could not be decoded into a message. Nothing was consumed; the stream can no
/// longer be trusted to be in step, so the caller SHOULD close the link and count the error.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The bytes do not start with the frame magic: not a mesh stream, or out of step.
    #[error("bad frame magic {found:02x?}")]
    BadMagic {
        /// The bytes found where the magic belongs (as many as were available, up to 4).
        found: Vec<u8>,
    },
    /// The frame's major protocol version is not this node's: the peer must be upgraded (or
    /// this node).
    #[error("the peer speaks protocol {peer}, this node speaks {ours}: major versions differ")]
    UnsupportedVersion {
        /// The version in the frame.
        peer: ProtocolVersion,
        /// This node's version.
        ours: ProtocolVersion,
    },
    /// The frame sets flag bits or a reserved byte this version does not know.
    #[error("unknown flags {flags:#04x} / reserved byte {reserved:#04x}")]
    UnknownFlags {
        /// The flags byte.
        flags: u8,
        /// The reserved byte.
        reserved: u8,
    },
    /// The frame is larger than `frame_bytes_max`; refused from its header, before its body is
    /// read.
    #[error("the frame is {frame_bytes} bytes, more than frame_bytes_max = {max}")]
    FrameTooLarge {
        /// Size the header announces, header included.
        frame_bytes: u64,
        /// The limit.
        max: usize,
    },
    /// The body would inflate beyond `raw_bytes_max` (a zstd bomb); refused before inflating.
    #[error("the body inflates to {raw_bytes} bytes, more than raw_bytes_max = {max}")]
    RawTooLarge {
        /// Decompressed size the header announces.
        raw_bytes: u64,
        /// The limit.
        max: usize,
    },
    /// An uncompressed frame whose two lengths differ, or a compressed body that did not
    /// inflate to exactly the announced length.
    #[error("the body is {actual} bytes once decompressed, the header says {announced}")]
    LengthMismatch {
        /// What the header announced.
        announced: u64,
        /// What was found.
        actual: u64,
    },
    /// The checksum does not match the header and body: the frame was damaged.
    #[error("checksum mismatch: header says {expected:#010x}, frame gives {actual:#010x}")]
    ChecksumMismatch {
        /// The checksum in the header.
        expected: u32,
        /// The checksum computed over the frame.
        actual: u32,
    },
    /// The buffer ends before the frame does (from [`crate::Codec::decode_frame`], which wants
    /// exactly one frame).
    #[error("truncated frame: {available} bytes of {needed}")]
    Truncated {
        /// Bytes available.
        available: usize,
        /// Bytes the frame needs (at least).
        needed: usize,
    },
    /// Bytes follow the message: after the frame (in [`crate::Codec::decode_frame`]) or after
    /// the MessagePack value inside the body.
    #[error("{bytes} trailing bytes after the {after}")]
    TrailingBytes {
        /// How many.
        bytes: usize,
        /// "frame" or "message".
        after: &'static str,
    },
    /// The body is not valid zstd.
    #[error("zstd decompression failed: {0}")]
    Decompress(std::io::Error),
    /// The body is not a well-formed message: bad MessagePack, wrong shape, an index outside
    /// its table, an invalid identifier.
    #[error("malformed message body: {0}")]
    Body(#[from] rmp_serde::decode::Error),
    /// The body names a message kind this version does not know, in a frame that claims no
    /// newer minor version (so it cannot be a message added later).
    #[error("unknown message kind {kind} in a protocol {version} frame")]
    UnknownMessage {
        /// The kind number.
        kind: u8,
        /// The frame's version.
        version: ProtocolVersion,
    },
    /// The message decoded but breaks the protocol's rules (a bug or an attack on the sender's
    /// side).
    #[error("invalid message: {0}")]
    Invalid(#[from] ValidationError),
}
