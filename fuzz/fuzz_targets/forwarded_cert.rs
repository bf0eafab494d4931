//! Fuzz target `forwarded_cert`: see `wardgate_fuzz::forwarded_cert` and fuzz/README.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wardgate_fuzz::forwarded_cert(data));
