//! The reference workload for wire-size tests and benchmarks, built in one place so they measure
//! the same batch.
//!
//! The records come from `reference-records.jsonl` (see `shared/data/README.md`): one JSON object
//! per line, `{"key":"user:10000","value":{…}}`. Each becomes a put in keyspace [`KEYSPACE`] of
//! its key, whose value is the compact JSON text of the record's `value`, byte for byte as it
//! appears in the file. The batch holds every record in file order as ops of one origin
//! ([`ORIGIN`]) with seqs 1, 2, 3 …, empty contexts, and HLCs from a simulated millisecond clock
//! that starts at [`START_WALL_MS`] and advances by 0 or 1 ms per op (a deterministic
//! pseudo-random choice), so timestamps share milliseconds and carry logical counters as they
//! do under load.
//!
//! [`parse_records`] parses text; [`load`] reads the file for tests and benchmarks (the only file
//! access in this crate, never on the protocol path).

use crate::message::Batch;
use mesh_core::{DcId, Dot, HlcClock, Key, Keyspace, Op, OpKind, VersionVector};

/// The origin DC of every op.
pub const ORIGIN: &str = "us-east";

/// The keyspace of every op.
pub const KEYSPACE: &str = "users";

/// The simulated wall clock's first reading, in ms since the Unix epoch (2024-11-19).
pub const START_WALL_MS: u64 = 1_732_000_000_000;

/// Seeds the clock's 0-or-1 ms steps.
pub const CLOCK_SEED: u64 = 0x6d65_7368_7769_7265;

/// Where `shared/data/reference-records.jsonl` usually is, relative to the workspace root.
pub const DEFAULT_RELATIVE_PATH: &str = "../shared/data/reference-records.jsonl";

/// The environment variable that overrides the data path in tests and benchmarks.
pub const PATH_ENV: &str = "MESH_REFERENCE_DATA";

/// Reads and parses the reference data for a test or benchmark: from `$MESH_REFERENCE_DATA`, else
/// from [`DEFAULT_RELATIVE_PATH`] under `workspace_root`.
///
/// # Panics
/// With a message naming the path and the variable to set, when the file cannot be read or
/// parsed: without the data there is nothing to measure.
pub fn load(workspace_root: &std::path::Path) -> Vec<Record> {
    let path = std::env::var_os(PATH_ENV)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace_root.join(DEFAULT_RELATIVE_PATH));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("cannot read the reference data at {} ({e}); set {PATH_ENV} to the path of reference-records.jsonl", path.display())
    });
    parse_records(&text).expect("the reference data parses")
}

/// One record: a key and the bytes of its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The record's key.
    pub key: Key,
    /// The compact JSON text of the record's value.
    pub value: Vec<u8>,
}

/// Why the reference data could not be read. Nothing is returned with one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("reference data line {line}: {reason}")]
pub struct ReferenceError {
    /// The 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

/// Parses the JSONL text: each non-empty line is `{"key":"…","value":…}`; the value is kept
/// as the exact JSON text of the line (serde_json's `RawValue`), which for this file is its
/// compact form.
pub fn parse_records(jsonl: &str) -> Result<Vec<Record>, ReferenceError> {
    #[derive(serde::Deserialize)]
    struct Line<'a> {
        key: String,
        #[serde(borrow)]
        value: &'a serde_json::value::RawValue,
    }
    let mut records = Vec::new();
    for (i, line) in jsonl.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| ReferenceError { line: i + 1, reason };
        let parsed: Line<'_> = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let key = Key::new(parsed.key).map_err(|e| bad(e.to_string()))?;
        records.push(Record { key, value: parsed.value.get().as_bytes().to_vec() });
    }
    Ok(records)
}

/// The reference ops: one put per record, in order, as described in the module docs.
pub fn ops(records: &[Record]) -> Vec<Op> {
    let origin = DcId::new(ORIGIN).expect("the reference origin is a valid DC id");
    let keyspace = Keyspace::new(KEYSPACE).expect("the reference keyspace is a valid name");
    let mut clock = HlcClock::new(0);
    let mut wall_ms = START_WALL_MS;
    let mut rng = CLOCK_SEED;
    let mut ops = Vec::with_capacity(records.len());
    for (i, record) in records.iter().enumerate() {
        wall_ms += splitmix64(&mut rng) & 1;
        ops.push(Op {
            dot: Dot::new(origin.clone(), i as u64 + 1),
            hlc: clock.tick(wall_ms),
            keyspace: keyspace.clone(),
            key: record.key.clone(),
            kind: OpKind::Put(record.value.clone()),
            context: VersionVector::new(),
        });
    }
    ops
}

/// The reference batch: [`ops`] as one batch without trace context.
pub fn batch(records: &[Record]) -> Batch {
    Batch { ops: ops(records), trace: None, commit_times: Vec::new() }
}

/// A small deterministic generator (SplitMix64), so the clock's steps need no RNG crate.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_line_keeps_its_value_text_byte_for_byte() {
        // Proves the parser takes the value's JSON text as it is, nested braces and strings
        // holding brackets included, and refuses a line that is not the expected shape.
        let line = r#"{"key":"user:1","value":{"a":"}]\"{","b":[1,{"c":2}],"d":8.69}}"#;
        let records = parse_records(line).unwrap();
        assert_eq!(records[0].key.as_str(), "user:1");
        assert_eq!(records[0].value, br#"{"a":"}]\"{","b":[1,{"c":2}],"d":8.69}"#);
        assert!(parse_records(r#"{"key":"k"}"#).is_err());
        assert!(parse_records(r#"{"key":"k","value":{"a":1}"#).is_err());
        assert!(parse_records(r#"{"key":"k","value":{"a":1}}x"#).is_err());
    }

    #[test]
    fn reference_ops_are_gapless_with_increasing_timestamps() {
        // Proves the reference batch is what the wire expects from one origin: seqs 1..=n and
        // strictly increasing HLCs, some sharing a millisecond.
        let records: Vec<Record> = (0..100)
            .map(|i| Record { key: Key::new(format!("user:{i}")).unwrap(), value: b"{}".to_vec() })
            .collect();
        let ops = ops(&records);
        for (i, op) in ops.iter().enumerate() {
            assert_eq!(op.dot.seq, i as u64 + 1);
        }
        assert!(ops.windows(2).all(|w| w[0].hlc < w[1].hlc));
        assert!(ops.iter().any(|op| op.hlc.logical > 0));
        assert!(ops.last().unwrap().hlc.physical_ms > START_WALL_MS);
    }
}
