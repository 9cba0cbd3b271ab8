//! The durable store: redb on a file, with group commit and a write-ahead log of key states.
//!
//! Submissions go through a bounded queue to one committer thread, which takes everything queued
//! (up to [`GROUP_OPS_MAX`] ops) into a single redb write transaction with
//! `Durability::Immediate`: concurrent writers share one fsync, and each learns the outcome
//! through its own callback only after that fsync. Submission order is commit order.
//!
//! What one group commit writes, atomically:
//! - the ops, in the op log: each run of consecutive seqs of one origin (at most
//!   [`LOG_CHUNK_OPS_MAX`] ops) is one zstd-compressed record keyed by (origin, last seq), so a
//!   batched commit costs one insert per run;
//! - the key states, as one compressed write-ahead record keyed by the group's number;
//! - `seen`, the acked vectors and the log statistics.
//!
//! Key states reach their own table (`kv`) later, in a checkpoint: once
//! [`Options::checkpoint_keys_max`] keys or [`Options::checkpoint_wal_bytes_max`] bytes of
//! write-ahead records have accumulated, one transaction writes the latest state of every key
//! touched since the last checkpoint and deletes the write-ahead records it covers. A
//! copy-on-write B-tree pays a page copy for every leaf a transaction touches, so writing states
//! per group costs a leaf per key per commit; checkpointing writes each hot key once and touches
//! each leaf once per checkpoint. Until then the states live in memory (the overlay), which reads
//! consult first; on open the write-ahead records after the last checkpoint are replayed into it.
//! The same checkpoint keeps `tombstoned`, the index of the keys whose state in `kv` holds a
//! tombstone, so tombstone GC's walk visits those keys only, however many keys the store holds.
//! Nothing here changes what is durable when: a group is acknowledged only after the transaction
//! holding its ops, states and vectors is on disk.

use crate::{
    decode, encode, CommitBatch, CommitDone, IdempotencyRecord, LogPage, LogRead, LogStats, Snapshot, Store,
    StoreError, StoreIdentity,
};
use mesh_core::{DcId, Key, KeyState, Keyspace, Op, VersionVector};
use redb::{
    Database, Durability, ReadOnlyTable, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    StorageBackend, TableDefinition,
};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

/// Most ops one group commit takes; a larger group waits for the next transaction.
pub const GROUP_OPS_MAX: usize = 16_384;
/// Most submissions waiting for the committer; submitters block beyond it (backpressure).
const QUEUE_SUBMISSIONS_MAX: usize = 8_192;

/// (keyspace, key) → msgpack KeyState.
const KV: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("kv");

/// The `kv` table as of the last checkpoint: it changes only in checkpoints, so one read
/// transaction serves many reads (reopening it per read cost more than the read); the committer
/// renews it after every group and checkpoint.
type KvReader = Arc<ReadOnlyTable<(&'static str, &'static str), &'static [u8]>>;

fn kv_reader(db: &Database) -> Result<KvReader, StoreError> {
    Ok(Arc::new(db.begin_read().map_err(db_err)?.open_table(KV).map_err(db_err)?))
}
/// (keyspace, key) → (): the keys whose state in `kv` holds a tombstone (tombstone GC's walk).
/// Written with `kv`, in checkpoints.
const TOMBSTONED: TableDefinition<(&str, &str), ()> = TableDefinition::new("tombstoned");
/// (origin, seq of the chunk's last op) → msgpack `Vec<Op>`: consecutive ops of that origin.
const LOG: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("log");
/// Group number → msgpack `Vec<(Keyspace, Key, Option<KeyState>)>`: the states a group wrote.
const WAL: TableDefinition<u64, &[u8]> = TableDefinition::new("wal");
/// (accepted at wall ms, idempotency key) → msgpack `IdempotencyRecord`.
const IDEMPOTENCY: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("idempotency");
/// Vectors and counters: "seen", "log_last", "acked/<dc>", "log_stats", "wal".
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const SEEN: &str = "seen";
/// The on-disk format of this store's records. 2: log chunks start with their op count.
const FORMAT: &str = "format";
const FORMAT_VERSION: u32 = 3;
/// The format before write-ahead records carried ops: its records hold whole key states. Such a
/// store is read, its records checkpointed at once, and it is then format 3.
const FORMAT_STATES_WAL: u32 = 2;

/// One change in a write-ahead record, in commit order.
#[derive(serde::Deserialize)]
enum WalEntry {
    /// A key's whole new state (`None`: removed): a merge, a collection, or a batch that did not
    /// say its states came from its ops.
    State(Keyspace, Key, Option<KeyState>),
    /// Ops whose keys' new states are their previous states with these ops applied in order
    /// ([`CommitBatch::states_from_ops`]): replay applies them again.
    Ops(Vec<Op>),
}

/// [`WalEntry`] as written, borrowing the batch (same variants, same encoding).
#[derive(serde::Serialize)]
enum WalEntryRef<'a> {
    State(&'a Keyspace, &'a Key, &'a Option<KeyState>),
    Ops(Vec<&'a Op>),
}

/// The write-ahead entries of a group: per batch, the whole states it did not derive from its
/// ops, then the ops of the keys it did. A set add thus costs the add, not the set.
fn wal_entries(group: &[CommitBatch]) -> Vec<WalEntryRef<'_>> {
    let mut entries = Vec::new();
    for batch in group {
        let mut derived: std::collections::HashSet<(&Keyspace, &Key)> = std::collections::HashSet::new();
        for (i, (keyspace, key, state)) in batch.states.iter().enumerate() {
            if state.is_some() && batch.states_from_ops.get(i).copied().unwrap_or(false) {
                derived.insert((keyspace, key));
            } else {
                entries.push(WalEntryRef::State(keyspace, key, state));
            }
        }
        if !derived.is_empty() {
            let ops = batch.ops.iter().filter(|op| derived.contains(&(&op.keyspace, &op.key))).collect();
            entries.push(WalEntryRef::Ops(ops));
        }
    }
    entries
}
/// Per origin, the highest seq in the log; an op at or below it is already logged.
const LOG_LAST: &str = "log_last";
/// Most ops in one log chunk.
pub const LOG_CHUNK_OPS_MAX: usize = 1_024;
/// A chunk is closed once its ops carry this many payload bytes, so a reader that wants one op
/// never inflates more than about this much.
pub const LOG_CHUNK_PAYLOAD_BYTES_MAX: usize = 256 << 10;
const LOG_STATS: &str = "log_stats";
const ACKED_PREFIX: &str = "acked/";
/// (last group number committed, last group number checkpointed into `kv`).
const WAL_POSITION: &str = "wal";
/// The store's identity record (`Option<StoreIdentity>`).
const IDENTITY: &str = "identity";
/// Whether `tombstoned` indexes `kv` (a store written before the index has it built on open).
const TOMBSTONED_INDEXED: &str = "tombstoned_indexed";

/// Tuning of a [`DurableStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Checkpoint once this many distinct keys were written since the last checkpoint. Bounds the
    /// memory of the overlay.
    pub checkpoint_keys_max: usize,
    /// Checkpoint once this many bytes of write-ahead records accumulated. Bounds the replay work
    /// on open.
    pub checkpoint_wal_bytes_max: u64,
    /// Idempotency records older than this (by the wall clock of the newest one) are dropped
    /// (`idempotency_window_s` × 1,000).
    pub idempotency_window_ms: u64,
    /// Per origin, the newest durable ops kept in memory up to about this many bytes, so that
    /// replicators read what was just committed without decoding log chunks.
    pub log_tail_bytes_max: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            checkpoint_keys_max: 65_536,
            checkpoint_wal_bytes_max: 64 << 20,
            idempotency_window_ms: 600_000,
            log_tail_bytes_max: 16 << 20,
        }
    }
}

/// Checkpoints done and the time they took ([`DurableStore::checkpoint_stats`]).
#[derive(Debug, Default)]
struct CheckpointCounters {
    count: std::sync::atomic::AtomicU64,
    micros: std::sync::atomic::AtomicU64,
}

/// Key states written since the last checkpoint (`None`: removed), and the number of the last
/// group whose states they include.
#[derive(Debug, Default)]
struct Overlay {
    states: BTreeMap<(Keyspace, Key), Option<KeyState>>,
    /// The keys of `states` whose state holds a tombstone.
    tombstoned: BTreeSet<(Keyspace, Key)>,
    group: u64,
}

impl Overlay {
    fn insert(&mut self, k: (Keyspace, Key), state: Option<KeyState>) {
        if state.as_ref().is_some_and(KeyState::has_tombstones) {
            self.tombstoned.insert(k.clone());
        } else {
            self.tombstoned.remove(&k);
        }
        self.states.insert(k, state);
    }
}

/// The newest durable ops of each origin, in seq order without gaps, about
/// [`Options::log_tail_bytes_max`] per origin: a replicator keeping up reads from here, one that
/// fell further behind from the log's chunks.
#[derive(Debug)]
struct LogTail {
    origins: std::collections::HashMap<DcId, TailOps>,
    /// The log's `log_last`: ops it covers were logged before and are skipped, as the log
    /// skips them.
    logged: VersionVector,
    bytes_max: usize,
}

#[derive(Debug, Default)]
struct TailOps {
    /// Each op with its size estimate (payload plus typical metadata, uncompressed).
    ops: std::collections::VecDeque<(Op, usize)>,
    bytes: usize,
}

impl LogTail {
    fn new(bytes_max: usize, logged: VersionVector) -> Self {
        Self { origins: std::collections::HashMap::new(), logged, bytes_max }
    }

    /// Adds an op just made durable, unless the log already held it. A gap in its origin's
    /// seqs restarts that origin's tail.
    fn append(&mut self, op: Op) {
        // Already logged (a duplicate delivery): the log skipped it too.
        if self.bytes_max == 0 || self.logged.covers(&op.dot) {
            return;
        }
        self.logged.observe(&op.dot);
        let tail = self.origins.entry(op.dot.origin.clone()).or_default();
        if tail.ops.back().is_some_and(|(last, _)| last.dot.seq + 1 != op.dot.seq) {
            *tail = TailOps::default();
        }
        let size = op.kind.payload_bytes() + op.key.as_str().len() + 64;
        tail.bytes += size;
        tail.ops.push_back((op, size));
        while tail.bytes > self.bytes_max && tail.ops.len() > 1 {
            let (_, size) = tail.ops.pop_front().expect("more than one");
            tail.bytes -= size;
        }
    }

    /// Fills `page` from memory when the tail holds its first op; `false` when it does not
    /// (the caller reads the log).
    fn read(&self, page: &mut LogPage<'_>) -> Result<bool, StoreError> {
        let Some(tail) = self.origins.get(page.origin()) else { return Ok(false) };
        let (Some((first, _)), Some((last, _))) = (tail.ops.front(), tail.ops.back()) else {
            return Ok(false);
        };
        let after = page.after_seq();
        if after < first.dot.seq || after >= last.dot.seq {
            return Ok(false);
        }
        let skip = usize::try_from(after - first.dot.seq + 1).expect("within the tail");
        for (op, size) in tail.ops.iter().skip(skip) {
            if !page.offer(op.clone(), *size)? {
                break;
            }
        }
        Ok(true)
    }

    /// Drops the ops at or below `below` (compacted from the log).
    fn trim(&mut self, below: &VersionVector) {
        for (origin, upto) in below.iter() {
            if let Some(tail) = self.origins.get_mut(origin) {
                while tail.ops.front().is_some_and(|(op, _)| op.dot.seq <= upto) {
                    let (_, size) = tail.ops.pop_front().expect("checked");
                    tail.bytes -= size;
                }
            }
        }
    }
}

/// zstd level of log chunks and write-ahead records: a fast (negative) level. The committer is one
/// thread on every write's path; in a 3-DC bench with 100-byte random-text values, level 1 cost
/// ~115 us of CPU per replicated op across the mesh and -3 ~80 us (levels below 1 leave most
/// literals uncompressed, so JSON-like values shrink less: more bytes to disk, which had room).
const PACK_LEVEL: i32 = -3;

/// Encodes `value` as MessagePack and compresses it: the form of log chunks and write-ahead
/// records on disk.
fn pack<T: serde::Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let raw = encode(value);
    PACKER.with(|packer| {
        let mut packer = packer.borrow_mut();
        let packer = packer.get_or_insert_with(|| {
            zstd::bulk::Compressor::new(PACK_LEVEL).expect("a zstd context at a valid level")
        });
        packer.compress(&raw).expect("zstd compression of an in-memory buffer")
    })
}

thread_local! {
    /// One zstd context per thread, reused: creating one per record cost more than compressing
    /// the small records of a busy committer (a third of a replicating DC's CPU in a profile).
    static PACKER: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
    static UNPACKER: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Largest record [`unpack`] inflates in one piece from its declared size; larger (or
/// undeclared) sizes are streamed.
const UNPACK_BULK_BYTES_MAX: u64 = 64 << 20;

/// A log chunk on disk: its op count (u32, little-endian), then the ops [`pack`]ed. The count
/// lets compaction and statistics size a chunk without inflating it; with the key's last seq it
/// also gives the first (a chunk is a run of consecutive seqs).
fn pack_chunk(ops: &[&Op]) -> Vec<u8> {
    let count = u32::try_from(ops.len()).expect("a chunk holds at most LOG_CHUNK_OPS_MAX ops");
    let mut bytes = count.to_le_bytes().to_vec();
    bytes.extend(pack(ops));
    bytes
}

/// The op count of a chunk written by [`pack_chunk`].
fn chunk_len(bytes: &[u8]) -> Result<u64, StoreError> {
    let head = bytes.first_chunk::<4>().ok_or_else(|| StoreError::Corrupt {
        what: "log chunk",
        detail: format!("{} bytes, shorter than its header", bytes.len()),
    })?;
    Ok(u64::from(u32::from_le_bytes(*head)))
}

/// The ops of a chunk written by [`pack_chunk`].
fn unpack_chunk(bytes: &[u8]) -> Result<Vec<Op>, StoreError> {
    let count = chunk_len(bytes)?;
    let ops: Vec<Op> = unpack("log chunk", &bytes[4..])?;
    if ops.len() as u64 != count {
        let detail = format!("header says {count} ops, body holds {}", ops.len());
        return Err(StoreError::Corrupt { what: "log chunk", detail });
    }
    Ok(ops)
}

/// Reverses [`pack`].
fn unpack<T: serde::de::DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    let corrupt = |e: std::io::Error| StoreError::Corrupt { what, detail: e.to_string() };
    let declared = zstd::zstd_safe::get_frame_content_size(bytes).ok().flatten();
    let raw = match declared.filter(|n| *n <= UNPACK_BULK_BYTES_MAX) {
        Some(n) => UNPACKER.with(|unpacker| {
            let mut unpacker = unpacker.borrow_mut();
            let unpacker = match &mut *unpacker {
                Some(u) => u,
                empty => empty.insert(zstd::bulk::Decompressor::new().map_err(corrupt)?),
            };
            unpacker.decompress(bytes, n as usize).map_err(corrupt)
        })?,
        None => zstd::stream::decode_all(bytes).map_err(corrupt)?,
    };
    decode(what, &raw)
}

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
    overlay: Arc<RwLock<Overlay>>,
    kv: Arc<RwLock<KvReader>>,
    tail: Arc<Mutex<LogTail>>,
    /// Set when a write's outcome became unknown; see [`StoreError::OutcomeUnknown`].
    poisoned: Arc<AtomicBool>,
    /// Checkpoints done and their time, for metrics.
    checkpoints: Arc<CheckpointCounters>,
    queue: Option<SyncSender<Submission>>,
    committer: Option<JoinHandle<()>>,
    recovered: Recovered,
}

/// What opening the store replayed: the write-ahead records written after the last checkpoint,
/// whose key states were rebuilt in memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Write-ahead records (one per group commit) replayed.
    pub wal_groups: u64,
    /// Their encoded bytes.
    pub wal_bytes: u64,
    /// Distinct keys whose states they held.
    pub keys: usize,
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
        Self::open_with(path, Options::default())
    }

    /// Opens the store at `path` with `options`.
    pub fn open_with(path: impl AsRef<Path>, options: Options) -> Result<Self, StoreError> {
        let db = Database::builder().create(path.as_ref()).map_err(db_err)?;
        Self::start(db, options)
    }

    /// Opens the store on a custom storage backend (used by the power-loss tests).
    pub fn open_with_backend(backend: impl StorageBackend, options: Options) -> Result<Self, StoreError> {
        let db = Database::builder().create_with_backend(backend).map_err(db_err)?;
        Self::start(db, options)
    }

    fn start(db: Database, options: Options) -> Result<Self, StoreError> {
        let states_wal;
        // Create the tables up front so that reads never meet a missing table.
        let mut txn = db.begin_write().map_err(db_err)?;
        txn.set_durability(Durability::Immediate).map_err(db_err)?;
        txn.open_table(KV).map_err(db_err)?;
        txn.open_table(TOMBSTONED).map_err(db_err)?;
        let log_is_empty = txn.open_table(LOG).map_err(db_err)?.is_empty().map_err(db_err)?;
        txn.open_table(WAL).map_err(db_err)?;
        txn.open_table(IDEMPOTENCY).map_err(db_err)?;
        {
            // Refuse a store whose records this code would misread (a store written before the
            // format was recorded has format 0; one with an empty log has nothing to misread).
            let mut meta = txn.open_table(META).map_err(db_err)?;
            let format: u32 = read_meta(&meta, FORMAT)?;
            states_wal = format == FORMAT_STATES_WAL;
            if format != FORMAT_VERSION && !states_wal && !(format == 0 && log_is_empty) {
                let detail = format!(
                    "store format {format}, this meshd reads {FORMAT_VERSION}: move the data directory aside \
                     and restart the DC (it starts empty and is refilled from its peers)"
                );
                return Err(StoreError::Corrupt { what: "store format", detail });
            }
            if !states_wal {
                meta.insert(FORMAT, encode(&FORMAT_VERSION).as_slice()).map_err(db_err)?;
            }
            // A store written before the tombstone index: build it once from `kv` (the states
            // replayed into the overlay below are indexed there).
            let indexed: bool = read_meta(&meta, TOMBSTONED_INDEXED)?;
            if !indexed {
                let kv = txn.open_table(KV).map_err(db_err)?;
                let mut index = txn.open_table(TOMBSTONED).map_err(db_err)?;
                for entry in kv.iter().map_err(db_err)? {
                    let (k, v) = entry.map_err(db_err)?;
                    let state: KeyState = decode("key state", v.value())?;
                    if state.has_tombstones() {
                        index.insert(k.value(), ()).map_err(db_err)?;
                    }
                }
                meta.insert(TOMBSTONED_INDEXED, encode(&true).as_slice()).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)?;
        // Replay the write-ahead records after the last checkpoint into the overlay.
        let mut overlay = Overlay::default();
        let mut wal_bytes = 0u64;
        let mut wal_groups = 0u64;
        {
            let txn = db.begin_read().map_err(db_err)?;
            let meta = txn.open_table(META).map_err(db_err)?;
            let (committed, checkpointed): (u64, u64) = read_meta(&meta, WAL_POSITION)?;
            let wal = txn.open_table(WAL).map_err(db_err)?;
            let kv = txn.open_table(KV).map_err(db_err)?;
            for entry in wal.range(checkpointed.saturating_add(1)..).map_err(db_err)? {
                let (group, record) = entry.map_err(db_err)?;
                let entries: Vec<WalEntry> = if states_wal {
                    let states: Vec<(Keyspace, Key, Option<KeyState>)> =
                        unpack("write-ahead record", record.value())?;
                    states.into_iter().map(|(ks, k, state)| WalEntry::State(ks, k, state)).collect()
                } else {
                    unpack("write-ahead record", record.value())?
                };
                wal_bytes += record.value().len() as u64;
                wal_groups += 1;
                for entry in entries {
                    match entry {
                        WalEntry::State(keyspace, key, state) => overlay.insert((keyspace, key), state),
                        WalEntry::Ops(ops) => {
                            for op in ops {
                                replay_op(&mut overlay, &kv, op)?;
                            }
                        }
                    }
                }
                overlay.group = group.value();
            }
            assert_eq!(
                overlay.group.max(checkpointed),
                committed,
                "write-ahead records end at the last group"
            );
            overlay.group = committed;
        }
        let recovered = Recovered { wal_groups, wal_bytes, keys: overlay.states.len() };
        let db = Arc::new(db);
        let overlay = Arc::new(RwLock::new(overlay));
        let (queue, rx) = mpsc::sync_channel(QUEUE_SUBMISSIONS_MAX);
        let poisoned = Arc::new(AtomicBool::new(false));
        let logged = {
            let txn = db.begin_read().map_err(db_err)?;
            read_meta(&txn.open_table(META).map_err(db_err)?, LOG_LAST)?
        };
        let tail = Arc::new(Mutex::new(LogTail::new(options.log_tail_bytes_max, logged)));
        let kv = Arc::new(RwLock::new(kv_reader(&db)?));
        let checkpoints = Arc::new(CheckpointCounters::default());
        let mut committer = Committer {
            db: db.clone(),
            overlay: overlay.clone(),
            kv: kv.clone(),
            tail: tail.clone(),
            poisoned: poisoned.clone(),
            checkpoints: checkpoints.clone(),
            options,
            wal_bytes,
        };
        if states_wal {
            // Whole-state records were replayed above: checkpoint them, so every record from
            // here on is of the current format, then say so.
            committer.checkpoint()?;
            let mut txn = db.begin_write().map_err(db_err)?;
            txn.set_durability(Durability::Immediate).map_err(db_err)?;
            txn.open_table(META)
                .map_err(db_err)?
                .insert(FORMAT, encode(&FORMAT_VERSION).as_slice())
                .map_err(db_err)?;
            txn.commit().map_err(db_err)?;
        }
        let committer = std::thread::Builder::new()
            .name("mesh-store-commit".into())
            .spawn(move || committer.run(rx))
            .map_err(db_err)?;
        Ok(Self {
            db,
            overlay,
            kv,
            tail,
            poisoned,
            checkpoints,
            queue: Some(queue),
            committer: Some(committer),
            recovered,
        })
    }

    /// What opening the store replayed.
    pub fn recovered(&self) -> Recovered {
        self.recovered
    }

    /// Fails once the store is poisoned, so nothing is read or written past an unknown outcome.
    fn check_usable(&self) -> Result<(), StoreError> {
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(StoreError::Poisoned);
        }
        Ok(())
    }

    /// Poisons the store after a write whose outcome is unknown, and says so.
    fn outcome_unknown(&self, e: StoreError) -> StoreError {
        self.poisoned.store(true, Ordering::SeqCst);
        StoreError::OutcomeUnknown(e.to_string())
    }

    /// The compaction transaction; any error leaves its outcome unknown.
    fn compact_log_txn(&self, below: &VersionVector) -> Result<u64, StoreError> {
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
                    let n = chunk_len(value.value())?;
                    removed += n;
                    log_ops = log_ops.checked_sub(n).ok_or_else(|| StoreError::Corrupt {
                        what: "log statistics",
                        detail: format!("{log_ops} ops logged, a chunk of {n} removed"),
                    })?;
                    let size = value.value().len() as u64;
                    log_bytes = log_bytes.checked_sub(size).ok_or_else(|| StoreError::Corrupt {
                        what: "log statistics",
                        detail: format!("{log_bytes} log bytes counted, a chunk of {size} removed"),
                    })?;
                }
            }
            meta.insert(LOG_STATS, encode(&(log_ops, log_bytes)).as_slice()).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        // What the log no longer holds is not served from memory either.
        self.tail.lock().unwrap_or_else(|e| e.into_inner()).trim(below);
        Ok(removed)
    }

    /// Checkpoints done since the store opened, and their total time in µs.
    pub fn checkpoint_stats(&self) -> (u64, u64) {
        (self.checkpoints.count.load(Ordering::Relaxed), self.checkpoints.micros.load(Ordering::Relaxed))
    }

    fn overlay(&self) -> std::sync::RwLockReadGuard<'_, Overlay> {
        self.overlay.read().unwrap_or_else(|e| e.into_inner())
    }

    fn read_meta<T: serde::de::DeserializeOwned + Default>(&self, name: &str) -> Result<T, StoreError> {
        self.check_usable()?;
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

/// Replays `op` onto its key's newest state: the overlay's, else `kv`'s, else a new key's. In
/// place: a big set or many siblings is not copied per op.
fn replay_op(
    overlay: &mut Overlay,
    kv: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    op: Op,
) -> Result<(), StoreError> {
    let k = (op.keyspace.clone(), op.key.clone());
    if !overlay.states.contains_key(&k) {
        let stored = match kv.get((op.keyspace.as_str(), op.key.as_str())).map_err(db_err)? {
            Some(bytes) => Some(decode::<KeyState>("key state", bytes.value())?),
            None => None,
        };
        overlay.states.insert(k.clone(), stored);
    }
    let slot = overlay.states.get_mut(&k).expect("inserted above");
    let state = slot.get_or_insert_with(|| KeyState::new(op.kind.value_kind()));
    state.apply(&op).map_err(|e| StoreError::Corrupt {
        what: "write-ahead record",
        detail: format!("{:?} does not apply to {}/{} on replay: {e}", op.dot, op.keyspace, op.key),
    })?;
    if state.has_tombstones() {
        overlay.tombstoned.insert(k);
    } else {
        overlay.tombstoned.remove(&k);
    }
    Ok(())
}

/// The committer thread: the only writer of groups and checkpoints.
struct Committer {
    db: Arc<Database>,
    overlay: Arc<RwLock<Overlay>>,
    kv: Arc<RwLock<KvReader>>,
    tail: Arc<Mutex<LogTail>>,
    poisoned: Arc<AtomicBool>,
    checkpoints: Arc<CheckpointCounters>,
    options: Options,
    /// Bytes of write-ahead records since the last checkpoint.
    wal_bytes: u64,
}

impl Committer {
    fn run(mut self, rx: Receiver<Submission>) {
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
            let (batches, callbacks): (Vec<CommitBatch>, Vec<CommitDone>) =
                group.into_iter().map(|s| (s.batch, s.done)).unzip();
            // Fail-stop: after a write whose outcome is unknown (redb may have made a failed
            // commit durable, and refuses writes until reopened), nothing more is committed:
            // a later group must never become durable above a hole.
            let result = if self.poisoned.load(Ordering::SeqCst) {
                Err(StoreError::Poisoned)
            } else {
                self.commit_group(batches).map_err(|e| {
                    self.poisoned.store(true, Ordering::SeqCst);
                    StoreError::OutcomeUnknown(e.to_string())
                })
            };
            for done in callbacks {
                done(result.clone());
            }
            let due = {
                let overlay = self.overlay.read().unwrap_or_else(|e| e.into_inner());
                overlay.states.len() >= self.options.checkpoint_keys_max
                    || self.wal_bytes >= self.options.checkpoint_wal_bytes_max
            };
            if result.is_ok() && due && self.checkpoint().is_err() {
                // The write-ahead records still hold every state, but the database may refuse
                // writes from now on: stop, as after a failed group.
                self.poisoned.store(true, Ordering::SeqCst);
            }
        }
    }

    /// Writes every batch of the group in one transaction, returns once it is durable, and only
    /// then shows the group's states to readers.
    fn commit_group(&mut self, group: Vec<CommitBatch>) -> Result<(), StoreError> {
        let number = self.overlay.read().unwrap_or_else(|e| e.into_inner()).group + 1;
        let record = pack(&wal_entries(&group));
        write_group(&self.db, group.iter(), number, &record, self.options.idempotency_window_ms)?;
        self.wal_bytes += record.len() as u64;
        // The batches are no longer needed: their ops move into the log's tail and their states
        // into the overlay, uncopied.
        let mut states = Vec::with_capacity(group.len());
        {
            let mut tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
            for batch in group {
                batch.ops.into_iter().for_each(|op| tail.append(op));
                states.push(batch.states);
            }
        }
        let mut overlay = self.overlay.write().unwrap_or_else(|e| e.into_inner());
        for (keyspace, key, state) in states.into_iter().flatten() {
            overlay.insert((keyspace, key), state);
        }
        overlay.group = number;
        drop(overlay);
        // A read transaction held open keeps redb from reusing the pages freed since it began
        // (every group rewrites its log, write-ahead and meta pages): renew the shared reader
        // after each group, not only at checkpoints, so the file does not grow. (The group is
        // durable already; if a reader cannot be opened, the old one still reads correctly.)
        if let Ok(reader) = kv_reader(&self.db) {
            *self.kv.write().unwrap_or_else(|e| e.into_inner()) = reader;
        }
        Ok(())
    }

    /// Writes the overlay's states into `kv` and drops the write-ahead records they cover, in one
    /// transaction; then empties the overlay.
    fn checkpoint(&mut self) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let result = self.checkpoint_txn();
        self.checkpoints.count.fetch_add(1, Ordering::Relaxed);
        self.checkpoints.micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        result
    }

    fn checkpoint_txn(&mut self) -> Result<(), StoreError> {
        let overlay = self.overlay.read().unwrap_or_else(|e| e.into_inner());
        let mut txn = self.db.begin_write().map_err(db_err)?;
        txn.set_durability(Durability::Immediate).map_err(db_err)?;
        {
            let mut kv = txn.open_table(KV).map_err(db_err)?;
            let mut index = txn.open_table(TOMBSTONED).map_err(db_err)?;
            for ((keyspace, key), state) in &overlay.states {
                let k = (keyspace.as_str(), key.as_str());
                match state {
                    Some(state) => kv.insert(k, encode(state).as_slice()).map(drop),
                    None => kv.remove(k).map(drop),
                }
                .map_err(db_err)?;
                if state.as_ref().is_some_and(KeyState::has_tombstones) {
                    index.insert(k, ()).map_err(db_err)?;
                } else {
                    index.remove(k).map_err(db_err)?;
                }
            }
            let mut wal = txn.open_table(WAL).map_err(db_err)?;
            wal.retain_in(..=overlay.group, |_, _| false).map_err(db_err)?;
            let mut meta = txn.open_table(META).map_err(db_err)?;
            meta.insert(WAL_POSITION, encode(&(overlay.group, overlay.group)).as_slice()).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        drop(overlay);
        // Readers see the new `kv` before the overlay forgets what it now holds.
        let reader = kv_reader(&self.db)?;
        *self.kv.write().unwrap_or_else(|e| e.into_inner()) = reader;
        // Only this thread adds to the overlay, so nothing arrived since the read above.
        let mut overlay = self.overlay.write().unwrap_or_else(|e| e.into_inner());
        overlay.states.clear();
        overlay.tombstoned.clear();
        drop(overlay);
        self.wal_bytes = 0;
        Ok(())
    }
}

/// Writes every batch of the group, as group `number` with write-ahead `record`, in one
/// transaction and returns once it is durable.
fn write_group<'a>(
    db: &Database,
    group: impl Iterator<Item = &'a CommitBatch> + Clone,
    number: u64,
    record: &[u8],
    idempotency_window_ms: u64,
) -> Result<(), StoreError> {
    let mut txn = db.begin_write().map_err(db_err)?;
    txn.set_durability(Durability::Immediate).map_err(db_err)?;
    {
        let mut log = txn.open_table(LOG).map_err(db_err)?;
        let mut wal = txn.open_table(WAL).map_err(db_err)?;
        let mut meta = txn.open_table(META).map_err(db_err)?;
        wal.insert(number, record).map_err(db_err)?;
        // Idempotency records, and the expiry of the old ones; the table is touched only by
        // groups that carry records.
        let records: Vec<&IdempotencyRecord> = group.clone().flat_map(|b| &b.idempotency).collect();
        if let Some(newest_ms) = records.iter().map(|r| r.wall_ms).max() {
            let mut idempotency = txn.open_table(IDEMPOTENCY).map_err(db_err)?;
            for r in &records {
                idempotency.insert((r.wall_ms, r.key.as_str()), encode(r).as_slice()).map_err(db_err)?;
            }
            let cutoff_ms = newest_ms.saturating_sub(idempotency_window_ms);
            idempotency.retain_in((0, "")..(cutoff_ms, ""), |_, _| false).map_err(db_err)?;
        }
        let (_, checkpointed): (u64, u64) = read_meta(&meta, WAL_POSITION)?;
        meta.insert(WAL_POSITION, encode(&(number, checkpointed)).as_slice()).map_err(db_err)?;
        let mut seen: VersionVector = read_meta(&meta, SEEN)?;
        let mut log_last: VersionVector = read_meta(&meta, LOG_LAST)?;
        let (mut log_ops, mut log_bytes): (u64, u64) = read_meta(&meta, LOG_STATS)?;
        let mut acked: BTreeMap<DcId, VersionVector> = BTreeMap::new();
        let mut chunk: Vec<&Op> = Vec::new();
        let mut chunk_payload_bytes = 0usize;
        let mut flush = |chunk: &mut Vec<&Op>| -> Result<(), StoreError> {
            let Some(last) = chunk.last() else { return Ok(()) };
            let bytes = pack_chunk(chunk);
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
                if !extends
                    || chunk.len() >= LOG_CHUNK_OPS_MAX
                    || chunk_payload_bytes >= LOG_CHUNK_PAYLOAD_BYTES_MAX
                {
                    flush(&mut chunk)?;
                    chunk_payload_bytes = 0;
                }
                log_last.observe(&op.dot);
                chunk_payload_bytes += op.kind.payload_bytes() + op.key.as_str().len();
                chunk.push(op);
            }
            seen.join(&batch.seen);
            for (peer, vv) in &batch.acked {
                acked.entry(peer.clone()).or_default().join(vv);
            }
            if let Some(identity) = &batch.identity {
                meta.insert(IDENTITY, encode(&Some(identity)).as_slice()).map_err(db_err)?;
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
        self.check_usable()?;
        let mut page = LogPage::new(origin, after_seq, ops_max, bytes_max);
        if self.tail.lock().unwrap_or_else(|e| e.into_inner()).read(&mut page)? {
            return Ok(page.finish());
        }
        let txn = self.db.begin_read().map_err(db_err)?;
        let log = txn.open_table(LOG).map_err(db_err)?;
        let o = origin.as_str();
        // The first chunk whose last seq is past `after_seq` holds the first op to return.
        'chunks: for entry in log.range((o, after_seq.saturating_add(1))..=(o, u64::MAX)).map_err(db_err)? {
            if page.is_full() {
                break;
            }
            let (_, value) = entry.map_err(db_err)?;
            let chunk = unpack_chunk(value.value())?;
            let op_bytes = value.value().len() / chunk.len().max(1);
            for op in chunk.into_iter().filter(|op| op.dot.seq > after_seq) {
                if !page.offer(op, op_bytes)? {
                    break 'chunks;
                }
            }
        }
        Ok(page.finish())
    }

    fn log_first_seq(&self, origin: &DcId) -> Result<Option<u64>, StoreError> {
        self.check_usable()?;
        let txn = self.db.begin_read().map_err(db_err)?;
        let log = txn.open_table(LOG).map_err(db_err)?;
        let o = origin.as_str();
        let first = log.range((o, 0)..=(o, u64::MAX)).map_err(db_err)?.next();
        match first {
            Some(entry) => {
                let (key, value) = entry.map_err(db_err)?;
                let (_, last) = key.value();
                Ok(Some(last + 1 - chunk_len(value.value())?))
            }
            None => Ok(None),
        }
    }
}

impl Store for DurableStore {
    fn scan_tombstoned(
        &self,
        after: Option<&(Keyspace, Key)>,
        max: usize,
    ) -> Result<mesh_engine::Scan, StoreError> {
        self.check_usable()?;
        // The index of `kv` merged with the overlay's tombstoned keys: an overlay state is newer
        // than `kv`, so a key the overlay holds is taken from the overlay only. Holding the
        // overlay's read lock keeps a checkpoint from moving states between the two meanwhile.
        let overlay = self.overlay();
        let txn = self.db.begin_read().map_err(db_err)?;
        let index = txn.open_table(TOMBSTONED).map_err(db_err)?;
        let start = match after {
            Some((ks, k)) => Bound::Excluded((ks.as_str(), k.as_str())),
            None => Bound::Unbounded,
        };
        let corrupt = |e: mesh_core::IdError| StoreError::Corrupt { what: "key", detail: e.to_string() };
        // The first `max` keys of the merge are among the first `max` of each side.
        let mut stored = Vec::new();
        for entry in index.range::<(&str, &str)>((start, Bound::Unbounded)).map_err(db_err)? {
            if stored.len() == max {
                break;
            }
            let (k, _) = entry.map_err(db_err)?;
            let (ks, key) = k.value();
            let k = (Keyspace::new(ks).map_err(corrupt)?, Key::new(key).map_err(corrupt)?);
            if !overlay.states.contains_key(&k) {
                stored.push(k);
            }
        }
        let after_newer = after.map_or(Bound::Unbounded, Bound::Excluded);
        let newer = overlay.tombstoned.range::<(Keyspace, Key), _>((after_newer, Bound::Unbounded)).take(max);
        let mut keys: Vec<(Keyspace, Key)> = stored.into_iter().chain(newer.cloned()).collect();
        keys.sort();
        keys.truncate(max);
        let last = if keys.len() == max { keys.last().cloned() } else { None };
        Ok(mesh_engine::Scan { keys, last })
    }

    fn submit(&self, batch: CommitBatch, done: CommitDone) {
        if let Err(e) = self.check_usable() {
            return done(Err(e));
        }
        let Some(queue) = &self.queue else {
            return done(Err(StoreError::Closed));
        };
        if let Err(mpsc::SendError(s)) = queue.send(Submission { batch, done }) {
            (s.done)(Err(StoreError::Closed));
        }
    }

    fn get(&self, keyspace: &Keyspace, key: &Key) -> Result<Option<KeyState>, StoreError> {
        self.check_usable()?;
        // The overlay holds every state newer than `kv`. A checkpoint writes `kv` before it
        // empties the overlay, so a miss here finds the state in `kv`.
        if let Some(state) = self.overlay().states.get(&(keyspace.clone(), key.clone())) {
            return Ok(state.clone());
        }
        let kv = self.kv.read().unwrap_or_else(|e| e.into_inner()).clone();
        match kv.get((keyspace.as_str(), key.as_str())).map_err(db_err)? {
            Some(bytes) => Ok(Some(decode("key state", bytes.value())?)),
            None => Ok(None),
        }
    }

    fn tombstones_held(&self) -> Result<u64, StoreError> {
        self.check_usable()?;
        // The index of `kv`, corrected by the overlay's newer states (as in `key_count`).
        let overlay = self.overlay();
        let txn = self.db.begin_read().map_err(db_err)?;
        let index = txn.open_table(TOMBSTONED).map_err(db_err)?;
        let mut count = index.len().map_err(db_err)?;
        for k in overlay.states.keys() {
            let indexed = index.get((k.0.as_str(), k.1.as_str())).map_err(db_err)?.is_some();
            match (indexed, overlay.tombstoned.contains(k)) {
                (false, true) => count += 1,
                (true, false) => count -= 1,
                _ => {}
            }
        }
        Ok(count)
    }

    fn key_count(&self) -> Result<u64, StoreError> {
        self.check_usable()?;
        // `kv`'s count, corrected by the overlay's newer states: a key new since the checkpoint
        // adds one, a key removed since takes one away. Holding the overlay keeps a checkpoint
        // from moving states between the two meanwhile.
        let overlay = self.overlay();
        let kv = self.kv.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut count = kv.len().map_err(db_err)?;
        for ((keyspace, key), state) in &overlay.states {
            let stored = kv.get((keyspace.as_str(), key.as_str())).map_err(db_err)?.is_some();
            match (stored, state.is_some()) {
                (false, true) => count += 1,
                (true, false) => count -= 1,
                _ => {}
            }
        }
        Ok(count)
    }

    fn acked(&self, peer: &DcId) -> Result<VersionVector, StoreError> {
        self.read_meta(&format!("{ACKED_PREFIX}{peer}"))
    }

    fn identity(&self) -> Result<Option<StoreIdentity>, StoreError> {
        self.read_meta(IDENTITY)
    }

    fn compact_log(&self, below: &VersionVector) -> Result<u64, StoreError> {
        self.check_usable()?;
        self.compact_log_txn(below).map_err(|e| self.outcome_unknown(e))
    }

    fn log_stats(&self) -> Result<LogStats, StoreError> {
        let (ops, bytes): (u64, u64) = self.read_meta(LOG_STATS)?;
        Ok(LogStats { ops, bytes })
    }

    fn idempotency_records(&self, since_wall_ms: u64) -> Result<Vec<IdempotencyRecord>, StoreError> {
        self.check_usable()?;
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(IDEMPOTENCY).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in table.range((since_wall_ms, "")..).map_err(db_err)? {
            let (_, v) = entry.map_err(db_err)?;
            out.push(decode("idempotency record", v.value())?);
        }
        Ok(out)
    }

    fn snapshot(&self) -> Result<Box<dyn Snapshot>, StoreError> {
        // The read transaction and the overlay must show the same group: a group becomes visible
        // in the database a moment before the committer adds its states to the overlay, so
        // retry until both agree.
        loop {
            // A poisoned store may never bring the two into step again.
            self.check_usable()?;
            let overlay = self.overlay();
            let txn = self.db.begin_read().map_err(db_err)?;
            let meta = txn.open_table(META).map_err(db_err)?;
            let (committed, _): (u64, u64) = read_meta(&meta, WAL_POSITION)?;
            if committed != overlay.group {
                drop(overlay);
                std::thread::yield_now();
                continue;
            }
            let vector = read_meta(&meta, SEEN)?;
            let kv = txn.open_table(KV).map_err(db_err)?;
            return Ok(Box::new(DurableSnapshot { vector, kv, overlay: overlay.states.clone() }));
        }
    }
}

struct DurableSnapshot {
    vector: VersionVector,
    kv: ReadOnlyTable<(&'static str, &'static str), &'static [u8]>,
    /// States newer than `kv`, which take precedence (`None`: removed).
    overlay: BTreeMap<(Keyspace, Key), Option<KeyState>>,
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
        let mut out = Vec::new();
        walk_states(&self.kv, &self.overlay, after, entries_max, |ks, k, state| {
            out.push((ks, k, state.into_owned()));
        })?;
        Ok(out)
    }
}

/// Visits up to `entries_max` live key states after `after`, in key order, merging `kv` with the
/// newer states of `overlay` (which win on equal keys; `None` there hides a removed key).
/// Returns the last key visited.
fn walk_states(
    kv: &ReadOnlyTable<(&'static str, &'static str), &'static [u8]>,
    overlay: &BTreeMap<(Keyspace, Key), Option<KeyState>>,
    after: Option<&(Keyspace, Key)>,
    entries_max: usize,
    mut visit: impl FnMut(Keyspace, Key, Cow<'_, KeyState>),
) -> Result<Option<(Keyspace, Key)>, StoreError> {
    let start = match after {
        Some((ks, k)) => Bound::Excluded((ks.as_str(), k.as_str())),
        None => Bound::Unbounded,
    };
    let corrupt = |e: mesh_core::IdError| StoreError::Corrupt { what: "key", detail: e.to_string() };
    let mut stored = kv
        .range::<(&str, &str)>((start, Bound::Unbounded))
        .map_err(db_err)?
        .map(|entry| {
            let (k, v) = entry.map_err(db_err)?;
            let (ks, key) = k.value();
            Ok::<_, StoreError>(((ks.to_string(), key.to_string()), v.value().to_vec()))
        })
        .peekable();
    let after_newer = after.map_or(Bound::Unbounded, Bound::Excluded);
    let mut newer = overlay.range::<(Keyspace, Key), _>((after_newer, Bound::Unbounded)).peekable();
    let mut visited = 0;
    let mut last = None;
    // Merge the two key-ordered streams; on equal keys the overlay wins.
    while visited < entries_max {
        let stored_key = match stored.peek() {
            Some(Ok((k, _))) => Some((k.0.as_str(), k.1.as_str())),
            Some(Err(_)) => return Err(stored.next().expect("peeked").expect_err("an error")),
            None => None,
        };
        let newer_key = newer.peek().map(|((ks, k), _)| (ks.as_str(), k.as_str()));
        let (take_newer, skip_stored) = match (stored_key, newer_key) {
            (None, None) => break,
            (Some(_), None) => (false, false),
            (None, Some(_)) => (true, false),
            (Some(s), Some(n)) => (n <= s, s == n),
        };
        if skip_stored {
            stored.next();
        }
        let (ks, k, state) = if take_newer {
            let ((ks, k), state) = newer.next().expect("peeked");
            let Some(state) = state else { continue };
            (ks.clone(), k.clone(), Cow::Borrowed(state))
        } else {
            let ((ks, key), v) = stored.next().expect("peeked")?;
            let state = decode("key state", &v)?;
            (Keyspace::new(ks).map_err(corrupt)?, Key::new(key).map_err(corrupt)?, Cow::Owned(state))
        };
        visited += 1;
        last = Some((ks.clone(), k.clone()));
        visit(ks, k, state);
    }
    Ok(last.filter(|_| visited == entries_max))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::{Dot, Hlc, OpKind, ValueKind};

    #[test]
    fn a_format_2_store_replays_its_whole_state_records_then_checkpoints_them_as_format_3() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        drop(DurableStore::open(&path).unwrap());
        let (users, key) = (Keyspace::new("users").unwrap(), Key::new("k").unwrap());
        let mut state = KeyState::new(ValueKind::Register);
        let op = Op {
            dot: Dot::new(DcId::new("us-east").unwrap(), 1),
            hlc: Hlc::new(1, 0),
            keyspace: users.clone(),
            key: key.clone(),
            kind: OpKind::Put(b"v".to_vec()),
            context: VersionVector::new(),
        };
        state.apply(&op).unwrap();
        // What a format-2 meshd left: one write-ahead record of whole states, not checkpointed.
        {
            let db = Database::builder().create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let old: Vec<(Keyspace, Key, Option<KeyState>)> =
                    vec![(users.clone(), key.clone(), Some(state.clone()))];
                txn.open_table(WAL).unwrap().insert(1, pack(&old).as_slice()).unwrap();
                let mut meta = txn.open_table(META).unwrap();
                meta.insert(WAL_POSITION, encode(&(1u64, 0u64)).as_slice()).unwrap();
                meta.insert(FORMAT, encode(&FORMAT_STATES_WAL).as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let store = DurableStore::open(&path).unwrap();
        assert_eq!(store.recovered().wal_groups, 1);
        assert_eq!(store.get(&users, &key).unwrap(), Some(state.clone()));
        drop(store);
        let store = DurableStore::open(&path).unwrap();
        assert_eq!(store.recovered().wal_groups, 0, "the old records were checkpointed");
        assert_eq!(store.read_meta::<u32>(FORMAT).unwrap(), FORMAT_VERSION);
        assert_eq!(store.get(&users, &key).unwrap(), Some(state));
    }
}
