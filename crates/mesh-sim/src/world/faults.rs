//! The scenario's faults: each is scheduled to start and end at its window, and applied here as
//! what it does to the world: partitions and cuts cut links of the [`super::network`], flaps cut
//! and heal them each period, crashes stop a DC's process (its disk keeping what
//! [`super::disk`] says a power loss keeps) until it restarts, a lost disk comes back empty, and
//! skew moves a DC's clock. When the last fault in progress ends, the checkers hear of the heal.

use super::{Event, World};
use crate::checkers::Checkers;
use crate::scenario::FaultKind;
use mesh_core::DcId;

impl World {
    /// Schedules the start and the end of every fault of the scenario.
    pub(super) fn schedule_faults(&mut self) {
        for i in 0..self.scenario.file.faults.len() {
            let (start, end) = self.scenario.fault_window_ms(&self.scenario.file.faults[i]);
            self.schedule(start, Event::FaultStart(i));
            self.schedule(end, Event::FaultEnd(i));
        }
    }

    /// The directed links fault `i` cuts (none for the faults of a single DC).
    fn fault_links(&self, i: usize) -> Vec<(usize, usize)> {
        let fault = &self.scenario.file.faults[i];
        let n = self.dcs.len();
        match &fault.kind {
            FaultKind::Partition { groups } => {
                let group_of = |dc: usize| {
                    groups
                        .iter()
                        .position(|g| g.iter().any(|x| x == self.dcs[dc].id.as_str()))
                        .unwrap_or(groups.len())
                };
                (0..n)
                    .flat_map(|a| (0..n).map(move |b| (a, b)))
                    .filter(|&(a, b)| a != b && group_of(a) != group_of(b))
                    .collect()
            }
            FaultKind::Cut { links, oneway } => self.directed(links, !oneway),
            FaultKind::Flap { links, .. } => self.directed(links, true),
            FaultKind::Crash { .. } | FaultKind::DiskLost { .. } | FaultKind::Skew { .. } => Vec::new(),
        }
    }

    /// `links` as directed index pairs, both ways when `both`.
    fn directed(&self, links: &[[String; 2]], both: bool) -> Vec<(usize, usize)> {
        let index = |name: &String| self.index(&DcId::new(name).expect("validated"));
        let mut out = Vec::new();
        for [x, y] in links {
            let (a, b) = (index(x), index(y));
            out.push((a, b));
            if both {
                out.push((b, a));
            }
        }
        out
    }

    /// Fault `i` starts (`start`) or ends (`!start`).
    pub(super) fn fault(&mut self, i: usize, start: bool) {
        let fault = self.scenario.file.faults[i].clone();
        self.hash(&[9, i as u64, start as u64]);
        if self.options.trace {
            self.note(format!("fault {} {:?}", if start { "start" } else { "end" }, fault.kind));
        }
        if start {
            self.active_faults.insert(i);
        } else {
            self.active_faults.remove(&i);
        }
        match &fault.kind {
            FaultKind::Partition { .. } | FaultKind::Cut { .. } => {
                let links = self.fault_links(i);
                self.cut_links(&links, start);
            }
            FaultKind::Flap { .. } => {
                if start {
                    self.flap(i, true);
                } else if self.flap_cut(i) {
                    // The flap ends healed.
                    let links = self.fault_links(i);
                    self.cut_links(&links, false);
                }
            }
            FaultKind::Crash { dc } | FaultKind::DiskLost { dc } => {
                let dc = self.index(&DcId::new(dc).expect("validated"));
                let disk_lost = matches!(fault.kind, FaultKind::DiskLost { .. });
                if start {
                    self.crash(dc);
                    if disk_lost {
                        self.lose_disk(dc);
                    }
                } else {
                    if disk_lost {
                        self.forget_lost_with_disk(dc);
                    }
                    // The old process's connections stay half-open at its peers until their idle
                    // timeout, or until a new dial (by either end) replaces them.
                    self.dcs[dc].incarnation += 1;
                    self.dcs[dc].timer_at = None;
                    self.start_node(dc);
                }
            }
            FaultKind::Skew { dc, offset_ms } => {
                let dc = self.index(&DcId::new(dc).expect("validated"));
                self.dcs[dc].offset_ms += if start { *offset_ms } else { -offset_ms };
            }
        }
        if !start && self.active_faults.is_empty() {
            let mut checkers = std::mem::replace(&mut self.checkers, Checkers::new(&self.scenario));
            checkers.healed(self);
            self.checkers = checkers;
        }
    }

    /// Whether flap `fault`'s links are cut now.
    fn flap_cut(&self, fault: usize) -> bool {
        self.fault_links(fault).first().is_some_and(|&(a, b)| self.cut(a, b))
    }

    /// Flap `fault` cuts (`cut`) or heals its links, and schedules the opposite a period later.
    pub(super) fn flap(&mut self, fault: usize, cut: bool) {
        if !self.active_faults.contains(&fault) {
            // The fault ended; the end healed the links.
            return;
        }
        let links = self.fault_links(fault);
        self.cut_links(&links, cut);
        if let FaultKind::Flap { period_ms, .. } = self.scenario.file.faults[fault].kind {
            self.schedule(self.now_ms + period_ms, Event::Flap { fault, cut: !cut });
        }
    }

    /// `dc`'s process dies with the power: its node is gone, its disk keeps what a power loss
    /// keeps, and its peers notice when their connections idle out.
    fn crash(&mut self, dc: usize) {
        self.stats.crashes += 1;
        if let Some(node) = self.dcs[dc].node.as_ref() {
            self.stats.transfers += node.stats().transfers_received;
            self.stats.transfers_sent += node.stats().transfers_sent;
        }
        let (keep, unsynced) = self.power_loss(dc);
        let d = &mut self.dcs[dc];
        d.node = None;
        d.health = None;
        d.health_inbox.clear();
        d.verdict_inbox.clear();
        d.named.clear();
        d.timer_at = None;
        d.incarnation += 1;
        self.hash(&[10, dc as u64, keep as u64]);
        if self.options.trace {
            self.note(format!("crash {} kept {keep} of {unsynced} unsynced commits", self.dcs[dc].id));
        }
        self.idle_out_connections_of(dc);
    }
}
