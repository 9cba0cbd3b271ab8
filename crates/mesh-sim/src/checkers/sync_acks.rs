//! A write is answered only once it is durable where the answer says: its own DC for every
//! reply, and every DC a sync reply counts as confirmed; and a write reported done is confirmed
//! by as many DCs as its mode asks (counted here from the scenario, not by the engine's rules).
//! Checked against the DCs' durable stores at the moment of the reply.

use crate::scenario::Scenario;
use crate::world::World;
use mesh_core::topology::{Acks, AcksName, Mode};
use mesh_core::{Dot, Keyspace};
use mesh_engine::node::WriteOptions;
use mesh_engine::sync::SyncOutcome;

/// How many DCs must hold a write to `keyspace` sent with `options` before it is done: DESIGN.md's
/// modes, counted naively (critical keyspaces are sync; a request's mode overrides the
/// keyspace's; hybrid without an override is async; quorum is a majority, all is every DC).
pub(crate) fn required(scenario: &Scenario, keyspace: &Keyspace, options: WriteOptions) -> usize {
    let config = &scenario.topology.config;
    let ks = &config.keyspaces[keyspace.as_str()];
    let mode = options.mode.or(ks.mode).unwrap_or(config.replication.default_mode);
    if !ks.critical && mode != Mode::Sync {
        return 1;
    }
    let n = scenario.dcs.len();
    match options.acks.or(ks.sync_acks).unwrap_or(config.replication.sync_acks) {
        Acks::Count(c) => c as usize,
        Acks::Named(AcksName::Quorum) => n / 2 + 1,
        Acks::Named(AcksName::All) => n,
    }
}

/// Checks a reply from `dc` for the write `dot` that needed `required` DCs.
pub(crate) fn check_reply(world: &mut World, dc: usize, dot: &Dot, outcome: &SyncOutcome, required: usize) {
    let confirmed = match outcome {
        SyncOutcome::Done { confirmed, .. } | SyncOutcome::TimedOut { confirmed, .. } => confirmed.clone(),
    };
    if let SyncOutcome::Done { confirmed, .. } = outcome {
        if confirmed.len() < required {
            let detail =
                format!("{dot:?} reported done with {} of the {required} DCs it needs", confirmed.len());
            world.history.violation("sync-acks", world.now_ms, detail);
        }
    }
    let server = world.dcs[dc].id.clone();
    let mut must_hold: Vec<mesh_core::DcId> = confirmed;
    if !must_hold.contains(&server) {
        must_hold.push(server.clone());
    }
    // What a DC held before it lost its disk counts: its ack was true when it was sent.
    let held = world.durable_seen_for_acks();
    for holder in must_hold {
        let seen = &held[world.index(&holder)];
        if !seen.covers(dot) {
            let detail =
                format!("{server} answered {dot:?} as durable at {holder}, whose durable seen is {seen:?}");
            world.history.violation("sync-acks", world.now_ms, detail);
        }
    }
}
