//! The durable store: redb on a file, with group commit.
//!
//! Every commit is one redb write transaction with `Durability::Immediate`, so it is on disk
//! (fsync) before it reports success.
//!
//! The op log is stored in chunks: each run of consecutive seqs of one origin within a commit
//! (at most [`LOG_CHUNK_OPS_MAX`] ops) is one record keyed by (origin, last seq). One insert per
//! run instead of one per op is what lets batched commits reach hundreds of thousands of ops
//! per second; a reader decodes at most one chunk more than it returns. Submissions go through a bounded queue to one committer
//! thread, which takes everything queued (up to [`GROUP_OPS_MAX`] ops) into a single
//! transaction: concurrent writers share one fsync, and each learns the outcome through its own
//! callback only after that fsync. Submission order is commit order.

use crate::{decode, encode, CommitBatch, CommitDone, LogRead, LogStats, Snapshot, Store, StoreError};
use mesh_core::{DcId, Key, KeyState, Keyspace, Op, VersionVector};
use redb::{
    Database, Durability, ReadOnlyTable, ReadableDatabase, ReadableTable, StorageBackend, TableDefinition,
};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Most ops one group commit takes; a larger group waits for the next transaction.
pub const GROUP_OPS_MAX: usize = 16_384;
/// Most submissions waiting for the committer; submitters block beyond it (backpressure).
const QUEUE_SUBMISSIONS_MAX: usize = 8_192;

/// (keyspace, key) → msgpack KeyState.
const KV: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("kv");
/// (origin, seq of the chunk's last op) → msgpack `Vec<Op>`: consecutive ops of that origin.
const LOG: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("log");
/// Vectors and counters: "seen", "log_last", "acked/<dc>", "log_stats".
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const SEEN: &str = "seen";
/// Per origin, the highest seq in the log; an op at or below it is already logged.
const LOG_LAST: &str = "log_last";
/// Most ops in one log chunk.
pub const LOG_CHUNK_OPS_MAX: usize = 1_024;
const LOG_STATS: &str = "log_stats";
const ACKED_PREFIX: &str = "acked/";

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

struct Submission {
    batch: CommitBatch,
    done: CommitDone,
}

/// redb-backed [`Store`] with group commit. Dropping it finishes the queued commits, then stops
/// the committer.
pub struct DurableStore {
    db: Arc<Database>,
    queue: Option<SyncSender<Submission>>,
    committer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for DurableStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableStore").finish_non_exhaustive()
    }
}

impl DurableStore {
    /// Opens the store at `path`, creating it if missing. After a crash redb recovers to the last
    /// durable commit here.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let db = Database::builder().create(path.as_ref()).map_err(db_err)?;
        Self::start(db)
    }

    /// Opens the store on a custom storage backend (used by the power-loss tests).
    pub fn open_with_backend(backend: impl StorageBackend) -> Result<Self, StoreError> {
        let db = Database::builder().create_with_backend(backend).map_err(db_err)?;
        Self::start(db)
    }

    fn start(db: Database) -> Result<Self, StoreError> {
        // Create the tables up front so that reads never meet a missing table.
        let mut txn = db.begin_write().map_err(db_err)?;
        txn.set_durability(Durability::Immediate).map_err(db_err)?;
        txn.open_table(KV).map_err(db_err)?;
        txn.open_table(LOG).map_err(db_err)?;
        txn.open_table(META).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        let db = Arc::new(db);
        let (queue, rx) = mpsc::sync_channel(QUEUE_SUBMISSIONS_MAX);
        let committer_db = db.clone();
        let committer = std::thread::Builder::new()
            .name("mesh-store-commit".into())
            .spawn(move || run_committer(&committer_db, rx))
            .map_err(db_err)?;
        Ok(Self { db, queue: Some(queue), committer: Some(committer) })
    }

    fn read_meta<T: serde::de::DeserializeOwned + Default>(&self, name: &str) -> Result<T, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let meta = txn.open_table(META).map_err(db_err)?;
        read_meta(&meta, name)
    }
}

impl Drop for DurableStore {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(committer) = self.committer.take() {
            let _ = committer.join();
        }
    }
}

fn read_meta<T: serde::de::DeserializeOwned + Default>(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &str,
) -> Result<T, StoreError> {
    match meta.get(name).map_err(db_err)? {
        Some(bytes) => decode("metadata", bytes.value()),
        None => Ok(T::default()),
    }
}

fn run_committer(db: &Database, rx: Receiver<Submission>) {
    while let Ok(first) = rx.recv() {
        let mut ops = first.batch.len();
        let mut group = vec![first];
        while ops < GROUP_OPS_MAX {
            match rx.try_recv() {
                Ok(next) => {
                    ops += next.batch.len();
                    group.push(next);
                }
                Err(_) => break,
            }
        }
        let result = write_group(db, group.iter().map(|s| &s.batch));
        for s in group {
            (s.done)(result.clone());
        }
    }
}

/// Writes every batch of the group in one transaction and returns once it is durable.
fn write_group<'a>(db: &Database, group: impl Iterator<Item = &'a CommitBatch>) -> Result<(), StoreError> {
    let mut txn = db.begin_write().map_err(db_err)?;
    txn.set_durability(Durability::Immediate).map_err(db_err)?;
    {
        let mut log = txn.open_table(LOG).map_err(db_err)?;
        let mut kv = txn.open_table(KV).map_err(db_err)?;
        let mut meta = txn.open_table(META).map_err(db_err)?;
        let mut seen: VersionVector = read_meta(&meta, SEEN)?;
        let mut log_last: VersionVector = read_meta(&meta, LOG_LAST)?;
        let (mut log_ops, mut log_bytes): (u64, u64) = read_meta(&meta, LOG_STATS)?;
        let mut acked: BTreeMap<DcId, VersionVector> = BTreeMap::new();
        let mut chunk: Vec<&Op> = Vec::new();
        let mut flush = |chunk: &mut Vec<&Op>| -> Result<(), StoreError> {
            let Some(last) = chunk.last() else { return Ok(()) };
            let bytes = encode(&*chunk);
            log.insert((last.dot.origin.as_str(), last.dot.seq), bytes.as_slice()).map_err(db_err)?;
            log_ops += chunk.len() as u64;
            log_bytes += bytes.len() as u64;
            chunk.clear();
            Ok(())
        };
        for batch in group {
            for op in &batch.ops {
                // Already logged (a duplicate delivery): the log keeps its first copy.
                if log_last.covers(&op.dot) {
                    continue;
                }
                let extends = chunk
                    .last()
                    .is_some_and(|prev| prev.dot.origin == op.dot.origin && prev.dot.seq + 1 == op.dot.seq);
                if !extends || chunk.len() >= LOG_CHUNK_OPS_MAX {
                    flush(&mut chunk)?;
                }
                log_last.observe(&op.dot);
                chunk.push(op);
            }
            for (keyspace, key, state) in &batch.states {
                match state {
                    Some(state) => {
                        kv.insert((keyspace.as_str(), key.as_str()), encode(state).as_slice())
                            .map_err(db_err)?;
                    }
                    None => {
                        kv.remove((keyspace.as_str(), key.as_str())).map_err(db_err)?;
                    }
                }
            }
            seen.join(&batch.seen);
            for (peer, vv) in &batch.acked {
                acked.entry(peer.clone()).or_default().join(vv);
            }
        }
        flush(&mut chunk)?;
        meta.insert(SEEN, encode(&seen).as_slice()).map_err(db_err)?;
        meta.insert(LOG_LAST, encode(&log_last).as_slice()).map_err(db_err)?;
        meta.insert(LOG_STATS, encode(&(log_ops, log_bytes)).as_slice()).map_err(db_err)?;
        for (peer, vv) in acked {
            let name = format!("{ACKED_PREFIX}{peer}");
            let mut stored: VersionVector = read_meta(&meta, &name)?;
            stored.join(&vv);
            meta.insert(name.as_str(), encode(&stored).as_slice()).map_err(db_err)?;
        }
    }
    txn.commit().map_err(db_err)
}

impl LogRead for DurableStore {
    fn seen(&self) -> Result<VersionVector, StoreError> {
        self.read_meta(SEEN)
    }

    fn read_log(
        &self,
        origin: &DcId,
        after_seq: u64,
        ops_max: usize,
        bytes_max: usize,
    ) -> Result<Vec<Op>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let log = txn.open_table(LOG).map_err(db_err)?;
        let o = origin.as_str();
        let mut ops = Vec::new();
        let mut bytes = 0usize;
        // The first chunk whose last seq is past `after_seq` holds the first op to return.
        'chunks: for entry in log.range((o, after_seq.saturating_add(1))..=(o, u64::MAX)).map_err(db_err)? {
            let (_, value) = entry.map_err(db_err)?;
            let chunk: Vec<Op> = decode("log chunk", value.value())?;
            let op_bytes = value.value().len() / chunk.len().max(1);
            for op in chunk.into_iter().filter(|op| op.dot.seq > after_seq) {
                if ops.len() >= ops_max || (!ops.is_empty() && bytes >= bytes_max) {
                    break 'chunks;
                }
                bytes += op_bytes;
                ops.push(op);
            }
        }
        Ok(ops)
    }

    fn log_first_seq(&self, origin: &DcId) -> Result<Option<u64>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let log = txn.open_table(LOG).map_err(db_err)?;
        let o = origin.as_str();
        let first = log.range((o, 0)..=(o, u64::MAX)).map_err(db_err)?.next();
        match first {
            Some(entry) => {
                let chunk: Vec<Op> = decode("log chunk", entry.map_err(db_err)?.1.value())?;
                Ok(chunk.first().map(|op| op.dot.seq))
            }
            None => Ok(None),
        }
    }
}

impl Store for DurableStore {
    fn submit(&self, batch: CommitBatch, done: CommitDone) {
        let Some(queue) = &self.queue else {
            return done(Err(StoreError::Closed));
        };
        if let Err(mpsc::SendError(s)) = queue.send(Submission { batch, done }) {
            (s.done)(Err(StoreError::Closed));
        }
    }

    fn get(&self, keyspace: &Keyspace, key: &Key) -> Result<Option<KeyState>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let kv = txn.open_table(KV).map_err(db_err)?;
        match kv.get((keyspace.as_str(), key.as_str())).map_err(db_err)? {
            Some(bytes) => Ok(Some(decode("key state", bytes.value())?)),
            None => Ok(None),
        }
    }

    fn acked(&self, peer: &DcId) -> Result<VersionVector, StoreError> {
        self.read_meta(&format!("{ACKED_PREFIX}{peer}"))
    }

    fn compact_log(&self, below: &VersionVector) -> Result<u64, StoreError> {
        let mut txn = self.db.begin_write().map_err(db_err)?;
        txn.set_durability(Durability::Immediate).map_err(db_err)?;
        let mut removed = 0u64;
        {
            let mut log = txn.open_table(LOG).map_err(db_err)?;
            let mut meta = txn.open_table(META).map_err(db_err)?;
            let (mut log_ops, mut log_bytes): (u64, u64) = read_meta(&meta, LOG_STATS)?;
            for (origin, upto) in below.iter() {
                let o = origin.as_str();
                // Whole chunks only: a chunk that ends past `upto` stays until it is covered.
                for entry in log.extract_from_if((o, 0)..=(o, upto), |_, _| true).map_err(db_err)? {
                    let (_, value) = entry.map_err(db_err)?;
                    let chunk: Vec<Op> = decode("log chunk", value.value())?;
                    removed += chunk.len() as u64;
                    log_ops -= chunk.len() as u64;
                    log_bytes -= value.value().len() as u64;
                }
            }
            meta.insert(LOG_STATS, encode(&(log_ops, log_bytes)).as_slice()).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(removed)
    }

    fn log_stats(&self) -> Result<LogStats, StoreError> {
        let (ops, bytes): (u64, u64) = self.read_meta(LOG_STATS)?;
        Ok(LogStats { ops, bytes })
    }

    fn snapshot(&self) -> Result<Box<dyn Snapshot>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let meta = txn.open_table(META).map_err(db_err)?;
        let vector = read_meta(&meta, SEEN)?;
        let kv = txn.open_table(KV).map_err(db_err)?;
        Ok(Box::new(DurableSnapshot { vector, kv }))
    }
}

struct DurableSnapshot {
    vector: VersionVector,
    kv: ReadOnlyTable<(&'static str, &'static str), &'static [u8]>,
}

impl Snapshot for DurableSnapshot {
    fn vector(&self) -> &VersionVector {
        &self.vector
    }

    fn chunk(
        &self,
        after: Option<&(Keyspace, Key)>,
        entries_max: usize,
    ) -> Result<Vec<(Keyspace, Key, KeyState)>, StoreError> {
        let start = match after {
            Some((ks, k)) => Bound::Excluded((ks.as_str(), k.as_str())),
            None => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for entry in self.kv.range::<(&str, &str)>((start, Bound::Unbounded)).map_err(db_err)? {
            if out.len() >= entries_max {
                break;
            }
            let (k, v) = entry.map_err(db_err)?;
            let (ks, key) = k.value();
            let corrupt = |e: mesh_core::IdError| StoreError::Corrupt { what: "key", detail: e.to_string() };
            out.push((
                Keyspace::new(ks).map_err(corrupt)?,
                Key::new(key).map_err(corrupt)?,
                decode("key state", v.value())?,
            ));
        }
        Ok(out)
    }
}
