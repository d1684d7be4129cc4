// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Integration tests live in `tests/`. This library holds the fuzz target
//! bodies, shared by the cargo-fuzz crate (`fuzz/`, nightly) and by the
//! corpus replay test that runs on stable in CI (`tests/fuzz_corpus.rs`),
//! so what CI replays is exactly what was fuzzed.

pub mod cli;
pub mod fuzz_targets;
