// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Compile-time tests of the `luo` macros (this library is empty; the tests are the crate).
//!
//! * `tests/ui/fail/*.rs` and `tests/ui/pass/*.rs`: trybuild cases (`tests/ui.rs`); every
//!   compile-fail case has a committed `.stderr` naming the problem and the fix. Re-bless with
//!   `TRYBUILD=overwrite cargo test -p luo-ui-tests --test ui`.
//!
//! What the macros generate is run elsewhere, by the Rust LUO core: `luo-core/tests/macro_runtime.rs`
//! drives handlers, FLBs, handler-scoped state and subsystems through the generated C ops
//! tables across a kexec, and `luo-core/tests/macro_c_table.rs` has C code
//! (`tests/c/check_table.c`, compiled by gcc against the generated `<linux/liveupdate.h>`) read
//! the tables the macros built.
