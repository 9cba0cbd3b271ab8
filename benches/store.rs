//! Durable group commit throughput of the redb store, on a real file in the target directory.
//!
//! - `single_op_writers/N`: N threads, each committing one 100-byte put at a time and waiting
//!   for its fsync, as N concurrent clients of one DC would. Throughput is in ops.
//! - `batched/N`: N threads, each committing batches of 1,000 puts and waiting for each (a
//!   replicated batch or a pipelined client batch).
//! - `pipelined`: one submitter that keeps submitting 1,000-put batches without waiting, as the
//!   engine's resolver actor does (it submits and handles `committed` later); the batches are
//!   built before the clock starts, so this measures the store alone.
//!
//! Keys: `uniform` draws each key from 1,000,000 keys spread over the whole key space (every
//! write lands on a different B-tree leaf: the worst case for a copy-on-write B-tree), and
//! `reference` cycles over the 1,000 keys of the reference data set (`user:10000` …
//! `user:10999`), a hot working set.
//!
//! Run: `cargo bench --bench store`. Targets: ≥ 100k ops/s at 64 single-op writers, ≥ 300k ops/s
//! batched.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mesh_core::DcId;
use mesh_store::testing::{put_commit, value_for};
use mesh_store::{CommitBatch, DurableStore, Store};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

const VALUE_BYTES: usize = 100;

/// Seqs are assigned and submitted under one lock, as the engine's resolver does.
struct Writer {
    store: Arc<DurableStore>,
    next_seq: Mutex<u64>,
    origin: DcId,
    keys: Keys,
}

#[derive(Clone, Copy)]
enum Keys {
    Uniform,
    Reference,
}

impl Keys {
    fn key(self, seq: u64) -> String {
        match self {
            // A multiplicative hash spreads consecutive seqs over the key space.
            Keys::Uniform => format!("user:{:07}", seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) % 1_000_000),
            Keys::Reference => format!("user:{}", 10_000 + seq % 1_000),
        }
    }
}

impl Writer {
    /// Submits a commit of `ops` puts and returns a receiver for its outcome. Seqs are taken and
    /// the commit submitted under one lock, so the log receives them in order.
    fn submit(&self, ops: usize) -> mpsc::Receiver<Result<(), mesh_store::StoreError>> {
        let mut seq = self.next_seq.lock().unwrap();
        let batch = self.build_locked(&mut seq, ops);
        self.submit_built(batch)
    }

    /// A commit of `ops` puts with the next seqs.
    fn build(&self, ops: usize) -> CommitBatch {
        self.build_locked(&mut self.next_seq.lock().unwrap(), ops)
    }

    fn submit_built(&self, batch: CommitBatch) -> mpsc::Receiver<Result<(), mesh_store::StoreError>> {
        let (tx, rx) = mpsc::channel();
        self.store.submit(
            batch,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx
    }

    fn build_locked(&self, seq: &mut u64, ops: usize) -> CommitBatch {
        let mut batch = CommitBatch::default();
        for _ in 0..ops {
            *seq += 1;
            let key = self.keys.key(*seq);
            let one = put_commit(&self.origin, *seq, &key, value_for(&key, VALUE_BYTES));
            batch.ops.extend(one.ops);
            batch.states.extend(one.states);
            batch.seen.join(&one.seen);
        }
        batch
    }
}

/// Builds `count` batches of `ops` puts (untimed), then submits them all without waiting and
/// returns the time until the last one is durable.
fn run_pipelined(writer: &Writer, count: u64, ops: usize) -> Duration {
    let batches: Vec<CommitBatch> = (0..count).map(|_| writer.build(ops)).collect();
    let start = Instant::now();
    let receivers: Vec<_> = batches.into_iter().map(|b| writer.submit_built(b)).collect();
    for rx in receivers {
        rx.recv().unwrap().unwrap();
    }
    start.elapsed()
}

/// Runs `threads` threads that together commit `commits` commits of `ops` ops; returns the time.
fn run(writer: &Arc<Writer>, threads: usize, commits: u64, ops: usize) -> Duration {
    let per_thread = commits.div_ceil(threads as u64);
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let writer = writer.clone();
            std::thread::spawn(move || {
                for _ in 0..per_thread {
                    writer.submit(ops).recv().unwrap().unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    start.elapsed()
}

fn group_commit(c: &mut Criterion) {
    for (name, keys) in [("uniform", Keys::Uniform), ("reference", Keys::Reference)] {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let store = Arc::new(DurableStore::open(dir.path().join("bench.redb")).unwrap());
        let writer =
            Arc::new(Writer { store, next_seq: Mutex::new(0), origin: DcId::new("us-east").unwrap(), keys });
        // Fill the key space first, so that the measured writes update an existing tree.
        let fill = match keys {
            Keys::Uniform => 1_000,
            Keys::Reference => 1,
        };
        run(&writer, 1, fill, 1_000);

        let mut g = c.benchmark_group(format!("single_op_writers/{name}"));
        g.sample_size(10).measurement_time(Duration::from_secs(5));
        g.throughput(Throughput::Elements(1));
        for threads in [1usize, 8, 64] {
            g.bench_with_input(BenchmarkId::from_parameter(threads), &threads, |b, &threads| {
                b.iter_custom(|iters| run(&writer, threads, iters.max(threads as u64), 1))
            });
        }
        g.finish();

        let mut g = c.benchmark_group(format!("batched/{name}"));
        g.sample_size(10).measurement_time(Duration::from_secs(5));
        g.throughput(Throughput::Elements(1_000));
        for threads in [1usize, 8] {
            g.bench_with_input(BenchmarkId::from_parameter(threads), &threads, |b, &threads| {
                b.iter_custom(|iters| run(&writer, threads, iters.max(threads as u64), 1_000))
            });
        }
        g.bench_function("pipelined", |b| b.iter_custom(|iters| run_pipelined(&writer, iters, 1_000)));
        g.finish();
    }
}

criterion_group!(benches, group_commit);
criterion_main!(benches);
