//! Hybrid logical clock.
//!
//! An [`Hlc`] is a wall-clock reading in milliseconds plus a logical counter that orders events
//! within the same millisecond. [`HlcClock`] never reads a clock itself: every call takes the
//! caller's wall-clock reading, so the simulator can drive it with virtual time.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A hybrid logical timestamp. Ordered by physical time, then by the logical counter.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Hlc {
    /// Milliseconds since the Unix epoch, as read from (or bounded by) a wall clock.
    pub physical_ms: u64,
    /// Orders events that share `physical_ms`.
    pub logical: u32,
}

impl Hlc {
    /// A timestamp from its parts.
    pub fn new(physical_ms: u64, logical: u32) -> Self {
        Self { physical_ms, logical }
    }

    /// The smallest timestamp strictly after this one.
    fn successor(self) -> Self {
        match self.logical.checked_add(1) {
            Some(logical) => Self { physical_ms: self.physical_ms, logical },
            // 4 billion events in one millisecond: borrow the next millisecond rather than wrap.
            None => Self { physical_ms: self.physical_ms + 1, logical: 0 },
        }
    }
}

impl fmt::Debug for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.physical_ms, self.logical)
    }
}

/// What [`HlcClock::observe`] did with a remote timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// How far, in ms, the remote timestamp was beyond the allowed skew (0 when within it). The
    /// clock advanced only up to the bound; the caller counts and alerts on a non-zero excess.
    pub excess_ms: u64,
}

/// A DC's hybrid logical clock, bounded to `max_skew_ms` ahead of the wall clock.
#[derive(Debug, Clone)]
pub struct HlcClock {
    last: Hlc,
    max_skew_ms: u64,
}

impl HlcClock {
    /// A clock that has issued nothing yet and never runs more than `max_skew_ms` ahead of the
    /// wall-clock readings it is given because of a remote timestamp.
    pub fn new(max_skew_ms: u64) -> Self {
        Self { last: Hlc::default(), max_skew_ms }
    }

    /// The last timestamp issued or adopted.
    pub fn last(&self) -> Hlc {
        self.last
    }

    /// The allowed skew, in ms.
    pub fn max_skew_ms(&self) -> u64 {
        self.max_skew_ms
    }

    /// A timestamp for a local event, strictly after every timestamp issued or adopted so far.
    pub fn tick(&mut self, wall_ms: u64) -> Hlc {
        let next = if wall_ms > self.last.physical_ms { Hlc::new(wall_ms, 0) } else { self.last.successor() };
        assert!(next > self.last, "HLC went backwards: {next:?} after {:?}", self.last);
        self.last = next;
        next
    }

    /// Takes a remote timestamp into account, so later local events order after it. A timestamp
    /// more than `max_skew_ms` ahead of `wall_ms` moves the clock only to that bound; the excess
    /// is returned for the caller to count. The remote op itself is still applied by the caller.
    pub fn observe(&mut self, remote: Hlc, wall_ms: u64) -> Observed {
        let bound_ms = wall_ms.saturating_add(self.max_skew_ms);
        let (adopt, excess_ms) = if remote.physical_ms > bound_ms {
            (Hlc::new(bound_ms, 0), remote.physical_ms - bound_ms)
        } else {
            (remote, 0)
        };
        if adopt > self.last {
            self.last = adopt;
        }
        Observed { excess_ms }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_events_are_strictly_increasing_even_when_the_wall_clock_stalls() {
        let mut c = HlcClock::new(500);
        let a = c.tick(1_000);
        let b = c.tick(1_000);
        let d = c.tick(999);
        assert!(a < b && b < d);
        assert_eq!(d, Hlc::new(1_000, 2));
        assert_eq!(c.tick(1_001), Hlc::new(1_001, 0));
    }

    #[test]
    fn a_remote_timestamp_within_skew_is_adopted() {
        let mut c = HlcClock::new(500);
        c.tick(1_000);
        assert_eq!(c.observe(Hlc::new(1_400, 7), 1_000), Observed { excess_ms: 0 });
        assert_eq!(c.tick(1_000), Hlc::new(1_400, 8));
    }

    #[test]
    fn a_remote_timestamp_beyond_skew_moves_the_clock_only_to_the_bound() {
        let mut c = HlcClock::new(500);
        let seen = c.observe(Hlc::new(10_000, 3), 1_000);
        assert_eq!(seen, Observed { excess_ms: 8_500 });
        assert_eq!(c.last(), Hlc::new(1_500, 0));
        assert!(c.tick(1_000) <= Hlc::new(1_500, 1));
    }

    #[test]
    fn logical_overflow_borrows_the_next_millisecond() {
        let mut c = HlcClock::new(0);
        c.observe(Hlc::new(5, u32::MAX), 5);
        assert_eq!(c.tick(5), Hlc::new(6, 0));
    }
}
