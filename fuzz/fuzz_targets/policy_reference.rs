//! Fuzz target `policy_reference`: see `wardgate_fuzz::policy_reference` and fuzz/README.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wardgate_fuzz::policy_reference(data));
