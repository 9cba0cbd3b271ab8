//! mesh-core: the pure replication model of mesh.
//!
//! Identifiers ([`DcId`], [`Keyspace`], [`Key`]), the hybrid logical clock ([`Hlc`]), dots and
//! version vectors ([`Dot`], [`VersionVector`]), operations ([`Op`]), the causal state of one key
//! ([`KeyState`]) with its merge, the conflict-resolution strategies ([`Strategy`], [`Resolver`])
//! and the topology schema ([`topology`]).
//!
//! Nothing here does IO, reads a clock or spawns a task: time comes in as a parameter. The engine,
//! the simulator and the node all build on these types, so every DC resolves with the same code.
#![warn(missing_docs, unreachable_pub)]
#![deny(clippy::disallowed_methods)]

mod causal;
mod hlc;
mod ids;
mod op;
mod state;
mod strategy;
pub mod topology;

pub use causal::{Dot, VersionVector};
pub use hlc::{Hlc, HlcClock, Observed};
pub use ids::{DcId, IdError, Key, Keyspace, DC_ID_BYTES_MAX, KEYSPACE_BYTES_MAX, KEY_BYTES_MAX};
pub use op::{Op, OpKind, ValueKind, VALUE_BYTES_MAX};
pub use state::{Applied, KeyState, OrSet, ReadResult, ReadValue, StateError, Value, Version};
pub use strategy::{
    builtin_resolvers, Conflict, FirstWriterWins, KeyspaceRules, MaxValue, Resolver, ResolverRegistry,
    Strategy, StrategyError,
};
pub use topology::{Topology, TopologyConfig, TopologyError};
