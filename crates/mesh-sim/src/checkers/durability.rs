//! No acknowledged write is lost: every answered write is durable at its origin under its own
//! dot (unless it was durable nowhere else when its origin lost its disk), is held by every DC at the end, and is still visible in every DC's key state unless a
//! causally later write superseded it (some op of the key whose context covers it). A write
//! that only lost a strategy's resolution stays in the state beside its winner, so it is checked
//! the same way.

use crate::world::World;
use mesh_core::{Key, Keyspace, OpKind, Value, VersionVector};
use mesh_store::Store;
use std::collections::BTreeMap;

/// Most violations reported per run.
const REPORTS_MAX: usize = 10;

pub(crate) fn finish(world: &mut World) {
    let mut found = Vec::new();
    let seen = world.durable_seen();
    // A write is superseded when another op of its key has it in its context, that is when the
    // join of the key's contexts covers it (an op's context never covers the op itself).
    let mut contexts: BTreeMap<(&Keyspace, &Key), VersionVector> = BTreeMap::new();
    for o in world.history.ops.values() {
        contexts.entry((&o.keyspace, &o.key)).or_default().join(&o.context);
    }
    for reply in &world.history.replies {
        // Durable only at an origin that lost its disk: gone with it (an async write's risk).
        if world.history.lost_with_disk.contains(&reply.op) {
            continue;
        }
        match world.history.ops.get(&reply.dot) {
            None => {
                found.push(format!("{:?} was answered but never became durable at {}", reply.dot, reply.dc))
            }
            Some(op) if *op != reply.op => {
                found.push(format!("{:?} was answered for {:?} but names {:?}", reply.dot, reply.op, op))
            }
            Some(_) => {}
        }
        let op = &reply.op;
        let superseded = || contexts.get(&(&op.keyspace, &op.key)).is_some_and(|c| c.covers(&op.dot));
        for (i, d) in world.dcs.iter().enumerate() {
            if !seen[i].covers(&reply.dot) {
                found.push(format!("{} lacks the answered write {:?}", d.id, reply.dot));
                continue;
            }
            if !matches!(op.kind, OpKind::Put(_) | OpKind::Delete) {
                continue; // Counter and set values are judged by the model checker.
            }
            let state = d.store.get(&op.keyspace, &op.key).expect("the memory store reads");
            let present = match state.as_ref().map(|s| s.value()) {
                Some(Value::Register(versions)) => versions.iter().any(|v| v.dot == reply.dot),
                _ => false,
            };
            // A collected tombstone: the key's context still holds the delete.
            let collected_delete =
                op.kind == OpKind::Delete && state.as_ref().is_some_and(|s| s.covers(&reply.dot));
            if !present && !collected_delete && !superseded() {
                found.push(format!(
                    "{} lost the answered write {:?} to {}",
                    d.id,
                    reply.dot,
                    key_name(&op.keyspace, &op.key)
                ));
            }
        }
        if found.len() >= REPORTS_MAX {
            break;
        }
    }
    for detail in found.into_iter().take(REPORTS_MAX) {
        world.history.violation("no-acked-write-lost", world.now_ms, detail);
    }
}

fn key_name(keyspace: &Keyspace, key: &Key) -> String {
    format!("{keyspace}/{key}")
}
