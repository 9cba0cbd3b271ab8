//! The compact layout of a batch body.
//!
//! A plain `Vec<Op>` repeats, in every op, the origin's name, a full seq, a 9-byte timestamp and
//! the keyspace's name. Here those are stated once:
//!
//! ```text
//! batch   = [op_count, trace, dcs, keyspaces, runs, commit_times]
//! trace   = nil | [traceparent, tracestate]
//! commit_times = [[last_seq, unix_us], …]   the sender's group commits its own ops came from
//!                                         (may be absent: a batch of an older sender)
//! dcs     = [dc id, …]          every DC the batch names (origins, contexts), first use first
//! keyspaces = [keyspace, …]     every keyspace the batch names, first use first
//! runs    = [run, …]
//! run     = [origin, first_seq, [op, …]]   origin: index into dcs; op i has seq first_seq + i
//! op      = [physical_ms_delta, logical, keyspace, key_shared, key_suffix, kind, payload, context]
//! context = {dc index: seq, …}
//! ```
//!
//! A run is a maximal stretch of consecutive ops from one origin with consecutive seqs, so the
//! seqs are implicit. `physical_ms_delta` is the op's HLC physical time minus the previous op's
//! (the first op's is against 0), as a wrapping signed 64-bit difference; `logical` is carried
//! as is. The key is front-coded against the previous op's key: `key_shared` bytes of it
//! (ending on a character boundary), then `key_suffix`. `kind` is 0 put (payload: bin), 1
//! delete (nil), 2 counter add (int), 3 set add and 4 set remove (array of bin). The layout
//! decodes to exactly the ops that were encoded, in the same order.

use crate::message::{Batch, CommitTime, TraceContext};
use crate::validate::{DCS_MAX, SET_MEMBERS_MAX};
use mesh_core::{DcId, Dot, Hlc, Key, Keyspace, Op, OpKind, VersionVector};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, SerializeTuple};
use serde::{Deserialize, Serialize, Serializer};
use serde_bytes::ByteBuf;
use std::fmt;
use std::marker::PhantomData;

const KIND_PUT: u8 = 0;
const KIND_DELETE: u8 = 1;
const KIND_COUNTER_ADD: u8 = 2;
const KIND_SET_ADD: u8 = 3;
const KIND_SET_REMOVE: u8 = 4;

// ---------------------------------------------------------------------------------------------
// Encoding

/// The DC and keyspace names a batch uses, in first-use order, each once.
struct Tables<'a> {
    dcs: Vec<&'a DcId>,
    keyspaces: Vec<&'a Keyspace>,
}

impl<'a> Tables<'a> {
    fn of(ops: &'a [Op]) -> Self {
        let mut tables = Tables { dcs: Vec::new(), keyspaces: Vec::new() };
        for op in ops {
            intern(&mut tables.dcs, &op.dot.origin);
            intern(&mut tables.keyspaces, &op.keyspace);
            for (dc, _) in op.context.iter() {
                intern(&mut tables.dcs, dc);
            }
        }
        tables
    }

    fn dc(&self, dc: &DcId) -> u32 {
        position(&self.dcs, dc)
    }

    fn keyspace(&self, keyspace: &Keyspace) -> u32 {
        position(&self.keyspaces, keyspace)
    }
}

// A linear scan: a batch names a handful of DCs and keyspaces, where a map would cost more than
// it saves.
fn intern<'a, T: PartialEq>(table: &mut Vec<&'a T>, item: &'a T) {
    if !table.contains(&item) {
        table.push(item);
    }
}

fn position<T: PartialEq>(table: &[&T], item: &T) -> u32 {
    let at = table.iter().position(|t| *t == item).expect("every name was interned before encoding");
    u32::try_from(at).expect("tables are bounded by the op count")
}

/// Whether `op` continues the run `prev` belongs to: same origin, next seq.
fn continues_run(prev: &Op, op: &Op) -> bool {
    prev.dot.origin == op.dot.origin && prev.dot.seq.checked_add(1) == Some(op.dot.seq)
}

/// The number of bytes of `key` to take from `prev`: their common prefix, shortened to end on
/// a character boundary (where it is a boundary of both, since the bytes before it are equal
/// and complete characters).
fn key_shared(prev: &str, key: &str) -> usize {
    let mut shared = prev.bytes().zip(key.bytes()).take_while(|(a, b)| a == b).count();
    while !key.is_char_boundary(shared) {
        shared -= 1;
    }
    shared
}

/// Serializes a batch in the compact layout.
pub(crate) struct BatchRef<'a>(pub(crate) &'a Batch);

impl Serialize for BatchRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let ops = &self.0.ops;
        let tables = Tables::of(ops);
        let mut runs = Vec::new();
        let mut start = 0;
        for i in 1..=ops.len() {
            if i == ops.len() || !continues_run(&ops[i - 1], &ops[i]) {
                runs.push(start..i);
                start = i;
            }
        }
        let mut out = serializer.serialize_tuple(6)?;
        out.serialize_element(&ops.len())?;
        out.serialize_element(&self.0.trace)?;
        out.serialize_element(&tables.dcs)?;
        out.serialize_element(&tables.keyspaces)?;
        out.serialize_element(&RunsRef { ops, runs: &runs, tables: &tables })?;
        let commit_times: Vec<(u64, u64)> =
            self.0.commit_times.iter().map(|c| (c.last_seq, c.unix_us)).collect();
        out.serialize_element(&commit_times)?;
        out.end()
    }
}

struct RunsRef<'a> {
    ops: &'a [Op],
    runs: &'a [std::ops::Range<usize>],
    tables: &'a Tables<'a>,
}

impl Serialize for RunsRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = serializer.serialize_seq(Some(self.runs.len()))?;
        for run in self.runs {
            out.serialize_element(&RunRef { ops: self.ops, run: run.clone(), tables: self.tables })?;
        }
        out.end()
    }
}

struct RunRef<'a> {
    ops: &'a [Op],
    run: std::ops::Range<usize>,
    tables: &'a Tables<'a>,
}

impl Serialize for RunRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let first = &self.ops[self.run.start];
        let mut out = serializer.serialize_tuple(3)?;
        out.serialize_element(&self.tables.dc(&first.dot.origin))?;
        out.serialize_element(&first.dot.seq)?;
        out.serialize_element(&RunOpsRef { ops: self.ops, run: self.run.clone(), tables: self.tables })?;
        out.end()
    }
}

struct RunOpsRef<'a> {
    ops: &'a [Op],
    run: std::ops::Range<usize>,
    tables: &'a Tables<'a>,
}

impl Serialize for RunOpsRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = serializer.serialize_seq(Some(self.run.len()))?;
        for i in self.run.clone() {
            let prev = i.checked_sub(1).map(|p| &self.ops[p]);
            out.serialize_element(&OpRef { op: &self.ops[i], prev, tables: self.tables })?;
        }
        out.end()
    }
}

struct OpRef<'a> {
    op: &'a Op,
    prev: Option<&'a Op>,
    tables: &'a Tables<'a>,
}

impl Serialize for OpRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let op = self.op;
        let prev_physical_ms = self.prev.map_or(0, |p| p.hlc.physical_ms);
        // Reinterpreting the wrapping difference as signed keeps small steps (either way) small
        // on the wire and stays a bijection over all of u64.
        let physical_ms_delta = op.hlc.physical_ms.wrapping_sub(prev_physical_ms) as i64;
        let key = op.key.as_str();
        let shared = key_shared(self.prev.map_or("", |p| p.key.as_str()), key);
        let mut out = serializer.serialize_tuple(8)?;
        out.serialize_element(&physical_ms_delta)?;
        out.serialize_element(&op.hlc.logical)?;
        out.serialize_element(&self.tables.keyspace(&op.keyspace))?;
        out.serialize_element(&shared)?;
        out.serialize_element(&key[shared..])?;
        match &op.kind {
            OpKind::Put(value) => {
                out.serialize_element(&KIND_PUT)?;
                out.serialize_element(serde_bytes::Bytes::new(value))?;
            }
            OpKind::Delete => {
                out.serialize_element(&KIND_DELETE)?;
                out.serialize_element(&())?;
            }
            OpKind::CounterAdd(amount) => {
                out.serialize_element(&KIND_COUNTER_ADD)?;
                out.serialize_element(amount)?;
            }
            OpKind::SetAdd(members) => {
                out.serialize_element(&KIND_SET_ADD)?;
                out.serialize_element(members)?;
            }
            OpKind::SetRemove(members) => {
                out.serialize_element(&KIND_SET_REMOVE)?;
                out.serialize_element(members)?;
            }
        }
        out.serialize_element(&ContextRef { context: &op.context, tables: self.tables })?;
        out.end()
    }
}

struct ContextRef<'a> {
    context: &'a VersionVector,
    tables: &'a Tables<'a>,
}

impl Serialize for ContextRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = serializer.serialize_map(Some(self.context.len()))?;
        for (dc, seq) in self.context.iter() {
            out.serialize_entry(&self.tables.dc(dc), &seq)?;
        }
        out.end()
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// Limits applied while a batch is read, and the typed reason when the op bound was hit.
pub(crate) struct BatchCtx {
    /// Most ops accepted.
    pub(crate) ops_max: usize,
    /// Set when a batch announced more than `ops_max` ops; decoding stopped there.
    pub(crate) ops_refused: Option<u64>,
}

/// Deserializes a batch body, refusing one that announces more than `ops_max` ops before any
/// op is read.
pub(crate) struct BatchSeed<'c> {
    pub(crate) ctx: &'c mut BatchCtx,
}

impl<'de> DeserializeSeed<'de> for BatchSeed<'_> {
    type Value = Batch;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Batch, D::Error> {
        deserializer.deserialize_tuple(6, self)
    }
}

fn missing<E: de::Error>(what: &'static str) -> E {
    E::custom(format_args!("missing {what}"))
}

impl<'de> Visitor<'de> for BatchSeed<'_> {
    type Value = Batch;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a batch [op_count, trace, dcs, keyspaces, runs, commit_times]")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Batch, A::Error> {
        let op_count: u64 = seq.next_element()?.ok_or_else(|| missing("op count"))?;
        let op_count = match usize::try_from(op_count) {
            Ok(n) if n <= self.ctx.ops_max => n,
            _ => {
                self.ctx.ops_refused = Some(op_count);
                return Err(de::Error::custom(format_args!(
                    "the batch announces {op_count} ops, more than {}",
                    self.ctx.ops_max
                )));
            }
        };
        let trace: Option<TraceContext> = seq.next_element()?.ok_or_else(|| missing("trace context"))?;
        let dcs = seq
            .next_element_seed(BoundedVec::<DcId>::new(DCS_MAX, "DC table"))?
            .ok_or_else(|| missing("DC table"))?;
        // Every interned keyspace is used by at least one op, so the op count bounds the table.
        let keyspaces = seq
            .next_element_seed(BoundedVec::<Keyspace>::new(op_count, "keyspace table"))?
            .ok_or_else(|| missing("keyspace table"))?;
        let mut expand = Expand { dcs, keyspaces, op_count, ops: Vec::with_capacity(op_count) };
        seq.next_element_seed(RunsSeed(&mut expand))?.ok_or_else(|| missing("runs"))?;
        if expand.ops.len() != op_count {
            return Err(de::Error::custom(format_args!(
                "the batch announces {op_count} ops and holds {}",
                expand.ops.len()
            )));
        }
        // Each entry covers at least one op, so the op count bounds the list.
        let commit_times = seq
            .next_element_seed(BoundedVec::<(u64, u64)>::new(op_count, "commit times"))?
            .unwrap_or_default()
            .into_iter()
            .map(|(last_seq, unix_us)| CommitTime { last_seq, unix_us })
            .collect();
        Ok(Batch { ops: expand.ops, trace, commit_times })
    }
}

/// The state of a batch being decoded: its tables and the ops so far (the previous op is what
/// deltas and key prefixes refer to).
struct Expand {
    dcs: Vec<DcId>,
    keyspaces: Vec<Keyspace>,
    op_count: usize,
    ops: Vec<Op>,
}

impl Expand {
    fn dc<E: de::Error>(&self, index: u32) -> Result<&DcId, E> {
        self.dcs.get(index as usize).ok_or_else(|| {
            E::custom(format_args!("DC index {index} is outside the table of {}", self.dcs.len()))
        })
    }
}

struct RunsSeed<'e>(&'e mut Expand);

impl<'de> DeserializeSeed<'de> for RunsSeed<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RunsSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of runs")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(RunSeed(&mut *self.0))?.is_some() {}
        Ok(())
    }
}

struct RunSeed<'e>(&'e mut Expand);

impl<'de> DeserializeSeed<'de> for RunSeed<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_tuple(3, self)
    }
}

impl<'de> Visitor<'de> for RunSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a run [origin, first_seq, ops]")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let origin: u32 = seq.next_element()?.ok_or_else(|| missing("run origin"))?;
        let origin = self.0.dc::<A::Error>(origin)?.clone();
        let first_seq: u64 = seq.next_element()?.ok_or_else(|| missing("run first seq"))?;
        if first_seq == 0 {
            return Err(de::Error::custom("a run starts at seq 0; seqs start at 1"));
        }
        let before = self.0.ops.len();
        seq.next_element_seed(RunOpsSeed { expand: &mut *self.0, origin, first_seq })?
            .ok_or_else(|| missing("run ops"))?;
        if self.0.ops.len() == before {
            return Err(de::Error::custom("a run holds no op"));
        }
        Ok(())
    }
}

struct RunOpsSeed<'e> {
    expand: &'e mut Expand,
    origin: DcId,
    first_seq: u64,
}

impl<'de> DeserializeSeed<'de> for RunOpsSeed<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RunOpsSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of ops")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        // `None` once a run has reached u64::MAX: no op can follow it.
        let mut next_seq = Some(self.first_seq);
        loop {
            if self.expand.ops.len() == self.expand.op_count {
                // Anything more is beyond the announced count: refuse before reading it.
                return match seq.next_element::<de::IgnoredAny>()? {
                    None => Ok(()),
                    Some(_) => Err(de::Error::custom(format_args!(
                        "the batch holds more ops than the {} it announces",
                        self.expand.op_count
                    ))),
                };
            }
            let Some(dot_seq) = next_seq else {
                return match seq.next_element::<de::IgnoredAny>()? {
                    None => Ok(()),
                    Some(_) => Err(de::Error::custom("a run continues past seq u64::MAX")),
                };
            };
            let dot = Dot { origin: self.origin.clone(), seq: dot_seq };
            let Some(op) = seq.next_element_seed(OpSeed { expand: &*self.expand, dot })? else {
                return Ok(());
            };
            self.expand.ops.push(op);
            next_seq = dot_seq.checked_add(1);
        }
    }
}

struct OpSeed<'e> {
    expand: &'e Expand,
    dot: Dot,
}

impl<'de> DeserializeSeed<'de> for OpSeed<'_> {
    type Value = Op;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Op, D::Error> {
        deserializer.deserialize_tuple(8, self)
    }
}

impl<'de> Visitor<'de> for OpSeed<'_> {
    type Value = Op;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "an op [physical_ms_delta, logical, keyspace, key_shared, key_suffix, kind, payload, context]",
        )
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Op, A::Error> {
        let prev = self.expand.ops.last();
        let physical_ms_delta: i64 = seq.next_element()?.ok_or_else(|| missing("HLC physical delta"))?;
        let logical: u32 = seq.next_element()?.ok_or_else(|| missing("HLC logical"))?;
        let prev_physical_ms = prev.map_or(0, |p| p.hlc.physical_ms);
        let hlc = Hlc::new(prev_physical_ms.wrapping_add(physical_ms_delta as u64), logical);

        let keyspace: u32 = seq.next_element()?.ok_or_else(|| missing("keyspace index"))?;
        let keyspace = self.expand.keyspaces.get(keyspace as usize).cloned().ok_or_else(|| {
            de::Error::custom(format_args!(
                "keyspace index {keyspace} is outside the table of {}",
                self.expand.keyspaces.len()
            ))
        })?;

        let prev_key = prev.map_or("", |p| p.key.as_str());
        let shared: u64 = seq.next_element()?.ok_or_else(|| missing("key prefix length"))?;
        let shared = match usize::try_from(shared) {
            Ok(n) if n <= prev_key.len() && prev_key.is_char_boundary(n) => n,
            _ => {
                return Err(de::Error::custom(format_args!(
                    "key prefix of {shared} bytes does not fit the previous key {prev_key:?}"
                )))
            }
        };
        let key = seq
            .next_element_seed(KeySeed { prefix: &prev_key[..shared] })?
            .ok_or_else(|| missing("key suffix"))?;

        let kind: u8 = seq.next_element()?.ok_or_else(|| missing("op kind"))?;
        let kind = match kind {
            KIND_PUT => {
                OpKind::Put(seq.next_element::<ByteBuf>()?.ok_or_else(|| missing("value"))?.into_vec())
            }
            KIND_DELETE => {
                seq.next_element::<()>()?.ok_or_else(|| missing("delete payload"))?;
                OpKind::Delete
            }
            KIND_COUNTER_ADD => OpKind::CounterAdd(seq.next_element()?.ok_or_else(|| missing("amount"))?),
            KIND_SET_ADD | KIND_SET_REMOVE => {
                let members = seq
                    .next_element_seed(BoundedVec::<ByteBuf>::new(SET_MEMBERS_MAX, "set members"))?
                    .ok_or_else(|| missing("set members"))?;
                if kind == KIND_SET_ADD {
                    OpKind::SetAdd(members)
                } else {
                    OpKind::SetRemove(members)
                }
            }
            other => return Err(de::Error::custom(format_args!("unknown op kind {other}"))),
        };
        let context =
            seq.next_element_seed(ContextSeed { expand: self.expand })?.ok_or_else(|| missing("context"))?;
        Ok(Op { dot: self.dot, hlc, keyspace, key, kind, context })
    }
}

/// Reads a key suffix and joins it to the prefix taken from the previous key.
struct KeySeed<'p> {
    prefix: &'p str,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Key;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Key, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key suffix string")
    }

    fn visit_str<E: de::Error>(self, suffix: &str) -> Result<Key, E> {
        let mut key = String::with_capacity(self.prefix.len() + suffix.len());
        key.push_str(self.prefix);
        key.push_str(suffix);
        Key::new(key).map_err(E::custom)
    }
}

/// Reads an op's context: a map from DC index to seq.
struct ContextSeed<'e> {
    expand: &'e Expand,
}

impl<'de> DeserializeSeed<'de> for ContextSeed<'_> {
    type Value = VersionVector;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<VersionVector, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ContextSeed<'_> {
    type Value = VersionVector;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a context map {dc index: seq}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<VersionVector, A::Error> {
        let mut context = VersionVector::new();
        while let Some((index, seq)) = map.next_entry::<u32, u64>()? {
            let dc = self.expand.dc::<A::Error>(index)?;
            // A zero entry or a repeated DC would decode to the same vector as another encoding;
            // refusing them keeps one encoding per batch.
            if seq == 0 {
                return Err(de::Error::custom(format_args!("context entry for {dc} is 0")));
            }
            if context.get(dc) != 0 {
                return Err(de::Error::custom(format_args!("context names {dc} twice")));
            }
            if context.len() == DCS_MAX {
                return Err(de::Error::custom(format_args!("a context names more than {DCS_MAX} DCs")));
            }
            context.raise(dc, seq);
        }
        Ok(context)
    }
}

/// Reads an array of at most `max` elements, refusing a longer one before reading past `max`.
pub(crate) struct BoundedVec<T> {
    max: usize,
    what: &'static str,
    item: PhantomData<T>,
}

impl<T> BoundedVec<T> {
    pub(crate) fn new(max: usize, what: &'static str) -> Self {
        Self { max, what, item: PhantomData }
    }
}

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for BoundedVec<T> {
    type Value = Vec<T>;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Vec<T>, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for BoundedVec<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {} of at most {} elements", self.what, self.max)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let too_long =
            || de::Error::custom(format_args!("the {} has more than {} elements", self.what, self.max));
        let announced = seq.size_hint().unwrap_or(0);
        if announced > self.max {
            return Err(too_long());
        }
        let mut items = Vec::with_capacity(announced);
        while let Some(item) = seq.next_element()? {
            if items.len() == self.max {
                return Err(too_long());
            }
            items.push(item);
        }
        Ok(items)
    }
}
