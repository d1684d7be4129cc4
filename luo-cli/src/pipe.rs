// SPDX-License-Identifier: GPL-2.0-only OR MIT
//! Standard output closed early (`luo schema check | head -1`).
//!
//! Rust starts a program with SIGPIPE ignored, so a write to a pipe whose reader has gone
//! fails with EPIPE, and `println!` panics on that error. The commands whose job is to write a
//! result to standard output behave as Unix filters instead: the default disposition is
//! restored, and such a write ends the process quietly (killed by SIGPIPE, as `cat` is).
//! Only the daemon (`sim serve`) keeps SIGPIPE ignored: it must outlive a client going away.
//! That changes nothing else: sockets are written with `MSG_NOSIGNAL` everywhere, and the
//! programs `luo` starts (`vmtest`'s, QEMU, the next stage) get the default disposition
//! either way, since `std::process::Command` resets it in every child.

/// Restores the default SIGPIPE disposition. Call first thing in `main`.
pub fn end_quietly_on_closed_stdout() {
    // SAFETY: `signal` with `SIG_DFL` only changes this process's disposition of SIGPIPE; it
    // runs before any thread is started, so no other thread observes the change mid-write.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
