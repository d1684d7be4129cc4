//! Standard output closed early (`luo schema check | head -1`).
//!
//! Rust starts a program with SIGPIPE ignored, so a write to a pipe whose reader has gone
//! fails with EPIPE, and `println!` panics on that error. The commands whose job is to write a
//! result to standard output behave as Unix filters instead: the default disposition is
//! restored, and such a write ends the process quietly (killed by SIGPIPE, as `cat` is).
//! The daemon (`sim serve`) and `vmtest` keep SIGPIPE ignored: the daemon must outlive a
//! client or a log reader going away, and the programs `vmtest` runs inherit the
//! disposition, which the recorded kernel outputs they are compared with depend on. (Sockets
//! are written with `MSG_NOSIGNAL` everywhere, so `sim kexec` is a filter like the others.)

/// Restores the default SIGPIPE disposition. Call first thing in `main`.
pub fn end_quietly_on_closed_stdout() {
    // SAFETY: `signal` with `SIG_DFL` only changes this process's disposition of SIGPIPE; it
    // runs before any thread is started, so no other thread observes the change mid-write.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
