// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! `gen`: `luo gen` over every spec in memory (load + check + layout + render).

use luo_bench::luo_gen::{run, spec_dir};

fn main() {
    divan::main();
}

#[divan::bench]
fn gen_all(bencher: divan::Bencher) {
    let dir = spec_dir();
    bencher.bench(|| run(divan::black_box(&dir)));
}
