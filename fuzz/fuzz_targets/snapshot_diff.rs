#![no_main]
// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Fuzz target `snapshot_diff`: see `luo_tests::fuzz_targets::snapshot_diff`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| luo_tests::fuzz_targets::snapshot_diff(data));
