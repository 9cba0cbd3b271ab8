//! Tombstone-GC stability (DESIGN.md, "Tombstones"): which deletes every DC has seen, so their
//! tombstones can go without a concurrent write coming back to life.
//!
//! A tombstone may be collected once every DC has applied the delete *and* no write concurrent
//! with it is still on its way anywhere. Each peer reports its durable `seen` vector (its Acks,
//! its heartbeats, or relayed by another DC). A report `R` of peer `p` is usable only once this DC
//! has applied every op of `p` that `R` counts (`R[p] <= durable[p]`): otherwise `p` may have
//! written, concurrently with the delete, an op this DC has not applied yet. The stable vector is
//! the meet of this DC's durable vector and, per peer, its newest usable report; a peer without a
//! usable report stops collection.
//!
//! [`Reports`] keeps a peer's recent reports; [`stable_vector`] computes the vector and drops the
//! reports older than the one chosen (this DC's durable vector only grows, so they are never
//! chosen again).

use mesh_core::{DcId, VersionVector};
use std::collections::VecDeque;

/// Most reports kept per peer; the oldest goes first.
pub const REPORTS_MAX: usize = 64;

/// One peer's recent reports of its durable vector, oldest first.
#[derive(Debug, Clone, Default)]
pub struct Reports {
    reports: VecDeque<VersionVector>,
}

impl Reports {
    /// The peer reported `seen` (a repeat of the newest report is not kept twice).
    pub fn record(&mut self, seen: VersionVector) {
        if self.reports.back() != Some(&seen) {
            self.reports.push_back(seen);
        }
        while self.reports.len() > REPORTS_MAX {
            self.reports.pop_front();
        }
    }

    /// Reports kept.
    pub fn len(&self) -> usize {
        self.reports.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.reports.is_empty()
    }
}

/// The vector below which tombstones are stable (see the module docs), or `None` while a peer
/// has no usable report. `peers` gives each peer with its reports.
pub fn stable_vector<'a>(
    durable: &VersionVector,
    peers: impl IntoIterator<Item = (&'a DcId, &'a mut Reports)>,
) -> Option<VersionVector> {
    let mut stable = durable.clone();
    for (peer, reports) in peers {
        let own = durable.get(peer);
        let i = reports.reports.iter().rposition(|r| r.get(peer) <= own)?;
        reports.reports.drain(..i);
        stable.meet(&reports.reports[0]);
    }
    Some(stable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dc(s: &str) -> DcId {
        DcId::new(s).expect("valid")
    }

    fn vv(a: u64, b: u64) -> VersionVector {
        let mut v = VersionVector::new();
        v.raise(&dc("a"), a);
        v.raise(&dc("b"), b);
        v
    }

    #[test]
    fn a_report_counting_unapplied_peer_ops_is_not_used() {
        let b = dc("b");
        let mut reports = Reports::default();
        reports.record(vv(3, 2));
        reports.record(vv(5, 4));
        // This DC applied b's ops up to 2 only: the newer report may hide a write of b
        // concurrent with a delete.
        assert_eq!(stable_vector(&vv(9, 2), [(&b, &mut reports)]), Some(vv(3, 2)));
        assert_eq!(stable_vector(&vv(9, 4), [(&b, &mut reports)]), Some(vv(5, 4)));
        assert_eq!(reports.len(), 1, "older reports are dropped once a newer one is used");
    }

    #[test]
    fn a_peer_without_a_usable_report_stops_collection() {
        let b = dc("b");
        let mut reports = Reports::default();
        assert_eq!(stable_vector(&vv(1, 1), [(&b, &mut reports)]), None);
        reports.record(vv(1, 3));
        assert_eq!(stable_vector(&vv(1, 1), [(&b, &mut reports)]), None);
    }

    #[test]
    fn at_most_reports_max_are_kept() {
        let mut reports = Reports::default();
        for i in 0..(REPORTS_MAX as u64 + 10) {
            reports.record(vv(i, 0));
            reports.record(vv(i, 0));
        }
        assert_eq!(reports.len(), REPORTS_MAX);
    }

    proptest! {
        /// Against a naive model that keeps every report: the stable vector is the meet of the
        /// durable vector and the newest usable report, it never passes the durable vector, and
        /// dropping old reports never changes an answer.
        #[test]
        fn stable_matches_a_model_keeping_every_report(
            steps in proptest::collection::vec((0u64..4, 0u64..4, 0u64..4, any::<bool>()), 1..60),
        ) {
            let b = dc("b");
            let mut reports = Reports::default();
            let mut all: Vec<VersionVector> = Vec::new();
            let (mut durable, mut peer) = (vv(0, 0), vv(0, 0));
            for (da, db, pb, compute) in steps {
                durable.join(&vv(durable.get(&dc("a")) + da, durable.get(&b) + db));
                // The peer holds some of this DC's ops and some of its own, possibly ahead.
                peer.join(&vv(durable.get(&dc("a")).saturating_sub(da), peer.get(&b) + pb));
                reports.record(peer.clone());
                if all.last() != Some(&peer) {
                    all.push(peer.clone());
                }
                if all.len() > REPORTS_MAX {
                    // The model keeps as many as the machine may.
                    all.remove(0);
                }
                if compute {
                    let model = all.iter().rev().find(|r| r.get(&b) <= durable.get(&b)).map(|r| {
                        let mut s = durable.clone();
                        s.meet(r);
                        s
                    });
                    let got = stable_vector(&durable, [(&b, &mut reports)]);
                    prop_assert_eq!(&got, &model);
                    if let Some(s) = got {
                        prop_assert!(durable.dominates(&s));
                    }
                }
            }
        }
    }
}
