// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! `dispatch`: one file's `can_preserve` + `preserve` + `unpreserve` through the ops table
//! luo-core registered, for a `#[liveupdate_handler]` handler and the same handler written by
//! hand against the generated C table, inputs through `black_box`. The report
//! (`luo-bench-report`) also counts instructions under callgrind.

use luo_bench::dispatch::{Dispatch, Variant};

fn main() {
    divan::main();
}

#[divan::bench(args = ["generated", "hand_rust"])]
fn preserve_unpreserve(bencher: divan::Bencher, variant: &str) {
    let v = Variant::parse(variant).expect("a variant");
    let d = Dispatch::new();
    bencher.bench_local(|| d.preserve_unpreserve(v));
}
