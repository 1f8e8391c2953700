//! The I/O shell around the sans-IO media logic: sockets and (from the packet-engine
//! work on) the per-core io_uring loops.

pub mod ports;
