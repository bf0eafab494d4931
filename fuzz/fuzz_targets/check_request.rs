//! Fuzz target `check_request`: see `wardgate_fuzz::check_request` and fuzz/README.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wardgate_fuzz::check_request(data));
