#![no_main]
// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Fuzz target `uapi`: see `luo_tests::fuzz_targets::uapi`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| luo_tests::fuzz_targets::uapi(data));
