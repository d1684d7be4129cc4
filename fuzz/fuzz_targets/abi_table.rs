#![no_main]
// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Fuzz target `abi_table`: see `luo_tests::fuzz_targets::abi_table`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| luo_tests::fuzz_targets::abi_table(data));
