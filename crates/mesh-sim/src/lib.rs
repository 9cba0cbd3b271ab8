//! mesh-sim: the partition simulator. It runs N DCs in one thread on a seeded discrete-event
//! scheduler, each DC the real [`mesh_engine::node::Node`] over the in-memory store with crash
//! semantics, behind a simulated network (latency and jitter per link, loss, duplication,
//! reordering, full, one-way and flapping partitions), a simulated disk (commit latency, group
//! commit, power loss keeping a random prefix of the unsynced commits) and per-DC clocks (skew).
//! Independent checkers ([`checkers`]) judge every run. The same seed replays the same run.
#![warn(missing_docs, unreachable_pub)]

pub mod checkers;
pub mod history;
pub mod scenario;
pub mod summary;
pub mod world;

pub use scenario::{Scenario, ScenarioError};
pub use summary::Summary;
pub use world::{RunOptions, RunResult, RunStats, World};

use std::sync::Arc;

/// Runs one seed of `scenario`. A panic inside the run is reported as a violation of that seed
/// (with its message), not as a crash of the simulator, so the replay command is still printed.
pub fn run_seed(scenario: &Arc<Scenario>, options: RunOptions) -> RunResult {
    let seed = options.seed;
    let world = World::new(scenario.clone(), options);
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| world.run())) {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic without a message".into());
            RunResult {
                seed,
                trace_hash: 0,
                violations: vec![history::Violation { checker: "panic", at_ms: 0, detail: message }],
                stats: RunStats::default(),
                trace: Vec::new(),
            }
        }
    }
}
