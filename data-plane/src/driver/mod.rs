//! The tokio shell of the media node's control side: RPC listeners (Unix socket, QUIC),
//! the reaper timer and the metrics listener. It decides nothing: every request goes to
//! [`crate::node::Node`].

pub mod rpc;
pub mod run;
