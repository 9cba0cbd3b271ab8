//! Every deadline of a [`crate::node::Node`], named by one enum, after quinn-proto's
//! `TimerTable`: the node asks each machine for its next deadline, keeps its own in a
//! [`TimerTable`], and handles what is due in one place, in [`Timer`]'s order.

use mesh_core::DcId;
use std::collections::BTreeMap;

/// A deadline of the node. Due timers are handled in this order (the derived `Ord`): links
/// first, then writes, dials, and the periodic log and tombstone work last. (The failure
/// detector keeps its own timer: [`crate::health::HealthMonitor`] runs beside the node.)
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Timer {
    /// A link to the peer is up and its Hello must come by then, or the link is closed.
    Hello(DcId),
    /// The oldest sync write times out ([`crate::sync::SyncTracker`]).
    Sync,
    /// The peer's replicator: a partial batch is due, or its window is resent
    /// ([`crate::replicator::Replicator`]).
    Replicator(DcId),
    /// A dial of the peer is due ([`crate::pool::DialPolicy`]).
    Dial(DcId),
    /// An outgoing state transfer to the peer is abandoned without an answer
    /// ([`crate::transfer::TransferOut`]).
    Transfer(DcId),
    /// An op becomes old enough to relay ([`crate::replicator::RelayClock`]), or a link that
    /// just opened ends its wait before relaying ([`crate::replicator::Replicator::opened_within`]).
    Relay,
    /// The start gate's bound passes ([`crate::gate::StartGate`]).
    StartGate,
    /// The log is compacted ([`crate::retention::Retention`]).
    Compact,
    /// A round of tombstone GC ([`crate::gc`]).
    Gc,
}

/// The deadlines the node sets itself, in ms of the runtime clock.
#[derive(Debug, Clone, Default)]
pub struct TimerTable {
    deadlines: BTreeMap<Timer, u64>,
}

impl TimerTable {
    /// Arms `timer` for `at_ms` (replacing its deadline).
    pub fn set(&mut self, timer: Timer, at_ms: u64) {
        self.deadlines.insert(timer, at_ms);
    }

    /// Disarms `timer`.
    pub fn stop(&mut self, timer: &Timer) {
        self.deadlines.remove(timer);
    }

    /// When `timer` is due, if armed.
    pub fn get(&self, timer: &Timer) -> Option<u64> {
        self.deadlines.get(timer).copied()
    }

    /// Whether `timer` is armed and due at `now_ms`.
    pub fn is_due(&self, timer: &Timer, now_ms: u64) -> bool {
        self.get(timer).is_some_and(|t| t <= now_ms)
    }

    /// Every armed timer and its deadline.
    pub fn iter(&self) -> impl Iterator<Item = (&Timer, u64)> {
        self.deadlines.iter().map(|(t, at)| (t, *at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_order_links_first_and_housekeeping_last() {
        let p = DcId::new("p").expect("valid");
        let mut order = vec![Timer::Gc, Timer::Dial(p.clone()), Timer::Hello(p.clone()), Timer::Sync];
        order.sort();
        assert_eq!(order, vec![Timer::Hello(p.clone()), Timer::Sync, Timer::Dial(p), Timer::Gc]);
    }

    #[test]
    fn a_table_arms_replaces_and_stops() {
        let mut t = TimerTable::default();
        t.set(Timer::Gc, 10);
        t.set(Timer::Gc, 20);
        assert!(!t.is_due(&Timer::Gc, 19));
        assert!(t.is_due(&Timer::Gc, 20));
        t.stop(&Timer::Gc);
        assert_eq!(t.get(&Timer::Gc), None);
    }
}
