//! The io_uring engine (being written): multishot `RecvMsg` with a provided-buffer ring
//! per core, `SendMsg` from the same buffer.
//!
//! Until it lands, [`probe`] reports io_uring as unavailable and the portable engine runs.

use std::sync::mpsc::Receiver;
use std::time::Instant;

use super::core::{CoreCommand, CoreState};

/// Wakes a core blocked in `io_uring_enter` (an eventfd the ring reads).
#[derive(Debug)]
pub struct Waker;

impl Waker {
    pub fn wake(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A core's ring, created on the RPC thread so that setup errors surface at start.
#[derive(Debug)]
pub struct Ring;

/// Whether this kernel lets us run the io_uring engine; the error says why not.
pub fn probe() -> Result<(), String> {
    Err("the io_uring backend is not built yet".into())
}

pub fn setup() -> std::io::Result<(Ring, Waker)> {
    Err(std::io::Error::other("the io_uring backend is not built yet"))
}

pub fn run(_ring: Ring, _commands: Receiver<CoreCommand>, _state: CoreState, _epoch: Instant) {}
