// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! The rows over the core (`luo-core` + the memfd handler), smaller than the report's so a
//! divan run stays short: `PRESERVE_FD` (each sample also unpreserves, and times the pinning
//! apart) and `RETRIEVE_FD` of a memfd of 2^14 folios (64 MiB),
//! and serialize + deserialize of 200 sessions with 1,000 files. The report
//! (`luo-bench-report`) runs the full sizes against their `memcpy` baselines.

use luo_bench::handover::{MemfdFixture, SessionsFixture, time_retrieve, time_sessions};
use luo_core::KernelVersion;

fn main() {
    divan::main();
}

const FOLIOS: u64 = 1 << 14;

#[divan::bench(sample_count = 20, sample_size = 1)]
fn memfd_preserve(bencher: divan::Bencher) {
    let mut f = MemfdFixture::new(KernelVersion::V7_3, FOLIOS).expect("fixture");
    bencher.bench_local(|| f.time_preserve().expect("preserve"));
}

#[divan::bench(sample_count = 10, sample_size = 1)]
fn memfd_retrieve() -> std::time::Duration {
    time_retrieve(KernelVersion::V7_3, KernelVersion::V7_3, FOLIOS).expect("retrieve")
}

#[divan::bench(sample_count = 10, sample_size = 1)]
fn migrate_v1() -> std::time::Duration {
    time_retrieve(KernelVersion::V7_0, KernelVersion::V7_3, FOLIOS).expect("retrieve")
}

#[divan::bench(sample_count = 10, sample_size = 1)]
fn sessions(bencher: divan::Bencher) {
    bencher
        .with_inputs(|| SessionsFixture::new(KernelVersion::V7_3, 200, 1_000, 0).expect("fixture"))
        .bench_local_values(|f| time_sessions(f).expect("sessions"));
}
