//! Fault-free, each op is delivered at most 1.1 × (N − 1) times: relaying does not multiply
//! traffic in a healthy mesh (DESIGN.md, "Replication protocol"). Checked only where the
//! scenario asks (`check.deliveries`), as faults legitimately cause resends.

use crate::world::World;

pub(crate) fn finish(world: &mut World) {
    if !world.scenario.file.check.deliveries {
        return;
    }
    let ops = world.history.ops.len() as f64;
    if ops == 0.0 {
        return;
    }
    let n = world.dcs.len() as f64;
    let per_op = world.stats.ops_delivered as f64 / ops;
    let bound = 1.1 * (n - 1.0);
    if per_op > bound {
        let detail = format!("{per_op:.3} deliveries per op, more than 1.1 × (N − 1) = {bound:.2}");
        world.history.violation("deliveries", world.now_ms, detail);
    }
}
