//! The conflict resolver: local writes get gapless seqs and rising HLCs; remote ops apply once,
//! per origin in order; nothing that depends on a change (completion, ack, conflict record)
//! leaves before the runtime reports that change durable; concurrent writes yield conflict
//! records; a skewed clock refuses lww and priority writes only.

use mesh_core::{
    builtin_resolvers, DcId, Dot, Hlc, Key, KeyState, Keyspace, Op, OpKind, Topology, VersionVector,
};
use mesh_engine::resolver::{
    ApplyError, Output, PersistId, Resolver, WriteError, WriteRequest, WriteSummary,
};
use mesh_engine::sync::RequestId;
use mesh_engine::{CommitBatch, IdempotencyRecord, MonoMs, StateRead, WallMs};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

fn dc(s: &str) -> DcId {
    DcId::new(s).unwrap()
}

fn topology() -> Arc<Topology> {
    let text = include_str!("../../../mesh.toml");
    Arc::new(Topology::new(toml::from_str(text).unwrap(), &builtin_resolvers()).unwrap())
}

/// A client write without context or idempotency key.
fn write_request(request: u64, keyspace: &str, key: &str, kind: OpKind) -> WriteRequest {
    WriteRequest {
        request: RequestId(request),
        keyspace: Keyspace::new(keyspace).unwrap(),
        key: Key::new(key).unwrap(),
        kind,
        context: None,
        idempotency_key: None,
    }
}

/// A store for the harness: the states and idempotency records of committed batches.
#[derive(Default)]
struct Store(BTreeMap<(Keyspace, Key), KeyState>, Vec<IdempotencyRecord>);

impl StateRead for Store {
    type Error = std::convert::Infallible;
    fn state(&self, keyspace: &Keyspace, key: &Key) -> Result<Option<KeyState>, Self::Error> {
        Ok(self.0.get(&(keyspace.clone(), key.clone())).cloned())
    }
    fn idempotency_records(&self, since_wall_ms: u64) -> Result<Vec<IdempotencyRecord>, Self::Error> {
        Ok(self.1.iter().filter(|r| r.wall_ms >= since_wall_ms).cloned().collect())
    }
    fn snapshot(&self) -> Result<Box<dyn mesh_engine::SnapshotRead>, Self::Error> {
        unimplemented!("the resolver never cuts snapshots")
    }

    fn scan_tombstoned(
        &self,
        after: Option<&(Keyspace, Key)>,
        max: usize,
    ) -> Result<mesh_engine::Scan, Self::Error> {
        use std::ops::Bound;
        let start = after.map_or(Bound::Unbounded, |k| Bound::Excluded(k.clone()));
        let keys: Vec<_> = self
            .0
            .range((start, Bound::Unbounded))
            .filter(|(_, s)| s.has_tombstones())
            .take(max)
            .map(|(k, _)| k.clone())
            .collect();
        let last = if keys.len() == max { keys.last().cloned() } else { None };
        Ok(mesh_engine::Scan { keys, last })
    }
}

/// A runtime in miniature: it queues persists and commits them when told, in order.
struct Harness {
    resolver: Resolver,
    store: Store,
    uncommitted: VecDeque<(PersistId, CommitBatch)>,
    released: Vec<Output>,
}

impl Harness {
    fn new(local: &str) -> Self {
        Self {
            resolver: Resolver::new(dc(local), topology(), VersionVector::new()),
            store: Store::default(),
            uncommitted: VecDeque::new(),
            released: Vec::new(),
        }
    }

    fn drain(&mut self) {
        while let Some(out) = self.resolver.poll_output() {
            match out {
                Output::Persist { id, batch } => self.uncommitted.push_back((id, batch)),
                other => self.released.push(other),
            }
        }
    }

    fn write(&mut self, request: u64, keyspace: &str, key: &str, kind: OpKind) -> Result<(), WriteError> {
        let r = self.resolver.handle_write(
            MonoMs(request),
            WallMs(1_000 + request),
            write_request(request, keyspace, key, kind),
            &self.store,
        );
        self.drain();
        r
    }

    fn apply(&mut self, from: &str, ops: Vec<Op>) -> Result<(), ApplyError> {
        let r = self.resolver.handle_batch(WallMs(1_000), &dc(from), ops, &self.store);
        self.drain();
        r
    }

    /// Commits every queued persist, in order.
    fn commit_all(&mut self) -> Vec<CommitBatch> {
        let mut batches = Vec::new();
        while let Some((id, batch)) = self.uncommitted.pop_front() {
            for (ks, k, state) in &batch.states {
                self.store.0.insert((ks.clone(), k.clone()), state.clone().unwrap());
            }
            self.store.1.extend(batch.idempotency.iter().cloned());
            self.resolver.handle_committed(id);
            batches.push(batch);
        }
        self.drain();
        batches
    }

    fn take_released(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.released)
    }
}

fn put(origin: &str, seq: u64, ms: u64, key: &str, value: &[u8], context: VersionVector) -> Op {
    Op {
        dot: Dot::new(dc(origin), seq),
        hlc: Hlc::new(ms, 0),
        keyspace: Keyspace::new("users").unwrap(),
        key: Key::new(key).unwrap(),
        kind: OpKind::Put(value.to_vec()),
        context,
    }
}

#[test]
fn a_local_write_completes_only_after_its_commit() {
    let mut h = Harness::new("us-east");
    h.write(1, "users", "u1", OpKind::Put(b"v".to_vec())).unwrap();
    assert_eq!(h.take_released(), [], "nothing leaves before the commit");
    assert_eq!(h.uncommitted.len(), 1);
    let batches = h.commit_all();
    assert_eq!(batches[0].ops[0].dot, Dot::new(dc("us-east"), 1));
    assert_eq!(batches[0].seen, [(dc("us-east"), 1)].into_iter().collect());
    assert_eq!(
        h.take_released(),
        [Output::Written {
            request: RequestId(1),
            dot: Dot::new(dc("us-east"), 1),
            keyspace: Keyspace::new("users").unwrap(),
            summary: Some(WriteSummary::Put),
        }]
    );
}

#[test]
fn each_write_reports_what_it_changed_here_as_redis_replies_count_it() {
    let mut h = Harness::new("us-east");
    let members = |m: &[&str]| m.iter().map(|m| serde_bytes::ByteBuf::from(m.as_bytes().to_vec())).collect();
    let writes = [
        ("tags", "t", OpKind::SetAdd(members(&["a", "b", "a"]))),
        ("tags", "t", OpKind::SetAdd(members(&["b", "c"]))),
        ("tags", "t", OpKind::SetRemove(members(&["a", "x"]))),
        ("page_views", "home", OpKind::CounterAdd(5)),
        ("page_views", "home", OpKind::CounterAdd(-7)),
        ("users", "u", OpKind::Delete),
        ("users", "u", OpKind::Put(b"v".to_vec())),
        ("users", "u", OpKind::Delete),
    ];
    for (i, (ks, key, kind)) in writes.into_iter().enumerate() {
        // Each on the state the ones before left, committed or not.
        h.write(i as u64 + 1, ks, key, kind).unwrap();
    }
    h.commit_all();
    let summaries: Vec<Option<WriteSummary>> = h
        .take_released()
        .into_iter()
        .filter_map(|o| match o {
            Output::Written { summary, .. } => Some(summary),
            _ => None,
        })
        .collect();
    assert_eq!(
        summaries,
        [
            Some(WriteSummary::Members(2)),
            Some(WriteSummary::Members(1)),
            Some(WriteSummary::Members(1)),
            Some(WriteSummary::Counter(5)),
            Some(WriteSummary::Counter(-2)),
            Some(WriteSummary::Delete { existed: false }),
            Some(WriteSummary::Put),
            Some(WriteSummary::Delete { existed: true }),
        ]
    );
}

#[test]
fn local_writes_get_gapless_seqs_rising_hlcs_and_build_on_uncommitted_ones() {
    let mut h = Harness::new("us-east");
    h.write(1, "users", "u1", OpKind::Put(b"a".to_vec())).unwrap();
    h.write(2, "users", "u1", OpKind::Put(b"b".to_vec())).unwrap();
    h.write(3, "page_views", "home", OpKind::CounterAdd(5)).unwrap();
    let ops: Vec<Op> = h.commit_all().into_iter().flat_map(|b| b.ops).collect();
    assert_eq!(ops.iter().map(|o| o.dot.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(ops[0].hlc < ops[1].hlc && ops[1].hlc < ops[2].hlc);
    // The second write saw the first, although it was not committed yet: it supersedes it.
    assert!(ops[1].context.covers(&ops[0].dot));
    let state = h.store.state(&Keyspace::new("users").unwrap(), &Key::new("u1").unwrap()).unwrap().unwrap();
    assert_eq!(state.versions().len(), 1);
}

#[test]
fn writes_between_two_polls_share_one_persist_holding_each_key_once() {
    let mut h = Harness::new("us-east");
    for (request, key, value) in [(1, "u1", "a"), (2, "u2", "b"), (3, "u1", "c")] {
        let write = write_request(request, "users", key, OpKind::Put(value.as_bytes().to_vec()));
        h.resolver.handle_write(MonoMs(request), WallMs(1_000 + request), write, &h.store).unwrap();
    }
    h.drain();
    assert_eq!(h.uncommitted.len(), 1, "one persist for the three writes");
    let batch = &h.uncommitted[0].1;
    assert_eq!(batch.ops.iter().map(|o| o.dot.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(batch.seen, [(dc("us-east"), 3)].into_iter().collect());
    // u1 once, as the third write left it.
    assert_eq!(batch.states.len(), 2);
    let u1 = batch.states.iter().find(|(_, k, _)| k.as_str() == "u1").unwrap().2.as_ref().unwrap();
    assert_eq!(u1.versions().len(), 1);
    assert_eq!(u1.versions()[0].dot, Dot::new(dc("us-east"), 3));
    assert_eq!(h.take_released(), [], "nothing leaves before the commit");
    h.commit_all();
    let written: Vec<u64> = h
        .take_released()
        .into_iter()
        .filter_map(|o| match o {
            Output::Written { request, .. } => Some(request.0),
            _ => None,
        })
        .collect();
    assert_eq!(written, [1, 2, 3]);
}

#[test]
fn remote_ops_apply_once_in_order_and_are_acked_after_their_commit() {
    let mut h = Harness::new("us-east");
    let ops = vec![
        put("us-west", 1, 5, "u1", b"x", VersionVector::new()),
        put("us-west", 2, 6, "u2", b"y", VersionVector::new()),
    ];
    h.apply("us-west", ops.clone()).unwrap();
    assert_eq!(h.take_released(), [], "no ack before the commit");
    h.commit_all();
    let seen: VersionVector = [(dc("us-west"), 2)].into_iter().collect();
    assert_eq!(h.take_released(), [Output::Ack { to: dc("us-west"), seen: seen.clone() }]);
    // A duplicate delivery changes nothing and persists nothing.
    h.apply("us-west", ops).unwrap();
    assert!(h.uncommitted.is_empty());
    // A gap stops at the gap: seq 4 cannot apply before 3.
    let err = h.apply("us-west", vec![put("us-west", 4, 8, "u3", b"z", VersionVector::new())]).unwrap_err();
    assert_eq!(err, ApplyError::Gap { origin: dc("us-west"), expected: 3, got: 4 });
    assert_eq!(h.resolver.applied(), &seen);
}

#[test]
fn a_relayed_op_from_a_third_dc_applies_and_is_acked_to_the_relay() {
    let mut h = Harness::new("us-east");
    h.apply("us-west", vec![put("eu-central", 1, 5, "u1", b"x", VersionVector::new())]).unwrap();
    h.commit_all();
    assert_eq!(
        h.take_released(),
        [Output::Ack { to: dc("us-west"), seen: [(dc("eu-central"), 1)].into_iter().collect() }]
    );
}

#[test]
fn concurrent_writes_yield_a_conflict_record_after_the_commit() {
    let mut h = Harness::new("us-east");
    h.write(1, "users", "u1", OpKind::Put(b"local".to_vec())).unwrap();
    h.commit_all();
    h.take_released();
    // us-west wrote u1 without having seen us-east:1, with a later HLC.
    h.apply("us-west", vec![put("us-west", 1, 9_999_999, "u1", b"remote", VersionVector::new())]).unwrap();
    assert!(h.take_released().is_empty());
    h.commit_all();
    let released = h.take_released();
    let conflict = released
        .iter()
        .find_map(|o| if let Output::Conflict(c) = o { Some(c.clone()) } else { None })
        .expect("a conflict record");
    assert_eq!(conflict.strategy, "lww");
    assert_eq!(conflict.versions.len(), 2);
    assert_eq!(conflict.winner, Some(Dot::new(dc("us-west"), 1)), "the later HLC wins under lww");
}

#[test]
fn a_skewed_clock_refuses_lww_and_priority_writes_but_not_crdts() {
    let mut h = Harness::new("us-east");
    h.resolver.handle_clock_skewed(true);
    assert!(matches!(
        h.write(1, "users", "u1", OpKind::Put(b"v".to_vec())),
        Err(WriteError::ClockSkewed { .. })
    ));
    assert!(matches!(
        h.write(2, "config", "c", OpKind::Put(b"v".to_vec())),
        Err(WriteError::ClockSkewed { .. })
    ));
    h.write(3, "page_views", "home", OpKind::CounterAdd(1)).unwrap();
    h.write(4, "carts", "cart", OpKind::Put(b"v".to_vec())).unwrap();
    // Issue 9, fault 7: a custom resolver that orders by time is covered too (first-writer-wins
    // picks the earliest HLC); one that does not (max-value) is not.
    assert!(matches!(
        h.write(5, "reservations", "seat", OpKind::Put(b"v".to_vec())),
        Err(WriteError::ClockSkewed { .. })
    ));
    h.write(6, "versions", "v", OpKind::Put(b"7".to_vec())).unwrap();
    let ops: Vec<Op> = h.commit_all().into_iter().flat_map(|b| b.ops).collect();
    assert_eq!(ops.iter().map(|o| o.dot.seq).collect::<Vec<_>>(), [1, 2, 3], "refused writes used no seq");
}

#[test]
fn a_write_once_keyspace_refuses_to_overwrite_a_value_but_takes_one_after_a_delete() {
    let mut h = Harness::new("us-east");
    h.write(1, "reservations", "seat-a1", OpKind::Put(b"east".to_vec())).unwrap();
    h.commit_all();
    assert!(matches!(
        h.write(2, "reservations", "seat-a1", OpKind::Put(b"west".to_vec())),
        Err(WriteError::Exists)
    ));
    // Also before the first write's commit: the check reads what this DC has named.
    h.write(3, "reservations", "seat-b2", OpKind::Put(b"east".to_vec())).unwrap();
    assert!(matches!(
        h.write(4, "reservations", "seat-b2", OpKind::Put(b"x".to_vec())),
        Err(WriteError::Exists)
    ));
    h.write(5, "reservations", "seat-a1", OpKind::Delete).unwrap();
    h.write(6, "reservations", "seat-a1", OpKind::Put(b"west".to_vec())).unwrap();
    let ops: Vec<Op> = h.commit_all().into_iter().flat_map(|b| b.ops).collect();
    assert_eq!(ops.iter().map(|o| o.dot.seq).collect::<Vec<_>>(), [2, 3, 4], "refused writes used no seq");
    // Keyspaces without write_once overwrite as before.
    h.write(7, "users", "u", OpKind::Put(b"a".to_vec())).unwrap();
    h.write(8, "users", "u", OpKind::Put(b"b".to_vec())).unwrap();
}

#[test]
fn a_delete_without_context_in_a_siblings_keyspace_removes_every_value_the_serving_dc_has_seen() {
    // Regression: the delete used to become one more (tombstone) sibling beside the values, so a
    // 200 changed nothing a reader saw.
    let mut h = Harness::new("us-east");
    h.write(1, "carts", "c1", OpKind::Put(b"v1".to_vec())).unwrap();
    h.apply(
        "us-west",
        vec![put("us-west", 1, 5, "c1", b"v2", VersionVector::new())]
            .into_iter()
            .map(|mut op| {
                op.keyspace = Keyspace::new("carts").unwrap();
                op
            })
            .collect(),
    )
    .unwrap();
    h.commit_all();
    h.write(2, "carts", "c1", OpKind::Delete).unwrap();
    let ops: Vec<Op> = h.commit_all().into_iter().flat_map(|b| b.ops).collect();
    let delete = ops.last().unwrap();
    assert!(delete.context.covers(&Dot::new(dc("us-east"), 1)), "the delete covers the local value");
    assert!(delete.context.covers(&Dot::new(dc("us-west"), 1)), "the delete covers the remote value");
    let state = h.store.state(&Keyspace::new("carts").unwrap(), &Key::new("c1").unwrap()).unwrap().unwrap();
    let live: Vec<_> = state.versions().iter().filter(|v| !v.is_tombstone()).collect();
    assert_eq!(live, Vec::<&mesh_core::Version>::new(), "no value is left to read");
}

#[test]
fn a_context_naming_a_write_this_dc_has_not_issued_is_refused_not_misnamed() {
    // A made-up context, or one from before this DC lost its disk: the write would get a dot the
    // context already covers (it used to panic the DC actor).
    let mut h = Harness::new("us-east");
    let mut write = write_request(1, "users", "u", OpKind::Put(b"v".to_vec()));
    write.context = Some([(dc("us-east"), 5)].into_iter().collect());
    let refused = h.resolver.handle_write(MonoMs(1), WallMs(1_001), write, &h.store);
    assert!(matches!(refused, Err(WriteError::UnissuedDot(_))), "{refused:?}");
    h.write(2, "users", "u", OpKind::Put(b"w".to_vec())).unwrap();
    assert_eq!(h.commit_all()[0].ops[0].dot.seq, 1, "the refused write used no seq");
}

#[test]
fn bad_writes_are_refused_without_using_a_seq() {
    let mut h = Harness::new("us-east");
    assert!(matches!(h.write(1, "nope", "k", OpKind::Delete), Err(WriteError::UnknownKeyspace(_))));
    assert!(matches!(h.write(2, "users", "k", OpKind::CounterAdd(1)), Err(WriteError::State(_))));
    assert!(matches!(
        h.write(3, "users", "k", OpKind::Put(vec![0; (1 << 20) + 1])),
        Err(WriteError::TooLarge { .. })
    ));
    h.write(4, "users", "k", OpKind::Delete).unwrap();
    assert_eq!(h.commit_all()[0].ops[0].dot.seq, 1);
}

#[test]
fn a_restarted_resolver_continues_after_the_durable_seq() {
    let seen: VersionVector = [(dc("us-east"), 41), (dc("us-west"), 7)].into_iter().collect();
    let mut r = Resolver::new(dc("us-east"), topology(), seen);
    r.handle_write(MonoMs(0), WallMs(5), write_request(1, "users", "k", OpKind::Delete), &Store::default())
        .unwrap();
    let Some(Output::Persist { batch, .. }) = r.poll_output() else { panic!("a persist") };
    assert_eq!(batch.ops[0].dot.seq, 42);
}

#[test]
fn a_retry_with_the_same_idempotency_key_writes_nothing_and_gets_the_first_outcome() {
    let mut h = Harness::new("us-east");
    let w = |id, key: &str, delta| WriteRequest {
        idempotency_key: Some(key.to_string()),
        ..write_request(id, "page_views", "home", OpKind::CounterAdd(delta))
    };
    let first = Dot::new(dc("us-east"), 1);
    let ks = Keyspace::new("page_views").unwrap();
    h.resolver.handle_write(MonoMs(0), WallMs(0), w(1, "k1", 5), &h.store).unwrap();
    // Retried before the first write is durable: answered with it, once it is.
    h.resolver.handle_write(MonoMs(10), WallMs(10), w(2, "k1", 5), &h.store).unwrap();
    h.drain();
    assert_eq!(h.uncommitted.len(), 1, "the retry wrote nothing");
    assert_eq!(h.take_released(), []);
    h.commit_all();
    let written = |request, summary| Output::Written {
        request: RequestId(request),
        dot: first.clone(),
        keyspace: ks.clone(),
        summary,
    };
    // Only the write itself changed something; its retries report no change.
    assert_eq!(h.take_released(), [written(1, Some(WriteSummary::Counter(5))), written(2, None)]);
    // Retried after: answered at once.
    h.resolver.handle_write(MonoMs(20), WallMs(20), w(3, "k1", 5), &h.store).unwrap();
    h.drain();
    assert_eq!(h.take_released(), [written(3, None)]);
    assert!(h.uncommitted.is_empty());
    // The same key for another write is refused.
    let err = h.resolver.handle_write(MonoMs(30), WallMs(30), w(4, "k1", 6), &h.store).unwrap_err();
    assert_eq!(err, WriteError::IdempotencyKeyReused("k1".into()));
    // After the window (600 s in mesh.toml's default) the key is forgotten: a new write.
    h.resolver.handle_write(MonoMs(700_000), WallMs(700_000), w(5, "k1", 5), &h.store).unwrap();
    h.drain();
    assert_eq!(h.commit_all()[0].ops[0].dot.seq, 2);
    let state = h.store.state(&ks, &Key::new("home").unwrap()).unwrap().unwrap();
    assert_eq!(state.counter_value(), Some(10), "two writes, not four");
}

#[test]
fn acks_cover_this_dcs_own_writes_and_a_resend_is_acked_again() {
    let mut h = Harness::new("us-east");
    h.write(1, "users", "u1", OpKind::Put(b"a".to_vec())).unwrap();
    h.apply("us-west", vec![put("us-west", 1, 5, "u2", b"x", VersionVector::new())]).unwrap();
    h.commit_all();
    let seen: VersionVector = [(dc("us-east"), 1), (dc("us-west"), 1)].into_iter().collect();
    assert!(h.take_released().contains(&Output::Ack { to: dc("us-west"), seen: seen.clone() }));
    // us-west resends (its ack was lost): nothing to apply, acked again.
    h.apply("us-west", vec![put("us-west", 1, 5, "u2", b"x", VersionVector::new())]).unwrap();
    assert_eq!(h.take_released(), [Output::Ack { to: dc("us-west"), seen }]);
}

#[test]
fn this_dcs_own_ops_coming_back_or_reported_by_peers_are_never_reused() {
    let mut h = Harness::new("us-east");
    // After a crash that lost us-east:1..2, a peer hands them back.
    h.apply(
        "us-west",
        vec![
            put("us-east", 1, 5, "u1", b"a", VersionVector::new()),
            put("us-east", 2, 6, "u2", b"b", VersionVector::new()),
        ],
    )
    .unwrap();
    // And another peer says in its Hello that it saw up to us-east:5.
    h.resolver.handle_peer_seen(5);
    h.write(1, "users", "u3", OpKind::Put(b"c".to_vec())).unwrap();
    let ops: Vec<Op> = h.commit_all().into_iter().flat_map(|b| b.ops).collect();
    assert_eq!(ops.last().unwrap().dot, Dot::new(dc("us-east"), 6));
}

#[test]
fn a_batch_that_fails_midway_keeps_and_acks_what_applied_before() {
    let mut h = Harness::new("us-east");
    let ops = vec![
        put("us-west", 1, 5, "u1", b"a", VersionVector::new()),
        put("us-west", 3, 6, "u2", b"b", VersionVector::new()),
    ];
    assert!(matches!(h.apply("us-west", ops), Err(ApplyError::Gap { expected: 2, got: 3, .. })));
    let batches = h.commit_all();
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].ops.len(), 1);
    assert_eq!(
        h.take_released(),
        [Output::Ack { to: dc("us-west"), seen: [(dc("us-west"), 1)].into_iter().collect() }]
    );
}

#[test]
fn after_a_restart_local_writes_order_after_the_stored_ones_even_if_the_wall_clock_went_back() {
    let mut h = Harness::new("us-east");
    h.resolver.handle_restored_hlc(Hlc::new(5_000, 3), WallMs(5_100));
    // The wall clock now reads 2,000 ms (it went back).
    h.resolver
        .handle_write(MonoMs(0), WallMs(2_000), write_request(1, "users", "k", OpKind::Delete), &h.store)
        .unwrap();
    h.drain();
    assert!(h.commit_all()[0].ops[0].hlc > Hlc::new(5_000, 3));
}

#[test]
fn a_retry_after_a_restart_inside_the_window_still_gets_the_first_outcome() {
    let mut h = Harness::new("us-east");
    let w = |id| WriteRequest {
        idempotency_key: Some("retry-me".into()),
        ..write_request(id, "page_views", "home", OpKind::CounterAdd(5))
    };
    h.resolver.handle_write(MonoMs(0), WallMs(50_000), w(1), &h.store).unwrap();
    h.drain();
    let batches = h.commit_all();
    assert_eq!(batches[0].idempotency.len(), 1, "the key is committed with the write");
    // Restart: a new resolver, restored from what the store kept, 60 s later.
    let mut restarted = Resolver::new(dc("us-east"), topology(), batches[0].seen.clone());
    let records = h.store.idempotency_records(0).unwrap();
    restarted.handle_restored_idempotency(records.clone(), MonoMs(10), WallMs(110_000));
    restarted.handle_write(MonoMs(20), WallMs(110_000), w(2), &h.store).unwrap();
    let ks = Keyspace::new("page_views").unwrap();
    assert_eq!(
        restarted.poll_output(),
        Some(Output::Written {
            request: RequestId(2),
            dot: Dot::new(dc("us-east"), 1),
            keyspace: ks,
            summary: None
        })
    );
    assert_eq!(restarted.poll_output(), None, "nothing written again");
    // Restored after the window (600 s): forgotten, so the retry is a new write.
    let mut late = Resolver::new(dc("us-east"), topology(), batches[0].seen.clone());
    late.handle_restored_idempotency(records, MonoMs(10), WallMs(50_000 + 600_001));
    late.handle_write(MonoMs(20), WallMs(700_000), w(3), &h.store).unwrap();
    assert!(matches!(late.poll_output(), Some(Output::Persist { .. })));
}
