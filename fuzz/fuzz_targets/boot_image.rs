#![no_main]
// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Fuzz target `boot_image`: see `luo_tests::fuzz_targets::boot_image`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| luo_tests::fuzz_targets::boot_image(data));
