#![no_main]
//! Fuzz target `snapshot_diff`: see `luo_tests::fuzz_targets::snapshot_diff`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| luo_tests::fuzz_targets::snapshot_diff(data));
