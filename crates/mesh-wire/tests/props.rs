//! Property tests of the codec: every valid message survives a round trip (compression on and
//! off), and no input, arbitrary or a damaged valid frame, panics the decoder or slips through
//! as a message.
//!
//! Failing cases are shrunk and saved in `props.proptest-regressions`, which proptest replays
//! first on the next `cargo test -p mesh-wire --test props`.

use mesh_core::{DcId, Dot, Hlc, Key, KeyState, Keyspace, Op, OpKind, ValueKind, VersionVector};
use mesh_wire::{
    Ack, Batch, Codec, CodecConfig, Decoded, FrameHeader, Heartbeat, HeartbeatEcho, Hello, Message,
    ProtocolVersion, SnapshotChunk, SnapshotRequest, TraceContext, FLAG_ZSTD, PROTOCOL_VERSION,
};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde_bytes::ByteBuf;
use std::collections::BTreeMap;

/// DC ids: a few fixed names (so batches repeat origins and contexts share DCs) and arbitrary
/// valid ones.
fn dc_id() -> impl Strategy<Value = DcId> {
    prop_oneof![
        3 => prop::sample::select(vec!["us-east", "us-west", "eu-central", "a"]).prop_map(|s| DcId::new(s).unwrap()),
        1 => "[a-z][a-z0-9-]{0,31}".prop_map(|s| DcId::new(s).unwrap()),
    ]
}

fn keyspace() -> impl Strategy<Value = Keyspace> {
    prop_oneof![
        3 => prop::sample::select(vec!["users", "tags", "page_views"]).prop_map(|s| Keyspace::new(s).unwrap()),
        1 => "[a-z][a-z0-9_-]{0,63}".prop_map(|s| Keyspace::new(s).unwrap()),
    ]
}

/// Keys that share prefixes (ASCII and multi-byte) and arbitrary non-control text.
fn key() -> impl Strategy<Value = Key> {
    prop_oneof![
        "user:[0-9]{1,5}".prop_map(|s| Key::new(s).unwrap()),
        "é[éêa]{0,6}".prop_map(|s| Key::new(s).unwrap()),
        "[^\\p{Cc}]{1,24}".prop_map(|s| Key::new(s).unwrap()),
    ]
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..200)
}

fn members() -> impl Strategy<Value = Vec<ByteBuf>> {
    vec(bytes().prop_map(ByteBuf::from), 1..5)
}

fn kind() -> impl Strategy<Value = OpKind> {
    prop_oneof![
        bytes().prop_map(OpKind::Put),
        Just(OpKind::Delete),
        any::<i64>().prop_map(OpKind::CounterAdd),
        members().prop_map(OpKind::SetAdd),
        members().prop_map(OpKind::SetRemove),
    ]
}

fn vector() -> impl Strategy<Value = VersionVector> {
    vec((dc_id(), any::<u64>()), 0..5).prop_map(|entries| entries.into_iter().collect())
}

fn hlc() -> impl Strategy<Value = Hlc> {
    prop_oneof![
        (any::<u64>(), any::<u32>()).prop_map(|(p, l)| Hlc::new(p, l)),
        (1_700_000_000_000u64..1_700_000_000_100, 0u32..4).prop_map(|(p, l)| Hlc::new(p, l)),
    ]
}

/// A valid batch: each origin's ops have consecutive seqs from an arbitrary start, counter and
/// set adds carry no context, and no context covers its own op.
fn batch() -> impl Strategy<Value = Batch> {
    let op = (dc_id(), hlc(), keyspace(), key(), kind(), vector());
    let starts = btree_map(dc_id(), prop_oneof![Just(1u64), any::<u64>().prop_map(|s| s.max(1))], 0..4);
    (vec(op, 1..40), starts, prop::option::of(trace())).prop_map(|(specs, starts, trace)| {
        let mut next: BTreeMap<DcId, u64> = starts;
        let mut ops = Vec::new();
        for (origin, hlc, keyspace, key, kind, context) in specs {
            let seq = *next.entry(origin.clone()).or_insert(1);
            let Some(after) = seq.checked_add(1) else { continue };
            next.insert(origin.clone(), after);
            let context = match kind {
                OpKind::CounterAdd(_) | OpKind::SetAdd(_) => VersionVector::new(),
                _ => context
                    .iter()
                    .map(|(dc, s)| (dc.clone(), if dc == &origin { s.min(seq - 1) } else { s }))
                    .collect(),
            };
            ops.push(Op { dot: Dot::new(origin, seq), hlc, keyspace, key, kind, context });
        }
        if ops.is_empty() {
            ops.push(Op {
                dot: Dot::new(DcId::new("a").unwrap(), 1),
                hlc: Hlc::default(),
                keyspace: Keyspace::new("k").unwrap(),
                key: Key::new("k").unwrap(),
                kind: OpKind::Delete,
                context: VersionVector::new(),
            });
        }
        // Commit times as a sender reports them: ascending seqs, at most one per op.
        let commit_times = ops
            .iter()
            .step_by(3)
            .map(|op| mesh_wire::CommitTime {
                last_seq: op.dot.seq,
                unix_us: op.hlc.physical_ms.wrapping_mul(1_000),
            })
            .collect();
        Batch { ops, trace, commit_times }
    })
}

fn trace() -> impl Strategy<Value = TraceContext> {
    ("[0-9a-f]{31}[1-9a-f]", "[0-9a-f]{15}[1-9a-f]", "0[0-9a-f]", "[ -~]{0,80}").prop_map(
        |(trace_id, parent_id, flags, tracestate)| TraceContext {
            traceparent: format!("00-{trace_id}-{parent_id}-{flags}"),
            tracestate,
        },
    )
}

/// A key state reached by applying valid ops of its type, in per-origin seq order.
fn key_state() -> impl Strategy<Value = KeyState> {
    let register = vec((0usize..3, prop::option::of(bytes()), any::<bool>()), 0..6).prop_map(|steps| {
        let mut state = KeyState::new(ValueKind::Register);
        let mut seqs = [0u64; 3];
        for (origin, value, with_context) in steps {
            seqs[origin] += 1;
            let context = if with_context { state.context().clone() } else { VersionVector::new() };
            let kind = value.map_or(OpKind::Delete, OpKind::Put);
            state.apply(&state_op(origin, seqs[origin], kind, context)).unwrap();
        }
        state
    });
    let counter = vec((0usize..3, any::<i32>()), 0..6).prop_map(|steps| {
        let mut state = KeyState::new(ValueKind::Counter);
        let mut seqs = [0u64; 3];
        for (origin, amount) in steps {
            seqs[origin] += 1;
            let op = state_op(origin, seqs[origin], OpKind::CounterAdd(amount.into()), VersionVector::new());
            state.apply(&op).unwrap();
        }
        state
    });
    let set = vec((0usize..3, members(), any::<bool>()), 0..6).prop_map(|steps| {
        let mut state = KeyState::new(ValueKind::Set);
        let mut seqs = [0u64; 3];
        for (origin, members, add) in steps {
            seqs[origin] += 1;
            let (kind, context) = if add {
                (OpKind::SetAdd(members), VersionVector::new())
            } else {
                (OpKind::SetRemove(members), state.context().clone())
            };
            state.apply(&state_op(origin, seqs[origin], kind, context)).unwrap();
        }
        state
    });
    prop_oneof![register, counter, set]
}

fn state_op(origin: usize, seq: u64, kind: OpKind, context: VersionVector) -> Op {
    let origin = DcId::new(["us-east", "us-west", "eu-central"][origin]).unwrap();
    Op {
        dot: Dot::new(origin, seq),
        hlc: Hlc::new(1_700_000_000_000 + seq, 0),
        keyspace: Keyspace::new("k").unwrap(),
        key: Key::new("k").unwrap(),
        kind,
        context,
    }
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (dc_id(), any::<(u8, u8)>(), any::<u64>(), vector()).prop_map(|(dc, (major, minor), fp, seen)| {
            Message::Hello(Hello {
                dc,
                protocol_version: ProtocolVersion { major, minor },
                topology_fingerprint: fp,
                seen,
            })
        }),
        batch().prop_map(Message::Batch),
        vector().prop_map(|seen| Message::Ack(Ack { seen })),
        (vector(), btree_map(dc_id(), vector(), 0..4), any::<u64>(), prop::option::of(any::<(u64, u64)>()))
            .prop_map(|(seen, known, wall_ms, echo)| {
                let echo = echo.map(|(wall_ms, held_ms)| HeartbeatEcho { wall_ms, held_ms });
                Message::Heartbeat(Heartbeat { seen, known, wall_ms, echo })
            }),
        (any::<u64>(), prop::option::of((keyspace(), key())), 1u32..=10_000).prop_map(
            |(request_id, after, entries_max)| {
                Message::SnapshotRequest(SnapshotRequest { request_id, after, entries_max })
            }
        ),
        (any::<u64>(), vector(), btree_map((keyspace(), key()), key_state(), 0..6), any::<bool>()).prop_map(
            |(request_id, vector, entries, last)| {
                let entries = entries.into_iter().map(|((ks, k), state)| (ks, k, state)).collect();
                Message::SnapshotChunk(SnapshotChunk { request_id, vector, entries, last })
            }
        ),
    ]
}

fn codec(compression_enabled: bool, compression_level: i32) -> Codec {
    Codec::new(CodecConfig { compression_enabled, compression_level, ..CodecConfig::default() }).unwrap()
}

/// A frame with a correct header and checksum around an arbitrary body, so the fuzzing reaches
/// the zstd and MessagePack decoders instead of stopping at the checksum.
fn sealed(body: &[u8], compress: bool) -> Vec<u8> {
    let (flags, wire, raw_len) = if compress {
        (FLAG_ZSTD, zstd::bulk::compress(body, 1).unwrap(), body.len())
    } else {
        (0, body.to_vec(), body.len())
    };
    let mut frame = FrameHeader::seal(PROTOCOL_VERSION, flags, &wire, raw_len as u32).to_bytes().to_vec();
    frame.extend_from_slice(&wire);
    frame
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_valid_message_round_trips(
        message in message(),
        compression_enabled in any::<bool>(),
        level in prop::sample::select(vec![1, 3, 19]),
    ) {
        // Proves encode then decode is the identity on valid messages, with compression on and
        // off, and that the decoder consumes exactly the frame.
        let mut codec = codec(compression_enabled, level);
        let frame = codec.encode(&message).unwrap();
        let decoded = codec.decode(&frame).unwrap();
        prop_assert_eq!(decoded.bytes_consumed(), frame.len());
        let Decoded::Frame { message: back, info } = decoded else { panic!("{decoded:?}") };
        prop_assert_eq!(back, message);
        prop_assert!(compression_enabled || !info.compressed);
    }

    #[test]
    fn every_proper_prefix_of_a_frame_asks_for_more(message in message(), cut in any::<prop::sample::Index>()) {
        // Proves a partial frame is never mistaken for an error or a message: the streaming
        // decoder asks for more bytes, and for more than it has.
        let mut codec = codec(true, 3);
        let frame = codec.encode(&message).unwrap();
        let cut = cut.index(frame.len());
        match codec.decode(&frame[..cut]).unwrap() {
            Decoded::NeedMore { bytes_min } => prop_assert!(bytes_min > cut && bytes_min <= frame.len()),
            other => prop_assert!(false, "prefix of {} bytes decoded as {:?}", cut, other),
        }
    }

    #[test]
    fn a_single_damaged_byte_never_decodes(
        message in message(),
        compression_enabled in any::<bool>(),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        // Proves every byte of a frame is covered: changing any one (magic, version, flags,
        // lengths, checksum or body) gives an error or a wait for bytes, never a message
        // (CRC-32C detects every error within 32 consecutive bits), and never a panic.
        let mut codec = codec(compression_enabled, 3);
        let mut frame = codec.encode(&message).unwrap();
        let at = at.index(frame.len());
        frame[at] ^= flip;
        let result = codec.decode(&frame);
        prop_assert!(
            !matches!(result, Ok(Decoded::Frame { .. }) | Ok(Decoded::Skipped { .. })),
            "byte {} ^ {:#04x} decoded: {:?}", at, flip, result
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in vec(any::<u8>(), 0..512)) {
        // Proves the decoder returns (an error, almost always) on any input, with or without
        // the magic in front.
        let mut codec = codec(true, 3);
        let _ = codec.decode(&bytes);
        let _ = codec.decode_frame(&bytes);
        let mut framed = b"MESH".to_vec();
        framed.extend_from_slice(&bytes);
        let _ = codec.decode(&framed);
    }

    #[test]
    fn arbitrary_bodies_in_well_formed_frames_never_panic_the_decoder(
        body in prop_oneof![
            vec(any::<u8>(), 0..512),
            // Bodies starting like a batch reach deeper into the batch decoder.
            vec(any::<u8>(), 0..512).prop_map(|mut b| { b.splice(0..0, [0x92, 0x02, 0x95]); b }),
        ],
        compress in any::<bool>(),
    ) {
        // Proves garbage behind a correct header and checksum (raw or zstd) is refused with an
        // error, never a panic.
        let mut codec = codec(true, 3);
        let _ = codec.decode(&sealed(&body, compress));
    }

    #[test]
    fn damaged_bodies_in_well_formed_frames_never_panic_the_decoder(
        message in message(),
        at in any::<prop::sample::Index>(),
        value in any::<u8>(),
        compress in any::<bool>(),
    ) {
        // Proves a valid body with one byte changed, resealed so the checksum passes, decodes to
        // an error or to some valid message, never a panic: the decoder does not trust the body.
        let mut codec = codec(false, 3);
        let frame = codec.encode(&message).unwrap();
        let mut body = frame[mesh_wire::HEADER_BYTES..].to_vec();
        let at = at.index(body.len());
        body[at] = value;
        if let Ok(Decoded::Frame { message, .. }) = codec.decode(&sealed(&body, compress)) {
            prop_assert!(message.validate(codec.config()).is_ok());
        }
    }
}
