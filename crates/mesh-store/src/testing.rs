//! Test and benchmark support: a storage backend that loses power, and commits shaped like the
//! engine's.
//!
//! kill -9 leaves the OS page cache intact, so a store that forgot to fsync still looks durable
//! after it. [`PowerLossDisk`] is a redb [`StorageBackend`] that remembers, apart from what
//! reads see, what the last `sync_data` made durable, and on [`PowerSwitch::cut`] returns the
//! disk image a power loss would leave: the durable bytes plus, at most, a prefix of the writes
//! issued since (a disk may have written some of them, in order, before the power went).

use crate::CommitBatch;
use mesh_core::{DcId, Dot, Hlc, Key, KeyState, Keyspace, Op, OpKind, ValueKind, VersionVector};
use redb::StorageBackend;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Debug)]
enum Pending {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Default)]
struct Disk {
    /// What reads see (the page cache).
    current: Vec<u8>,
    /// What the last sync made durable.
    durable: Vec<u8>,
    /// Writes and resizes since the last sync, in issue order.
    pending: Vec<Pending>,
    /// Power is off: every call fails.
    dead: bool,
    syncs: u64,
}

fn apply(image: &mut Vec<u8>, p: &Pending) {
    match p {
        Pending::Write { offset, data } => {
            let end = *offset as usize + data.len();
            if image.len() < end {
                image.resize(end, 0);
            }
            image[*offset as usize..end].copy_from_slice(data);
        }
        Pending::SetLen(len) => image.resize(*len as usize, 0),
    }
}

/// A disk image in memory that can lose power. See the module docs.
#[derive(Debug, Clone)]
pub struct PowerLossDisk {
    disk: Arc<Mutex<Disk>>,
}

/// The power switch of a [`PowerLossDisk`], kept by the test after the disk went to redb.
#[derive(Debug, Clone)]
pub struct PowerSwitch {
    disk: Arc<Mutex<Disk>>,
}

impl PowerLossDisk {
    /// A disk holding `image`, all of it durable (an empty image for a new database).
    pub fn from_image(image: Vec<u8>) -> Self {
        let disk = Disk { current: image.clone(), durable: image, ..Disk::default() };
        Self { disk: Arc::new(Mutex::new(disk)) }
    }

    /// The switch that cuts this disk's power.
    pub fn switch(&self) -> PowerSwitch {
        PowerSwitch { disk: self.disk.clone() }
    }

    fn lock(&self) -> io::Result<MutexGuard<'_, Disk>> {
        let disk = self.disk.lock().map_err(|_| io::Error::other("disk lock poisoned"))?;
        if disk.dead {
            return Err(io::Error::other("power is off"));
        }
        Ok(disk)
    }
}

impl PowerSwitch {
    /// Cuts the power: from now on every call to the disk fails. Returns the image that
    /// survives: the durable bytes plus the first `keep_unsynced` writes issued since the last
    /// sync (fewer if fewer were issued).
    pub fn cut(&self, keep_unsynced: usize) -> Vec<u8> {
        let mut disk = self.disk.lock().unwrap_or_else(|e| e.into_inner());
        disk.dead = true;
        let mut image = disk.durable.clone();
        for p in disk.pending.iter().take(keep_unsynced) {
            apply(&mut image, p);
        }
        image
    }

    /// Cuts the power, as [`PowerSwitch::cut`], but a disk that reorders: every 4 KiB sector of
    /// every write issued since the last sync (and every resize) survives or not as `keep`
    /// says, independently, in issue order. Models a disk that wrote some later sectors and not
    /// some earlier ones, and writes torn at sector boundaries.
    pub fn cut_sectors(&self, mut keep: impl FnMut() -> bool) -> Vec<u8> {
        const SECTOR_BYTES: u64 = 4096;
        let mut disk = self.disk.lock().unwrap_or_else(|e| e.into_inner());
        disk.dead = true;
        let mut image = disk.durable.clone();
        for p in &disk.pending {
            match p {
                Pending::SetLen(_) => {
                    if keep() {
                        apply(&mut image, p);
                    }
                }
                Pending::Write { offset, data } => {
                    let mut at = 0usize;
                    while at < data.len() {
                        let abs = offset + at as u64;
                        let sector_end = ((abs / SECTOR_BYTES) + 1) * SECTOR_BYTES;
                        let end = data.len().min(at + (sector_end - abs) as usize);
                        if keep() {
                            let piece = Pending::Write { offset: abs, data: data[at..end].to_vec() };
                            apply(&mut image, &piece);
                        }
                        at = end;
                    }
                }
            }
        }
        image
    }

    /// Writes issued since the last sync.
    pub fn unsynced_writes(&self) -> usize {
        self.disk.lock().unwrap_or_else(|e| e.into_inner()).pending.len()
    }

    /// Number of completed syncs.
    pub fn syncs(&self) -> u64 {
        self.disk.lock().unwrap_or_else(|e| e.into_inner()).syncs
    }
}

impl StorageBackend for PowerLossDisk {
    fn len(&self) -> io::Result<u64> {
        Ok(self.lock()?.current.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let disk = self.lock()?;
        let end = offset as usize + out.len();
        let src =
            disk.current.get(offset as usize..end).ok_or_else(|| io::Error::other("read past the end"))?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut disk = self.lock()?;
        let p = Pending::SetLen(len);
        apply(&mut disk.current, &p);
        disk.pending.push(p);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut disk = self.lock()?;
        let pending = std::mem::take(&mut disk.pending);
        for p in &pending {
            apply(&mut disk.durable, p);
        }
        debug_assert_eq!(disk.durable, disk.current);
        disk.syncs += 1;
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut disk = self.lock()?;
        let p = Pending::Write { offset, data: data.to_vec() };
        apply(&mut disk.current, &p);
        disk.pending.push(p);
        Ok(())
    }
}

/// A deterministic value of `len` bytes derived from `key`, so a reader can check what it got.
pub fn value_for(key: &str, len: usize) -> Vec<u8> {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in key.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    (0..len).map(|i| (h.rotate_left(i as u32 % 64) as u8) ^ (i as u8)).collect()
}

/// The commit the engine would make for a put of `value` to `users/key` by `origin` at `seq`:
/// the log entry, the key's new state and the advanced `seen`.
pub fn put_commit(origin: &DcId, seq: u64, key: &str, value: Vec<u8>) -> CommitBatch {
    let op = Op {
        dot: Dot::new(origin.clone(), seq),
        hlc: Hlc::new(1_700_000_000_000 + seq, 0),
        keyspace: Keyspace::new("users").expect("valid keyspace"),
        key: Key::new(key).expect("valid key"),
        kind: OpKind::Put(value),
        context: VersionVector::new(),
    };
    let mut state = KeyState::new(ValueKind::Register);
    state.apply(&op).expect("a put applies to a register");
    let mut seen = VersionVector::new();
    seen.observe(&op.dot);
    CommitBatch {
        states: vec![(op.keyspace.clone(), op.key.clone(), Some(state))],
        ops: vec![op],
        seen,
        acked: vec![],
        idempotency: vec![],
        identity: None,
        states_from_ops: vec![],
    }
}
