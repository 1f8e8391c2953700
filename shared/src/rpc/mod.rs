//! The control ↔ media RPC: messages ([`msg`]), framing ([`codec`], sans-IO), and the
//! transports that carry frames ([`stream`] over [`unix`] sockets or [`quic`]).

pub mod client;
pub mod codec;
pub mod msg;
pub mod quic;
pub mod stream;
pub mod unix;

pub use msg::PROTOCOL_VERSION;
