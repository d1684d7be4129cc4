#![no_main]
//! Fuzz target `uapi`: see `luo_tests::fuzz_targets::uapi`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| luo_tests::fuzz_targets::uapi(data));
