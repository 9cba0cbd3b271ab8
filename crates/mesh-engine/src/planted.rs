//! Known bugs that can be planted behind a switch, so the simulator can show that its checkers
//! catch each one (a harness that cannot fail proves nothing). Production never sets one.

use mesh_core::{DcId, Dot, Version};

/// A bug to plant. Each names the rule it breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PlantedBug {
    /// LWW ties on the HLC go to the reading DC's own version instead of the higher DC id.
    LwwTieFavoursLocal,
    /// Acks, completions and conflict records leave at persist time, before the commit.
    AckBeforeCommit,
    /// After a restart the next seq is the last durable one, which is then reused.
    SeqReuseAfterRestart,
    /// Tombstones are collected once this DC has seen them, without waiting for every DC.
    EarlyTombstoneGc,
    /// The log is compacted below what the most advanced peer acked, not the least.
    CompactBelowLaggingPeer,
    /// Ops of a third DC are never relayed.
    NoRelay,
    /// A peer counts towards a sync write once the batch is sent, not once it acked.
    SyncAckOnSend,
    /// A DC on a new (unsettled) disk takes writes after the startup bound without hearing
    /// every peer, so it may name again a seq it issued before it lost its disk.
    NewDiskSkipsPeers,
}

impl PlantedBug {
    /// Every plantable bug.
    pub const ALL: [PlantedBug; 8] = [
        PlantedBug::LwwTieFavoursLocal,
        PlantedBug::AckBeforeCommit,
        PlantedBug::SeqReuseAfterRestart,
        PlantedBug::EarlyTombstoneGc,
        PlantedBug::CompactBelowLaggingPeer,
        PlantedBug::NoRelay,
        PlantedBug::SyncAckOnSend,
        PlantedBug::NewDiskSkipsPeers,
    ];

    /// The name used on the command line and in test names.
    pub fn name(self) -> &'static str {
        match self {
            PlantedBug::LwwTieFavoursLocal => "lww-tie-favours-local",
            PlantedBug::AckBeforeCommit => "ack-before-commit",
            PlantedBug::SeqReuseAfterRestart => "seq-reuse-after-restart",
            PlantedBug::EarlyTombstoneGc => "early-tombstone-gc",
            PlantedBug::CompactBelowLaggingPeer => "compact-below-lagging-peer",
            PlantedBug::NoRelay => "no-relay",
            PlantedBug::SyncAckOnSend => "sync-ack-on-send",
            PlantedBug::NewDiskSkipsPeers => "new-disk-skips-peers",
        }
    }

    /// The bug named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.name() == name)
    }
}

/// The planted LWW tie-break: among the versions with the highest HLC, the one from `local` if
/// there is one. `None` when there is no tie or no local version in it.
pub(crate) fn lww_tie_favouring(versions: &[Version], local: &DcId) -> Option<Dot> {
    let top = versions.iter().map(|v| v.hlc).max()?;
    let tied: Vec<&Version> = versions.iter().filter(|v| v.hlc == top).collect();
    if tied.len() < 2 {
        return None;
    }
    tied.into_iter().find(|v| &v.dot.origin == local).map(|v| v.dot.clone())
}
