//! Fuzz target `decision_log`: see `wardgate_fuzz::decision_log` and fuzz/README.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wardgate_fuzz::decision_log(data));
