//! What the core's tests boot: the core with the memfd handler registered by an initcall, as
//! every simulated machine boots it (luo-sim's `machine`); the core itself registers no handler.

use luo_core::{BootOptions, Kernel};

/// The core's defaults plus the memfd handler of the kernel version booted.
pub fn opts() -> BootOptions {
    BootOptions {
        initcalls: vec![luo_handlers::memfd::initcall::<Kernel>],
        ..BootOptions::default()
    }
}
