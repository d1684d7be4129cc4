// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! trybuild: every `ui/fail/*.rs` must fail to compile with exactly its committed `.stderr`
//! (each message names the problem and the fix), every `ui/pass/*.rs` must compile.
//!
//! Re-bless after an intended change: `TRYBUILD=overwrite cargo test -p luo-ui-tests --test ui`.
//! The `.stderr` files depend on the compiler version, pinned in `rust-toolchain.toml`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
