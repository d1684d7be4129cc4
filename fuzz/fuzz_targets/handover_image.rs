#![no_main]
//! Fuzz target `handover_image`: see `luo_tests::fuzz_targets::handover_image`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| luo_tests::fuzz_targets::handover_image(data));
