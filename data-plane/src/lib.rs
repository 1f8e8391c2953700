//! `sbc-media`: the SBC's data plane.
//!
//! Layout: [`proto`] holds the sans-IO logic (session table and ownership rules, port
//! allocation); [`engine`] binds sockets (and will run the per-core packet loops);
//! [`node`] glues table, ports and metrics into the state one media node owns;
//! [`driver`] is the tokio shell serving the control RPC (Unix socket and QUIC) and the
//! metrics listener. The data plane never parses SIP.

pub mod clock;
pub mod driver;
pub mod engine;
pub mod fuzzing;
pub mod metrics;
pub mod node;
pub mod proto;
pub mod status;
