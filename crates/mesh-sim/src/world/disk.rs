//! The simulated disk of each DC, around its [`MemStore`]: the commits a node persists are
//! staged and synced together after the disk's commit latency (group commit), a compaction is a
//! durable transaction of its own that runs later, concurrently with the node, and is lost if the
//! process crashes first, a power loss keeps a random prefix of the unsynced commits,
//! and a lost disk comes back empty. It also answers what each DC holds durably, for the
//! checkers. When a DC crashes or loses its disk is up to [`super::faults`].

use super::{Event, World};
use crate::checkers;
use mesh_core::{DcId, Dot, Op, VersionVector};
use mesh_engine::resolver::PersistId;
use mesh_engine::CommitBatch;
use mesh_engine::MonoMs;
use mesh_store::{LogRead, MemStore, Store};
use rand::Rng;

/// The bookkeeping of one DC's disk, beside the store itself.
#[derive(Default)]
pub(super) struct Disk {
    /// Persists staged and not yet reported committed, in order, with their own ops and whether
    /// they are durable already (a compaction synced them).
    staged: Vec<(PersistId, Vec<Op>, bool)>,
    sync_pending: bool,
    /// What its stores held before each disk loss (`disk-lost` faults), joined.
    seen_before_disk_loss: VersionVector,
    /// After a disk loss, the highest of its own seqs a peer held: its own seqs above are free.
    own_held_after_loss: Option<u64>,
    disks_lost: u32,
}

impl World {
    /// `dc`'s node persists `batch` as commit `id`: the store stages it, and a sync follows
    /// after the disk's commit latency unless one is pending already (group commit).
    pub(super) fn persist(&mut self, dc: usize, id: PersistId, batch: CommitBatch) {
        let local: Vec<Op> =
            batch.ops.iter().filter(|op| op.dot.origin == self.dcs[dc].id).cloned().collect();
        self.hash(&[3, dc as u64, id.0, batch.ops.len() as u64]);
        for op in &local {
            self.hash(&[op.dot.seq]);
            self.dcs[dc].named.insert(op.dot.clone(), op.clone());
        }
        let d = &mut self.dcs[dc];
        d.store.stage(batch);
        d.disk.staged.push((id, local, false));
        if !d.disk.sync_pending {
            d.disk.sync_pending = true;
            let disk = &self.scenario.file.disk;
            let latency = disk.commit_latency_ms + self.rng.random_range(0..=disk.commit_jitter_ms);
            let incarnation = self.dcs[dc].incarnation;
            self.schedule(self.now_ms + latency.max(1), Event::Sync { dc, incarnation });
        }
    }

    /// The disk synced what `dc` staged (unless its process crashed since): its own ops are
    /// durable at their origin and the node hears of each commit, in order.
    pub(super) fn sync(&mut self, dc: usize, incarnation: u32) {
        let d = &mut self.dcs[dc];
        if d.incarnation != incarnation || d.node.is_none() {
            return;
        }
        d.disk.sync_pending = false;
        d.store.sync();
        let staged = std::mem::take(&mut d.disk.staged);
        self.hash(&[6, dc as u64, staged.len() as u64]);
        for (_, ops, _) in &staged {
            for op in ops {
                self.history.durable_at_origin(op, self.now_ms);
            }
        }
        let now = MonoMs(self.now_ms);
        for (id, _, _) in staged {
            let d = &mut self.dcs[dc];
            let Some(node) = d.node.as_mut() else { return };
            node.handle_committed(now, id, &d.store);
            self.after(dc);
        }
    }

    /// `dc`'s node asked for its log to be compacted below `below`. As [`Effect::Compact`]'s
    /// contract allows, it runs later, beside whatever the node does meanwhile (after the disk's
    /// commit latency, like a transaction of its own), and a crash before then loses it.
    ///
    /// [`Effect::Compact`]: mesh_engine::node::Effect::Compact
    pub(super) fn schedule_compact(&mut self, dc: usize, below: VersionVector) {
        let disk = &self.scenario.file.disk;
        let latency = disk.commit_latency_ms + self.rng.random_range(0..=disk.commit_jitter_ms);
        let incarnation = self.dcs[dc].incarnation;
        self.schedule(self.now_ms + latency.max(1), Event::Compact { dc, incarnation, below });
    }

    /// `dc`'s compaction below `below` runs, unless its process crashed since it was asked for.
    pub(super) fn compact(&mut self, dc: usize, incarnation: u32, below: &VersionVector) {
        let d = &self.dcs[dc];
        if d.incarnation != incarnation || d.node.is_none() {
            return;
        }
        // Compaction is its own durable transaction, after everything staged before it:
        // the staged ops are durable from here on, though their commits are reported at
        // the next sync as usual.
        for (_, ops, synced) in &mut self.dcs[dc].disk.staged {
            *synced = true;
            for op in ops.iter() {
                self.history.durable_at_origin(op, self.now_ms);
            }
        }
        checkers::retention::check_compaction(self, dc, below);
        self.dcs[dc].store.compact_log(below).expect("the memory store compacts");
    }

    /// The power went at `dc`: its store keeps a random prefix of the unsynced commits and
    /// nothing staged is reported. Returns how many it kept, of how many.
    pub(super) fn power_loss(&mut self, dc: usize) -> (usize, usize) {
        let d = &mut self.dcs[dc];
        let unsynced = d.store.unsynced();
        let keep = self.rng.random_range(0..=unsynced);
        let d = &mut self.dcs[dc];
        d.store.crash(keep);
        let staged = std::mem::take(&mut d.disk.staged);
        d.disk.sync_pending = false;
        // The kept prefix of the unsynced commits is durable now, as a real disk may have
        // written it before the power went.
        for (_, ops, _) in staged.iter().filter(|(_, _, synced)| !synced).take(keep) {
            for op in ops {
                self.history.durable_at_origin(op, self.now_ms);
            }
        }
        (keep, unsynced)
    }

    /// `dc` (down) lost its disk: it comes back empty, and what it held is remembered.
    pub(super) fn lose_disk(&mut self, dc: usize) {
        let d = &mut self.dcs[dc];
        d.disk.seen_before_disk_loss.join(&d.store.seen().expect("the memory store reads"));
        d.disk.disks_lost += 1;
        d.store = MemStore::new();
    }

    /// `dc` lost its disk: its own ops that no other DC holds durably are gone for good. The
    /// history forgets them (their acknowledged writes are excused, and their seqs are free to
    /// be named again, since nobody holds the old ops); what a peer holds must come back.
    pub(super) fn forget_lost_with_disk(&mut self, dc: usize) {
        let origin = self.dcs[dc].id.clone();
        let held = (0..self.dcs.len())
            .filter(|&i| i != dc)
            .map(|i| self.dcs[i].store.seen().expect("the memory store reads").get(&origin))
            .max()
            .unwrap_or(0);
        let lost: Vec<Dot> =
            self.history.ops.keys().filter(|d| d.origin == origin && d.seq > held).cloned().collect();
        for dot in &lost {
            let op = self.history.ops.remove(dot).expect("listed");
            self.history.durable_ms.remove(dot);
            self.history.lost_with_disk.push(op);
        }
        // Its own seqs past what the peers held are free again: what it held of them before the
        // loss must not vouch for the new ops named with them (the sync-acks checker).
        self.dcs[dc].disk.own_held_after_loss = Some(held);
        self.hash(&[11, dc as u64, lost.len() as u64]);
        if self.options.trace {
            self.note(format!("{origin} lost {} ops no peer held with its disk", lost.len()));
        }
    }

    /// The durable `seen` vector of every DC (down ones included: their store survives).
    pub(crate) fn durable_seen(&self) -> Vec<VersionVector> {
        self.dcs.iter().map(|d| d.store.seen().expect("the memory store reads")).collect()
    }

    /// Per DC, what its acks can vouch for: [`World::durable_seen_ever`], but of its own ops
    /// after a disk loss only those a peer held (its seqs above are named again).
    pub(crate) fn durable_seen_for_acks(&self) -> Vec<VersionVector> {
        let mut seen = self.durable_seen();
        for (s, d) in seen.iter_mut().zip(&self.dcs) {
            let before = d.disk.seen_before_disk_loss.iter().map(|(o, seq)| {
                let cap = if *o == d.id { d.disk.own_held_after_loss.unwrap_or(seq) } else { seq };
                (o.clone(), seq.min(cap))
            });
            s.join(&before.collect());
        }
        seen
    }

    /// Whether `dc` lost its disk and `lost` (what a peer says it no longer holds) is within what
    /// it held before the loss: a regression the disk loss explains. (A later one, of ops it
    /// acknowledged after, is not excused.)
    pub(super) fn recovering_from_disk_loss(&self, dc: &DcId, lost: &VersionVector) -> bool {
        self.dcs
            .iter()
            .any(|d| d.id == *dc && d.disk.disks_lost > 0 && d.disk.seen_before_disk_loss.dominates(lost))
    }

    /// Per DC, every op it ever held durably: its `seen` joined with what it held before each
    /// disk loss (a compaction below what a DC then held was right, even if it lost it since).
    pub(crate) fn durable_seen_ever(&self) -> Vec<VersionVector> {
        let mut seen = self.durable_seen();
        for (s, d) in seen.iter_mut().zip(&self.dcs) {
            s.join(&d.disk.seen_before_disk_loss);
        }
        seen
    }
}
