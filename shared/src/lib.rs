//! `sbc-shared`: the contract between the SBC's two processes.
//!
//! The control plane (`sbc-control`) and the data plane (`sbc-media`) agree on exactly
//! what is in this crate: the RPC messages and their framing ([`rpc`]), the appliance's
//! configuration file ([`config`]), identifiers ([`ids`]) and metric names ([`metrics`]).
//! Nothing here touches the network except the thin transport adapters in [`rpc`] and
//! the metrics listener in [`http`], which both processes run the same way.

pub mod config;
pub mod fuzzing;
pub mod http;
pub mod ids;
pub mod logging;
pub mod metrics;
pub mod rpc;

/// `name version` of the running binary, e.g. `sbc-media 0.1.0`.
pub fn software(name: &str) -> String {
    format!("{name} {}", env!("CARGO_PKG_VERSION"))
}
