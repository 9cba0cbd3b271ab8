//! Wire codec throughput on the reference batch (1,000 records from
//! `shared/data/reference-records.jsonl`, built by `mesh_wire::reference`): encode (MessagePack +
//! zstd + checksum) and decode (checksum + zstd + MessagePack + validation), raw and at zstd
//! levels 1 and 3. Two groups measure the same work: `wire` in bytes/s of raw MessagePack body,
//! `wire-ops` in ops/s. Before measuring, one line gives the frame size per op.
//!
//! Run: `cargo bench --bench wire -- --warm-up-time 1 --measurement-time 3`. The data path is
//! `$MESH_REFERENCE_DATA`, else `../shared/data/reference-records.jsonl` beside the workspace.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mesh_wire::reference::{self, Record};
use mesh_wire::{Codec, CodecConfig, Decoded, Message};
use std::hint::black_box;

fn records() -> Vec<Record> {
    reference::load(std::path::Path::new(env!("CARGO_MANIFEST_DIR")))
}

/// The codec settings measured: name, compression on, level.
const SETTINGS: [(&str, bool, i32); 3] = [("raw", false, 3), ("zstd-1", true, 1), ("zstd-3", true, 3)];

fn codec(compression_enabled: bool, compression_level: i32) -> Codec {
    Codec::new(CodecConfig { compression_enabled, compression_level, ..CodecConfig::default() })
        .expect("valid codec settings")
}

fn wire(c: &mut Criterion) {
    let records = records();
    let ops = records.len();
    let message = Message::Batch(reference::batch(&records));

    let mut sizes = Vec::new();
    let mut raw_bytes = 0;
    for (name, compression_enabled, level) in SETTINGS {
        let info = codec(compression_enabled, level).encode_into(&message, &mut Vec::new()).unwrap();
        raw_bytes = info.raw_bytes;
        sizes.push(format!("{name} {:.1} B/op", info.frame_bytes as f64 / ops as f64));
    }
    println!(
        "wire: reference batch of {ops} ops, raw MessagePack body {raw_bytes} B ({:.1} B/op); frame: {}",
        raw_bytes as f64 / ops as f64,
        sizes.join(", ")
    );

    for (group_name, throughput) in
        [("wire", Throughput::Bytes(raw_bytes as u64)), ("wire-ops", Throughput::Elements(ops as u64))]
    {
        let mut group = c.benchmark_group(group_name);
        group.throughput(throughput);
        for (name, compression_enabled, level) in SETTINGS {
            let mut codec = codec(compression_enabled, level);
            let mut frame = Vec::new();
            codec.encode_into(&message, &mut frame).unwrap();
            group.bench_function(format!("encode/{name}"), |b| {
                let mut out = Vec::with_capacity(frame.len());
                b.iter(|| {
                    out.clear();
                    codec.encode_into(black_box(&message), &mut out).unwrap()
                })
            });
            group.bench_function(format!("decode/{name}"), |b| {
                b.iter(|| match codec.decode(black_box(&frame)).unwrap() {
                    Decoded::Frame { message, .. } => message,
                    other => panic!("the frame decodes whole: {other:?}"),
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, wire);
criterion_main!(benches);
