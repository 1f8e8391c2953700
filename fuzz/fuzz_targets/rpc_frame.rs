#![no_main]
//! The RPC byte stream: framing, both frame decoders, round trips (sbc_shared::fuzzing::rpc_frame).

libfuzzer_sys::fuzz_target!(|data: &[u8]| sbc_shared::fuzzing::rpc_frame(data));
