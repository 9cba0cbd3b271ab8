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
//! write-ahead records have accumulated, the states written since the last checkpoint are
//! frozen, and a second thread (the checkpointer) writes the latest state of each of their keys
//! into `kv`, in slices of durable transactions, the last recording the group it covers. A
//! copy-on-write B-tree pays a page copy for every leaf a transaction touches, so writing
//! states per group costs a leaf per key per commit;
//! checkpointing writes each hot key once and touches each leaf once per checkpoint. Until then
//! the states live in memory (the overlay), which reads consult first; on open the write-ahead
//! records after the last checkpoint are replayed into it. The same checkpoint keeps
//! `tombstoned`, the index of the keys whose state in `kv` holds a tombstone, so tombstone GC's
//! walk visits those keys only, however many keys the store holds.
//!
//! `kv` and `tombstoned` live in a second redb database beside the first (`NAME.kv.redb` for
//! `NAME.redb`), so that a checkpoint's long transaction runs beside group commits instead of
//! holding up every write behind it (redb has one writer per database). The order that keeps
//! this safe: the key-state database records, in the checkpoint's own transaction, the last
//! group it covers; the write-ahead records of those groups are deleted (by a later group
//! commit) only after that transaction is durable; and opening replays the records after the
//! group the key-state database names. Nothing here changes what is durable when: a group is
//! acknowledged only after the transaction holding its ops, states and vectors is on disk.

use crate::{
    decode, encode, encode_into, CommitBatch, CommitDone, IdempotencyRecord, LogPage, LogRead, LogStats,
    Snapshot, Store, StoreError, StoreIdentity,
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
/// Longest rest of the checkpointer between two slices ([`Checkpointer::rest`]): a rest as
/// long as the slice before it spreads a checkpoint's disk writes, but a slice that took seconds
/// (a stalled disk or process) must not be followed by seconds of idleness.
const CHECKPOINT_REST_MAX: std::time::Duration = std::time::Duration::from_millis(250);

/// Whether the next checkpoint is far from due, so the checkpointer may rest between slices:
/// the active layer holds under half of [`Options::checkpoint_keys_max`] (`keys_max`) keys. The
/// committer wakes a resting checkpointer once this no longer holds.
fn rest_allowed(active_keys: usize, keys_max: usize) -> bool {
    active_keys < keys_max / 2
}
/// Most submissions waiting for the committer; submitters block beyond it (backpressure).
const QUEUE_SUBMISSIONS_MAX: usize = 8_192;

/// (keyspace, key) → msgpack KeyState, in the key-state database.
const KV: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("kv");

/// The `kv` table as of the last checkpoint: it changes only in checkpoints, so one read
/// transaction serves many reads (reopening it per read cost more than the read); the
/// checkpointer renews it after each checkpoint.
type KvReader = Arc<ReadOnlyTable<(&'static str, &'static str), &'static [u8]>>;

fn kv_reader(db: &Database) -> Result<KvReader, StoreError> {
    Ok(Arc::new(db.begin_read().map_err(db_err)?.open_table(KV).map_err(db_err)?))
}
/// (keyspace, key) → (): the keys whose state in `kv` holds a tombstone (tombstone GC's walk).
/// Written with `kv`, in checkpoints, in the key-state database.
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
/// In the key-state database's `meta`: the last group whose states `kv` holds (u64).
const CHECKPOINTED: &str = "checkpointed";
/// The on-disk format of this store's records. 2: log chunks start with their op count.
const FORMAT: &str = "format";
const FORMAT_VERSION: u32 = 4;
/// The format before the key-state database: `kv` and `tombstoned` are tables of the main
/// database. Opening moves them, then the store is format 4.
const FORMAT_KV_INSIDE: u32 = 3;
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
/// (last group number committed, group number the write-ahead records are deleted up to).
/// Format 3 wrote the last group checkpointed as the second number (`move_key_states` reads it
/// so).
const WAL_POSITION: &str = "wal";
/// Most keys a new overlay layer reserves room for ([`Layer::with_capacity`]): a
/// `checkpoint_keys` set higher grows the layer past it as before, rather than reserving
/// hundreds of MB up front.
const LAYER_KEYS_RESERVED_MAX: usize = 1 << 22;
/// Most write-ahead records one group commit deletes once a checkpoint covers them; the rest go
/// in the next group commits. Deleting a whole checkpoint's records (a few thousand at 10,000
/// writes/s) in one commit held it for 29–55 ms, and every write of the group waited with it
/// (docs/performance.md). Each commit deletes more than it adds, so the deletions keep up.
const WAL_DELETE_RECORDS_MAX: usize = 64;
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
    /// Page cache of the two redb databases together, in bytes: a quarter for the main
    /// database (log, write-ahead records), the rest for the key-state database (reads of keys
    /// the overlay does not hold). Used by [`DurableStore::open_with`]; custom backends
    /// ([`DurableStore::open_with_backends`]) take it too.
    pub cache_bytes: usize,
    /// Keys per transaction of a checkpoint (its slices, each durable; only the last records
    /// the group the checkpoint covers). Smaller slices sync less at a time: each slice's
    /// sync is what the group commits' syncs wait behind while a checkpoint runs.
    pub checkpoint_slice_keys: usize,
    /// Smallest number of keys the filter of `kv`'s keys ([`KvKeys`]) is sized for. It is
    /// rebuilt, for twice the keys `kv` holds, once more keys than that were added; tests set
    /// this small so that rebuilds happen.
    pub key_filter_items_min: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            checkpoint_keys_max: 65_536,
            checkpoint_wal_bytes_max: 64 << 20,
            idempotency_window_ms: 600_000,
            log_tail_bytes_max: 16 << 20,
            cache_bytes: 256 << 20,
            checkpoint_slice_keys: 1_024,
            key_filter_items_min: 1 << 20,
        }
    }
}

/// The false-positive rate [`KvKeys`] is sized for.
const KEY_FILTER_FALSE_POS: f64 = 0.01;

/// A Bloom filter (Bloom 1970, "Space/time trade-offs in hash coding with allowable errors")
/// of the keys `kv` holds: a read of a key the overlay does not hold, and the filter says `kv`
/// does not hold either, is answered "absent" without descending `kv`'s B-tree (most writes of
/// new keys read their key first; the miss was a tenth of each DC's CPU in a profile).
///
/// Holds every key `kv` holds (it may hold more: removed keys stay, and 1 % of others test
/// positive). The checkpointer is `kv`'s only writer: it adds a checkpoint's keys once the
/// checkpoint is durable and before readers see the new `kv` (both under the overlay's write
/// lock, so a reader sees the filter and `kv` of the same checkpoint or later filters). When
/// more keys were added than it was sized for, the checkpointer builds a new one from a scan of
/// `kv` and swaps it in at the same point.
#[derive(Debug)]
struct KvKeys {
    filter: fastbloom::AtomicBloomFilter,
    /// The keys it was sized for.
    capacity: usize,
    /// Keys added (a key added twice counts twice).
    items: std::sync::atomic::AtomicUsize,
}

impl KvKeys {
    /// A filter of every key of `kv`, sized for twice as many and at least `items_min`.
    fn build(
        kv: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
        items_min: usize,
    ) -> Result<Self, StoreError> {
        let held = usize::try_from(kv.len().map_err(db_err)?).unwrap_or(usize::MAX);
        let capacity = held.saturating_mul(2).max(items_min).max(1);
        let keys = Self {
            filter: fastbloom::AtomicBloomFilter::with_false_pos(KEY_FILTER_FALSE_POS)
                .expected_items(capacity),
            capacity,
            items: std::sync::atomic::AtomicUsize::new(0),
        };
        for entry in kv.iter().map_err(db_err)? {
            let (k, _) = entry.map_err(db_err)?;
            keys.add(k.value().0, k.value().1);
        }
        Ok(keys)
    }

    fn add(&self, keyspace: &str, key: &str) {
        self.filter.insert(&(keyspace, key));
        self.items.fetch_add(1, Ordering::Relaxed);
    }

    /// `false`: `kv` does not hold the key.
    fn may_hold(&self, keyspace: &str, key: &str) -> bool {
        self.filter.contains(&(keyspace, key))
    }

    /// Whether adding `more` keys would pass the number it was sized for.
    fn full_after(&self, more: usize) -> bool {
        self.items.load(Ordering::Relaxed).saturating_add(more) > self.capacity
    }
}

/// Checkpoints done, the time they took, and the time group commits waited for them
/// ([`DurableStore::checkpoint_stats`]).
#[derive(Debug, Default)]
struct CheckpointCounters {
    count: std::sync::atomic::AtomicU64,
    micros: std::sync::atomic::AtomicU64,
    waited_micros: std::sync::atomic::AtomicU64,
}

/// Checkpoints since the store opened ([`DurableStore::checkpoint_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckpointStats {
    /// Checkpoints done.
    pub count: u64,
    /// Their total time, in µs, rests between slices included.
    pub micros: u64,
    /// Total time the committer waited for the checkpoint in flight before taking the next
    /// group, in µs: the states written since it started reached twice
    /// [`Options::checkpoint_keys_max`] keys (or twice [`Options::checkpoint_wal_bytes_max`]),
    /// with the checkpoint's own still in memory, so writes and remote applies waited for the
    /// key table.
    pub waited_micros: u64,
}

/// Key states newer than `kv` (`None`: removed), in two generations: those written since the
/// last freeze, and those frozen for the checkpoint in flight. A state in `active` is newer than
/// the same key's in `frozen`, which is newer than `kv`'s.
#[derive(Debug, Default)]
struct Overlay {
    active: Layer,
    /// Written into `kv` by the checkpointer; dropped (under the write lock, after the shared
    /// `kv` reader was renewed) once that is durable.
    frozen: Option<Arc<Layer>>,
    /// The last group whose states the overlay includes.
    group: u64,
    /// The keys `kv` holds, as of the `kv` reader readers are given (or a superset).
    kv_keys: Option<Arc<KvKeys>>,
}

/// A key of the overlay, borrowed: looks up a [`Layer`]'s states without cloning the key. Hashes
/// as the `(Keyspace, Key)` tuple does (each field in order).
#[derive(Hash)]
struct KeyRef<'a>(&'a Keyspace, &'a Key);

impl hashbrown::Equivalent<(Keyspace, Key)> for KeyRef<'_> {
    fn equivalent(&self, k: &(Keyspace, Key)) -> bool {
        self.0 == &k.0 && self.1 == &k.1
    }
}

/// A key state as the overlay holds it: encoded as `kv` holds it ([`encode_into`]), so a
/// checkpoint copies the bytes instead of walking a cold tree of allocations per key, and a key
/// costs one allocation of its encoding (about a third of the decoded state's memory).
#[derive(Debug)]
struct Held {
    /// `None`: removed.
    bytes: Option<Box<[u8]>>,
    /// Whether the state holds a tombstone.
    tombstoned: bool,
}

impl Held {
    /// `state` encoded; `buf` is scratch space, kept for the next call.
    fn of(state: Option<&KeyState>, buf: &mut Vec<u8>) -> Self {
        let bytes = state.map(|state| {
            encode_into(buf, state);
            Box::from(buf.as_slice())
        });
        Self { bytes, tombstoned: state.is_some_and(KeyState::has_tombstones) }
    }

    /// The state it holds (`None`: removed).
    fn state(&self) -> Result<Option<KeyState>, StoreError> {
        self.bytes.as_deref().map(|bytes| decode("key state", bytes)).transpose()
    }
}

/// One generation of the overlay.
#[derive(Debug, Default)]
struct Layer {
    /// A hash map, not an ordered one: every read and write of a key looks here, and a lookup
    /// in an ordered map of a few hundred thousand keys compared strings on every level (a
    /// tenth of each DC's CPU in a profile). The checkpointer sorts the keys it writes.
    states: hashbrown::HashMap<(Keyspace, Key), Held>,
    /// The keys of `states` whose state holds a tombstone.
    tombstoned: BTreeSet<(Keyspace, Key)>,
    /// Frozen: the last group it includes.
    group: u64,
}

impl Layer {
    /// An empty layer whose map holds `keys` keys without growing. A hash map grows by
    /// rehashing every entry into a table twice as large, here under the overlay's write lock,
    /// which every read and the committer wait for: growing past ~100k keys stalled the three
    /// DCs' writes by tens of ms at a time, and sizing the layer for a checkpoint's keys up
    /// front cut the lag's p99 at 10,000 writes/s from 49–53 ms to 17–19 ms
    /// (docs/performance.md). The table ends as large as growing to that many keys makes it;
    /// only its control bytes (one per slot) are touched up front.
    fn with_capacity(keys: usize) -> Self {
        let mut layer = Self::default();
        layer.reserve_for(keys);
        layer
    }

    /// Makes room for `keys` keys in all (those held included), at most
    /// [`LAYER_KEYS_RESERVED_MAX`].
    fn reserve_for(&mut self, keys: usize) {
        let keys = keys.min(LAYER_KEYS_RESERVED_MAX);
        self.states.reserve(keys.saturating_sub(self.states.len()));
    }

    fn insert(&mut self, k: (Keyspace, Key), held: Held) {
        if held.tombstoned {
            self.tombstoned.insert(k.clone());
        } else {
            self.tombstoned.remove(&k);
        }
        self.states.insert(k, held);
    }
}

impl Overlay {
    fn insert(&mut self, k: (Keyspace, Key), held: Held) {
        self.active.insert(k, held);
    }

    /// The newest state of `k` the overlay holds, if it holds one.
    fn newest(&self, k: KeyRef<'_>) -> Option<&Held> {
        self.active.states.get(&k).or_else(|| self.frozen.as_ref()?.states.get(&k))
    }

    /// Every key whose newest overlay state has a tombstone, once.
    fn tombstoned_keys(&self) -> impl Iterator<Item = &(Keyspace, Key)> {
        let frozen = self.frozen.iter().flat_map(|f| f.tombstoned.iter());
        let frozen = frozen.filter(|k| !self.active.states.contains_key(*k));
        self.active.tombstoned.iter().chain(frozen)
    }

    /// Every key the overlay holds a state for, once, with its newest state.
    fn entries(&self) -> impl Iterator<Item = (&(Keyspace, Key), &Held)> {
        let frozen = self.frozen.iter().flat_map(|f| f.states.iter());
        self.active.states.iter().chain(frozen.filter(|(k, _)| !self.active.states.contains_key(*k)))
    }

    /// The newest states, merged into one map (for a snapshot).
    fn merged(&self) -> Result<BTreeMap<(Keyspace, Key), Option<KeyState>>, StoreError> {
        self.entries().map(|(k, held)| Ok((k.clone(), held.state()?))).collect()
    }

    /// The first `max` keys after `after` whose newest overlay state has a tombstone, in order.
    fn tombstoned_after(&self, after: Option<&(Keyspace, Key)>, max: usize) -> Vec<(Keyspace, Key)> {
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let active = self.active.tombstoned.range::<(Keyspace, Key), _>((from, Bound::Unbounded)).take(max);
        let frozen = self.frozen.iter().flat_map(|f| {
            f.tombstoned
                .range::<(Keyspace, Key), _>((from, Bound::Unbounded))
                .filter(|k| !self.active.states.contains_key(*k))
                .take(max)
        });
        let mut keys: Vec<(Keyspace, Key)> = active.chain(frozen).cloned().collect();
        keys.sort();
        keys.truncate(max);
        keys
    }

    fn len(&self) -> usize {
        self.entries().count()
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
    let mut packed = Vec::new();
    pack_into(&mut packed, value);
    packed
}

/// [`pack`] into `packed` (replacing what it held), reusing its allocation: a committer's
/// records are each up to a few MiB before compression, and a fresh buffer per record cost
/// allocating and faulting in its pages every group (6 % of a committer's time in a profile).
fn pack_into<T: serde::Serialize + ?Sized>(packed: &mut Vec<u8>, value: &T) {
    PACKER.with(|packer| {
        let (packer, raw) = &mut *packer.borrow_mut();
        encode_into(raw, value);
        let packer = packer.get_or_insert_with(|| {
            zstd::bulk::Compressor::new(PACK_LEVEL).expect("a zstd context at a valid level")
        });
        packed.clear();
        packed.reserve(zstd::compress_bound(raw.len()));
        packer.compress_to_buffer(raw.as_slice(), packed).expect("zstd compression of an in-memory buffer");
    });
}

thread_local! {
    /// One zstd context per thread, reused: creating one per record cost more than compressing
    /// the small records of a busy committer (a third of a replicating DC's CPU in a profile).
    /// With the buffer the MessagePack form is encoded into, reused likewise.
    static PACKER: std::cell::RefCell<(Option<zstd::bulk::Compressor<'static>>, Vec<u8>)> =
        const { std::cell::RefCell::new((None, Vec::new())) };
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
    /// The key-state database: `kv`, `tombstoned` and the last group checkpointed.
    kv_db: Arc<Database>,
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
    /// Opens the store at `path`, creating it if missing, with its key-state database beside it
    /// ([`DurableStore::kv_path`]). After a crash redb recovers each to its last durable commit
    /// here.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, Options::default())
    }

    /// Opens the store at `path` with `options`.
    pub fn open_with(path: impl AsRef<Path>, options: Options) -> Result<Self, StoreError> {
        let path = path.as_ref();
        let (main_cache, kv_cache) = cache_split(options.cache_bytes);
        let db = Database::builder().set_cache_size(main_cache).create(path).map_err(db_err)?;
        let kv_db =
            Database::builder().set_cache_size(kv_cache).create(Self::kv_path(path)).map_err(db_err)?;
        // The files' directory entries must be durable before anything relies on them: a power
        // loss could otherwise lose a just-created key-state file after the main database
        // deleted what was moved into it (format 3 to 4).
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(db_err)?;
        Self::start(db, kv_db, options)
    }

    /// The key-state database of the store at `path`: `NAME.kv.redb` beside `NAME.redb` (`PATH.kv`
    /// beside a `PATH` without an extension).
    pub fn kv_path(path: &Path) -> std::path::PathBuf {
        match path.extension() {
            Some(ext) => path.with_extension(format!("kv.{}", ext.to_string_lossy())),
            None => path.with_extension("kv"),
        }
    }

    /// Opens the store on custom storage backends, the main database's and the key-state
    /// database's (used by the power-loss tests).
    pub fn open_with_backends(
        backend: impl StorageBackend,
        kv_backend: impl StorageBackend,
        options: Options,
    ) -> Result<Self, StoreError> {
        let (main_cache, kv_cache) = cache_split(options.cache_bytes);
        let db =
            Database::builder().set_cache_size(main_cache).create_with_backend(backend).map_err(db_err)?;
        let kv_db =
            Database::builder().set_cache_size(kv_cache).create_with_backend(kv_backend).map_err(db_err)?;
        Self::start(db, kv_db, options)
    }

    fn start(db: Database, kv_db: Database, options: Options) -> Result<Self, StoreError> {
        let format;
        // Create the tables up front so that reads never meet a missing table.
        let mut txn = db.begin_write().map_err(db_err)?;
        txn.set_durability(Durability::Immediate).map_err(db_err)?;
        let log_is_empty = txn.open_table(LOG).map_err(db_err)?.is_empty().map_err(db_err)?;
        txn.open_table(WAL).map_err(db_err)?;
        txn.open_table(IDEMPOTENCY).map_err(db_err)?;
        {
            // Refuse a store whose records this code would misread (a store written before the
            // format was recorded has format 0; one with an empty log has nothing to misread).
            let meta = txn.open_table(META).map_err(db_err)?;
            format = read_meta::<u32>(&meta, FORMAT)?;
            let known = [FORMAT_VERSION, FORMAT_KV_INSIDE, FORMAT_STATES_WAL];
            let readable = known.contains(&format) || (format == 0 && log_is_empty);
            if !readable {
                let detail = format!(
                    "store format {format}, this meshd reads {FORMAT_VERSION}: move the data directory aside \
                     and restart the DC (it starts empty and is refilled from its peers)"
                );
                return Err(StoreError::Corrupt { what: "store format", detail });
            }
        }
        if format != FORMAT_VERSION {
            // A store written before the tombstone index: build it once from `kv` (the states
            // replayed into the overlay below are indexed there).
            let mut meta = txn.open_table(META).map_err(db_err)?;
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
        let mut txn = kv_db.begin_write().map_err(db_err)?;
        txn.set_durability(Durability::Immediate).map_err(db_err)?;
        txn.open_table(KV).map_err(db_err)?;
        txn.open_table(TOMBSTONED).map_err(db_err)?;
        txn.open_table(META).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        if format != FORMAT_VERSION {
            move_key_states(&db, &kv_db, format)?;
        }
        // Replay the write-ahead records after the last checkpoint into the overlay.
        let mut overlay = Overlay::default();
        let mut wal_bytes = 0u64;
        let mut wal_groups = 0u64;
        // Records a durable checkpoint covers but a crash left undeleted: the first group
        // commits delete them.
        let wal_deletable = {
            let txn = db.begin_read().map_err(db_err)?;
            let meta = txn.open_table(META).map_err(db_err)?;
            let (committed, deleted): (u64, u64) = read_meta(&meta, WAL_POSITION)?;
            let kv_txn = kv_db.begin_read().map_err(db_err)?;
            let checkpointed: u64 = read_meta(&kv_txn.open_table(META).map_err(db_err)?, CHECKPOINTED)?;
            if checkpointed < deleted {
                let detail = format!(
                    "the key-state database holds groups up to {checkpointed}, but the write-ahead records up to \
                     {deleted} were deleted: the key-state file is missing or older than the store; restore it, or \
                     move the data directory aside and restart the DC (it is refilled from its peers)"
                );
                return Err(StoreError::Corrupt { what: "key-state database", detail });
            }
            let states_wal = format == FORMAT_STATES_WAL;
            let wal = txn.open_table(WAL).map_err(db_err)?;
            let kv = kv_txn.open_table(KV).map_err(db_err)?;
            let mut replayed = hashbrown::HashMap::new();
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
                        WalEntry::State(keyspace, key, state) => {
                            replayed.insert((keyspace, key), state);
                        }
                        WalEntry::Ops(ops) => {
                            for op in ops {
                                replay_op(&mut replayed, &kv, op)?;
                            }
                        }
                    }
                }
                overlay.group = group.value();
            }
            let mut buf = Vec::new();
            for (k, state) in replayed {
                overlay.insert(k, Held::of(state.as_ref(), &mut buf));
            }
            if overlay.group.max(checkpointed) != committed {
                let detail = format!(
                    "the last group committed is {committed}, but the write-ahead records and the key-state \
                     database end at {}: the main database file is missing or older than the key-state file",
                    overlay.group.max(checkpointed)
                );
                return Err(StoreError::Corrupt { what: "store", detail });
            }
            overlay.group = committed;
            (deleted < checkpointed).then_some(checkpointed)
        };
        let recovered = Recovered { wal_groups, wal_bytes, keys: overlay.len() };
        overlay.active.reserve_for(options.checkpoint_keys_max);
        let (db, kv_db) = (Arc::new(db), Arc::new(kv_db));
        let (queue, rx) = mpsc::sync_channel(QUEUE_SUBMISSIONS_MAX);
        let poisoned = Arc::new(AtomicBool::new(false));
        let logged = {
            let txn = db.begin_read().map_err(db_err)?;
            read_meta(&txn.open_table(META).map_err(db_err)?, LOG_LAST)?
        };
        let tail = Arc::new(Mutex::new(LogTail::new(options.log_tail_bytes_max, logged)));
        let kv = kv_reader(&kv_db)?;
        overlay.kv_keys = Some(Arc::new(KvKeys::build(kv.as_ref(), options.key_filter_items_min)?));
        let kv = Arc::new(RwLock::new(kv));
        let checkpoints = Arc::new(CheckpointCounters::default());
        let hurry = Arc::new(AtomicBool::new(false));
        let overlay = Arc::new(RwLock::new(overlay));
        let checkpointer = Checkpointer {
            kv_db: kv_db.clone(),
            overlay: overlay.clone(),
            kv: kv.clone(),
            poisoned: poisoned.clone(),
            checkpoints: checkpoints.clone(),
            keys_max: options.checkpoint_keys_max,
            slice_keys: options.checkpoint_slice_keys,
            key_filter_items_min: options.key_filter_items_min,
            hurry: hurry.clone(),
        };
        let mut committer = Committer {
            db: db.clone(),
            overlay: overlay.clone(),
            tail: tail.clone(),
            poisoned: poisoned.clone(),
            options,
            wal_bytes,
            checkpointer: None,
            checkpointed: None,
            in_flight: false,
            wal_deletable,
            hurry,
            checkpoints: checkpoints.clone(),
            buf: Vec::new(),
            record: Vec::new(),
        };
        if format == FORMAT_STATES_WAL {
            // Whole-state records were replayed above: checkpoint them, so every record from
            // here on is of the current format, then say so.
            let layer = committer.freeze();
            checkpointer.checkpoint(&layer, false)?;
            let mut txn = db.begin_write().map_err(db_err)?;
            txn.set_durability(Durability::Immediate).map_err(db_err)?;
            {
                txn.open_table(WAL)
                    .map_err(db_err)?
                    .retain_in(..=layer.group, |_, _| false)
                    .map_err(db_err)?;
                let mut meta = txn.open_table(META).map_err(db_err)?;
                meta.insert(WAL_POSITION, encode(&(layer.group, layer.group)).as_slice()).map_err(db_err)?;
                meta.insert(FORMAT, encode(&FORMAT_VERSION).as_slice()).map_err(db_err)?;
            }
            txn.commit().map_err(db_err)?;
        }
        let (layers, frozen) = mpsc::sync_channel(1);
        let (done, checkpointed) = mpsc::channel();
        let checkpointer = std::thread::Builder::new()
            .name("mesh-store-ckpt".into())
            .spawn(move || checkpointer.run(frozen, done))
            .map_err(db_err)?;
        committer.checkpointer = Some((layers, checkpointer));
        committer.checkpointed = Some(checkpointed);
        let committer = std::thread::Builder::new()
            .name("mesh-store-commit".into())
            .spawn(move || committer.run(rx))
            .map_err(db_err)?;
        Ok(Self {
            db,
            kv_db,
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

    /// Checkpoints since the store opened: how many, their time, and the time commits waited
    /// for them.
    pub fn checkpoint_stats(&self) -> CheckpointStats {
        let c = &self.checkpoints;
        CheckpointStats {
            count: c.count.load(Ordering::Relaxed),
            micros: c.micros.load(Ordering::Relaxed),
            waited_micros: c.waited_micros.load(Ordering::Relaxed),
        }
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

/// Moves `kv` and `tombstoned` of a store written before the key-state database (format
/// [`FORMAT_KV_INSIDE`], [`FORMAT_STATES_WAL`], or 0) into the key-state database, with the last
/// group they cover; then deletes them from the main database and records the new format (a
/// format-2 store keeps its format until its whole-state records are checkpointed). Each step
/// is durable before the next starts, and a crash between them repeats the copy on the next
/// open, so nothing is lost either way.
fn move_key_states(db: &Database, kv_db: &Database, format: u32) -> Result<(), StoreError> {
    let txn = db.begin_read().map_err(db_err)?;
    let (_, checkpointed): (u64, u64) = read_meta(&txn.open_table(META).map_err(db_err)?, WAL_POSITION)?;
    let mut copy = kv_db.begin_write().map_err(db_err)?;
    copy.set_durability(Durability::Immediate).map_err(db_err)?;
    {
        let mut kv = copy.open_table(KV).map_err(db_err)?;
        if let Some(old) = open_if_exists(txn.open_table(KV))? {
            for entry in old.iter().map_err(db_err)? {
                let (k, v) = entry.map_err(db_err)?;
                kv.insert(k.value(), v.value()).map_err(db_err)?;
            }
        }
        let mut index = copy.open_table(TOMBSTONED).map_err(db_err)?;
        if let Some(old) = open_if_exists(txn.open_table(TOMBSTONED))? {
            for entry in old.iter().map_err(db_err)? {
                index.insert(entry.map_err(db_err)?.0.value(), ()).map_err(db_err)?;
            }
        }
        let mut meta = copy.open_table(META).map_err(db_err)?;
        let held: u64 = read_meta(&meta, CHECKPOINTED)?;
        meta.insert(CHECKPOINTED, encode(&held.max(checkpointed)).as_slice()).map_err(db_err)?;
    }
    copy.commit().map_err(db_err)?;
    drop(txn);
    let mut txn = db.begin_write().map_err(db_err)?;
    txn.set_durability(Durability::Immediate).map_err(db_err)?;
    txn.delete_table(KV).map_err(db_err)?;
    txn.delete_table(TOMBSTONED).map_err(db_err)?;
    if format != FORMAT_STATES_WAL {
        txn.open_table(META)
            .map_err(db_err)?
            .insert(FORMAT, encode(&FORMAT_VERSION).as_slice())
            .map_err(db_err)?;
    }
    txn.commit().map_err(db_err)
}

/// [`Options::cache_bytes`] split between the main and the key-state database.
fn cache_split(bytes: usize) -> (usize, usize) {
    (bytes / 4, bytes - bytes / 4)
}

/// A table of a read transaction, `None` when the database never had it.
fn open_if_exists<T>(opened: Result<T, redb::TableError>) -> Result<Option<T>, StoreError> {
    match opened {
        Ok(table) => Ok(Some(table)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(db_err(e)),
    }
}

/// Replays `op` onto its key's newest state: `replayed`'s, else `kv`'s, else a new key's. In
/// place, decoded: a big set or many siblings is not copied or encoded per op (the states go
/// into the overlay once the replay is done).
fn replay_op(
    replayed: &mut hashbrown::HashMap<(Keyspace, Key), Option<KeyState>>,
    kv: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    op: Op,
) -> Result<(), StoreError> {
    let k = (op.keyspace.clone(), op.key.clone());
    if !replayed.contains_key(&k) {
        let stored = match kv.get((op.keyspace.as_str(), op.key.as_str())).map_err(db_err)? {
            Some(bytes) => Some(decode::<KeyState>("key state", bytes.value())?),
            None => None,
        };
        replayed.insert(k.clone(), stored);
    }
    let slot = replayed.get_mut(&k).expect("inserted above");
    let state = slot.get_or_insert_with(|| KeyState::new(op.kind.value_kind()));
    state.apply(&op).map_err(|e| StoreError::Corrupt {
        what: "write-ahead record",
        detail: format!("{:?} does not apply to {}/{} on replay: {e}", op.dot, op.keyspace, op.key),
    })?;
    Ok(())
}

/// The committer thread: the only writer of the main database after open.
struct Committer {
    db: Arc<Database>,
    overlay: Arc<RwLock<Overlay>>,
    tail: Arc<Mutex<LogTail>>,
    poisoned: Arc<AtomicBool>,
    options: Options,
    /// Bytes of write-ahead records since the last freeze.
    wal_bytes: u64,
    /// Where frozen layers go, and the checkpointer thread (joined when the committer stops).
    checkpointer: Option<(SyncSender<Arc<Layer>>, JoinHandle<()>)>,
    /// The checkpointer's answers: the last group a checkpoint made durable in `kv`, or `Err`
    /// when it failed (the store is poisoned then).
    checkpointed: Option<Receiver<Result<u64, ()>>>,
    /// A frozen layer is with the checkpointer.
    in_flight: bool,
    /// The write-ahead records up to this group are covered by a durable checkpoint: the next
    /// group commit deletes them.
    wal_deletable: Option<u64>,
    /// Shared with the checkpointer: the next checkpoint is due.
    hurry: Arc<AtomicBool>,
    /// Shared with the checkpointer; the committer adds the time it waits for a checkpoint.
    checkpoints: Arc<CheckpointCounters>,
    /// Scratch space for encoding states into the overlay.
    buf: Vec<u8>,
    /// The group's write-ahead record, packed ([`pack_into`]).
    record: Vec<u8>,
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
            if result.is_ok() {
                self.schedule_checkpoint();
            }
        }
        // Let the checkpoint in flight finish (the first group commits after the store opens
        // again delete the records it covers).
        if let Some((layers, checkpointer)) = self.checkpointer.take() {
            drop(layers);
            let _ = checkpointer.join();
        }
    }

    /// Learns of finished checkpoints (waiting for the one in flight when `wait`), and freezes
    /// the active layer for the next one when it is due. At most two generations are held: a
    /// layer twice over the thresholds waits for the checkpoint in flight (backpressure).
    fn schedule_checkpoint(&mut self) {
        let (keys, bytes) = (self.options.checkpoint_keys_max, self.options.checkpoint_wal_bytes_max);
        let active = self.overlay.read().unwrap_or_else(|e| e.into_inner()).active.states.len();
        let due = active >= keys || self.wal_bytes >= bytes;
        let full = active >= keys.saturating_mul(2) || self.wal_bytes >= bytes.saturating_mul(2);
        self.hurry.store(due, Ordering::SeqCst);
        if due || !rest_allowed(active, keys) {
            // A checkpointer resting between slices starts its next slice now.
            if let Some((_, checkpointer)) = &self.checkpointer {
                checkpointer.thread().unpark();
            }
        }
        self.collect_checkpoints(due && full);
        if due && !self.in_flight && !self.poisoned.load(Ordering::SeqCst) {
            let layer = self.freeze();
            let sent = self.checkpointer.as_ref().is_some_and(|(layers, _)| layers.send(layer).is_ok());
            if sent {
                self.in_flight = true;
            } else {
                // The checkpointer is gone: the frozen layer stays readable, but nothing more can
                // be checkpointed.
                self.poisoned.store(true, Ordering::SeqCst);
            }
        }
    }

    /// Takes the checkpointer's answers; with `wait`, blocks for the one in flight.
    fn collect_checkpoints(&mut self, wait: bool) {
        let Some(answers) = &self.checkpointed else { return };
        loop {
            let answer = if wait && self.in_flight {
                let started = std::time::Instant::now();
                let answer = answers.recv().map_err(|_| mpsc::TryRecvError::Disconnected);
                let waited = started.elapsed().as_micros() as u64;
                self.checkpoints.waited_micros.fetch_add(waited, Ordering::Relaxed);
                answer
            } else {
                answers.try_recv()
            };
            match answer {
                Ok(Ok(group)) => {
                    self.in_flight = false;
                    self.wal_deletable = Some(group);
                }
                Ok(Err(())) | Err(mpsc::TryRecvError::Disconnected) => {
                    self.in_flight = false;
                    self.poisoned.store(true, Ordering::SeqCst);
                    return;
                }
                Err(mpsc::TryRecvError::Empty) => return,
            }
        }
    }

    /// Moves the active layer to `frozen`, for the checkpointer; returns it.
    fn freeze(&mut self) -> Arc<Layer> {
        // Allocated before the write lock: readers wait only for the swap.
        let next = Layer::with_capacity(self.options.checkpoint_keys_max);
        let mut overlay = self.overlay.write().unwrap_or_else(|e| e.into_inner());
        debug_assert!(overlay.frozen.is_none(), "one checkpoint at a time");
        let mut layer = std::mem::replace(&mut overlay.active, next);
        layer.group = overlay.group;
        let layer = Arc::new(layer);
        overlay.frozen = Some(layer.clone());
        self.wal_bytes = 0;
        layer
    }

    /// Writes every batch of the group in one transaction (with the deletion of the
    /// write-ahead records a durable checkpoint covers), returns once it is durable, and only
    /// then shows the group's states to readers.
    fn commit_group(&mut self, group: Vec<CommitBatch>) -> Result<(), StoreError> {
        let number = self.overlay.read().unwrap_or_else(|e| e.into_inner()).group + 1;
        pack_into(&mut self.record, &wal_entries(&group));
        let delete = self.wal_deletable;
        let deleted = write_group(
            &self.db,
            group.iter(),
            number,
            &self.record,
            delete,
            self.options.idempotency_window_ms,
        )?;
        if delete.is_some_and(|upto| deleted >= upto) {
            self.wal_deletable = None;
        }
        self.wal_bytes += self.record.len() as u64;
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
        // Encoded before the write lock: readers wait only for the inserts.
        let held: Vec<_> = states
            .into_iter()
            .flatten()
            .map(|(keyspace, key, state)| ((keyspace, key), Held::of(state.as_ref(), &mut self.buf)))
            .collect();
        let mut overlay = self.overlay.write().unwrap_or_else(|e| e.into_inner());
        for (k, held) in held {
            overlay.insert(k, held);
        }
        overlay.group = number;
        Ok(())
    }
}

/// The checkpointer thread: the only writer of the key-state database after open.
struct Checkpointer {
    kv_db: Arc<Database>,
    overlay: Arc<RwLock<Overlay>>,
    kv: Arc<RwLock<KvReader>>,
    poisoned: Arc<AtomicBool>,
    checkpoints: Arc<CheckpointCounters>,
    /// [`Options::checkpoint_keys_max`].
    keys_max: usize,
    /// [`Options::checkpoint_slice_keys`].
    slice_keys: usize,
    /// [`Options::key_filter_items_min`].
    key_filter_items_min: usize,
    /// Set by the committer when the next checkpoint is due (by keys or by write-ahead bytes)
    /// while this one runs: no more resting.
    hurry: Arc<AtomicBool>,
}

impl Checkpointer {
    /// Rests between two slices for `time`, or less: only while the next checkpoint is far from
    /// due ([`rest_allowed`]) and the committer has not said it is due (`hurry`); the committer
    /// unparks this thread when either changes. Under a write rate that fills the active layer
    /// as fast as this writes, resting would hold up the writers; and a slice that took long
    /// because the process or the disk stalled (a paused VM, SIGSTOP, a sync that hung) must not
    /// make the writers wait as long again: the committer waits for this checkpoint once the
    /// active layer holds twice [`Options::checkpoint_keys_max`] keys.
    fn rest(&self, time: std::time::Duration) {
        let until = std::time::Instant::now() + time;
        loop {
            let active = self.overlay.read().unwrap_or_else(|e| e.into_inner()).active.states.len();
            let now = std::time::Instant::now();
            if !rest_allowed(active, self.keys_max) || self.hurry.load(Ordering::SeqCst) || now >= until {
                return;
            }
            // Woken early by the committer's unpark (or spuriously): the loop looks again.
            std::thread::park_timeout(until - now);
        }
    }

    fn run(self, layers: Receiver<Arc<Layer>>, done: mpsc::Sender<Result<u64, ()>>) {
        while let Ok(layer) = layers.recv() {
            let result = self.checkpoint(&layer, true);
            if result.is_err() {
                // The frozen layer stays readable, but the database may refuse writes from now
                // on: stop, as after a failed group.
                self.poisoned.store(true, Ordering::SeqCst);
            }
            if done.send(result.map(|()| layer.group).map_err(drop)).is_err() {
                return;
            }
        }
    }

    /// Writes the frozen layer's states into `kv`, in durable slices, the last recording the
    /// group the layer covers ([`Checkpointer::checkpoint_txn`]); then shows `kv` to readers
    /// and drops the layer from the overlay.
    fn checkpoint(&self, layer: &Layer, rest: bool) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let result = self.checkpoint_txn(layer, rest);
        self.checkpoints.count.fetch_add(1, Ordering::Relaxed);
        self.checkpoints.micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        result?;
        // The filter of `kv`'s keys learns the checkpoint's keys before readers see the new
        // `kv`: into the one readers use, or into a new one built from `kv` as it is now
        // (this thread is its only writer), swapped in below.
        let reader = kv_reader(&self.kv_db)?;
        let keys = self.overlay.read().unwrap_or_else(|e| e.into_inner()).kv_keys.clone();
        let rebuilt = match keys {
            Some(keys) if !keys.full_after(layer.states.len()) => {
                for (keyspace, key) in
                    layer.states.iter().filter(|(_, held)| held.bytes.is_some()).map(|(k, _)| k)
                {
                    keys.add(keyspace.as_str(), key.as_str());
                }
                None
            }
            _ => Some(Arc::new(KvKeys::build(reader.as_ref(), self.key_filter_items_min)?)),
        };
        // Readers see the new `kv` before the overlay forgets what it now holds; both change
        // under the overlay's write lock, so a reader holding the read lock sees either both
        // before or both after.
        let mut overlay = self.overlay.write().unwrap_or_else(|e| e.into_inner());
        *self.kv.write().unwrap_or_else(|e| e.into_inner()) = reader;
        if let Some(keys) = rebuilt {
            overlay.kv_keys = Some(keys);
        }
        overlay.frozen = None;
        Ok(())
    }

    /// Writes the layer in slices of [`Options::checkpoint_slice_keys`] keys, one durable
    /// transaction each, resting as long as each slice took (at most [`CHECKPOINT_REST_MAX`])
    /// before the next while the next checkpoint is far from due ([`Checkpointer::rest`]): the
    /// checkpoint's disk writes and CPU are spread out instead of competing in one burst with
    /// the group commits, whose fsyncs wait behind whatever the disk has been given to write.
    /// Every slice is durable because redb keeps a non-durable commit's pages in its own write
    /// buffer (redb 4.6, `PagedCachedFile::write_barrier`): with only the last slice durable, a
    /// checkpoint into a large tree handed the disk hundreds of MB at once, and group commits
    /// waited 119–168 ms for it (docs/performance.md). Only the last slice records the group the checkpoint
    /// covers. A crash before it leaves `kv` with some keys as of this checkpoint and
    /// `checkpointed` naming the previous one; opening replays the write-ahead records after
    /// it, which still exist (they are deleted only once the last slice is durable), and
    /// replay is idempotent over states that are ahead: `KeyState::apply` skips an op the
    /// state covers, and a whole-state record overwrites, in commit order.
    fn checkpoint_txn(&self, layer: &Layer, rest: bool) -> Result<(), StoreError> {
        // In key order: each slice then touches one range of the B-tree's leaves, copying each
        // leaf once, instead of every slice touching leaves all over the tree.
        let mut states = key_order(&layer.states).peekable();
        loop {
            let started = std::time::Instant::now();
            let mut txn = self.kv_db.begin_write().map_err(db_err)?;
            let last;
            {
                let mut kv = txn.open_table(KV).map_err(db_err)?;
                let mut index = txn.open_table(TOMBSTONED).map_err(db_err)?;
                for ((keyspace, key), held) in states.by_ref().take(self.slice_keys.max(1)) {
                    let k = (keyspace.as_str(), key.as_str());
                    match &held.bytes {
                        Some(bytes) => kv.insert(k, &**bytes).map(drop),
                        None => kv.remove(k).map(drop),
                    }
                    .map_err(db_err)?;
                    if held.tombstoned {
                        index.insert(k, ()).map_err(db_err)?;
                    } else {
                        index.remove(k).map_err(db_err)?;
                    }
                }
                last = states.peek().is_none();
                if last {
                    let mut meta = txn.open_table(META).map_err(db_err)?;
                    meta.insert(CHECKPOINTED, encode(&layer.group).as_slice()).map_err(db_err)?;
                }
            }
            txn.set_durability(Durability::Immediate).map_err(db_err)?;
            txn.commit().map_err(db_err)?;
            if last {
                return Ok(());
            }
            if rest {
                self.rest(started.elapsed().min(CHECKPOINT_REST_MAX));
            }
        }
    }
}

/// The entries of `states` in `kv`'s key order: by keyspace, then by key.
///
/// Each key is read once, for its first 16 bytes, and the sort compares those, reading both
/// keys only when they tie: sorting the `(Keyspace, Key)` pairs themselves read two cold strings
/// per comparison, ~log2(n) of them per key, and took ~14 % of the checkpointer's CPU in the
/// profile of a 1M-SET run (docs/performance.md).
///
/// Holds 32 bytes per key while a checkpoint runs (the prefix and two references), each
/// keyspace's entries sorted as the checkpoint reaches them.
fn key_order<V>(
    states: &hashbrown::HashMap<(Keyspace, Key), V>,
) -> impl Iterator<Item = (&(Keyspace, Key), &V)> {
    /// The first 16 bytes of `s`, big-endian, zero-padded: `a < b` implies
    /// `prefix(a) <= prefix(b)`, so comparing prefixes first and the strings on a tie orders
    /// as the strings do.
    fn prefix(s: &str) -> u128 {
        let mut bytes = [0u8; 16];
        let n = s.len().min(16);
        bytes[..n].copy_from_slice(&s.as_bytes()[..n]);
        u128::from_be_bytes(bytes)
    }
    // Few keyspaces: group by keyspace first, so that each key's keyspace is compared
    // ~log2(keyspaces) times, not on every comparison of the sort.
    type Entry<'a, V> = (u128, &'a (Keyspace, Key), &'a V);
    let mut by_keyspace: BTreeMap<&Keyspace, Vec<Entry<'_, V>>> = BTreeMap::new();
    for (k, v) in states {
        by_keyspace.entry(&k.0).or_default().push((prefix(k.1.as_str()), k, v));
    }
    by_keyspace.into_values().flat_map(|mut entries| {
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1 .1.cmp(&b.1 .1)));
        entries.into_iter().map(|(_, k, v)| (k, v))
    })
}

/// Writes every batch of the group, as group `number` with write-ahead `record`, in one
/// transaction and returns once it is durable. With `delete`, the same transaction deletes the
/// oldest write-ahead records up to that group (a durable checkpoint covers them), at most
/// [`WAL_DELETE_RECORDS_MAX`] of them. Returns the group up to which records are deleted.
fn write_group<'a>(
    db: &Database,
    group: impl Iterator<Item = &'a CommitBatch> + Clone,
    number: u64,
    record: &[u8],
    delete: Option<u64>,
    idempotency_window_ms: u64,
) -> Result<u64, StoreError> {
    let mut txn = db.begin_write().map_err(db_err)?;
    txn.set_durability(Durability::Immediate).map_err(db_err)?;
    let deleted = {
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
        let (_, mut deleted): (u64, u64) = read_meta(&meta, WAL_POSITION)?;
        if let Some(upto) = delete.filter(|upto| *upto > deleted) {
            // The records up to `deleted` are gone: the range starts at the oldest one left.
            let bound = match wal.range(..=upto).map_err(db_err)?.nth(WAL_DELETE_RECORDS_MAX - 1) {
                Some(entry) => entry.map_err(db_err)?.0.value(),
                None => upto,
            };
            wal.retain_in(..=bound, |_, _| false).map_err(db_err)?;
            deleted = bound;
        }
        meta.insert(WAL_POSITION, encode(&(number, deleted)).as_slice()).map_err(db_err)?;
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
        deleted
    };
    txn.commit().map_err(db_err)?;
    Ok(deleted)
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
        let txn = self.kv_db.begin_read().map_err(db_err)?;
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
            if overlay.newest(KeyRef(&k.0, &k.1)).is_none() {
                stored.push(k);
            }
        }
        let newer = overlay.tombstoned_after(after, max);
        let mut keys: Vec<(Keyspace, Key)> = stored.into_iter().chain(newer).collect();
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
        // The overlay holds every state newer than `kv`. A checkpoint renews the `kv` reader
        // and drops its frozen layer under the overlay's write lock, so the reader taken under
        // the read lock holds every state the overlay does not.
        let kv = {
            let overlay = self.overlay();
            if let Some(held) = overlay.newest(KeyRef(keyspace, key)) {
                return held.state();
            }
            if overlay.kv_keys.as_ref().is_some_and(|keys| !keys.may_hold(keyspace.as_str(), key.as_str())) {
                return Ok(None);
            }
            self.kv.read().unwrap_or_else(|e| e.into_inner()).clone()
        };
        match kv.get((keyspace.as_str(), key.as_str())).map_err(db_err)? {
            Some(bytes) => Ok(Some(decode("key state", bytes.value())?)),
            None => Ok(None),
        }
    }

    fn tombstones_held(&self) -> Result<u64, StoreError> {
        self.check_usable()?;
        // The index of `kv`, corrected by the overlay's newer states (as in `key_count`).
        // Only tombstoned keys are walked (those of the index, and those of the overlay's
        // layers), not every key the overlay holds: this runs every few seconds under load,
        // while the overlay holds hundreds of thousands of keys.
        let overlay = self.overlay();
        let txn = self.kv_db.begin_read().map_err(db_err)?;
        let index = txn.open_table(TOMBSTONED).map_err(db_err)?;
        let corrupt = |e: mesh_core::IdError| StoreError::Corrupt { what: "key", detail: e.to_string() };
        let mut count = 0;
        // Keys of the index the overlay has no newer state for, or a tombstoned one.
        for entry in index.iter().map_err(db_err)? {
            let (k, _) = entry.map_err(db_err)?;
            let (ks, key) = k.value();
            let k = (Keyspace::new(ks).map_err(corrupt)?, Key::new(key).map_err(corrupt)?);
            let counted = overlay.newest(KeyRef(&k.0, &k.1)).is_none_or(|held| held.tombstoned);
            count += u64::from(counted);
        }
        // Keys the overlay's newest states tombstone and the index does not hold.
        for k in overlay.tombstoned_keys() {
            let indexed = index.get((k.0.as_str(), k.1.as_str())).map_err(db_err)?.is_some();
            count += u64::from(!indexed);
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
        for ((keyspace, key), held) in overlay.entries() {
            let stored = kv.get((keyspace.as_str(), key.as_str())).map_err(db_err)?.is_some();
            match (stored, held.bytes.is_some()) {
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
            // `kv` as of now: any checkpoint it includes covers states the overlay still holds
            // (newer or the same), and any it lacks left its layer in the overlay.
            let kv = self.kv_db.begin_read().map_err(db_err)?.open_table(KV).map_err(db_err)?;
            return Ok(Box::new(DurableSnapshot { vector, kv, overlay: overlay.merged()? }));
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

    /// Write-ahead records left in the main database, and the group they are deleted up to.
    fn wal_records(store: &DurableStore) -> (u64, u64) {
        let left = store.db.begin_read().unwrap().open_table(WAL).unwrap().len().unwrap();
        let (_, deleted): (u64, u64) = store.read_meta(WAL_POSITION).unwrap();
        (left, deleted)
    }

    proptest::proptest! {
        /// The checkpoint's order is `kv`'s: keyspace, then key, whatever the keys share.
        #[test]
        fn key_order_is_the_order_of_keyspace_then_key(
            entries in proptest::collection::vec(("[ab]{1,2}", "(key:0{0,14}|x|é)[0-9a-c~]{0,4}"), 0..200)
        ) {
            let states: hashbrown::HashMap<(Keyspace, Key), ()> = entries
                .iter()
                .map(|(ks, k)| ((Keyspace::new(ks.as_str()).unwrap(), Key::new(k.as_str()).unwrap()), ()))
                .collect();
            let mut expected: Vec<_> = states.keys().collect();
            expected.sort();
            let got: Vec<_> = key_order(&states).map(|(k, _)| k).collect();
            proptest::prop_assert_eq!(got, expected);
        }
    }

    #[test]
    fn covered_write_ahead_records_are_deleted_a_bounded_number_per_group_commit_until_none_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        let options = Options { checkpoint_keys_max: 200, checkpoint_slice_keys: 50, ..Options::default() };
        let store = DurableStore::open_with(&path, options).unwrap();
        let origin = DcId::new("us-east").unwrap();
        let mut deleted_before = 0;
        let mut deleted_in_one = 0;
        // One key per group commit: a checkpoint covers 200 records, more than one group
        // commit may delete.
        for seq in 1..=1_000u64 {
            let key = format!("k{seq}");
            store
                .commit(crate::testing::put_commit(&origin, seq, &key, crate::testing::value_for(&key, 8)))
                .unwrap();
            let (_, deleted) = wal_records(&store);
            deleted_in_one = deleted_in_one.max(deleted - deleted_before);
            deleted_before = deleted;
        }
        assert!(deleted_in_one > 0, "checkpoints covered records and some were deleted");
        assert!(
            deleted_in_one <= WAL_DELETE_RECORDS_MAX as u64,
            "one group commit deleted {deleted_in_one} records"
        );
        // Commits that carry nothing else go on deleting until no covered record is left.
        for _ in 0..20 {
            store.commit(CommitBatch::default()).unwrap();
        }
        // What is left: the records no durable checkpoint covers yet (the active layer's, and
        // a frozen one's while its checkpoint runs), at most two layers of 200 keys.
        let (left, deleted) = wal_records(&store);
        assert!(left <= 2 * 200 + 20, "{left} records left, deleted up to group {deleted}");
        // Covered records the store closed with are deleted by the first commits after it opens:
        // close it while a checkpoint runs (closing waits for it, and no commit deletes its
        // records).
        let mut last = 1_000u64;
        while store.overlay().frozen.is_none() {
            last += 1;
            assert!(last < 2_000, "a checkpoint starts every 200 keys");
            let key = format!("k{last}");
            store
                .commit(crate::testing::put_commit(&origin, last, &key, crate::testing::value_for(&key, 8)))
                .unwrap();
        }
        drop(store);
        let store = DurableStore::open_with(&path, options).unwrap();
        let checkpointed: u64 = {
            let txn = store.kv_db.begin_read().unwrap();
            read_meta(&txn.open_table(META).unwrap(), CHECKPOINTED).unwrap()
        };
        let (_, deleted) = wal_records(&store);
        assert!(deleted < checkpointed, "the store closed with covered records: {deleted} < {checkpointed}");
        for _ in 0..(200 / WAL_DELETE_RECORDS_MAX + 1) {
            store.commit(CommitBatch::default()).unwrap();
        }
        assert_eq!(wal_records(&store).1, checkpointed, "the covered records are deleted");
        for seq in [1u64, 199, 200, 201, 640, 1_000, last] {
            let key = format!("k{seq}");
            let state = store.get(&Keyspace::new("users").unwrap(), &Key::new(&key).unwrap()).unwrap();
            assert!(state.is_some(), "{key} is kept across the reopen");
        }
    }

    #[test]
    fn a_format_2_store_replays_its_whole_state_records_then_checkpoints_them_as_format_4() {
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

    #[test]
    fn a_format_3_store_moves_its_key_states_into_the_key_state_database_and_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        let (users, live, dead) =
            (Keyspace::new("users").unwrap(), Key::new("live").unwrap(), Key::new("dead").unwrap());
        let mut state = KeyState::new(ValueKind::Register);
        let op = |seq, kind| Op {
            dot: Dot::new(DcId::new("us-east").unwrap(), seq),
            hlc: Hlc::new(seq, 0),
            keyspace: users.clone(),
            key: live.clone(),
            kind,
            context: VersionVector::new(),
        };
        state.apply(&op(1, OpKind::Put(b"v".to_vec()))).unwrap();
        let mut tombstone = KeyState::new(ValueKind::Register);
        tombstone.apply(&op(2, OpKind::Delete)).unwrap();
        assert!(tombstone.has_tombstones());
        // What a format-3 meshd left: `kv` and its tombstone index in the main database,
        // checkpointed up to group 7.
        {
            let db = Database::builder().create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut kv = txn.open_table(KV).unwrap();
                kv.insert(("users", "live"), encode(&state).as_slice()).unwrap();
                kv.insert(("users", "dead"), encode(&tombstone).as_slice()).unwrap();
                txn.open_table(TOMBSTONED).unwrap().insert(("users", "dead"), ()).unwrap();
                let mut meta = txn.open_table(META).unwrap();
                meta.insert(WAL_POSITION, encode(&(7u64, 7u64)).as_slice()).unwrap();
                meta.insert(FORMAT, encode(&FORMAT_KV_INSIDE).as_slice()).unwrap();
                meta.insert(TOMBSTONED_INDEXED, encode(&true).as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        for round in 0..2u64 {
            let store = DurableStore::open(&path).unwrap();
            assert_eq!(store.read_meta::<u32>(FORMAT).unwrap(), FORMAT_VERSION);
            assert_eq!(store.get(&users, &live).unwrap(), Some(state.clone()));
            assert_eq!(store.get(&users, &dead).unwrap(), Some(tombstone.clone()));
            assert_eq!(store.key_count().unwrap(), 2 + round);
            assert_eq!(store.tombstones_held().unwrap(), 1);
            assert_eq!(store.scan_tombstoned(None, 10).unwrap().keys, vec![(users.clone(), dead.clone())]);
            // The next group commit carries on from group 7.
            let key = format!("other{round}");
            store
                .commit(crate::testing::put_commit(
                    &DcId::new("us-east").unwrap(),
                    3 + round,
                    &key,
                    b"w".to_vec(),
                ))
                .unwrap();
            drop(store);
            let db = Database::builder().create(&path).unwrap();
            let txn = db.begin_read().unwrap();
            assert!(
                open_if_exists(txn.open_table(KV)).unwrap().is_none(),
                "the main database no longer holds kv"
            );
        }
    }
}
