//! The simulated clients: each DC gets writes at Poisson arrival times, drawn from the
//! scenario's keyspace mix and key distribution (one write, or a batch committed together), some
//! of them sync or carrying the context of a read; and the replies they get, which the history
//! records and the sync-acks checker judges.

use super::{Event, World};
use crate::checkers;
use crate::scenario::{KeyDistribution, Scenario};
use mesh_core::topology::Mode;
use mesh_core::{Dot, Key, Keyspace, OpKind};
use mesh_engine::node::{NodeWriteError, WriteOptions};
use mesh_engine::resolver::WriteRequest;
use mesh_engine::sync::{RequestId, SyncOutcome};
use mesh_engine::{MonoMs, WallMs};
use rand::Rng;
use serde_bytes::ByteBuf;
use std::collections::BTreeMap;

/// What the clients write to, and their writes waiting for a reply.
pub(super) struct Workload {
    next_request: RequestId,
    /// The keyspaces of the mix, with their weight and the fraction of deletes.
    keyspaces: Vec<(Keyspace, u32, f64)>,
    /// Per write waiting for its reply, how many DCs must hold it (the checker's own count).
    required: BTreeMap<RequestId, usize>,
}

impl Workload {
    /// The workload of `scenario`, before any write.
    pub(super) fn new(scenario: &Scenario) -> Self {
        let keyspaces = scenario
            .file
            .workload
            .mix
            .iter()
            .map(|m| (Keyspace::new(&m.keyspace).expect("validated"), m.weight, m.delete))
            .collect();
        Self { next_request: RequestId(1), keyspaces, required: BTreeMap::new() }
    }
}

impl World {
    /// Schedules every DC's first client write (none if the scenario writes nothing).
    pub(super) fn schedule_first_writes(&mut self) {
        let rate = self.scenario.file.workload.writes_per_s;
        if rate > 0.0 {
            for dc in 0..self.dcs.len() {
                let first = self.next_arrival_ms(rate);
                self.schedule(first, Event::Write { dc });
            }
        }
    }

    fn next_arrival_ms(&mut self, rate_per_s: f64) -> u64 {
        // Exponential inter-arrival times (Poisson arrivals), at least 1 ms apart.
        let u: f64 = self.rng.random_range(f64::EPSILON..1.0);
        self.now_ms + ((-u.ln() / rate_per_s) * 1_000.0).max(1.0) as u64
    }

    /// A client's request arrives at `dc`; the next one is scheduled while the scenario runs.
    pub(super) fn client_arrival(&mut self, dc: usize) {
        if self.now_ms < self.scenario.duration_ms() {
            let next = self.next_arrival_ms(self.scenario.file.workload.writes_per_s);
            self.schedule(next, Event::Write { dc });
        }
        self.client_write(dc);
    }

    /// A client's request at `dc`: one write, or (with `batch_max` > 1) a batch of writes
    /// committed together, each answered on its own.
    fn client_write(&mut self, dc: usize) {
        if !self.dcs[dc].alive() {
            return;
        }
        let batch_max = self.scenario.file.workload.batch_max;
        let n = if batch_max > 1 { self.rng.random_range(1..=batch_max) } else { 1 };
        let writes: Vec<_> = (0..n).map(|_| self.new_write(dc)).collect();
        let now = MonoMs(self.now_ms);
        let wall = WallMs(self.wall_ms(dc));
        let d = &mut self.dcs[dc];
        let node = d.node.as_mut().expect("alive");
        let (requests, mut batch): (Vec<_>, Vec<_>) = writes
            .into_iter()
            .map(|(write, options, required)| ((write.request, required), (write, options)))
            .unzip();
        // Single writes go through the single-write entry point, as the API's PUT does.
        let results = if batch.len() == 1 {
            let (write, options) = batch.pop().expect("one");
            vec![node.handle_write(now, wall, write, options, &d.store)]
        } else {
            node.handle_write_batch(now, wall, batch, &d.store)
        };
        for ((request, required), result) in requests.into_iter().zip(results) {
            match result {
                Ok(()) => {
                    self.stats.writes += 1;
                    self.workload.required.insert(request, required);
                }
                Err(
                    NodeWriteError::Starting
                    | NodeWriteError::SyncBusy
                    | NodeWriteError::Busy
                    | NodeWriteError::Write(_),
                ) => {
                    self.stats.refused += 1;
                }
            }
            self.hash(&[2, dc as u64, request.0]);
        }
        self.after(dc);
    }

    /// A random write for `dc`'s workload, its options and the DCs its sync mode needs.
    fn new_write(&mut self, dc: usize) -> (WriteRequest, WriteOptions, usize) {
        let w = &self.scenario.file.workload;
        let total: u32 = self.workload.keyspaces.iter().map(|(_, weight, _)| weight).sum();
        let mut pick = self.rng.random_range(0..total);
        let mut chosen = 0;
        for (i, (_, weight, _)) in self.workload.keyspaces.iter().enumerate() {
            if pick < *weight {
                chosen = i;
                break;
            }
            pick -= weight;
        }
        let (keyspace, _, delete) = self.workload.keyspaces[chosen].clone();
        let keys = w.keys;
        let k = match w.key_distribution {
            KeyDistribution::Uniform => self.rng.random_range(0..keys),
            KeyDistribution::Hot => {
                let hot = (keys / 10).max(1);
                if self.rng.random_bool(0.8) {
                    self.rng.random_range(0..hot)
                } else {
                    self.rng.random_range(0..keys)
                }
            }
        };
        let key = Key::new(format!("k{k}")).expect("valid key");
        let request = self.workload.next_request;
        self.workload.next_request = RequestId(request.0 + 1);
        let spec = self.scenario.topology.keyspace(&keyspace).expect("validated");
        let is_delete = self.rng.random_bool(delete);
        let kind = match spec.kind {
            mesh_core::ValueKind::Register if is_delete => OpKind::Delete,
            mesh_core::ValueKind::Register => {
                OpKind::Put(format!("{}-{request}", self.dcs[dc].id).into_bytes())
            }
            mesh_core::ValueKind::Counter => {
                let n = self.rng.random_range(1..=10);
                OpKind::CounterAdd(if is_delete { -n } else { n })
            }
            mesh_core::ValueKind::Set => {
                let m = ByteBuf::from(format!("m{}", self.rng.random_range(0..8)).into_bytes());
                if is_delete {
                    OpKind::SetRemove(vec![m])
                } else {
                    OpKind::SetAdd(vec![m])
                }
            }
        };
        let with_context = spec.rules.contextless_write_is_new_sibling()
            && self.rng.random_bool(self.scenario.file.workload.read_context_fraction);
        let sync = self.rng.random_bool(w.sync_fraction);
        let options = if sync {
            WriteOptions { mode: Some(Mode::Sync), acks: w.sync_acks }
        } else {
            WriteOptions::default()
        };
        let d = &self.dcs[dc];
        let node = d.node.as_ref().expect("alive");
        let context = if with_context {
            node.read(&keyspace, &key, &d.store).expect("the memory store reads").map(|r| r.context)
        } else {
            None
        };
        let required = checkers::sync_acks::required(&self.scenario, &keyspace, options);
        (WriteRequest { request, keyspace, key, kind, context, idempotency_key: None }, options, required)
    }

    /// `dc`'s node answers write `request` (named `dot`): the sync-acks checker judges the
    /// answer and the history records it.
    pub(super) fn reply(&mut self, dc: usize, request: RequestId, dot: Dot, outcome: SyncOutcome) {
        self.hash(&[4, dc as u64, request.0, dot.seq]);
        let op = self.dcs[dc].named.remove(&dot);
        let Some(op) = op else {
            self.history.violation("replies", self.now_ms, format!("reply for unknown write {dot:?}"));
            return;
        };
        if self.options.trace {
            self.note(format!("reply {} {:?} {:?}", self.dcs[dc].id, dot, outcome));
        }
        let required = self.workload.required.remove(&request).unwrap_or(1);
        checkers::sync_acks::check_reply(self, dc, &dot, &outcome, required);
        let reply =
            crate::history::Reply { dc: self.dcs[dc].id.clone(), dot, op, at_ms: self.now_ms, outcome };
        self.history.replies.push(reply);
    }
}
