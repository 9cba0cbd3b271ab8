//! Replication lag as each op lives it: the time from the op's durable commit at its origin to
//! its durable apply at this DC.
//!
//! The origin tells: every batch a DC sends carries, for the sender's own ops in it, when the
//! sender's group commits made them durable ([`mesh_wire::Batch::commit_times`], wall clock in
//! µs). This DC remembers those per origin, and when a persist holding that origin's ops is
//! durable here, it records `now − origin commit` per op. Ops relayed by a third DC carry no
//! commit time and are not recorded (in a full mesh almost every op arrives from its origin).
//! Loopback DCs share one clock, so the figure is exact there; across machines it is off by the
//! clocks' offset (status shows each peer's).

use mesh_core::{DcId, Op};
use mesh_engine::resolver::PersistId;
use mesh_wire::{Batch, CommitTime};
use std::collections::{BTreeMap, VecDeque};

/// Commit times remembered per origin (this DC's own included); older ones are dropped.
const TIMES_MAX: usize = 65_536;

/// The ops of one persist that lag is measured on.
#[derive(Debug, Default)]
struct PersistOps {
    /// The highest own seq it makes durable.
    own_last: Option<u64>,
    /// Other origins' ops it applies: (origin, first seq, last seq), in op order.
    remote: Vec<(DcId, u64, u64)>,
}

/// One DC's bookkeeping for the lag histogram. Call order: [`ReplicationLag::on_persist`]
/// before submitting a persist, [`ReplicationLag::on_committed`] when it is durable;
/// [`ReplicationLag::annotate`] on every batch sent, [`ReplicationLag::on_received`] on every
/// batch received.
#[derive(Debug)]
pub struct ReplicationLag {
    local: DcId,
    /// This DC's commits, ascending by last seq.
    own: VecDeque<CommitTime>,
    /// Each origin's commits as its batches reported them, ascending by last seq.
    received: BTreeMap<DcId, VecDeque<CommitTime>>,
    persists: BTreeMap<PersistId, PersistOps>,
}

impl ReplicationLag {
    /// Bookkeeping for DC `local`.
    pub fn new(local: DcId) -> Self {
        Self { local, own: VecDeque::new(), received: BTreeMap::new(), persists: BTreeMap::new() }
    }

    /// Persist `id` is about to be submitted with these ops.
    pub fn on_persist(&mut self, id: PersistId, ops: &[Op]) {
        let mut p = PersistOps::default();
        for op in ops {
            let seq = op.dot.seq;
            if op.dot.origin == self.local {
                p.own_last = Some(p.own_last.map_or(seq, |s| s.max(seq)));
                continue;
            }
            match p.remote.last_mut() {
                Some((origin, _, last)) if *origin == op.dot.origin && *last + 1 == seq => *last = seq,
                _ => p.remote.push((op.dot.origin.clone(), seq, seq)),
            }
        }
        if p.own_last.is_some() || !p.remote.is_empty() {
            self.persists.insert(id, p);
        }
    }

    /// Persist `id` is durable since `unix_us`. Returns the lags to record: (origin, lag in µs,
    /// number of ops).
    pub fn on_committed(&mut self, id: PersistId, unix_us: u64) -> Vec<(DcId, u64, u64)> {
        let Some(p) = self.persists.remove(&id) else { return Vec::new() };
        if let Some(last_seq) = p.own_last {
            push(&mut self.own, CommitTime { last_seq, unix_us });
        }
        let mut lags = Vec::new();
        for (origin, first, last) in p.remote {
            let Some(times) = self.received.get_mut(&origin) else { continue };
            // Ops of an origin are applied in seq order: what lies below `first` is done with.
            while times.front().is_some_and(|t| t.last_seq < first) {
                times.pop_front();
            }
            let mut seq = first;
            for t in times.iter() {
                if seq > last {
                    break;
                }
                let upto = t.last_seq.min(last);
                if upto >= seq {
                    lags.push((origin.clone(), unix_us.saturating_sub(t.unix_us), upto - seq + 1));
                    seq = upto + 1;
                }
            }
        }
        lags
    }

    /// Fills `batch.commit_times` for this DC's own ops in it.
    pub fn annotate(&self, batch: &mut Batch) {
        let mut seqs = batch.ops.iter().filter(|op| op.dot.origin == self.local).map(|op| op.dot.seq);
        let Some(first) = seqs.next() else { return };
        let last = seqs.fold(first, u64::max);
        let start = self.own.partition_point(|t| t.last_seq < first);
        for t in self.own.iter().skip(start) {
            batch.commit_times.push(*t);
            if t.last_seq >= last {
                break;
            }
        }
    }

    /// A batch from `peer` arrived with these commit times of `peer`'s own ops.
    pub fn on_received(&mut self, peer: &DcId, times: &[CommitTime]) {
        let known = self.received.entry(peer.clone()).or_default();
        for t in times {
            // Resent batches repeat times already known.
            if known.back().is_none_or(|b| b.last_seq < t.last_seq) {
                push(known, *t);
            }
        }
    }
}

fn push(times: &mut VecDeque<CommitTime>, t: CommitTime) {
    if times.len() == TIMES_MAX {
        times.pop_front();
    }
    times.push_back(t);
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::{Dot, Hlc, Key, Keyspace, OpKind, VersionVector};

    fn op(origin: &str, seq: u64) -> Op {
        Op {
            dot: Dot::new(DcId::new(origin).unwrap(), seq),
            hlc: Hlc::new(1, 0),
            keyspace: Keyspace::new("users").unwrap(),
            key: Key::new("k").unwrap(),
            kind: OpKind::Delete,
            context: VersionVector::new(),
        }
    }

    #[test]
    fn each_op_lags_from_its_origin_commit_to_its_commit_here() {
        let east = DcId::new("us-east").unwrap();
        let (mut origin, mut here) =
            (ReplicationLag::new(east.clone()), ReplicationLag::new(DcId::new("us-west").unwrap()));
        // us-east commits ops 1..=3 at t=1,000 µs and 4..=5 at t=3,000 µs.
        origin.on_persist(PersistId(1), &[op("us-east", 1), op("us-east", 2), op("us-east", 3)]);
        assert!(origin.on_committed(PersistId(1), 1_000).is_empty(), "own ops have no lag");
        origin.on_persist(PersistId(2), &[op("us-east", 4), op("us-east", 5)]);
        origin.on_committed(PersistId(2), 3_000);
        // One batch with ops 2..=5 reports both commits.
        let mut batch =
            Batch { ops: (2..=5).map(|s| op("us-east", s)).collect(), trace: None, commit_times: vec![] };
        origin.annotate(&mut batch);
        assert_eq!(
            batch.commit_times,
            [CommitTime { last_seq: 3, unix_us: 1_000 }, CommitTime { last_seq: 5, unix_us: 3_000 }]
        );
        here.on_received(&east, &batch.commit_times);
        here.on_received(&east, &batch.commit_times);
        // us-west applies them with one of its own ops and commits at t=5,500 µs.
        here.on_persist(
            PersistId(7),
            &[op("us-east", 2), op("us-east", 3), op("us-west", 1), op("us-east", 4), op("us-east", 5)],
        );
        let lags = here.on_committed(PersistId(7), 5_500);
        assert_eq!(lags, [(east.clone(), 4_500, 2), (east.clone(), 2_500, 2)]);
        // An origin that reported nothing is not measured.
        here.on_persist(PersistId(8), &[op("eu-central", 1)]);
        assert!(here.on_committed(PersistId(8), 6_000).is_empty());
    }
}
