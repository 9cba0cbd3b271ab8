//! Dots and version vectors.
//!
//! Every op is named by a [`Dot`]: its origin DC and that origin's gapless sequence number. A
//! [`VersionVector`] maps each origin to the highest seq seen from it. Because every DC applies
//! an origin's ops in seq order with no gaps, "seq ≤ vv[origin]" means "this op, and every
//! earlier op of that origin, has been seen". The same holds per key: a key's context records,
//! per origin, the highest seq among that origin's ops on the key, and so covers all of them.
//!
//! The vector itself is `crdts::VClock`, so it merges exactly like the CRDTs it sits beside.

use crate::DcId;
use crdts::{CmRDT, CvRDT, VClock};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::fmt;

/// The name of one op: its origin DC and the origin's gapless sequence number (from 1).
/// Deserializing a dot with seq 0 fails: 0 names no op.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "DotRepr")]
pub struct Dot {
    /// The DC that created the op.
    pub origin: DcId,
    /// The origin's sequence number for the op: 1, 2, 3 … with no gaps.
    pub seq: u64,
}

impl Dot {
    /// A dot. `seq` starts at 1; 0 is "nothing seen" in a vector and names no op.
    pub fn new(origin: DcId, seq: u64) -> Self {
        assert!(seq > 0, "a dot's seq starts at 1");
        Self { origin, seq }
    }
}

#[derive(Deserialize)]
struct DotRepr {
    origin: DcId,
    seq: u64,
}

impl TryFrom<DotRepr> for Dot {
    type Error = &'static str;
    fn try_from(d: DotRepr) -> Result<Self, Self::Error> {
        if d.seq == 0 {
            return Err("a dot's seq starts at 1");
        }
        Ok(Dot { origin: d.origin, seq: d.seq })
    }
}

impl fmt::Debug for Dot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.origin, self.seq)
    }
}

/// Per origin, the highest seq seen (0 when nothing was seen from that origin).
#[derive(Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VersionVector(VClock<DcId>);

impl VersionVector {
    /// The empty vector: nothing seen.
    pub fn new() -> Self {
        Self::default()
    }

    /// The highest seq seen from `origin`.
    pub fn get(&self, origin: &DcId) -> u64 {
        self.0.get(origin)
    }

    /// Whether the op named `dot` has been seen.
    pub fn covers(&self, dot: &Dot) -> bool {
        self.get(&dot.origin) >= dot.seq
    }

    /// Records `dot` as seen. Never moves an entry backwards.
    pub fn observe(&mut self, dot: &Dot) {
        self.0.apply(crdts::Dot::new(dot.origin.clone(), dot.seq));
    }

    /// Sets the entry for `origin` to `seq` when that is higher. Never moves an entry backwards.
    pub fn raise(&mut self, origin: &DcId, seq: u64) {
        if seq > 0 {
            self.0.apply(crdts::Dot::new(origin.clone(), seq));
        }
    }

    /// Pointwise maximum with `other`.
    pub fn join(&mut self, other: &VersionVector) {
        self.0.merge(other.0.clone());
    }

    /// Pointwise minimum with `other`; entries missing from either side drop out.
    pub fn meet(&mut self, other: &VersionVector) {
        self.0.glb(&other.0);
    }

    /// Whether every entry of `other` is ≤ the same entry here.
    pub fn dominates(&self, other: &VersionVector) -> bool {
        other.iter().all(|(origin, seq)| self.get(origin) >= seq)
    }

    /// The entries, in DC id order.
    pub fn iter(&self) -> impl Iterator<Item = (&DcId, u64)> {
        self.0.dots.iter().map(|(dc, seq)| (dc, *seq))
    }

    /// Number of origins with a non-zero entry.
    pub fn len(&self) -> usize {
        self.0.dots.len()
    }

    /// Whether nothing has been seen.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Total number of ops covered (sum of the entries).
    pub fn total(&self) -> u64 {
        self.0.dots.values().sum()
    }

    /// The vector as the `crdts` clock, for the CRDT types that take one.
    pub fn as_vclock(&self) -> &VClock<DcId> {
        &self.0
    }

    /// Wraps a `crdts` clock.
    pub fn from_vclock(clock: VClock<DcId>) -> Self {
        Self(clock)
    }
}

impl PartialOrd for VersionVector {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        self.0.partial_cmp(&other.0)
    }
}

impl FromIterator<(DcId, u64)> for VersionVector {
    fn from_iter<T: IntoIterator<Item = (DcId, u64)>>(iter: T) -> Self {
        let mut vv = VersionVector::new();
        for (dc, seq) in iter {
            vv.raise(&dc, seq);
        }
        vv
    }
}

impl fmt::Debug for VersionVector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dc(s: &str) -> DcId {
        DcId::new(s).unwrap()
    }

    #[test]
    fn a_vector_covers_every_earlier_seq_of_an_origin() {
        let mut vv = VersionVector::new();
        vv.observe(&Dot::new(dc("a"), 3));
        assert!(vv.covers(&Dot::new(dc("a"), 1)));
        assert!(vv.covers(&Dot::new(dc("a"), 3)));
        assert!(!vv.covers(&Dot::new(dc("a"), 4)));
        assert!(!vv.covers(&Dot::new(dc("b"), 1)));
    }

    #[test]
    fn a_decoded_dot_with_seq_zero_is_refused() {
        let ok: Dot = toml::from_str("origin = 'a'\nseq = 1").unwrap();
        assert_eq!(ok, Dot::new(dc("a"), 1));
        let err = toml::from_str::<Dot>("origin = 'a'\nseq = 0").unwrap_err();
        assert!(err.to_string().contains("seq starts at 1"), "{err}");
    }

    #[test]
    fn entries_never_move_backwards() {
        let mut vv = VersionVector::new();
        vv.raise(&dc("a"), 5);
        vv.raise(&dc("a"), 2);
        vv.observe(&Dot::new(dc("a"), 1));
        assert_eq!(vv.get(&dc("a")), 5);
    }

    #[test]
    fn join_and_meet_are_pointwise() {
        let a: VersionVector = [(dc("a"), 3), (dc("b"), 1)].into_iter().collect();
        let b: VersionVector = [(dc("a"), 1), (dc("c"), 4)].into_iter().collect();
        let mut j = a.clone();
        j.join(&b);
        assert_eq!(j, [(dc("a"), 3), (dc("b"), 1), (dc("c"), 4)].into_iter().collect());
        let mut m = a.clone();
        m.meet(&b);
        assert_eq!(m, [(dc("a"), 1)].into_iter().collect());
        assert!(j.dominates(&a));
        assert!(!a.dominates(&b));
    }
}
