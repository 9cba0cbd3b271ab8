//! After each heal, every DC comes to hold every op that existed anywhere at the heal, within
//! `check.convergence_bound_s`; at the end of the run (after the settle time) every DC holds the
//! same full key state — values, siblings, dots, tombstones — and the same `seen` vector.

use crate::scenario::Scenario;
use crate::world::World;
use mesh_core::{Key, KeyState, Keyspace, VersionVector};
use mesh_store::Store;

pub(crate) struct Convergence {
    bound_ms: u64,
    /// Heals not converged yet: (when, the join of every DC's durable vector then).
    pending: Vec<(u64, VersionVector)>,
}

impl Convergence {
    pub(crate) fn new(scenario: &Scenario) -> Self {
        Self { bound_ms: scenario.convergence_bound_ms(), pending: Vec::new() }
    }

    pub(crate) fn healed(&mut self, world: &mut World) {
        let mut target = VersionVector::new();
        for seen in world.durable_seen() {
            target.join(&seen);
        }
        self.pending.push((world.now_ms, target));
    }

    pub(crate) fn sample(&mut self, world: &mut World) {
        let seen = world.durable_seen();
        let now = world.now_ms;
        let bound = self.bound_ms;
        self.pending.retain(|(at, target)| {
            if seen.iter().all(|s| s.dominates(target)) {
                world.stats.convergence_ms.push(now - at);
                return false;
            }
            if now - at > bound {
                let behind: Vec<String> = world
                    .dcs
                    .iter()
                    .zip(&seen)
                    .filter(|(_, s)| !s.dominates(target))
                    .map(|(d, s)| format!("{} at {s:?}", d.id))
                    .collect();
                let detail = format!(
                    "not converged {bound} ms after the heal at {at} ms: target {target:?}; behind: {}",
                    behind.join(", ")
                );
                world.history.violation("convergence", now, detail);
                return false;
            }
            true
        });
    }

    pub(crate) fn finish(&mut self, world: &mut World) {
        self.sample(world);
        for (at, target) in std::mem::take(&mut self.pending) {
            let detail =
                format!("the run ended before converging after the heal at {at} ms (target {target:?})");
            world.history.violation("convergence", world.now_ms, detail);
        }
        let seen = world.durable_seen();
        let states: Vec<Vec<(Keyspace, Key, KeyState)>> = world
            .dcs
            .iter()
            .map(|d| {
                let snapshot = d.store.snapshot().expect("the memory store snapshots");
                snapshot.chunk(None, usize::MAX).expect("the memory store reads")
            })
            .collect();
        for i in 1..world.dcs.len() {
            if seen[i] != seen[0] {
                let detail = format!(
                    "{} ends with seen {:?} but {} with {:?}",
                    world.dcs[0].id, seen[0], world.dcs[i].id, seen[i]
                );
                world.history.violation("convergence", world.now_ms, detail);
            }
            if states[i] != states[0] {
                let differ = first_difference(&states[0], &states[i]);
                let detail = format!(
                    "{} and {} end with different states: {differ}",
                    world.dcs[0].id, world.dcs[i].id
                );
                world.history.violation("convergence", world.now_ms, detail);
            }
        }
    }
}

fn first_difference(a: &[(Keyspace, Key, KeyState)], b: &[(Keyspace, Key, KeyState)]) -> String {
    use std::collections::BTreeMap;
    let a: BTreeMap<_, _> = a.iter().map(|(ks, k, s)| ((ks, k), s)).collect();
    let b: BTreeMap<_, _> = b.iter().map(|(ks, k, s)| ((ks, k), s)).collect();
    for (k, s) in &a {
        if b.get(k) != Some(s) {
            return format!("{}/{}: {s:?} vs {:?}", k.0, k.1, b.get(k));
        }
    }
    for (k, s) in &b {
        if !a.contains_key(k) {
            return format!("{}/{}: missing vs {s:?}", k.0, k.1);
        }
    }
    "none found".into()
}
