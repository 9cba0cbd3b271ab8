//! The checkers: one invariant each, judged from the run's history and the DCs' durable stores
//! by their own naive reasoning, never by calling the merge code under test (DESIGN.md,
//! "Simulator"). A bug every DC shares still fails them.

pub mod bounds;
pub mod convergence;
pub mod deliveries;
pub mod durability;
pub mod lag;
pub mod model;
pub mod retention;
pub mod sync_acks;

use crate::scenario::Scenario;
use crate::world::World;

/// The checkers that keep state during a run.
pub(crate) struct Checkers {
    convergence: convergence::Convergence,
    lag: lag::Lag,
}

impl Checkers {
    pub(crate) fn new(scenario: &Scenario) -> Self {
        Self { convergence: convergence::Convergence::new(scenario), lag: lag::Lag::new(scenario) }
    }

    /// Called every sample period.
    pub(crate) fn sample(&mut self, world: &mut World) {
        self.convergence.sample(world);
        self.lag.sample(world);
        bounds::sample(world);
    }

    /// Called when the last active fault ends.
    pub(crate) fn healed(&mut self, world: &mut World) {
        self.convergence.healed(world);
    }

    /// Called once at the end of the run.
    pub(crate) fn finish(&mut self, world: &mut World) {
        self.convergence.finish(world);
        durability::finish(world);
        model::finish(world);
        deliveries::finish(world);
        bounds::finish(world);
    }
}
