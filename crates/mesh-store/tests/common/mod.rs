//! Helpers shared by the store tests: ops and commits shaped like the engine's.
#![allow(dead_code)]

use mesh_core::{DcId, Dot, Hlc, Key, KeyState, Keyspace, Op, OpKind, ValueKind, VersionVector};
use mesh_store::CommitBatch;

pub fn dc(s: &str) -> DcId {
    DcId::new(s).unwrap()
}

/// The value written for `key`: 100 bytes derived from the key, so a reader can check it.
pub fn value_for(key: &str) -> Vec<u8> {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in key.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    (0..100).map(|i| (h.rotate_left(i % 64) as u8) ^ (i as u8)).collect()
}

/// A put of `value_for(key)` by `origin` at `seq`, and the commit the engine would make of it:
/// the log entry, the key's new state and the advanced `seen`.
pub fn put_commit(origin: &str, seq: u64, key: &str) -> CommitBatch {
    let op = Op {
        dot: Dot::new(dc(origin), seq),
        hlc: Hlc::new(1_700_000_000_000 + seq, 0),
        keyspace: Keyspace::new("users").unwrap(),
        key: Key::new(key).unwrap(),
        kind: OpKind::Put(value_for(key)),
        context: VersionVector::new(),
    };
    let mut state = KeyState::new(ValueKind::Register);
    state.apply(&op).unwrap();
    let mut seen = VersionVector::new();
    seen.observe(&op.dot);
    CommitBatch {
        states: vec![(op.keyspace.clone(), op.key.clone(), Some(state))],
        ops: vec![op],
        seen,
        acked: vec![],
    }
}

/// Checks that `key` is present in `store` with the value `value_for(key)` written by
/// `origin` at `seq`, and that the log and `seen` hold the op.
pub fn assert_durable(store: &dyn mesh_store::Store, origin: &str, seq: u64, key: &str) {
    let state = store
        .get(&Keyspace::new("users").unwrap(), &Key::new(key).unwrap())
        .unwrap()
        .unwrap_or_else(|| panic!("acknowledged write {origin}:{seq} of {key} is missing"));
    let versions = state.versions();
    assert_eq!(versions.len(), 1, "{key}");
    assert_eq!(versions[0].dot, Dot::new(dc(origin), seq), "{key}");
    assert_eq!(
        versions[0].value.as_ref().map(|v| v.as_slice()),
        Some(value_for(key).as_slice()),
        "{key}: value damaged"
    );
    let log = store.read_log(&dc(origin), seq - 1, 1, usize::MAX).unwrap();
    assert_eq!(log.first().map(|op| op.dot.seq), Some(seq), "{key}: log entry missing");
    assert!(store.seen().unwrap().get(&dc(origin)) >= seq, "{key}: seen does not cover it");
}

/// Checks that `key`'s state is present with its value (whatever the log holds).
pub fn assert_durable_state_only(store: &dyn mesh_store::Store, key: &str) {
    let state = store.get(&Keyspace::new("users").unwrap(), &Key::new(key).unwrap()).unwrap().unwrap();
    assert_eq!(state.versions()[0].value.as_ref().map(|v| v.as_slice()), Some(value_for(key).as_slice()));
}
