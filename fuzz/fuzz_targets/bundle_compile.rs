//! Fuzz target `bundle_compile`: see `wardgate_fuzz::bundle_compile` and fuzz/README.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wardgate_fuzz::bundle_compile(data));
