#![no_main]
//! The YAML configuration file: parse, validate, locate (sbc_shared::fuzzing::config).

libfuzzer_sys::fuzz_target!(|data: &[u8]| sbc_shared::fuzzing::config(data));
