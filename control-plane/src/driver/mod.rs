//! tokio shells of the control plane: media RPC links, the admin socket, signals and
//! the metrics listener. They call into [`crate::app::Control`] and decide nothing.

pub mod admin;
pub mod media_rpc;
pub mod run;
