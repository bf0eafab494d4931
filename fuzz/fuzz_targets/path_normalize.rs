//! Fuzz target `path_normalize`: see `wardgate_fuzz::path_normalize` and fuzz/README.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wardgate_fuzz::path_normalize(data));
