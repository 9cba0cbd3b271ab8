//! Queues, windows and logs stay within their bounds, as the scenario's mesh.toml settings say:
//! sync writes waiting (`commit_queue_ops_max`), batches in flight per link
//! (`inflight_batches_max`), the log's bytes (`log_retention_bytes`, with one compaction
//! interval of slack), and, once every DC holds every op, nothing left in any log (retention
//! compacts what every DC acknowledged).

use crate::world::World;
use mesh_store::Store;

pub(crate) fn sample(world: &mut World) {
    let r = &world.scenario.topology.config.replication;
    let (waiting_max, inflight_max) = (r.commit_queue_ops_max as usize, r.inflight_batches_max as usize);
    // A log may exceed its cap by what arrives between two compactions (1 s at most here).
    let log_bytes_max = r.log_retention_bytes.saturating_mul(2).max(r.log_retention_bytes + (1 << 20));
    let mut found = Vec::new();
    for d in &world.dcs {
        let log_bytes = d.store.log_stats().expect("the memory store reads").bytes;
        if log_bytes > log_bytes_max {
            found.push(format!("{}: the log holds {log_bytes} bytes, cap {}", d.id, r.log_retention_bytes));
        }
        let Some(node) = d.node.as_ref() else { continue };
        if node.sync_waiting() > waiting_max {
            found.push(format!("{}: {} sync writes waiting", d.id, node.sync_waiting()));
        }
        for peer in &world.scenario.dcs {
            if let Some(rep) = node.replicator(peer) {
                if rep.inflight() > inflight_max {
                    found.push(format!("{} → {peer}: {} batches in flight", d.id, rep.inflight()));
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
