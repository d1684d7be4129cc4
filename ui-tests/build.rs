//! Compiles `c/check_table.c` with gcc against the generated `<linux/liveupdate.h>` into a
//! static library the tests link, so C code reads the ops tables the Rust macros built.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it"));
    let src = manifest.join("c/check_table.c");
    let include = manifest.join("../generated/include");
    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rerun-if-changed={}", include.display());
    let obj = out.join("check_table.o");
    let status = Command::new("gcc")
        .args([
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-O1",
            "-fPIC",
            "-c",
        ])
        .arg("-I")
        .arg(&include)
        .arg(&src)
        .arg("-o")
        .arg(&obj)
        .status()
        .expect("gcc is needed to build the C table checks");
    assert!(status.success(), "gcc failed on {}", src.display());
    let lib = out.join("libluo_c_check.a");
    let _ = std::fs::remove_file(&lib);
    let status = Command::new("ar")
        .arg("crs")
        .arg(&lib)
        .arg(&obj)
        .status()
        .expect("ar is needed to build the C table checks");
    assert!(status.success(), "ar failed");
    println!("cargo:rustc-link-search=native={}", out.display());
    println!("cargo:rustc-link-lib=static=luo_c_check");
}
