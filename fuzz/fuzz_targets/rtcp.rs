#![no_main]
//! Fuzz target: sbc_media::fuzzing::rtcp.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sbc_media::fuzzing::rtcp(data));
