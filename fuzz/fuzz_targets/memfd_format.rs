#![no_main]
// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Fuzz target `memfd_format`: see `luo_tests::fuzz_targets::memfd_format`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| luo_tests::fuzz_targets::memfd_format(data));
