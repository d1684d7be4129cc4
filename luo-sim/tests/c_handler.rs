// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! A file handler written in C (tests/c/), compiled with gcc against the generated
//! `<linux/liveupdate.h>` and linked with the core's static library, preserves and restores
//! its state across a simulated kexec.

mod c_build;

#[test]
fn c_handler_across_kexec() {
    let run = c_build::build_and_run("c-handler-test", &["handler_test.c", "test_handler.c"], &[]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success() && stdout.contains("c handler test: ok"),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
}
