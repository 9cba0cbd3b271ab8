//! The naive model: from every op that became durable at its origin, what each key must read as
//! under its keyspace's strategy, computed the slow, obvious way (a version survives when no
//! other op of the key has it in its context; the winner is picked by the strategy's stated
//! order). Every DC's reads must match it, and every conflict record must name the winner the
//! model picks from the record's versions.

use crate::world::World;
use mesh_core::{DcId, Dot, Hlc, Key, Keyspace, Op, OpKind, ReadValue, Version, VersionVector};
use std::collections::{BTreeMap, BTreeSet};

/// Most violations reported per run.
const REPORTS_MAX: usize = 10;

/// A register version as the model sees it.
struct V {
    dot: Dot,
    hlc: Hlc,
    value: Option<Vec<u8>>,
}

fn order_key(v: &V) -> (Hlc, String, u64) {
    (v.hlc, v.dot.origin.as_str().to_owned(), v.dot.seq)
}

/// The winner among `versions` under `strategy`; `None` for siblings.
fn winner(strategy: &str, priorities: &BTreeMap<DcId, u32>, versions: &[V]) -> Option<Dot> {
    let pick = match strategy {
        "lww" => versions.iter().max_by_key(|v| order_key(v)),
        "priority" => versions
            .iter()
            .max_by_key(|v| (priorities.get(&v.dot.origin).copied().unwrap_or(0), order_key(v))),
        "custom:first-writer-wins" => versions.iter().min_by_key(|v| order_key(v)),
        "custom:max-value" => versions.iter().max_by_key(|v| (v.value.clone(), order_key(v))),
        _ => None,
    };
    pick.map(|v| v.dot.clone())
}

fn from_versions(versions: &[Version]) -> Vec<V> {
    versions
        .iter()
        .map(|v| V { dot: v.dot.clone(), hlc: v.hlc, value: v.value.as_ref().map(|b| b.to_vec()) })
        .collect()
}

pub(crate) fn finish(world: &mut World) {
    let topology = &world.scenario.topology;
    let priorities: BTreeMap<DcId, u32> = topology.dcs.iter().map(|d| (d.id.clone(), d.priority)).collect();
    let mut found = Vec::new();
    for (dc, c) in &world.history.conflicts {
        let expected = winner(&c.strategy, &priorities, &from_versions(&c.versions));
        if c.strategy != "siblings" && expected != c.winner {
            found.push(format!(
                "{dc}: conflict on {}/{} resolved to {:?}, the model says {expected:?}",
                c.keyspace, c.key, c.winner
            ));
        }
    }
    let mut by_key: BTreeMap<(Keyspace, Key), Vec<&Op>> = BTreeMap::new();
    for op in world.history.ops.values() {
        by_key.entry((op.keyspace.clone(), op.key.clone())).or_default().push(op);
    }
    // A key only ops lost with a disk touched must read as never written.
    for op in &world.history.lost_with_disk {
        by_key.entry((op.keyspace.clone(), op.key.clone())).or_default();
    }
    for ((keyspace, key), ops) in &by_key {
        let Some(spec) = topology.keyspace(keyspace) else { continue };
        let strategy = spec.rules.strategy().to_string();
        let expected = expect(&strategy, &priorities, ops);
        for (i, d) in world.dcs.iter().enumerate() {
            let Some(read) = world.read(i, keyspace, key) else { continue };
            let got = normalise(&read);
            if got != expected {
                found
                    .push(format!("{} reads {keyspace}/{key} as {got:?}, the model says {expected:?}", d.id));
            }
        }
        if found.len() >= REPORTS_MAX {
            break;
        }
    }
    for detail in found.into_iter().take(REPORTS_MAX) {
        world.history.violation("model", world.now_ms, detail);
    }
}

/// A read, reduced to what the model predicts.
#[derive(Debug, PartialEq, Eq)]
enum Expected {
    /// Register: the dots read (none when absent).
    Dots(BTreeSet<Dot>),
    Counter(i64),
    Members(BTreeSet<Vec<u8>>),
}

fn normalise(read: &ReadValue) -> Expected {
    match read {
        ReadValue::Register(versions) => Expected::Dots(versions.iter().map(|v| v.dot.clone()).collect()),
        ReadValue::Counter(n) => Expected::Counter(*n),
        ReadValue::Set(members) => Expected::Members(members.iter().map(|m| m.to_vec()).collect()),
    }
}

fn expect(strategy: &str, priorities: &BTreeMap<DcId, u32>, ops: &[&Op]) -> Expected {
    match strategy {
        "counter" => Expected::Counter(
            ops.iter()
                .map(|o| match o.kind {
                    OpKind::CounterAdd(n) => n,
                    _ => 0,
                })
                .fold(0i64, i64::saturating_add),
        ),
        "set" => {
            // An add of m is removed when some remove of m has it in its context, that is when
            // the join of the contexts of m's removes covers it.
            let mut removes: BTreeMap<&[u8], VersionVector> = BTreeMap::new();
            for r in ops {
                if let OpKind::SetRemove(gone) = &r.kind {
                    for m in gone {
                        removes.entry(m.as_slice()).or_default().join(&r.context);
                    }
                }
            }
            let mut members = BTreeSet::new();
            for add in ops {
                let OpKind::SetAdd(added) = &add.kind else { continue };
                for m in added {
                    if !removes.get(m.as_slice()).is_some_and(|c| c.covers(&add.dot)) {
                        members.insert(m.to_vec());
                    }
                }
            }
            Expected::Members(members)
        }
        _ => {
            // A version survives when no other op of the key has it in its context, that is when
            // the join of the key's contexts does not cover it.
            let mut contexts = VersionVector::new();
            for o in ops {
                contexts.join(&o.context);
            }
            let survivors: Vec<V> = ops
                .iter()
                .filter(|v| !contexts.covers(&v.dot))
                .map(|o| V {
                    dot: o.dot.clone(),
                    hlc: o.hlc,
                    value: match &o.kind {
                        OpKind::Put(b) => Some(b.clone()),
                        _ => None,
                    },
                })
                .collect();
            if strategy == "siblings" {
                return Expected::Dots(
                    survivors.iter().filter(|v| v.value.is_some()).map(|v| v.dot.clone()).collect(),
                );
            }
            let w = winner(strategy, priorities, &survivors);
            let live = w.filter(|w| survivors.iter().any(|v| v.dot == *w && v.value.is_some()));
            Expected::Dots(live.into_iter().collect())
        }
    }
}
