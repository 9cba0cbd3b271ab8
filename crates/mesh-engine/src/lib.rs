//! mesh-engine: the replication behaviours of one DC as pure state machines.
//!
//! Every behaviour follows one shape, after quinn-proto: inputs arrive through `handle_*`
//! methods that take `now_ms` (a monotonic millisecond clock the runtime owns), outputs are
//! drained with `poll_*` methods, and `poll_timeout` says when the behaviour next wants
//! `handle_timeout`. Nothing here reads a clock, draws from a thread RNG (randomness is passed
//! in), spawns a task or touches a socket or a disk: the node's ractor actors and the simulator's
//! scheduler are two runtimes for the same code.
//!
//! Built so far: [`pool::DialPolicy`] (which endpoint of a peer DC to dial, and when),
//! [`health::HealthMonitor`] (phi-accrual failure detection, lag and clock offset per peer) and
//! [`sync::SyncTracker`] (async, sync and hybrid writes: acks learned directly or relayed,
//! timeouts with the partial result), [`resolver::Resolver`] (local writes, remote apply, the
//! durability barrier, conflict records, idempotency keys) and [`hello::check_hello`] (identity,
//! membership and fingerprint checks of a new link, and where replication resumes).
#![warn(missing_docs, unreachable_pub)]
#![deny(clippy::disallowed_methods)]

mod commit;
pub mod health;
pub mod hello;
pub mod node;
mod planted;
pub mod pool;
pub mod replicator;
pub mod resolver;
pub mod sync;

pub use commit::{CommitBatch, IdempotencyRecord, OpLog, Scan, SnapshotRead, StateRead, StoreIdentity};
pub use planted::PlantedBug;
