#![no_main]
// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Fuzz target `spec`: see `luo_tests::fuzz_targets::spec`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| luo_tests::fuzz_targets::spec(data));
