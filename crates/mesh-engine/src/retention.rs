//! Log retention: how far the op log may be compacted.
//!
//! The floor (DESIGN.md, "Durability rules": the log keeps what a peer still needs) is the meet
//! of this DC's durable vector and what every peer is known to hold durably, so no peer ever
//! needs a state transfer in a healthy mesh. Two caps may raise it, because a DC cut off for
//! long must not make the others' disks fill:
//! - `log_retention_age_ms`: ops this DC has held longer than that go, needed or not;
//! - `log_retention_bytes`: once the log is larger, everything only peers *without a link* still
//!   need goes (they catch up by state transfer); never what a connected peer lacks.
//!
//! [`compaction_floor`] is the rule as a pure function; [`Retention`] keeps the samples that
//! date this DC's durable vector and emits a floor only when it moved.

use mesh_core::VersionVector;
use std::collections::VecDeque;

/// What the floor knows of one peer.
#[derive(Debug, Clone, Copy)]
pub struct PeerHolding<'a> {
    /// What the peer is known to hold durably (empty: unknown).
    pub known: &'a VersionVector,
    /// Whether a link to it is open.
    pub connected: bool,
}

/// The log floor (see the module docs): entries at or below it may be removed. `aged` is this DC's
/// durable vector as it was `log_retention_age_ms` ago, if it is that old; `over_cap` whether the
/// log exceeds `log_retention_bytes`.
///
/// Without `aged`, the floor never exceeds what a connected peer holds, nor (without `over_cap`)
/// what any peer holds.
pub fn compaction_floor(
    durable: &VersionVector,
    peers: &[PeerHolding<'_>],
    aged: Option<&VersionVector>,
    over_cap: bool,
) -> VersionVector {
    let mut floor = durable.clone();
    for p in peers {
        floor.meet(p.known);
    }
    raise_floor(floor, durable, peers, aged, over_cap)
}

/// The caps' part of [`compaction_floor`], over a `floor` computed without them.
fn raise_floor(
    mut floor: VersionVector,
    durable: &VersionVector,
    peers: &[PeerHolding<'_>],
    aged: Option<&VersionVector>,
    over_cap: bool,
) -> VersionVector {
    if let Some(aged) = aged {
        floor.join(aged);
    }
    if over_cap {
        // Over the cap: give up what only peers without a link need, never what connected peers
        // still lack.
        let mut connected = durable.clone();
        for p in peers.iter().filter(|p| p.connected) {
            connected.meet(p.known);
        }
        floor.join(&connected);
    }
    floor
}

/// The floor's state: dated samples of the durable vector, and the floor already emitted.
#[derive(Debug, Clone)]
pub struct Retention {
    age_ms: u64,
    bytes_max: u64,
    /// (time, durable vector) samples, oldest first; one per `age_ms / 64` at most.
    samples: VecDeque<(u64, VersionVector)>,
    compacted_below: VersionVector,
}

impl Retention {
    /// Retention for `log_retention_age_ms` and `log_retention_bytes`.
    pub fn new(age_ms: u64, bytes_max: u64) -> Self {
        Self { age_ms, bytes_max, samples: VecDeque::new(), compacted_below: VersionVector::new() }
    }

    /// The runtime failed to compact to the last floor: the next tick emits it again.
    pub fn handle_failed(&mut self) {
        self.compacted_below = VersionVector::new();
    }

    /// The floor at `now_ms`, if it rose above the last one returned. `log_bytes` is the log's
    /// size now; `lagging_peer_planted` is the test-only bug that compacts to the most advanced
    /// peer instead of the least.
    pub fn handle_tick(
        &mut self,
        now_ms: u64,
        durable: &VersionVector,
        peers: &[PeerHolding<'_>],
        log_bytes: u64,
        lagging_peer_planted: bool,
    ) -> Option<VersionVector> {
        let step_ms = (self.age_ms / 64).max(1);
        if self.samples.back().is_none_or(|(t, _)| now_ms >= t + step_ms) {
            self.samples.push_back((now_ms, durable.clone()));
        }
        while self.samples.get(1).is_some_and(|(t, _)| t + self.age_ms <= now_ms) {
            self.samples.pop_front();
        }
        let aged = self.samples.front().filter(|(t, _)| t + self.age_ms <= now_ms).map(|(_, v)| v);
        let over_cap = log_bytes > self.bytes_max;
        let floor = if lagging_peer_planted {
            let mut most = VersionVector::new();
            peers.iter().for_each(|p| most.join(p.known));
            let mut floor = durable.clone();
            floor.meet(&most);
            raise_floor(floor, durable, peers, aged, over_cap)
        } else {
            compaction_floor(durable, peers, aged, over_cap)
        };
        if self.compacted_below.dominates(&floor) {
            return None;
        }
        self.compacted_below.join(&floor);
        Some(floor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::DcId;
    use proptest::prelude::*;

    fn vv(entries: &[(&str, u64)]) -> VersionVector {
        let mut v = VersionVector::new();
        for (dc, seq) in entries {
            v.raise(&DcId::new(*dc).expect("valid"), *seq);
        }
        v
    }

    fn arb_vv() -> impl Strategy<Value = VersionVector> {
        (0u64..20, 0u64..20, 0u64..20).prop_map(|(a, b, c)| vv(&[("a", a), ("b", b), ("c", c)]))
    }

    #[test]
    fn a_peer_never_heard_from_holds_the_log() {
        let durable = vv(&[("a", 10)]);
        let unknown = VersionVector::new();
        let peers = [PeerHolding { known: &unknown, connected: false }];
        assert!(compaction_floor(&durable, &peers, None, false).is_empty());
    }

    #[test]
    fn the_age_cap_forces_what_is_old_enough() {
        let mut r = Retention::new(1_000, u64::MAX);
        let unknown = VersionVector::new();
        let peers = [PeerHolding { known: &unknown, connected: false }];
        assert_eq!(r.handle_tick(0, &vv(&[("a", 5)]), &peers, 0, false), None);
        assert_eq!(r.handle_tick(500, &vv(&[("a", 8)]), &peers, 0, false), None);
        assert_eq!(r.handle_tick(1_000, &vv(&[("a", 9)]), &peers, 0, false), Some(vv(&[("a", 5)])));
        assert_eq!(r.handle_tick(1_200, &vv(&[("a", 9)]), &peers, 0, false), None, "unchanged");
        assert_eq!(r.handle_tick(1_500, &vv(&[("a", 9)]), &peers, 0, false), Some(vv(&[("a", 8)])));
    }

    #[test]
    fn the_byte_cap_spares_connected_peers() {
        let durable = vv(&[("a", 10), ("b", 10)]);
        let (near, far) = (vv(&[("a", 7), ("b", 9)]), vv(&[("a", 1)]));
        let peers =
            [PeerHolding { known: &near, connected: true }, PeerHolding { known: &far, connected: false }];
        assert_eq!(compaction_floor(&durable, &peers, None, false), vv(&[("a", 1)]));
        assert_eq!(compaction_floor(&durable, &peers, None, true), vv(&[("a", 7), ("b", 9)]));
    }

    proptest! {
        /// Without the age cap the floor never passes what a connected peer holds, nor this DC's
        /// durable vector; without either cap it never passes what any peer holds.
        #[test]
        fn the_floor_never_passes_a_live_peer(
            durable in arb_vv(),
            peers in proptest::collection::vec((arb_vv(), any::<bool>()), 0..4),
            over_cap in any::<bool>(),
        ) {
            let holdings: Vec<_> =
                peers.iter().map(|(known, connected)| PeerHolding { known, connected: *connected }).collect();
            let floor = compaction_floor(&durable, &holdings, None, over_cap);
            prop_assert!(durable.dominates(&floor));
            for p in &holdings {
                if p.connected || !over_cap {
                    prop_assert!(p.known.dominates(&floor), "floor {floor:?} passes {:?}", p.known);
                }
            }
        }

        /// The floor emitted only rises, and every floor emitted is one the rule allows.
        #[test]
        fn emitted_floors_rise(
            steps in proptest::collection::vec((0u64..300, arb_vv(), arb_vv(), any::<bool>()), 1..30),
        ) {
            let mut r = Retention::new(1_000, 100);
            let (mut now, mut durable, mut known) = (0, VersionVector::new(), VersionVector::new());
            let mut last = VersionVector::new();
            for (dt, grow, peer, connected) in steps {
                now += dt;
                durable.join(&grow);
                known.join(&peer);
                let holdings = [PeerHolding { known: &known, connected }];
                if let Some(floor) = r.handle_tick(now, &durable, &holdings, 0, false) {
                    prop_assert!(!last.dominates(&floor), "a floor is emitted only when it rose");
                    prop_assert!(durable.dominates(&floor));
                    last.join(&floor);
                }
            }
        }
    }
}
