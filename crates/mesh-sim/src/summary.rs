//! The summary of many seeds of one scenario.

use crate::world::RunResult;
use std::collections::BTreeMap;
use std::fmt;

/// Aggregates of a scenario's runs.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Seeds run.
    pub seeds: u64,
    /// Seeds that failed, with their first violation.
    pub failed: Vec<(u64, String)>,
    /// Every heal-to-convergence time, ms.
    pub convergence_ms: Vec<u64>,
    /// Largest lag between connected DCs, ms.
    pub lag_ms_max: u64,
    /// Conflict records per strategy.
    pub conflicts: BTreeMap<String, u64>,
    /// Client writes accepted.
    pub writes: u64,
    /// Client writes refused.
    pub refused: u64,
    /// Ops that became durable at their origin.
    pub ops: u64,
    /// Ops delivered in batches.
    pub ops_delivered: u64,
    /// Messages sent.
    pub messages: u64,
    /// Wire bytes sent.
    pub wire_bytes: u64,
    /// Crashes.
    pub crashes: u64,
    /// State transfers completed.
    pub transfers: u64,
    /// Wall-clock seconds spent.
    pub elapsed_s: f64,
}

impl Summary {
    /// Adds one run.
    pub fn add(&mut self, result: &RunResult) {
        self.seeds += 1;
        if let Some(v) = result.violations.first() {
            self.failed.push((result.seed, format!("{}: {}", v.checker, v.detail)));
        }
        let s = &result.stats;
        self.convergence_ms.extend(&s.convergence_ms);
        self.lag_ms_max = self.lag_ms_max.max(s.lag_ms_max);
        for (k, v) in &s.conflicts {
            *self.conflicts.entry(k.clone()).or_default() += v;
        }
        self.writes += s.writes;
        self.refused += s.refused;
        self.ops += s.ops;
        self.ops_delivered += s.ops_delivered;
        self.messages += s.messages;
        self.wire_bytes += s.wire_bytes;
        self.crashes += s.crashes;
        self.transfers += s.transfers;
    }

    fn percentile(&self, p: f64) -> Option<u64> {
        let mut v = self.convergence_ms.clone();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        Some(v[i])
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let passed = self.seeds - self.failed.len() as u64;
        writeln!(
            f,
            "  seeds: {} passed, {} failed ({:.1} s, {:.0} seeds/min)",
            passed,
            self.failed.len(),
            self.elapsed_s,
            self.seeds as f64 * 60.0 / self.elapsed_s.max(1e-9)
        )?;
        match (self.percentile(0.5), self.percentile(0.99), self.convergence_ms.iter().max()) {
            (Some(p50), Some(p99), Some(max)) => writeln!(
                f,
                "  convergence after heal: p50 {p50} ms, p99 {p99} ms, max {max} ms ({} heals)",
                self.convergence_ms.len()
            )?,
            _ => writeln!(f, "  convergence after heal: no heal in this scenario")?,
        }
        writeln!(f, "  lag between connected DCs: max {} ms", self.lag_ms_max)?;
        let conflicts: Vec<String> = self.conflicts.iter().map(|(k, v)| format!("{k} {v}")).collect();
        writeln!(
            f,
            "  conflict records: {}",
            if conflicts.is_empty() { "none".into() } else { conflicts.join(", ") }
        )?;
        let ops = self.ops.max(1) as f64;
        writeln!(
            f,
            "  writes: {} accepted, {} refused; crashes {}; state transfers {}",
            self.writes, self.refused, self.crashes, self.transfers
        )?;
        write!(
            f,
            "  per op: {:.2} deliveries, {:.2} messages, {:.1} wire bytes",
            self.ops_delivered as f64 / ops,
            self.messages as f64 / ops,
            self.wire_bytes as f64 / ops
        )
    }
}
