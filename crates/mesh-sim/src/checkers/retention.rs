//! The log keeps every op some DC still lacks, unless a retention cap forces it out: when a DC
//! compacts its log, every op it drops that another DC does not hold durably must be older than
//! `log_retention_age_s` (durable at its origin that long ago), or the log must have exceeded
//! `log_retention_bytes`. Checked at every compaction, against the stores themselves (a DC that
//! lost its disk counts as holding what it held before: it catches up by state transfer).

use crate::world::World;
use mesh_core::{Dot, VersionVector};
use mesh_store::Store;

/// Most violations reported per run.
const REPORTS_MAX: usize = 5;

/// Checks a compaction of `dc`'s log below `below`, before it happens.
pub(crate) fn check_compaction(world: &mut World, dc: usize, below: &VersionVector) {
    let r = &world.scenario.topology.config.replication;
    let (age_ms, bytes_max) = (r.log_retention_age_s.saturating_mul(1_000), r.log_retention_bytes);
    let store = &world.dcs[dc].store;
    let bytes = store.log_stats().expect("the memory store reads").bytes;
    if bytes > bytes_max {
        return;
    }
    let mut everywhere: Option<VersionVector> = None;
    for seen in world.durable_seen_ever() {
        match &mut everywhere {
            Some(v) => v.meet(&seen),
            None => everywhere = Some(seen),
        }
    }
    let everywhere = everywhere.unwrap_or_default();
    let mut found = Vec::new();
    for (origin, upto) in below.iter() {
        for seq in everywhere.get(origin) + 1..=upto {
            let dot = Dot::new(origin.clone(), seq);
            let Some(t) = world.history.durable_ms.get(&dot) else { continue };
            if t + age_ms > world.now_ms && found.len() < REPORTS_MAX {
                found.push(format!(
                    "{} compacts {dot:?}, which some DC lacks, {} ms after it became durable (retention age {age_ms} ms, log {bytes} of {bytes_max} bytes)",
                    world.dcs[dc].id,
                    world.now_ms - t
                ));
            }
        }
    }
    for detail in found {
        world.history.violation("retention", world.now_ms, detail);
    }
}
