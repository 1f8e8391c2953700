//! `sbc-bench`: measure a media relay (sbc-media, rtpengine, or the trivial `rawrelay`)
//! with real-rate audio traffic on loopback.
//!
//! - [`sys`]: the clock, CPU pinning, UDP sockets with large buffers, `/proc` readings.
//! - [`mmsg`]: batched UDP I/O (`recvmmsg` / `sendmmsg`).
//! - [`packet`]: the RTP packets the load generator sends (send time in the payload).
//! - [`hist`]: a latency histogram.
//! - [`target`]: setting calls up on the relay under test (RPC, rtpengine "ng", or none).
//! - [`traffic`]: the paced send / receive loop of one run.
//! - [`report`]: results as JSON, and the summary table.
//!
//! `benches/run.sh` drives everything; `docs/performance.md` has the figures.

#![allow(clippy::disallowed_methods, reason = "benchmarks measure real time")]

pub mod bencode;
pub mod hist;
pub mod mmsg;
pub mod packet;
pub mod report;
pub mod sys;
pub mod target;
pub mod traffic;
