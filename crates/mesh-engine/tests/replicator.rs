//! The replicator of one link: batches by size or delay, a bounded in-flight window, go-back-N
//! resends after a timeout, resumption from the peer's Hello, the relay rule, and compacted logs.

use mesh_core::{DcId, Dot, Hlc, Key, Keyspace, Op, OpKind, VersionVector};
use mesh_engine::replicator::{targets, RelayClock, Replicator, ReplicatorConfig};
use mesh_engine::{LogReadError, OpLog};
use std::collections::{BTreeMap, BTreeSet};

fn dc(s: &str) -> DcId {
    DcId::new(s).unwrap()
}

fn vv(entries: &[(&str, u64)]) -> VersionVector {
    entries.iter().map(|(d, s)| (dc(d), *s)).collect()
}

/// A durable log in miniature; `first` per origin models compaction.
#[derive(Default)]
struct Log {
    ops: BTreeMap<(DcId, u64), Op>,
    first: BTreeMap<DcId, u64>,
}

impl Log {
    fn append(&mut self, origin: &str, seq: u64) {
        let op = Op {
            dot: Dot::new(dc(origin), seq),
            hlc: Hlc::new(seq, 0),
            keyspace: Keyspace::new("users").unwrap(),
            key: Key::new(format!("k{seq}")).unwrap(),
            kind: OpKind::Put(vec![1; 10]),
            context: VersionVector::new(),
        };
        self.ops.insert((dc(origin), seq), op);
    }

    fn durable(&self) -> VersionVector {
        let mut v = VersionVector::new();
        for (origin, seq) in self.ops.keys() {
            v.raise(origin, *seq);
        }
        v
    }
}

impl OpLog for Log {
    type Error = std::convert::Infallible;
    fn read_ops(
        &self,
        origin: &DcId,
        after: u64,
        ops_max: usize,
        _: usize,
    ) -> Result<Vec<Op>, LogReadError<Self::Error>> {
        if self.first.get(origin).is_some_and(|f| after + 1 < *f) {
            return Err(LogReadError::Compacted { origin: origin.clone(), after_seq: after });
        }
        let page = self
            .ops
            .range((origin.clone(), after + 1)..=(origin.clone(), u64::MAX))
            .take(ops_max)
            .map(|(_, op)| op.clone())
            .collect();
        Ok(page)
    }

    fn log_bytes(&self) -> Result<u64, Self::Error> {
        Ok(self.ops.len() as u64 * 64)
    }
}

fn config() -> ReplicatorConfig {
    ReplicatorConfig {
        batch_size: 3,
        batch_bytes_max: 1 << 20,
        max_delay_ms: 5,
        inflight_max: 2,
        retransmit_ms: 100,
    }
}

fn seqs(ops: &[Op]) -> Vec<(String, u64)> {
    ops.iter().map(|op| (op.dot.origin.to_string(), op.dot.seq)).collect()
}

fn opened() -> Replicator {
    let mut r = Replicator::new(dc("a"), dc("b"), config());
    r.handle_open(0, &VersionVector::new());
    r
}

#[test]
fn an_idle_link_sends_at_once_and_a_busy_one_gathers_a_partial_batch_for_max_delay() {
    let mut log = Log::default();
    let mut r = opened();
    log.append("a", 1);
    let batch = r.poll_batch(0, &log.durable(), &log).unwrap().expect("nothing in flight: sent at once");
    assert_eq!(seqs(&batch), [("a".into(), 1)]);
    // One batch in flight: a partial batch waits for max_delay_ms (5) to fill.
    log.append("a", 2);
    log.append("a", 3);
    let want = log.durable();
    assert_eq!(r.poll_batch(1, &want, &log).unwrap(), None, "2 of 3 ops wait while a batch is in flight");
    assert_eq!(r.poll_timeout(), Some(6));
    let batch = r.poll_batch(6, &want, &log).unwrap().expect("max_delay_ms passed");
    assert_eq!(seqs(&batch), [("a".into(), 2), ("a".into(), 3)]);
    // A full batch leaves at once, with a batch in flight or not (the window has room again
    // once the peer holds the first).
    r.handle_peer_seen(&vv(&[("a", 1)]));
    for seq in 4..=6 {
        log.append("a", seq);
    }
    let batch = r.poll_batch(7, &log.durable(), &log).unwrap().expect("a full batch leaves at once");
    assert_eq!(batch.len(), 3);
}

#[test]
fn the_window_bounds_unacknowledged_batches_and_an_ack_reopens_it() {
    let mut log = Log::default();
    for seq in 1..=9 {
        log.append("a", seq);
    }
    let want = log.durable();
    let mut r = opened();
    assert!(r.poll_batch(0, &want, &log).unwrap().is_some());
    assert!(r.poll_batch(0, &want, &log).unwrap().is_some());
    assert_eq!(r.poll_batch(0, &want, &log).unwrap(), None, "two batches in flight fill the window");
    assert_eq!(r.inflight(), 2);
    r.handle_peer_seen(&vv(&[("a", 3)]));
    assert_eq!(r.inflight(), 1);
    let third = r.poll_batch(1, &want, &log).unwrap().expect("the ack freed a slot");
    assert_eq!(seqs(&third)[0], ("a".into(), 7));
}

#[test]
fn an_unacknowledged_window_is_resent_from_what_the_peer_confirmed() {
    let mut log = Log::default();
    for seq in 1..=6 {
        log.append("a", seq);
    }
    let want = log.durable();
    let mut r = opened();
    r.poll_batch(0, &want, &log).unwrap().unwrap();
    r.poll_batch(0, &want, &log).unwrap().unwrap();
    r.handle_peer_seen(&vv(&[("a", 2)])); // the first batch arrived in part
    assert_eq!(r.poll_timeout(), Some(100));
    r.handle_timeout(99);
    assert_eq!(r.stats().retransmits, 0);
    r.handle_timeout(100);
    assert_eq!(r.stats().retransmits, 1);
    let again = r.poll_batch(100, &want, &log).unwrap().expect("resent");
    assert_eq!(seqs(&again), [("a".into(), 3), ("a".into(), 4), ("a".into(), 5)]);
}

#[test]
fn a_slow_link_that_keeps_acknowledging_is_not_resent_to() {
    // Issue 9, fault 9: 1 MiB values on a slow link were resent 23 times, since the timer ran
    // from when the oldest batch left, however steadily acks came.
    let mut log = Log::default();
    for seq in 1..=9 {
        log.append("a", seq);
    }
    let want = log.durable();
    let mut r = opened();
    r.poll_batch(0, &want, &log).unwrap().unwrap();
    r.poll_batch(0, &want, &log).unwrap().unwrap();
    // The first batch is acknowledged 90 ms later: the second, sent at 0, is not due at 100.
    r.handle_peer_seen(&vv(&[("a", 3)]));
    r.poll_batch(90, &want, &log).unwrap().unwrap();
    r.handle_timeout(100);
    assert_eq!(r.stats().retransmits, 0, "a link making progress is not resent to");
    let due = r.poll_timeout().unwrap();
    assert_eq!(due, 190, "the timer counts from the last progress");
    // Silence from then on: the window is resent once that timer runs out.
    r.handle_timeout(due);
    assert_eq!(r.stats().retransmits, 1);
}

#[test]
fn a_peer_getting_a_third_dcs_ops_from_elsewhere_is_seen_as_progressing_directly() {
    // Issue 9, fault 9: a DC relayed a third DC's 1 MiB values to a peer that was receiving them
    // from their origin, slowly but steadily; the node now holds back relaying while this lasts.
    let mut log = Log::default();
    log.append("c", 1);
    let mut r = opened();
    // The peer reports c's ops this link never sent it: it gets them from c.
    r.handle_peer_seen(&vv(&[("c", 4)]));
    assert!(r.direct_progress(10, 100).is_empty(), "dated only by a call that knows the time");
    r.handle_timeout(10);
    assert_eq!(r.direct_progress(50, 100).into_iter().collect::<Vec<_>>(), [dc("c")]);
    assert!(r.direct_progress(110, 100).is_empty(), "no progress for the relay delay: relay again");
    // What the peer holds because this link sent it is not direct progress.
    let mut r = opened();
    r.poll_batch(0, &vv(&[("c", 1)]), &log).unwrap().unwrap();
    r.handle_peer_seen(&vv(&[("c", 1)]));
    r.handle_timeout(6);
    assert!(r.direct_progress(6, 100).is_empty());
}

#[test]
fn a_reopened_link_resumes_from_the_hello_even_below_what_was_acknowledged() {
    let mut log = Log::default();
    for seq in 1..=3 {
        log.append("a", seq);
    }
    let want = log.durable();
    let mut r = opened();
    r.poll_batch(0, &want, &log).unwrap().unwrap();
    r.handle_peer_seen(&vv(&[("a", 3)]));
    assert_eq!(r.poll_batch(10, &want, &log).unwrap(), None, "the peer has everything");
    r.handle_close(10);
    // The peer restarted having lost seq 3 (a disk that lied): it gets it again.
    r.handle_open(0, &vv(&[("a", 2)]));
    let again = r.poll_batch(20, &want, &log).unwrap();
    let again = again.or_else(|| r.poll_batch(25, &want, &log).unwrap()).expect("resent after the delay");
    assert_eq!(seqs(&again), [("a".into(), 3)]);
}

#[test]
fn a_third_dcs_ops_are_relayed_only_after_the_relay_delay_or_when_their_origin_is_suspect() {
    let durable = vv(&[("a", 5), ("c", 4)]);
    let none = BTreeSet::new();
    // Nothing of c held long yet: only a's own ops go to b.
    let t = targets(&dc("a"), &dc("b"), &durable, &VersionVector::new(), 0, &none, &none);
    assert_eq!(t, vv(&[("a", 5)]));
    // c's ops up to 2 were held for the relay delay.
    let t = targets(&dc("a"), &dc("b"), &durable, &vv(&[("c", 2)]), 0, &none, &none);
    assert_eq!(t, vv(&[("a", 5), ("c", 2)]));
    // c is suspect from here: everything of c goes.
    let suspect: BTreeSet<DcId> = [dc("c")].into_iter().collect();
    let t = targets(&dc("a"), &dc("b"), &durable, &VersionVector::new(), 0, &suspect, &none);
    assert_eq!(t, vv(&[("a", 5), ("c", 4)]));
    // b gets c's ops from elsewhere: none relayed, though held long, unless c is suspect.
    let t = targets(&dc("a"), &dc("b"), &durable, &durable, 0, &none, &suspect);
    assert_eq!(t, vv(&[("a", 5)]));
    let t = targets(&dc("a"), &dc("b"), &durable, &durable, 0, &suspect, &suspect);
    assert_eq!(t, vv(&[("a", 5), ("c", 4)]));
    // b's own ops go back to b only up to what it lacked at its Hello.
    let durable = vv(&[("a", 5), ("b", 9)]);
    let t = targets(&dc("a"), &dc("b"), &durable, &durable, 7, &none, &none);
    assert_eq!(t, vv(&[("a", 5), ("b", 7)]));
}

#[test]
fn the_relay_clock_reports_what_was_held_for_the_delay() {
    let mut clock = RelayClock::new(1_000, VersionVector::new());
    clock.record(0, &vv(&[("c", 3)]));
    clock.record(500, &vv(&[("c", 8)]));
    assert_eq!(clock.held_long(999), &VersionVector::new());
    assert_eq!(clock.poll_timeout(), Some(1_000));
    assert_eq!(clock.held_long(1_000), &vv(&[("c", 3)]));
    assert_eq!(clock.held_long(1_500), &vv(&[("c", 8)]));
}

#[test]
fn a_compacted_origin_is_reported_for_state_transfer_and_not_read_again() {
    let mut log = Log::default();
    for seq in 5..=6 {
        log.append("a", seq);
    }
    log.first.insert(dc("a"), 5);
    let mut r = opened();
    let want = vv(&[("a", 6)]);
    assert_eq!(r.poll_batch(0, &want, &log).unwrap(), None);
    assert_eq!(r.poll_batch(10, &want, &log).unwrap(), None);
    assert_eq!(r.compacted(), vec![dc("a")]);
}

#[test]
fn a_link_counts_as_just_opened_for_the_relay_delay_after_an_outage_not_after_a_flap() {
    let mut r = Replicator::new(dc("a"), dc("b"), config());
    assert!(!r.opened_within(0, 1_500), "a closed link");
    r.handle_open(1_000, &VersionVector::new());
    assert!(r.opened_within(1_000, 1_500), "the first open (a start)");
    assert_eq!(r.opened_wait_ends(1_500), Some(2_500), "the node wakes then to start relaying");
    assert!(r.opened_within(2_499, 1_500));
    assert!(!r.opened_within(2_500, 1_500), "the relay delay passed");
    r.handle_close(3_000);
    assert!(!r.opened_within(3_200, 1_500), "closed again");
    // Down for 1 s, less than the delay: a flap, relaying goes on at once.
    r.handle_open(4_000, &VersionVector::new());
    assert!(!r.opened_within(4_000, 1_500));
    assert_eq!(r.opened_wait_ends(1_500), None);
    r.handle_close(4_500);
    // Down for 60 s: an outage, the peer's other links are opening too.
    r.handle_open(64_500, &VersionVector::new());
    assert!(r.opened_within(64_500, 1_500));
    assert!(!r.opened_within(66_000, 1_500));
}
