//! Sans-IO protocol and bookkeeping logic of the data plane: no sockets, no runtime, no
//! clock. Every function takes `now` and returns what to do.

pub mod ports;
pub mod relay;
pub mod rtp;
pub mod table;
