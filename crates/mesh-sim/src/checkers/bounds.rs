//! Queues, windows and logs stay within their bounds: sync writes waiting, batches in flight per
//! link, and, once every DC holds every op, nothing left in any log (retention compacts what
//! every DC acknowledged).

use crate::world::World;
use mesh_engine::node::NodeConfig;
use mesh_store::Store;

pub(crate) fn sample(world: &mut World) {
    let config = NodeConfig::new(&world.scenario.topology);
    let mut found = Vec::new();
    for d in &world.dcs {
        let Some(node) = d.node.as_ref() else { continue };
        if node.sync_waiting() > config.sync_waiting_max {
            found.push(format!("{}: {} sync writes waiting", d.id, node.sync_waiting()));
        }
        for peer in &world.scenario.dcs {
            if let Some(r) = node.replicator(peer) {
                if r.inflight() > config.replicator.inflight_max {
                    found.push(format!("{} → {peer}: {} batches in flight", d.id, r.inflight()));
                }
            }
        }
    }
    for detail in found {
        world.history.violation("bounds", world.now_ms, detail);
    }
}

pub(crate) fn finish(world: &mut World) {
    let seen = world.durable_seen();
    if seen.windows(2).any(|w| w[0] != w[1]) {
        return; // Not converged: the convergence checker reports it.
    }
    let mut found = Vec::new();
    for d in &world.dcs {
        let stats = d.store.log_stats().expect("the memory store reads");
        if stats.ops > 0 {
            found.push(format!("{} still logs {} ops that every DC holds", d.id, stats.ops));
        }
    }
    for detail in found {
        world.history.violation("bounds", world.now_ms, detail);
    }
}
