//! mesh-node: the IO shell around the engine. [`runtime`] runs each DC's
//! `mesh_engine::node::Node` in ractor actors (the resolver, [`health`], [`pool`], [`link`]) over the durable store and QUIC links
//! ([`transport`], mutual TLS from [`tls`]); [`config`] loads mesh.toml; [`http`] and [`resp`]
//! are the client APIs; [`metrics`], [`lag`] and [`traces`] are what operators see
//! (docs/architecture.md draws the whole).
#![warn(missing_docs, unreachable_pub)]

pub mod config;
pub mod health;
pub mod http;
pub mod lag;
pub mod link;
pub mod metrics;
pub mod pool;
pub mod resp;
pub mod runtime;
pub mod tls;
pub mod traces;
pub mod transport;
