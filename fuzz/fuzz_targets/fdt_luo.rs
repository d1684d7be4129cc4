#![no_main]
// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Fuzz target `fdt_luo`: see `luo_tests::fuzz_targets::fdt_luo`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| luo_tests::fuzz_targets::fdt_luo(data));
