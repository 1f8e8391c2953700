#![no_main]
//! Fuzz target: sbc_media::fuzzing::rtp_header.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sbc_media::fuzzing::rtp_header(data));
