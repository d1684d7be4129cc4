// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! `luo schema diff` on two synthetic snapshots of 1,000 structs × 50
//! fields (every tenth struct changed): facts plus policy, as the CLI runs.

use luo_bench::synthetic_snapshot;
use luo_schema::diff::diff_component;

fn main() {
    divan::main();
}

#[divan::bench(args = [(100, 50), (1000, 50)])]
fn schema_diff(bencher: divan::Bencher, (structs, fields): (usize, usize)) {
    let old = synthetic_snapshot(structs, fields, false);
    let new = synthetic_snapshot(structs, fields, true);
    bencher.bench(|| {
        let d = diff_component(divan::black_box(&old), divan::black_box(&new));
        divan::black_box(d.findings.len())
    });
}
