//! Helpers shared by the store tests: ops and commits shaped like the engine's.
#![allow(dead_code)]

use mesh_core::{DcId, Dot, Key, Keyspace};
use mesh_store::CommitBatch;

pub fn dc(s: &str) -> DcId {
    DcId::new(s).unwrap()
}

/// The 100-byte value written for `key`.
pub fn value_for(key: &str) -> Vec<u8> {
    mesh_store::testing::value_for(key, 100)
}

/// A put of `value_for(key)` by `origin` at `seq`, committed as the engine would.
pub fn put_commit(origin: &str, seq: u64, key: &str) -> CommitBatch {
    mesh_store::testing::put_commit(&dc(origin), seq, key, value_for(key))
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

/// The seed of a randomized test `test` in test binary `binary`: `MESH_TEST_SEED` when set,
/// else the clock. Printed with the command that replays it.
pub fn seed(binary: &str, test: &str) -> u64 {
    let seed = std::env::var("MESH_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!(
        "{test}: seed {seed} (replay: MESH_TEST_SEED={seed} cargo test -p mesh-store --test {binary} {test})"
    );
    seed
}
