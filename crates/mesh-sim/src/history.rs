//! What happened in a run, as the checkers judge it: every op that became durable at its
//! origin, every reply a client got, every conflict record, and the violations found on the way.

use mesh_core::{Conflict, DcId, Dot, Op};
use mesh_engine::sync::SyncOutcome;
use std::collections::BTreeMap;

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The checker that found it.
    pub checker: &'static str,
    /// Simulated time, ms.
    pub at_ms: u64,
    /// What was wrong.
    pub detail: String,
}

/// A client write that got an answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The DC that served it.
    pub dc: DcId,
    /// The write's dot.
    pub dot: Dot,
    /// The op the client asked for (as the DC named it at persist time).
    pub op: Op,
    /// When it was answered, ms.
    pub at_ms: u64,
    /// Done, or timed out with the partial result (committed locally either way).
    pub outcome: SyncOutcome,
}

/// The record of one run.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Every op durable at its origin, by dot (the first one, if a dot was reused).
    pub ops: BTreeMap<Dot, Op>,
    /// When each op became durable at its origin, ms.
    pub durable_ms: BTreeMap<Dot, u64>,
    /// Every answered write.
    pub replies: Vec<Reply>,
    /// Conflict records, with the DC that emitted each.
    pub conflicts: Vec<(DcId, Conflict)>,
    /// Violations found while running.
    pub violations: Vec<Violation>,
    /// Ops durable only at an origin that then lost its disk (a `disk-lost` fault): gone for
    /// good, so their writes are excused and their dots may be named again.
    pub lost_with_disk: Vec<Op>,
}

impl History {
    /// Records that `op` is durable at its origin at `at_ms`. A different op under a dot already
    /// durable is a reused seq: a violation.
    pub fn durable_at_origin(&mut self, op: &Op, at_ms: u64) {
        match self.ops.get(&op.dot) {
            Some(first) if first != op => self.violations.push(Violation {
                checker: "no-seq-reuse",
                at_ms,
                detail: format!("dot {:?} names two different ops: {first:?} and {op:?}", op.dot),
            }),
            Some(_) => {}
            None => {
                self.ops.insert(op.dot.clone(), op.clone());
                self.durable_ms.insert(op.dot.clone(), at_ms);
            }
        }
    }

    /// Records a violation.
    pub fn violation(&mut self, checker: &'static str, at_ms: u64, detail: String) {
        self.violations.push(Violation { checker, at_ms, detail });
    }
}
