//! `dispatch`: one `preserve` call through the macro-generated ops table, a hand-written
//! Rust `#[repr(C)]` table and a C table (`gcc -O2`), inputs through `black_box`. The report
//! (`luo-bench-report`) also counts instructions under callgrind.

use luo_bench::dispatch::{Dispatch, Variant};

fn main() {
    divan::main();
}

#[divan::bench(args = ["generated", "hand_rust", "c"])]
fn preserve(bencher: divan::Bencher, variant: &str) {
    let v = Variant::parse(variant).expect("a variant");
    let d = Dispatch::new();
    bencher.bench_local(|| d.preserve(v));
}
