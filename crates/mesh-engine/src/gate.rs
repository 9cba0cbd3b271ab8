//! The start gate (DESIGN.md, "Durability rules"): a DC names no write before it knows which of
//! its own seqs are free.
//!
//! A DC that restarts may have issued seqs its store no longer holds (a new or replaced disk), or
//! that only its peers hold. So writes wait until:
//! - every own op a peer reported holding (in its Hello) is back in this DC's durable log, and
//! - the peers have reported: all of them, or, on a *settled* store (whose log names every dot
//!   this DC ever issued, [`crate::StoreIdentity::settled`]), those that answered within
//!   `wait_ms` of the start. An unsettled store waits for every peer however long it takes: a
//!   peer that did not answer may hold seqs this DC issued before it lost its disk.
//!
//! Once the gate passes on an unsettled store, [`StartGate::handle_progress`] says so once, and
//! the node records the store as settled ahead of its first write.
//!
//! Call order: [`StartGate::handle_hello`] for each accepted Hello, then
//! [`StartGate::handle_progress`] after every input (with the clock and this DC's durable own
//! seq); [`StartGate::poll_timeout`] says when the bound would let writes in.

use mesh_core::DcId;
use std::collections::BTreeSet;

/// The start gate of one DC. See the module docs.
#[derive(Debug, Clone)]
pub struct StartGate {
    peers: BTreeSet<DcId>,
    heard: BTreeSet<DcId>,
    started_ms: u64,
    wait_ms: u64,
    /// Whether the store passed the gate before.
    settled: bool,
    /// Whether writes may start after `wait_ms` without every peer's Hello.
    bounded: bool,
    /// The highest own seq any peer reported holding.
    own_reported: u64,
    waited: bool,
    ready: bool,
}

impl StartGate {
    /// A gate for a DC started at `started_ms` with `peers`. `settled`: the store passed the gate
    /// before. `bounded`: writes may start after `wait_ms` without hearing every peer (true on a
    /// settled store; the planted `NewDiskSkipsPeers` bug sets it on any). `open`: no gate at all
    /// (no peers, or replication disabled).
    pub fn new(
        peers: impl IntoIterator<Item = DcId>,
        started_ms: u64,
        wait_ms: u64,
        settled: bool,
        bounded: bool,
        open: bool,
    ) -> Self {
        Self {
            peers: peers.into_iter().collect(),
            heard: BTreeSet::new(),
            started_ms,
            wait_ms,
            settled,
            bounded,
            own_reported: 0,
            waited: false,
            ready: open,
        }
    }

    /// Whether writes are accepted.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// The highest own seq a peer reported holding.
    pub fn own_reported(&self) -> u64 {
        self.own_reported
    }

    /// `peer`'s Hello was accepted; it holds this DC's own ops up to `own_seq`.
    pub fn handle_hello(&mut self, peer: &DcId, own_seq: u64) {
        self.own_reported = self.own_reported.max(own_seq);
        if self.peers.contains(peer) {
            self.heard.insert(peer.clone());
        }
    }

    /// Re-evaluates the gate at `now_ms`, with this DC durably holding its own ops up to
    /// `own_durable`. Returns `true` once, when the gate opens on a store that was not settled:
    /// the caller records the store as settled before any write is named.
    pub fn handle_progress(&mut self, now_ms: u64, own_durable: u64) -> bool {
        if self.ready {
            return false;
        }
        let heard_all = self.peers.iter().all(|p| self.heard.contains(p));
        self.waited = now_ms >= self.started_ms + self.wait_ms;
        let own_back = own_durable >= self.own_reported;
        let reported = heard_all || (self.waited && self.bounded);
        self.ready = reported && own_back;
        if self.ready && !self.settled {
            self.settled = true;
            return true;
        }
        false
    }

    /// When the bound would let writes in, while it still matters.
    pub fn poll_timeout(&self) -> Option<u64> {
        (!self.ready && !self.waited && self.bounded).then_some(self.started_ms + self.wait_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dc(s: &str) -> DcId {
        DcId::new(s).expect("valid id")
    }

    fn gate(settled: bool) -> StartGate {
        StartGate::new([dc("b"), dc("c")], 1_000, 500, settled, settled, false)
    }

    #[test]
    fn waits_for_every_peer_then_opens_and_settles_once() {
        let mut g = gate(false);
        assert!(!g.handle_progress(1_000, 0));
        g.handle_hello(&dc("b"), 0);
        assert!(!g.handle_progress(1_100, 0));
        assert!(!g.is_ready());
        g.handle_hello(&dc("c"), 0);
        assert!(g.handle_progress(1_200, 0), "the first opening of an unsettled store settles it");
        assert!(g.is_ready());
        assert!(!g.handle_progress(1_300, 0), "settled once only");
    }

    #[test]
    fn an_unsettled_store_ignores_the_bound() {
        let mut g = gate(false);
        g.handle_hello(&dc("b"), 0);
        assert_eq!(g.poll_timeout(), None);
        g.handle_progress(1_000_000, 0);
        assert!(!g.is_ready(), "a silent peer may hold seqs this DC issued");
    }

    #[test]
    fn a_settled_store_opens_at_the_bound() {
        let mut g = gate(true);
        assert_eq!(g.poll_timeout(), Some(1_500));
        g.handle_progress(1_499, 0);
        assert!(!g.is_ready());
        assert!(!g.handle_progress(1_500, 0), "already settled: nothing to record");
        assert!(g.is_ready());
        assert_eq!(g.poll_timeout(), None);
    }

    #[test]
    fn own_ops_a_peer_holds_must_be_back() {
        let mut g = gate(true);
        g.handle_hello(&dc("b"), 7);
        g.handle_hello(&dc("c"), 3);
        assert_eq!(g.own_reported(), 7);
        g.handle_progress(1_100, 6);
        assert!(!g.is_ready(), "seq 7 is not back yet");
        g.handle_progress(2_000, 6);
        assert!(!g.is_ready(), "the bound does not lift the own-ops rule");
        g.handle_progress(2_001, 7);
        assert!(g.is_ready());
    }

    #[test]
    fn an_open_gate_never_waits() {
        let g = StartGate::new([], 0, 500, false, false, true);
        assert!(g.is_ready());
        assert_eq!(g.poll_timeout(), None);
    }
}
