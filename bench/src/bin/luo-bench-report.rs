//! Runs the suite and writes BENCHMARKS.md and target/luo-bench.json (work in progress).

use std::hint::black_box;

use luo_bench::dispatch::{Dispatch, Variant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("child") {
        let n: u64 = args.last().unwrap().parse().unwrap();
        match args[1].as_str() {
            "dispatch" => {
                let d = Dispatch::new();
                let v = Variant::parse(&args[2]).unwrap();
                black_box(d.run(v, n));
            }
            _ => panic!(),
        }
        return;
    }
    let exe = std::env::current_exe().unwrap();
    for v in Variant::ALL {
        let r =
            luo_bench::measure::callgrind_per_iter(&exe, &["child", "dispatch", v.name()], 100000);
        println!("{v:?} {r:?}");
    }
}
