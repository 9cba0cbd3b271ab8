//! The two clocks a runtime hands the engine, as types that cannot be swapped.
//!
//! - [`MonoMs`]: the runtime's monotonic clock (tokio's `Instant` since the node started, or the
//!   simulator's virtual time). Every deadline, timeout and rate is measured on it; it never
//!   goes back.
//! - [`WallMs`]: the wall clock, ms since the Unix epoch. Only what must mean the same at every
//!   DC uses it: HLCs, clock-skew checks, heartbeat clock offsets and idempotency-key ages. It
//!   may jump.

/// A reading of the runtime's monotonic clock, in ms since the runtime's origin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MonoMs(pub u64);

/// A reading of the wall clock, in ms since the Unix epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WallMs(pub u64);

impl MonoMs {
    /// The reading in ms.
    pub fn ms(self) -> u64 {
        self.0
    }
}

impl WallMs {
    /// The reading in ms since the Unix epoch.
    pub fn ms(self) -> u64 {
        self.0
    }
}
