//! Fuzz target `spiffe_id`: see `wardgate_fuzz::spiffe_id` and fuzz/README.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wardgate_fuzz::spiffe_id(data));
