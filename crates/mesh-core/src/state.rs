//! The causal state of one key, and how ops and states merge into it.
//!
//! A [`KeyState`] is a per-key context (a [`VersionVector`] over the origins that wrote the key)
//! plus a value: a register's versions (each named by its dot), a PN-counter, or an
//! observed-remove set. Two operations change it:
//! - [`KeyState::apply`] applies one op. Ops of one origin MUST be applied in seq order (the
//!   engine guarantees it: each origin's stream is gapless and applied in order), which is what
//!   lets the per-key context be a vector rather than a set of dots. Re-applying an op is a no-op.
//! - [`KeyState::merge`] joins two whole states (state transfer, checks). It is commutative,
//!   associative and idempotent; the property tests in this crate hold it to that.
//!
//! Conflict resolution is not done here: the state keeps every concurrent version, so merging
//! never depends on a strategy, and [`crate::Strategy`] picks what a read returns. Every DC holds
//! the same versions after convergence and so resolves to the same answer.

use crate::{DcId, Dot, Hlc, Op, OpKind, ValueKind, VersionVector};
use crdts::{CmRDT, CvRDT, PNCounter};
use num_bigint::Sign;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use std::collections::BTreeMap;

/// One version of a register value: the op that wrote it and what it wrote.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Version {
    /// The op that wrote this version.
    pub dot: Dot,
    /// The op's timestamp.
    pub hlc: Hlc,
    /// The bytes written, or `None` for a delete (a tombstone).
    pub value: Option<ByteBuf>,
}

impl Version {
    /// Whether this version is a delete.
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }
}

/// An observed-remove set: per member, the dots of the adds still live, and per member the
/// join of the contexts of the removes seen. An add survives a remove that did not see it.
///
/// `crdts::Orswot` was not used: it keeps members in `HashMap`s, whose iteration order would reach
/// the wire and the simulator's trace hash, and its remove clock must be the set's own add clock,
/// which is not the per-key context the rest of this model carries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OrSet {
    adds: BTreeMap<ByteBuf, Vec<Dot>>,
    removes: BTreeMap<ByteBuf, VersionVector>,
}

impl OrSet {
    fn add(&mut self, member: &ByteBuf, dot: &Dot) {
        if self.removes.get(member).is_some_and(|rm| rm.covers(dot)) {
            return;
        }
        let dots = self.adds.entry(member.clone()).or_default();
        if let Err(at) = dots.binary_search(dot) {
            dots.insert(at, dot.clone());
        }
    }

    fn remove(&mut self, member: &ByteBuf, context: &VersionVector) {
        self.removes.entry(member.clone()).or_default().join(context);
        self.prune(member);
    }

    fn prune(&mut self, member: &ByteBuf) {
        let Some(rm) = self.removes.get(member) else { return };
        if let Some(dots) = self.adds.get_mut(member) {
            dots.retain(|d| !rm.covers(d));
            if dots.is_empty() {
                self.adds.remove(member);
            }
        }
    }

    fn merge(&mut self, other: &OrSet) {
        for (member, rm) in &other.removes {
            self.removes.entry(member.clone()).or_default().join(rm);
        }
        for (member, dots) in &other.adds {
            for dot in dots {
                self.add(member, dot);
            }
        }
        let members: Vec<ByteBuf> = self.removes.keys().cloned().collect();
        for member in &members {
            self.prune(member);
        }
    }

    /// The members present, in byte order.
    pub fn members(&self) -> Vec<ByteBuf> {
        self.adds.keys().cloned().collect()
    }

    /// Whether `member` is present.
    pub fn contains(&self, member: &[u8]) -> bool {
        self.adds.contains_key(serde_bytes::Bytes::new(member))
    }

    /// Number of members present.
    pub fn len(&self) -> usize {
        self.adds.len()
    }

    /// Whether no member is present.
    pub fn is_empty(&self) -> bool {
        self.adds.is_empty()
    }
}

/// The PN-counter op adding `delta` for `origin`, or `None` when the origin's running total of
/// additions (or subtractions) would overflow.
fn counter_step(counter: &PNCounter<DcId>, origin: &DcId, delta: i64) -> Option<crdts::pncounter::Op<DcId>> {
    let step = delta.unsigned_abs();
    // `inc_many(origin, 0)` reads the origin's running total without changing anything.
    let total =
        if delta >= 0 { counter.inc_many(origin.clone(), 0) } else { counter.dec_many(origin.clone(), 0) };
    total.dot.counter.checked_add(step)?;
    Some(if delta >= 0 {
        counter.inc_many(origin.clone(), step)
    } else {
        counter.dec_many(origin.clone(), step)
    })
}

/// The value part of a key's state.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Value {
    /// Register versions not superseded by any op seen, sorted by dot. More than one means
    /// concurrent writes; tombstones are kept until causally stable.
    Register(Vec<Version>),
    /// A PN-counter (`crdts::PNCounter`), one positive and one negative total per origin.
    Counter(PNCounter<DcId>),
    /// An observed-remove set.
    Set(OrSet),
}

impl Value {
    fn kind(&self) -> ValueKind {
        match self {
            Value::Register(_) => ValueKind::Register,
            Value::Counter(_) => ValueKind::Counter,
            Value::Set(_) => ValueKind::Set,
        }
    }
}

/// Why an op or a write could not be applied. State is unchanged when one is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The op is for another value type than the key holds (for example a counter add on a
    /// register keyspace).
    #[error("a {op:?} op does not apply to a {key:?} key")]
    WrongKind {
        /// The type the op is for.
        op: ValueKind,
        /// The type the key holds.
        key: ValueKind,
    },
    /// A counter add would overflow the origin's running total of additions or subtractions
    /// (each kept as a u64 per origin).
    #[error("counter add of {delta} would overflow this DC's running total for the key")]
    CounterOverflow {
        /// The refused amount.
        delta: i64,
    },
    /// A write without context would add a sibling beyond the keyspace's `siblings_max`.
    #[error("the key already has {siblings} siblings (siblings_max = {max}); read it and write with its context to resolve them")]
    TooManySiblings {
        /// Live siblings now.
        siblings: usize,
        /// The configured cap.
        max: usize,
    },
}

/// What [`KeyState::apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The op had already been applied, or a causally later op that superseded it had: no
    /// change.
    Covered,
    /// The op was applied. For a register, `concurrent` lists the versions that remain beside
    /// the new one because its writer had not seen them: a conflict for the strategy to resolve.
    Applied {
        /// Register versions concurrent with the new one (empty when there is no conflict).
        concurrent: Vec<Version>,
    },
}

/// What a read returns, before strategy resolution for registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadValue {
    /// The register versions a strategy chose (one for lww, priority and custom, every live one
    /// for siblings), without tombstones; empty when the key reads as absent.
    Register(Vec<Version>),
    /// The counter's value.
    Counter(i64),
    /// The set's members in byte order.
    Set(Vec<ByteBuf>),
}

impl ReadValue {
    /// Bytes of the values or members it holds (a counter: 8).
    pub fn payload_bytes(&self) -> usize {
        match self {
            ReadValue::Register(versions) => {
                versions.iter().map(|v| v.value.as_ref().map_or(0, |b| b.len())).sum()
            }
            ReadValue::Counter(_) => 8,
            ReadValue::Set(members) => members.iter().map(|m| m.len()).sum(),
        }
    }

    /// Whether the key reads as holding something: a register version, a counter (always: it
    /// reads 0 before any add), a set member.
    pub fn is_present(&self) -> bool {
        match self {
            ReadValue::Register(versions) => !versions.is_empty(),
            ReadValue::Counter(_) => true,
            ReadValue::Set(members) => !members.is_empty(),
        }
    }
}

/// A read: the value and the context to send back with a write that should supersede it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResult {
    /// The value.
    pub value: ReadValue,
    /// The key's context: every version the read saw.
    pub context: VersionVector,
}

/// The causal state of one key. See the module docs for the call rules.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyState {
    context: VersionVector,
    value: Value,
}

impl KeyState {
    /// The state of a key never written, holding values of `kind`.
    pub fn new(kind: ValueKind) -> Self {
        let value = match kind {
            ValueKind::Register => Value::Register(Vec::new()),
            ValueKind::Counter => Value::Counter(PNCounter::new()),
            ValueKind::Set => Value::Set(OrSet::default()),
        };
        Self { context: VersionVector::new(), value }
    }

    /// The value type of the key.
    pub fn kind(&self) -> ValueKind {
        self.value.kind()
    }

    /// The key's context: per origin, the highest seq of its ops on this key seen or superseded.
    pub fn context(&self) -> &VersionVector {
        &self.context
    }

    /// The value part.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// Register versions (live and tombstones) in dot order; empty for counters and sets.
    pub fn versions(&self) -> &[Version] {
        match &self.value {
            Value::Register(v) => v,
            _ => &[],
        }
    }

    /// Whether the op named `dot` has been applied here or superseded.
    pub fn covers(&self, dot: &Dot) -> bool {
        self.context.covers(dot)
    }

    /// Whether every version is a tombstone (or there is none): the key reads as absent and may
    /// be dropped once its tombstones are causally stable.
    pub fn is_deleted(&self) -> bool {
        match &self.value {
            Value::Register(v) => v.iter().all(Version::is_tombstone),
            _ => false,
        }
    }

    /// The context a new local write of `kind` carries, following DESIGN.md: a client context
    /// when the client sent one; otherwise the serving DC's context for registers (the write
    /// supersedes what this DC has), except for a put in a siblings keyspace (`new_sibling`),
    /// which becomes one more sibling, refused past `siblings_max`. A delete without context
    /// always deletes what the serving DC has seen, siblings keyspaces included: a tombstone
    /// beside the values it was meant to remove would change nothing a reader sees. Counter adds
    /// and set adds need no context; a set remove removes the adds this DC has seen.
    pub fn write_context(
        &self,
        kind: &OpKind,
        client_context: Option<&VersionVector>,
        new_sibling: bool,
        siblings_max: usize,
    ) -> Result<VersionVector, StateError> {
        self.check_kind(kind.value_kind())?;
        match kind {
            OpKind::Put(_) | OpKind::Delete => match client_context {
                Some(ctx) => Ok(ctx.clone()),
                None if new_sibling && matches!(kind, OpKind::Put(_)) => {
                    let siblings = self.versions().iter().filter(|v| !v.is_tombstone()).count();
                    if siblings >= siblings_max {
                        return Err(StateError::TooManySiblings { siblings, max: siblings_max });
                    }
                    Ok(VersionVector::new())
                }
                None => Ok(self.context.clone()),
            },
            OpKind::CounterAdd(delta) => {
                // Refused here, at the serving DC, so no op that cannot apply is ever created.
                // The serving DC is not named here, so every origin's total is checked: an add is
                // refused if it would overflow any of them.
                match &self.value {
                    Value::Counter(counter)
                        if self.context.iter().any(|(o, _)| counter_step(counter, o, *delta).is_none()) =>
                    {
                        Err(StateError::CounterOverflow { delta: *delta })
                    }
                    _ => Ok(VersionVector::new()),
                }
            }
            OpKind::SetAdd(_) => Ok(VersionVector::new()),
            OpKind::SetRemove(_) => Ok(client_context.cloned().unwrap_or_else(|| self.context.clone())),
        }
    }

    fn check_kind(&self, op: ValueKind) -> Result<(), StateError> {
        let key = self.kind();
        if op != key {
            return Err(StateError::WrongKind { op, key });
        }
        Ok(())
    }

    /// Applies one op. The caller MUST apply each origin's ops in seq order; an op already
    /// covered is a no-op, so duplicates are harmless.
    pub fn apply(&mut self, op: &Op) -> Result<Applied, StateError> {
        self.check_kind(op.kind.value_kind())?;
        if self.context.covers(&op.dot) {
            return Ok(Applied::Covered);
        }
        let mut concurrent = Vec::new();
        match (&mut self.value, &op.kind) {
            (Value::Register(versions), OpKind::Put(_) | OpKind::Delete) => {
                versions.retain(|v| !op.context.covers(&v.dot));
                concurrent = versions.clone();
                let value = match &op.kind {
                    OpKind::Put(bytes) => Some(ByteBuf::from(bytes.clone())),
                    _ => None,
                };
                let at = versions.binary_search_by(|v| v.dot.cmp(&op.dot)).unwrap_err();
                versions.insert(at, Version { dot: op.dot.clone(), hlc: op.hlc, value });
                // The writer's context covers versions this DC may not have yet; when they arrive
                // they are already superseded, so the key's context takes the op's context in.
                self.context.join(&op.context);
            }
            (Value::Counter(counter), OpKind::CounterAdd(delta)) => {
                let pn_op = counter_step(counter, &op.dot.origin, *delta)
                    .ok_or(StateError::CounterOverflow { delta: *delta })?;
                counter.apply(pn_op);
            }
            (Value::Set(set), OpKind::SetAdd(members)) => {
                for m in members {
                    set.add(m, &op.dot);
                }
            }
            (Value::Set(set), OpKind::SetRemove(members)) => {
                for m in members {
                    set.remove(m, &op.context);
                }
            }
            (value, kind) => unreachable!("kind checked above: {:?} vs {kind:?}", value.kind()),
        }
        self.context.observe(&op.dot);
        Ok(Applied::Applied { concurrent })
    }

    /// Joins `other` into this state. Commutative, associative and idempotent.
    ///
    /// # Panics
    /// If the two states hold different value types: keyspace types are fixed by the topology,
    /// whose fingerprint every link checks, so a mismatch is a bug.
    pub fn merge(&mut self, other: &KeyState) {
        assert_eq!(self.kind(), other.kind(), "merging states of different value types");
        match (&mut self.value, &other.value) {
            (Value::Register(mine), Value::Register(theirs)) => {
                // A version survives when both sides have it, or when the side lacking it has
                // not seen it (so did not supersede it).
                let mut merged: Vec<Version> = mine
                    .iter()
                    .filter(|v| theirs.contains(v) || !other.context.covers(&v.dot))
                    .cloned()
                    .collect();
                for v in theirs {
                    if !mine.contains(v) && !self.context.covers(&v.dot) {
                        merged.push(v.clone());
                    }
                }
                merged.sort_by(|a, b| a.dot.cmp(&b.dot));
                *mine = merged;
            }
            (Value::Counter(mine), Value::Counter(theirs)) => mine.merge(theirs.clone()),
            (Value::Set(mine), Value::Set(theirs)) => mine.merge(theirs),
            _ => unreachable!("kinds asserted equal"),
        }
        self.context.join(&other.context);
    }

    /// Drops register tombstones every DC has seen (`stable` is the meet of all DCs' `seen`),
    /// once `stable` covers the key's whole context (so no op the tombstones superseded can
    /// still arrive). With `beside_live` false, only when no live version remains beside them:
    /// a strategy that picks one winner may pick a tombstone over a concurrent live version.
    /// With `beside_live` true (siblings keyspaces, whose reads never show tombstones), a stable
    /// tombstone goes even beside live siblings, so a DC that collected it before a later
    /// context-less sibling arrived and one that collected it after end in the same state.
    /// The key's context stays. Returns whether a tombstone was dropped. Safe only under the
    /// tombstone GC rule of DESIGN.md, which the caller checks when it computes `stable`.
    pub fn gc_tombstones(&mut self, stable: &VersionVector, beside_live: bool) -> bool {
        if !stable.dominates(&self.context) {
            return false;
        }
        let Value::Register(versions) = &mut self.value else { return false };
        let before = versions.len();
        let collectable = |v: &Version| v.is_tombstone() && stable.covers(&v.dot);
        if beside_live {
            versions.retain(|v| !collectable(v));
        } else if versions.iter().all(collectable) {
            versions.clear();
        }
        versions.len() < before
    }

    /// Whether the key holds a register tombstone (what tombstone GC looks for).
    pub fn has_tombstones(&self) -> bool {
        self.versions().iter().any(Version::is_tombstone)
    }

    /// The counter's value; `None` for other types. Saturates at the `i64` range.
    pub fn counter_value(&self) -> Option<i64> {
        match &self.value {
            Value::Counter(c) => {
                let v = c.read();
                let saturated = if v.sign() == Sign::Minus { i64::MIN } else { i64::MAX };
                Some(i64::try_from(&v).unwrap_or(saturated))
            }
            _ => None,
        }
    }

    /// Reads the key: registers through `choose` (the strategy), counters and sets as they are.
    pub fn read_with(&self, choose: impl FnOnce(&[Version]) -> Vec<Version>) -> ReadResult {
        let value = match &self.value {
            Value::Register(versions) => {
                ReadValue::Register(choose(versions).into_iter().filter(|v| !v.is_tombstone()).collect())
            }
            Value::Counter(_) => ReadValue::Counter(self.counter_value().expect("counter")),
            Value::Set(set) => ReadValue::Set(set.members()),
        };
        ReadResult { value, context: self.context.clone() }
    }
}
