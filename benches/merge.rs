//! Merge throughput per strategy: applying replicated ops to key states and reading the
//! resolved value, as a DC's resolver does for every op it receives.
//!
//! The workload: 10,000 ops from three origins over 1,000 keys; three writes in four carry the
//! key's current context (they supersede), one in four carries none (it is concurrent), so keys
//! hold a few concurrent versions at a time. Register values are 100 bytes.
//!
//! Run: `cargo bench --bench merge`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mesh_core::{
    builtin_resolvers, DcId, Dot, Hlc, Key, KeyState, Keyspace, KeyspaceRules, Op, OpKind, Strategy,
    VersionVector,
};
use serde_bytes::ByteBuf;
use std::collections::BTreeMap;
use std::sync::Arc;

const OPS: usize = 10_000;
const KEYS: usize = 1_000;

fn workload(strategy: &Strategy) -> Vec<Op> {
    let origins: Vec<DcId> =
        ["us-east", "us-west", "eu-central"].iter().map(|s| DcId::new(*s).unwrap()).collect();
    let keyspace = Keyspace::new("bench").unwrap();
    let keys: Vec<Key> = (0..KEYS).map(|i| Key::new(format!("user:{i}")).unwrap()).collect();
    let mut states: BTreeMap<usize, KeyState> = BTreeMap::new();
    let mut seqs = [0u64; 3];
    let mut ops = Vec::with_capacity(OPS);
    for i in 0..OPS {
        let o = i % 3;
        seqs[o] += 1;
        let k = (i * 7919) % KEYS;
        let state = states.entry(k).or_insert_with(|| KeyState::new(strategy.value_kind()));
        let kind = match strategy {
            Strategy::Counter => OpKind::CounterAdd(if i % 5 == 0 { -3 } else { 1 }),
            Strategy::Set if i % 3 == 0 => OpKind::SetRemove(vec![ByteBuf::from(format!("m{}", i % 7))]),
            Strategy::Set => OpKind::SetAdd(vec![ByteBuf::from(format!("m{}", i % 7))]),
            _ => OpKind::Put(vec![(i % 251) as u8; 100]),
        };
        let context = match kind {
            OpKind::Put(_) if i % 4 == 3 => VersionVector::new(),
            _ => state.write_context(&kind, None, false, usize::MAX).unwrap(),
        };
        let op = Op {
            dot: Dot::new(origins[o].clone(), seqs[o]),
            hlc: Hlc::new(1_700_000_000_000 + (i as u64 / 10), (i % 10) as u32),
            keyspace: keyspace.clone(),
            key: keys[k].clone(),
            kind,
            context,
        };
        state.apply(&op).unwrap();
        ops.push(op);
    }
    ops
}

fn merge(c: &mut Criterion) {
    let priorities: Arc<BTreeMap<DcId, u32>> = Arc::new(
        [("us-east", 3), ("us-west", 2), ("eu-central", 1)]
            .iter()
            .map(|(d, p)| (DcId::new(*d).unwrap(), *p))
            .collect(),
    );
    let mut g = c.benchmark_group("apply_and_read");
    g.throughput(Throughput::Elements(OPS as u64));
    for name in
        ["lww", "priority", "siblings", "counter", "set", "custom:first-writer-wins", "custom:max-value"]
    {
        let strategy = Strategy::parse(name).unwrap();
        let rules = KeyspaceRules::new(strategy.clone(), priorities.clone(), &builtin_resolvers()).unwrap();
        let ops = workload(&strategy);
        g.bench_with_input(BenchmarkId::from_parameter(name), &ops, |b, ops| {
            b.iter(|| {
                let mut states: BTreeMap<&Key, KeyState> = BTreeMap::new();
                let mut conflicts = 0usize;
                for op in ops {
                    let state = states.entry(&op.key).or_insert_with(|| KeyState::new(strategy.value_kind()));
                    if let mesh_core::Applied::Applied { concurrent } = state.apply(op).unwrap() {
                        conflicts += usize::from(!concurrent.is_empty());
                    }
                    std::hint::black_box(rules.read(state));
                }
                conflicts
            })
        });
    }
    g.finish();

    // State merge, as in state transfer: join two replicas' states of every key.
    let mut g = c.benchmark_group("state_merge");
    g.throughput(Throughput::Elements(KEYS as u64));
    for name in ["lww", "counter", "set"] {
        let strategy = Strategy::parse(name).unwrap();
        let ops = workload(&strategy);
        let mut halves = [BTreeMap::new(), BTreeMap::new()];
        // Two replicas, each partitioned from one origin: one has every op of us-east and
        // us-west, the other every op of us-west and eu-central.
        for op in &ops {
            for (side, lacks) in halves.iter_mut().zip(["eu-central", "us-east"]) {
                if op.dot.origin.as_str() != lacks {
                    let s: &mut KeyState =
                        side.entry(op.key.clone()).or_insert_with(|| KeyState::new(strategy.value_kind()));
                    s.apply(op).unwrap();
                }
            }
        }
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut merged = halves[0].clone();
                for (k, theirs) in &halves[1] {
                    merged
                        .entry(k.clone())
                        .and_modify(|s: &mut KeyState| s.merge(theirs))
                        .or_insert_with(|| theirs.clone());
                }
                merged.len()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, merge);
criterion_main!(benches);
