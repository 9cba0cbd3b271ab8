//! The simulator's MemStore must behave like the production DurableStore, or the simulator
//! proves things about a store we do not ship. Random sequences of commits (several origins,
//! overwrites, removals, duplicate deliveries), compactions and reopens are run against both;
//! after every step, everything both must answer the same is compared.

mod common;

use common::{dc, put_commit};
use mesh_core::{Key, KeyState, Keyspace, OpKind, ValueKind, VersionVector};
use mesh_store::{CommitBatch, DurableStore, LogRead, MemStore, Options, Store, StoreError};
use proptest::prelude::*;

const ORIGINS: [&str; 3] = ["us-east", "us-west", "eu-central"];

#[derive(Debug, Clone)]
enum Step {
    /// `ops` puts of `origin` over a key space of 16 keys, in one commit.
    Commit { origin: usize, ops: usize, key_seed: u8 },
    /// Re-commit `ops` ops of `origin` starting `from_percent` % into its history (a duplicate
    /// delivery, possibly of ops already compacted away).
    Duplicate { origin: usize, from_percent: u8, ops: usize },
    /// A delete of key `key` by `origin`: its state becomes a tombstone.
    Delete { origin: usize, key: u8 },
    /// Remove key `key` (tombstone GC).
    Remove { key: u8 },
    /// Compact `origin`'s log up to `percent` % of what it logged.
    Compact { origin: usize, percent: u8 },
    /// Close and reopen the durable store (replays the write-ahead records).
    Reopen,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0..3usize, 1..40usize, any::<u8>()).prop_map(|(origin, ops, key_seed)| Step::Commit { origin, ops, key_seed }),
        2 => (0..3usize, 0..=100u8, 1..5usize)
            .prop_map(|(origin, from_percent, ops)| Step::Duplicate { origin, from_percent, ops }),
        1 => (0..3usize, 0..16u8).prop_map(|(origin, key)| Step::Delete { origin, key }),
        1 => (0..16u8).prop_map(|key| Step::Remove { key }),
        1 => (0..3usize, 0..=100u8).prop_map(|(origin, percent)| Step::Compact { origin, percent }),
        1 => Just(Step::Reopen),
    ]
}

fn key_name(k: u64) -> String {
    format!("user:{}", k % 16)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn the_memory_store_answers_like_the_durable_store(
        steps in prop::collection::vec(step(), 1..25),
        // No in-memory log tail, one of a few ops (reads straddle it and the chunks), or one
        // holding everything.
        log_tail_bytes_max in prop_oneof![Just(0usize), Just(800), Just(16 << 20)],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        let options = Options {
            checkpoint_keys_max: 5,
            checkpoint_wal_bytes_max: 8 << 10,
            log_tail_bytes_max,
            key_filter_items_min: 4,
            ..Options::default()
        };
        let mut durable = DurableStore::open_with(&path, options).unwrap();
        let mem = MemStore::new();
        let mut logged: [Vec<CommitBatch>; 3] = Default::default();
        let mut compacted = VersionVector::new();
        for s in &steps {
            match *s {
                Step::Commit { origin, ops, key_seed } => {
                    let mut batch = CommitBatch::default();
                    for i in 0..ops {
                        let seq = logged[origin].len() as u64 + 1;
                        let one = put_commit(ORIGINS[origin], seq, &key_name(u64::from(key_seed) + i as u64 * 7));
                        batch.ops.extend(one.ops.clone());
                        batch.states.extend(one.states.clone());
                        batch.seen.join(&one.seen);
                        logged[origin].push(one);
                    }
                    durable.commit(batch.clone()).unwrap();
                    mem.commit(batch).unwrap();
                }
                Step::Duplicate { origin, from_percent, ops } => {
                    let n = logged[origin].len();
                    let from = n * usize::from(from_percent) / 100;
                    let batch = CommitBatch {
                        ops: logged[origin][from..(from + ops).min(n)].iter().flat_map(|b| b.ops.clone()).collect(),
                        ..Default::default()
                    };
                    durable.commit(batch.clone()).unwrap();
                    mem.commit(batch).unwrap();
                }
                Step::Delete { origin, key } => {
                    let seq = logged[origin].len() as u64 + 1;
                    let mut batch = put_commit(ORIGINS[origin], seq, &key_name(u64::from(key)));
                    batch.ops[0].kind = OpKind::Delete;
                    let mut state = KeyState::new(ValueKind::Register);
                    state.apply(&batch.ops[0]).unwrap();
                    batch.states[0].2 = Some(state);
                    logged[origin].push(batch.clone());
                    durable.commit(batch.clone()).unwrap();
                    mem.commit(batch).unwrap();
                }
                Step::Remove { key } => {
                    let k = Key::new(key_name(u64::from(key))).unwrap();
                    let batch = CommitBatch { states: vec![(Keyspace::new("users").unwrap(), k, None)], ..Default::default() };
                    durable.commit(batch.clone()).unwrap();
                    mem.commit(batch).unwrap();
                }
                Step::Compact { origin, percent } => {
                    let upto = logged[origin].len() as u64 * u64::from(percent) / 100;
                    let below: VersionVector = [(dc(ORIGINS[origin]), upto)].into_iter().collect();
                    durable.compact_log(&below).unwrap();
                    mem.compact_log(&below).unwrap();
                    compacted.join(&below);
                }
                Step::Reopen => {
                    drop(durable);
                    durable = DurableStore::open_with(&path, options).unwrap();
                }
            }
            compare(&durable, &mem, &logged, &compacted)?;
        }
    }
}

fn compare(
    durable: &DurableStore,
    mem: &MemStore,
    logged: &[Vec<CommitBatch>; 3],
    compacted: &VersionVector,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(durable.seen().unwrap(), mem.seen().unwrap());
    let users = Keyspace::new("users").unwrap();
    for k in 0..16 {
        let key = Key::new(key_name(k)).unwrap();
        prop_assert_eq!(durable.get(&users, &key).unwrap(), mem.get(&users, &key).unwrap(), "key {}", key);
    }
    for (i, origin) in ORIGINS.iter().enumerate() {
        let origin = dc(origin);
        let n = logged[i].len() as u64;
        // Above what was compacted both logs hold every op: reads must agree exactly. (Below it
        // the durable store may keep whole chunks the memory store dropped op by op.)
        for after in [compacted.get(&origin), (compacted.get(&origin) + n) / 2, n.saturating_sub(1), n] {
            let after = after.max(compacted.get(&origin)).min(n);
            let d = durable.read_log(&origin, after, 7, usize::MAX);
            let m = mem.read_log(&origin, after, 7, usize::MAX);
            prop_assert_eq!(&d, &m, "read_log({}, {})", origin, after);
            if let Ok(ops) = d {
                let expected: Vec<u64> = (after + 1..=n.min(after + 7)).collect();
                prop_assert_eq!(ops.iter().map(|op| op.dot.seq).collect::<Vec<_>>(), expected);
            }
        }
        // Below it the memory store, which compacts op by op, holds nothing: a read there says
        // where the log resumes (or finds nothing when nothing follows).
        let c = compacted.get(&origin);
        for after in [0, c / 2, c.saturating_sub(1)] {
            if after >= c {
                continue;
            }
            let expected = if n > c {
                Err(StoreError::Compacted { origin: origin.clone(), after_seq: after, next_seq: Some(c + 1) })
            } else {
                Ok(vec![])
            };
            prop_assert_eq!(mem.read_log(&origin, after, 1, usize::MAX), expected, "below compaction");
            // The durable store either still holds the op (in a kept chunk) or says the same.
            match durable.read_log(&origin, after, 1, usize::MAX) {
                Ok(ops) => prop_assert!(ops.is_empty() || ops[0].dot.seq == after + 1),
                Err(StoreError::Compacted { next_seq, .. }) => {
                    prop_assert!(next_seq.is_some_and(|s| s > after + 1))
                }
                Err(e) => prop_assert!(false, "{}", e),
            }
        }
    }
    // Tombstone GC's walk, page by page (with its cursor), finds the same keys.
    let (mut d_after, mut m_after) = (None, None);
    loop {
        let d = durable.scan_tombstoned(d_after.as_ref(), 3).unwrap();
        let m = mem.scan_tombstoned(m_after.as_ref(), 3).unwrap();
        prop_assert_eq!(&d.keys, &m.keys);
        prop_assert_eq!(&d.last, &m.last);
        if d.last.is_none() {
            break;
        }
        (d_after, m_after) = (d.last, m.last);
    }
    let (ds, ms) = (durable.snapshot().unwrap(), mem.snapshot().unwrap());
    prop_assert_eq!(ds.vector(), ms.vector());
    prop_assert_eq!(ds.chunk(None, 100).unwrap(), ms.chunk(None, 100).unwrap());
    Ok(())
}
