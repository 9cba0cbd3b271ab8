//! While two DCs stay connected through working links (directly or through others), an op one
//! of them has held for `check.lag_bound_s` is held by the other: relaying carries ops around a
//! cut link before any heal.

use crate::scenario::Scenario;
use crate::world::World;
use mesh_core::VersionVector;
use std::collections::{BTreeMap, VecDeque};

/// Most lag violations reported per run (one broken link repeats every sample).
const REPORTS_MAX: usize = 5;

pub(crate) struct Lag {
    bound_ms: u64,
    /// Per pair (lower, higher), since when they have been connected without a break.
    since: BTreeMap<(usize, usize), u64>,
    /// Per DC, (time, durable vector) samples covering the last bound.
    samples: Vec<VecDeque<(u64, VersionVector)>>,
    reported: usize,
}

impl Lag {
    pub(crate) fn new(scenario: &Scenario) -> Self {
        Self {
            bound_ms: scenario.lag_bound_ms(),
            since: BTreeMap::new(),
            samples: vec![VecDeque::new(); scenario.dcs.len()],
            reported: 0,
        }
    }

    pub(crate) fn sample(&mut self, world: &mut World) {
        let now = world.now_ms;
        let n = world.dcs.len();
        let seen = world.durable_seen();
        for (i, s) in seen.iter().enumerate() {
            let q = &mut self.samples[i];
            q.push_back((now, s.clone()));
            // Keep one sample at or before `now - bound`, and everything after it.
            while q.len() >= 2 && q[1].0 + self.bound_ms <= now {
                q.pop_front();
            }
        }
        // Connected components of the working links.
        let mut component: Vec<usize> = (0..n).collect();
        let mut changed = true;
        while changed {
            changed = false;
            for a in 0..n {
                for b in 0..n {
                    if a != b && world.linked(a, b) && component[b] > component[a] {
                        component[b] = component[a];
                        changed = true;
                    }
                }
            }
        }
        for a in 0..n {
            for b in a + 1..n {
                let together = world.dcs[a].alive() && world.dcs[b].alive() && component[a] == component[b];
                if together {
                    self.since.entry((a, b)).or_insert(now);
                } else {
                    self.since.remove(&(a, b));
                }
            }
        }
        for (&(a, b), &since) in &self.since {
            for (x, y) in [(a, b), (b, a)] {
                // The lag of y behind x: how long the oldest op x holds and y lacks has been held.
                if let Some((t, _)) = self.samples[x].iter().find(|(_, v)| !seen[y].dominates(v)) {
                    let lag = now - t;
                    // Only lag that built up while connected counts (a heal starts a catch-up).
                    if since + self.bound_ms > now {
                        continue;
                    }
                    world.stats.lag_ms_max = world.stats.lag_ms_max.max(lag.min(now - since));
                    if lag >= self.bound_ms && self.reported < REPORTS_MAX {
                        self.reported += 1;
                        let detail = format!(
                            "{} lacks ops {} has held for {lag} ms although they have been connected since {since} ms",
                            world.dcs[y].id, world.dcs[x].id
                        );
                        world.history.violation("bounded-lag", now, detail);
                    }
                }
            }
        }
    }
}
