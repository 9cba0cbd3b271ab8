//! The sync tracker: async writes finish at the local commit; sync writes finish once the
//! required DCs' durable vectors cover them, learned directly or relayed; at the deadline they
//! report the partial result; modes resolve as DESIGN.md says.

use mesh_core::topology::{Acks, AcksName, Mode};
use mesh_core::{DcId, Dot, VersionVector};
use mesh_engine::sync::{resolve_mode, RequestId, SyncOutcome, SyncTracker};

fn dc(s: &str) -> DcId {
    DcId::new(s).unwrap()
}

fn vv(entries: &[(&str, u64)]) -> VersionVector {
    entries.iter().map(|(d, s)| (dc(d), *s)).collect()
}

/// DC a among a, b, c.
fn tracker() -> SyncTracker {
    SyncTracker::new(dc("a"), [dc("a"), dc("b"), dc("c")], 100)
}

fn drain(t: &mut SyncTracker) -> Vec<SyncOutcome> {
    std::iter::from_fn(|| t.poll_outcome()).collect()
}

#[test]
fn modes_resolve_as_the_design_says() {
    assert_eq!(resolve_mode(Mode::Async, false, None), Mode::Async);
    assert_eq!(resolve_mode(Mode::Async, false, Some(Mode::Sync)), Mode::Sync);
    assert_eq!(resolve_mode(Mode::Sync, false, Some(Mode::Async)), Mode::Async, "a request may relax");
    assert_eq!(resolve_mode(Mode::Hybrid, false, None), Mode::Async);
    assert_eq!(resolve_mode(Mode::Hybrid, false, Some(Mode::Sync)), Mode::Sync);
    assert_eq!(resolve_mode(Mode::Hybrid, true, Some(Mode::Async)), Mode::Sync, "critical is always sync");
    assert_eq!(resolve_mode(Mode::Async, true, None), Mode::Sync);
}

#[test]
fn an_async_write_is_done_at_its_local_commit() {
    let mut t = tracker();
    t.handle_committed(RequestId(1), Dot::new(dc("a"), 1), Mode::Async, Acks::Named(AcksName::All), 1_000);
    assert_eq!(drain(&mut t), [SyncOutcome::Done { request: RequestId(1), confirmed: vec![dc("a")] }]);
    assert_eq!(t.waiting(), 0);
}

#[test]
fn a_quorum_write_is_done_when_one_more_dc_covers_it() {
    let mut t = tracker();
    t.handle_committed(RequestId(7), Dot::new(dc("a"), 5), Mode::Sync, Acks::Named(AcksName::Quorum), 1_000);
    assert_eq!(drain(&mut t), []);
    t.handle_durable(&dc("b"), &vv(&[("a", 4)]));
    assert_eq!(drain(&mut t), [], "b's vector does not cover a:5 yet");
    t.handle_durable(&dc("b"), &vv(&[("a", 5)]));
    assert_eq!(
        drain(&mut t),
        [SyncOutcome::Done { request: RequestId(7), confirmed: vec![dc("a"), dc("b")] }]
    );
    assert_eq!(t.poll_timeout(), None);
}

#[test]
fn an_all_write_times_out_with_the_partial_result_when_a_dc_is_down() {
    let mut t = tracker();
    t.handle_committed(RequestId(9), Dot::new(dc("a"), 1), Mode::Sync, Acks::Named(AcksName::All), 2_100);
    t.handle_durable(&dc("c"), &vv(&[("a", 1)]));
    assert_eq!(t.poll_timeout(), Some(2_100));
    t.handle_timeout(2_099);
    assert_eq!(drain(&mut t), []);
    t.handle_timeout(2_100);
    assert_eq!(
        drain(&mut t),
        [SyncOutcome::TimedOut { request: RequestId(9), confirmed: vec![dc("a"), dc("c")], required: 3 }]
    );
    // A late ack changes nothing: the request was answered.
    t.handle_durable(&dc("b"), &vv(&[("a", 1)]));
    assert_eq!(drain(&mut t), []);
}

#[test]
fn a_vector_learned_for_one_dc_counts_however_it_travelled() {
    // The tracker does not care whether b's vector came in b's Ack or relayed in c's heartbeat:
    // the runtime feeds both through handle_durable.
    let mut t = tracker();
    t.handle_committed(RequestId(3), Dot::new(dc("a"), 2), Mode::Sync, Acks::Count(2), 1_000);
    t.handle_durable(&dc("b"), &vv(&[("a", 2)]));
    assert_eq!(
        drain(&mut t),
        [SyncOutcome::Done { request: RequestId(3), confirmed: vec![dc("a"), dc("b")] }]
    );
}

#[test]
fn a_write_already_covered_when_it_commits_is_done_at_once_and_strangers_do_not_count() {
    let mut t = tracker();
    t.handle_durable(&dc("b"), &vv(&[("a", 10)]));
    t.handle_durable(&dc("zz"), &vv(&[("a", 10)]));
    t.handle_committed(RequestId(4), Dot::new(dc("a"), 10), Mode::Sync, Acks::Count(2), 1_000);
    assert_eq!(
        drain(&mut t),
        [SyncOutcome::Done { request: RequestId(4), confirmed: vec![dc("a"), dc("b")] }]
    );
    t.handle_committed(RequestId(5), Dot::new(dc("a"), 11), Mode::Sync, Acks::Named(AcksName::All), 1_000);
    assert_eq!(drain(&mut t), [], "zz is no DC of the mesh: a:11 waits for c");
    t.handle_durable(&dc("c"), &vv(&[("a", 12)]));
    t.handle_durable(&dc("b"), &vv(&[("a", 12)]));
    assert_eq!(
        drain(&mut t),
        [SyncOutcome::Done { request: RequestId(5), confirmed: vec![dc("a"), dc("b"), dc("c")] }]
    );
}

#[test]
fn a_write_asking_for_more_dcs_than_exist_times_out_instead_of_passing() {
    let mut t = tracker();
    t.handle_durable(&dc("b"), &vv(&[("a", 1)]));
    t.handle_durable(&dc("c"), &vv(&[("a", 1)]));
    t.handle_committed(RequestId(1), Dot::new(dc("a"), 1), Mode::Sync, Acks::Count(4), 10);
    t.handle_timeout(10);
    let all = vec![dc("a"), dc("b"), dc("c")];
    assert_eq!(drain(&mut t), [SyncOutcome::TimedOut { request: RequestId(1), confirmed: all, required: 4 }]);
}

#[test]
fn the_waiting_set_is_bounded() {
    let mut t = SyncTracker::new(dc("a"), [dc("b")], 2);
    for r in 1..=2 {
        assert!(t.has_room());
        t.handle_committed(RequestId(r), Dot::new(dc("a"), r), Mode::Sync, Acks::Named(AcksName::All), 10);
    }
    assert!(!t.has_room());
    // A third that passed has_room while its commit was in flight is answered at once.
    t.handle_committed(RequestId(3), Dot::new(dc("a"), 3), Mode::Sync, Acks::Named(AcksName::All), 10);
    let confirmed = vec![dc("a")];
    assert_eq!(drain(&mut t), [SyncOutcome::TimedOut { request: RequestId(3), confirmed, required: 2 }]);
    t.handle_timeout(10);
    assert_eq!(drain(&mut t).len(), 2);
    assert!(t.has_room());
}
