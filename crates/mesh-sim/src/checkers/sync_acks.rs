//! A write is answered only once it is durable where the answer says: its own DC for every
//! reply, and every DC a sync reply counts as confirmed. Checked against the DCs' durable
//! stores at the moment of the reply.

use crate::world::World;
use mesh_core::Dot;
use mesh_engine::sync::SyncOutcome;
use mesh_store::LogRead;

/// Checks a reply from `dc` for the write `dot`.
pub(crate) fn check_reply(world: &mut World, dc: usize, dot: &Dot, outcome: &SyncOutcome) {
    let confirmed = match outcome {
        SyncOutcome::Done { confirmed, .. } | SyncOutcome::TimedOut { confirmed, .. } => confirmed.clone(),
    };
    let server = world.dcs[dc].id.clone();
    let mut must_hold: Vec<mesh_core::DcId> = confirmed;
    if !must_hold.contains(&server) {
        must_hold.push(server.clone());
    }
    for holder in must_hold {
        let i = world.index(&holder);
        let seen = world.dcs[i].store.seen().expect("the memory store reads");
        if !seen.covers(dot) {
            let detail =
                format!("{server} answered {dot:?} as durable at {holder}, whose durable seen is {seen:?}");
            world.history.violation("sync-acks", world.now_ms, detail);
        }
    }
}
