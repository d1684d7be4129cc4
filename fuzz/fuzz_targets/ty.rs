#![no_main]
//! Fuzz target `ty`: see `luo_tests::fuzz_targets::ty`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| luo_tests::fuzz_targets::ty(data));
