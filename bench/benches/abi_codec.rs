// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! `abi_codec`: encode / decode of 262,144 memfd folio records through the generated
//! accessors (+ AbiType check), hand-written zerocopy, and postcard for context.

use luo_bench::codec::{Codec, CodecBench, FOLIOS};

fn main() {
    divan::main();
}

const CODECS: [&str; 3] = ["ours", "zerocopy", "postcard"];

#[divan::bench(args = CODECS)]
fn encode(bencher: divan::Bencher, codec: &str) {
    let c = Codec::parse(codec).expect("a codec");
    let mut b = CodecBench::new(FOLIOS);
    bencher
        .counter(divan::counter::ItemsCount::new(FOLIOS))
        .bench_local(|| b.encode(c));
}

#[divan::bench(args = CODECS)]
fn decode(bencher: divan::Bencher, codec: &str) {
    let c = Codec::parse(codec).expect("a codec");
    let mut b = CodecBench::new(FOLIOS);
    b.encode(c);
    bencher
        .counter(divan::counter::ItemsCount::new(FOLIOS))
        .bench_local(|| b.decode(c));
}
