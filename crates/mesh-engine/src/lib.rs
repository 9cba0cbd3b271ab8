//! mesh-engine: the replication behaviours of one DC as pure state machines.
//!
//! Every behaviour follows one shape, after quinn-proto: inputs arrive through `handle_*`
//! methods that take the time (a monotonic millisecond clock the runtime owns, [`MonoMs`]; the
//! wall clock, [`WallMs`], where a rule needs it), outputs are
//! drained with `poll_*` methods, and `poll_timeout` says when the behaviour next wants
//! `handle_timeout`. Nothing here reads a clock, draws from a thread RNG (randomness is passed
//! in), spawns a task or touches a socket or a disk: the node's ractor actors and the simulator's
//! scheduler are two runtimes for the same code.
//!
//! The composition is [`node::Node`]: one DC, wiring the machines below; both runtimes drive
//! it and nothing else. Its machines, each with its own deterministic tests:
//! - [`replicator::Replicator`] (per peer: which ops to send, in which batches, the window and
//!   go-back-N resends) and [`replicator::targets`] (the relay rule);
//! - [`resolver::Resolver`] (local writes, remote apply, the durability barrier, conflict records,
//!   idempotency keys);
//! - [`health::HealthMonitor`] (phi-accrual failure detection, heartbeats, lag and clock offset
//!   per peer), which runs beside the node rather than inside it: the node feeds it
//!   [`node::Effect::Health`] and takes its verdicts in [`node::Node::handle_health`], so a
//!   runtime may run it apart from the commit path;
//! - [`sync::SyncTracker`] (async, sync and hybrid writes and their acks);
//! - [`pool::DialPolicy`] (which endpoint of a peer to dial, and when);
//! - [`gate::StartGate`] (no seq named before this DC knows which are free);
//! - [`transfer`] (state transfer to and from a peer behind the retained log);
//! - [`retention`] (how far the log may be compacted) and [`gc`] (which tombstones are stable);
//! - [`hello::check_hello`] (identity, membership and fingerprint checks of a new link);
//! - [`timer`] (every deadline of a node, named by one enum).
//!
//! [`node::Effect`] states, per variant, what a runtime MUST and MUST NOT do with it.
#![warn(missing_docs, unreachable_pub)]
#![deny(clippy::disallowed_methods)]

mod commit;
pub mod gate;
pub mod gc;
pub mod health;
pub mod hello;
pub mod node;
mod planted;
pub mod pool;
pub mod replicator;
pub mod resolver;
pub mod retention;
pub mod sync;
pub mod time;
pub mod timer;
pub mod transfer;

pub use commit::{
    CommitBatch, IdempotencyRecord, LogReadError, OpLog, Scan, SnapshotError, SnapshotRead, StateRead,
    StoreIdentity,
};
pub use planted::PlantedBug;
pub use time::{MonoMs, WallMs};
