//! Fuzz target `test_cases`: see `wardgate_fuzz::test_cases` and fuzz/README.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wardgate_fuzz::test_cases(data));
