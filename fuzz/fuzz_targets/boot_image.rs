#![no_main]
//! Fuzz target `boot_image`: see `luo_tests::fuzz_targets::boot_image`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| luo_tests::fuzz_targets::boot_image(data));
