//! The wire-size target on the reference workload: the 1,000 reference records sent as one batch
//! frame take at most 50 bytes per op, all metadata included. A size, not a timing: the result is
//! deterministic, so it is asserted.
//!
//! The data file is `$MESH_REFERENCE_DATA`, or `shared/data/reference-records.jsonl` beside the
//! workspace.

use mesh_wire::reference::{self, Record};
use mesh_wire::{Codec, CodecConfig, Message};

const FRAME_BYTES_PER_OP_MAX: f64 = 50.0;

fn records() -> Vec<Record> {
    reference::load(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")))
}

fn frame_bytes(message: &Message, compression_enabled: bool, compression_level: i32) -> (usize, usize) {
    let config = CodecConfig { compression_enabled, compression_level, ..CodecConfig::default() };
    let mut codec = Codec::new(config).unwrap();
    let mut frame = Vec::new();
    let info = codec.encode_into(message, &mut frame).unwrap();
    assert_eq!(codec.decode_frame(&frame).unwrap().as_ref(), Some(message));
    (info.frame_bytes, info.raw_bytes)
}

#[test]
fn the_reference_values_are_the_compact_json_of_each_record() {
    // Proves the shared parser keeps each value as valid, compact JSON (re-serializing it gives
    // the same length: serde_json sorts keys but adds no whitespace).
    let records = records();
    assert_eq!(records.len(), 1_000);
    for record in &records {
        let value: serde_json::Value = serde_json::from_slice(&record.value).unwrap();
        assert_eq!(serde_json::to_vec(&value).unwrap().len(), record.value.len(), "{:?}", record.key);
    }
}

#[test]
fn the_reference_batch_takes_at_most_50_bytes_per_op_on_the_wire() {
    // Proves the wire-size target: one zstd-3 batch frame of the 1,000 reference records is at
    // most 50 bytes per op, header, seqs, HLCs, keys and keyspace included.
    let records = records();
    let ops = records.len() as f64;
    let message = Message::Batch(reference::batch(&records));
    let (raw_frame, raw_body) = frame_bytes(&message, false, 3);
    let (level1, _) = frame_bytes(&message, true, 1);
    let (level3, _) = frame_bytes(&message, true, 3);
    println!(
        "reference batch of {} ops: body {:.1} B/op raw ({} B), frame {:.1} B/op uncompressed, \
         {:.1} B/op zstd-1 ({} B), {:.1} B/op zstd-3 ({} B)",
        records.len(),
        raw_body as f64 / ops,
        raw_body,
        raw_frame as f64 / ops,
        level1 as f64 / ops,
        level1,
        level3 as f64 / ops,
        level3
    );
    assert!(
        level3 as f64 / ops <= FRAME_BYTES_PER_OP_MAX,
        "{:.1} B/op with zstd-3, target {FRAME_BYTES_PER_OP_MAX}",
        level3 as f64 / ops
    );
}

#[test]
fn the_compact_batch_layout_is_smaller_than_a_plain_vec_of_ops() {
    // Proves the compact layout pays for itself: the same ops as a plain MessagePack `Vec<Op>`
    // (structs as arrays, values as bin) take more bytes, raw and after zstd-3.
    let records = records();
    let ops = reference::ops(&records);
    let plain = rmp_serde::to_vec(&ops).unwrap();
    let plain_zstd = zstd::bulk::compress(&plain, 3).unwrap();
    let message = Message::Batch(reference::batch(&records));
    let (compact_frame, compact_body) = frame_bytes(&message, true, 3);
    println!(
        "plain Vec<Op>: {:.1} B/op raw, {:.1} B/op zstd-3; compact batch: {:.1} B/op raw, {:.1} B/op zstd-3 frame",
        plain.len() as f64 / 1000.0,
        plain_zstd.len() as f64 / 1000.0,
        compact_body as f64 / 1000.0,
        compact_frame as f64 / 1000.0
    );
    assert!(compact_body < plain.len());
    assert!(compact_frame < plain_zstd.len());
}
