#![no_main]
//! Fuzz target `fdt_luo`: see `luo_tests::fuzz_targets::fdt_luo`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| luo_tests::fuzz_targets::fdt_luo(data));
