//! Behaviour every Store implementation shares (run against the durable redb store and the
//! in-memory one), plus each implementation's own guarantees: group commit shares fsyncs, the
//! in-memory store's crash keeps a prefix of unsynced commits.

mod common;

use common::{dc, put_commit, value_for};
use mesh_core::{Key, Keyspace, VersionVector};
use mesh_store::testing::PowerLossDisk;
use mesh_store::{
    CommitBatch, DurableStore, LogCursor, LogRead, MemStore, Options, Store, StoreError, StoreIdentity,
};
use std::sync::{Arc, Barrier};

fn users() -> Keyspace {
    Keyspace::new("users").unwrap()
}

/// Runs `test` against the durable store (with its default checkpoints, and with a checkpoint
/// every few keys so that reads meet both checkpointed and overlay states) and the memory store.
fn both(test: impl Fn(&dyn Store)) {
    let dir = tempfile::tempdir().unwrap();
    test(&DurableStore::open(dir.path().join("db.redb")).unwrap());
    test(&DurableStore::open_with(dir.path().join("small.redb"), tiny_checkpoints()).unwrap());
    test(&MemStore::new());
}

fn tiny_checkpoints() -> Options {
    Options {
        checkpoint_keys_max: 3,
        checkpoint_wal_bytes_max: 4096,
        checkpoint_slice_keys: 2,
        key_filter_items_min: 2,
        ..Options::default()
    }
}

#[test]
fn a_commit_is_readable_with_its_log_entry_and_vector() {
    both(|store| {
        store.commit(put_commit("us-east", 1, "user:1")).unwrap();
        common::assert_durable(store, "us-east", 1, "user:1");
        assert_eq!(store.get(&users(), &Key::new("user:2").unwrap()).unwrap(), None);
        assert_eq!(store.seen().unwrap(), [(dc("us-east"), 1)].into_iter().collect());
    });
}

#[test]
fn a_cursor_reads_one_origin_in_seq_order_in_bounded_pages() {
    both(|store| {
        for seq in 1..=25 {
            store.commit(put_commit("us-east", seq, &format!("user:{seq}"))).unwrap();
            store.commit(put_commit("eu-central", seq, &format!("eu:{seq}"))).unwrap();
        }
        let mut cursor = LogCursor::new(dc("us-east"), 3);
        let mut seqs = Vec::new();
        loop {
            let page = cursor.next_page(store, 10, usize::MAX).unwrap();
            if page.is_empty() {
                break;
            }
            assert!(page.len() <= 10);
            seqs.extend(page.iter().map(|op| op.dot.seq));
        }
        assert_eq!(seqs, (4..=25).collect::<Vec<_>>());
        // The byte bound stops a page early but always returns at least one op.
        assert_eq!(store.read_log(&dc("us-east"), 0, 100, 1).unwrap().len(), 1);
        assert_eq!(store.read_log(&dc("us-west"), 0, 100, usize::MAX).unwrap(), vec![]);
        assert_eq!(store.log_first_seq(&dc("eu-central")).unwrap(), Some(1));
    });
}

#[test]
fn acked_vectors_persist_and_only_move_forward() {
    both(|store| {
        let ahead: VersionVector = [(dc("us-east"), 9)].into_iter().collect();
        let behind: VersionVector = [(dc("us-east"), 4), (dc("us-west"), 2)].into_iter().collect();
        store.commit(CommitBatch { acked: vec![(dc("us-west"), ahead)], ..Default::default() }).unwrap();
        store.commit(CommitBatch { acked: vec![(dc("us-west"), behind)], ..Default::default() }).unwrap();
        let expected: VersionVector = [(dc("us-east"), 9), (dc("us-west"), 2)].into_iter().collect();
        assert_eq!(store.acked(&dc("us-west")).unwrap(), expected);
        assert_eq!(store.acked(&dc("eu-central")).unwrap(), VersionVector::new());
    });
}

#[test]
fn a_set_add_writes_the_add_not_the_set_and_a_reopen_rebuilds_the_set_from_the_ops() {
    // Issue 9, fault 4: every set add wrote the whole set (~11 KB per add on a big set).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let never =
        Options { checkpoint_keys_max: usize::MAX, checkpoint_wal_bytes_max: u64::MAX, ..Options::default() };
    let (tags, key) = (Keyspace::new("tags").unwrap(), Key::new("big").unwrap());
    let mut state = mesh_core::KeyState::new(mesh_core::ValueKind::Set);
    {
        let store = DurableStore::open_with(&path, never).unwrap();
        for seq in 1..=2_000u64 {
            let op = mesh_core::Op {
                dot: mesh_core::Dot::new(dc("us-east"), seq),
                hlc: mesh_core::Hlc::new(seq, 0),
                keyspace: tags.clone(),
                key: key.clone(),
                kind: mesh_core::OpKind::SetAdd(vec![serde_bytes::ByteBuf::from(
                    format!("member-{seq:05}").into_bytes(),
                )]),
                context: VersionVector::new(),
            };
            state.apply(&op).unwrap();
            let mut seen = VersionVector::new();
            seen.observe(&op.dot);
            // Halfway, one whole state (as a merge or a collection would write), then ops again.
            let from_ops = seq != 1_000;
            store
                .commit(CommitBatch {
                    ops: vec![op],
                    states: vec![(tags.clone(), key.clone(), Some(state.clone()))],
                    states_from_ops: vec![from_ops],
                    seen,
                    ..Default::default()
                })
                .unwrap();
        }
    }
    let store = DurableStore::open_with(&path, never).unwrap();
    let r = store.recovered();
    assert_eq!(r.wal_groups, 2_000, "nothing was checkpointed: every group is replayed");
    let per_add = (r.wal_bytes - r.wal_bytes.min(40_000)) / 2_000;
    assert!(
        per_add < 200,
        "{} write-ahead bytes for 2,000 adds ({per_add} per add beyond the one whole set)",
        r.wal_bytes
    );
    assert_eq!(store.get(&tags, &key).unwrap(), Some(state), "replaying the adds rebuilt the set");
}

#[test]
fn the_identity_record_starts_empty_and_the_last_batch_carrying_one_wins() {
    both(|store| {
        assert_eq!(store.identity().unwrap(), None, "a new store has no identity");
        let first = StoreIdentity { topology_fingerprint: 7, settled: false };
        store.commit(CommitBatch { identity: Some(first), ..Default::default() }).unwrap();
        store.commit(put_commit("us-east", 1, "user:1")).unwrap();
        assert_eq!(store.identity().unwrap(), Some(first), "a batch without one leaves it");
        let settled = StoreIdentity { settled: true, ..first };
        store.commit(CommitBatch { identity: Some(settled), ..Default::default() }).unwrap();
        assert_eq!(store.identity().unwrap(), Some(settled));
    });
}

#[test]
fn the_identity_record_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let identity = StoreIdentity { topology_fingerprint: 42, settled: true };
    DurableStore::open(&path)
        .unwrap()
        .commit(CommitBatch { identity: Some(identity), ..Default::default() })
        .unwrap();
    assert_eq!(DurableStore::open(&path).unwrap().identity().unwrap(), Some(identity));
}

#[test]
fn compaction_removes_exactly_the_covered_log_entries_and_keeps_the_stats_true() {
    both(|store| {
        for seq in 1..=10 {
            store.commit(put_commit("us-east", seq, &format!("user:{seq}"))).unwrap();
        }
        let before = store.log_stats().unwrap();
        assert_eq!(before.ops, 10);
        let removed = store.compact_log(&[(dc("us-east"), 6)].into_iter().collect()).unwrap();
        assert_eq!(removed, 6);
        assert_eq!(store.log_first_seq(&dc("us-east")).unwrap(), Some(7));
        let after = store.log_stats().unwrap();
        assert_eq!(after.ops, 4);
        assert!(after.bytes < before.bytes && after.bytes > 0);
        // Key states are not part of the log: compaction leaves them.
        common::assert_durable_state_only(store, "user:1");
    });
}

#[test]
fn the_key_count_follows_new_rewritten_and_removed_keys_across_checkpoints() {
    both(|store| {
        assert_eq!(store.key_count().unwrap(), 0);
        for seq in 1..=7 {
            store.commit(put_commit("us-east", seq, &format!("user:{seq}"))).unwrap();
        }
        // Rewrites of keys already held count once.
        store.commit(put_commit("us-east", 8, "user:1")).unwrap();
        store.commit(put_commit("us-east", 9, "user:7")).unwrap();
        assert_eq!(store.key_count().unwrap(), 7);
        for gone in ["user:1", "user:6", "user:nobody"] {
            let mut remove = CommitBatch::default();
            remove.states.push((users(), Key::new(gone).unwrap(), None));
            store.commit(remove).unwrap();
        }
        assert_eq!(store.key_count().unwrap(), 5);
        assert_eq!(store.tombstones_held().unwrap(), 0, "puts hold no tombstone");
    });
}

#[test]
fn a_snapshot_is_a_consistent_cut_that_later_commits_do_not_change() {
    both(|store| {
        for seq in 1..=7 {
            store.commit(put_commit("us-east", seq, &format!("user:{seq}"))).unwrap();
        }
        let snap = store.snapshot().unwrap();
        store.commit(put_commit("us-east", 8, "user:8")).unwrap();
        let mut remove = CommitBatch::default();
        remove.states.push((users(), Key::new("user:1").unwrap(), None));
        store.commit(remove).unwrap();
        assert_eq!(snap.vector(), &[(dc("us-east"), 7)].into_iter().collect());
        let mut keys = Vec::new();
        let mut after = None;
        loop {
            let chunk = snap.chunk(after.as_ref(), 3).unwrap();
            if chunk.is_empty() {
                break;
            }
            assert!(chunk.len() <= 3);
            for (ks, k, state) in &chunk {
                assert_eq!(
                    state.versions()[0].value.as_ref().map(|v| v.as_slice()),
                    Some(value_for(k.as_str()).as_slice())
                );
                keys.push(k.to_string());
                after = Some((ks.clone(), k.clone()));
            }
        }
        assert_eq!(keys, (1..=7).map(|i| format!("user:{i}")).collect::<Vec<_>>());
        assert_eq!(store.get(&users(), &Key::new("user:1").unwrap()).unwrap(), None, "removed after the cut");
    });
}

#[test]
fn concurrent_submitters_share_fsyncs() {
    let disk = PowerLossDisk::from_image(Vec::new());
    let switch = disk.switch();
    let store = Arc::new(
        DurableStore::open_with_backends(disk, PowerLossDisk::from_image(Vec::new()), Options::default())
            .unwrap(),
    );
    let syncs_before = switch.syncs();
    let writers = 16;
    let per_writer = 50;
    let barrier = Arc::new(Barrier::new(writers));
    let seq = Arc::new(std::sync::Mutex::new(0u64));
    let threads: Vec<_> = (0..writers)
        .map(|_| {
            let (store, barrier, seq) = (store.clone(), barrier.clone(), seq.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for _ in 0..per_writer {
                    let (tx, rx) = std::sync::mpsc::channel();
                    {
                        let mut s = seq.lock().unwrap();
                        *s += 1;
                        let done = Box::new(move |r| tx.send(r).unwrap());
                        store.submit(put_commit("us-east", *s, &format!("user:{s}")), done);
                    }
                    rx.recv().unwrap().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let commits = (writers * per_writer) as u64;
    let syncs = switch.syncs() - syncs_before;
    assert_eq!(store.seen().unwrap().get(&dc("us-east")), commits);
    assert!(
        syncs < commits / 2,
        "{syncs} fsyncs for {commits} concurrent commits: group commit is not grouping"
    );
}

#[test]
fn a_mem_store_crash_keeps_synced_commits_and_a_prefix_of_the_rest() {
    let store = MemStore::new();
    store.stage(put_commit("us-east", 1, "user:1"));
    store.sync();
    for seq in 2..=5 {
        store.stage(put_commit("us-east", seq, &format!("user:{seq}")));
    }
    assert_eq!(store.unsynced(), 4);
    assert_eq!(store.get(&users(), &Key::new("user:2").unwrap()).unwrap(), None, "unsynced is not visible");
    assert_eq!(store.crash(2), 2);
    assert_eq!(store.unsynced(), 0);
    assert_eq!(store.seen().unwrap().get(&dc("us-east")), 3);
    for seq in 1..=3 {
        common::assert_durable(&store, "us-east", seq, &format!("user:{seq}"));
    }
    for seq in 4..=5 {
        assert_eq!(store.get(&users(), &Key::new(format!("user:{seq}")).unwrap()).unwrap(), None);
    }
}

#[test]
fn a_large_batch_reads_back_from_any_seq_and_a_duplicate_delivery_changes_nothing() {
    both(|store| {
        let mut batch = CommitBatch::default();
        for seq in 1..=2_500 {
            let one = put_commit("us-east", seq, &format!("user:{seq}"));
            batch.ops.extend(one.ops);
            batch.states.extend(one.states);
            batch.seen.join(&one.seen);
        }
        let duplicate = CommitBatch { ops: batch.ops[1_000..1_200].to_vec(), ..Default::default() };
        store.commit(batch).unwrap();
        let stats = store.log_stats().unwrap();
        store.commit(duplicate).unwrap();
        assert_eq!(store.log_stats().unwrap(), stats, "re-logging ops changes nothing");
        assert_eq!(stats.ops, 2_500);
        for after in [0u64, 1, 1_023, 1_024, 1_025, 2_047, 2_499] {
            let page = store.read_log(&dc("us-east"), after, 5, usize::MAX).unwrap();
            let seqs: Vec<u64> = page.iter().map(|op| op.dot.seq).collect();
            let expected: Vec<u64> = (after + 1..=(after + 5).min(2_500)).collect();
            assert_eq!(seqs, expected, "after {after}");
        }
        assert_eq!(store.read_log(&dc("us-east"), 2_500, 5, usize::MAX).unwrap(), vec![]);
        // Compaction removes what it covers, whole chunks at a time, and never more.
        let removed = store.compact_log(&[(dc("us-east"), 2_000)].into_iter().collect()).unwrap();
        assert!((1_000..=2_000).contains(&removed), "removed {removed}");
        let first = store.log_first_seq(&dc("us-east")).unwrap().unwrap();
        assert_eq!(first, removed + 1);
        assert_eq!(store.log_stats().unwrap().ops, 2_500 - removed);
        let rest = store.read_log(&dc("us-east"), first - 1, usize::MAX, usize::MAX).unwrap();
        assert_eq!(rest.first().map(|op| op.dot.seq), Some(first));
        assert_eq!(rest.len() as u64, 2_500 - removed);
        // Reading from below the retained log says so, rather than skipping ahead.
        let err = store.read_log(&dc("us-east"), 0, 10, usize::MAX).unwrap_err();
        let expected = StoreError::Compacted { origin: dc("us-east"), after_seq: 0, next_seq: Some(first) };
        assert_eq!(err, expected);
        // A late duplicate of a compacted op is not logged again.
        store
            .commit(CommitBatch {
                ops: vec![put_commit("us-east", 5, "user:5").ops[0].clone()],
                ..Default::default()
            })
            .unwrap();
        assert_eq!(store.log_first_seq(&dc("us-east")).unwrap(), Some(first));
        assert_eq!(store.log_stats().unwrap().ops, 2_500 - removed);
    });
}

#[test]
fn reopening_replays_states_written_since_the_last_checkpoint() {
    for options in [Options::default(), tiny_checkpoints()] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        {
            let store = DurableStore::open_with(&path, options).unwrap();
            for seq in 1..=20 {
                store.commit(put_commit("us-east", seq, &format!("user:{}", seq % 7))).unwrap();
            }
            let mut remove = CommitBatch::default();
            remove.states.push((users(), Key::new("user:3").unwrap(), None));
            store.commit(remove).unwrap();
        }
        let store = DurableStore::open_with(&path, options).unwrap();
        for k in 0..7u64 {
            let key = format!("user:{k}");
            let state = store.get(&users(), &Key::new(key.as_str()).unwrap()).unwrap();
            if k == 3 {
                assert_eq!(state, None, "a removal survives the reopen");
                continue;
            }
            // The latest write of each key is the one with the highest seq ≡ k (mod 7).
            let seq = (1..=20).rev().find(|s| s % 7 == k).unwrap();
            let state = state.unwrap_or_else(|| panic!("{key} lost across reopen with {options:?}"));
            assert_eq!(state.versions()[0].dot.seq, seq, "{key} with {options:?}");
        }
        let snap = store.snapshot().unwrap();
        let keys: Vec<String> =
            snap.chunk(None, 100).unwrap().into_iter().map(|(_, k, _)| k.to_string()).collect();
        assert_eq!(keys, ["user:0", "user:1", "user:2", "user:4", "user:5", "user:6"]);
    }
}

#[test]
fn after_a_failed_commit_the_store_refuses_everything_until_reopened() {
    let disk = PowerLossDisk::from_image(Vec::new());
    let switch = disk.switch();
    let kv_disk = PowerLossDisk::from_image(Vec::new());
    let kv_switch = kv_disk.switch();
    let store = DurableStore::open_with_backends(disk, kv_disk, Options::default()).unwrap();
    store.commit(put_commit("us-east", 1, "user:1")).unwrap();
    let (image, kv_image) = (switch.cut(0), kv_switch.cut(0));
    let err = store.commit(put_commit("us-east", 2, "user:2")).unwrap_err();
    assert!(matches!(err, StoreError::OutcomeUnknown(_)), "{err:?}");
    assert_eq!(store.commit(put_commit("us-east", 3, "user:3")).unwrap_err(), StoreError::Poisoned);
    assert_eq!(store.get(&users(), &Key::new("user:1").unwrap()).unwrap_err(), StoreError::Poisoned);
    assert_eq!(store.seen().unwrap_err(), StoreError::Poisoned);
    assert!(
        matches!(store.snapshot(), Err(StoreError::Poisoned)),
        "a snapshot fails instead of waiting forever"
    );
    drop(store);
    let store = DurableStore::open_with_backends(
        PowerLossDisk::from_image(image),
        PowerLossDisk::from_image(kv_image),
        Options::default(),
    )
    .unwrap();
    common::assert_durable(&store, "us-east", 1, "user:1");
}

#[test]
fn snapshots_and_reads_during_commits_and_checkpoints_are_consistent_cuts() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(DurableStore::open_with(dir.path().join("db.redb"), tiny_checkpoints()).unwrap());
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            for seq in 1..=300 {
                store.commit(put_commit("us-east", seq, &format!("user:{seq}"))).unwrap();
            }
        })
    };
    let mut cuts = 0;
    while !writer.is_finished() {
        // Every key k ≤ the snapshot's vector is in the snapshot, and no key beyond it.
        let snap = store.snapshot().unwrap();
        let upto = snap.vector().get(&dc("us-east"));
        let keys = snap.chunk(None, 10_000).unwrap();
        assert_eq!(keys.len() as u64, upto, "snapshot at {upto} holds {} keys", keys.len());
        for (_, k, state) in &keys {
            let seq: u64 = k.as_str()["user:".len()..].parse().unwrap();
            assert!(seq <= upto);
            assert_eq!(state.versions()[0].dot.seq, seq);
        }
        // A read never shows a key beyond what `seen` covers afterwards.
        if upto > 0 {
            assert!(store.get(&users(), &Key::new(format!("user:{upto}")).unwrap()).unwrap().is_some());
        }
        cuts += 1;
    }
    writer.join().unwrap();
    assert!(cuts > 1, "the test took only {cuts} snapshot while writing");
}

#[test]
fn idempotency_records_survive_a_reopen_and_expire_after_the_window() {
    use mesh_store::IdempotencyRecord;
    let record = |key: &str, wall_ms| IdempotencyRecord {
        key: key.into(),
        dot: mesh_core::Dot::new(dc("us-east"), wall_ms),
        fingerprint: 7,
        wall_ms,
    };
    both(|store| {
        store.commit(CommitBatch { idempotency: vec![record("old", 1_000)], ..Default::default() }).unwrap();
        store
            .commit(CommitBatch { idempotency: vec![record("new", 700_000)], ..Default::default() })
            .unwrap();
        assert_eq!(store.idempotency_records(100_000).unwrap(), [record("new", 700_000)]);
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    {
        let store = DurableStore::open(&path).unwrap();
        store.commit(CommitBatch { idempotency: vec![record("old", 1_000)], ..Default::default() }).unwrap();
        store
            .commit(CommitBatch { idempotency: vec![record("new", 700_000)], ..Default::default() })
            .unwrap();
    }
    let store = DurableStore::open(&path).unwrap();
    assert_eq!(store.idempotency_records(0).unwrap(), [record("new", 700_000)], "the old one expired");
}

#[test]
fn a_store_of_another_format_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    {
        let store = DurableStore::open(&path).unwrap();
        store.commit(put_commit("us-east", 1, "user:1")).unwrap();
    }
    // As a store written before the format was recorded: a log, and no format entry.
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let meta: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
            txn.open_table(meta).unwrap().remove("format").unwrap();
        }
        txn.commit().unwrap();
    }
    match DurableStore::open(&path) {
        Err(StoreError::Corrupt { what: "store format", detail }) => {
            assert!(detail.contains("format 0"), "{detail}")
        }
        other => panic!("expected a format error, got {other:?}"),
    }
    // An empty store of no recorded format opens (and is stamped).
    let empty = dir.path().join("empty.redb");
    drop(redb::Database::create(&empty).unwrap());
    DurableStore::open(&empty).unwrap();
    DurableStore::open(&empty).unwrap();
}

/// The commit of a delete of `users/key` by us-east at `seq`: the key's state is a tombstone.
fn delete_commit(seq: u64, key: &str) -> CommitBatch {
    let mut batch = put_commit("us-east", seq, key);
    batch.ops[0].kind = mesh_core::OpKind::Delete;
    let mut state = mesh_core::KeyState::new(mesh_core::ValueKind::Register);
    state.apply(&batch.ops[0]).unwrap();
    assert!(state.has_tombstones());
    batch.states[0].2 = Some(state);
    batch
}

/// Tombstone GC's walk over `store` in pages of `max`: every key it returns, and the pages taken.
fn walk_tombstoned(store: &dyn Store, max: usize) -> (Vec<String>, usize) {
    let (mut keys, mut pages, mut after) = (Vec::new(), 0, None);
    loop {
        let scan = store.scan_tombstoned(after.as_ref(), max).unwrap();
        pages += 1;
        assert!(scan.keys.len() <= max, "a page holds at most {max} keys");
        keys.extend(scan.keys.iter().map(|(_, k)| k.to_string()));
        match scan.last {
            Some(last) => after = Some(last),
            None => return (keys, pages),
        }
    }
}

#[test]
fn tombstone_gcs_walk_visits_only_keys_holding_tombstones_however_many_keys_there_are() {
    // fault5: the walk examined every key, `max` a round, so with many keys a DC reached a stable
    // tombstone only once per walk over all of them, and DCs ended with different tombstones.
    both(|store| {
        let mut seq = 0;
        for i in 0..200 {
            seq += 1;
            store.commit(put_commit("us-east", seq, &format!("user:{i:03}"))).unwrap();
        }
        for key in ["user:050", "user:199", "zz"] {
            seq += 1;
            store.commit(delete_commit(seq, key)).unwrap();
        }
        // One page finds every tombstoned key, wherever it sorts among the others.
        assert_eq!(walk_tombstoned(store, 10), (vec!["user:050".into(), "user:199".into(), "zz".into()], 1));
        assert_eq!(store.tombstones_held().unwrap(), 3);
        // Pages as small as one key: one per tombstoned key, and the last one says so.
        assert_eq!(walk_tombstoned(store, 1).1, 4);
        // A key written live again, or removed (collected), leaves the walk.
        seq += 1;
        store.commit(put_commit("us-east", seq, "user:050")).unwrap();
        let mut remove = CommitBatch::default();
        remove.states.push((users(), Key::new("zz").unwrap(), None));
        store.commit(remove).unwrap();
        assert_eq!(walk_tombstoned(store, 10).0, ["user:199"]);
        assert_eq!(store.tombstones_held().unwrap(), 1, "what the walk finds is what is held");
    });
}

#[test]
fn the_tombstone_index_survives_checkpoints_and_reopens_and_is_built_for_an_older_store() {
    // A DC that restarts finds the tombstones it held before (a list kept in memory would be
    // lost); a store written before the index existed gets it on its first open.
    for options in [Options::default(), tiny_checkpoints()] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        {
            let store = DurableStore::open_with(&path, options).unwrap();
            for seq in 1..=20 {
                store.commit(put_commit("us-east", seq, &format!("user:{seq:02}"))).unwrap();
            }
            store.commit(delete_commit(21, "user:07")).unwrap();
            store.commit(delete_commit(22, "user:13")).unwrap();
            store.commit(put_commit("us-east", 23, "user:13")).unwrap();
        }
        let store = DurableStore::open_with(&path, options).unwrap();
        assert_eq!(walk_tombstoned(&store, 10).0, ["user:07"], "{options:?}");
        drop(store);
        // As a store written before the index: no index entries, no `tombstoned_indexed` mark.
        {
            let db = redb::Database::open(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let meta: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
                txn.open_table(meta).unwrap().remove("tombstoned_indexed").unwrap();
                let index: redb::TableDefinition<(&str, &str), ()> = redb::TableDefinition::new("tombstoned");
                txn.delete_table(index).unwrap();
            }
            txn.commit().unwrap();
        }
        let store = DurableStore::open_with(&path, options).unwrap();
        assert_eq!(walk_tombstoned(&store, 10).0, ["user:07"], "rebuilt with {options:?}");
        assert_eq!(store.tombstones_held().unwrap(), 1, "{options:?}");
        // A checkpointed tombstone overwritten live, and a new one, held in memory or not.
        store.commit(put_commit("us-east", 24, "user:07")).unwrap();
        assert_eq!(store.tombstones_held().unwrap(), 0, "{options:?}");
        store.commit(delete_commit(25, "user:01")).unwrap();
        assert_eq!(store.tombstones_held().unwrap(), 1, "{options:?}");
        assert_eq!(walk_tombstoned(&store, 10).0, ["user:01"], "{options:?}");
        store.commit(delete_commit(26, "user:07")).unwrap();
        assert_eq!(walk_tombstoned(&store, 10).0, ["user:01", "user:07"], "{options:?}");
        assert_eq!(store.tombstones_held().unwrap(), 2, "{options:?}");
        drop(store);
        let store = DurableStore::open_with(&path, options).unwrap();
        assert_eq!(store.tombstones_held().unwrap(), 2, "{options:?}");
        store.commit(put_commit("us-east", 27, "user:07")).unwrap();
        store.commit(put_commit("us-east", 28, "user:01")).unwrap();
        assert_eq!(store.tombstones_held().unwrap(), 0, "{options:?}");
        assert_eq!(walk_tombstoned(&store, 10).0, Vec::<String>::new(), "{options:?}");
        drop(store);
    }
}

/// A disk whose next sync, once armed, hangs for a while: a stalled disk, or a process paused
/// (SIGSTOP, a frozen VM) in the middle of a sync.
#[derive(Debug)]
struct StallingDisk {
    inner: PowerLossDisk,
    stall: Arc<std::sync::Mutex<Option<std::time::Duration>>>,
}

impl redb::StorageBackend for StallingDisk {
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        let stall = self.stall.lock().unwrap().take();
        if let Some(time) = stall {
            std::thread::sleep(time);
        }
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.inner.write(offset, data)
    }
}

#[test]
fn a_checkpoint_slice_that_stalled_is_not_followed_by_as_long_a_rest_that_writers_wait_for() {
    // The checkpointer rests between slices as long as the slice took. A slice whose sync hung
    // for 3 s (after a 60 s SIGSTOP, 60 s) was followed by a rest as long, uninterrupted, and
    // once the writes resumed and filled a second checkpoint's worth of keys, every commit
    // waited for it: a DC coming back from a partition applied nothing for a minute.
    let stall = Arc::new(std::sync::Mutex::new(None));
    let kv_disk = StallingDisk { inner: PowerLossDisk::from_image(Vec::new()), stall: stall.clone() };
    let options = Options {
        checkpoint_keys_max: 256,
        checkpoint_wal_bytes_max: u64::MAX,
        checkpoint_slice_keys: 16,
        ..Options::default()
    };
    let store =
        DurableStore::open_with_backends(PowerLossDisk::from_image(Vec::new()), kv_disk, options).unwrap();
    let hang = std::time::Duration::from_secs(3);
    *stall.lock().unwrap() = Some(hang);
    let mut seq = 0;
    let mut write = |keys: u64| {
        for _ in 0..keys {
            seq += 1;
            store.commit(put_commit("us-east", seq, &format!("user:{seq}"))).unwrap();
        }
    };
    // A checkpoint's worth of keys: the checkpoint starts, and its first slice's sync hangs.
    // One more write tells the checkpointer the next checkpoint is far from due.
    write(256 + 1);
    std::thread::sleep(hang + std::time::Duration::from_millis(300));
    assert_eq!(stall.lock().unwrap().take(), None, "the checkpoint's sync hung");
    // The writes resume: two checkpoints' worth of keys, so the committer waits for this one
    // (after the group that filled them: the next commit is the one that waits).
    let started = std::time::Instant::now();
    write(512 + 1);
    let took = started.elapsed();
    let waited = store.checkpoint_stats().waited_micros;
    assert!(waited < 1_000_000, "commits waited {waited} µs for a checkpoint that had stalled for 3 s");
    assert!(took < std::time::Duration::from_secs(1), "513 commits took {took:?}");
}
