//! Fault-free, each op is delivered at most 1.1 × (N − 1) times: relaying does not multiply
//! traffic in a healthy mesh (DESIGN.md, "Replication protocol"). Checked only where the
//! scenario asks (`check.deliveries`), as faults legitimately cause resends. A scenario with
//! faults may set its own bound (`check.deliveries_max`): after a partition heals, each origin
//! streams the backlog to the DC that was cut off, and a third DC relaying the same ops at the
//! same time would send it twice.

use crate::world::World;

pub(crate) fn finish(world: &mut World) {
    let check = &world.scenario.file.check;
    let n = world.dcs.len() as f64;
    let bounds = [
        check.deliveries.then_some((1.1 * (n - 1.0), "1.1 × (N − 1)")),
        check.deliveries_max.map(|max| (max, "check.deliveries_max")),
    ];
    let ops = world.history.ops.len() as f64;
    if ops == 0.0 {
        return;
    }
    let per_op = world.stats.ops_delivered as f64 / ops;
    for (bound, name) in bounds.into_iter().flatten() {
        if per_op > bound {
            let detail = format!("{per_op:.3} deliveries per op, more than {name} = {bound:.2}");
            world.history.violation("deliveries", world.now_ms, detail);
        }
    }
}
