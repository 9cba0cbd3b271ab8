//! Encoding messages into frames and decoding frames from a byte stream.

use crate::batch::BatchCtx;
use crate::config::{CodecConfig, ConfigError};
use crate::error::{DecodeError, EncodeError};
use crate::frame::{FrameHeader, FLAGS_KNOWN, FLAG_ZSTD, HEADER_BYTES, MAGIC};
use crate::message::{Body, BodyRef, BodySeed, Message, PROTOCOL_VERSION};
use crate::validate::ValidationError;
use serde::de::DeserializeSeed;
use std::fmt;

/// Bodies shorter than this are never compressed: a zstd frame's own overhead (about a dozen
/// bytes) leaves nothing to gain.
const COMPRESSION_BYTES_MIN: usize = 64;

/// Scratch buffers keep at most this much capacity between frames, so one large snapshot chunk
/// does not pin megabytes per connection.
const SCRATCH_BYTES_KEPT: usize = 1 << 20;

/// Deepest MessagePack nesting accepted. Real messages nest fewer than 10 levels; the bound
/// keeps the decoder's recursion shallow whatever a peer sends.
const NESTING_DEPTH_MAX: usize = 32;

/// Sizes of one frame, for accounting (bytes raw and compressed per peer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameInfo {
    /// Bytes of the frame on the wire, header included.
    pub frame_bytes: usize,
    /// Bytes of the MessagePack body before compression.
    pub raw_bytes: usize,
    /// Whether the body was zstd-compressed.
    pub compressed: bool,
}

/// What [`Codec::decode`] found at the start of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// The buffer holds only part of a frame: call again once it holds at least `bytes_min`
    /// bytes. Nothing was consumed.
    NeedMore {
        /// Bytes the buffer must hold before decoding can progress.
        bytes_min: usize,
    },
    /// A whole frame: drop `info.frame_bytes` bytes from the front of the buffer.
    Frame {
        /// The message, validated.
        message: Message,
        /// The frame's sizes; `frame_bytes` is the number of bytes consumed.
        info: FrameInfo,
    },
    /// A whole frame from a peer with a newer minor version, carrying a message kind this
    /// version does not know: drop `bytes_consumed` bytes and go on.
    Skipped {
        /// The unknown kind number.
        kind: u8,
        /// Bytes of the frame.
        bytes_consumed: usize,
    },
}

impl Decoded {
    /// Bytes to drop from the front of the buffer (0 for [`Decoded::NeedMore`]).
    pub fn bytes_consumed(&self) -> usize {
        match self {
            Decoded::NeedMore { .. } => 0,
            Decoded::Frame { info, .. } => info.frame_bytes,
            Decoded::Skipped { bytes_consumed, .. } => *bytes_consumed,
        }
    }
}

/// Encodes messages into frames and decodes them, enforcing a [`CodecConfig`]. Holds reusable
/// zstd contexts and scratch buffers: keep one per connection (or per thread). Encoding and
/// decoding are independent; there is no call order to follow.
pub struct Codec {
    config: CodecConfig,
    compressor: zstd::bulk::Compressor<'static>,
    decompressor: zstd::bulk::Decompressor<'static>,
    /// The MessagePack body being encoded, or the inflated body being decoded.
    raw: Vec<u8>,
    /// The compressed body being encoded.
    packed: Vec<u8>,
}

impl fmt::Debug for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Codec").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Codec {
    /// A codec enforcing `config`, which is checked first ([`CodecConfig::check`]).
    pub fn new(config: CodecConfig) -> Result<Self, ConfigError> {
        config.check()?;
        let compressor = zstd::bulk::Compressor::new(config.compression_level)
            .map_err(|e| ConfigError::Zstd(e.to_string()))?;
        let decompressor = zstd::bulk::Decompressor::new().map_err(|e| ConfigError::Zstd(e.to_string()))?;
        Ok(Self { config, compressor, decompressor, raw: Vec::new(), packed: Vec::new() })
    }

    /// The settings this codec enforces.
    pub fn config(&self) -> &CodecConfig {
        &self.config
    }

    /// Encodes `message` as one frame.
    pub fn encode(&mut self, message: &Message) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::new();
        self.encode_into(message, &mut out)?;
        Ok(out)
    }

    /// Validates `message`, then appends its frame to `out`: the MessagePack body, compressed
    /// when compression is enabled and makes it smaller. On error `out` is unchanged.
    pub fn encode_into(&mut self, message: &Message, out: &mut Vec<u8>) -> Result<FrameInfo, EncodeError> {
        message.validate(&self.config)?;
        let result = self.encode_checked(message, out);
        trim(&mut self.raw);
        trim(&mut self.packed);
        result
    }

    fn encode_checked(&mut self, message: &Message, out: &mut Vec<u8>) -> Result<FrameInfo, EncodeError> {
        self.raw.clear();
        rmp_serde::encode::write(&mut self.raw, &BodyRef(message))?;
        let raw_bytes = self.raw.len();
        if raw_bytes > self.config.raw_bytes_max {
            return Err(EncodeError::RawTooLarge { raw_bytes, max: self.config.raw_bytes_max });
        }
        let mut compressed = false;
        if self.config.compression_enabled && raw_bytes >= COMPRESSION_BYTES_MIN {
            self.packed.clear();
            self.packed.reserve(zstd::zstd_safe::compress_bound(raw_bytes));
            self.compressor.compress_to_buffer(&self.raw, &mut self.packed).map_err(EncodeError::Compress)?;
            compressed = self.packed.len() < raw_bytes;
        }
        let (flags, body) = if compressed { (FLAG_ZSTD, &self.packed) } else { (0, &self.raw) };
        let frame_bytes = HEADER_BYTES + body.len();
        if frame_bytes > self.config.frame_bytes_max {
            return Err(EncodeError::FrameTooLarge { frame_bytes, max: self.config.frame_bytes_max });
        }
        // raw_bytes_max <= u32::MAX (CodecConfig::check), so the length fits the header.
        let raw_len = u32::try_from(raw_bytes).expect("raw_bytes_max fits the header's u32");
        let header = FrameHeader::seal(PROTOCOL_VERSION, flags, body, raw_len);
        out.reserve(frame_bytes);
        out.extend_from_slice(&header.to_bytes());
        out.extend_from_slice(body);
        Ok(FrameInfo { frame_bytes, raw_bytes, compressed })
    }

    /// Decodes the frame at the start of `buf`, which may hold less than a frame (then the
    /// answer is [`Decoded::NeedMore`]) or more (the rest is left for the next call). The
    /// header is checked as soon as it is complete, so an oversized or foreign frame is refused
    /// before its body is waited for. On error nothing was consumed and the stream is out of
    /// step: close the link.
    pub fn decode(&mut self, buf: &[u8]) -> Result<Decoded, DecodeError> {
        let magic_available = buf.len().min(MAGIC.len());
        if buf[..magic_available] != MAGIC[..magic_available] {
            return Err(DecodeError::BadMagic { found: buf[..magic_available].to_vec() });
        }
        let Some(header_bytes) = buf.first_chunk::<HEADER_BYTES>() else {
            return Ok(Decoded::NeedMore { bytes_min: HEADER_BYTES });
        };
        let Some(header) = FrameHeader::parse(header_bytes) else {
            return Err(DecodeError::BadMagic { found: buf[..MAGIC.len()].to_vec() });
        };
        if !PROTOCOL_VERSION.accepts(&header.version) {
            return Err(DecodeError::UnsupportedVersion { peer: header.version, ours: PROTOCOL_VERSION });
        }
        if header.flags & !FLAGS_KNOWN != 0 || header.reserved != 0 {
            return Err(DecodeError::UnknownFlags { flags: header.flags, reserved: header.reserved });
        }
        let frame_bytes = HEADER_BYTES as u64 + u64::from(header.body_len);
        if frame_bytes > self.config.frame_bytes_max as u64 {
            return Err(DecodeError::FrameTooLarge { frame_bytes, max: self.config.frame_bytes_max });
        }
        // The zstd-bomb guard: the announced inflated size is checked before a byte of the body
        // is read, and inflating below never writes past it.
        if u64::from(header.raw_len) > self.config.raw_bytes_max as u64 {
            return Err(DecodeError::RawTooLarge {
                raw_bytes: u64::from(header.raw_len),
                max: self.config.raw_bytes_max,
            });
        }
        if !header.is_compressed() && header.raw_len != header.body_len {
            return Err(DecodeError::LengthMismatch {
                announced: u64::from(header.raw_len),
                actual: u64::from(header.body_len),
            });
        }
        // Both fit in usize: frame_bytes <= frame_bytes_max.
        let frame_bytes = frame_bytes as usize;
        if buf.len() < frame_bytes {
            return Ok(Decoded::NeedMore { bytes_min: frame_bytes });
        }
        let body = &buf[HEADER_BYTES..frame_bytes];
        let actual = header.checksum_for(body);
        if actual != header.checksum {
            return Err(DecodeError::ChecksumMismatch { expected: header.checksum, actual });
        }
        let result = self.decode_body(&header, body, frame_bytes);
        trim(&mut self.raw);
        result
    }

    /// Decodes a buffer that holds exactly one frame. `Ok(None)` is a frame of a newer minor
    /// version whose message kind this version does not know.
    pub fn decode_frame(&mut self, frame: &[u8]) -> Result<Option<Message>, DecodeError> {
        let decoded = self.decode(frame)?;
        let consumed = decoded.bytes_consumed();
        match decoded {
            Decoded::NeedMore { bytes_min } => {
                return Err(DecodeError::Truncated { available: frame.len(), needed: bytes_min })
            }
            _ if consumed < frame.len() => {
                return Err(DecodeError::TrailingBytes { bytes: frame.len() - consumed, after: "frame" })
            }
            _ => {}
        }
        Ok(match decoded {
            Decoded::Frame { message, .. } => Some(message),
            _ => None,
        })
    }

    fn decode_body(
        &mut self,
        header: &FrameHeader,
        body: &[u8],
        frame_bytes: usize,
    ) -> Result<Decoded, DecodeError> {
        let raw_bytes = header.raw_len as usize;
        let raw: &[u8] = if header.is_compressed() {
            // A size the zstd frame declares must agree with the header, checked before the
            // output buffer is allocated.
            match zstd::zstd_safe::get_frame_content_size(body) {
                Ok(Some(declared)) if declared != u64::from(header.raw_len) => {
                    return Err(DecodeError::LengthMismatch {
                        announced: u64::from(header.raw_len),
                        actual: declared,
                    });
                }
                Ok(_) => {}
                Err(_) => {
                    let not_zstd = std::io::Error::new(std::io::ErrorKind::InvalidData, "not a zstd frame");
                    return Err(DecodeError::Decompress(not_zstd));
                }
            }
            // The output buffer is exactly the announced size: zstd stops with an error rather
            // than write past it, whatever the body claims inside.
            self.raw.clear();
            self.raw.resize(raw_bytes, 0);
            let inflated = self
                .decompressor
                .decompress_to_buffer(body, &mut self.raw[..])
                .map_err(DecodeError::Decompress)?;
            if inflated != raw_bytes {
                return Err(DecodeError::LengthMismatch {
                    announced: u64::from(header.raw_len),
                    actual: inflated as u64,
                });
            }
            &self.raw
        } else {
            body
        };

        let mut batch = BatchCtx { ops_max: self.config.batch_ops_max, ops_refused: None };
        // A cursor reader reports where the value ended, so trailing bytes inside the body are
        // refused. The decoded types own their data, so nothing is lost by not borrowing.
        let mut deserializer = rmp_serde::Deserializer::new(std::io::Cursor::new(raw));
        deserializer.set_max_depth(NESTING_DEPTH_MAX);
        let decoded = BodySeed { batch: &mut batch }.deserialize(&mut deserializer);
        let read = deserializer.position() as usize;
        if decoded.is_ok() && read < raw.len() {
            return Err(DecodeError::TrailingBytes { bytes: raw.len() - read, after: "message" });
        }
        let decoded = match (decoded, batch.ops_refused) {
            (Ok(body), _) => body,
            (Err(_), Some(ops)) => {
                return Err(ValidationError::TooManyOps { ops, max: self.config.batch_ops_max }.into())
            }
            (Err(e), None) => return Err(DecodeError::Body(e)),
        };
        match decoded {
            Body::Known(message) => {
                message.validate(&self.config)?;
                let compressed = header.is_compressed();
                Ok(Decoded::Frame { message, info: FrameInfo { frame_bytes, raw_bytes, compressed } })
            }
            Body::Unknown(kind) if header.version.minor > PROTOCOL_VERSION.minor => {
                Ok(Decoded::Skipped { kind, bytes_consumed: frame_bytes })
            }
            Body::Unknown(kind) => Err(DecodeError::UnknownMessage { kind, version: header.version }),
        }
    }
}

fn trim(scratch: &mut Vec<u8>) {
    if scratch.capacity() > SCRATCH_BYTES_KEPT {
        scratch.clear();
        scratch.shrink_to(SCRATCH_BYTES_KEPT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{
        Ack, Batch, Heartbeat, HeartbeatEcho, Hello, SnapshotChunk, SnapshotRequest, TraceContext,
    };

    fn mesh_wire_echo() -> HeartbeatEcho {
        HeartbeatEcho { wall_ms: 1_732_000_000_001, held_ms: 37 }
    }
    use crate::{ProtocolVersion, RAW_BYTES_MIN};
    use mesh_core::{
        DcId, Dot, Hlc, Key, KeyState, Keyspace, Op, OpKind, ValueKind, VersionVector, VALUE_BYTES_MAX,
    };
    use serde_bytes::ByteBuf;
    use std::collections::BTreeMap;
    use std::io::Write;

    fn dc(s: &str) -> DcId {
        DcId::new(s).unwrap()
    }

    fn op(origin: &str, seq: u64, keyspace: &str, key: &str, kind: OpKind) -> Op {
        Op {
            dot: Dot::new(dc(origin), seq),
            hlc: Hlc::new(1_732_000_000_000u64.wrapping_add(seq), (seq % 3) as u32),
            keyspace: Keyspace::new(keyspace).unwrap(),
            key: Key::new(key).unwrap(),
            kind,
            context: VersionVector::new(),
        }
    }

    fn vv(entries: &[(&str, u64)]) -> VersionVector {
        entries.iter().map(|(d, s)| (dc(d), *s)).collect()
    }

    fn codec() -> Codec {
        Codec::new(CodecConfig::default()).unwrap()
    }

    fn batch(ops: Vec<Op>) -> Message {
        Message::Batch(Batch { ops, trace: None, commit_times: Vec::new() })
    }

    /// A batch mixing origins, kinds, keyspaces, contexts, multi-byte keys and a clock that
    /// goes backwards between origins.
    fn mixed_batch() -> Message {
        let mut ops = vec![
            op("us-east", 7, "users", "user:1", OpKind::Put(b"{\"a\":1}".to_vec())),
            op("us-east", 8, "users", "user:2", OpKind::Delete),
            op("eu-central", 1, "page_views", "home", OpKind::CounterAdd(-42)),
            op("us-east", 9, "tags", "ключ-é", OpKind::SetAdd(vec![ByteBuf::from(b"x".to_vec())])),
            op("us-east", 10, "tags", "ключ-ê", OpKind::SetRemove(vec![ByteBuf::from(vec![0, 255])])),
            op("eu-central", 2, "users", "user:1", OpKind::Put(Vec::new())),
        ];
        ops[1].context = vv(&[("us-east", 5), ("us-west", 3)]);
        ops[4].context = vv(&[("us-east", 9)]);
        ops[5].context = vv(&[("us-east", 7), ("eu-central", 1)]);
        ops[2].hlc = Hlc::new(5, u32::MAX);
        ops[5].hlc = Hlc::new(u64::MAX, 0);
        Message::Batch(Batch {
            ops,
            trace: Some(TraceContext {
                traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
                tracestate: "congo=t61rcWkgMzE".into(),
            }),
            commit_times: vec![
                crate::CommitTime { last_seq: 2, unix_us: 1_764_547_200_000_000 },
                crate::CommitTime { last_seq: 9, unix_us: u64::MAX },
            ],
        })
    }

    fn one_of_each() -> Vec<Message> {
        let mut register = KeyState::new(ValueKind::Register);
        register.apply(&op("us-east", 1, "users", "a", OpKind::Put(b"v".to_vec()))).unwrap();
        let mut counter = KeyState::new(ValueKind::Counter);
        counter.apply(&op("us-west", 1, "page_views", "b", OpKind::CounterAdd(3))).unwrap();
        let entry = |ks: &str, k: &str, state: &KeyState| {
            (Keyspace::new(ks).unwrap(), Key::new(k).unwrap(), state.clone())
        };
        vec![
            Message::Hello(Hello {
                dc: dc("us-east"),
                protocol_version: PROTOCOL_VERSION,
                topology_fingerprint: 0xdead_beef,
                seen: vv(&[("us-east", 10), ("us-west", 2)]),
            }),
            mixed_batch(),
            Message::Ack(Ack { seen: vv(&[("eu-central", 99)]) }),
            Message::Heartbeat(Heartbeat {
                seen: vv(&[("us-east", 1)]),
                known: BTreeMap::from([(dc("us-west"), vv(&[("us-west", 4)])), (dc("eu-central"), vv(&[]))]),
                wall_ms: 1_732_000_000_123,
                echo: Some(mesh_wire_echo()),
            }),
            Message::SnapshotRequest(SnapshotRequest {
                request_id: 7,
                after: Some((Keyspace::new("users").unwrap(), Key::new("a").unwrap())),
                entries_max: 500,
            }),
            Message::SnapshotChunk(SnapshotChunk {
                request_id: 7,
                vector: vv(&[("us-east", 1), ("us-west", 1)]),
                entries: vec![entry("page_views", "b", &counter), entry("users", "a", &register)],
                last: true,
            }),
        ]
    }

    /// The body of `message` without validation, for frames a correct sender would not make.
    fn body_of(message: &Message) -> Vec<u8> {
        rmp_serde::to_vec(&BodyRef(message)).unwrap()
    }

    fn frame(version: ProtocolVersion, flags: u8, body: &[u8], raw_len: u32) -> Vec<u8> {
        let mut out = FrameHeader::seal(version, flags, body, raw_len).to_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    fn plain_frame(body: &[u8]) -> Vec<u8> {
        frame(PROTOCOL_VERSION, 0, body, body.len() as u32)
    }

    #[test]
    fn every_message_kind_round_trips_with_and_without_compression() {
        // Proves each message decodes to exactly what was encoded, whether compression is on or
        // off, and that the receiver decodes compressed frames even with compression disabled.
        for compression_enabled in [true, false] {
            let config = CodecConfig { compression_enabled, ..CodecConfig::default() };
            let mut sender = Codec::new(config.clone()).unwrap();
            let mut receiver = codec();
            for message in one_of_each() {
                let frame = sender.encode(&message).unwrap();
                assert_eq!(receiver.decode_frame(&frame).unwrap(), Some(message.clone()));
                let mut plain =
                    Codec::new(CodecConfig { compression_enabled: false, ..config.clone() }).unwrap();
                assert_eq!(plain.decode_frame(&frame).unwrap(), Some(message));
            }
        }
    }

    #[test]
    fn a_batch_decodes_to_exactly_the_ops_that_were_encoded() {
        // Proves the compact layout loses nothing: interleaved origins (several runs), every op
        // kind, contexts naming DCs that are no origin, keys sharing a prefix that ends inside a
        // multi-byte character, and HLCs that go backwards and wrap.
        let message = mixed_batch();
        let mut codec = codec();
        let frame = codec.encode(&message).unwrap();
        let Some(Message::Batch(decoded)) = codec.decode_frame(&frame).unwrap() else {
            panic!("not a batch")
        };
        let Message::Batch(sent) = message else { unreachable!() };
        assert_eq!(decoded.ops, sent.ops);
        assert_eq!(decoded.trace, sent.trace);
    }

    #[test]
    fn values_travel_as_msgpack_bin_not_as_arrays_of_ints() {
        // Proves a put's value is one MessagePack bin (marker 0xc4, length, raw bytes), not an
        // array of integers, which would double its size.
        let value = vec![0xabu8; 100];
        let message = batch(vec![op("us-east", 1, "users", "k", OpKind::Put(value.clone()))]);
        let mut codec =
            Codec::new(CodecConfig { compression_enabled: false, ..CodecConfig::default() }).unwrap();
        let frame = codec.encode(&message).unwrap();
        let mut bin = vec![0xc4, 100];
        bin.extend_from_slice(&value);
        assert!(frame.windows(bin.len()).any(|w| w == bin.as_slice()));
        assert!(frame.len() < HEADER_BYTES + value.len() + 64, "{} bytes", frame.len());
    }

    #[test]
    fn a_zstd_bomb_is_refused_before_inflating() {
        // Proves a body announcing more than raw_bytes_max is refused from its header alone,
        // before its body arrives, and that a body lying about its size (announcing 1,000 bytes,
        // inflating to 64 MiB) fails without being inflated past the announced size.
        let mut bomb = Vec::new();
        {
            let mut encoder = zstd::stream::Encoder::new(&mut bomb, 19).unwrap();
            let zeros = vec![0u8; 1 << 20];
            for _ in 0..64 {
                encoder.write_all(&zeros).unwrap();
            }
            encoder.finish().unwrap();
        }
        assert!(bomb.len() < 64 << 10, "the bomb is small: {} bytes", bomb.len());
        let mut codec = codec();

        let honest = frame(PROTOCOL_VERSION, FLAG_ZSTD, &bomb, 64 << 20);
        let refused = codec.decode(&honest[..HEADER_BYTES]);
        assert!(matches!(refused, Err(DecodeError::RawTooLarge { raw_bytes, .. }) if raw_bytes == 64 << 20));
        assert!(matches!(codec.decode(&honest), Err(DecodeError::RawTooLarge { .. })));

        let lying = frame(PROTOCOL_VERSION, FLAG_ZSTD, &bomb, 1_000);
        match codec.decode(&lying) {
            Err(DecodeError::Decompress(_) | DecodeError::LengthMismatch { .. }) => {}
            other => panic!("a lying bomb must fail, got {other:?}"),
        }
        // The same bomb without a declared size in its zstd header: inflating stops at the
        // announced 1,000 bytes.
        let mut undeclared = Vec::new();
        {
            let mut encoder = zstd::stream::Encoder::new(&mut undeclared, 19).unwrap();
            encoder.include_contentsize(false).unwrap();
            let zeros = vec![0u8; 1 << 20];
            for _ in 0..64 {
                encoder.write_all(&zeros).unwrap();
            }
            encoder.finish().unwrap();
        }
        assert!(matches!(zstd::zstd_safe::get_frame_content_size(&undeclared), Ok(None)));
        let lying = frame(PROTOCOL_VERSION, FLAG_ZSTD, &undeclared, 1_000);
        assert!(matches!(codec.decode(&lying), Err(DecodeError::Decompress(_))));
        assert!(codec.raw.capacity() <= SCRATCH_BYTES_KEPT, "nothing was inflated past the bound");
    }

    #[test]
    fn an_unknown_major_version_is_refused() {
        // Proves a frame from another major version is refused with a typed error naming both
        // versions, as soon as its header is read.
        let body = body_of(&Message::Ack(Ack { seen: VersionVector::new() }));
        for major in [0, 2, 255] {
            let peer = ProtocolVersion { major, minor: 0 };
            let bytes = frame(peer, 0, &body, body.len() as u32);
            let err = codec().decode(&bytes[..HEADER_BYTES]).unwrap_err();
            assert!(
                matches!(err, DecodeError::UnsupportedVersion { peer: p, ours } if p == peer && ours == PROTOCOL_VERSION)
            );
            assert!(err.to_string().contains("major versions differ"), "{err}");
        }
    }

    #[test]
    fn a_newer_minor_version_is_accepted() {
        // Proves a peer with the same major and a higher minor version is understood.
        let message = Message::Ack(Ack { seen: vv(&[("us-east", 3)]) });
        let body = body_of(&message);
        let newer = ProtocolVersion { major: PROTOCOL_VERSION.major, minor: PROTOCOL_VERSION.minor + 3 };
        let bytes = frame(newer, 0, &body, body.len() as u32);
        assert_eq!(codec().decode_frame(&bytes).unwrap(), Some(message));
    }

    #[test]
    fn an_unknown_message_kind_is_skipped_from_a_newer_minor_and_refused_from_ours() {
        // Proves the minor-version rule: a message kind added by a newer minor is skipped whole
        // (the stream stays in step), while an unknown kind claiming our own version is an error.
        let body = rmp_serde::to_vec(&(99u8, (1u32, "future", [1u8, 2, 3]))).unwrap();
        let newer = ProtocolVersion { major: PROTOCOL_VERSION.major, minor: PROTOCOL_VERSION.minor + 1 };
        let mut stream = frame(newer, 0, &body, body.len() as u32);
        let next = codec().encode(&Message::Ack(Ack { seen: VersionVector::new() })).unwrap();
        stream.extend_from_slice(&next);
        let mut codec = codec();
        let skipped = codec.decode(&stream).unwrap();
        assert_eq!(skipped, Decoded::Skipped { kind: 99, bytes_consumed: stream.len() - next.len() });
        let after = codec.decode(&stream[skipped.bytes_consumed()..]).unwrap();
        assert!(matches!(after, Decoded::Frame { message: Message::Ack(_), .. }));

        let ours = plain_frame(&body);
        assert!(matches!(codec.decode(&ours), Err(DecodeError::UnknownMessage { kind: 99, .. })));
    }

    #[test]
    fn a_damaged_body_fails_the_checksum() {
        // Proves a flipped bit anywhere in the body, compressed or not, is caught by the checksum.
        for compression_enabled in [true, false] {
            let config = CodecConfig { compression_enabled, ..CodecConfig::default() };
            let frame = Codec::new(config).unwrap().encode(&mixed_batch()).unwrap();
            for at in [HEADER_BYTES, frame.len() / 2, frame.len() - 1] {
                let mut damaged = frame.clone();
                damaged[at] ^= 0x10;
                assert!(matches!(codec().decode(&damaged), Err(DecodeError::ChecksumMismatch { .. })));
            }
        }
    }

    #[test]
    fn a_flipped_length_never_decodes() {
        // Proves the checksum covers the header: a shorter body length fails the checksum, and
        // a longer one waits for bytes that, when they come, fail it too.
        let frame = codec().encode(&mixed_batch()).unwrap();
        let mut shorter = frame.clone();
        shorter[8] -= 1;
        assert!(matches!(codec().decode(&shorter), Err(DecodeError::ChecksumMismatch { .. })));
        let mut longer = frame.clone();
        longer[8] += 1;
        assert_eq!(codec().decode(&longer).unwrap(), Decoded::NeedMore { bytes_min: frame.len() + 1 });
        longer.push(0);
        assert!(matches!(codec().decode(&longer), Err(DecodeError::ChecksumMismatch { .. })));
    }

    #[test]
    fn bad_magic_is_refused_from_the_first_byte() {
        // Proves a stream that is not mesh frames is refused without waiting for a full header.
        assert!(matches!(codec().decode(b"G"), Err(DecodeError::BadMagic { found }) if found == b"G"));
        assert!(matches!(codec().decode(b"GET / HTTP/1.1\r\n\r\n"), Err(DecodeError::BadMagic { .. })));
        assert_eq!(codec().decode(b"").unwrap(), Decoded::NeedMore { bytes_min: HEADER_BYTES });
        assert_eq!(codec().decode(b"ME").unwrap(), Decoded::NeedMore { bytes_min: HEADER_BYTES });
    }

    #[test]
    fn a_stream_fed_byte_by_byte_yields_each_frame_once() {
        // Proves the streaming decoder: with a partial frame it asks for more and consumes
        // nothing; with a frame and the start of the next it decodes the first and says how many
        // bytes it used.
        let messages = one_of_each();
        let mut stream = Vec::new();
        let mut sender = codec();
        for message in &messages {
            sender.encode_into(message, &mut stream).unwrap();
        }
        let mut receiver = codec();
        let mut buffered = Vec::new();
        let mut decoded = Vec::new();
        for &byte in &stream {
            buffered.push(byte);
            match receiver.decode(&buffered).unwrap() {
                Decoded::NeedMore { bytes_min } => assert!(bytes_min > buffered.len()),
                Decoded::Frame { message, info } => {
                    assert_eq!(info.frame_bytes, buffered.len());
                    buffered.drain(..info.frame_bytes);
                    decoded.push(message);
                }
                Decoded::Skipped { .. } => panic!("nothing to skip"),
            }
        }
        assert!(buffered.is_empty());
        assert_eq!(decoded, messages);
    }

    #[test]
    fn decode_frame_refuses_a_truncated_frame_and_trailing_bytes() {
        // Proves the one-frame decoder insists on exactly one frame.
        let mut frame = codec().encode(&mixed_batch()).unwrap();
        let len = frame.len();
        assert!(matches!(
            codec().decode_frame(&frame[..len - 1]),
            Err(DecodeError::Truncated { available, needed }) if available == len - 1 && needed == len
        ));
        frame.push(0);
        assert!(matches!(
            codec().decode_frame(&frame),
            Err(DecodeError::TrailingBytes { bytes: 1, after: "frame" })
        ));
    }

    #[test]
    fn bytes_after_the_message_inside_a_body_are_refused() {
        // Proves a body must be exactly one message: extra MessagePack after it is an error, not
        // silently ignored.
        let mut body = body_of(&Message::Ack(Ack { seen: VersionVector::new() }));
        body.push(0xc0);
        assert!(matches!(
            codec().decode(&plain_frame(&body)),
            Err(DecodeError::TrailingBytes { bytes: 1, after: "message" })
        ));
    }

    #[test]
    fn garbage_msgpack_is_a_typed_error() {
        // Proves bodies that are not a message (bad markers, wrong shapes, truncated values, an
        // invalid DC id) come back as typed errors.
        let bad_dc = rmp_serde::to_vec(&(1u8, ("Not A Dc", (1u8, 0u8), 0u64, ((),)))).unwrap();
        for body in [
            vec![0xc1],
            vec![0x92, 0x03],
            vec![0x92, 0x01, 0xc4, 0x10, 1],
            b"\x92\x03\x91\x80".to_vec(),
            bad_dc,
        ] {
            let err = codec().decode(&plain_frame(&body)).unwrap_err();
            assert!(matches!(err, DecodeError::Body(_)), "{body:02x?}: {err:?}");
        }
        let zstd_garbage = frame(PROTOCOL_VERSION, FLAG_ZSTD, b"definitely not zstd", 100);
        assert!(matches!(codec().decode(&zstd_garbage), Err(DecodeError::Decompress(_))));
    }

    #[test]
    fn a_batch_body_that_breaks_the_compact_layout_is_refused() {
        // Proves the batch layout's own rules are checked: indexes inside their tables, key
        // prefixes inside the previous key, runs starting at seq 1 or later and holding ops, and
        // op counts matching what the batch announces.
        let ctx = std::collections::BTreeMap::<u32, u64>::new();
        let op =
            |shared: u64, suffix: &str| (0i64, 0u32, 0u32, shared, suffix.to_string(), 1u8, (), ctx.clone());
        let body = |count: u64, dcs: Vec<&str>, runs: Vec<(u32, u64, Vec<_>)>| {
            rmp_serde::to_vec(&(2u8, (count, (), dcs, vec!["users"], runs))).unwrap()
        };
        let cases = [
            body(1, vec!["a"], vec![(1, 1, vec![op(0, "k")])]),
            body(1, vec!["a"], vec![(0, 0, vec![op(0, "k")])]),
            body(1, vec!["a"], vec![(0, 1, vec![op(1, "k")])]),
            body(2, vec!["a"], vec![(0, 1, vec![op(0, "k")])]),
            body(1, vec!["a"], vec![(0, 1, vec![op(0, "k"), op(0, "j")])]),
            body(1, vec!["a"], vec![(0, 1, vec![op(0, "k")]), (0, 5, vec![])]),
            body(
                1,
                vec!["a"],
                vec![(0, 1, vec![(0i64, 0u32, 1u32, 0u64, "k".to_string(), 1u8, (), ctx.clone())])],
            ),
        ];
        for body in cases {
            let err = codec().decode(&plain_frame(&body)).unwrap_err();
            assert!(matches!(err, DecodeError::Body(_)), "{err:?}");
        }
        let fine = body(1, vec!["a"], vec![(0, 1, vec![op(0, "k")])]);
        assert!(codec().decode_frame(&plain_frame(&fine)).is_ok());
    }

    #[test]
    fn an_oversized_frame_is_refused_from_its_header() {
        // Proves a frame announcing more than frame_bytes_max is refused before its body is
        // waited for, so a peer cannot make the reader buffer gigabytes.
        let mut header = FrameHeader::seal(PROTOCOL_VERSION, 0, b"", 0);
        header.body_len = u32::MAX;
        header.raw_len = 10;
        let err = codec().decode(&header.to_bytes()).unwrap_err();
        assert!(
            matches!(err, DecodeError::FrameTooLarge { frame_bytes, .. } if frame_bytes == u64::from(u32::MAX) + 20)
        );
    }

    #[test]
    fn unknown_flags_and_a_set_reserved_byte_are_refused() {
        // Proves flag bits this version does not define are not ignored: their meaning is unknown.
        let body = body_of(&Message::Ack(Ack { seen: VersionVector::new() }));
        let flagged = frame(PROTOCOL_VERSION, 0b10, &body, body.len() as u32);
        assert!(matches!(codec().decode(&flagged), Err(DecodeError::UnknownFlags { flags: 0b10, .. })));
        let mut header = FrameHeader::seal(PROTOCOL_VERSION, 0, &body, body.len() as u32);
        header.reserved = 1;
        assert!(matches!(
            codec().decode(&header.to_bytes()),
            Err(DecodeError::UnknownFlags { reserved: 1, .. })
        ));
        let mut uneven = plain_frame(&body);
        uneven[12] += 1;
        assert!(matches!(codec().decode(&uneven), Err(DecodeError::LengthMismatch { .. })));
    }

    #[test]
    fn an_invalid_batch_is_refused_on_encode_and_on_decode() {
        // Proves rule 7 of STYLE.md: the same checks run before encoding and after decoding, so
        // a bad batch from a buggy peer is caught even though it was framed correctly.
        let mut with_context = op("us-east", 2, "page_views", "k", OpKind::CounterAdd(1));
        with_context.context = vv(&[("us-west", 1)]);
        let mut covers_itself = op("us-east", 2, "users", "k", OpKind::Delete);
        covers_itself.context = vv(&[("us-east", 2)]);
        let cases = [
            (batch(vec![]), ValidationError::EmptyBatch),
            (
                batch(vec![
                    op("us-east", 1, "users", "a", OpKind::Put(vec![])),
                    op("us-east", 3, "users", "b", OpKind::Delete),
                ]),
                ValidationError::SeqGap { index: 1, origin: dc("us-east"), expected: 2, found: 3 },
            ),
            (
                batch(vec![op("us-east", 1, "users", "a", OpKind::Put(vec![0; VALUE_BYTES_MAX + 1]))]),
                ValidationError::ValueTooLarge { index: 0, bytes: VALUE_BYTES_MAX + 1, max: VALUE_BYTES_MAX },
            ),
            (
                batch(vec![with_context]),
                ValidationError::UnexpectedContext { index: 0, kind: ValueKind::Counter },
            ),
            (batch(vec![covers_itself]), ValidationError::ContextCoversOp { index: 0 }),
            (
                batch(vec![op("us-east", 1, "tags", "a", OpKind::SetAdd(vec![]))]),
                ValidationError::SetMembers { index: 0, members: 0, max: crate::SET_MEMBERS_MAX },
            ),
        ];
        for (message, expected) in cases {
            let err = codec().encode(&message).unwrap_err();
            assert!(matches!(&err, EncodeError::Invalid(e) if *e == expected), "{err:?}");
            // A body that skipped validation: the receiver refuses it the same way.
            let big =
                CodecConfig { raw_bytes_max: 4 << 20, frame_bytes_max: 4 << 20, ..CodecConfig::default() };
            let err = Codec::new(big).unwrap().decode(&plain_frame(&body_of(&message))).unwrap_err();
            assert!(matches!(&err, DecodeError::Invalid(e) if *e == expected), "{err:?}");
        }
    }

    #[test]
    fn a_batch_over_the_op_limit_is_refused_before_its_ops_are_read() {
        // Proves the op bound holds while decoding, not only after: the announced count is
        // checked before any op is allocated.
        let ops = (1..=5).map(|seq| op("us-east", seq, "users", "k", OpKind::Delete)).collect();
        let frame = codec().encode(&batch(ops)).unwrap();
        let mut small = Codec::new(CodecConfig { batch_ops_max: 4, ..CodecConfig::default() }).unwrap();
        let err = small.decode(&frame).unwrap_err();
        assert!(
            matches!(err, DecodeError::Invalid(ValidationError::TooManyOps { ops: 5, max: 4 })),
            "{err:?}"
        );
    }

    #[test]
    fn an_out_of_order_snapshot_chunk_is_refused() {
        // Proves snapshot chunks must list keys in strictly increasing order, as stores cut them.
        let state = KeyState::new(ValueKind::Register);
        let entry = |k: &str| (Keyspace::new("users").unwrap(), Key::new(k).unwrap(), state.clone());
        let chunk = Message::SnapshotChunk(SnapshotChunk {
            request_id: 1,
            vector: VersionVector::new(),
            entries: vec![entry("b"), entry("a")],
            last: false,
        });
        assert!(matches!(
            codec().encode(&chunk),
            Err(EncodeError::Invalid(ValidationError::EntriesOutOfOrder { index: 1 }))
        ));
        assert!(matches!(
            codec().decode(&plain_frame(&body_of(&chunk))),
            Err(DecodeError::Invalid(ValidationError::EntriesOutOfOrder { index: 1 }))
        ));
    }

    #[test]
    fn compression_is_used_only_when_it_shrinks_the_body() {
        // Proves the "zstd when it pays" rule: a repetitive batch is compressed, a tiny message
        // and incompressible values are sent raw, and compression_enabled = false sends raw.
        let repetitive =
            batch((1..=50).map(|seq| op("us-east", seq, "users", "k", OpKind::Put(vec![7; 100]))).collect());
        let mut state = 0x1234_5678_9abc_def0u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let incompressible = batch(vec![op("us-east", 1, "users", "k", OpKind::Put(noise))]);
        let tiny = Message::Ack(Ack { seen: VersionVector::new() });
        let mut codec = codec();
        let mut out = Vec::new();
        assert!(codec.encode_into(&repetitive, &mut out).unwrap().compressed);
        assert!(!codec.encode_into(&incompressible, &mut out).unwrap().compressed);
        assert!(!codec.encode_into(&tiny, &mut out).unwrap().compressed);
        let mut off =
            Codec::new(CodecConfig { compression_enabled: false, ..CodecConfig::default() }).unwrap();
        let info = off.encode_into(&repetitive, &mut out).unwrap();
        assert!(!info.compressed);
        assert_eq!(info.frame_bytes, info.raw_bytes + HEADER_BYTES);
    }

    #[test]
    fn a_maximal_op_fits_the_smallest_allowed_frame() {
        // Proves RAW_BYTES_MIN is enough for one op with a value of VALUE_BYTES_MAX bytes and a
        // key of KEY_BYTES_MAX bytes, so no valid op is too large for any valid configuration.
        let config = CodecConfig {
            compression_enabled: false,
            raw_bytes_max: RAW_BYTES_MIN,
            frame_bytes_max: RAW_BYTES_MIN + HEADER_BYTES,
            ..CodecConfig::default()
        };
        let key = "k".repeat(mesh_core::KEY_BYTES_MAX);
        let mut max_op = op("us-east", u64::MAX, "users", &key, OpKind::Put(vec![1; VALUE_BYTES_MAX]));
        // The longest DC ids, as many as a batch may name besides the origin.
        max_op.context = (1..crate::DCS_MAX).map(|i| (dc(&format!("dc-{i:029}")), u64::MAX)).collect();
        let message = batch(vec![max_op]);
        let mut codec = Codec::new(config).unwrap();
        let frame = codec.encode(&message).unwrap();
        assert_eq!(codec.decode_frame(&frame).unwrap(), Some(message));
    }

    #[test]
    fn a_frame_limit_too_small_for_one_maximal_op_is_refused() {
        // Proves limits that could not carry a valid op are refused when the codec is made,
        // not discovered when a large write fails to replicate.
        let small = CodecConfig { raw_bytes_max: 64 << 10, ..CodecConfig::default() };
        assert!(matches!(Codec::new(small), Err(ConfigError::Limit { field: "raw_bytes_max", .. })));
        let level = CodecConfig { compression_level: 99, ..CodecConfig::default() };
        assert!(matches!(Codec::new(level), Err(ConfigError::CompressionLevel { level: 99, .. })));
        let replication = mesh_core::topology::ReplicationConfig::default();
        let config = CodecConfig::from_replication(&replication).unwrap();
        assert_eq!(config.batch_ops_max, replication.batch_size as usize);
        let tiny = mesh_core::topology::ReplicationConfig { frame_bytes_max: 64 << 10, ..replication };
        assert!(CodecConfig::from_replication(&tiny).is_err());
    }
}
