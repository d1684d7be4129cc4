// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Compiles `c/dispatch.c` (the C variant of the `dispatch` benchmark, registered with luo-core) with
//! `gcc -O2` against the generated `<linux/liveupdate.h>` into a static library.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it"));
    let src = manifest.join("c/dispatch.c");
    let include = manifest.join("../generated/include");
    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rerun-if-changed={}", include.display());
    let obj = out.join("dispatch.o");
    let status = Command::new("gcc")
        .args([
            "-std=c11", "-Wall", "-Wextra", "-Werror", "-O2", "-fPIC", "-c",
        ])
        .arg("-I")
        .arg(&include)
        .arg(&src)
        .arg("-o")
        .arg(&obj)
        .status()
        .expect("gcc is needed to build the C handler of the dispatch benchmark");
    assert!(status.success(), "gcc failed on {}", src.display());
    let lib = out.join("libluo_bench_c.a");
    let _ = std::fs::remove_file(&lib);
    let status = Command::new("ar")
        .arg("crs")
        .arg(&lib)
        .arg(&obj)
        .status()
        .expect("ar is needed to build the C handler of the dispatch benchmark");
    assert!(status.success(), "ar failed");
    println!("cargo:rustc-link-search=native={}", out.display());
    println!("cargo:rustc-link-lib=static=luo_bench_c");
}
