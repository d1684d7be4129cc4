// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Builds the LD_PRELOAD library `libluo_sim_preload.so` from `csrc/preload.c` and `csrc/supervise.c` with the C
//! compiler the `cc` crate finds, and exposes its path as `LUO_SIM_PRELOAD`.
use std::path::PathBuf;

fn main() {
    for f in ["csrc/preload.c", "csrc/supervise.c", "csrc/preload.h"] {
        println!("cargo:rerun-if-changed={f}");
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let so = out.join("libluo_sim_preload.so");
    let compiler = cc::Build::new().cargo_metadata(false).get_compiler();
    let status = compiler
        .to_command()
        .args([
            "-shared",
            "-fPIC",
            "-O2",
            "-Wall",
            "-U_FORTIFY_SOURCE",
            "-o",
        ])
        .arg(&so)
        .args(["csrc/preload.c", "csrc/supervise.c"])
        .status()
        .expect("run the C compiler");
    assert!(status.success(), "building libluo_sim_preload.so failed");
    println!("cargo:rustc-env=LUO_SIM_PRELOAD={}", so.display());
}
