//! mesh-node: the IO shell around the engine. So far: mutual TLS between DCs ([`tls`]) and the
//! QUIC transport that carries mesh-wire frames between them ([`transport`]). The actors that
//! run `mesh_engine::node::Node`, the configuration loader and the HTTP API come next.
#![warn(missing_docs, unreachable_pub)]

pub mod config;
pub mod http;
pub mod lag;
pub mod metrics;
pub mod resp;
pub mod runtime;
pub mod tls;
pub mod traces;
pub mod transport;
