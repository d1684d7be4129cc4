// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! `global_get_put`: uncontended get + put of the three global-state forms (both
//! directions, default lock backend and a one-mutex backend) vs `std::sync::Mutex`.

use std::sync::Mutex;

use luo_bench::global::{Backend, Op, mutex_lock_unlock};

fn main() {
    divan::main();
}

const OPS: [&str; 6] = [
    "flb_outgoing",
    "flb_incoming",
    "state_outgoing",
    "state_incoming",
    "subsystem_outgoing",
    "subsystem_incoming",
];

#[divan::bench(args = OPS)]
fn std_backend(bencher: divan::Bencher, op: &str) {
    let f = Backend::Std.fixture();
    let op = Op::parse(op).expect("an op");
    bencher.bench_local(|| f.get_put(op, 1));
}

#[divan::bench(args = OPS)]
fn mutex_backend(bencher: divan::Bencher, op: &str) {
    let f = Backend::Mutex.fixture();
    let op = Op::parse(op).expect("an op");
    bencher.bench_local(|| f.get_put(op, 1));
}

#[divan::bench]
fn std_mutex(bencher: divan::Bencher) {
    let m = Mutex::new(7u64);
    bencher.bench_local(|| mutex_lock_unlock(&m, 1));
}
